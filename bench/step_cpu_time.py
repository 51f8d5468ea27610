"""Where a training step's wall time goes on the host: the forward's issue time, the backward's, the optimizer's,
and what is left waiting for the GPU.

    python3 bench/step_cpu_time.py --arch qwen3_14b --mode qlora --bs 1 --seq 2048 --vram-gib 6 [--cprofile 30]

Builds the model as .bench/train_bench.py does for the project (same budget cap). A `wait` near zero means the GPU
finished no later than the host had issued everything: the step is bound by the host. `--cprofile N` also profiles
the last three steps with cProfile and prints the N functions with the most time of their own, then the N with the
most time under them.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen3_14b")
    ap.add_argument("--mode", default="qlora")
    ap.add_argument("--bs", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--vram-gib", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cprofile", type=int, default=0)
    a = ap.parse_args()
    import cProfile
    import pstats

    import bitsandbytes as bnb
    import torch
    import train_bench as tb

    if a.vram_gib:
        os.environ["TUNESMITH_VRAM_GIB"] = str(a.vram_gib)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.vram_gib * 2**30 / total))
    model = tb.load("project", tb.ensure_model(a.arch), a.mode, a.seq, 16)
    model.train()
    opt = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(100, 30000, (a.bs, a.seq)).cuda()
    profile = cProfile.Profile()
    for step in range(a.steps):
        if a.cprofile and step == a.steps - 3:
            profile.enable()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        ms = [1e3 * d for d in (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)]
        print("step {}: forward {:.0f} ms, backward {:.0f} ms, optimizer {:.0f} ms, wait {:.0f} ms, total {:.0f} ms"
              .format(step, *ms), flush=True)  # fmt: skip
    if a.cprofile:
        profile.disable()
        for key in ("tottime", "cumulative"):
            pstats.Stats(profile).sort_stats(key).print_stats(a.cprofile)


if __name__ == "__main__":
    main()
