"""GRPO on a prompt dataset: sample several replies per prompt, score them with the job's rewards, and push the
model towards the replies that scored above their group's mean (trl.GRPOTrainer with the engine's model).

Each row's prompt (text, or a message list) becomes a conversation rendered by the same chat template as SFT; the
row's other columns (say `answer`) reach the rewards, which engine.spec.rewards builds from the job's presets. A
micro-step holds `batch_size` prompts x `num_generations` replies; an optimizer step scores `batch_size x grad_accum`
prompts. With `grpo_beta` 0 (the default) there is no KL term and no reference pass; above 0, the reference is the base
model with the LoRA adapter switched off, as for DPO (engine.training.preference), never a second copy; full fine-tuning
has no adapter, so there TRL loads a frozen copy of the starting weights (in the run's dtype). TRL cuts no prompt, so a
prompt that alone fills max_seq_length is left out (a note of the run's status), as DPO leaves out such pairs.

Sampling goes through the Chat tab's decoder (engine.chat.decode: static KV cache, a CUDA-graph decode step on a GPU),
plugged into TRL as its `rollout_func`: the replies are decoded one after another from the training model itself, in
eval mode and without gradients, with the LoRA adapter applied unmerged, so every step samples from the weights the
optimizer just updated. A reply ends on the tokenizer's EOS or the template's end-of-turn token, which stays in the
reply so the model learns to stop. The replies of a step are decoded one at a time (batch 1, as the Chat tab does),
where TRL's `generate` decodes them as one padded batch; bench/objectives_bench.py measures the two on a GPU.

Models that cannot decode over a plain static KV cache (transformers' `_can_compile_fullgraph` off, a stateful
cache, or sliding-window layers, whose steps no CUDA graph can replay) sample through TRL's default path instead,
plain transformers `generate` on the training model (in eval mode, so with its KV cache: see `sample_with_cache`).
`TUNESMITH_GRPO_SAMPLER=engine|trl` forces one; the run log says which runs and why.
"""

import math
import os
import warnings
from pathlib import Path

from engine.core.errors import UserError
from engine.core.hardware import choose_placement
from engine.data.formats import prompt_turns
from engine.spec.objectives import read_rows
from engine.spec.rewards import build
from engine.training.steps import total_steps

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # full fine-tuning's reference copy
METRICS = {  # runlog name: GRPOTrainer log key
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "reply_length": "completions/mean_length",
    "kl": "kl",  # with grpo_beta above 0
}


