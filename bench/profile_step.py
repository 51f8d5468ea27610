"""Profile one training step of the shared harness's model on the GPU: the top CUDA kernels by total time.

    python3 bench/profile_step.py --impl project --arch qwen3_0.6b --mode lora [--seq 2048 --bs 2] [--vram-gib 7]
    python3 bench/profile_step.py --impl project --arch qwen3_4b --mode qlora --varlen --seq 100 --bs 8

Builds the model as .bench/train_bench.py does (same random-weight checkpoint, same optimizer and autocast), runs
three warm-up steps, then profiles two. `--vram-gib N` caps the process's GPU memory and sets the engine's budget, as
the harness does. `--varlen`: the micro-batch is `--bs` examples of 0.5-1.5x `--seq` tokens as one padding-free row
(engine.data.batching, as engine.training.sft makes it; the app's optimizer), and the step's wall time (no profiler) is
compared with its GPU kernel time: what is left is host time the GPU waits for.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def main():
    import bitsandbytes as bnb
    import torch
    import train_bench as tb
    from torch.profiler import ProfilerActivity, profile

    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="project")
    ap.add_argument("--arch", default="qwen3_0.6b")
    ap.add_argument("--mode", default="lora")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--bs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--vram-gib", type=float, default=0.0)
    ap.add_argument("--trace", help="also write the profiled steps' Chrome trace (gzipped JSON) here")
    ap.add_argument("--stack", action="store_true", help="record Python stacks in the trace (slows the host)")
    ap.add_argument("--varlen", action="store_true", help="a padding-free row of --bs examples of ~--seq tokens")
    a = ap.parse_args()
    if a.vram_gib:
        os.environ["TUNESMITH_VRAM_GIB"] = str(a.vram_gib)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.vram_gib * 2**30 / total))
    model = tb.load(a.impl, tb.ensure_model(a.arch), a.mode, a.seq, 16)
    model.train()
    opt = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(100, 30000, (a.bs, a.seq), device="cuda")
    inputs = dict(input_ids=ids, labels=ids)
    if a.varlen:
        import random

        from engine.data.batching import padding_free
        from engine.data.tokenizing import Example
        from engine.training.steps import adamw_8bit

        opt = adamw_8bit()([p for p in model.parameters() if p.requires_grad], lr=2e-4)  # the app's optimizer
        rng = random.Random(0)
        rows = [
            [rng.randrange(100, 30000) for _ in range(rng.randint(a.seq // 2, 3 * a.seq // 2))] for _ in range(a.bs)
        ]
        examples = [Example(r, r) for r in rows]
        inputs = padding_free(examples, 0, "cuda", a.bs + 2, 3 * a.seq * a.bs // 2)
        print(f"# padding-free row: {sum(map(len, rows))} tokens in a bucket of {inputs['input_ids'].shape[1]}")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 10 * 1000
    print(f"# step wall time {wall:.1f} ms (mean of 10, no profiler)", flush=True)
    # where a step's wall time goes: forward, backward, optimizer (CUDA events, then host wall time)
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    t = time.perf_counter()
    marks[0].record()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**inputs).loss
    marks[1].record()
    loss.backward()
    marks[2].record()
    opt.step()
    opt.zero_grad(set_to_none=True)
    marks[3].record()
    torch.cuda.synchronize()
    parts = [marks[i].elapsed_time(marks[i + 1]) for i in range(3)]
    print(
        f"# step {1000 * (time.perf_counter() - t):.1f} ms: forward {parts[0]:.1f}, backward {parts[1]:.1f}, "
        f"optimizer {parts[2]:.1f} ms (CUDA events)",
        flush=True,
    )
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=a.stack) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    if a.trace:
        import gzip
        import shutil

        prof.export_chrome_trace(a.trace.removesuffix(".gz"))
        with open(a.trace.removesuffix(".gz"), "rb") as src, gzip.open(a.trace, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(a.trace.removesuffix(".gz"))
    table = prof.key_averages()
    busy = sum(e.self_device_time_total for e in table if e.device_type.name == "CUDA") / 2 / 1000
    print(f"# GPU kernel time per profiled step: {busy:.1f} ms", flush=True)
    print(f"# host time the GPU waits for: {wall - busy:.1f} ms a step, {100 * (wall - busy) / wall:.0f}% of it")
    try:
        print(table.table(sort_by="self_device_time_total", row_limit=a.rows, max_name_column_width=60))
    except (KeyError, AttributeError, ValueError):
        print(table.table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
