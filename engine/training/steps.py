"""What every objective's run shares, below the objectives: step count and batch order, the optimizer and learning
rate schedule, and checkpoints (save, prune, find the latest, restore).

The SFT loop (engine.training.sft) and the TRL-based objectives (engine.training.trl_run) both use these, so a
checkpoint has one layout whatever wrote it. Imports engine.core only.
"""

import functools
import math
import random
import shutil
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import new_folder, write_json
from engine.data.batching import join

# optimizer, scheduler and rng are each a .safetensors + .json pair (engine.core.statefile): no checkpoint file is a
# pickle
CHECKPOINT_FILES = (
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.safetensors",
    "scheduler.json",
    "rng.safetensors",
    "rng.json",
    "state.json",
)


def batches_for_epoch(
    n: int, batch_size: int, seed: int, epoch: int, lengths=None, per_step: int = 1
) -> list[list[int]]:
    """Example indices of each micro-batch of one epoch: a fresh shuffle per epoch, the same on every resume.
    With `lengths` (each example's tokens; the padding-free path) the shuffled micro-batches are then evened out
    (`even_out`) so their token counts are close and few padded buckets hold them all. Where a step's micro-batches
    are joined into rows (engine.training.sft; `per_step` micro-batches a step, every rank's), it is the steps that
    are evened out: each step's examples together, then dealt back into its micro-batches in order. A step that
    crosses the epoch's start or end, or holds its short last micro-batch, is left as shuffled. Steps of more than
    EVEN_WIDEST examples are not (even_out's time and memory grow with the width), their micro-batches are."""
    order = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if lengths is None or per_step == 1 or per_step * batch_size > EVEN_WIDEST:
        return batches if lengths is None else even_out(batches, lengths)
    steps = {}  # the run's step -> this epoch's micro-batches in it (every epoch has len(batches) of them)
    for k in range(len(batches)):
        steps.setdefault((epoch * len(batches) + k) // per_step, []).append(k)
    whole = [ks for ks in steps.values() if len(ks) == per_step and all(len(batches[k]) == batch_size for k in ks)]
    evened = even_out([[i for k in ks for i in batches[k]] for ks in whole], lengths)
    for ks, examples in zip(whole, evened, strict=True):
        for j, k in enumerate(ks):
            batches[k] = examples[j * batch_size : (j + 1) * batch_size]
    return batches


# The widest unit `batches_for_epoch` evens out whole: an epoch of 100,000 Alpaca-like examples took 2.6 s and 468 MB
# peak RSS in units of 256 against 0.37 s and 58 MB in units of 8 (`python3 bench/even_width.py 8 32` and `8 1`, the
# 2-core CPU); it runs at the start and at every epoch's start.
EVEN_WIDEST = 256
# At most this many rounds of swaps in `even_out`, which stops earlier after QUIET_ROUNDS rounds in a row without one
# (an epoch of 100,000 Alpaca-like examples took 0.25 s at batch 8 and 0.5 s at batch 64 on the 2-core CPU).
EVEN_ROUNDS = 64
QUIET_ROUNDS = 4


def even_out(batches: list[list[int]], lengths, rounds: int = EVEN_ROUNDS) -> list[list[int]]:
    """The same micro-batches, in the same order and with the same number of examples each, after swapping examples
    between them so their token counts (the sum of `lengths`) are close: a padding-free micro-batch is padded to
    the smallest bucket that holds it (engine.data.batching.plan_buckets), and the spread of a plain shuffle's
    token counts is what pads (over a third of the tokens for short identity rows, a sixth for Alpaca-like ones).

    Each round sorts the micro-batches by tokens and pairs the heaviest with the lightest, the second heaviest with
    the second lightest, and so on (round r pairs the k-th heaviest with the (k+r)-th lightest, so a pair left with
    no useful swap meets others); in each pair the one swap of an example from each side that brings the two
    counts closest is made, if it brings them closer. A micro-batch changes at most one example a round, so the
    micro-batches stay the shuffle's random mixes (an example meets the same partners in the next epoch no more
    often than with a plain shuffle), and sorting by length never decides who goes together. Deterministic: the
    same batches on every resume and on every rank."""
    import numpy as np

    width = len(batches[0]) if batches else 0
    if batches and len(batches[-1]) < width:  # an epoch's short last micro-batch has a bucket of its own
        return even_out(batches[:-1], lengths, rounds) + batches[-1:]
    if len(batches) < 2:
        return batches
    index = np.full((len(batches), width), -1, dtype=np.int64)
    for row, b in enumerate(batches):
        index[row, : len(b)] = b
    tokens = np.asarray(lengths, dtype=np.int64)
    held = index >= 0
    quiet = 0
    for turn in range(rounds):
        size = np.where(held, tokens[index], 0)
        sums = size.sum(1)
        order = np.argsort(sums, kind="stable")
        half = len(order) // 2
        # the k-th heaviest meets the k-th lightest, then the (k+1)-th, ...: a pair with no good swap left gets others
        light, heavy = np.roll(order[:half], -turn), order[::-1][:half]
        gap = (sums[heavy] - sums[light])[:, None, None]
        # moving d tokens from heavy to light makes the gap |gap - 2d|; only 0 < d < gap brings it closer
        d = size[heavy][:, None, :] - size[light][:, :, None]
        both = held[light][:, :, None] & held[heavy][:, None, :]
        left = np.where(both & (d > 0) & (d < gap), np.abs(gap - 2 * d), gap)
        best = left.reshape(half, -1).argmin(1)
        better = left.reshape(half, -1)[np.arange(half), best] < gap[:, 0, 0]
        quiet = 0 if better.any() else quiet + 1
        if quiet == QUIET_ROUNDS:
            break
        x, y = np.divmod(best[better], width)
        a, b = light[better], heavy[better]
        index[a, x], index[b, y] = index[b, y], index[a, x].copy()
    return [[int(i) for i in row if i >= 0] for row in index]


def micro_batches_of_run(
    n: int, batch_size: int, seed: int, count: int, lengths=None, per_step: int = 1
) -> list[list[int]]:
    """The example indices of the first `count` micro-batches of a run, epoch after epoch (`batches_for_epoch`)."""
    run, epoch = [], 0
    while len(run) < count:
        run += batches_for_epoch(n, batch_size, seed, epoch, lengths, per_step)
        epoch += 1
    return run[:count]


def rows_of_run(run, grad_accum: int, ranks: int, lengths, cap: int) -> list[list[int]]:
    """The padding-free rows `run`'s micro-batches (the global sequence: rank r trains on every ranks-th) make when
    each rank joins its micro-batches of one optimizer step (engine.data.batching.join), every rank's in turn."""
    rows, per_step = [], grad_accum * ranks
    for start in range(0, len(run), per_step):
        step = run[start : start + per_step]
        for rank in range(ranks):
            rows += join(step[rank::ranks], lengths, cap)
    return rows


def total_steps(spec, n_examples: int) -> int:
    if spec.max_steps:
        return spec.max_steps
    micro = math.ceil(n_examples / spec.batch_size)
    return max(1, math.ceil(spec.epochs * micro / spec.grad_accum))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1 - progress)


