"""JobSpec: everything a training run needs, as one frozen dataclass with a YAML round trip.

A run folder holds the spec it was started with (job.yaml), so any run can be replayed or resumed from that file
alone. Unknown keys, duplicate keys, values of the wrong type and numbers out of their range (LIMITS) are rejected
with a sentence naming the key and what it means, before a run folder is made or anything loads.
"""

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.core.errors import UserError
from engine.data.formats import FORMATS
from engine.data.reading import COMMIT
from engine.data.templates import NAMES as TEMPLATE_NAMES
from engine.spec import rewards
from engine.spec.objectives import OBJECTIVES

METHODS = ("lora", "qlora", "full")
# the usual peak learning rate of each method (the presets' too): a job that names none gets its method's; full
# fine-tuning at LoRA's 2e-4 moves every weight ten times too far and often wrecks what the model knew
USUAL_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
SCHEDULES = ("linear", "cosine", "constant")
DTYPES = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("auto", "adamw", "adamw_8bit", "paged_adamw_8bit")
# Every linear layer of a decoder block in the Llama, Mistral, Qwen and Gemma families.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INT_MAX = 2**31 - 1  # counts beyond this overflow the int32 tensors and indices they end up in


@dataclass(frozen=True)
class Limit:
    """The range of one numeric setting: `low` <= value <= `high`, with `low_open` / `high_open` excluding the end.
    Floats must also be finite."""

    meaning: str
    low: float
    high: float = INT_MAX
    low_open: bool = False
    high_open: bool = False

    def check(self, key: str, value) -> None:
        finite = isinstance(value, int) or math.isfinite(value)
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if not (finite and above and below):
            raise UserError(f"Job setting '{key}' ({self.meaning}) must be {self.describe()}; got {value!r}.")

    def describe(self) -> str:
        if self.high == math.inf:
            return "a positive number" if self.low_open else f"{self.low:g} or a positive number"
        if self.high_open:
            return f"at least {self.low:g} and below {self.high:g}"
        return f"a whole number from {self.low:,} to {self.high:,}"


# Every numeric setting's range. max_grad_norm 0 means no clipping (a negative one would flip the gradient).
LIMITS = {
    "max_seq_length": Limit("the longest example, in tokens", 1, 2**20),
    "batch_size": Limit("examples per micro-step", 1, 2**16),
    "grad_accum": Limit("micro-steps per optimizer step", 1, 2**16),
    "max_steps": Limit("optimizer steps; 0 trains for 'epochs'", 0),
    "epochs": Limit("passes over the data, when max_steps is 0", 0, math.inf),
    "learning_rate": Limit("the peak step size", 0, math.inf, low_open=True),
    "warmup_steps": Limit("steps over which the learning rate rises to its peak", 0),
    "weight_decay": Limit("how strongly weights are pulled towards 0", 0, math.inf),
    "max_grad_norm": Limit("the gradient-clipping threshold; 0 turns clipping off", 0, math.inf),
    "lora_r": Limit("the adapter rank", 1, 2**16),
    "lora_alpha": Limit("the adapter scale's numerator", 1),
    "lora_dropout": Limit("the share of adapter inputs dropped in training", 0, 1, high_open=True),
    "seed": Limit("the random seed", 0, 2**32 - 1),
    "save_every": Limit("optimizer steps between checkpoints; 0 saves only at the end", 0),
    "save_every_minutes": Limit("minutes of training between checkpoints; 0 turns the timer off", 0, math.inf),
    "keep_checkpoints": Limit("checkpoints kept", 1),
    "dpo_beta": Limit("the pull towards the base model", 0, math.inf, low_open=True),
    "num_generations": Limit("replies sampled per prompt", 2, 2**16),
    "max_new_tokens": Limit("the longest sampled reply, in tokens", 1, 2**20),
    "temperature": Limit("the sampling temperature", 0, math.inf, low_open=True),
    "grpo_beta": Limit("the KL penalty towards the base model", 0, math.inf),
    "embedding_learning_rate": Limit("the embeddings' own step size", 0, math.inf, low_open=True),
    "gpus": Limit("GPUs a run trains on; 0 uses every visible one", 0, 1024),
    "eval_fraction": Limit("the share of the training rows held out for validation", 0, 1, high_open=True),
    "eval_steps": Limit("optimizer steps between validation passes; 0 makes about 10 of them", 0),
}


