"""Older TRL / transformers argument spellings, translated to the installed versions' (as `import unsloth` does).

Notebooks written in 2024-2025 pass `SFTTrainer(tokenizer=..., dataset_text_field=..., max_seq_length=...,
packing=...)`, `SFTConfig(max_seq_length=...)`, `TrainingArguments(warmup_ratio=...)`, `DPOTrainer(tokenizer=...)`,
`DPOConfig(max_prompt_length=...)`; TRL 1.x and transformers 5 refuse them with a TypeError. `install` (run by
`import tunesmith`) wraps the `__init__` of those classes so that an argument the installed class no longer takes is
rewritten to its current spelling, with one log line saying so, before the library's own `__init__` runs. Arguments the
installed class still takes are never touched, so on older versions nothing changes; `uninstall` restores the
originals. This is the one process-wide change Tunesmith makes, because a ported notebook keeps its `from trl import
SFTTrainer` line: the issue's "change only the imports" needs it.

Arguments that no version of any library took (offload_params_to_cpu, ...) raise a UserError saying what to write.

An SFTTrainer given no max_length cuts at the model's max_seq_length (from FastLanguageModel.from_pretrained), as
Unsloth's does, rather than at TRL's default of 1024 (logged).

One value is translated too: `tokenizer.apply_chat_template(dataset["conversations"], tokenize=False)` (Qwen3
notebooks) got a list of conversations from datasets 3, and renders each; datasets 4 gives a lazy `Column`, which
transformers takes for one conversation and renders into a single string of empty turns, with no error. The tokenizers'
apply_chat_template turns such a column into the list it was (logged once).
"""

import dataclasses
import functools
import importlib
import inspect
import warnings
from collections.abc import Sequence

from engine.core.errors import UserError

# old argument -> (current argument, or None when the installed versions have no equivalent and drop it, why)
CONFIG_RENAMES = {
    "evaluation_strategy": ("eval_strategy", ""),
    "no_cuda": ("use_cpu", ""),
    "per_gpu_train_batch_size": ("per_device_train_batch_size", ""),
    "per_gpu_eval_batch_size": ("per_device_eval_batch_size", ""),
    "push_to_hub_token": ("hub_token", ""),
    "max_seq_length": ("max_length", ""),
    "max_prompt_length": (
        None,
        "prompts are no longer cut on their own; max_length (DPO) or the model's context "
        "(GRPO) bounds the whole sequence",
    ),  # fmt: skip
    "max_completion_length": (None, "answers are no longer cut on their own; max_length bounds the whole sequence"),
    "max_target_length": (None, "answers are no longer cut on their own; max_length bounds the whole sequence"),
    "overwrite_output_dir": (None, "the Trainer never read it (only example scripts did)"),
}
TRAINER_RENAMES = {"tokenizer": ("processing_class", "")}
# Arguments of no transformers/TRL version that guides show: what to write instead
NOWHERE = {
    "offload_params_to_cpu": "drop it: no library has it; Tunesmith's memory plan (model.memory_plan, made by "
    "FastLanguageModel.from_pretrained) decides what is offloaded",
    "offload_activations": "drop it: no TrainingArguments has it; Tunesmith's memory plan offloads activations when "
    "the GPU needs it (TRL's own switch is SFTConfig(activation_offloading=True))",
}
TRAINERS = {
    "SFTTrainer": "SFTConfig",
    "DPOTrainer": "DPOConfig",
    "GRPOTrainer": "GRPOConfig",
    "ORPOTrainer": "ORPOConfig",
    "CPOTrainer": "CPOConfig",
}
CONFIGS = ("SFTConfig", "DPOConfig", "GRPOConfig", "ORPOConfig", "CPOConfig")
# SFTConfig and its subclass tunesmith.trainer.UnslothTrainingArguments: SFTTrainer may give them the model's length
SFT_CONFIGS = ("SFTConfig", "UnslothTrainingArguments")
# TRL 1.x moved these out of `trl` (an ImportError for `from trl import ORPOTrainer`, as Unsloth's ORPO notebook
# writes, and for CPOTrainer, which its CPO / SimPO notebooks import)
MOVED = {
    "ORPOConfig": "trl.experimental.orpo",
    "ORPOTrainer": "trl.experimental.orpo",
    "CPOConfig": "trl.experimental.cpo",
    "CPOTrainer": "trl.experimental.cpo",
}
_WRAPPED = "__tunesmith_wrapped__"
# set on an SFTConfig made without max_length (nor max_seq_length): the trainer may take the model's max_seq_length
_NO_LENGTH = "_tunesmith_no_max_length"


def _log(line: str) -> None:
    print(f"tunesmith: {line}")


