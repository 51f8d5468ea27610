"""Budget sweep (issue 24): at each VRAM budget a run is either refused before loading, with the smallest budget that
would work, or trains with its peak reserved memory under the budget; never out of memory.

    python3 bench/budget_sweep.py [--only llama8b,qwen3_4b,qwen3_14b] [--parallel 2] [--deadline-s 570] [--skip FILE]

Run on the GPU machine from the project root, with the shared harness copied to .bench/ (bench/README.md, "Running
it on the GPU machine"; carry [".devsite", ".bench"], PYTHONPATH=$PWD/.devsite). For each configuration it makes the
random-weight model once (`train_bench.py --make-only`), asks the estimate for each budget (engine.api.estimate, the
computation the run plans with), and where that plan fits runs `train_bench.py --impl project ... --vram-gib B` in
its own process, with a timeout; a failure is recorded and the sweep goes on. Prints one markdown row per budget as
it goes, then the table; rows also go to $OUT/budget_sweep.jsonl when $OUT is set. Budgets not reached before the
deadline are listed as skipped (run them in another call with --only).

`--parallel N` runs N budgets of a configuration at once (each process is capped at its own budget, so the memory
figures are each run's own; tokens/s is then of a shared GPU, and each estimate plans with 1/N of the host RAM). The
speed comparison at a budget belongs to a call with `--parallel 1`.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HARNESS = Path(".bench/train_bench.py")
MODELS = Path(os.environ.get("BENCH_MODEL_ROOT", "/tmp/models"))


def frange(start: float, stop: float, step: float) -> list[float]:
    n = int(round((stop - start) / step))
    return [round(start + i * step, 2) for i in range(n + 1)]


# arch, mode, batch, seq, budgets (GiB): the ranges and 0.2 GiB steps (47 runs of 25-50 s on the H200: more
# than one 10-minute call, so a later call passes `--skip` the rows an earlier one wrote)
SWEEPS = {
    "llama8b": ("qlora", 2, 2048, frange(5.6, 8.0, 0.2)),
    "qwen3_4b": ("lora", 2, 2048, frange(6.0, 10.0, 0.2)),
    "qwen3_14b": ("qlora", 1, 2048, frange(3.6, 6.0, 0.2)),
}


def result_line(text: str) -> dict | None:
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None


def last_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1].strip()[:240]


def one(arch, mode, bs, seq, budget, steps, warmup, timeout, ram_gib=None) -> dict:
    """The estimate for this budget, and the harness's run where the estimate says it fits."""
    from engine import api

    row = dict(arch=arch, mode=mode, bs=bs, seq=seq, budget_gib=budget)
    est = api.estimate(str(MODELS / arch), mode, seq=seq, batch=bs, vram_gib=budget, ram_gib=ram_gib)
    row.update(estimate_gib=est["peak_vram_gib"], plan=est["plan"])
    if not est["fits"]:
        row.update(outcome="refused before loading", message=est.get("reason", ""), min_gib=est.get("min_vram_gib"))
        return row
    cmd = [sys.executable, str(HARNESS), "--impl", "project", "--arch", arch, "--mode", mode, "--bs", str(bs),
           "--seq", str(seq), "--vram-gib", str(budget), "--steps", str(steps), "--warmup", str(warmup)]  # fmt: skip
    env = dict(os.environ, TUNESMITH_BENCH_BATCH=str(bs), PYTHONUNBUFFERED="1")
    t = time.time()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        row.update(outcome="timeout", message=f"no result in {timeout:.0f} s")
        return row
    row["wall_s"] = round(time.time() - t, 1)
    text = out.stdout + "\n" + out.stderr
    result = result_line(out.stdout)
    if result is not None:
        peak = result["peak_reserved_gib"]
        row.update(
            outcome="trained" if peak <= budget else "trained OVER budget",
            tokens_per_s=result["tokens_per_s"],
            peak_reserved_gib=peak,
            peak_alloc_gib=result["peak_alloc_gib"],
            error_pct=round(100 * (est["peak_vram_gib"] - peak) / peak, 1),
        )
    elif "OutOfMemoryError" in text or "out of memory" in text.lower():
        row.update(outcome="OOM", message=last_error(text))
    elif "UserError" in text:
        row.update(outcome="refused at load (harness)", message=last_error(text))
    else:
        row.update(outcome=f"failed (exit {out.returncode})", message=last_error(text))
    return row


