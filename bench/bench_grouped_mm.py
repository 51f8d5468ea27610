"""Grouped expert matmul at Qwen3-30B-A3B's sizes (128 experts, 8 per token, hidden 2048, expert width 768) for 4096
tokens routed uniformly at random: each product a training step runs (forward, dx, dw, the LoRA factors'), by the
Triton kernel at several tile sizes (kernels.grouped_mm.Tiles) and by torch._grouped_mm (CUTLASS) where this torch
has it, in the layouts the expert path hands them. Prints one line per product: microseconds per variant.

    python3 bench/bench_grouped_mm.py          (on the GPU machine; without a GPU a smoke run at tiny shapes)
"""

import functools

import torch
from common import DEVICE, SMOKE, time_us

from kernels.grouped_mm import TILES, Tiles, grouped_mm_dw, grouped_mm_fwd, grouped_mm_reference

TOKENS, EXPERTS, TOP_K, HIDDEN, WIDTH, RANK = (16, 4, 2, 32, 48, 16) if SMOKE else (4096, 128, 8, 2048, 768, 16)
CANDIDATES = [TILES] + [
    Tiles(*t)
    for t in ((64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (64, 128, 32, 4, 4), (128, 64, 64, 4, 3),
              (128, 256, 64, 8, 3), (64, 256, 64, 8, 3), (64, 16, 64, 4, 3), (128, 16, 128, 4, 3), (64, 128, 16, 4, 3),
              (128, 128, 16, 4, 3))
]  # fmt: skip
CANDIDATES = CANDIDATES[:3] if SMOKE else CANDIDATES


def offsets_of(gen) -> torch.Tensor:
    ids = torch.stack([torch.randperm(EXPERTS, generator=gen)[:TOP_K] for _ in range(TOKENS)]).reshape(-1)
    return torch.bincount(ids, minlength=EXPERTS).cumsum(0).to(torch.int32).to(DEVICE)


def products(gen) -> dict[str, tuple]:
    """name -> (x [M, K], w [G, K, N]) in the expert path's layouts; w of the base products is a transpose of the
    [G, out, in] stack as transformers stores it (and as the NF4 path dequantizes it)."""
    m = TOKENS * TOP_K

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, torch.bfloat16)

    gate_up, down = rand(EXPERTS, 2 * WIDTH, HIDDEN), rand(EXPERTS, HIDDEN, WIDTH)
    lora_a, lora_b = rand(EXPERTS, HIDDEN, RANK), rand(EXPERTS, RANK, 2 * WIDTH)
    return {
        "gate_up fwd": (rand(m, HIDDEN), gate_up.transpose(1, 2)),
        "gate_up dx": (rand(m, 2 * WIDTH), gate_up),
        "down fwd": (rand(m, WIDTH), down.transpose(1, 2)),
        "down dx": (rand(m, HIDDEN), down),
        "lora A fwd": (rand(m, HIDDEN), lora_a),
        "lora B fwd": (rand(m, RANK), lora_b),
    }


def timed(fn, ref) -> tuple[float, str]:
    """(microseconds, relative max error against the reference) of fn(), or (nan, why) when it refuses."""
    try:
        err = (fn().float() - ref).abs().max().item() / ref.abs().max().item()
    except RuntimeError as exc:
        return float("nan"), str(exc).splitlines()[0][:80]
    return time_us(fn), f"{err:.1e}"


def main():
    gen = torch.Generator().manual_seed(0)
    offsets = offsets_of(gen)
    sizes = offsets.diff().aminmax()
    where = "smoke (interpreter)" if SMOKE else torch.cuda.get_device_name()
    print(f"# {TOKENS} tokens, {EXPERTS} experts, top {TOP_K}; groups of {sizes.min}..{sizes.max} rows; {where}")
    for name, (x, w) in products(gen).items():
        ref = grouped_mm_reference(x, w, offsets).float()
        times = {}
        for tiles in CANDIDATES:
            if not SMOKE and ((tiles.n == 16) != (w.shape[2] <= 16) or (tiles.k == 16) != (w.shape[1] <= 16)):
                continue  # tiles of 16 only for the LoRA factors' rank
            times[str(tuple(tiles))] = timed(functools.partial(grouped_mm_fwd, x, w, offsets, tiles=tiles), ref)
        if hasattr(torch, "_grouped_mm") and not SMOKE:
            times["torch._grouped_mm"] = timed(functools.partial(torch._grouped_mm, x, w, offs=offsets), ref)
        best = min(times, key=lambda k: times[k][0] if times[k][0] == times[k][0] else float("inf"))
        cells = ", ".join(f"{k} {t:.0f} us (err {e})" for k, (t, e) in times.items())
        print(f"RESULT {name} [{x.shape[0]}x{x.shape[1]} @ {w.shape[1]}x{w.shape[2]}]: best {best}; {cells}")
    x = products(gen)["gate_up fwd"][0]
    dy = torch.randn(TOKENS * TOP_K, RANK, generator=gen).to(DEVICE, torch.bfloat16)
    for tiles in CANDIDATES[:4]:
        t = time_us(functools.partial(grouped_mm_dw, x, dy, offsets, torch.bfloat16, tiles=tiles))
        print(f"RESULT lora A dw {tuple(tiles)}: {t:.0f} us")


if __name__ == "__main__":
    main()
