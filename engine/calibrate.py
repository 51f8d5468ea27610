"""Measure training peak memory and speed on the GPU, beside the estimator's numbers (for presets/README.md).

    python -m engine.calibrate tiers [--out FILE]      the tier reference configurations under --vram-gib caps
    python -m engine.calibrate fit [--out FILE]        runs that separate the activation and loss coefficients
    python -m engine.calibrate one MODEL METHOD SEQ BATCH [--no-ckpt] [--cap GIB]    one measurement (JSON)

Models are random-weight copies of catalog architectures (random weights train at the speed and memory of real
ones; nothing is downloaded), made once under $TUNESMITH_MODELS (default /tmp/models). Each measurement runs in its
own process so the cap and the peak statistics are its own. It uses the training code path: load_model,
prepare_for_training, the run's optimizer, bf16 autocast.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = Path(os.environ.get("TUNESMITH_MODELS", "/tmp/models"))
# (tier GB, catalog id, method): one small and one large reference model per tier, at the tier preset's settings
TIER_RUNS = [
    (8, "Qwen/Qwen3-0.6B", "lora"),
    (8, "Qwen/Qwen3-4B", "qlora"),
    (12, "Qwen/Qwen3-4B", "qlora"),
    (12, "meta-llama/Llama-3.1-8B-Instruct", "qlora"),
    (16, "Qwen/Qwen3-4B", "lora"),
    (16, "meta-llama/Llama-3.1-8B-Instruct", "qlora"),
    (24, "Qwen/Qwen3-4B", "lora"),
    (24, "meta-llama/Llama-3.1-8B-Instruct", "lora"),
]
FIT_RUNS = [  # (model, method, seq, batch, checkpointing): tokens and checkpointing varied on two widths
    ("Qwen/Qwen3-0.6B", "lora", 1024, 1, True),
    ("Qwen/Qwen3-0.6B", "lora", 4096, 1, True),
    ("Qwen/Qwen3-0.6B", "lora", 4096, 1, False),
    ("Qwen/Qwen3-4B", "qlora", 2048, 1, True),
    ("Qwen/Qwen3-4B", "qlora", 2048, 2, True),
    ("Qwen/Qwen3-4B", "qlora", 2048, 1, False),
]


def make_model(model_id: str) -> Path:
    """A random-weight bf16 copy of a catalog architecture (made once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.models.presets import catalog

    entry = next(m for m in catalog() if m["id"] == model_id)
    path = MODELS / model_id.replace("/", "--")
    if (path / "config.json").exists():
        return path
    h, i, layers, heads, kv, hd, vocab, tied = entry["arch"]
    cfg = AutoConfig.for_model(
        entry["family"],
        hidden_size=h,
        intermediate_size=i,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hd,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        max_position_embeddings=32768,
    )
    torch.manual_seed(0)
    t = time.time()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    print(f"# made {model_id} in {time.time() - t:.0f}s", file=sys.stderr, flush=True)
    return path


def one(model_id: str, method: str, seq: int, batch: int, ckpt: bool, cap: float | None, steps: int = 6) -> dict:
    import torch

    from engine.api import model_arch
    from engine.core.hardware import choose_placement
    from engine.memory.estimate import estimate
    from engine.models.loading import load_model, prepare_for_training
    from engine.spec.jobspec import JobSpec
    from engine.training.steps import make_optimizer

    path = make_model(model_id)
    if cap:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total))
    spec = JobSpec(
        model=str(path), data="-", method=method, max_seq_length=seq, batch_size=batch, gradient_checkpointing=ckpt
    )
    placement = choose_placement("cuda")
    quiet = lambda m: None  # noqa: E731
    model = prepare_for_training(load_model(path, placement, four_bit=method == "qlora"), spec, quiet)
    model.train()  # transformers checkpoints only in training mode
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(spec, params, "cuda", quiet)
    vocab = model.get_input_embeddings().weight.shape[0]
    torch.cuda.reset_peak_memory_stats()
    times, ok, error = [], True, ""
    try:
        for step in range(steps):
            ids = torch.randint(100, min(vocab, 30000), (batch, seq), device="cuda")
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step >= 2:
                times.append(time.perf_counter() - t)
    except torch.cuda.OutOfMemoryError as e:
        ok, error = False, str(e).splitlines()[0][:160]
    est = estimate(model_arch(model_id), method, seq, batch, checkpointing=ckpt)
    times.sort()
    return dict(
        model=model_id,
        method=method,
        seq=seq,
        batch=batch,
        ckpt=ckpt,
        cap_gib=cap,
        ok=ok,
        error=error,
        peak_alloc_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
        peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),  # ru_maxrss is KiB
        estimate_ram_gib=est.peak_ram_gib,
        estimate_gib=est.peak_vram_gib,
        parts_gib=est.parts_gib,
        tokens_per_s=round(batch * seq / times[len(times) // 2], 1) if times else None,
        gpu=torch.cuda.get_device_name(0),
    )


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "engine.calibrate", "one", *args], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return dict(args=args, ok=False, error=(out.stderr.strip().splitlines() or ["no output"])[-1][:200])