def row_for(arch, mode, bs, seq, a, start, ram, budget) -> dict:
    """One budget's row, whatever happens (the sweep goes on); skipped once the deadline is near."""
    left = a.deadline_s - (time.time() - start)
    base = dict(arch=arch, mode=mode, bs=bs, seq=seq, budget_gib=budget)
    if left < 20:
        return dict(base, outcome="skipped (deadline)")
    try:
        return one(arch, mode, bs, seq, budget, a.steps, a.warmup, min(a.timeout_s, left), ram)
    except Exception as e:  # the row says what went wrong
        return dict(base, outcome="sweep error", message=f"{type(e).__name__}: {e}")


def markdown(row: dict) -> str:
    cells = [row["arch"], f"{row['mode']} bs {row['bs']} seq {row['seq']}", f"{row['budget_gib']:.1f}", row["outcome"]]
    if "peak_reserved_gib" in row:
        cells += [f"{row['tokens_per_s']:,.0f}", f"{row['peak_reserved_gib']:.2f}", f"{row['estimate_gib']:.2f}",
                  f"{row['error_pct']:+.1f}%"]  # fmt: skip
    else:
        est = f"{row['estimate_gib']:.2f}" if row.get("estimate_gib") else ""
        cells += ["", "", est, row.get("message", "")[:160].replace("|", "/")]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| arch | config | budget GiB | outcome | tokens/s | peak reserved GiB | estimate GiB | error / message |\n"
    "|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(SWEEPS), help="comma-separated archs of SWEEPS")
    ap.add_argument("--budgets", default="", help="comma-separated GiB, replacing the sweep's list (with one --only)")
    ap.add_argument(
        "--skip", default="", help="a budget_sweep.jsonl of an earlier call: its (arch, budget) rows are not run"
    )
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=150, help="per harness run")
    ap.add_argument("--deadline-s", type=float, default=570, help="stop starting runs after this many seconds")
    ap.add_argument("--parallel", type=int, default=2, help="budgets of one configuration run at once")
    a = ap.parse_args()
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.time()
    rows = []
    sink = open(Path(os.environ["OUT"]) / "budget_sweep.jsonl", "a") if os.environ.get("OUT") else None
    from engine.memory.offload import host_ram_gib

    ram = host_ram_gib() / max(1, a.parallel)  # each concurrent run's share of the free host RAM
    done = set()
    if a.skip:
        done = {(r["arch"], r["budget_gib"]) for r in map(json.loads, Path(a.skip).read_text().splitlines()) if r}
    print(HEADER, flush=True)
    for arch in a.only.split(","):
        mode, bs, seq, budgets = SWEEPS[arch]
        if a.budgets:
            budgets = [float(b) for b in a.budgets.split(",")]
        budgets = [b for b in budgets if (arch, b) not in done]
        if not budgets:
            continue
        made = subprocess.run([sys.executable, str(HARNESS), "--impl", "project", "--arch", arch, "--make-only"],
                              capture_output=True, text=True)  # fmt: skip
        if made.returncode != 0:
            print(f"| {arch} | | | could not make the model: {last_error(made.stderr)} |", flush=True)
            continue

        with ThreadPoolExecutor(max(1, a.parallel)) as pool:
            for row in pool.map(functools.partial(row_for, arch, mode, bs, seq, a, start, ram), budgets):
                rows.append(row)
                print(markdown(row), flush=True)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
    print("\n" + HEADER)
    print("\n".join(markdown(r) for r in rows))
    bad = [r for r in rows if r["outcome"] in ("OOM", "trained OVER budget")]
    print(f"\n{len(rows)} budgets, {len(bad)} out of memory or over budget, {time.time() - start:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
