"""DPO and GRPO steps/s and peak VRAM: the engine's own job path against plain TRL + PEFT, on the same settings.

    python3 bench/objectives_bench.py --impl {project,trl} --objective {dpo,grpo} [--arch qwen3_0.6b] [--steps 8]
    python3 bench/objectives_bench.py --impl project --objective grpo --device cpu --tiny    # a CPU smoke test
    python3 bench/objectives_bench.py --impl project --objective grpo --sampler trl   # the engine with TRL's sampler

Both implementations train the shared harness's random-weight model (.bench/train_bench.py `ensure_model`) on one
synthetic dataset made here, with LoRA r=16 (alpha 16, no dropout) on q,k,v,o,gate,up,down, bf16 on a GPU (fp32 on the
CPU), 8-bit AdamW (torch's AdamW on the CPU) at a constant learning rate, and the same batch, prompt and reply
lengths (re-tokenized, the synthetic texts come out about 10% longer than SIZES says):

  project  a JobSpec with objective dpo / grpo run by engine.run.main, the training subprocess's own entry point (the
           app's path: engine.models.loading's fast path and checkpointing policy, engine.training.preference /
           engine.training.grpo, and for GRPO the engine's decoder as the sampler)
  trl      what a user without Tunesmith writes: AutoModelForCausalLM (sdpa), TRL's DPOTrainer / GRPOTrainer with a
           PEFT LoraConfig and gradient_checkpointing=True

A step's time runs from one optimizer step's end to the next (generation, reference pass and logging included); the
result is the median over the steps after the warm-up. Peak memory is torch.cuda.max_memory_allocated over the whole
process, so run each impl/objective in its own process (bench/objectives.sh does). For GRPO, sampled tokens/s is the
reply tokens over the time spent in GRPOTrainer._generate, which both paths go through (the engine's decoder is its
rollout_func). Random weights almost never emit EOS, so replies run to the full length on both sides (the result's
reply_tokens_per_step shows it).

Prints one line `RESULT {json}`.
"""

import argparse
import itertools
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (batch, prompt tokens, reply tokens): DPO's batch counts pairs, GRPO's prompts (x generations replies each)
SIZES = {
    "full": dict(dpo=(4, 128, 384), grpo=(2, 64, 128), generations=8),
    "tiny": dict(dpo=(2, 16, 32), grpo=(2, 16, 8), generations=2),
}
REWARD_PATTERN = r"\s"  # GRPO's reward (regex preset / its TRL twin): cheap, so the step times the training


def synthetic_text(tok, rng: random.Random, n_tokens: int) -> str:
    """Text of about `n_tokens` tokens: random non-special tokens of the bench tokenizer, decoded."""
    special = set(tok.all_special_ids)
    ids = [i for i in range(len(tok)) if i not in special]
    return tok.decode([rng.choice(ids) for _ in range(n_tokens)])


def make_rows(tok, objective: str, rows: int, prompt_len: int, reply_len: int) -> list[dict]:
    """The dataset both implementations train on, as the JSONL rows a user would give the app."""
    rng = random.Random(0)
    if objective == "dpo":
        return [
            dict(
                prompt=synthetic_text(tok, rng, prompt_len),
                chosen=synthetic_text(tok, rng, reply_len),
                rejected=synthetic_text(tok, rng, reply_len),
            )
            for _ in range(rows)
        ]
    return [dict(prompt=synthetic_text(tok, rng, prompt_len)) for _ in range(rows)]


class Timer:
    """Step-end times and GRPO sampling figures, gathered by wrapping the classes both paths run through."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.step_ends: list[float] = []
        self.losses: list[float] = []
        self.samples: list[tuple[int, float]] = []  # (reply tokens, seconds) per GRPOTrainer._generate call

    def install(self) -> None:
        from transformers.trainer_callback import CallbackHandler
        from trl import GRPOTrainer

        timer = self
        on_step_end, on_log, generate = CallbackHandler.on_step_end, CallbackHandler.on_log, GRPOTrainer._generate

        def step_end(self, args, state, control):
            timer.sync()
            timer.step_ends.append(time.perf_counter())
            return on_step_end(self, args, state, control)

        def log(self, args, state, control, logs):
            if "loss" in logs:
                timer.losses.append(float(logs["loss"]))
            return on_log(self, args, state, control, logs)

        def timed_generate(self, prompts):
            timer.sync()
            start = time.perf_counter()
            out = generate(self, prompts)
            timer.sync()
            timer.samples.append((sum(len(ids) for ids in out[1]), time.perf_counter() - start))
            return out

        CallbackHandler.on_step_end, CallbackHandler.on_log, GRPOTrainer._generate = step_end, log, timed_generate


def run_project(a, model_path: str, rows: list[dict], work: Path, device: str) -> None:
    """The app's path: a job.yaml run by engine.run.main, as `python -m engine.run` does."""
    from engine.run import main as run_job
    from engine.spec.jobspec import JobSpec

    batch, prompt_len, reply_len = SIZES[a.size][a.objective]
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = dict(max_seq_length=prompt_len + 2 * reply_len)  # room for the template and the longer re-tokenized texts
    if a.objective == "grpo":
        extra = dict(
            num_generations=SIZES[a.size]["generations"],
            max_new_tokens=reply_len,
            temperature=1.0,
            grpo_beta=0.0,
            rewards=({"preset": "regex", "pattern": REWARD_PATTERN},),
        )
    spec = JobSpec(
        model=model_path,
        data=str(data),
        objective=a.objective,
        method="lora",
        batch_size=batch,
        max_steps=a.steps,
        learning_rate=a.lr,
        lr_schedule="constant",
        optimizer="adamw_8bit" if device == "cuda" else "adamw",
        lora_r=16,
        lora_alpha=16,
        target_modules=tuple(TARGETS),
        device=device,
        dtype="bf16" if device == "cuda" else "fp32",
        seed=0,
        **extra,
    )
    run_dir = work / "run"
    run_dir.mkdir()
    (run_dir / "job.yaml").write_text(spec.to_yaml())
    if run_job([str(run_dir / "job.yaml")]) != 0:
        raise SystemExit(f"the project run failed: {json.loads((run_dir / 'status.json').read_text())['message']}")