@functools.cache
def adamw_8bit():
    """bitsandbytes' AdamW8bit without the `torch.cuda.synchronize()` its step makes after every parameter.

    bitsandbytes 0.50.2 launches its update kernels on the default CUDA stream and then waits for the GPU after each
    tensor: a LoRA of every projection of an 8B model has 448, and the step took 41 ms of a 292 ms training step on
    the H100 with the GPU idle most of it (bench/README.md, "What the llama8b step was before the packing"; the app's
    loop now packs them into one, engine.patching.modules.pack_adapters). Training runs on the default stream too,
    so those kernels are already ordered before and after the rest of the step; the waits order nothing. The same
    update runs in the same order (the GPU test compares the weights bit for bit); paged states (PagedAdamW8bit,
    whose prefetches need the waits) and work on another stream keep bitsandbytes' own step.
    Measured on the H100 (`python3 bench/optimizer_step.py`, those 448 tensors): 25.1 ms a step -> 17.9 ms; what
    is left is bitsandbytes' Python around each tensor's kernel."""
    import bitsandbytes as bnb
    import torch

    class AdamW8bit(bnb.optim.AdamW8bit):
        @torch.no_grad()
        def step(self, closure=None):
            if (
                self.is_paged
                or not torch.cuda.is_available()
                or torch.cuda.current_stream() != torch.cuda.default_stream()
            ):
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if len(self.state[p]) == 0:
                        self.init_state(group, p, gindex, pindex)
                    self.update_step(group, p, gindex, pindex)
            return loss

    return AdamW8bit