@dataclass(frozen=True)
class JobSpec:
    """A training job. Field comments say what each setting costs."""

    model: str  # hub id ("Qwen/Qwen3-0.6B") or a local folder with config.json and safetensors weights
    data: str  # a dataset file (JSON, JSONL, CSV, TSV, Parquet) or a hub dataset id: Alpaca, ShareGPT or ChatML
    name: str = "run"  # folder-friendly label; the run folder is runs/<timestamp>-<name>
    method: str = "lora"  # lora: 16-bit base; qlora: 4-bit NF4 base (~1/3 the weight memory); full: all weights
    objective: str = "sft"  # sft: chat examples; pretrain: raw text; dpo / orpo: preference pairs; grpo: prompts
    data_format: str = "auto"  # auto-detect, or alpaca / sharegpt / chatml
    data_config: str = ""  # hub datasets only: the configuration (subset) name
    data_split: str = "train"  # hub datasets only: the split to train on
    # hub datasets only: the commit to read (its 40 hex digits); empty: the latest. A run records the commit it reads
    # (trained_job.json) and a resume reads that one again, whatever the latest is then
    data_revision: str = ""
    column_map: dict = field(default_factory=dict)  # {"your column": "field"}, e.g. {"question": "instruction"}
    chat_template: str = "auto"  # auto: the model's own (plain for base models); or chatml, llama-3, mistral, ...
    packing: bool = False  # pack short examples into full-length sequences: faster, same loss per example
    system_prompt: str = ""  # prepended as a system turn to every example that has none
    train_on_inputs: bool = False  # False: loss on assistant turns only (what chat models need)
    max_seq_length: int = 1024  # longer examples are truncated; memory grows linearly; capped at the model's context
    batch_size: int = 2  # examples per micro-step; memory grows linearly with it
    grad_accum: int = 1  # micro-steps per optimizer step; effective batch = batch_size * grad_accum, no memory cost
    max_steps: int = 0  # optimizer steps; 0 means train for `epochs` over the data
    epochs: float = 1.0
    learning_rate: float = 2e-4
    lr_schedule: str = "linear"  # linear / cosine decay to 0 after warmup, or constant
    warmup_steps: int = 0
    weight_decay: float = 0.0
    # auto: on a GPU 8-bit AdamW (1/4 the state memory), paged for full fine-tuning (states spill to RAM instead of
    # running out of memory); AdamW on CPU. Or adamw / adamw_8bit / paged_adamw_8bit.
    optimizer: str = "auto"
    max_grad_norm: float = 1.0  # gradient clipping; 0 turns it off
    lora_r: int = 16  # adapter rank: more capacity, more (small) memory
    lora_alpha: int = 16  # adapter scale is alpha / r (alpha / sqrt(r) with rslora)
    lora_dropout: float = 0.0
    use_rslora: bool = False
    target_modules: tuple[str, ...] = ALL_LINEAR  # layers that get adapters; missing names are skipped
    # mixture-of-experts models: adapters also on the experts' projections named in target_modules (gate/up/down)
    lora_experts: bool = True
    train_router: bool = False  # mixture-of-experts models: also train the router (LoRA: a full copy of it)
    gradient_checkpointing: bool = True  # recompute in backward the layers whose activations exceed the VRAM budget
    fast_path: bool = True  # Tunesmith's kernels for Llama/Mistral/Qwen/Gemma (off: plain transformers + PEFT)
    seed: int = 3407
    save_every: int = 0  # checkpoint every N optimizer steps (0: only at the end and on cancel)
    # also checkpoint after this many minutes of training since the last save (0: off); each save pauses training
    # while it writes the adapter and optimizer state (the whole model for full fine-tuning)
    save_every_minutes: float = 10.0
    keep_checkpoints: int = 2  # older checkpoints are deleted once a newer one is complete
    device: str = "auto"  # auto: the GPU when there is one
    # GPUs to train on, one process each (data-parallel: effective batch = batch_size x grad_accum x gpus, the same
    # learning rate); 0: every visible GPU. On a CPU, that many processes (gloo), as the tests run it
    gpus: int = 0
    dtype: str = "auto"  # auto: bf16 where the GPU supports it, fp16 (with loss scaling) otherwise, fp32 on CPU
    trust_remote_code: bool = False  # runs Python code shipped with the model: only for models you trust
    dpo_beta: float = 0.1  # dpo: strength of the pull towards the base model; orpo: weight of the odds-ratio term
    num_generations: int = 4  # grpo: replies sampled per prompt; a micro-step holds batch_size x this many replies
    max_new_tokens: int = 256  # grpo: longest sampled reply; sampling time grows with it
    temperature: float = 1.0  # grpo: sampling temperature (variety among a prompt's replies is the learning signal)
    grpo_beta: float = 0.0  # grpo: KL penalty towards the base model; 0 skips the reference pass (faster)
    rewards: tuple[dict, ...] = ()  # grpo: reward presets with weights; see engine/spec/rewards.py
    train_embeddings: bool = False  # pretrain with LoRA: also train embed_tokens and lm_head (full copies of both)
    embedding_learning_rate: float = 2e-5  # pretrain: the embeddings' and lm_head's own (lower) learning rate
    notes: dict = field(default_factory=dict)  # free-form, kept with the run (UI choices such as the preset)
    # validation (sft and pretrain): hold out this share of the training file's rows (chosen by the seed, the same on
    # every resume), or give `eval_data`, a separate file in any supported format; each pass costs a forward over it
    eval_fraction: float = 0.0
    eval_data: str = ""
    eval_data_revision: str = ""  # a hub dataset's commit for eval_data, as data_revision is for data
    # optimizer steps between validation passes (0: about 10 over the run, and at the end); each new lowest eval_loss
    # saves those weights to best/step-N (the adapter; the whole model for full fine-tuning)
    eval_steps: int = 0

    def __post_init__(self):
        for key, allowed in (
            ("method", METHODS),
            ("objective", OBJECTIVES),
            ("lr_schedule", SCHEDULES),
            ("dtype", DTYPES),
            ("device", DEVICES),
            ("optimizer", OPTIMIZERS),
            ("data_format", ("auto", *FORMATS)),
            ("chat_template", TEMPLATE_NAMES),
        ):
            if getattr(self, key) not in allowed:
                raise UserError(f"Job setting '{key}' is '{getattr(self, key)}'; use one of: {', '.join(allowed)}.")
        for key, limit in LIMITS.items():
            limit.check(key, getattr(self, key))
        if self.epochs == 0 and self.max_steps == 0:
            raise UserError("Set 'max_steps' to a positive number of steps, or 'epochs' above 0.")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                _check_text(f.name, value)
        if not self.model.strip():
            raise UserError("No model chosen: give a hub id such as 'Qwen/Qwen3-0.6B' or a local folder.")
        if not self.data.strip():
            raise UserError("No dataset chosen: give a JSON or JSONL file.")
        rewards.check(self.rewards)
        for key in ("data_revision", "eval_data_revision"):
            if getattr(self, key) and not COMMIT.fullmatch(getattr(self, key)):
                raise UserError(
                    f"Job setting '{key}' is '{getattr(self, key)}'; give a commit of the hub dataset (its 40 hex "
                    "digits, from the dataset's history page), or leave it empty to read the latest."
                )
        if (self.eval_fraction or self.eval_data) and self.objective not in ("sft", "pretrain"):
            raise UserError(
                f"Validation ('eval_fraction', 'eval_data') works with the sft and pretrain objectives, not "
                f"{self.objective}; remove it or use `python -m engine eval` on the finished run."
            )
        if self.objective == "grpo" and not self.rewards:
            raise UserError("GRPO needs at least one reward in 'rewards' (e.g. {preset: regex, pattern: ...}).")

    def to_yaml(self) -> str:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = "job") -> "JobSpec":
        """Build a spec from plain values, rejecting unknown keys and wrong types with a clear message."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a mapping of settings (key: value), got {type(d).__name__}.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
            if close:
                raise UserError(f"{source}: unknown setting '{unknown[0]}'; did you mean '{close[0]}'?")
            raise UserError(f"{source}: unknown setting '{unknown[0]}'; known settings are: {', '.join(fields)}.")
        missing = [
            n
            for n, f in fields.items()
            if n not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise UserError(f"{source}: the setting '{missing[0]}' is required.")
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(k, v, hints[k], source) for k, v in d.items()}
        if "learning_rate" not in values:
            values["learning_rate"] = USUAL_LR.get(values.get("method", "lora"), USUAL_LR["lora"])
        return cls(**values)

    @classmethod
    def from_yaml(cls, text: str, source: str = "job.yaml") -> "JobSpec":
        try:
            d = yaml.load(text, Loader=_UniqueKeyLoader)
        except _DuplicateKey as e:
            raise UserError(
                f"{source}: the setting '{e.key}' is given twice (again at line {e.line}); keep one of them."
            ) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"{source} is not valid YAML{where}; check its indentation and colons.") from None
        return cls.from_dict(d if d is not None else {}, source)

    def replace(self, **changes) -> "JobSpec":
        return dataclasses.replace(self, **changes)


def read_job(path: str | os.PathLike) -> JobSpec:
    """Read and check a job.yaml, with a sentence for a missing file, a folder, or bytes that are not UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"Job file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"'{path}' is a folder, not a job file; give the path of a job.yaml.") from None
    except PermissionError:
        raise UserError(f"Job file '{path}' cannot be read (permission denied).") from None
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError as e:
        raise UserError(f"Job file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    return JobSpec.from_yaml(text, source=str(path))


def with_paths_beside(spec: JobSpec, folder: str | os.PathLike) -> JobSpec:
    """`spec` with its relative model and data paths resolved against `folder` (a job file's own folder) where
    something exists there, so `data: identity.jsonl` means the file beside the job, wherever the command runs.
    Anything else (a hub id, an absolute path, a path found only from the working folder) is kept as written."""
    changes = {}
    for key in ("model", "data", "eval_data"):
        value = getattr(spec, key)
        beside = Path(folder) / value
        if value and not Path(value).is_absolute() and beside.exists():
            changes[key] = str(beside.resolve())
    return dataclasses.replace(spec, **changes) if changes else spec


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise _DuplicateKey(key_node.value, key_node.start_mark.line + 1)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump that quotes the text _UniqueKeyLoader would read as a number ("1e3" as a run name)."""


# YAML 1.1 (PyYAML) reads `2e-4`, with no dot in it, as text; YAML 1.2 and the other tools read a number, as meant.
_EXPONENT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
for _cls in (_UniqueKeyLoader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+0123456789"))


def _check_text(key: str, value: str) -> None:
    """A lone surrogate ('\\ud800' in YAML) cannot be written or tokenized: refuse it here with the key's name."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"Job setting '{key}' holds an invalid character ({value[e.start]!a} at position {e.start}); remove it."
        ) from None


def _coerce(key, value, hint, source):
    """Check one value against its field's type; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(hint)
    bad = UserError(f"{source}: setting '{key}' should be {_type_name(hint)}, not {value!r}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():  # max_steps: 1e3
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) for v in value):
            raise bad
        return tuple(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def _type_name(hint) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a mapping"}
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is dict:
        return "a list of mappings"
    return names.get(hint, "a list of names")
