"""FastLanguageModel: load a model and its tokenizer, add LoRA adapters, switch between training and inference.

Every step runs the engine's own code (engine.models.loading, engine.core.hardware), so a notebook gets the same model
the app trains: 4-bit NF4 or 16-bit weights in the dtype picked for the GPU, the engine's LoRA and checkpointing, and
its exports. The settings are kept as a JobSpec on the model (`model.tunesmith_spec`), beside `model.max_seq_length`.
"""

import os
from pathlib import Path

from engine.core.errors import UserError
from engine.spec.jobspec import ALL_LINEAR, JobSpec
from tunesmith import options
from tunesmith.model_spec import is_peft, spec_of

DTYPES = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}
# device_map spellings of one device, as notebooks write them (a map {"": x} puts the whole model on x); GPU 0 only
DEVICE_MAPS = {
    None: "auto",
    "sequential": "auto",
    "auto": "auto",
    "cpu": "cpu",
    "cuda": "cuda",
    "cuda:0": "cuda",
    0: "cuda",
}
LOAD_OPTIONS = {  # argument: (values that change nothing, what to do instead of any other value)
    "load_in_8bit": ((False,), "8-bit weights are not supported: use load_in_4bit=True (QLoRA) or False (16-bit)"),
    "token": ((None,), "set the HF_TOKEN environment variable (or run `hf auth login`) for gated or private models"),
    "rope_scaling": ((None,), "RoPE is not stretched: keep max_seq_length within the model's context"),
    # either value: the tokenizer is changed only where it has no pad token (it gets its EOS), which training needs
    "fix_tokenizer": ((True, False), ""),
    "revision": ((None,), "give the hub id's default branch, or download the revision and pass its folder"),
    "offload_folder": (
        (None,),
        "drop it: weights are never offloaded to disk; when the model does not fit the GPU, the memory plan streams "
        "its layers from RAM by itself (see model.memory_plan)",
    ),
    # no library has these three (guides show them): what to write instead
    "offload_enabled": (
        (),
        "no library has offload_enabled; drop it: the memory plan offloads and streams layers from RAM by itself "
        "when the model does not fit the GPU (see model.memory_plan)",
    ),
    "load_in_3bit": ((), "no library trains 3-bit weights; write load_in_4bit=True (the smallest there is)"),
    "model_name_or_path": ((), "the model argument is model_name: write model_name=... (or pass it first)"),
}
LORA_OPTIONS = {
    "bias": (("none",), 'bias terms are not trained: use bias="none"'),
    "loftq_config": ((None, {}), "LoftQ initialisation is not supported: drop loftq_config"),
    "modules_to_save": (
        (None,),
        'only LoRA adapters, and embed_tokens with lm_head (modules_to_save=["embed_tokens", "lm_head"]), are trained: '
        "load with full_finetuning=True to train every weight",
    ),
    "layers_to_transform": ((None,), "adapters go on every layer: drop layers_to_transform"),
    "layers_pattern": ((None,), "adapters go on every layer: drop layers_pattern"),
    "init_lora_weights": ((True,), "adapters start as PEFT's default (B = 0): drop init_lora_weights"),
    "use_dora": ((False,), "DoRA is not supported: use plain LoRA (optionally use_rslora=True)"),
    "qat_scheme": ((None,), "quantization-aware training is not supported: drop qat_scheme"),
}


# GRPO notebooks load with fast_inference=True (a vLLM engine, in Unsloth) and size it with the other two: without vLLM
# there is nothing to size, and model.fast_generate / save_lora / load_lora (tunesmith.fast_generate) run without it
VLLM_OPTIONS = {
    "fast_inference": "vLLM is not used; model.fast_generate runs on Tunesmith's decoder, and TRL's GRPOTrainer "
    "generates with the model itself",
    "max_lora_rank": "it sizes vLLM's adapters, and vLLM is not used",
    "gpu_memory_utilization": "it sizes vLLM's cache, and vLLM is not used: the memory stays free for training",
}


def _vllm_options(call: str, kwargs: dict) -> None:
    """Take the vLLM options out of `kwargs`, with a line for each one that asks for something."""
    for name, why in VLLM_OPTIONS.items():
        value = kwargs.pop(name, None)
        if name == "fast_inference" and value not in (None, False, True):
            raise UserError(f"{call}: fast_inference={value!r} is not supported; use True or False.")
        if value not in (None, False):
            print(f"{call}: {name}={value!r} changes nothing: {why}")


