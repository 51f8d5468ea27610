"""Chat decoding on the GPU in one call: batch-1 and batch-B tokens/s for bf16 and NF4, the first reply's latency,
the share of the bandwidth limit, and a per-kernel profile of a step (issue 30).

    python3 bench/decode_profile.py [--arch qwen3_4b] [--prompt 128] [--new 256] [--batch 8] [--lora 0]
                                    [--dtypes bf16,nf4] [--rows 25] [--model PATH]

For each dtype, the shared harness's random-weight model (.bench/train_bench.py ensure_model; `--model` takes any
local folder instead) is loaded as the app loads it (engine.models.loading.load_model: bf16, or NF4 with
double-quantized absmax and bf16 compute), optionally wrapped in a PEFT LoRA of rank `--lora` on every projection
(random B: the adapter is live), and decoded greedily with the app's decoder (engine.chat.decode.Decoder):

- first reply: a fresh Decoder's first call (cache, kernels' compilation and CUDA-graph capture included), and the
  time to its first token; the kernels compile in the background from before the load, as the Chat tab's do
  (engine.chat.warmup, with the batch's rows; TUNESMITH_DECODE_WARMUP=0 turns it off), so this includes only the
  wait for what is left of it;
- batch 1: the best of three warm calls of `--new` tokens after a `--prompt`-token prompt, in tokens/s, against the
  bandwidth limit: the card's copy bandwidth (a 1 GiB device-to-device copy, read + write bytes) over the bytes a
  token reads (every weight once; the input embedding only when the head does not share it; NF4 absmax included);
- batch B: engine.chat.decode_batch.batch over B different prompts of ragged lengths, total tokens/s (first call,
  capture included, and the best of two warm calls) and its ratio to batch 1;
- profile: the captured batch-1 step alone (CUDA events), then 10 eager steps (batch 1, then batch B) under
  torch.profiler: kernels per step, kernel time per step, and the top `--rows` kernels by device time.

Prints a `RESULT {json}` line per dtype. On a machine without CUDA it runs the same on the CPU (a smoke test with a
tiny `--model`; its figures are CPU figures and say so).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write), the best of five."""
    import torch

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.numel() / min(seconds(lambda: dst.copy_(src)) for _ in range(5))


def bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter once (of a mixture-of-experts layer's experts, the
    share a token routes to: num_experts_per_tok / num_experts), NF4 quantization states included, the input
    embedding only where the output head is the same tensor (only one row of a separate one is read)."""
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    active = getattr(config, "num_experts_per_tok", None)
    share = active / experts if experts and active else 1.0  # a token reads only its top-k experts' weights
    total = sum(
        p.numel() * p.element_size() * (share if ".experts." in name else 1.0) for name, p in model.named_parameters()
    )
    embed, head = net.get_input_embeddings().weight, net.get_output_embeddings().weight
    if embed.data_ptr() != head.data_ptr():
        total -= embed.numel() * embed.element_size()
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return int(total)


def with_lora(model, rank: int):
    import torch
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    return model.eval()


def kernel_profile(step, rows: int) -> dict:
    """Kernels per step, their time per step (ms) and a table of the top `rows`, over 10 eager `step()` calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    for _ in range(3):
        step()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
        sync()
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind]
    table = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    try:
        text = table.table(sort_by=key, row_limit=rows, max_name_column_width=70)
    except (KeyError, AttributeError, ValueError):
        text = table.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)
    busy = sum((e.device_time if cuda else e.cpu_time) for e in events) / 10 / 1e3
    return {"ops_per_step": len(events) / 10, "op_ms_per_step": round(busy, 3), "table": text}


