"""VRAM-tier presets: presets/tier-<N>gb.yaml hold, per model-size class and method, the settings that fit and run
fast on an N GB card, or "does not fit" with the reason. Values only, validated into frozen dataclasses.

    python -m engine.models.presets derive    rewrite the tier files from the estimator (after recalibrating it)
"""

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.core.errors import UserError
from engine.memory.estimate import ESTIMATE_SLACK, Arch, estimate
from engine.spec.jobspec import USUAL_LR

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"
TIERS = (6, 8, 12, 16, 24, 48, 80)
CLASSES = ("0.5b", "1-2b", "3-4b", "7-8b", "12-14b", "24-32b", "70b")
METHODS = ("qlora", "lora", "full")
OFFLOAD_RAM_GIB = 64  # host RAM an offloading preset may count on (a well-equipped desktop); runs check the real RAM
USABLE = 0.9  # share of a tier's nominal GiB a run may plan for (a "16 GB" T4 has 14.6 GiB; drivers keep some)
REFERENCE = {  # the catalog model each size class is sized for (the largest common one in the class)
    "0.5b": "Qwen/Qwen3-0.6B",
    "1-2b": "Qwen/Qwen3-1.7B",
    "3-4b": "Qwen/Qwen3-4B",
    "7-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "12-14b": "Qwen/Qwen3-14B",
    "24-32b": "Qwen/Qwen3-32B",
    "70b": "meta-llama/Llama-3.3-70B-Instruct",
}


@dataclass(frozen=True)
class Preset:
    batch_size: int  # examples per micro-step: activation memory grows linearly, so does throughput
    grad_accum: int  # micro-steps per optimizer step: a larger effective batch at no memory cost
    max_seq_length: int  # tokens per example: activation and loss memory grow linearly
    lora_r: int  # adapter rank: a few MB per unit of rank; more capacity
    lora_alpha: int  # adapter scale alpha / r: no memory cost
    gradient_checkpointing: bool  # recompute activations in backward: far less memory, about 30% slower
    offload: str  # none; activations / optimizer / weights: what engine.memory.offload keeps in host RAM, slower
    optimizer: str  # adamw_8bit: 2 bytes of state per trainable parameter; adamw: 8
    learning_rate: float  # peak learning rate
    lr_schedule: str  # linear / cosine decay after warmup, or constant
    warmup_steps: int  # steps of linear warmup

    def job_settings(self) -> dict:
        """The JobSpec fields this preset sets."""
        d = dataclasses.asdict(self)
        d.pop("offload")
        return d


@dataclass(frozen=True)
class NoFit:
    reason: str


