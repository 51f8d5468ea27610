"""Where a chat decode step's time goes on the GPU: the step replayed from its CUDA graph against its kernels.

    python3 bench/profile_decode.py [--arch qwen3_4b] [--new 256]

Loads the shared harness's random-weight model the way the Chat tab does (engine.bench.chat_generator), times a
256-token greedy generate, times the captured step alone with CUDA events, profiles eager steps of the same decoder
(the kernels a replay runs, with their own durations), and times the bare weight read (one matrix-vector product per
projection, and per packed q/k/v and gate/up weight as our step runs them) that bounds a step from below.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def cuda_ms(fn, reps=50):
    import torch

    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    import torch
    import train_bench as tb
    from torch.profiler import ProfilerActivity, profile

    from engine.bench import chat_generator

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen3_4b")
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--rows", type=int, default=25)
    a = ap.parse_args()
    path = tb.ensure_model(a.arch)
    t = time.time()
    gen = chat_generator(path)
    print(f"load {time.time() - t:.1f}s")
    decoder = gen.__self__
    ids = torch.randint(100, 30000, (1, 128), device="cuda")
    for i in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            gen(ids, a.new)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"generate call {i}: {dt:.2f}s = {a.new / dt:.1f} tok/s")

    with torch.inference_mode():
        decoder._ensure_cache(128 + a.new)
        step = decoder._stepper(True)
        decoder._prefill(ids.view(-1))
        print(f"captured step alone: {cuda_ms(step):.3f} ms")
        weights = [m.weight for m in decoder.net.modules() if isinstance(m, torch.nn.Linear)]
        x = {w.shape[1]: torch.randn(1, w.shape[1], device="cuda", dtype=w.dtype) for w in weights}
        gib = sum(w.numel() * w.element_size() for w in weights) / 2**30
        ms = cuda_ms(lambda: [torch.nn.functional.linear(x[w.shape[1]], w) for w in weights], reps=10)
        rate = gib / ms * 1e3
        print(f"bare matvecs over {len(weights)} Linear weights ({gib:.2f} GiB): {ms:.3f} ms = {rate:.0f} GiB/s")
        if decoder.step is not None:  # the matvecs our step runs: q/k/v and gate/up packed where they could be
            ran = [decoder.step.head.base.weight]
            for layer in decoder.step.layers:
                for group in (layer.qkv, layer.gate_up):
                    ran += [group.packed[0]] if group.packed else [p.base.weight for p in group.projections]
                ran += [layer.o.base.weight, layer.down.base.weight]
            ran = [w for w in ran if w.dtype != torch.uint8]  # NF4 weights run kernels/nf4_matvec.py, not a dense one
            gib = sum(w.numel() * w.element_size() for w in ran) / 2**30
            ms = cuda_ms(lambda: [torch.nn.functional.linear(x[w.shape[1]], w) for w in ran], reps=10)
            print(f"the step's {len(ran)} dense matvecs ({gib:.2f} GiB): {ms:.3f} ms = {gib / ms * 1e3:.0f} GiB/s")

        decoder.mode = "eager"
        decoder._ensure_cache(128 + a.new)
        decoder._prefill(ids.view(-1))
        for _ in range(3):
            decoder._step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                decoder._step()
            torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in events) / 10 / 1e3
    print(f"eager: {len(events) / 10:.0f} kernels per step, {busy:.3f} ms of kernel time")
    table = prof.key_averages()
    try:
        print(table.table(sort_by="self_device_time_total", row_limit=a.rows, max_name_column_width=70))
    except (KeyError, AttributeError, ValueError):
        print(table.table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