def is_bfloat16_supported() -> bool:
    """True when the GPU computes in bf16 (what fp16=/bf16= in TrainingArguments should follow); False on the CPU."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def _dtype_name(dtype) -> str:
    if dtype is None or dtype == "auto":  # transformers' "auto" is this pick too
        return "auto"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UserError(f"dtype={dtype!r} is not supported; use None (auto), torch.float16, torch.bfloat16 or float32.")
    return DTYPES[name]


def _checkpointing(value, call: str) -> bool:
    """Unsloth's "unsloth" checkpointing is the engine's (non-reentrant, recomputed in backward): True."""
    if value == "unsloth" or isinstance(value, bool):
        return value is not False
    raise UserError(f'{call}: use_gradient_checkpointing={value!r} is not supported; use "unsloth", True or False.')


def _device(device_map, call: str) -> str:
    """The engine's device ("auto", "cpu" or "cuda") for a one-device `device_map`; "auto" for a GPU map without one."""
    import torch

    one = device_map[""] if isinstance(device_map, dict) and list(device_map) == [""] else device_map
    if isinstance(one, torch.device):
        one = str(one)
    if not isinstance(one, (str, int, type(None))) or isinstance(one, bool) or one not in DEVICE_MAPS:
        raise UserError(
            f"{call}: device_map={device_map!r} is not supported; the model goes on one device: use "
            '"auto", "cpu", "cuda" or {"": 0}.'
        )
    if DEVICE_MAPS[one] == "cuda" and not torch.cuda.is_available():
        print(f"warning: device_map={device_map!r} asks for a GPU but PyTorch sees none; loading on the CPU")
        return "auto"
    return DEVICE_MAPS[one]


def _context_length(path: Path) -> int | None:
    from engine.models.context import context_length
    from engine.models.loading import read_config

    return context_length(read_config(path))


