"""What a family file registers (`Family`) and what patching reports (`PatchReport`); imported by the family files,
engine.patching.modules and the package, and importing nothing of the engine."""

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    """What differs between families: the RMSNorm offset (Gemma's `x * (1 + w)`), the attention call's extras, and
    whether the layer norms the attention and MLP outputs before adding them to the residual (Gemma 2 and 3)."""

    model_type: str
    norm_offset: float = 0.0
    attention_kwargs: Callable = lambda attn: {}  # the keyword arguments this family's attention passes along
    sandwich_norms: bool = False  # post-attention and post-feedforward norms: the MLP output feeds a norm


@dataclass
class PatchReport:
    family: str | None
    swapped: dict = field(default_factory=dict)  # drop-in class name -> count
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        if self.family is None:
            return "; ".join(self.notes)
        parts = ", ".join(f"{n} {name}" for name, n in sorted(self.swapped.items()))
        return f"fast path for {self.family}: {parts}" + "".join(f"; {n}" for n in self.notes)