def measure(path: Path, four_bit: bool, a) -> dict:
    import torch

    from engine.chat import warmup
    from engine.chat.decode import Decoder
    from engine.chat.decode_batch import batch
    from engine.core.hardware import choose_placement
    from engine.models.loading import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    placement = choose_placement(device)
    # as the Chat tab starts it (engine.chat.infer.ChatModel); TUNESMITH_DECODE_WARMUP=0 measures without it
    kernels = warmup.start_for(path, placement.device, placement.torch_dtype, four_bit, rows=(a.batch,))
    t = time.time()
    model = load_model(path, placement, four_bit=four_bit).eval()
    if a.lora:
        model = with_lora(model, a.lora)
    load_s = time.time() - t
    lines = []
    decoder = Decoder(model, log=lines.append, warmup=kernels)
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.config.vocab_size, 30000)
    prompt = torch.randint(100, vocab, (a.prompt,), generator=gen).tolist()
    prompts = [torch.randint(100, vocab, (a.prompt - 7 * i,), generator=gen).tolist() for i in range(a.batch)]

    with torch.inference_mode():
        t = time.perf_counter()
        stream = decoder.tokens(prompt, a.new)
        next(stream)
        first_token_s = time.perf_counter() - t
        for _ in stream:
            pass
        sync()
        first_s = time.perf_counter() - t

        def one():
            assert len(list(decoder.tokens(prompt, a.new))) == a.new

        one_s = min(seconds(one) for _ in range(3))

        def many():
            steps = sum(1 for _ in batch(decoder, prompts, a.new))
            # one step a token for all rows on our decode step; the other paths run the rows one after another
            assert steps == (a.new if decoder.path == "step" else a.batch * a.new), steps

        many_first = seconds(many)
        many_s = min(seconds(many) for _ in range(2))

    out = {
        "dtype": "nf4" if four_bit else placement.dtype,  # the CPU loads fp32
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU",
        "lora_rank": a.lora,
        "decode_path": decoder.path,  # "step": ours; "forward": transformers' forward in the graph; "generate"
        "load_s": round(load_s, 1),
        "decode_log": lines,
        "first_reply_s": round(first_s, 3),
        "first_token_s": round(first_token_s, 3),
        "batch1_tok_s": round(a.new / one_s, 1),
        f"batch{a.batch}_first_call_s": round(many_first, 3),
        f"batch{a.batch}_tok_s": round(a.batch * a.new / many_s, 1),
        f"batch{a.batch}_over_batch1": round(a.batch * one_s / many_s, 2),
        "weight_bytes_per_token": bytes_per_token(model),
    }
    if device == "cuda":
        bw = copy_bandwidth()
        limit = bw / out["weight_bytes_per_token"]
        out.update(copy_bandwidth_gb_s=round(bw / 1e9), limit_tok_s=round(limit, 1))
        out["batch1_share_of_limit"] = round(out["batch1_tok_s"] / limit, 3)

    with torch.inference_mode():
        decoder._ensure_cache(a.prompt + a.new)
        step = decoder._stepper(True)
        decoder._prefill(torch.tensor(prompt, device=device))
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(5):
                step()
            start.record()
            for _ in range(50):
                step()
            end.record()
            sync()
            out["graph_step_ms"] = round(start.elapsed_time(end) / 50, 4)
        mode, decoder.mode = decoder.mode, "eager"
        decoder._ensure_cache(a.prompt + a.new)
        decoder._prefill(torch.tensor(prompt, device=device))
        profiles = {"batch1": kernel_profile(decoder._stepper(True), a.rows)}
        if decoder.step is not None:
            from engine.chat.decode_batch import Rows

            rows = Rows(decoder)
            rows.ensure(a.batch, a.prompt + a.new)
            rows.pos.fill_(a.prompt)
            profiles[f"batch{a.batch}"] = kernel_profile(rows.stepper(True, False), a.rows)
        decoder.mode = mode
    for name, p in profiles.items():
        print(f"\n## {out['dtype']} {name}: {p['ops_per_step']:.0f} kernels a step, {p['op_ms_per_step']} ms of them")
        print(p.pop("table"))
    out["profile"] = profiles
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen3_4b")
    ap.add_argument("--model", default=None, help="a local model folder instead of the harness's --arch model")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lora", type=int, default=0, help="rank of a live LoRA adapter on every projection; 0: none")
    ap.add_argument("--dtypes", default="bf16,nf4")
    ap.add_argument("--rows", type=int, default=25, help="kernels listed per profile")
    a = ap.parse_args()
    if a.model:
        path = Path(a.model)
    else:
        import train_bench as tb

        path = Path(tb.ensure_model(a.arch))
    for dtype in a.dtypes.split(","):
        result = measure(path, dtype == "nf4", a)
        print("RESULT " + json.dumps({"arch": a.model or a.arch, "prompt": a.prompt, "new": a.new, **result}))


if __name__ == "__main__":
    main()