def make_optimizer(spec, params, device: str, log, fused: bool = True, paged: bool = False):
    """AdamW as the spec asks. `params` is a list of tensors or of optimizer groups (dicts with their own lr).
    torch's AdamW is its fused kernel on a GPU unless `fused` is False (its foreach path: torch's ShardedGradScaler
    hands the fused step an inf flag of shape [1], which it cannot subtract from its scalar step counts).

    Full fine-tuning on a GPU defaults to bitsandbytes' paged 8-bit AdamW: its states (1/4 of fp32 AdamW's) live in
    unified memory, so under pressure they page out to RAM instead of failing with out-of-memory. LoRA does too when
    `paged` (the memory plan counts its states in host RAM: engine.memory.offload.Plan.optimizer_in_host).
    """
    import torch

    name = spec.optimizer
    if name == "auto":
        name = "adamw" if device != "cuda" else "paged_adamw_8bit" if spec.method == "full" or paged else "adamw_8bit"
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb  # on a CPU the paged one runs unpaged (bitsandbytes warns)

        kind = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else adamw_8bit()
        opt = kind(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
        # bitsandbytes keeps per-parameter overrides in one process-wide manager, by (group, index): an earlier
        # transformers Trainer in this process (the notebook API) registered its embeddings there, and this
        # optimizer would give 32-bit states to whichever of its parameters sits at the same index
        opt.mng = object.__new__(bnb.optim.GlobalOptimManager)
        opt.mng.initialize()
    else:
        fused = fused and device == "cuda"
        opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay, fused=fused)
    log(f"optimizer: {name}, peak lr {spec.learning_rate}, {spec.lr_schedule} schedule, warmup {spec.warmup_steps}")
    return opt


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    opt,
    sched,
    epoch_pos,
    keep: int,
    log,
    model_state=None,
    opt_state=None,
    scaler=None,
) -> Path:
    """Write checkpoints/step-NNNNNN atomically, then prune the oldest beyond `keep`. A full disk leaves the earlier
    checkpoints as they were and raises engine.core.disk's sentence saying which one is kept. `model_state` and
    `opt_state` stand in for the model's and optimizer's own (a sharded model's, gathered whole:
    engine.training.distributed). `scaler`: fp16's loss scaler, whose scale goes into state.json (a resume that
    started it over would skip its first updates as overflows)."""
    from engine.core.disk import disk_full_error
    from engine.core.statefile import save_state

    dest = checkpoint_dir(run_dir, step)
    if dest.is_dir():  # saved at this step already (save_every, then a cancel before the next step)
        return dest
    try:
        with new_folder(dest) as tmp:
            save_trainable(model, tmp, model_state)
            save_state(opt.state_dict() if opt_state is None else opt_state, tmp, "optimizer")
            save_state(sched.state_dict(), tmp, "scheduler")
            save_state(rng_state(), tmp, "rng")
            # where the data stands: the epoch, its micro-batches done, and how its plan was evened out (sft's joined
            # steps: micro-batches per evened-out unit), so a resume makes the same micro-batches
            evened_by = epoch_pos[2] if len(epoch_pos) > 2 else 1  # the TRL-based objectives give two
            position = dict(epoch=epoch_pos[0], micro_in_epoch=epoch_pos[1], evened_by=evened_by)
            scale = {"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
            write_json(tmp / "state.json", dict(step=step, **position, **scale))
    except Exception as e:
        err = disk_full_error(e, run_dir, f"saving the checkpoint of step {step}")
        if err is None:
            raise
        raise err from e
    for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log(f"checkpoint: saved step {step}")
    return dest


def rng_state() -> dict:
    """The random generators' states a checkpoint keeps: torch's (CPU and each GPU's), Python's and NumPy's global
    one (transformers' set_seed seeds it, and a run's own code, a GRPO `python` reward, may draw from it)."""
    import numpy as np
    import torch

    numpy = np.random.get_state(legacy=False)
    return dict(
        torch=torch.get_rng_state(),
        python=random.getstate(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        numpy=dict(numpy, state=dict(numpy["state"], key=numpy["state"]["key"].tolist())),
    )


def restore_rng(rng: dict) -> None:
    """Put back the generators' states of `rng_state()`; NumPy's only where kept (checkpoints before it was)."""
    import numpy as np
    import torch

    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if rng.get("numpy") is not None:
        numpy = rng["numpy"]
        key = np.asarray(numpy["state"]["key"], dtype=np.uint32)
        np.random.set_state(dict(numpy, state=dict(numpy["state"], key=key)))


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint of `step` (save_checkpoint writes it)."""
    return run_dir / "checkpoints" / f"step-{step:06d}"


def publish_final(ckpt: Path, final: Path, tokenizer: Path) -> None:
    """Make a run's final folder (adapter/, or model/ for full fine-tuning) from its last checkpoint `ckpt` and the
    tokenizer folder the run saved when it started: the checkpoint's weight files (all but CHECKPOINT_FILES) and the
    tokenizer's files, hard-linked (copied where the filesystem refuses links). They are the bytes save_trainable and
    the tokenizer's save_pretrained would write again, so the end of a run serializes (and, sharded, gathers) its
    weights once, for the checkpoint. Nothing writes into a finished folder, so the two names never diverge: one
    there already was made from this last checkpoint by an attempt killed before it could say "done", and is kept."""
    import os

    if final.is_dir():
        return

    tokenizer_files = [f for f in sorted(tokenizer.iterdir()) if f.is_file()]
    taken = set(CHECKPOINT_FILES) | {f.name for f in tokenizer_files}  # the tokenizer's, as when it was saved last
    sources = [f for f in sorted(ckpt.iterdir()) if f.is_file() and f.name not in taken] + tokenizer_files
    with new_folder(final) as tmp:
        for source in sources:
            try:
                os.link(source, tmp / source.name)
            except OSError:  # another filesystem, or one without hard links
                shutil.copyfile(source, tmp / source.name)


def save_tokenizer(tok, folder: Path) -> None:
    """The run's tokenizer folder, which publish_final links into the final one: written once, under a temporary name
    (a resume writing it again in place would write into the finished folder's linked files)."""
    if not folder.is_dir():
        with new_folder(folder) as tmp:
            tok.save_pretrained(tmp)


def save_trainable(model, folder: Path, state=None) -> None:
    """The LoRA adapter (PEFT format) or, for full fine-tuning, the whole model, as safetensors.

    An adapter never holds embeddings (only LoRA layers are trained), which PEFT would otherwise find out by looking its
    base up on the hub at every save when the base is named by hub id (engine.models.loading.name_after_source)."""
    extra = {"save_embedding_layers": False} if hasattr(model, "peft_config") else {}
    if state is not None:  # a sharded model's weights, gathered whole
        extra["state_dict"] = state
    model.save_pretrained(folder, safe_serialization=True, **extra)


def checkpoint_weights(ckpt: Path) -> dict:
    """The weights a checkpoint holds, by name (every .safetensors file but the optimizer's, schedule's and rng's)."""
    from safetensors.torch import load_file

    weights = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        if shard.stem not in ("optimizer", "scheduler", "rng"):
            weights.update(load_file(shard))
    return weights


def past_the_end(ckpt: Path, total: int) -> UserError | None:
    """The sentence refusing to resume from `ckpt` a run whose job.yaml now asks for `total` steps, fewer than the
    checkpoint's (max_steps or epochs lowered since); None where the run has steps left or is at its end (an attempt
    killed between its last checkpoint and its final folder)."""
    step = int(ckpt.name.removeprefix("step-"))
    if step <= total:
        return None
    return UserError(
        f"This run already trained {step} steps (its checkpoint {ckpt.name}), more than the {total} its job.yaml now "
        f"asks for; set max_steps to {step} or more in job.yaml to resume it, or start a new run for fewer steps. "
        "Its checkpoints are kept as they were."
    )


def load_checkpoint(ckpt: Path, model, opt, sched, log, restore=None, scaler=None, total: int | None = None):
    """Restore the weights, optimizer, schedule, random generators and fp16 loss `scaler` (where given and saved) of
    `ckpt`; returns its state.json. `restore(model, opt, ckpt)` loads the weights and optimizer state instead (a
    sharded model: engine.training.distributed.restore_sharded).

    The run goes on as its job.yaml says now, which may have been edited since: the optimizer's settings (learning
    rate, weight decay) are `opt`'s own, made from it, and the schedule (`sched`'s, for `total` steps) continues from
    the checkpoint's step at the new peak learning rate. A checkpoint past `total` is refused before anything is read.

    Nothing here is unpickled: weights and states are safetensors and JSON (engine.core.statefile), and a checkpoint of
    the older pickle format is read with torch's restricted loader or refused."""
    import json

    from peft import PeftModel, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from engine.core.statefile import load_state

    def read(load, *args):
        """`load(*args)`; a file that cannot be read (the machine stopped before it reached the disk) names the
        checkpoint and what to do, rather than failing each resume with the reader's own error."""
        try:
            return load(*args)
        except (SafetensorError, ValueError, OSError) as e:
            raise UserError(
                f"The checkpoint {ckpt.name} cannot be read ({str(e).splitlines()[0][:120]}); it is damaged, so "
                "delete that folder to resume from the one before it."
            ) from e

    if total is not None and (refusal := past_the_end(ckpt, total)) is not None:
        raise refusal
    # the settings made from the job.yaml as it is now; loading the optimizer's and the schedule's state puts back the
    # checkpoint's, so an edited learning rate was silently ignored
    settings = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    if restore is not None:
        restore(model, opt, ckpt)
    elif isinstance(model, PeftModel):
        set_peft_model_state_dict(model, read(load_file, ckpt / "adapter_model.safetensors"))
    else:
        model.load_state_dict(read(checkpoint_weights, ckpt), strict=False)
    if restore is None:
        saved = read(load_state, ckpt, "optimizer")
        if "outer" in saved and not hasattr(opt, "inner"):  # saved where the plan updated in the backward
            from engine.memory.grad_release import one_optimizer

            saved = one_optimizer(saved)
        opt.load_state_dict(saved)
    sched.load_state_dict(read(load_state, ckpt, "scheduler"))
    _keep_settings(opt, sched, settings, log)
    restore_rng(read(load_state, ckpt, "rng"))
    state = read(lambda: json.loads((ckpt / "state.json").read_text()))
    if scaler is not None and scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    log(f"resume: from {ckpt.name}")
    return state


def _keep_settings(opt, sched, settings: list[dict], log) -> None:
    """Give `opt`'s groups back the `settings` they were made with (the job's) in place of the checkpoint's, and set the
    schedule's peak learning rates to theirs, the current rate to the schedule's at the checkpoint's step."""
    saved = [group.get("initial_lr", group["lr"]) for group in opt.param_groups]
    for group, mine in zip(opt.param_groups, settings, strict=True):
        group.update(mine)
    sched.base_lrs = [group.get("initial_lr", group["lr"]) for group in opt.param_groups]
    for group, peak, factor in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
        group["lr"] = peak * factor(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in opt.param_groups]  # get_last_lr(), which the step's record reads
    if sched.base_lrs != saved:
        log(f"resume: learning rate {sched.base_lrs[0]:g} from job.yaml (the checkpoint's was {saved[0]:g})")
