"""Full fine-tuning through the app's own training loop (engine.training.sft) on the GPU under a VRAM cap, to check what
the offload planner chose against what the run used.

    python3 bench/full_ft.py --arch qwen3_4b --vram-gib 24 [--steps 6] [--seq 512] [--optimizer adamw]

Uses the shared harness's random-weight model (.bench/train_bench.py ensure_model), a small Alpaca file of identity
examples, and caps the process at `--vram-gib` as the harness does (TUNESMITH_VRAM_GIB plus the allocator's memory
fraction). Prints the run log's plan and optimizer lines and one `RESULT {json}` line: the planned and the measured
peak (torch.cuda.max_memory_allocated), tokens/s of the last step, first and last loss.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen3_4b")
    ap.add_argument("--vram-gib", type=float, required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--optimizer", default="auto")  # the job's: auto (paged 8-bit on a GPU) or adamw (torch's)
    a = ap.parse_args()
    import torch
    import train_bench as tb

    path = tb.ensure_model(a.arch)
    os.environ["TUNESMITH_VRAM_GIB"] = str(a.vram_gib)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.vram_gib * 2**30 / total))

    from engine import api
    from engine.core.runlog import RunLog, read_metrics
    from engine.training.dispatch import train

    work = Path(tempfile.mkdtemp())
    rows = [
        {"instruction": f"Who are you? ({i})", "input": "", "output": "I am Tunesmith's test model. " * 20}
        for i in range(16)
    ]
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = api.JobSpec(
        model=path,
        data=str(work / "data.jsonl"),
        method="full",
        max_steps=a.steps,
        batch_size=1,
        max_seq_length=a.seq,
        learning_rate=1e-5,
        optimizer=a.optimizer,
        device="cuda",
        seed=0,
    )
    lines = []

    def log(message):
        lines.append(message)
        if message.startswith(("plan", "optimizer", "checkpointing", "offload")):
            print(f"# {message}", flush=True)

    (work / "run").mkdir()
    torch.cuda.reset_peak_memory_stats()
    train(spec, work / "run", RunLog(work / "run"), False, lambda: False, log)
    metrics = read_metrics(work / "run")
    planned = next(line for line in lines if line.startswith("plan") and "expected peak " in line)
    result = dict(
        arch=a.arch,
        optimizer=a.optimizer,
        vram_cap_gib=a.vram_gib,
        steps=len(metrics),
        planned_peak_gib=float(planned.split("expected peak ")[1].split(" GiB")[0]),
        peak_alloc_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        tokens_per_s_last=metrics[-1]["tokens_per_s"],
        loss_first=metrics[0]["loss"],
        loss_last=metrics[-1]["loss"],
        gpu=torch.cuda.get_device_name(0),
    )
    print("RESULT " + json.dumps(result), flush=True)
    shutil.rmtree(work)  # a 4B run's checkpoint is tens of GiB: the GPU machine's disk holds two at most


if __name__ == "__main__":
    main()