def translate_config(name: str, fields: set, kwargs: dict, given_to: str = "") -> dict:
    """`kwargs` for the config class `name` whose fields are `fields`, with older spellings rewritten (logged).

    Only arguments the class does not take are rewritten; values are never logged (a hub token may be among them).
    `given_to` names the call the user wrote them in when that was not the config (a trainer), for the log.
    """
    said = given_to or name
    out = {}
    for key, value in kwargs.items():
        if key in fields:
            out[key] = value
        elif key in NOWHERE:
            raise UserError(f"{said}: '{key}' is not an argument of any transformers or TRL version; {NOWHERE[key]}.")
        elif key == "warmup_ratio" and "warmup_steps" in fields:
            if kwargs.get("warmup_steps"):  # transformers used warmup_steps over warmup_ratio when both were set
                _log(f"{said}: warmup_ratio dropped; warmup_steps was given too and takes precedence, as it always did")
            else:
                out["warmup_steps"] = value
                _log(
                    f"{said}(warmup_ratio=...) is {name}(warmup_steps=...) now (a value below 1 is a ratio); translated"
                )
        elif key == "vllm_sampling_params" and "top_k" in fields:
            out.update(_sampling(said, name, value, kwargs))
        elif key == "group_by_length" and "train_sampling_strategy" in fields:
            if value:
                out["train_sampling_strategy"] = "group_by_length"
            _log(f'{said}(group_by_length=...) is {name}(train_sampling_strategy="group_by_length") now; translated')
        elif key in CONFIG_RENAMES and (CONFIG_RENAMES[key][0] is None or CONFIG_RENAMES[key][0] in fields):
            new, why = CONFIG_RENAMES[key]
            if new is None:
                _log(f"{said}: {key} dropped ({why})")
            else:
                out.setdefault(new, value)
                _log(f"{said}({key}=...) is {name}({new}=...) now; translated")
        else:
            out[key] = value  # unknown here: the library raises its own TypeError
    return out


# vLLM SamplingParams fields that GRPOConfig has under the same name (top_k: vLLM's -1 is TRL's 0, both "off")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _sampling(said: str, name: str, params, kwargs: dict) -> dict:
    """GRPOConfig(vllm_sampling_params=SamplingParams(...)) (Unsloth's GRPO notebooks): the sampling settings it holds
    as GRPOConfig's own fields, where the notebook did not give those too (logged); its other settings are vLLM's
    request options, which TRL's generation does not take, each named in the log with why it is dropped."""
    from tunesmith.fast_generate import SamplingParams

    got = {}
    for field in SAMPLING_FIELDS:
        value = getattr(params, field, None)
        if value is not None and field not in kwargs:
            got[field] = 0 if field == "top_k" and value < 0 else value
    _log(f"{said}(vllm_sampling_params=...) is {name}({', '.join(f'{k}=...' for k in got)}) now; translated")
    default = SamplingParams()
    dropped = [
        k for k, v in vars(default).items() if k not in SAMPLING_FIELDS and getattr(params, k, v) not in (v, None)
    ]
    if dropped:
        _log(
            f"{said}: vllm_sampling_params' {', '.join(dropped)} dropped (vLLM's request options: TRL generates up "
            "to max_completion_length, stops at the model's EOS tokens and samples from the config's seed)"
        )
    return got


def cpu_bf16(name: str, kwargs: dict, bf16_default) -> dict:
    """`kwargs` with use_cpu=True added where bf16 is asked for (or TRL's default of it) on a machine without a GPU.

    transformers 5 refuses bf16 unless a bf16 GPU is present or use_cpu is set, though the CPU is where such a run
    goes anyway and torch computes bf16 there; TRL's configs default to bf16, so without this no TRL config could be
    made on a CPU. Nothing changes where a GPU (or use_cpu) is present.
    """
    import torch

    if "use_cpu" in kwargs or torch.cuda.is_available() or torch.backends.mps.is_available():
        return kwargs
    bf16 = kwargs.get("bf16", bf16_default)
    if bf16 is None:  # TRL's default: bf16 unless fp16
        bf16 = not kwargs.get("fp16", False)
    if not bf16:
        return kwargs
    _log(f"{name}: bf16 without a GPU needs use_cpu=True in transformers 5 (the run is on the CPU either way); set")
    return dict(kwargs, use_cpu=True)


def _fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def _wrap_config(cls) -> None:
    original = cls.__dict__["__init__"]
    name, fields = cls.__name__, _fields(cls)
    bf16_default = next(f.default for f in dataclasses.fields(cls) if f.name == "bf16")

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        kwargs = translate_config(name, fields, kwargs)
        original(self, *args, **cpu_bf16(name, kwargs, bf16_default))
        if name in SFT_CONFIGS and "max_length" not in kwargs:
            setattr(self, _NO_LENGTH, True)

    setattr(__init__, _WRAPPED, original)
    cls.__init__ = __init__


