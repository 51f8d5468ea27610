"""Grouped NF4 matvec (kernels/nf4_group_matvec.py): one launch for a layer's q/k/v (or gate/up) against one
kernels/nf4_matvec.py launch per weight, at the NF4 decode groups of Qwen3-4B and Llama-8B, bf16, in one call; with a
small sweep of the grouped launch's config, to find what `group_config` should return.

    python bench/bench_nf4_group_matvec.py [--reps N] [--budget SECONDS] [--rows 8] [--smoke]

Timing as bench/bench_nf4_matvec.py's: each variant runs over enough copies of the group's weights (>= 256 MiB of
packed bytes together) that every read comes from HBM, captured in a CUDA graph and timed with CUDA events over
`--reps` replays (median); the time is that of one group. GB/s counts the packed bytes, the absmax of both levels, x
and y once; `% copy` is that over the device-to-device copy bandwidth (bench/common.py).

Variants per group, for one row of x and for `--rows` rows: `separate` (nf4_matvec per weight with its picked
config: the decode step with TUNESMITH_NF4_GROUPS=0), `grouped` (one launch, `group_config`'s pick) and `best` (the
fastest of a sweep: BLOCK_N dividing every weight x BLOCK_KB at 1 and 4 warps, decode "gather", 2 stages, then the
best with SPLIT_K 2 and 4 and decode "load"). Every variant is checked against x @ W.T in fp32 first; one that fails
is reported and left out. Last a line `BEST {json}`: "N0/N1/..,K,rows" -> the best config's fields, for
`kernels.nf4_group_matvec.MEASURED` (rows 1 for one row, 16 for the tensor-core kernel).

Without a GPU (or with --smoke) it is a smoke run: tiny groups, a few configs, Triton's CPU interpreter, wall-clock
times that mean nothing.
"""

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, replace

import bench_nf4_matvec as single
import torch
from common import DEVICE, SMOKE, copy_bandwidth_gbs, device_name

from kernels import dispatch
from kernels.nf4 import state_args
from kernels.nf4_group_matvec import group_config, nf4_group_matvec
from kernels.nf4_matvec import Nf4MatvecConfig, _rows_tile, nf4_matvec

GROUPS = {  # name -> (rows of each weight, K)
    "qwen3-4b q/k/v": ((4096, 1024, 1024), 2560),
    "qwen3-4b gate/up": ((9728, 9728), 2560),
    "llama-8b q/k/v": ((4096, 1024, 1024), 4096),
    "llama-8b gate/up": ((14336, 14336), 4096),
}
SMOKE_GROUPS = {"q/k/v": ((64, 16, 16), 128), "gate/up": ((32, 32), 192)}
BLOCK_NS = {1: (2, 4, 8, 16, 32), 16: (16, 32, 64)}
BLOCK_KBS = {1: (64, 128, 256, 512), 16: (32, 64, 128)}


