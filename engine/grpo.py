"""GRPO on a prompt dataset: sample several replies per prompt, score them with the job's rewards, and push the
model towards the replies that scored above their group's mean (trl.GRPOTrainer with the engine's model).

Each row's prompt (text, or a message list) becomes a conversation rendered by the same chat template as SFT; the
row's other columns (say `answer`) reach the rewards, which engine.rewards builds from the job's presets. A micro-step
holds `batch_size` prompts x `num_generations` replies; an optimizer step scores `batch_size x grad_accum` prompts.
With `grpo_beta` 0 (the default) there is no KL term and no reference pass; above 0, the reference is the base model
with the LoRA adapter switched off, as for DPO (engine.preference), never a second copy; full fine-tuning has no
adapter, so there TRL loads a frozen copy of the starting weights (in the run's dtype).

Sampling goes through TRL's default path, plain transformers `generate` on the training model (in eval mode, so with
its KV cache: see `sample_with_cache`). The issue asks for the engine's fast decoder (engine.decode: static KV cache,
CUDA graphs) here: NOT DONE YET. It needs a TRL rollout function that decodes a batch of prompts with the live LoRA
weights; until then sampling dominates a GRPO step.
"""

from pathlib import Path

from engine.data import validate_row
from engine.errors import UserError
from engine.hardware import choose_placement
from engine.objectives import read_rows
from engine.rewards import build
from engine.train import total_steps

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # full fine-tuning's reference copy
METRICS = {  # runlog name: GRPOTrainer log key
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "reply_length": "completions/mean_length",
    "kl": "kl",  # with grpo_beta above 0
}


def to_prompt(row: dict, row_no: int, source: str, system_prompt: str = "") -> dict:
    """One prompt row as {"prompt": messages, **its other columns}."""
    validate_row(row, "prompt", row_no, source)
    prompt = row["prompt"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif all(isinstance(t, dict) and {"role", "content"} <= set(t) for t in prompt):
        messages = [{"role": t["role"], "content": t["content"]} for t in prompt]
    else:
        raise UserError(f"{source}: row {row_no}: 'prompt' should be text or a list of {{role, content}} turns.")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {**row, "prompt": messages}


def text_of(value) -> str:
    """Plain text of a prompt or reply as TRL passes it: a string, or a message list (its last message)."""
    return value if isinstance(value, str) else value[-1]["content"]


def for_trl(name: str, score, columns: list[str]):
    """A reward in TRL's calling convention around one of ours (plain-text replies and prompts, dataset columns)."""

    def reward(prompts, completions, **kwargs):
        data = {c: kwargs[c] for c in columns if c in kwargs}
        return score([text_of(c) for c in completions], [text_of(p) for p in prompts], **data)

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward


def sample_with_cache(model) -> None:
    """Put `model` in eval mode while it generates (on this instance only). TRL samples with the training model, and
    transformers drops the KV cache of a checkpointing layer in training mode, so every new token would re-run the
    whole sequence; sampling needs no gradients (and no dropout), so eval mode loses nothing."""
    generate = model.generate

    def generate_with_cache(*args, **kwargs):
        training = model.training
        model.eval()
        try:
            return generate(*args, **kwargs)
        finally:
            model.train(training)

    model.generate = generate_with_cache


def train_grpo(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train `spec` (objective grpo) into `run_dir`, with the SFT loop's metrics, checkpoints and cancel."""
    import torch
    from datasets import Dataset

    from engine.loading import load_for_training
    from engine.trl_run import TrlRun, prepare

    torch.manual_seed(spec.seed)
    placement = choose_placement(spec.device, spec.dtype)
    prepare(placement)
    from trl import GRPOConfig, GRPOTrainer

    rewards = build(spec.rewards)
    runlog.set(state="loading", message="loading the model")
    model, tok = load_for_training(spec, placement, log)
    source = Path(spec.data).name
    rows = [to_prompt(r, i, source, spec.system_prompt) for i, r in enumerate(read_rows(spec, log), 1)]
    columns = sorted({k for r in rows for k in r} - {"prompt"})
    run = TrlRun(spec, run_dir, runlog, should_stop, log, model, tok, placement, total_steps(spec, len(rows)), resume)
    args = run.args(
        GRPOConfig,
        per_device_train_batch_size=spec.batch_size * spec.num_generations,  # TRL counts replies, not prompts
        num_generations=spec.num_generations,
        max_completion_length=spec.max_new_tokens,
        temperature=spec.temperature,
        beta=spec.grpo_beta,
        reward_weights=[weight for _, weight, _ in rewards],
        remove_unused_columns=False,  # the rewards read the other columns
        model_init_kwargs=dict(dtype=TORCH_DTYPES[placement.dtype]) if spec.method == "full" else None,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[for_trl(name, score, columns) for name, _, score in rewards],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[run.callback({**METRICS, **{f"reward_{n}": f"rewards/{n}/mean" for n, _, _ in rewards}})],
        optimizers=(run.opt, run.sched),
    )
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # TRL's frozen adapter copy; the reference is the base (see engine.preference)
    sample_with_cache(model)
    log(
        f"grpo: {len(rows)} prompts x {spec.num_generations} replies of up to {spec.max_new_tokens} tokens; rewards "
        + ", ".join(f"{name} x{weight:g}" for name, weight, _ in rewards)
    )
    run.train(trainer)