def _wrap_trainer(cls, config_cls) -> None:
    """Trainer(tokenizer=...) becomes processing_class=...; config arguments given to the trainer (TRL <= 0.11's
    dataset_text_field, max_seq_length, packing, beta, ...) move into its `args`, converted as TRL converts a plain
    TrainingArguments, then translated like a config's own arguments."""
    original = cls.__dict__["__init__"]
    name, params = cls.__name__, set(inspect.signature(original).parameters)
    fields = _fields(config_cls)
    movable = fields | set(CONFIG_RENAMES) | {"warmup_ratio", "group_by_length"}

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        kw, moved = {}, {}
        for key, value in kwargs.items():
            if key in params:
                kw[key] = value
            elif key in TRAINER_RENAMES and TRAINER_RENAMES[key][0] in params:
                kw.setdefault(TRAINER_RENAMES[key][0], value)
                _log(f"{name}({key}=...) is {TRAINER_RENAMES[key][0]}=... now; translated")
            elif key in movable:
                moved[key] = value
            else:
                kw[key] = value
        if moved:
            bound = inspect.signature(original).bind_partial(self, *args, **kw)
            config = _as_config(bound.arguments.get("args"), bound.arguments.get("model"), config_cls, name)
            for key, value in translate_config(config_cls.__name__, fields, moved, name).items():
                setattr(config, key, value)
                if key == "max_length":
                    setattr(config, _NO_LENGTH, False)
                if key in moved:
                    _log(f"{name}({key}=...) is {config_cls.__name__}({key}=...) now; moved into args")
            bound.arguments["args"] = config
            args, kw = bound.args[1:], bound.kwargs
        if name == "SFTTrainer":
            bound = inspect.signature(original).bind_partial(self, *args, **kw)
            _model_length(bound, config_cls)
            args, kw = _one_bos(bound)
        original(self, *args, **kw)

    setattr(__init__, _WRAPPED, original)
    cls.__init__ = __init__


def _model_length(bound, config_cls) -> None:
    """SFTTrainer's `args` with max_length set to the model's max_seq_length (a Tunesmith model's, from
    from_pretrained) where the notebook gave no length, as Unsloth's trainer does.

    Unsloth notebooks give the length once, to from_pretrained, which plans memory for it; TRL's default max_length
    (1024) would instead cut a longer max_seq_length short, or train rows longer than the plan, without a word.
    """
    model = bound.arguments.get("model")
    length = getattr(model, "max_seq_length", None) if not isinstance(model, str) else None
    config = bound.arguments.get("args")
    if not isinstance(length, int) or (isinstance(config, config_cls) and not getattr(config, _NO_LENGTH, False)):
        return
    config = _as_config(config, model, config_cls, "SFTTrainer")
    config.max_length = length
    setattr(config, _NO_LENGTH, False)
    _log(f"SFTTrainer: max_length is the model's max_seq_length ({length}), as in Unsloth (TRL's default is 1024)")
    bound.arguments["args"] = config


def _one_bos(bound) -> tuple[tuple, dict]:
    """SFTTrainer's arguments with the BOS token taken off the front of text rows that start with it, where the
    tokenizer adds its own BOS (Llama 3, Mistral, Gemma).

    Notebooks render their rows with tokenizer.apply_chat_template(..., tokenize=False), whose templates write
    bos_token first; TRL tokenizes such text with special tokens, so every example would start with two BOS tokens,
    which Unsloth's trainer avoids. Taking it off the text (as the Gemma 3 notebook does by hand) leaves one.
    """
    from datasets import Dataset

    tok = bound.arguments.get("processing_class")
    tok = getattr(tok, "tokenizer", tok)
    config = bound.arguments.get("args")
    field = getattr(config, "dataset_text_field", None) or "text"
    bos = getattr(tok, "bos_token", None)
    if not bos or tok.bos_token_id is None or bound.arguments.get("formatting_func") is not None:
        return bound.args[1:], bound.kwargs
    if tok("a")["input_ids"][:1] != [tok.bos_token_id]:  # this tokenizer adds no BOS itself
        return bound.args[1:], bound.kwargs

    def strip(dataset, which):
        if not isinstance(dataset, Dataset) or field not in dataset.column_names or "input_ids" in dataset.column_names:
            return dataset
        first = dataset[0][field] if len(dataset) else None
        if not isinstance(first, str) or not first.startswith(bos):
            return dataset
        _log(f"SFTTrainer: the {which} texts start with {bos}, which the tokenizer adds again; taken off the text")
        return dataset.map(lambda row: {field: row[field].removeprefix(bos)}, desc=f"One {bos} per {which} example")

    bound.arguments["train_dataset"] = strip(bound.arguments.get("train_dataset"), "train")
    evals = bound.arguments.get("eval_dataset")
    if isinstance(evals, dict):
        bound.arguments["eval_dataset"] = {k: strip(v, f"{k} eval") for k, v in evals.items()}
    elif evals is not None:
        bound.arguments["eval_dataset"] = strip(evals, "eval")
    return bound.args[1:], bound.kwargs


