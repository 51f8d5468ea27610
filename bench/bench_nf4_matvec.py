"""NF4 matvec (kernels/nf4_matvec.py) against the kernel it replaced (bench/nf4_matvec_before.py) and bitsandbytes'
own kernels, at the NF4 decode shapes of Qwen3-4B and Llama-8B, bf16, in one call; with a sweep over launch configs
to find what `pick_config` should return.

    python bench/bench_nf4_matvec.py [--reps N] [--budget SECONDS] [--rows 2,8,16] [--smoke]

Timing: each variant runs over enough copies of the weight (>= 256 MiB of packed bytes together) that every read comes
from HBM rather than the 50 MB L2, as in a decode step, where each weight is read once per token. That pass is
captured in a CUDA graph (no launch overhead, as the decoder replays one graph per token; eager if capture fails,
said in the line), replayed 3 times to warm up, then timed with CUDA events around each of `--reps` replays; the
median over the number of copies is the time of one matvec. GB/s counts the packed bytes, the absmax of both levels,
x and y once; `% copy` is that over the device-to-device copy bandwidth (read + write bytes, bench/common.py).

Variants per shape, one row of x: `before` (the previous kernel), `bnb` (bitsandbytes.matmul_4bit, which for one row
is its gemv_4bit kernel), `picked` (the config `pick_config` picks) and `best` (of the sweep: first BLOCK_N x
BLOCK_KB at 1 and 4 warps, decode "gather", 2 stages, then around the best num_warps 1/2/4/8, decode "load", 1 and 3
stages and SPLIT_K 2/4/8, then the neighbouring block sizes). With `--rows`: the same weight times B rows of x
(batched decoding), `bnb` (matmul_4bit: dequantize, then cuBLAS) against `picked` and `best` (swept at the first B
of `--rows`, used for all). Every variant is checked against x @ W.T in fp32 before it is timed; one that fails
(wrong result, out of resources) is reported and left out. No sweep step starts past `--budget` seconds (of what
is left after the baselines, 60% goes to the one-row sweep). Then one token's NF4 matvecs per model (per layer q, k,
v, o, gate, up, down) as ms and GB/s for each variant, and last a line `BEST {json}`: "N,K,rows" -> the best config's
fields, for `kernels.nf4_matvec.MEASURED` (rows 1 for one row, 16 for the tensor-core kernel).

Without a GPU (or with --smoke) it is a smoke run: tiny shapes, a few configs, Triton's CPU interpreter, wall-clock
times that mean nothing.
"""

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import asdict, replace

import torch
from common import DEVICE, SMOKE, copy_bandwidth_gbs, device_name, empty_cache, synchronize
from common import time_us as wall_time_us
from nf4_matvec_before import nf4_matvec_before

from kernels import dispatch
from kernels.nf4 import state_args
from kernels.nf4_matvec import MAX_ROWS, Nf4MatvecConfig, nf4_matvec, pick_config

DTYPE = torch.bfloat16
MODELS = {  # model -> (layers, {role: ((N, K), calls per layer)})
    "qwen3-4b": (36, {"q": ((4096, 2560), 1), "k/v": ((1024, 2560), 2), "o": ((2560, 4096), 1),
                      "gate/up": ((9728, 2560), 2), "down": ((2560, 9728), 1)}),
    "llama-8b": (32, {"q/o": ((4096, 4096), 2), "k/v": ((1024, 4096), 2), "gate/up": ((14336, 4096), 2),
                      "down": ((4096, 14336), 1)}),
}  # fmt: skip
SMOKE_MODELS = {"qwen3-4b": (2, {"q": ((32, 128), 1), "down": ((16, 256), 1), "odd": ((24, 192), 1)})}
SMOKE_CONFIGS = {1: [Nf4MatvecConfig(4, 32), Nf4MatvecConfig(8, 64, 2, decode="gather")], 16: [Nf4MatvecConfig(16, 32)]}
BLOCK_NS = {1: (2, 4, 8, 16, 32), 16: (16, 32, 64)}  # the first round's grid, at 1 and 4 warps, decode="gather"
BLOCK_KBS = {1: (64, 128, 256, 512), 16: (32, 64, 128)}
COLD_BYTES = 256 << 20  # packed bytes per timed pass: 5x the H100's 50 MB L2
RTOL, ATOL = 2e-2, 2e-2  # outputs of order 1: bf16 rounding plus fp32 sums in another order (bnb multiplies in bf16)
SMOKE_RUN = SMOKE  # --smoke sets it on a GPU too