def to_prompt(row: dict, row_no: int, source: str, system_prompt: str = "") -> dict:
    """One prompt row as {"prompt": messages, **its other columns}."""
    messages = prompt_turns(row, f"{source}: row {row_no}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {**row, "prompt": messages}


def fit_prompts(rows: list[dict], tok, max_len: int, source: str, log, note=None) -> list[dict]:
    """The rows without those whose prompt alone (rendered by the chat template, as the sampler renders it) is
    `max_len` tokens or longer: no reply fits within max_seq_length, and TRL would sample and train on them whole,
    past the model's context too. How many were left out is logged and told to `note(text)`; a UserError when all."""
    from engine.data.tokenizing import render

    def tokens(row: dict, row_no: int) -> int:
        text = render(tok, row["prompt"], True, f"{source}: row {row_no}")
        return len(tok(text, add_special_tokens=False).input_ids)

    kept = [row for i, row in enumerate(rows, 1) if tokens(row, i) < max_len]
    if not kept:
        raise UserError(
            f"Every prompt is {max_len} tokens or longer, so no reply fits within max_seq_length {max_len}; "
            "raise max_seq_length."
        )
    if len(kept) < len(rows):
        said = (
            f"{len(rows) - len(kept)} of {len(rows)} prompts are max_seq_length {max_len} tokens or longer, so no "
            "reply fits, and were left out. Raise max_seq_length to keep them."
        )
        log(f"note: {said}")
        if note is not None:
            note(said)
    return kept


def prompt_dataset(rows: list[dict]):
    """The prompt rows as the datasets.Dataset TRL takes: every column that any row has, None where a row lacks it
    (Dataset.from_list keeps only the first row's columns), and a column whose values Arrow cannot hold as one type
    (answers 4 and "4" in one JSONL file) as text, the way the answer reward reads a reference anyway."""
    import pyarrow as pa
    from datasets import Dataset

    columns = {}
    for name in dict.fromkeys(k for r in rows for k in r):
        values = [r.get(name) for r in rows]
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
        columns[name] = values
    return Dataset.from_dict(columns)


def text_of(value) -> str:
    """Plain text of a prompt or reply as TRL passes it: a string, or a message list (its last message)."""
    return value if isinstance(value, str) else value[-1]["content"]


def _is_number(value) -> bool:
    """A finite number of any kind (float, int, numpy or a one-element tensor)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def for_trl(rewards: list[tuple[str, float, object]], columns: list[str]) -> list:
    """The job's rewards in TRL's calling convention (plain-text replies and prompts, dataset columns)."""
    unscored: list[str] = []  # this batch's rewards that gave no number so far; TRL calls them in order
    funcs = []
    for i, (name, _, score) in enumerate(rewards):

        def reward(prompts, completions, _name=name, _score=score, _at=i, **kwargs):
            data = {c: kwargs[c] for c in columns if c in kwargs}
            if _at == 0:
                unscored.clear()
            out = _score([text_of(c) for c in completions], [text_of(p) for p in prompts], **data)
            # TRL reads None as "no score for this reply", fine while another reward scores it; a batch that no
            # reward scored ends in a NaN loss, which would be blamed on the learning rate
            if not any(_is_number(r) for r in out):
                unscored.append(f"{_score.__module__}:{_score.__name__}" if _name.startswith("python") else _name)
            if _at == len(rewards) - 1 and len(unscored) == len(rewards):
                raise UserError(
                    f"The reward function '{', '.join(unscored)}' returned no number for any of {len(out)} replies "
                    "(only None or NaN); make it return a float for each reply."
                )
            return out

        reward.__name__ = name  # TRL logs rewards/<name>/mean
        funcs.append(reward)
    return funcs


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


SAMPLERS = ("engine", "trl")


def choose_sampler(model) -> tuple[str, str]:
    """("engine" or "trl", why): TUNESMITH_GRPO_SAMPLER wins; else the engine's decoder for every model that decodes
    over a plain static KV cache, TRL's default `generate` for the rest."""
    wanted = os.environ.get("TUNESMITH_GRPO_SAMPLER", "").strip().lower()
    if wanted:
        if wanted not in SAMPLERS:
            raise UserError(f"TUNESMITH_GRPO_SAMPLER={wanted!r}: use one of {', '.join(SAMPLERS)}.")
        return wanted, f"TUNESMITH_GRPO_SAMPLER={wanted}"
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(net).__name__
    # the test transformers applies before it compiles a static-cache decode step
    if getattr(net, "_is_stateful", False) or not getattr(net, "_can_compile_fullgraph", False):
        return "trl", f"{name} cannot decode over a static KV cache, so TRL's sampler (transformers generate) runs"
    from engine.chat.decode import static_cache_blocker

    blocker = static_cache_blocker(net.config)
    if blocker is not None:
        # a sliding-window layer keeps its position in a host int, so no decode step over it is captured in a CUDA
        # graph; one reply at a time without graphs would only lose to generate's padded batch
        return "trl", f"{name}: {blocker}, so TRL's sampler (transformers generate) runs"
    return "engine", f"{name}: the engine's decoder (static KV cache, live LoRA weights)"


def stop_ids(tok, trainer) -> set[int]:
    """Token ids that end a reply: the ones TRL ends completions on (the tokenizer's and the model's EOS), plus the
    end-of-turn markers the chat template writes (a named template on a base model ends turns with one of them)."""
    from engine.data.templates import END_OF_TURN

    vocab = tok.get_vocab()
    return {int(i) for i in trainer.eos_token_ids if i is not None} | {vocab[t] for t in END_OF_TURN if t in vocab}


def engine_rollout(make_decoder, tok):
    """TRL's `rollout_func` over the engine.chat.decode.Decoder of the training model that `make_decoder()` returns.

    TRL hands it the prompts of a whole generation batch, each already repeated num_generations times, and expects one
    reply per entry: prompt ids, completion ids, and sampling log-probabilities (None: TRL computes its own without
    vLLM). All of them are sampled as one batch (engine.chat.decode_batch: each distinct prompt runs once, then one
    step per token for every reply, reading the weights once for all). The trainer's temperature, top-p, top-k,
    min-p, repetition penalty and max_completion_length apply. The decoder is made at the first call, once TRL has
    set the model up (it adds a "ref" adapter that we remove, and may cast the trainable weights), so that it is not
    rebuilt straight away.
    """
    import torch

    from engine.chat import decode_batch
    from engine.chat.decode import Sampling
    from engine.data.tokenizing import render

    decoder = None

    def rollout(prompts: list, trainer) -> dict:
        nonlocal decoder
        if decoder is None:
            decoder = make_decoder()
        sampling = Sampling(
            temperature=trainer.temperature,
            top_p=trainer.top_p,
            top_k=trainer.top_k or 0,
            min_p=trainer.min_p or 0.0,
            repetition_penalty=trainer.repetition_penalty,
        )  # no seed: draws from torch's generator, which the trainer seeded
        stop = stop_ids(tok, trainer)
        texts = [p if isinstance(p, str) else render(tok, p, add_generation_prompt=True) for p in prompts]
        prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        completion_ids = [[] for _ in prompt_ids]
        model, training = decoder.model, decoder.model.training
        model.eval()  # no dropout, and a checkpointing layer keeps nothing for a backward
        try:
            with torch.no_grad():
                # keep_stop: the end token stays in the reply, as TRL trains on it and counts a reply that ends with
                # it as finished, not clipped
                steps = decode_batch.batch(
                    decoder, prompt_ids, trainer.max_completion_length, sampling, stop, keep_stop=True
                )
                for step in steps:
                    for reply, token in zip(completion_ids, step, strict=True):
                        if token is not None:
                            reply.append(token)
        finally:
            model.train(training)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def train_grpo(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train `spec` (objective grpo) into `run_dir`, with the SFT loop's metrics, checkpoints and cancel."""
    import torch

    from engine.data.tokenizing import bos_first_template
    from engine.models.loading import load_for_training
    from engine.training.trl_run import TrlRun, prepare

    torch.manual_seed(spec.seed)
    placement = choose_placement(spec.device, spec.dtype)
    prepare(placement)
    from trl import GRPOConfig, GRPOTrainer

    def slow_pattern(sentence: str) -> None:  # a regex reward too slow on a reply, which then scores 0: said once
        log(f"note: {sentence}")
        runlog.note(sentence)

    rewards = build(spec.rewards, slow_pattern)
    runlog.set(state="loading", message="loading the model")
    model, tok = load_for_training(spec, placement, log)
    source = Path(spec.data).name
    rows = read_rows(spec, log, runlog.loading(log), should_stop)
    rows = [to_prompt(r, i, source, spec.system_prompt) for i, r in enumerate(rows, 1)]
    rows = fit_prompts(rows, tok, spec.max_seq_length, source, log, runlog.note)
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
    sampler, why = choose_sampler(model)
    log(f"grpo: sampler {sampler} ({why})")
    rollout = None
    if sampler == "engine":
        from engine.chat.decode import Decoder

        # a job that turned the fast path off gets transformers' own forward in the decoder too, not our kernels
        rollout = engine_rollout(lambda: Decoder(model, log=log, kernels=None if spec.fast_path else False), tok)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using 'rollout_func'")  # TRL 1.15 calls the hook experimental
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=for_trl(rewards, columns),
            args=args,
            train_dataset=prompt_dataset(rows),
            processing_class=tok,
            callbacks=[run.callback({**METRICS, **{f"reward_{n}": f"rewards/{n}/mean" for n, _, _ in rewards}})],
            optimizers=(run.opt, run.sched),
            rollout_func=rollout,
        )
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter(
            "ref"
        )  # TRL's frozen adapter copy; the reference is the base (see engine.training.preference)
    if sampler == "trl":
        sample_with_cache(model)
        # TRL's sampler tokenizes the prompts through apply_chat_template, which adds no BOS: its own template for the
        # run (TRL sets one only for tools) puts the BOS first, as the engine's sampler (render) does
        trainer.chat_template = trainer.chat_template or bos_first_template(tok)
    run.keep_order(trainer, generations=spec.num_generations)
    log(
        f"grpo: {len(rows)} prompts x {spec.num_generations} replies of up to {spec.max_new_tokens} tokens; rewards "
        + ", ".join(f"{name} x{weight:g}" for name, weight, _ in rewards)
    )
    run.train(trainer)