def _as_config(args, model, config_cls, trainer: str):
    """The trainer's `args` as a `config_cls`, made as TRL makes it (a default for None, else a converted copy)."""
    if isinstance(args, config_cls):
        return args
    if args is None:
        model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
        return config_cls(f"{str(model_name).rstrip('/').split('/')[-1]}-{trainer.removesuffix('Trainer')}")
    values = args.to_dict()
    values["hub_token"] = args.hub_token  # to_dict hides the hub_token
    values.pop("push_to_hub_token", None)
    return config_cls(**values)


def _wrap_chat_template(cls) -> None:
    """cls.apply_chat_template with a datasets `Column` (or any sequence other than a list or tuple) of conversations
    made a list first, so that transformers renders it as a batch, as it did with datasets 3's lists."""
    original = cls.__dict__["apply_chat_template"]
    said = []

    @functools.wraps(original)
    def apply_chat_template(self, conversation, *args, **kwargs):
        if isinstance(conversation, Sequence) and not isinstance(conversation, (list, tuple, str)):
            if not said:
                said.append(True)
                _log(f"apply_chat_template({type(conversation).__name__}): made a list, rendered as a batch")
            conversation = list(conversation)
        return original(self, conversation, *args, **kwargs)

    setattr(apply_chat_template, _WRAPPED, original)
    cls.apply_chat_template = apply_chat_template


def PatchDPOTrainer() -> None:  # noqa: N802 (Unsloth's name, which ported notebooks call)
    """Unsloth's DPO/ORPO notebooks call this before building the trainer; it does nothing (as in Unsloth now): TRL's
    DPOTrainer takes Tunesmith's model as it is, and `install` translated its older spellings."""


def PatchKTOTrainer() -> None:  # noqa: N802 (Unsloth's name)
    """As PatchDPOTrainer, for Unsloth's KTO notebooks: does nothing."""


def PatchFastRL(algorithm=None, FastLanguageModel=None) -> None:  # noqa: N802, N803 (Unsloth's names)
    """Unsloth's early GRPO notebooks call PatchFastRL("GRPO", FastLanguageModel); it does nothing here: TRL's
    GRPOTrainer takes Tunesmith's model as it is (there is no vLLM to hook up)."""


def install() -> None:
    """Wrap the installed TrainingArguments, TRL configs and trainers and the tokenizers' apply_chat_template (once);
    the TRL classes only when TRL is installed. ORPO's and CPO's, which TRL 1.x keeps in trl.experimental, are named
    in `trl` again, where the notebooks import them from."""
    import transformers
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    try:
        import trl
    except ImportError:
        trl = None
    for name, module in MOVED.items():
        if trl and not hasattr(trl, name):
            with warnings.catch_warnings():  # TRL warns on every import from trl.experimental
                warnings.simplefilter("ignore")
                setattr(trl, name, getattr(importlib.import_module(module), name))
    classes = [transformers.TrainingArguments] + [getattr(trl, c) for c in CONFIGS if trl and hasattr(trl, c)]
    if trl:
        from tunesmith.trainer import UnslothTrainingArguments

        classes.append(UnslothTrainingArguments)  # a dataclass of its own __init__, which SFTConfig's wrap misses
    for cls in classes:
        if not hasattr(cls.__dict__["__init__"], _WRAPPED):
            _wrap_config(cls)
    if not hasattr(PreTrainedTokenizerBase.__dict__["apply_chat_template"], _WRAPPED):
        _wrap_chat_template(PreTrainedTokenizerBase)
    for trainer, config in TRAINERS.items():
        if trl and hasattr(trl, trainer) and not hasattr(getattr(trl, trainer).__dict__["__init__"], _WRAPPED):
            _wrap_trainer(getattr(trl, trainer), getattr(trl, config))


def uninstall() -> None:
    """Put back every `__init__` and the `apply_chat_template` that install wrapped."""
    import transformers
    import trl
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from tunesmith.trainer import UnslothTrainingArguments

    classes = [getattr(trl, c) for c in (*CONFIGS, *TRAINERS) if hasattr(trl, c)]
    for cls in [transformers.TrainingArguments, UnslothTrainingArguments, *classes]:
        original = getattr(cls.__dict__["__init__"], _WRAPPED, None)
        if original is not None:
            cls.__init__ = original
    original = getattr(PreTrainedTokenizerBase.__dict__["apply_chat_template"], _WRAPPED, None)
    if original is not None:
        PreTrainedTokenizerBase.apply_chat_template = original