def tiers(out) -> None:
    from engine.api import model_arch
    from engine.models import presets

    print(
        "| tier | model | method | seq x batch | ckpt | estimate GiB | measured GiB | error | tokens/s "
        "| RAM estimate GiB | RAM peak GiB (RSS) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tier, model_id, method in TIER_RUNS:
        p = presets.preset_for(tier, model_arch(model_id).params, method)
        if not isinstance(p, presets.Preset):
            print(f"| {tier} | {model_id} | {method} | does not fit: {p.reason} | | | | | |", flush=True)
            continue
        args = [model_id, method, str(p.max_seq_length), str(p.batch_size), "--cap", str(tier * presets.USABLE)]
        r = _run_child(args + ([] if p.gradient_checkpointing else ["--no-ckpt"]))
        out.write(json.dumps(dict(r, tier=tier)) + "\n")
        if not r.get("ok"):
            print(
                f"| {tier} | {model_id} | {method} | {p.max_seq_length} x {p.batch_size} | FAILED: {r.get('error')}"
                " | | | | |",
                flush=True,
            )
            continue
        err = 100 * (r["estimate_gib"] - r["peak_alloc_gib"]) / r["peak_alloc_gib"]
        print(
            f"| {tier} | {model_id} | {method} | {r['seq']} x {r['batch']} | {r['ckpt']} | {r['estimate_gib']} | "
            f"{r['peak_alloc_gib']} | {err:+.0f}% | {r['tokens_per_s']:,.0f} | {r['estimate_ram_gib']} | "
            f"{r['peak_rss_gib']} |",
            flush=True,
        )


def fit(out) -> None:
    for model_id, method, seq, batch, ckpt in FIT_RUNS:
        r = _run_child([model_id, method, str(seq), str(batch)] + ([] if ckpt else ["--no-ckpt"]))
        out.write(json.dumps(r) + "\n")
        print(
            json.dumps(
                {
                    k: r.get(k)
                    for k in (
                        "model",
                        "method",
                        "seq",
                        "batch",
                        "ckpt",
                        "ok",
                        "peak_alloc_gib",
                        "estimate_gib",
                        "parts_gib",
                        "tokens_per_s",
                        "error",
                    )
                }
            ),
            flush=True,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.calibrate")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("tiers", "fit"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=os.devnull)
    p = sub.add_parser("one")
    p.add_argument("model")
    p.add_argument("method")
    p.add_argument("seq", type=int)
    p.add_argument("batch", type=int)
    p.add_argument("--no-ckpt", action="store_true")
    p.add_argument("--cap", type=float, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "one":
        print("RESULT " + json.dumps(one(a.model, a.method, a.seq, a.batch, not a.no_ckpt, a.cap)), flush=True)
        return 0
    with open(a.out, "a") as out:
        (tiers if a.cmd == "tiers" else fit)(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
