"""Batch-1 matvec (kernels/matvec.py) against cuBLAS (F.linear) at the decode shapes of Qwen3-4B and Llama-8B, bf16,
with a sweep over launch configs to find what `pick_config` should return.

    python bench/bench_matvec.py [--rep MS] [--budget SECONDS] [--smoke]

Timing: `triton.testing.do_bench_cudagraph` (median of CUDA-graph replays: no launch overhead, as in the decode step,
which replays one graph per token; `do_bench` where it is missing). Each timed call runs the op over enough copies
of the weight (>= 256 MiB together) that every read comes from HBM rather than the 50 MB L2, as in a decode step,
where each weight is read once per token; the time per matvec is the call's over the number of copies. GB/s counts
the weight, x and y once.

Per shape: cuBLAS, the config `pick_config` picks, and the best config of a sweep: first BLOCK_N x BLOCK_K at 4 warps
without split-K, then, around the best of that, num_warps 2/4/8 and SPLIT_K 2/4/8 (at the same BLOCK_N and at
BLOCK_N * SPLIT_K, which keeps the program count), then num_stages 2/3/4 and the neighbouring block sizes. Every
config is checked against F.linear before it is timed; one that fails (wrong result, out of resources) is left out.
No sweep starts past `--budget` seconds (cuBLAS and the picked config are still timed), so the whole run stays
under ~4 minutes on an H100. Then the matvecs of one token (Qwen3-4B: 36 layers x qkv, o_proj, gate/up, down, plus
the lm_head once; Llama-8B: 32 layers) as ms and GB/s for each of the three, and last a line `BEST {json}`: "N,K"
-> the best config's fields, for `kernels.matvec.MEASURED`.

Without a GPU (or with --smoke) it is a smoke run: tiny shapes, three configs, Triton's CPU interpreter,
meaningless times.
"""

import argparse
import json
import math
import time
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F
from common import DEVICE, SMOKE, copy_bandwidth_gbs, device_name, empty_cache, synchronize
from common import time_us as wall_time_us

from kernels import dispatch
from kernels.matvec import MatvecConfig, matvec, pick_config

DTYPE = torch.bfloat16
MODELS = {  # model -> (layers, {role: (N, K)}); the lm_head runs once per token, the rest once per layer
    "qwen3-4b": (36, {"qkv": (6144, 2560), "o_proj": (2560, 4096), "gate/up": (19456, 2560), "down": (2560, 9728),
                      "lm_head": (151936, 2560)}),
    "llama-8b": (32, {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate/up": (28672, 4096), "down": (4096, 14336),
                      "lm_head": (128256, 4096)}),
}  # fmt: skip
SMOKE_MODELS = {  # few rows: the interpreter runs programs one by one, and pick_config gives 1-row blocks here
    "qwen3-4b": (2, {"qkv": (16, 64), "o_proj": (8, 96), "gate/up": (24, 64), "down": (8, 160), "lm_head": (32, 64)}),
}
SMOKE_CONFIGS = [MatvecConfig(8, 64), MatvecConfig(16, 32, split_k=2, num_warps=2), MatvecConfig(4, 64, num_stages=2)]
BLOCK_NS = (1, 2, 4, 8, 16, 32)
BLOCK_KS = (128, 256, 512, 1024, 2048)
COLD_BYTES = 256 << 20  # weight copies per timed call: 5x the H100's 50 MB L2
SMOKE_RUN = SMOKE  # --smoke sets it on a GPU too
# tests/kernels/tolerances.py's bf16 entry: both sides round an fp32 dot product once, in different orders
RTOL, ATOL = 1.6e-2, 1e-2


def bench_us(fn, rep_ms: float) -> float:
    """Median time of fn() in microseconds, from CUDA-graph replays where Triton has them."""
    if SMOKE_RUN:
        return wall_time_us(fn)
    import triton.testing

    if hasattr(triton.testing, "do_bench_cudagraph"):
        return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, rep=rep_ms, return_mode="median") * 1e3


