"""Find, download and load a model and its tokenizer, for training or for chat.

Weights load from safetensors only; code shipped with a model runs only when the job sets trust_remote_code.
"""

import json
import os
import time
from pathlib import Path

from engine.core.errors import UserError
from engine.core.hardware import Placement
from engine.core.hub_id import HUB_FILES, HUB_ID, refusal, url_hint
from engine.models.adapter_source import is_adapter
from engine.models.adapter_source import refusal as adapter_refusal


def resolve_model(model: str, log=print) -> Path:
    """Return a local folder for `model`: the folder itself, or a hub id downloaded (with progress) to the cache."""
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        _check_folder(path, model)
        return path
    if path.is_file():
        raise UserError(
            f"'{model}' is a file, not a model folder; give the folder that holds its config.json and weights, or a "
            "hub id."
        )
    if not HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise UserError(
            url_hint(model)
            or f"Model folder '{model}' does not exist; give an existing folder or a hub id like 'Qwen/Qwen3-0.6B'."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    log(f"model: fetching {model} from the Hugging Face hub (safetensors only)")
    try:
        folder = Path(snapshot_download(repo_id=model, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError as e:  # gated ones too (GatedRepoError is one)
        raise UserError(refusal(model, e)) from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"Could not download '{model}': the hub is unreachable and it is not in the local cache. "
            "Connect to the internet, or pick a local model folder."
        ) from None
    except OSError as e:
        raise UserError(
            f"Could not download '{model}' ({e.__class__.__name__}); check the connection and free disk, then retry."
        ) from None
    _check_folder(folder, model)
    return folder


def _check_folder(path: Path, model: str) -> None:
    if is_adapter(path):  # a run and the estimate start from a whole model: the sentence names the base to pick
        raise UserError(adapter_refusal(model, path / "adapter_config.json"))
    if not (path / "config.json").is_file():
        raise UserError(f"'{path}' has no config.json, so it is not a transformers model folder.")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise UserError(
                f"'{path}' has only pickled (.bin/.pt) weights; Tunesmith loads safetensors only, which "
                "cannot run code. Convert the model to safetensors first."
            )
        raise UserError(f"'{path}' has no .safetensors weight files.")


def name_after_source(model, source: str) -> None:
    """Record the hub id `source` as the model's name when it came from the hub, so that saved adapters name it
    (PEFT writes the name as adapter_config.json's base_model_name_or_path) rather than this machine's cache folder."""
    if not Path(os.path.expanduser(source)).is_dir():
        model.config._name_or_path = source
        model.name_or_path = source


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_model(path: Path, placement: Placement, four_bit: bool = False, trust_remote_code: bool = False):
    """Load a causal LM onto `placement.device` in its dtype, optionally with 4-bit NF4 weights (bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models import mxfp4
    from engine.patching.moe import cast_experts

    cfg = read_config(path)
    if four_bit and mxfp4.is_mxfp4(cfg):  # experts dequantized and NF4 a layer at a time (engine.memory.weights)
        from engine.memory.weights import load_streamed

        host = mxfp4_host_model(path, placement, trust_remote_code)
        return load_streamed(path, placement, True, None, trust_remote_code, host=host)
    kw = dict(
        dtype=placement.torch_dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        attn_implementation="sdpa",
        device_map={"": placement.device},
        **mxfp4.load_kwargs(cfg),
    )
    stored_4bit = four_bit and "quantization_config" in cfg  # engine.models.prequantized checked it
    if four_bit and not stored_4bit:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=placement.torch_dtype,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"'{path.name}' does not fit in GPU memory; use QLoRA (4-bit), a smaller model, or a card with more memory."
        ) from None
    except ValueError as e:
        if "scaled_dot_product_attention" in str(e):  # gpt-oss (attention sinks): transformers' eager attention
            model = AutoModelForCausalLM.from_pretrained(path, **dict(kw, attn_implementation="eager"))
            cast_experts(model, placement.torch_dtype)
            return model
        if "trust_remote_code" in str(e):
            raise UserError(
                f"'{path.name}' needs its own Python code to load; turn on 'trust remote code' only if "
                "you trust its authors."
            ) from None
        if "does not recognize this architecture" in str(e):  # a model newer than the installed transformers
            import transformers

            raise UserError(
                f"'{path.name}' is a kind of model that transformers {transformers.__version__} does not know "
                "(model_type in its config.json); update transformers (pip install -U transformers) or pick "
                "another model."
            ) from None
        raise
    cast_experts(model, placement.torch_dtype)
    if stored_4bit:  # its saved compute dtype (often bf16) gives way to the one chosen for this GPU, as ours does
        for module in model.modules():
            if hasattr(module, "compute_dtype"):
                module.compute_dtype = placement.torch_dtype
    return model


# a projection some families fuse (Phi-3, Phi-4: qkv_proj, gate_up_proj) gets an adapter where every name it fuses
# is a target: the default targets name the Llama family's, which alone left those models two of their seven
FUSED_TARGETS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def add_lora(model, spec, log=print):
    """Wrap `model` with PEFT LoRA adapters on the spec's target modules that the model has."""
    from peft import LoraConfig, get_peft_model

    from engine.models.experts import lora_options

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    asked = set(spec.target_modules)
    fused = [f for f, parts in FUSED_TARGETS.items() if set(parts) <= asked and f not in asked]
    targets = [t for t in [*spec.target_modules, *fused] if t in present]
    moe = lora_options(model, spec, log)
    if not targets and not moe.get("target_parameters"):
        import torch

        # the names an adapter can go on (bitsandbytes' 4-bit layers are Linear too), not '0' or 'act_fn'
        linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        raise UserError(
            f"None of the LoRA target modules {list(spec.target_modules)} exist in this model; its "
            f"linear layers are named {sorted(linear - {'lm_head'})}."
        )
    covered = {part for f in targets for part in FUSED_TARGETS.get(f, ())}
    skipped = sorted(asked - set(targets) - covered)
    if skipped and not moe.get("target_parameters"):
        log(f"lora: this model has no {skipped}; adapters go on {targets}")
    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        bias="none",
        target_modules=targets,
        use_rslora=spec.use_rslora,
        task_type="CAUSAL_LM",
        **moe,
    )
    return get_peft_model(model, config)


def load_for_training(spec, placement: Placement, log=print, compute: Placement | None = None, data=None):
    """Model (with LoRA unless full fine-tuning) and tokenizer, ready for a training loop. `compute` is where and in
    which dtype the run computes when the model is loaded otherwise (FSDP2 loads it into host RAM, or builds it
    without weights on the ranks that receive their shards, in fp32 under fp16: engine.training.distributed), so its
    memory plan is that GPU's. `data(tok, varlen)`, where given, runs once the tokenizer has loaded and before the
    weights do: it loads the run's examples and returns the most tokens, padding included, any micro-step of the run
    computes (`varlen`: whether the model is expected to take padding-free micro-batches, `expects_varlen`), or None;
    the memory plan is then made for that many tokens instead of batch_size x max_seq_length (load_planned)."""
    from engine.data.tokenizing import ensure_chat_template
    from engine.patching import warmup

    full_fp16_refusal(spec, placement)
    path = resolve_model(spec.model, log)
    cfg = read_config(path)
    log(
        f"model: {spec.model} ({cfg.get('model_type', '?')}), method {spec.method}, device {placement.device}, "
        f"dtype {placement.dtype}: {placement.reason}"
    )
    laps = Laps()  # for the run log's "startup:" line
    # the fast path's Triton kernels compile in the background while the tokenizer and the weights load
    kernels = warmup.start(spec, cfg, placement.device, (compute or placement).torch_dtype)
    try:
        tok = load_tokenizer(path, spec.trust_remote_code)
        log(f"chat template: {ensure_chat_template(tok, spec.chat_template)}")
        laps.lap("tokenizer")
        tokens = None
        if data is not None:
            tokens = data(tok, expects_varlen(spec, cfg, compute or placement))
            laps.lap("data")
        model, memory = load_planned(spec, path, cfg, placement, log, compute, tokens)
        laps.lap("weights")
        model = prepare_for_training(model, spec, log, memory, compute)
        laps.lap("patching and adapters")
    except BaseException:
        kernels.join(log, stop=True)  # the run fails with the load's error, not later for the warm-up
        raise
    kernels.join(log)  # before the first step: a CUDA-graph capture allows no other thread's launches
    laps.lap("waiting for the kernel warm-up")
    log(laps.line())
    return model, tok


class Laps:
    """Where loading's time went, in sub-second figures the run log's timestamps cannot give: the process's age when
    it began (Python's start and the imports before it), then each `lap` since the one before."""

    def __init__(self):
        self.age = _process_age_s()
        self.mark = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.mark))
        self.mark = now

    def line(self) -> str:
        parts = [f"{name} {seconds:.2f} s" for name, seconds in self.laps]
        if self.age is None:
            return "startup: " + ", ".join(parts)
        total = self.age + sum(seconds for _, seconds in self.laps)
        return f"startup: {total:.2f} s since the process started: before loading {self.age:.2f} s, " + ", ".join(parts)


