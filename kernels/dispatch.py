"""Whether the public kernel functions run their Triton kernels or their pure-torch references.

Decided once, at import, with the reason kept in `REASON` and logged:

- `TUNESMITH_KERNELS=triton|reference` in the environment wins;
- otherwise Triton on CUDA, and on the CPU only under Triton's interpreter (`TRITON_INTERPRET=1`, which must be set
  before any kernel module is imported, since `triton.jit` reads it when it decorates);
- otherwise the reference.

Tests force either path with `with dispatch.force("reference"): ...`. A Triton call also needs its tensors on a device
Triton can run on (CUDA, or the CPU under the interpreter); `use_triton(tensor)` checks both.
"""

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BACKENDS = ("triton", "reference")


def _decide() -> tuple[str, str]:
    wanted = os.environ.get("TUNESMITH_KERNELS", "").strip().lower()
    if wanted:
        if wanted not in BACKENDS:
            raise ValueError(f"TUNESMITH_KERNELS={wanted!r}: use one of {', '.join(BACKENDS)}")
        return wanted, f"TUNESMITH_KERNELS={wanted}"
    try:
        import triton  # noqa: F401  (only checks that Triton is installed)
    except ImportError as exc:
        return "reference", f"triton is not importable ({exc})"
    if torch.cuda.is_available():
        return "triton", f"CUDA device {torch.cuda.get_device_name()}"
    if INTERPRET:
        return "triton", "no CUDA; TRITON_INTERPRET=1, so Triton kernels run in the CPU interpreter (slow, for tests)"
    return "reference", "no CUDA and TRITON_INTERPRET is not 1: pure-torch references"


BACKEND, REASON = _decide()
log.info("kernels: %s (%s)", BACKEND, REASON)

_forced: list[str] = []


def backend() -> str:
    """The backend in force now: the innermost `force()`, else the one decided at import."""
    return _forced[-1] if _forced else BACKEND


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run on these tensors.

    Raises:
        RuntimeError: Triton is forced but the tensors live where Triton cannot run (CPU without the interpreter).
    """
    if backend() != "triton":
        return False
    for t in tensors:
        if not (t.is_cuda or (INTERPRET and t.device.type == "cpu")):
            raise RuntimeError(
                f"Triton kernels were forced but a tensor is on {t.device}; on the CPU they need TRITON_INTERPRET=1 "
                "set before kernels are imported"
            )
    return True


@contextlib.contextmanager
def force(name: str):
    """Run the enclosed calls on one backend ("triton" or "reference"), whatever was decided at import."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: use one of {', '.join(BACKENDS)}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()
