"""Batch-1 greedy decoding of a 4-bit (bitsandbytes NF4) base: transformers generate against engine.chat.decode.Decoder
on the same loaded model.

    python3 bench/decode_4bit.py [--arch qwen3_4b] [--prompt 128] [--new 256] [--lora 0]

Loads the shared harness's random-weight model (.bench/train_bench.py ensure_model) with NF4 weights, double-quantized
absmax and bf16 compute, as engine.models.loading.load_model(four_bit=True) does, and times both on the one model
object: transformers generate (default dynamic cache, sdpa; what a user gets without us) and our decoder (its own step
with kernels/nf4_matvec.py, in a CUDA graph). `--lora R` first wraps the model in a PEFT LoRA of rank R on every
projection (random B, so the adapter does something), as a QLoRA run's chat has. Prints one `RESULT {json}` line:
tokens/s of the best of three warm calls of each, the first calls, and the ratio.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.getcwd(), ".bench"))
sys.path.insert(0, os.getcwd())


def timed(gen, ids, new, calls=3):
    """(seconds of the first call, best seconds of the others) for gen(ids, new)."""
    import torch

    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            out = gen(ids, new)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        assert out.shape[1] == ids.shape[1] + new, out.shape
    return times[0], min(times[1:])


def main():
    import torch
    import train_bench as tb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from engine.chat.decode import Decoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen3_4b")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--lora", type=int, default=0, help="rank of a LoRA adapter on every projection; 0: none")
    a = ap.parse_args()
    path = tb.ensure_model(a.arch)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, quantization_config=quant, device_map={"": 0}, attn_implementation="sdpa"
    ).eval()
    if a.lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=a.lora, lora_alpha=a.lora, target_modules=tb.TARGETS, lora_dropout=0.0)
        model = get_peft_model(model, config).eval()
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.02)
    print(f"# load {time.time() - t:.1f}s", flush=True)
    ids = torch.randint(100, 30000, (1, a.prompt), device="cuda")

    def hf(ids, n):
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )

    hf_first, hf_best = timed(hf, ids, a.new)
    print(f"# transformers generate: {a.new / hf_best:.1f} tok/s (first call {hf_first:.2f}s)", flush=True)
    decoder = Decoder(model, log=lambda m: print(f"# {m}", flush=True))
    ours_first, ours_best = timed(decoder.generate, ids, a.new)
    print(f"# engine.chat.decode: {a.new / ours_best:.1f} tok/s (first call {ours_first:.2f}s)", flush=True)
    with torch.inference_mode():
        same = decoder.generate(ids, 64)[0, a.prompt :].tolist() == hf(ids, 64)[0, a.prompt :].tolist()
    result = dict(
        arch=a.arch,
        lora=a.lora,
        new_tokens=a.new,
        hf_tok_s=round(a.new / hf_best, 1),
        ours_tok_s=round(a.new / ours_best, 1),
        speedup=round(hf_best / ours_best, 2),
        hf_first_call_s=round(hf_first, 2),
        ours_first_call_s=round(ours_first, 2),
        first_64_tokens_equal=same,
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        gpu=torch.cuda.get_device_name(0),
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