def _load_entry(entry, where: str):
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping of settings.")
    if entry.get("fits") is False:
        if set(entry) != {"fits", "reason"}:
            raise UserError(f"{where}: a 'fits: false' entry has only 'fits' and 'reason'.")
        return NoFit(str(entry["reason"]))
    names = {f.name: f.type for f in dataclasses.fields(Preset)}
    unknown = sorted(set(entry) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'; known keys are {', '.join(names)}.")
    missing = sorted(set(names) - set(entry))
    if missing:
        raise UserError(f"{where}: key '{missing[0]}' is missing.")
    for key, typ in names.items():
        value = entry[key]
        ok = isinstance(value, (int, float) if typ is float else typ) and not (
            typ is not bool and value is True or typ is not bool and value is False
        )
        if not ok:
            raise UserError(f"{where}: '{key}' should be {typ.__name__}, not {value!r}.")
    return Preset(**entry)


def load_tier(path: Path) -> dict:
    """{class: {method: Preset | NoFit}} of one tier file, validated."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or set(doc) != {"vram_gb", "presets"}:
        raise UserError(f"{path.name}: expected exactly the keys vram_gb and presets.")
    out = {}
    for cls in CLASSES:
        methods = doc["presets"].get(cls)
        if not isinstance(methods, dict) or set(methods) != set(METHODS):
            raise UserError(f"{path.name}: class '{cls}' needs exactly the methods {', '.join(METHODS)}.")
        out[cls] = {m: _load_entry(methods[m], f"{path.name}: {cls}/{m}") for m in METHODS}
    unknown = sorted(set(doc["presets"]) - set(CLASSES))
    if unknown:
        raise UserError(f"{path.name}: unknown size class '{unknown[0]}'.")
    return out


def tier_file(tier: int) -> Path:
    return PRESETS_DIR / f"tier-{tier:02d}gb.yaml"


def pick_tier(vram_gib: float) -> int:
    """The largest tier whose usable share fits in `vram_gib` (a T4's 14.6 GiB is the 16 GB tier)."""
    fitting = [t for t in TIERS if t * USABLE <= vram_gib + 0.05]
    if not fitting:
        raise UserError(f"This GPU has {vram_gib:.1f} GiB; Tunesmith needs at least a 6 GB card (or the CPU).")
    return fitting[-1]


def tier_for(vram_gib: float) -> int | None:
    """The tier of a card with `vram_gib`, or None under the smallest."""
    try:
        return pick_tier(vram_gib)
    except UserError:
        return None


def from_plan(plan, base: "Preset | None", spec) -> Preset:
    """The preset for `spec`'s sequence length, batch and rank on the budget `plan` (engine.memory.offload.Plan) was
    made for: host-RAM offload as the plan has it, one micro-batch per step where the plan updates weights in the
    backward (engine.memory.grad_release needs it), else 8 sequences per step; the learning rate and its schedule from
    the tier's preset `base` where there is one. Checkpointing stays on, also where the plan recomputes no layer:
    it is the job's setting that has the run plan under its budget (engine.models.loading.plan_memory), which then
    recomputes the layers the plan says, none there; off, the run plans without a budget (no 16-bit copies of NF4
    weights, other CUDA graphs), another plan than the one shown."""
    lr = base.learning_rate if base else USUAL_LR[spec.method]
    kind = "weights" if plan.streamed else "optimizer" if plan.optimizer_in_host else "none"
    if kind == "none" and plan.offload_activations:
        kind = "activations"
    accum = 1 if plan.grads_released else max(1, 8 // spec.batch_size)
    return Preset(
        spec.batch_size, accum, spec.max_seq_length, spec.lora_r, spec.lora_alpha, True, kind,
        "adamw_8bit", lr, base.lr_schedule if base else "linear", base.warmup_steps if base else 5,
    )  # fmt: skip


def size_class(params: int) -> str:
    """The preset size class of a model with `params` parameters."""
    b = params / 1e9
    for name, upper in (
        ("0.5b", 0.9),
        ("1-2b", 2.8),
        ("3-4b", 5.0),
        ("7-8b", 10.0),
        ("12-14b", 16.0),
        ("24-32b", 36.0),
        ("70b", math.inf),
    ):
        if b <= upper:
            return name
    raise AssertionError("unreachable")


def preset_for(tier: int, params: int, method: str):
    return load_tier(tier_file(tier))[size_class(params)][method]


def derive(tier: int, arch: Arch, method: str):
    """The fastest settings that fit: the longest standard sequence, then the largest batch, then no
    recomputation where even that fits. When nothing fits in VRAM alone, the longest sequence (batch 2, then 1) that
    engine.memory.offload can plan by keeping activations, optimizer states or frozen weights in host RAM (slower; the
    run makes its own plan at start, this only says it will fit)."""
    from engine.memory.offload import plan

    budget = tier * USABLE
    lr = 2e-5 if method == "full" else 2e-4
    seqs = (4096, 2048, 1024, 512) if tier >= 48 else (2048, 1024, 512)
    for seq in seqs:
        for batch in (8, 4, 2, 1):
            if not estimate(arch, method, seq, batch).fits(budget):
                continue
            ckpt = not estimate(arch, method, seq, batch, checkpointing=False).fits(budget)
            return Preset(batch, max(1, 8 // batch), seq, 16, 16, ckpt, "none", "adamw_8bit", lr, "linear", 5)
    for seq in seqs[-3:]:
        for batch in (2, 1):
            try:
                p = plan(arch, method, seq, batch, budget, host_ram_gib=OFFLOAD_RAM_GIB)
            except UserError:
                continue
            kind = "weights" if p.streamed else "optimizer" if p.optimizer_in_host else "activations"
            return Preset(batch, 8 // batch, seq, 16, 16, True, kind, "adamw_8bit", lr, "linear", 5)
    need = estimate(arch, method, 512, 1).peak_vram_gib * ESTIMATE_SLACK
    return NoFit(
        f"needs about {need:.1f} GiB at 512 tokens and batch 1, and more than this tier's {budget:.1f} GiB even with "
        f"the offload manager and {OFFLOAD_RAM_GIB} GiB of host RAM"
    )


def catalog() -> list[dict]:
    """The curated model list (presets/models.yaml)."""
    return yaml.safe_load((PRESETS_DIR / "models.yaml").read_text())["models"]


def _write_all() -> None:
    archs = {}
    for m in catalog():
        archs[m["id"]] = Arch(*m["arch"])
    header = (
        "# Tunesmith preset for {t} GB cards: per model-size class and method, the fastest settings that fit, or why\n"
        "# not. Values only; written by `python -m engine.models.presets derive` from the memory estimator (engine/\n"
        "# estimate.py), whose coefficients were measured on the GPU machine (presets/README.md). Keys:\n"
        + "".join(f"#   {f.name}: {_comment(f.name)}\n" for f in dataclasses.fields(Preset))
        + "# Size classes are sized for: "
        + ", ".join(f"{c} {REFERENCE[c]}" for c in CLASSES)
        + ".\n"
    )
    for tier in TIERS:
        presets = {}
        for cls in CLASSES:
            presets[cls] = {}
            for method in METHODS:
                p = derive(tier, archs[REFERENCE[cls]], method)
                presets[cls][method] = (
                    {"fits": False, "reason": p.reason} if isinstance(p, NoFit) else dataclasses.asdict(p)
                )
        body = yaml.safe_dump(
            {"vram_gb": tier, "presets": presets}, sort_keys=False, default_flow_style=None, width=200
        )
        tier_file(tier).write_text(header.format(t=tier) + body)
        print(f"wrote {tier_file(tier).name}")


def _comment(name: str) -> str:
    source = Path(__file__).read_text().splitlines()
    line = next(s for s in source if s.strip().startswith(f"{name}: ") and "#" in s)
    return line.split("#", 1)[1].strip()


if __name__ == "__main__":
    if sys.argv[1:] == ["derive"]:
        _write_all()
    else:
        sys.exit(__doc__)
