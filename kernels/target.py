"""The GPU a kernel launch is for, as the launchers see it: its compute capability and the shared memory one block
may use (the opt-in limit, `cudaDevAttrMaxSharedMemoryPerBlockOptin`, which Triton checks a compiled kernel against
before it raises OutOfResources).

A launcher picks tiles, stages and dot precisions from `of(tensor)`: the tensor's CUDA device, or None on the CPU,
where Triton's interpreter runs the kernels with tiles and precisions of its own (small tiles, fp32 products: see
kernels.varlen_attention's `_dot`). The configs measured on the H100/H200 need more shared memory than a T4 (64 KiB)
or an RTX 30xx/40xx (99 KiB) has, so a launcher whose tiles could pass a smaller card's limit picks them as a pure
function of the Target (e.g. kernels.varlen_attention's `gpu_blocks`).

`emulate(target)` makes `of` answer that target for every tensor, CPU ones included: tests launch the engine's
kernels in the interpreter with the configs a GPU of that kind would get, and compile what was launched for it
(tests/kernels/test_compile_targets.py). The interpreter then runs with the GPU's tiles and precisions; its numbers
are not checked there.
"""

import contextlib
import functools
from typing import NamedTuple

import torch


class Target(NamedTuple):
    """What a launcher needs to know about the GPU it launches on."""

    capability: int  # major * 10 + minor: 75 (T4), 80 (A100), 86 / 89 (RTX 30xx / 40xx), 90 (H100 / H200)
    shared_memory: int  # bytes of shared memory one block may use, opted in


@functools.cache
def _device(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(props.major * 10 + props.minor, props.shared_memory_per_block_optin)


_emulated: list[Target] = []


def of(t: torch.Tensor) -> Target | None:
    """The GPU a launch on `t` runs on (the emulated one inside `emulate`); None on the CPU (the interpreter)."""
    if _emulated:
        return _emulated[-1]
    if t.is_cuda:
        return _device(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return None


def dot_precision(t: torch.Tensor) -> str:
    """The `_dot` precision of kernels whose operands have t's dtype: IEEE fp32 products for fp32 (no TF32), the
    tensor cores' own for 16-bit ("tf32" is ignored there), "upcast" in the interpreter (see `_dot`)."""
    if of(t) is None:
        return "upcast"
    return "ieee" if t.dtype == torch.float32 else "tf32"


@contextlib.contextmanager
def emulate(target: Target):
    """Within it, launchers pick their configs for `target` whatever device their tensors are on (for tests)."""
    _emulated.append(target)
    try:
        yield
    finally:
        _emulated.pop()
