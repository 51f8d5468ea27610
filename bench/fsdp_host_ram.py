"""Host RAM of each rank of a full fine-tune sharded by FSDP2 (issue 28): the peak resident memory of every rank
process, polled every 20 ms, while the model loads and is sharded, and over the whole run.

    python3 bench/fsdp_host_ram.py [--gpus 2] [--device cpu|auto] [--dtype fp32|bf16|fp16] [--layers 12]
                                   [--method full|lora|qlora]

Makes a random-weight llama (hidden 1024, 12 layers: 136M parameters, bf16 safetensors) in a temporary folder and
trains it for two steps with `gpus: N` through the app's own launcher (`--device cpu`: N processes over gloo;
`auto`: N GPUs over NCCL). Rank 0 alone loads the weights; the other ranks build the model empty and receive their
shards, so their loading peak is their own overhead (`--method lora|qlora`: every rank loads the base onto its
GPU). Loading ends at rank 0's "training:" log line. Prints one line per rank and the estimate's host RAM figure for
the run (engine.api.estimate, which counts the checkpoint once and each rank's overhead).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def make_model(folder: Path, layers: int) -> Path:
    import torch
    from tiny import make_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = make_tokenizer()
    cfg = AutoConfig.for_model(
        "llama", vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "auto"])
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fsdp-ram-"))
    os.environ["TUNESMITH_RUNS"] = str(work / "runs")
    import psutil

    from engine import api

    model = make_model(work / "model", args.layers)
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(dict(instruction=f"q{i}", input="", output="a")) + "\n" for i in range(8)))
    spec = api.JobSpec(
        model=str(model), data=str(data), method=args.method, gpus=args.gpus, device=args.device, dtype=args.dtype,
        max_steps=2, batch_size=1, max_seq_length=64, save_every=0, learning_rate=1e-4, seed=0,
    )  # fmt: skip
    handle = api.start(spec)
    loading, whole = {}, {}
    while not api.poll(handle).finished:
        try:
            supervisor = psutil.Process(json.loads((handle.run_dir / "status.json").read_text())["pid"])
            loaded = "training:" in (handle.run_dir / "log.txt").read_text()  # rank 0: every rank is ready
            for proc in supervisor.children(recursive=True):
                env = proc.environ()
                if "LOCAL_RANK" in env:
                    rss = proc.memory_info().rss / 2**30
                    whole[env["RANK"]] = max(whole.get(env["RANK"], 0), rss)
                    if not loaded:
                        loading[env["RANK"]] = max(loading.get(env["RANK"], 0), rss)
        except (psutil.Error, OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    status = api.poll(handle)
    print(f"run {status.state}: {status.message}")
    for rank in sorted(whole):
        during = loading.get(rank, 0)
        print(f"rank {rank}: peak RSS {during:.3f} GiB while loading and sharding, {whole[rank]:.3f} GiB in all")
    e = api.estimate(str(model), args.method, 64, 1, vram_gib=80, ram_gib=512, gpus=args.gpus)  # bf16 (fp16: fp32 load)
    print(f"estimate (bf16): {e['peak_ram_gib']} GiB host RAM for the {args.gpus} processes")


if __name__ == "__main__":
    main()