class FastLanguageModel:
    """The loading, LoRA and mode-switch calls of Unsloth's FastLanguageModel, on Tunesmith's engine."""

    @staticmethod
    def from_pretrained(
        model_name: str | None = None,
        max_seq_length: int = 2048,
        dtype=None,
        load_in_4bit: bool | None = None,
        full_finetuning: bool = False,
        device_map="sequential",
        trust_remote_code: bool = False,
        use_gradient_checkpointing=None,
        load_in_16bit: bool = False,
        **kwargs,
    ):
        """Load a causal LM and its tokenizer from a hub id or a local folder (safetensors only).

        Args:
            model_name: hub id ("Qwen/Qwen3-4B-Instruct-2507") or a folder (a str or a Path) with config.json and
                safetensors weights, or a saved LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as
                model.save_pretrained or save_method="lora" write it): the base model it names is loaded with the
                other arguments and the adapter on top, trainable, so the model is ready for more training or
                for_inference (as Unsloth does; no get_peft_model call). The adapter folder's tokenizer is used when
                it has one.
                A bitsandbytes 4-bit checkpoint (e.g. "unsloth/...-bnb-4bit") loads as it is for QLoRA; exports merge
                into its dequantized weights and name its 16-bit original where its files say which. Other stored
                quantizations, and a 4-bit checkpoint with load_in_4bit=False or full_finetuning, are refused.
            max_seq_length: longest sequence the notebook will use; kept as `model.max_seq_length` and as the
                tokenizer's `model_max_length` (its truncation length). Must fit the model's context. The memory plan
                is made from it and the card, as the CLI makes it (engine.models.loading.plan_memory, with the JobSpec
                defaults for batch size and LoRA rank): checkpointing, activation offload and, for a model larger
                than the GPU, layers streamed from host RAM; kept as `model.memory_plan`. A run no plan fits raises a
                UserError with the plan's reason and figures.
            dtype: None (or "auto") picks bf16 on GPUs that have it, fp16 otherwise (T4), fp32 on the CPU; or
                torch.float16, torch.bfloat16, torch.float32.
            load_in_4bit: 4-bit NF4 weights (QLoRA). None means True, except with full_finetuning or load_in_16bit.
            full_finetuning: train every weight (16-bit, no adapters); the model comes back ready to train, with
                `use_gradient_checkpointing` ("unsloth"/True by default, or False).
            device_map: one device: None, "sequential" or "auto" (the GPU when there is one), "cpu", or GPU 0 as
                "cuda", "cuda:0", 0, {"": 0} or {"": "cuda:0"} ({"": x} is the same as x). Without a GPU a GPU map
                loads on the CPU with a log line saying so, as "auto" does, so a Colab cell runs unchanged; splitting
                a model over devices ("balanced", a map per layer) is refused.
            trust_remote_code: run Python code shipped with the model; only for models you trust.
            use_gradient_checkpointing: "unsloth"/True (the default) or False: with full_finetuning or an adapter
                folder it applies here; with LoRA, get_peft_model's own argument decides (as in Unsloth).
            load_in_16bit: True loads 16-bit weights for LoRA (Unsloth's spelling of load_in_4bit=False); it cannot
                be given with load_in_4bit=True.
            **kwargs: Unsloth options Tunesmith cannot honour raise a UserError naming the alternative, unless set to
                their no-op value (load_in_8bit=False, token=None, ...). fast_inference=True, max_lora_rank and
                gpu_memory_utilization (vLLM's, in GRPO notebooks) are taken with a line saying that vLLM is not
                used: model.fast_generate, save_lora and load_lora work without it (tunesmith.fast_generate).

        Returns:
            (model, tokenizer). The tokenizer has a chat template (its own, or the plain one for base models).
        """
        from engine.core.hardware import choose_placement
        from engine.data.tokenizing import ensure_chat_template
        from engine.models.adapter_source import hub_adapter, is_adapter
        from engine.models.loading import load_tokenizer, prepare_for_training, resolve_model
        from tunesmith import memory_plan

        call = "FastLanguageModel.from_pretrained"
        _vllm_options(call, kwargs)
        options.check(call, kwargs, LOAD_OPTIONS, FastLanguageModel.from_pretrained)
        if model_name is None:
            raise UserError(f"{call}: give the model as model_name=... (a hub id or a model folder).")
        model_name = os.fspath(model_name)  # a pathlib.Path, as transformers takes it
        adapter = hub_adapter(model_name) or Path(os.path.expanduser(model_name))  # a hub adapter: its snapshot
        if is_adapter(adapter):
            if full_finetuning:
                raise UserError(f"{call}: '{model_name}' is a LoRA adapter; load it with full_finetuning=False.")
            base = _adapter_base(adapter)
            model, tokenizer = FastLanguageModel.from_pretrained(
                base,
                max_seq_length,
                dtype,
                load_in_4bit,
                False,
                device_map,
                trust_remote_code,
                None,
                load_in_16bit,
                **kwargs,
            )
            if (adapter / "tokenizer_config.json").is_file():
                tokenizer = load_tokenizer(adapter, trust_remote_code)
                tokenizer.model_max_length = max_seq_length
                model.tunesmith_tokenizer = tokenizer
            checkpointing = "unsloth" if use_gradient_checkpointing is None else use_gradient_checkpointing
            return _with_adapter(model, adapter, checkpointing), tokenizer
        if load_in_4bit and load_in_16bit:
            raise UserError(
                f"{call}: load_in_4bit=True and load_in_16bit=True ask for two weight formats; keep "
                "load_in_4bit=True for QLoRA or load_in_16bit=True for 16-bit LoRA."
            )
        if load_in_4bit and full_finetuning:
            raise UserError(f"{call}: full fine-tuning trains 16-bit weights; set load_in_4bit=False (or drop it).")
        device = _device(device_map, call)
        four_bit = not (full_finetuning or load_in_16bit) if load_in_4bit is None else bool(load_in_4bit)
        method = "full" if full_finetuning else "qlora" if four_bit else "lora"
        checkpointing = _checkpointing(
            "unsloth" if use_gradient_checkpointing is None else use_gradient_checkpointing, call
        )
        spec = JobSpec(
            model=model_name,
            data="-",  # no dataset: the notebook brings its own trainer and data
            method=method,
            max_seq_length=max_seq_length,
            device=device,
            dtype=_dtype_name(dtype),
            trust_remote_code=trust_remote_code,
            gradient_checkpointing=checkpointing,
        )
        placement = choose_placement(spec.device, spec.dtype)
        if placement.device == "cpu":
            from engine.training.trl_loss import use_torch_loss

            if use_torch_loss():  # TRITON_INTERPRET is left as the user set it: kernels/ picks its references too
                print("loss: TRL's trainers compute it in torch on the CPU (its Triton kernel needs a GPU)")
        path = resolve_model(model_name).resolve()
        context = _context_length(path)
        if context and max_seq_length > context:
            raise UserError(
                f"max_seq_length={max_seq_length} is longer than this model's context ({context} tokens) and RoPE is "
                f"not stretched; use max_seq_length={context} or less."
            )
        print(f"model: {model_name}, {method} on {placement.device} in {placement.dtype}: {placement.reason}")
        tokenizer = load_tokenizer(path, trust_remote_code)
        print(f"chat template: {ensure_chat_template(tokenizer)}")
        tokenizer.model_max_length = max_seq_length
        # the CLI's memory plan (checkpointing, activation offload, weight streaming) for max_seq_length on this
        # card; a UserError with the plan's reason and figures when nothing fits
        model, memory = memory_plan.load(spec, path, placement)
        if full_finetuning:
            model = prepare_for_training(model, spec, memory=memory)
        model.tunesmith_spec = spec
        model.max_seq_length = max_seq_length
        model.tunesmith_tokenizer = tokenizer  # for_inference / for_training set its padding side
        _add_save_methods(model)
        return model, tokenizer

    @staticmethod
    def get_peft_model(
        model,
        r: int = 16,
        target_modules=ALL_LINEAR,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        use_gradient_checkpointing="unsloth",
        random_state: int = 3407,
        use_rslora: bool = False,
        max_seq_length: int | None = None,
        **kwargs,
    ):
        """Add LoRA adapters (PEFT) to a model from from_pretrained, with the engine's checkpointing.

        Args:
            model: the model from FastLanguageModel.from_pretrained (not a full fine-tuning one). One with LoRA
                adapters already (loaded from a saved adapter folder, or this call run twice) is returned as it is
                when the settings below are its adapters' own, and refused otherwise.
            r: adapter rank.
            target_modules: layer names that get adapters ("all-linear" or None for every linear layer of a block);
                names the model lacks are skipped with a log line. "embed_tokens" and "lm_head" among them (continued
                pretraining notebooks) train those two in full, as Unsloth does: trainable copies beside the frozen
                originals (PEFT's modules_to_save, saved with the adapter), at UnslothTrainingArguments'
                embedding_learning_rate where one is given. Both or neither: they are trained together. The memory
                plan is then made again, counting the copies with their gradients and optimizer states
                (`model.memory_plan`; tunesmith.memory_plan).
            lora_alpha: adapter scale is lora_alpha / r (lora_alpha / sqrt(r) with use_rslora).
            lora_dropout: dropout on the adapter input.
            use_gradient_checkpointing: "unsloth" or True recomputes activations in backward (much less memory);
                False keeps them. TRL's SFTConfig switches it on too (gradient_checkpointing=True is TRL's default),
                so set both to False to train without it.
            random_state: seed for the adapters' initial weights (it seeds torch's global generator, as Unsloth does).
            use_rslora: rank-stabilised LoRA.
            max_seq_length: accepted only when equal to the one given to from_pretrained (where it belongs).
            **kwargs: bias="none", loftq_config=None/{} and the like are accepted as no-ops;
                modules_to_save=["embed_tokens", "lm_head"] is the same as listing them in target_modules; any other
                value of an Unsloth option raises a UserError naming the alternative.

        Returns:
            The PeftModel, with `max_seq_length`, `save_pretrained_merged` and `save_pretrained_gguf`.
        """
        import torch

        from engine.models.loading import prepare_for_training
        from engine.training.pretrain import EMBEDDING_NAMES, add_embedding_training
        from tunesmith.memory_plan import with_embeddings

        call = "FastLanguageModel.get_peft_model"
        saved = kwargs.get("modules_to_save")
        if isinstance(saved, (list, tuple)) and saved and set(saved) <= set(EMBEDDING_NAMES):
            kwargs.pop("modules_to_save")
        else:
            saved = ()
        options.check(call, kwargs, LORA_OPTIONS, FastLanguageModel.get_peft_model)
        spec = spec_of(model)
        if spec.method == "full":
            raise UserError(f"{call}: this model was loaded for full fine-tuning; load it with full_finetuning=False.")
        if max_seq_length is not None and max_seq_length != model.max_seq_length:
            raise UserError(
                f"{call}: set max_seq_length in FastLanguageModel.from_pretrained (it is {model.max_seq_length})."
            )
        targets = ALL_LINEAR if target_modules in (None, "all-linear") else target_modules
        if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
            raise UserError(f'{call}: target_modules should be a list of layer names, e.g. ["q_proj", "v_proj"].')
        checkpointing = _checkpointing(use_gradient_checkpointing, call)
        embeddings = sorted({t for t in (*targets, *saved) if t in EMBEDDING_NAMES})
        if embeddings and embeddings != sorted(EMBEDDING_NAMES):
            raise UserError(
                f"{call}: {embeddings[0]} alone cannot be trained; embed_tokens and lm_head are trained together: "
                'list both (target_modules=[..., "embed_tokens", "lm_head"]) or neither.'
            )
        targets = [t for t in targets if t not in EMBEDDING_NAMES]
        if is_peft(model):
            # a model from a saved adapter folder (or this call run twice): with the adapters' own settings they are
            # kept, trained weights and all, as Unsloth passes them through
            cfg = model.peft_config["default"]
            present = {name.rsplit(".", 1)[-1] for name, _ in model.get_base_model().named_modules()}
            have = (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.use_rslora, set(cfg.target_modules))
            if have == (r, lora_alpha, float(lora_dropout), use_rslora, set(targets) & present) and (
                (checkpointing, bool(embeddings)) == (spec.gradient_checkpointing, spec.train_embeddings)
            ):
                print("adapters: this model has these LoRA adapters already; kept as they are")
                return model
            raise UserError(
                f"{call}: this model already has LoRA adapters (r={cfg.r}, lora_alpha={cfg.lora_alpha}, "
                f"lora_dropout={cfg.lora_dropout}, use_rslora={cfg.use_rslora}, target_modules="
                f"{sorted(cfg.target_modules)}, use_gradient_checkpointing={spec.gradient_checkpointing}) and these "
                "settings differ; call it with those, or load the base model for new adapters."
            )
        spec = spec.replace(
            lora_r=r,
            lora_alpha=lora_alpha,
            lora_dropout=float(lora_dropout),
            use_rslora=use_rslora,
            target_modules=tuple(targets),
            gradient_checkpointing=checkpointing,
            seed=random_state,
            train_embeddings=bool(embeddings),
        )
        torch.manual_seed(random_state)
        peft_model = prepare_for_training(model, spec, memory=with_embeddings(model, spec, call))
        if embeddings:  # after the adapters and patching, as the engine's continued-pretraining runs do
            add_embedding_training(peft_model)
        if model.get_input_embeddings().weight.dtype == torch.float16:
            _keep_trainable_fp32(peft_model)
        peft_model.tunesmith_spec = spec
        peft_model.max_seq_length = model.max_seq_length
        _add_save_methods(peft_model)
        return peft_model

    @staticmethod
    def for_inference(model):
        """Evaluation mode, and `model.generate` on the engine's decoder (engine.chat.decode: static KV cache, CUDA
        graphs on a GPU) for one sequence at a time; batches, beam search and other generate options run transformers'
        own generate. The tokenizer from from_pretrained pads on the left, as batched generation needs (and Unsloth's
        for_inference sets). Returns the model."""
        from tunesmith.generate import FastGenerate

        _pad(model, "left")
        model.eval()
        if not isinstance(model.__dict__.get("generate"), FastGenerate):
            model.generate = FastGenerate(model)
        return model

    @staticmethod
    def for_training(model):
        """Training mode, with transformers' own generate again (the decoder's cache and kernels released), and the
        tokenizer from from_pretrained padding on the right again."""
        from tunesmith.generate import FastGenerate

        _pad(model, "right")
        fast = model.__dict__.get("generate")
        if isinstance(fast, FastGenerate):
            fast.release()
            del model.generate
        model.train()
        return model


