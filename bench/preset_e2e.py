"""The shared e2e run (../shared/bench/e2e_bench.py) with a preset's batch shape: batch_size x grad_accum, GPU only.

    python3 bench/preset_e2e.py --data identity --mode qlora --dtype fp16 --bs 2 --accum 4   [--n 400 --seq 2048]

The app's presets for cards up to 24 GB train in micro-batches of 1 or 2 examples, 4 or 8 to an optimizer step
(presets/tier-*.yaml); e2e_bench.py's job has no grad_accum. This writes the same dataset (`e2e_bench.make_data`) and
the same job but for `grad_accum`, runs `python -m engine train` once (TUNESMITH_JOIN=0 in the environment keeps a
step's micro-batches apart, engine.training.sft), and prints RESULT {json} with e2e_bench's figures: real tokens/s
over the steps after the 5th (epoch_tokens_per_s_steady), wall_s from this process's start to the saved adapter.
Run from the project root with the harness in $BENCH_HARNESS, .bench/ or ../shared/bench/.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

T0 = time.time()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from padding import harness  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="qwen3_4b")
    ap.add_argument("--data", default="identity", choices=["identity", "alpaca", "long"])
    ap.add_argument("--mode", default="qlora", choices=["qlora", "lora"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp16"])
    ap.add_argument("--bs", type=int, default=2)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seq", type=int, default=2048)
    a = ap.parse_args()
    sys.path.insert(0, str(harness()))
    import e2e_bench
    import train_bench
    from transformers import AutoTokenizer

    model = train_bench.ensure_model(a.arch)
    work = Path(f"/tmp/preset_e2e_{a.data}_{a.bs}x{a.accum}")
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data.jsonl"
    rows = e2e_bench.make_data(str(data), a.n, a.data)
    tok = AutoTokenizer.from_pretrained(model)
    chats = [[dict(role="user", content=r["instruction"]), dict(role="assistant", content=r["output"])] for r in rows]
    texts = [tok.apply_chat_template(chat, tokenize=False) for chat in chats]
    real = sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in texts)
    job = work / "job.yaml"
    job.write_text(
        f"model: {model}\ndata: {data}\nname: e2e\nmethod: {a.mode}\nmax_seq_length: {a.seq}\nbatch_size: {a.bs}\n"
        f"grad_accum: {a.accum}\nepochs: 1\nlearning_rate: 0.0002\npacking: false\nlora_r: 16\nlora_alpha: 16\n"
        f"dtype: {a.dtype}\n"
    )
    p = subprocess.run([sys.executable, "-m", "engine", "train", str(job)], capture_output=True, text=True)
    print(p.stdout[-3000:], p.stderr[-3000:], flush=True)
    run = sorted(d for d in (ROOT / "runs").iterdir() if d.name.endswith("e2e"))[-1]
    recs = [json.loads(line) for line in open(run / "metrics.jsonl") if '"step"' in line and '"loss"' in line]
    if len(recs) < 2:
        sys.exit(f"the run ({run}) ended with {p.returncode} after {len(recs)} steps")
    steady_s, steady_steps = e2e_bench.steady([r["time"] for r in recs])
    result = dict(
        rc=p.returncode, steps=len(recs), steady_s=round(steady_s, 2), steady_steps=steady_steps,
        loss_first=recs[0]["loss"], loss_last=recs[-1]["loss"], peak_gb=max(r["memory_gb"] for r in recs),
        arch=a.arch, mode=a.mode, data=a.data, bs=a.bs, accum=a.accum, n=a.n, dtype=a.dtype,
        join=os.environ.get("TUNESMITH_JOIN", "1") != "0", dataset_tokens=real, wall_s=round(time.time() - T0, 1),
        epoch_tokens_per_s_steady=round(real * steady_steps / len(recs) / steady_s, 1),
    )  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
