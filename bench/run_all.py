"""One command for the GPU machine: the GPU kernel tests, then every benchmark, then one markdown table.

    python bench/run_all.py [--skip-tests] [--only rms_norm,rope] [--budget 270] [--out results.md]

Needs torch, triton and pytest (bitsandbytes on PYTHONPATH for the NF4 rows). A failing test run or benchmark is
reported and the rest still runs. Benchmarks that would start after `--budget` seconds are skipped and listed, so the
whole run stays under five minutes.
"""

import argparse
import importlib
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (needs HERE on sys.path; sets TRITON_INTERPRET for a CPU smoke run before kernels load)
import torch  # noqa: E402

OPS = ["rms_norm", "swiglu", "rope", "nf4", "cross_entropy"]  # cheapest first


def run_gpu_tests(timeout: int) -> str:
    """pytest -m gpu tests/kernels; returns its summary line (or why there is none)."""
    # no extra -q: pyproject's addopts already has one, and -qq drops the "N passed" line
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/kernels", "-p", "no:cacheprovider"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"GPU tests: timed out after {timeout}s"
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    summary = lines[-1] if lines else out.stderr.strip().splitlines()[-1:]
    return "\n".join([f"GPU tests (`{' '.join(cmd[2:])}`): {summary}", *failures])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmarks")
    parser.add_argument("--only", default="", help="comma-separated ops (default: all)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds after which no new benchmark starts")
    parser.add_argument("--test-timeout", type=int, default=120, help="seconds allowed for the GPU tests")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    start = time.time()

    header = [
        f"GPU: {common.device_name()}",
        f"torch {torch.__version__}, triton {importlib.import_module('triton').__version__}, "
        f"python {platform.python_version()}",
        f"command: python bench/run_all.py {' '.join(sys.argv[1:])}".rstrip(),
    ]
    print("\n".join(header), flush=True)
    report = list(header)
    if not args.skip_tests:
        tests = run_gpu_tests(args.test_timeout)
        print(tests, flush=True)
        report.append(tests)
    copy = None
    try:
        copy = common.copy_bandwidth_gbs()
        report.append(f"device-to-device copy bandwidth: {copy:.0f} GB/s (the 100% of the '% copy' column)")
        print(report[-1], flush=True)
    except Exception as exc:
        report.append(f"copy bandwidth: failed ({exc})")

    rows, skipped = [], []
    ops = [op for op in OPS if not args.only or op in args.only.split(",")]
    for op in ops:
        if time.time() - start > args.budget:
            skipped.append(op)
            continue
        t0 = time.time()
        try:
            new = importlib.import_module(f"bench_{op}").run()
        except Exception as exc:  # one broken benchmark does not stop the others
            new = [{"op": op, "shape": "-", "dtype": "-", "pass": "-", "errors": [f"{type(exc).__name__}: {exc}"]}]
        rows += new
        print(f"bench_{op}: {len(new)} rows in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        common.empty_cache()

    tail = ["", common.markdown(rows, copy)]
    if skipped:
        tail.append(f"\nSkipped (past the {args.budget:.0f}s budget): {', '.join(skipped)}")
    tail.append(f"\nTotal: {time.time() - start:.0f}s")
    print("\n".join(tail))
    report += tail
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
