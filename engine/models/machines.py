"""Machine presets (presets/machines.yaml): a GPU count, each GPU's memory and the dtype it computes in, by name,
so a run can be planned for a machine that is not this one (Kaggle's 2 x T4)."""

from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.core.errors import UserError

MACHINES = Path(__file__).resolve().parents[2] / "presets" / "machines.yaml"
DTYPES = ("bf16", "fp16")


@dataclass(frozen=True)
class Machine:
    name: str
    gpus: int  # one training process each
    vram_gib: float  # per GPU
    dtype: str  # bf16, or fp16 with loss scaling
    note: str


def machines(path: Path = MACHINES) -> dict[str, Machine]:
    """Every machine preset by name; a malformed entry is a UserError naming it."""
    entries = yaml.safe_load(path.read_text())["machines"]
    out = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"gpus", "vram_gib", "dtype", "note"}:
            raise UserError(f"{path.name}: '{name}' needs exactly gpus, vram_gib, dtype and note.")
        good = isinstance(entry["gpus"], int) and entry["gpus"] >= 1 and isinstance(entry["vram_gib"], (int, float))
        if not good or entry["vram_gib"] <= 0 or entry["dtype"] not in DTYPES:
            raise UserError(f"{path.name}: '{name}' needs gpus >= 1, vram_gib > 0 and dtype one of {DTYPES}.")
        out[name] = Machine(name, entry["gpus"], float(entry["vram_gib"]), entry["dtype"], str(entry["note"]))
    return out


def machine(name: str) -> Machine:
    """The machine preset `name`, or a UserError listing the known ones."""
    known = machines()
    if name not in known:
        raise UserError(f"No machine preset '{name}'; known ones are: {', '.join(known)}.")
    return known[name]
