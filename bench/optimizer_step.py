"""The optimizer step of a LoRA on every projection of Llama-3-8B (448 tensors, rank 16): bitsandbytes' AdamW8bit
against engine.training.sft's, which skips its per-parameter `torch.cuda.synchronize()`.

    python3 bench/optimizer_step.py [--rank 16] [--steps 20]

Prints one `RESULT {json}` line: the median step in ms of each (wall time, after 3 warm-up steps) and the speed-up.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

LLAMA8B = dict(q=(4096, 4096), k=(1024, 4096), v=(1024, 4096), o=(4096, 4096), gate=(14336, 4096), up=(14336, 4096))
LLAMA8B["down"] = (4096, 14336)


def main():
    import bitsandbytes as bnb
    import torch

    from engine.training.steps import adamw_8bit

    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    shapes = [s for _ in range(32) for out, inp in LLAMA8B.values() for s in ((a.rank, inp), (out, a.rank))]
    result = dict(tensors=len(shapes), gpu=torch.cuda.get_device_name(0))
    for name, kind in (("bitsandbytes", bnb.optim.AdamW8bit), ("engine", adamw_8bit())):
        params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in shapes]
        opt = kind(params, lr=2e-4, weight_decay=0.0)
        times = []
        for step in range(3 + a.steps):
            for p in params:
                p.grad = torch.randn_like(p)
            torch.cuda.synchronize()
            t = time.perf_counter()
            opt.step()
            torch.cuda.synchronize()
            if step >= 3:
                times.append(time.perf_counter() - t)
        times.sort()
        result[f"{name}_ms"] = round(1000 * times[len(times) // 2], 2)
    result["speedup"] = round(result["bitsandbytes_ms"] / result["engine_ms"], 2)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