def _process_age_s() -> float | None:
    """Seconds since this process started (its start time as the system records it), None where unknown."""
    import psutil

    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except (psutil.Error, OSError):
        return None


def full_fp16_refusal(spec, placement: Placement) -> None:
    """Full fine-tuning in fp16 in one process is refused before anything loads: its weights would be fp16 themselves,
    whose gradients torch's loss scaler will not unscale and which AdamW's small updates underflow. On the CPU too,
    where an fp16 run computes as on a T4 (a sharded run loads fp32 master shards instead: `placement` is fp32 there,
    engine.training.distributed.load_placement)."""
    if spec.method != "full" or placement.dtype != "fp16":
        return
    if placement.device == "cpu":
        raise UserError(
            "Full fine-tuning cannot train fp16 weights, and this run asks for fp16 on the CPU; set dtype to auto "
            "(fp32 on the CPU) or bf16, or use LoRA, whose adapters train in fp32."
        )
    raise UserError(
        "Full fine-tuning on one GPU needs bf16, and this run computes in fp16 (the GPU has no bf16, or the job asks "
        "for fp16); use LoRA or QLoRA, whose adapters train in fp32, or set dtype to bf16 on a GPU that has it."
    )


def load_planned(
    spec, path: Path, cfg: dict, placement: Placement, log=print, compute: Placement | None = None, tokens=None
):
    """(model, memory plan): the plan for `spec` on this machine (plan_memory; a UserError with its reason and figures
    when nothing fits), made for micro-steps of at most `tokens` tokens where given (the run's data, fewer than
    batch_size x max_seq_length), and the model at `path` loaded as it says, its layers streamed from host RAM when
    they must."""
    from engine.models import mxfp4
    from engine.models.prequantized import check_trainable, original_model

    full_fp16_refusal(spec, placement)  # load_for_training's already; the notebook API's from_pretrained loads here
    stored_4bit = check_trainable(spec.model, cfg, spec.method, original_model(path, cfg))
    memory = plan_memory(spec, cfg, compute or placement, tokens)
    if tokens is not None:
        log(
            f"plan: made for the data's largest micro-batch, {tokens} tokens with its padding (batch_size x "
            f"max_seq_length would be {spec.batch_size * spec.max_seq_length})"
        )
    log(memory.describe())
    four_bit = spec.method == "qlora"
    if memory.experts_nf4 and not four_bit:  # a plan made for QLoRA: its figures and the experts it loads are not ours
        raise ValueError(f"a {spec.method} run was given a plan that stores the experts NF4 (a QLoRA plan's)")
    experts_4bit = memory.experts_nf4 and not stored_4bit  # the plan counted them so (estimate.nf4_experts)
    if memory.streamed and stored_4bit:
        raise UserError(
            f"'{spec.model}' is stored in 4-bit and does not fit this GPU without streaming its layers, which needs "
            "the 16-bit original; load that (as QLoRA), or use a shorter max_seq_length or a larger GPU."
        )
    if mxfp4.is_mxfp4(cfg):
        log(f"loading: the MXFP4 experts are dequantized to {placement.dtype} as they load (engine.models.mxfp4)")
    # an MXFP4 checkpoint's experts, dequantized a layer at a time for every method: transformers' own MXFP4 loading
    # dequantizes whole tensors at once (7.7 GiB of host RAM for a 3 GiB two-layer slice of gpt-oss-20b) and on the
    # GPU, where a run that fits only just would not have that room
    mxfp4_layers = mxfp4.is_mxfp4(cfg)
    if memory.streamed or experts_4bit or mxfp4_layers:  # layer by layer, so no layer's 16-bit experts stay on the GPU
        from engine.memory.weights import load_streamed

        host = mxfp4_host_model(path, placement, spec.trust_remote_code) if mxfp4_layers else None
        model = load_streamed(path, placement, four_bit, memory, spec.trust_remote_code, log, experts_4bit, host)
    elif placement.device == "meta":
        model = empty_model(path, placement, spec.trust_remote_code)
    else:
        model = load_model(path, placement, four_bit=four_bit, trust_remote_code=spec.trust_remote_code)
    name_after_source(model, spec.model)
    return model, memory