class Group:
    """One group of weights: its copies (bitsandbytes' layout), inputs, the fp32 products, and the times so far."""

    def __init__(self, ns, k: int, rows: list[int], reps: int):
        import bitsandbytes.functional as bnbf

        self.ns, self.k, self.reps = tuple(ns), k, reps
        torch.manual_seed(0)
        first, self.expected = [], {}
        for n in ns:
            w = torch.randn(n, k, device=DEVICE).mul_(k**-0.5).to(single.DTYPE)
            packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            first.append((packed, state, bnbf.dequantize_4bit(packed, state).float()))
        self.x = {r: torch.randn(r, k, device=DEVICE).to(single.DTYPE) for r in [1, *rows]}
        self.expected = {r: [x.float() @ w32.T for *_, w32 in first] for r, x in self.x.items()}
        copies = 1 if single.SMOKE_RUN else max(1, math.ceil(single.COLD_BYTES / (sum(ns) * k // 2)))
        self.copies = [[self._fields(p, s) for p, s, _ in first]]
        for _ in range(copies - 1):
            self.copies.append([self._fields(p.clone(), self._clone(s)) for p, s, _ in first])
        self.times: dict[tuple, float] = {}  # (rows, variant) -> us
        self.notes: dict[tuple, str] = {}

    def _fields(self, packed, state) -> dict:
        return dict(state_args(state), packed=packed, shape=tuple(state.shape))

    @staticmethod
    def _clone(state):
        state = copy.copy(state)
        state.absmax = state.absmax.clone()
        return state

    def nbytes(self, rows: int) -> int:
        nk = sum(self.ns) * self.k
        return nk // 2 + nk // 64 + nk // 64 // 256 * 4 + rows * (self.k + sum(self.ns)) * single.DTYPE.itemsize

    def run(self, rows: int, variant, op) -> float | None:
        """Check op (x, weights -> outputs) against the fp32 products, then time it over every copy."""
        x = self.x[rows]

        def check():
            for y, want in zip(op(x, self.copies[0]), self.expected[rows], strict=True):
                single.check_close(y.float(), want)

        def everything():
            for weights in self.copies:
                op(x, weights)

        return single.record(self.times, self.notes, (rows, variant), check, everything, len(self.copies), self.reps)

    def run_config(self, rows: int, cfg: Nf4MatvecConfig) -> float | None:
        return self.run(rows, cfg, lambda x, ws: nf4_group_matvec(x, ws, config=cfg))

    def sweep(self, rows: int, deadline: float) -> None:
        tile = _rows_tile(rows)
        if single.SMOKE_RUN:
            configs = [Nf4MatvecConfig(16, 32)] if tile > 1 else [Nf4MatvecConfig(4, 32), Nf4MatvecConfig(8, 64)]
        else:
            warps = (1, 4) if tile == 1 else (4,)
            configs = [
                Nf4MatvecConfig(bn, bkb, 1, w, "gather", 2)
                for w in warps
                for bn in BLOCK_NS[tile]
                for bkb in BLOCK_KBS[tile]
                if single.sensible(Nf4MatvecConfig(bn, bkb, 1, w), sum(self.ns), self.k, tile)
            ]
        for then in (False, True):  # the grid, then around its best
            if then:
                best = self.best(tile)
                if best is None or single.SMOKE_RUN:
                    return
                configs = [replace(best, split_k=s) for s in (2, 4)] + [replace(best, decode="load")]
            for cfg in configs:
                if time.time() > deadline:
                    return
                if not any(n % cfg.block_n for n in self.ns):
                    self.run_config(rows, cfg)

    def best(self, tile: int) -> Nf4MatvecConfig | None:
        timed = {v: t for (r, v), t in self.times.items() if isinstance(v, Nf4MatvecConfig) and _rows_tile(r) == tile}
        return min(timed, key=timed.get) if timed else None

    def line(self, rows: int, name: str, key, copy_gbs: float | None) -> str:
        t, note = self.times.get((rows, key)), self.notes.get((rows, key), "")
        config = f" [{single.label(key)}]" if isinstance(key, Nf4MatvecConfig) else ""
        if t is None:
            return f"    {name:8s} {note or 'not timed'}{config}"
        gbs = self.nbytes(rows) / (t * 1e-6) / 1e9
        share = f" {100 * gbs / copy_gbs:3.0f}% copy" if copy_gbs else ""
        return f"    {name:8s} {t:8.1f} us {gbs:6.0f} GB/s{share}{' (' + note + ')' if note else ''}{config}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="timed graph replays per variant (median)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no sweep step starts")
    parser.add_argument("--rows", default="8", help="rows of x for the several-rows kernel, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="tiny groups and configs, also on a GPU")
    args = parser.parse_args()
    single.SMOKE_RUN = SMOKE or args.smoke
    start = time.time()
    groups = SMOKE_GROUPS if single.SMOKE_RUN else GROUPS
    all_rows = [1, *(int(r) for r in args.rows.split(",") if r)]

    import triton

    print(f"GPU: {device_name()}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    copy_gbs = None if single.SMOKE_RUN else copy_bandwidth_gbs()
    with torch.inference_mode(), dispatch.force("triton"):
        built = {name: Group(ns, k, all_rows[1:], args.reps) for name, (ns, k) in groups.items()}
        for group in built.values():
            for rows in all_rows:
                group.run(rows, "separate", lambda x, ws: [nf4_matvec(x, **w) for w in ws])
                picked = group_config(group.ns, group.k, rows)
                if picked is not None:
                    group.run_config(rows, picked)
        for i, rows in enumerate(all_rows):
            deadline = time.time() + max(0.0, start + args.budget - time.time()) / (len(all_rows) - i)
            for group in built.values():
                group.sweep(rows, deadline)
    best_json = {}
    for name, group in built.items():
        print(f"{name} {'x'.join(map(str, group.ns))} by {group.k} ({group.nbytes(1) / 1e6:.1f} MB, "
              f"{len(group.copies)} copies per pass):")  # fmt: skip
        for rows in all_rows:
            print(f"  {rows} row(s) of x:")
            print(group.line(rows, "separate", "separate", copy_gbs))
            print(group.line(rows, "grouped", group_config(group.ns, group.k, rows), copy_gbs))
            best = group.best(_rows_tile(rows))
            print(group.line(rows, "best", best, copy_gbs))
            if best is not None:
                best_json[f"{'/'.join(map(str, group.ns))},{group.k},{_rows_tile(rows)}"] = asdict(best)
    print(f"done in {time.time() - start:.0f}s")
    print("BEST " + json.dumps(best_json))


if __name__ == "__main__":
    main()