def _pad(model, side: str) -> None:
    """Set the padding side of the tokenizer from_pretrained returned with `model`, while it is in use."""
    tokenizer = getattr(model, "tunesmith_tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = side


def _adapter_base(adapter: Path) -> str:
    """The base model an adapter folder names, checked to be a folder here or a hub id (else a UserError naming it)."""
    from engine.core.hub_id import HUB_ID
    from engine.models.adapter_source import base_of

    base = base_of(adapter / "adapter_config.json")
    if not base:
        raise UserError(
            f"'{adapter}' is a LoRA adapter that does not name its base model; set base_model_name_or_path in its "
            "adapter_config.json to the base's hub id or folder."
        )
    if not Path(os.path.expanduser(base)).is_dir() and (not HUB_ID.match(base) or base.startswith((".", "/", "~"))):
        raise UserError(
            f"'{adapter}' is a LoRA adapter of '{base}', which is neither a folder on this machine nor a hub id; "
            "put the base model there, or set base_model_name_or_path in its adapter_config.json to where it is."
        )
    return base


def _with_adapter(model, adapter: Path, checkpointing):
    """`model` (from from_pretrained) with the LoRA adapter saved in `adapter`, trainable as get_peft_model makes it."""
    import json

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from engine.training.pretrain import EMBEDDING_NAMES

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    # a continued-pretraining adapter also holds trained embed_tokens / lm_head (get_peft_model trains both, or the
    # embedding alone where the head is tied to it, and writes them as modules_to_save)
    saved = cfg.get("modules_to_save") or []
    embeddings = bool(saved) and set(saved) <= set(EMBEDDING_NAMES)
    plain = isinstance(cfg.get("target_modules"), list) and not cfg.get("use_dora") and (embeddings or not saved)
    if cfg.get("peft_type", "LORA") != "LORA" or not plain:
        raise UserError(
            f"'{adapter}' is not a plain LoRA adapter (DoRA, modules_to_save other than embed_tokens and lm_head, a "
            "pattern of target modules or another PEFT type); merge it with PEFT instead."
        )
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"'{adapter}' has no adapter_model.safetensors; save the adapter again with safetensors.")
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg["r"],
        target_modules=sorted(cfg["target_modules"]),
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg.get("lora_dropout", 0.0),
        use_rslora=cfg.get("use_rslora", False),
        use_gradient_checkpointing=checkpointing,
        modules_to_save=list(EMBEDDING_NAMES) if embeddings else None,
    )
    loaded = set_peft_model_state_dict(model, load_file(weights))
    missing = [k for k in loaded.missing_keys if "lora_" in k or "modules_to_save" in k]
    if loaded.unexpected_keys or missing:
        raise UserError(
            f"'{adapter}' does not fit its base model ({len(loaded.unexpected_keys)} unknown and {len(missing)} "
            "missing adapter weights); load it with the base it was trained on."
        )
    print(f"adapter: {adapter} on {model.peft_config['default'].base_model_name_or_path}")
    return model