def run_trl(a, model_path: str, rows: list[dict], work: Path, device: str) -> None:
    """Plain TRL + PEFT, as its documentation shows, with the settings the project run gets."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batch, prompt_len, reply_len = SIZES[a.size][a.objective]
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        attn_implementation="sdpa",
        device_map={"": device},
    )
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(work / "trl"),
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        optim="adamw_8bit" if device == "cuda" else "adamw_torch",
        max_steps=a.steps,
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    # the conversational form the engine gives TRL, so both render the same chat template
    if a.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        pairs = [
            dict(
                prompt=[{"role": "user", "content": r["prompt"]}],
                chosen=[{"role": "assistant", "content": r["chosen"]}],
                rejected=[{"role": "assistant", "content": r["rejected"]}],
            )
            for r in rows
        ]
        args = DPOConfig(per_device_train_batch_size=batch, max_length=prompt_len + 2 * reply_len, beta=0.1, **common)
        trainer = DPOTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok, peft_config=lora
        )
    else:
        from trl import GRPOConfig, GRPOTrainer

        def space(completions, **kwargs):
            return [float(re.search(REWARD_PATTERN, c[-1]["content"]) is not None) for c in completions]

        generations = SIZES[a.size]["generations"]
        args = GRPOConfig(
            per_device_train_batch_size=batch * generations,
            num_generations=generations,
            max_completion_length=reply_len,
            temperature=1.0,
            beta=0.0,
            **common,
        )
        prompts = [dict(prompt=[{"role": "user", "content": r["prompt"]}]) for r in rows]
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[space],
            args=args,
            train_dataset=Dataset.from_list(prompts),
            processing_class=tok,
            peft_config=lora,
        )
    trainer.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=("project", "trl"), required=True)
    ap.add_argument("--objective", choices=("dpo", "grpo"), required=True)
    ap.add_argument("--arch", default=None, help="a .bench/train_bench.py arch (default qwen3_0.6b; tiny with --tiny)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the harness's tiny model and small batches (CPU smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 8; 3 with --tiny)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the median (default 3; 1 with --tiny)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--sampler", choices=("engine", "trl"), help="project GRPO: force TUNESMITH_GRPO_SAMPLER")
    a = ap.parse_args()
    if a.sampler:
        os.environ["TUNESMITH_GRPO_SAMPLER"] = a.sampler
    a.size = "tiny" if a.tiny else "full"
    a.arch = a.arch or ("tiny" if a.tiny else "qwen3_0.6b")
    a.steps = a.steps or (3 if a.tiny else 8)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    if a.warmup < 1 or a.steps <= a.warmup:
        raise SystemExit("need 1 <= --warmup < --steps (a step's time is measured from the previous step's end)")
    if a.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # TRL 1.15's log-prob kernel is Triton; before TRL loads it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path[:0] = [str(ROOT / ".bench"), str(ROOT)]

    import datasets
    import torch
    from train_bench import ensure_model
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    model_path = ensure_model(a.arch)
    batch, prompt_len, reply_len = SIZES[a.size][a.objective]
    rows = make_rows(
        AutoTokenizer.from_pretrained(model_path), a.objective, batch * (a.steps + 2), prompt_len, reply_len
    )
    timer = Timer(a.device)
    timer.install()
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"objectives-{a.impl}-{a.objective}-") as tmp:
        (run_project if a.impl == "project" else run_trl)(a, model_path, rows, Path(tmp), a.device)
    total_s = time.perf_counter() - start

    if len(timer.step_ends) != a.steps:
        raise SystemExit(f"expected {a.steps} optimizer steps, timed {len(timer.step_ends)}")
    step_s = [t1 - t0 for t0, t1 in itertools.pairwise(timer.step_ends)][a.warmup - 1 :]
    median = statistics.median(step_s)
    result = dict(
        impl=a.impl,
        objective=a.objective,
        arch=a.arch,
        device=torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
        steps=a.steps,
        warmup=a.warmup,
        steps_per_s=round(1 / median, 4),
        step_s_median=round(median, 4),
        step_s=[round(s, 4) for s in step_s],
        loss_first=round(timer.losses[0], 6) if timer.losses else None,
        loss_last=round(timer.losses[-1], 6) if timer.losses else None,
        total_s=round(total_s, 1),
        settings=dict(batch=batch, prompt_tokens=prompt_len, reply_tokens=reply_len, lora_r=16, lr=a.lr),
    )
    if a.device == "cuda":
        result["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    if a.objective == "grpo":
        result["settings"]["generations"] = SIZES[a.size]["generations"]
        result["sampler"] = "transformers generate" if a.impl == "trl" else (a.sampler or "auto (engine decoder)")
        measured = timer.samples[a.warmup :]  # one _generate call per step (no gradient accumulation)
        tokens, seconds = sum(n for n, _ in measured), sum(s for _, s in measured)
        result["sampled_tokens_per_s"] = round(tokens / seconds, 1) if seconds else None
        result["sampling_share"] = round(seconds / sum(step_s), 3)
        result["reply_tokens_per_step"] = round(tokens / max(len(measured), 1), 1)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
