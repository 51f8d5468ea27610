"""Shared timing helpers for bench/bench_<op>.py: Triton kernel vs pure-torch reference vs torch.compile(reference).

Times are medians of triton.testing.do_bench (CUDA events), in microseconds. A result row is a dict with the keys of
`COLUMNS`; a failing variant is recorded with its error instead of a time, and the run goes on.

Without a GPU the scripts run as a smoke test (SMOKE): tiny shapes, Triton's CPU interpreter, wall-clock times that
mean nothing, torch.compile left out. It only checks that the scripts run end to end.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch

SMOKE = not torch.cuda.is_available()
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels/ is imported: triton.jit reads it
DEVICE = "cpu" if SMOKE else "cuda"

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLUMNS = [
    "op", "shape", "dtype", "pass", "triton_us", "torch_us", "compiled_us", "bnb_us", "GB/s", "vs_torch", "vs_compiled"
]  # fmt: skip
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def time_us(fn, grad_to_none=None) -> float:
    """Median time of fn() in microseconds."""
    if SMOKE:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, grad_to_none=grad_to_none, return_mode="median") * 1e3


def compiled(fn):
    """torch.compile(fn) for a fixed shape; compile errors surface on the first call and are reported per row."""
    if SMOKE:
        return fn
    return torch.compile(fn, dynamic=False)


def fwd_bwd(fn, inputs, *args):
    """A closure running fn(*inputs, *args) and backpropagating a fixed random gradient into the inputs."""
    holder = {}

    def run():
        out = fn(*inputs, *args)
        outs = out if isinstance(out, tuple) else (out,)
        if "grads" not in holder:
            holder["grads"] = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, holder["grads"])

    return run


def measure(op, shape, dtype, mode, variants, nbytes=None, grad_to_none=None) -> dict:
    """Time the callables in `variants` ({"triton": f, "torch": f, "compiled": f[, "bnb": f]}) into one result row.

    Args:
        nbytes: bytes the op must move at minimum (for GB/s of the Triton kernel); None for compute-bound ops.
    """
    row = {"op": op, "shape": shape, "dtype": DTYPE_NAMES.get(dtype, str(dtype)), "pass": mode}
    for name, fn in variants.items():
        try:
            fn()  # first call: compiles (Triton autotune / torch.compile) outside the timed region
            synchronize()
            row[f"{name}_us"] = time_us(fn, grad_to_none)
        except Exception as exc:  # a failing variant is reported, the others still run
            row[f"{name}_us"] = None
            row.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        empty_cache()
    t = row.get("triton_us")
    if t:
        if nbytes:
            row["GB/s"] = nbytes / (t * 1e-6) / 1e9
        for other, key in (("torch_us", "vs_torch"), ("compiled_us", "vs_compiled")):
            if row.get(other):
                row[key] = row[other] / t
    return row


def peak_bytes(fn) -> int | None:
    """Peak memory `fn` allocates on top of what is already allocated, bytes (None in a smoke run)."""
    if SMOKE:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def synchronize():
    if not SMOKE:
        torch.cuda.synchronize()


def empty_cache():
    if not SMOKE:
        torch.cuda.empty_cache()


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write counted), the yardstick for memory-bound kernels."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    t = time_us(lambda: dst.copy_(src))
    return 2 * src.numel() / (t * 1e-6) / 1e9


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict], copy_gbs: float | None = None) -> str:
    cols = COLUMNS + (["% copy"] if copy_gbs else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c)) for c in COLUMNS]
        if copy_gbs:
            cells.append(f"{100 * r['GB/s'] / copy_gbs:.0f}%" if r.get("GB/s") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['op']} {r['shape']} {r['dtype']} {r['pass']}: {r['note']}" for r in rows if r.get("note")]
    errors = [f"- {r['op']} {r['shape']} {r['dtype']} {r['pass']}: {e}" for r in rows for e in r.get("errors", [])]
    return "\n".join(lines + ([""] + notes if notes else []) + (["", "Errors:"] + errors if errors else []))


def device_name() -> str:
    return "CPU smoke run (no GPU: times are meaningless)" if SMOKE else torch.cuda.get_device_name()


def main(run):
    """Entry point of one bench script: run(), print its table."""
    print(f"GPU: {device_name()}")
    print(markdown(run()))
