"""The loss over many steps of the shared harness's training loop, per implementation, and how far apart the curves
are (issue 5: the project's curve within bf16 noise of transformers').

    python3 bench/loss_curve.py --impl hf --arch qwen3_0.6b --mode lora --steps 50 --out curves.jsonl
    python3 bench/loss_curve.py --impl project ... --out curves.jsonl      # one process per implementation
    python3 bench/loss_curve.py --compare curves.jsonl

A run builds the model with .bench/train_bench.py's `load` and repeats its loop exactly (the same 16 token batches
in turn, bitsandbytes' 8-bit AdamW at lr 2e-4, bf16 autocast), recording every step's loss; it appends one JSON line
to `--out`. `--compare` prints, for each (arch, mode), every implementation's largest and mean relative distance
from `hf` over the steps. A second implementation of the same math (Unsloth's) shows how far apart two correct bf16
curves drift: that is the noise the project's distance is read against.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def curve(impl: str, arch: str, mode: str, steps: int, seq: int, bs: int) -> list[float]:
    if impl == "unsloth":
        import unsloth  # noqa: F401  Unsloth patches transformers only if it is imported first
    import bitsandbytes as bnb
    import torch
    import train_bench as tb

    path = tb.ensure_model(arch)
    torch.manual_seed(1)
    model = tb.load(impl, path, mode, seq, 16)
    model.train()
    opt = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    vocab = model.get_input_embeddings().weight.shape[0]
    pool = torch.randint(100, min(vocab, 30000), (16, bs, seq), generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(steps):
        ids = pool[step % 16].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def compare(path: str) -> None:
    runs = [json.loads(line) for line in open(path) if line.strip()]
    for key in sorted({(r["arch"], r["mode"]) for r in runs}):
        group = {r["impl"]: r["losses"] for r in runs if (r["arch"], r["mode"]) == key}
        ref = group.get("hf")
        if ref is None:
            print(f"{key[0]} {key[1]}: no hf curve to compare with")
            continue
        for impl, losses in sorted(group.items()):
            if impl == "hf":
                continue
            rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref, strict=True)]
            worst = max(range(len(rel)), key=rel.__getitem__)
            print(
                f"{key[0]} {key[1]} {impl} vs hf over {len(rel)} steps: max rel {rel[worst]:.2e} (step {worst}),"
                f" mean rel {sum(rel) / len(rel):.2e}; hf {ref[0]:.4f} -> {ref[-1]:.4f}, {impl} {losses[0]:.4f} -> "
                f"{losses[-1]:.4f}"
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["hf", "unsloth", "project"])
    ap.add_argument("--arch", default="qwen3_0.6b")
    ap.add_argument("--mode", default="lora", choices=["lora", "qlora"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--bs", type=int, default=2)
    ap.add_argument("--out", default="curves.jsonl")
    ap.add_argument("--compare", metavar="JSONL")
    a = ap.parse_args()
    if a.compare:
        compare(a.compare)
        return
    losses = curve(a.impl, a.arch, a.mode, a.steps, a.seq, a.bs)
    with open(a.out, "a") as f:
        f.write(json.dumps(dict(impl=a.impl, arch=a.arch, mode=a.mode, losses=losses)) + "\n")
    print(f"CURVE {a.impl} {a.arch} {a.mode}: {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")


if __name__ == "__main__":
    main()
