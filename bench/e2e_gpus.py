"""The shared real-data benchmark's project run on several GPUs (issue 32): ../shared/bench/e2e_bench.py with
`--impl project`, its job given `gpus: N` (one process per GPU through torchrun, engine/training/launch.py), and
`--mode full` for full fine-tuning (FSDP2). Everything else is e2e_bench's own: its data, its RESULT line and its
epoch tokens/s, which counts every GPU's tokens. RESULT adds `gpus`, the global batch, the loss curve and each GPU's
peak allocated memory (`peak_gb_per_gpu`, from metrics.jsonl's peak_memory_gb_per_gpu).

  python3 bench/e2e_gpus.py --gpus 1 --arch qwen3_4b --mode qlora --data alpaca --bs 8   # global batch 8 on one GPU
  python3 bench/e2e_gpus.py --gpus 2 --arch qwen3_4b --mode qlora --data alpaca --bs 4   # the same global batch on two
  python3 bench/e2e_gpus.py --gpus 2 --arch llama8b --mode full --data alpaca --bs 4     # FSDP2
  python3 bench/e2e_gpus.py --gpus 2 --arch llama8b --mode full --data alpaca --bs 4 --fast-path 0   # plain path

Reads the harness from .bench/ (a copy of ../shared/bench, as bench/e2e.sh does), else from ../shared/bench. Run from
the repository root on the GPU machine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = next(p for p in (ROOT / ".bench", ROOT.parent / "shared" / "bench") if (p / "e2e_bench.py").is_file())
sys.path.insert(0, str(HARNESS))

import e2e_bench as eb  # noqa: E402  (found on the path above)


def take(argv: list[str], flag: str, default: str) -> str:
    """Remove `flag VALUE` from argv and return VALUE (e2e_bench's parser does not know it)."""
    if flag not in argv:
        return default
    i = argv.index(flag)
    value = argv[i + 1]
    del argv[i : i + 2]
    return value


def main() -> None:
    argv = sys.argv[1:]
    gpus = int(take(argv, "--gpus", "1"))
    method = take(argv, "--mode", "qlora")
    fast_path = take(argv, "--fast-path", "1") != "0"  # 0: plain transformers, to measure the fast path against
    # e2e_bench's parser takes qlora and lora; a full run is planned as lora and renamed in the job and the RESULT
    sys.argv = [sys.argv[0], "--impl", "project", "--mode", "lora" if method == "full" else method, *argv]

    def run_project(a, model, data, work):
        a.mode = method
        job = os.path.join(work, "job.yaml")
        lr = 2e-5 if method == "full" else 2e-4
        with open(job, "w") as f:
            f.write(
                f"model: {model}\ndata: {data}\nname: e2e\nmethod: {method}\nmax_seq_length: {a.seq}\n"
                f"batch_size: {a.bs}\nepochs: 1\nlearning_rate: {lr}\npacking: {str(bool(a.packing)).lower()}\n"
                f"lora_r: 16\nlora_alpha: 16\ndtype: {a.dtype}\ngpus: {gpus}\nfast_path: {str(fast_path).lower()}\n"
            )
        env = dict(os.environ, **({"TUNESMITH_VRAM_GIB": str(a.vram_gib)} if a.vram_gib else {}))
        p = subprocess.run([sys.executable, "-m", "engine", "train", job], capture_output=True, text=True, env=env)
        print(p.stdout[-3000:], p.stderr[-3000:], flush=True)
        rd = os.path.join("runs", sorted(d for d in os.listdir("runs") if d.endswith("e2e"))[-1])
        recs = [json.loads(line) for line in open(os.path.join(rd, "metrics.jsonl")) if '"loss"' in line]
        st, nsteps = eb.steady([r["time"] for r in recs])
        per_gpu = [r.get("peak_memory_gb_per_gpu", [r["memory_gb"]]) for r in recs]
        return dict(
            rc=p.returncode,
            steps=len(recs),
            steady_s=round(st, 2),
            steady_steps=nsteps,
            loss_first=recs[0]["loss"],
            loss_last=recs[-1]["loss"],
            losses=[r["loss"] for r in recs],
            peak_gb=max(r["memory_gb"] for r in recs),
            peak_gb_per_gpu=[max(gb) for gb in zip(*per_gpu, strict=True)],
            gpus=gpus,
            fast_path=fast_path,
            global_batch=a.bs * gpus,
            run_dir=rd,
        )

    eb.run_project = run_project
    eb.main()


if __name__ == "__main__":
    main()