def empty_model(path: Path, placement: Placement, trust_remote_code: bool = False):
    """The causal LM at `path` built without its weights (on the meta device; its buffers, such as the rotary
    frequencies, computed on the CPU): a rank of a sharded run, which receives its shard of the weights from rank 0
    (engine.training.distributed.shard), so that the machine's RAM holds the model once."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)

    def build(attention):
        with init_empty_weights(include_buffers=False):
            return AutoModelForCausalLM.from_config(
                config, dtype=placement.torch_dtype, attn_implementation=attention, trust_remote_code=trust_remote_code
            )

    try:
        model = build("sdpa")
    except ValueError as e:  # gpt-oss (attention sinks): transformers' eager attention, as load_model falls back to
        if "scaled_dot_product_attention" not in str(e):
            raise
        model = build("eager")
    model.tie_weights()  # as from_pretrained does: a tied head is the embedding's parameter, so FSDP2 shards it once
    return model


def mxfp4_host_model(path: Path, placement: Placement, trust_remote_code: bool = False):
    """(model, fill) for an MXFP4 checkpoint loaded layer by layer (engine.memory.weights.load_streamed): the model in
    host RAM in `placement`'s dtype with every weight but the experts' read from the checkpoint (those stay on the
    meta device), and `fill(layer)`, which reads one decoder layer's experts into it, dequantized (engine.models.mxfp4).
    load_streamed fills each layer as it moves it to the GPU, so host RAM holds one layer's 16-bit experts, where
    transformers' own MXFP4 loading holds the whole model's."""
    from accelerate.utils import set_module_tensor_to_device
    from transformers import GenerationConfig

    from engine.models import mxfp4

    model = empty_model(path, Placement("meta", placement.dtype, placement.reason), trust_remote_code)
    entries, packed = mxfp4.scan(path)
    files = {name: f for name, f, _, _ in entries}
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(files))
    if missing:
        raise UserError(f"'{path.name}' lacks the weight '{missing[0]}' its config needs; the model folder is damaged.")
    for name, f in files.items():
        if name not in packed and name in params:
            set_module_tensor_to_device(model, name, "cpu", value=mxfp4.read(name, f), dtype=params[name].dtype)
    model.tie_weights()
    model.config._name_or_path = model.name_or_path = str(path)  # as from_pretrained: PEFT saves it as the base
    if hasattr(model.config, "quantization_config"):  # as transformers' dequantizing load: a saved model is 16-bit
        del model.config.quantization_config
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    prefix = {id(module): name for name, module in model.named_modules()}

    def fill(layer) -> None:
        for module in layer.modules():
            for pname, p in module.named_parameters(recurse=False):
                if p.is_meta:
                    full = f"{prefix[id(module)]}.{pname}"
                    value = mxfp4.read(full, files[full], p.dtype)
                    set_module_tensor_to_device(model, full, "cpu", value=value)

    return model.eval(), fill


def kernels_on_cpu() -> bool:
    """Whether a model on the CPU takes the fast path all the same: only where a test asks for it
    (TUNESMITH_KERNELS_ON_CPU=1) with Triton's interpreter on (TRITON_INTERPRET=1), which runs the GPU kernels on the
    CPU, slowly; the CPU otherwise trains through plain transformers."""
    return os.environ.get("TUNESMITH_KERNELS_ON_CPU") == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def expects_varlen(spec, cfg: dict, placement: Placement) -> bool:
    """Whether a one-process run's model will take padding-free micro-batches (engine.patching.modules.takes_varlen,
    known only once prepare_for_training has patched it): the fast path patches it (on a GPU, or on the CPU where
    kernels_on_cpu) for a model type engine.patching has a family for (the config's own, as patch_model reads it), and
    its attention has no dropout. engine.training.sft checks the guess against the patched model."""
    if not (spec.fast_path and (placement.device.startswith("cuda") or kernels_on_cpu())):
        return False
    from engine.patching import family_for

    dropout = cfg.get("attention_dropout") or (cfg.get("text_config") or {}).get("attention_dropout")
    return family_for(cfg.get("model_type", "")) is not None and not dropout


def plan_memory(spec, cfg: dict, placement: Placement, tokens: int | None = None):
    """engine.memory.offload's plan for this run (engine.memory.verdict.plan_for: the computation `python -m engine
    estimate` shows): checkpointing, activation offload, weight streaming and the host embedding, from the VRAM budget
    (TUNESMITH_VRAM_GIB or the card, lowered to what the GPU has free) and the free host RAM; for micro-steps of at
    most `tokens` tokens where given (load_planned), else of batch_size x max_seq_length."""
    import torch

    from engine.core.hardware import vram_budget_gib
    from engine.memory import checkpointing, offload
    from engine.memory import verdict as memory
    from engine.memory.estimate import Arch

    budget = None
    if placement.device.startswith("cuda") and spec.gradient_checkpointing:
        budget = checkpointing.usable_gib(vram_budget_gib(), torch.device(placement.device))
    on_gpu = placement.device.startswith("cuda")
    ram = offload.host_ram_gib()
    return memory.plan_for(Arch.from_config(cfg), spec, budget, ram, placement.dtype, on_gpu, tokens)


def prepare_for_training(model, spec, log=print, memory=None, compute: Placement | None = None):
    """The fast path's drop-ins (engine.patching), the checkpointing policy (engine.memory.checkpointing), the trainable
    parameters (LoRA adapters, or every weight for full fine-tuning) and the offload plan `memory`
    (engine.memory.offload.Plan; None: nothing offloaded), as the spec says. `compute`: where a model loaded
    otherwise computes (load_for_training); on a GPU the checkpointing policy plans with its budget."""
    from engine.core.hardware import vram_budget_gib
    from engine.memory import checkpointing
    from engine.memory.estimate import nf4_experts
    from engine.memory.install import install
    from engine.memory.verdict import estimate_kw
    from engine.memory.weights import keep_dense

    model.config.use_cache = False
    on_gpu = any(p.device.type == "cuda" for p in model.parameters())  # the input embedding may be in host RAM
    gpu = compute is not None and compute.device.startswith("cuda")  # the model moves there once sharded
    fused_loss = False
    if spec.fast_path and (on_gpu or gpu or kernels_on_cpu()):
        # a model FSDP2 shards (gpu) is patched here, before fully_shard: each drop-in reads its weights through its
        # own attributes in its forward, where FSDP2 has put the gathered (unsharded) ones (engine.training.distributed)
        from engine.patching import patch_model

        fused_loss = "fused cross-entropy loss" in patch_model(model, log).swapped
        # with every weight trainable a graph would hold a second set of gradients (and under FSDP2 it would replay
        # without the all-gathers and reduce-scatters that FSDP2's hooks start around each layer, so every full run
        # is without); under a budget, holding as many shapes as the plan counts (engine.memory.offload), and where
        # the plan recomputes layers at its largest micro-batch, only at the smaller sizes where none recomputes and
        # the graphs fit (engine.memory.checkpointing decides them): those would otherwise run every layer eagerly
        budgeted = memory is not None and memory.budget_gib is not None
        per_shape = budgeted and memory.checkpointed > 0
        if spec.method != "full" and on_gpu and (not per_shape or fused_loss and spec.gradient_checkpointing):
            from engine.patching import graphs

            graphs.install(model, log, memory.shapes if budgeted else graphs.MAX_SHAPES, per_shape)
    elif spec.fast_path:
        log("patching: none on the CPU (the fast path's kernels are GPU kernels); plain transformers + PEFT")
    plan_kw = memory.estimate_kw() if memory is not None else {}
    if fused_loss and memory is not None:
        model.loss_chunk = memory.loss_chunk  # read by engine.patching's fused loss
    if spec.gradient_checkpointing:
        checkpointing.install(
            model,
            spec.method,
            vram_budget_gib() if on_gpu or gpu else None,
            fused_loss,
            log,
            always=memory.streamed if memory is not None else (),
            **estimate_kw(spec, on_gpu or gpu),
            **plan_kw,
        )
    if spec.method == "full":
        from engine.models.experts import freeze_routers

        for p in model.parameters():
            p.requires_grad_(True)
        freeze_routers(model, spec, log)
    else:
        model = add_lora(model, spec, log)
        if nf4_experts(spec.method, spec.fast_path and on_gpu):
            from engine.patching.moe import quantize_experts

            # MoE experts (fused 3-D tensors, which bitsandbytes leaves 16-bit) that did not load NF4 (load_planned)
            quantize_experts(model, log)
    model.memory_plan = memory  # engine.training.sft reads grads_released
    if memory is not None and memory.expert_stack:  # engine.patching.moe dequantizes a layer's experts at once
        for module in model.modules():
            if hasattr(module, "nf4_states"):
                module.whole_stack = True
    if memory is not None and memory.dense_layers and on_gpu and fused_loss:
        keep_dense(model, memory.dense_layers, memory.dense_experts, log)
    if memory is not None and memory.active and on_gpu:
        device = next(p.device for p in model.parameters() if p.device.type == "cuda")
        model.offload_stream = install(model, memory, device, log)
    if fused_loss and spec.method != "full" and spec.objective in ("sft", "pretrain"):
        from engine.patching.modules import pack_adapters

        pack_adapters(model, log)  # engine.training.sft's own loop: every adapter goes through the fused op
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_train:,} trainable of {n_all:,} ({100 * n_train / max(n_all, 1):.2f}%)")
    return model