def _keep_trainable_fp32(model) -> None:
    """Keep the trainable weights of an fp16 model (a T4's) in fp32, whoever casts them.

    fp16 mixed precision unscales gradients with a GradScaler, which cannot handle bf16 ones, and TRL's trainers cast
    a 4-bit model's adapters to bf16 when they are built (the QLoRA paper's choice, for bf16 GPUs). Before each
    training forward, any bf16 trainable weight goes back to fp32 in place (the same Parameter, so the optimizer, whose
    state is created at its first step, holds and updates fp32 weights). The hook runs before the packed adapters'
    own (engine.patching.modules.PackedAdapters.follow), which then points the fused ops at the fp32 tensor.
    """
    import torch

    def restore(module, args):
        if module.training:
            for p in module.parameters():
                if p.requires_grad and p.dtype == torch.bfloat16:
                    p.data = p.data.float()

    model.register_forward_pre_hook(restore, prepend=True)


def _add_save_methods(model) -> None:
    """model.save_pretrained_merged / save_pretrained_gguf / push_to_hub_merged / push_to_hub_gguf, and the vLLM calls
    fast_generate / save_lora / load_lora, bound to this instance (no class is changed)."""
    from functools import partial

    from tunesmith import fast_generate, save

    model.fast_generate = partial(fast_generate.fast_generate, model)
    model.save_lora = partial(fast_generate.save_lora, model)
    model.load_lora = partial(fast_generate.load_lora, model)
    model.save_pretrained_merged = partial(save.save_pretrained_merged, model)
    model.save_pretrained_gguf = partial(save.save_pretrained_gguf, model)
    model.push_to_hub_merged = partial(save.push_to_hub_merged, model)
    model.push_to_hub_gguf = partial(save.push_to_hub_gguf, model)