def time_us(fn, reps: int) -> tuple[float, str]:
    """(median microseconds of fn(), how it was timed): CUDA-graph replays timed with CUDA events after warm-up."""
    fn()  # compiles and allocates outside the graph
    synchronize()
    if SMOKE_RUN:
        return wall_time_us(fn), "wall"
    graph, how = torch.cuda.CUDAGraph(), "graph"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
    except Exception:  # a variant that cannot be captured is timed eagerly (launch overhead included)
        torch.cuda.synchronize()
        run, how = fn, "eager"
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times), how


def check_close(y: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (y - expected).abs()
    if not bool((diff <= ATOL + RTOL * expected.abs()).all()):
        raise AssertionError(f"max abs diff {diff.max().item():.3g} against the fp32 product")


def record(times: dict, notes: dict, key, check, one_pass, copies: int, reps: int) -> float | None:
    """check() (it raises when a variant is wrong), then time one_pass(), the variant over `copies` copies of its
    weights: times[key] is the time of one copy. A variant that fails gets notes[key] instead; the run goes on."""
    if key in times or key in notes:
        return times.get(key)
    try:
        check()
        us, how = time_us(one_pass, reps)
        times[key] = us / copies
        if how != "graph":
            notes[key] = how
    except Exception as exc:  # a variant that does not compile or is wrong is reported, the rest go on
        notes[key] = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        empty_cache()
        return None
    return times[key]


def label(cfg: Nf4MatvecConfig) -> str:
    return f"{cfg.block_n}x{cfg.block_kb}B split{cfg.split_k} w{cfg.num_warps} st{cfg.num_stages} {cfg.decode}"


def sensible(cfg: Nf4MatvecConfig, n: int, k: int, tile: int) -> bool:
    """Leave out configs that cannot be good: < 4 or > 64 packed bytes a thread per step (idle lanes, or registers
    spilling), blocks wider than the weight, or splits of fewer than two steps."""
    per_thread = cfg.block_n * cfg.block_kb / (32 * cfg.num_warps)
    return (
        (4 <= per_thread <= 64 or tile > 1)
        and cfg.block_kb <= max(16, 1 << (k // 2 - 1).bit_length())
        and cfg.block_n <= max(16, 1 << (n - 1).bit_length())
        and (cfg.split_k == 1 or k // 2 // cfg.split_k >= 2 * cfg.block_kb)
    )


class Shape:
    """One weight shape: its copies (bitsandbytes QuantStates), inputs, the fp32 products, and the times so far."""

    def __init__(self, n: int, k: int, rows: list[int], reps: int):
        self.n, self.k, self.reps = n, k, reps
        torch.manual_seed(0)
        import bitsandbytes.functional as bnbf

        w = torch.randn(n, k, device=DEVICE).mul_(k**-0.5).to(DTYPE)
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        copies = 1 if SMOKE_RUN else max(1, math.ceil(COLD_BYTES / packed.numel()))
        self.weights = [(packed, state)] + [self._copy(packed, state) for _ in range(copies - 1)]
        self.fields = [dict(state_args(s), shape=(n, k)) for _, s in self.weights]
        w32 = bnbf.dequantize_4bit(packed, state).float()
        self.x = {r: torch.randn(r, k, device=DEVICE).to(DTYPE) for r in [1, *rows]}
        self.expected = {r: x.float() @ w32.T for r, x in self.x.items()}
        self.times: dict[tuple, float] = {}  # (rows, variant) -> us
        self.notes: dict[tuple, str] = {}

    @staticmethod
    def _copy(packed, state):
        state = copy.copy(state)
        state.absmax = state.absmax.clone()
        return packed.clone(), state

    def nbytes(self, rows: int) -> int:
        nk = self.n * self.k
        return nk // 2 + nk // 64 + nk // 64 // 256 * 4 + rows * (self.k + self.n) * DTYPE.itemsize

    def gbs(self, rows: int, us: float) -> float:
        return self.nbytes(rows) / (us * 1e-6) / 1e9

    def run(self, rows: int, variant, op) -> float | None:
        """Check op against the fp32 product, then time it over every copy; None (and a note) if it fails."""
        x = self.x[rows]

        def check():
            check_close(op(x, *self.weights[0], self.fields[0]).float().view(rows, self.n), self.expected[rows])

        def everything():
            for (packed, state), fields in zip(self.weights, self.fields, strict=True):
                op(x, packed, state, fields)

        return record(self.times, self.notes, (rows, variant), check, everything, len(self.weights), self.reps)

    def run_config(self, rows: int, cfg: Nf4MatvecConfig) -> float | None:
        return self.run(rows, cfg, lambda x, packed, state, f: nf4_matvec(x, packed, config=cfg, **f))

    def best(self, tile: int) -> Nf4MatvecConfig | None:
        timed = {v: t for (r, v), t in self.times.items() if isinstance(v, Nf4MatvecConfig) and _tile(r) == tile}
        return min(timed, key=timed.get) if timed else None

    def sweep_round(self, rows: int, index: int, deadline: float) -> bool:
        """Round `index` of the greedy search (module docstring) at `rows` rows; False if the deadline cut it."""
        tile = _tile(rows)
        best = self.best(tile)
        if SMOKE_RUN:
            configs = SMOKE_CONFIGS[tile] if index == 0 else []
        elif index == 0:
            configs = [
                Nf4MatvecConfig(bn, bkb, 1, w, "gather", 2)
                for w in (1, 4)
                for bn in BLOCK_NS[tile]
                for bkb in BLOCK_KBS[tile]
            ]
        elif best is None:
            configs = []
        elif index == 1:
            configs = [replace(best, num_warps=w) for w in (1, 2, 4, 8)] + [replace(best, decode="load")]
            configs += [replace(best, num_stages=st) for st in (1, 3)]
            configs += [
                replace(best, block_n=bn, split_k=s) for s in (2, 4, 8) for bn in {best.block_n, best.block_n * s}
            ]
        else:
            configs = [replace(best, num_warps=w) for w in (2, 4, 8)]
            configs += [replace(best, block_n=bn) for bn in (best.block_n // 2, best.block_n * 2) if bn >= 1]
            configs += [replace(best, block_kb=b) for b in (best.block_kb // 2, best.block_kb * 2) if b >= 16]
        for cfg in configs:
            if time.time() > deadline:
                return False
            if (SMOKE_RUN or sensible(cfg, self.n, self.k, tile)) and (
                tile == 1 or min(cfg.block_n, cfg.block_kb) >= 16
            ):
                self.run_config(rows, cfg)
        return True

    def line(self, rows: int, name: str, key, copy_gbs: float | None) -> str:
        t, note = self.times.get((rows, key)), self.notes.get((rows, key), "")
        config = f" [{label(key)}]" if isinstance(key, Nf4MatvecConfig) else ""
        if t is None:
            return f"    {name:7s} {note or 'not timed'}{config}"
        share = f" {100 * self.gbs(rows, t) / copy_gbs:3.0f}% copy" if copy_gbs else ""
        return (
            f"    {name:7s} {t:8.1f} us {self.gbs(rows, t):6.0f} GB/s{share}{' (' + note + ')' if note else ''}{config}"
        )

    def report(self, name: str, all_rows: list[int], copy_gbs: float | None) -> str:
        lines = [f"{name} {self.n}x{self.k} ({self.nbytes(1) / 1e6:.1f} MB, {len(self.weights)} copies per pass):"]
        for rows in all_rows:
            lines.append(f"  {rows} row(s) of x:")
            lines += [self.line(rows, n, variant(self, n, rows), copy_gbs) for n in (NAMES[1:] if rows > 1 else NAMES)]
            fails = [
                f"{label(v)}: {note}"
                for (r, v), note in self.notes.items()
                if r == rows and isinstance(v, Nf4MatvecConfig) and note.startswith("FAILED")
            ]
            if fails:
                lines.append(f"    {len(fails)} configs failed, e.g. {'; '.join(fails[:2])}")
        return "\n".join(lines)


def _tile(rows: int) -> int:
    return 1 if rows == 1 else 16


NAMES = ("before", "bnb", "picked", "best")


def variant(shape: Shape, name: str, rows: int):
    """The key of `name`'s time at `rows` rows: a config for "picked" and "best", else the name itself."""
    if name == "picked":
        return pick_config(shape.n, shape.k, rows)
    return shape.best(_tile(rows)) if name == "best" else name


def token_line(model: str, calls: dict, shapes: dict, rows: int, copy_gbs: float | None) -> str:
    """One token's NF4 matvecs of `model` (`calls`: shape -> calls per token) for each variant: ms, GB/s, % copy."""
    nbytes = sum(c * shapes[nk].nbytes(rows) for nk, c in calls.items())
    cells = []
    for name in NAMES[1:] if rows > 1 else NAMES:  # the previous kernel takes one row only
        times = [shapes[nk].times.get((rows, variant(shapes[nk], name, rows))) for nk in calls]
        if any(t is None for t in times):
            cells.append(f"{name} -")
            continue
        us = sum(c * t for c, t in zip(calls.values(), times, strict=True))
        gbs = nbytes / (us * 1e-6) / 1e9
        cells.append(f"{name} {us / 1e3:.3f} ms {gbs:.0f} GB/s" + (f" {100 * gbs / copy_gbs:.0f}%" if copy_gbs else ""))
    return f"{model}, {rows} row(s) of x, one token's NF4 matvecs ({nbytes / 1e9:.2f} GB): " + " | ".join(cells)


def before(x, packed, state, f):
    args = state_args(state)
    return nf4_matvec_before(x.reshape(-1), packed.reshape(-1), args["absmax"], args["absmax2"], args["code2"],
                             args["offset"], args["code"], f["shape"][0], f["shape"][1], 64, 256)  # fmt: skip


def bnb(x, packed, state, f):
    import bitsandbytes

    return bitsandbytes.matmul_4bit(x, packed.t(), quant_state=state)


ROUNDS = 3


def main() -> None:
    global SMOKE_RUN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed graph replays per variant (median)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no sweep step starts")
    parser.add_argument("--rows", default="8,2,16", help=f"rows of x for the batched kernel (<= {MAX_ROWS}; '' none)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and configs, also on a GPU")
    args = parser.parse_args()
    SMOKE_RUN = SMOKE or args.smoke
    start = time.time()
    models = SMOKE_MODELS if SMOKE_RUN else MODELS
    batch_rows = [int(r) for r in args.rows.split(",") if r]

    import triton  # after common: it sets TRITON_INTERPRET for a CPU run before Triton is imported

    print(f"GPU: {device_name()}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    copy_gbs = None if SMOKE_RUN else copy_bandwidth_gbs()
    if copy_gbs:
        print(f"device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (the 100% of '% copy')", flush=True)
    names = {}
    for model, (_, roles) in models.items():
        for role, (nk, _) in roles.items():
            names.setdefault(nk, f"{model} {role}")
    with torch.inference_mode(), dispatch.force("triton"):
        shapes = {nk: Shape(*nk, batch_rows, args.reps) for nk in names}
        for nk, shape in shapes.items():
            shape.run(1, "before", before)
            shape.run(1, "bnb", bnb)
            shape.run_config(1, pick_config(*nk))
            for rows in batch_rows:
                shape.run(rows, "bnb", bnb)
                shape.run_config(rows, pick_config(*nk, rows))
        print(f"baselines done at {time.time() - start:.0f}s", flush=True)
        sweeps = [1, *batch_rows[:1]]  # one row, then the first batch size: the two kernels' sweeps
        for i, rows in enumerate(sweeps):
            # each sweep gets its share of the budget left (the one-row sweep 60% when both run)
            share = 1.0 if i == len(sweeps) - 1 else 0.6
            deadline = time.time() + share * max(0.0, start + args.budget - time.time())
            for index in range(ROUNDS):
                for shape in shapes.values():
                    shape.sweep_round(rows, index, deadline)
                print(f"{rows}-row sweep round {index + 1} done at {time.time() - start:.0f}s", flush=True)
        for shape in shapes.values():
            best = shape.best(16)
            for rows in batch_rows[1:]:
                if best is not None:
                    shape.run_config(rows, best)
    for nk, shape in shapes.items():
        print(shape.report(names[nk], [1, *batch_rows], copy_gbs))
    print()
    for model, (layers, roles) in models.items():
        calls = {nk: layers * c for _, (nk, c) in roles.items()}
        for rows in [1, *batch_rows]:
            print(token_line(model, calls, shapes, rows, copy_gbs))
    print(f"Total: {time.time() - start:.0f}s")
    best = {}
    for (n, k), shape in shapes.items():
        for tile in (1, 16):
            cfg = shape.best(tile)
            if cfg is not None:
                best[f"{n},{k},{tile}"] = asdict(cfg)
    print("BEST " + json.dumps(best))


if __name__ == "__main__":
    main()