def sensible(cfg: MatvecConfig, n: int, k: int) -> bool:
    """Leave out configs that cannot be good: a tile of < 2 or > 128 elements per thread (idle lanes, or registers
    spilling), blocks wider than the weight, or splits of fewer than two BLOCK_K steps."""
    per_thread = cfg.block_n * cfg.block_k / (32 * cfg.num_warps)
    return (
        2 <= per_thread <= 128
        and cfg.block_k <= next_pow2(k)
        and cfg.block_n <= next_pow2(n)
        and (cfg.split_k == 1 or k // cfg.split_k >= 2 * cfg.block_k)
    )


def next_pow2(v: int) -> int:
    return 1 << (v - 1).bit_length()


def label(cfg: MatvecConfig) -> str:
    return f"{cfg.block_n}x{cfg.block_k} split{cfg.split_k} w{cfg.num_warps} st{cfg.num_stages}"


class Shape:
    """One weight shape: its copies, the input, the reference output, and the times measured so far."""

    def __init__(self, n: int, k: int, rep_ms: float):
        self.n, self.k, self.rep_ms = n, k, rep_ms
        self.nbytes = (n * k + n + k) * DTYPE.itemsize
        copies = 1 if SMOKE_RUN else max(1, math.ceil(COLD_BYTES / (n * k * DTYPE.itemsize)))
        torch.manual_seed(0)
        self.weights = [torch.randn(n, k, device=DEVICE).mul_(k**-0.5).to(DTYPE) for _ in range(copies)]
        self.x = torch.randn(1, 1, k, device=DEVICE).to(DTYPE)
        self.expected = F.linear(self.x.float(), self.weights[0].float())
        self.copies = len(self.weights)
        self.cublas = float("nan")
        self.times: dict[MatvecConfig, float] = {}
        self.failed: dict[MatvecConfig, str] = {}

    def gbs(self, us: float) -> float:
        return self.nbytes / (us * 1e-6) / 1e9

    def time_op(self, op) -> float:
        def run():
            for w in self.weights:
                op(self.x, w)

        run()
        synchronize()
        return bench_us(run, self.rep_ms) / len(self.weights)

    def try_config(self, cfg: MatvecConfig) -> float | None:
        """Check cfg against F.linear, then time it; None (and a note in `failed`) if it fails either."""
        if cfg in self.times or cfg in self.failed:
            return self.times.get(cfg)
        try:
            y = matvec(self.x, self.weights[0], config=cfg).float()
            diff = (y - self.expected).abs()
            if not bool((diff <= ATOL + RTOL * self.expected.abs()).all()):
                raise AssertionError(f"max abs diff {diff.max().item():.3g} vs F.linear")
            self.times[cfg] = self.time_op(lambda x, w: matvec(x, w, config=cfg))
        except Exception as exc:  # a config that does not compile or is wrong is reported, the sweep goes on
            self.failed[cfg] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            empty_cache()
            return None
        return self.times[cfg]

    def best(self) -> MatvecConfig | None:
        return min(self.times, key=self.times.get) if self.times else None

    def sweep_round(self, index: int, deadline: float) -> bool:
        """Round `index` of the greedy search (module docstring); False if the deadline cut it short."""
        best = self.best()
        if SMOKE_RUN:
            configs = SMOKE_CONFIGS if index == 0 else []
        elif index == 0:
            configs = [MatvecConfig(bn, bk) for bn in BLOCK_NS for bk in BLOCK_KS]
        elif best is None:  # nothing worked: nothing to refine
            configs = []
        elif index == 1:
            configs = [replace(best, num_warps=w) for w in (2, 8)]
            configs += [
                replace(best, block_n=bn, split_k=s) for s in (2, 4, 8) for bn in (best.block_n, best.block_n * s)
            ]
        else:
            configs = [replace(best, num_warps=w) for w in (2, 4, 8)]
            configs += [replace(best, num_stages=s) for s in (2, 3, 4)]
            configs += [replace(best, block_n=bn) for bn in (best.block_n // 2, best.block_n * 2) if bn >= 1]
            configs += [replace(best, block_k=bk) for bk in (best.block_k // 2, best.block_k * 2) if bk >= 16]
        for cfg in configs:
            if time.time() > deadline:
                return False
            if cfg.block_n <= max(BLOCK_NS) and cfg.block_k <= max(BLOCK_KS) and sensible(cfg, self.n, self.k):
                self.try_config(cfg)
        return True

    def report(self, name: str, picked: MatvecConfig, complete: bool) -> str:
        lines = [f"{name} {self.n}x{self.k} ({self.nbytes / 1e6:.1f} MB, {self.copies} copies per timed call):"]
        lines.append(f"    cuBLAS {self.cublas:.1f} us {self.gbs(self.cublas):.0f} GB/s")
        if picked in self.times:
            t = self.times[picked]
            lines.append(
                f"    picked {label(picked)}: {t:.1f} us {self.gbs(t):.0f} GB/s ({self.cublas / t:.2f}x cuBLAS)"
            )
        else:
            lines.append(f"    picked {label(picked)}: FAILED ({self.failed.get(picked)})")
        ranked = sorted(self.times, key=self.times.get)
        if ranked:
            t = self.times[ranked[0]]
            lines.append(
                f"    best   {label(ranked[0])}: {t:.1f} us {self.gbs(t):.0f} GB/s ({self.cublas / t:.2f}x cuBLAS) "
                f"[{len(self.times)} configs timed, {len(self.failed)} failed{'' if complete else ', cut by --budget'}]"
            )
            lines.append("    next:  " + "; ".join(f"{label(c)} {self.times[c]:.1f} us" for c in ranked[1:4]))
        lines += [f"    failed: {label(c)}: {why}" for c, why in list(self.failed.items())[:3]]
        return "\n".join(lines)


ROUNDS = 3


def main() -> None:
    global SMOKE_RUN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rep", type=float, default=5.0, help="ms of replays per timing (do_bench_cudagraph's rep)")
    parser.add_argument("--budget", type=float, default=200.0, help="seconds after which no sweep step starts")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and configs, also on a GPU")
    args = parser.parse_args()
    SMOKE_RUN = SMOKE or args.smoke
    start = time.time()
    models = SMOKE_MODELS if SMOKE_RUN else MODELS

    import triton  # after common: it sets TRITON_INTERPRET for a CPU run before Triton is imported

    print(f"GPU: {device_name()}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    if not SMOKE_RUN:
        print(f"device-to-device copy bandwidth: {copy_bandwidth_gbs():.0f} GB/s", flush=True)
    names = {}
    for model, (_, roles) in models.items():
        for role, nk in roles.items():
            names.setdefault(nk, f"{model} {role}")
    complete = dict.fromkeys(names, True)
    with torch.inference_mode(), dispatch.force("triton"):
        shapes = {nk: Shape(*nk, args.rep) for nk in names}  # all at once: ~4.5 GB of weights on the GPU
        for nk, shape in shapes.items():
            shape.cublas = shape.time_op(F.linear)
            shape.try_config(pick_config(*nk))
        # round by round over every shape, so a budget cut takes the last refinements of all shapes alike
        for index in range(ROUNDS):
            for nk, shape in shapes.items():
                complete[nk] &= shape.sweep_round(index, start + args.budget)
            print(f"sweep round {index + 1} done at {time.time() - start:.0f}s", flush=True)
    for nk, shape in shapes.items():
        print(shape.report(names[nk], pick_config(*nk), complete[nk]))

    print()
    for model, (layers, roles) in models.items():
        calls = {nk: (1 if role == "lm_head" else layers) for role, nk in roles.items()}
        nbytes = sum(c * shapes[nk].nbytes for nk, c in calls.items())
        cells = []
        for name, pick in (
            ("cuBLAS", lambda s: s.cublas),
            ("picked", lambda s: s.times.get(pick_config(s.n, s.k))),
            ("best", lambda s: s.times.get(s.best())),
        ):
            times = {nk: pick(shapes[nk]) for nk in calls}
            if any(t is None for t in times.values()):
                cells.append(f"{name} -")
                continue
            us = sum(c * times[nk] for nk, c in calls.items())
            cells.append(f"{name} {us / 1e3:.3f} ms {nbytes / (us * 1e-6) / 1e9:.0f} GB/s")
        print(f"{model}, one token's matvecs ({nbytes / 1e9:.2f} GB): " + " | ".join(cells))
    print(f"Total: {time.time() - start:.0f}s")
    best = {f"{n},{k}": asdict(s.best()) for (n, k), s in shapes.items() if s.best() is not None}
    print("BEST " + json.dumps(best))


if __name__ == "__main__":
    main()
