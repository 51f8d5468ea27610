"""The SFT training loop: batches, metrics, checkpoints, cancel and resume; continued pretraining runs it too.

A plain loop rather than a Trainer subclass, so every step's metrics, the cancel signal and the checkpoint layout are
ours. engine.training.dispatch picks it for `sft` and `pretrain` (whose examples come from engine.training.pretrain);
the optimizer, schedule and checkpoints are engine.training.steps', shared with the TRL-based objectives.
"""

import functools
import math
import os
import random
import time
from pathlib import Path

from engine.core.errors import Cancelled, UserError
from engine.core.hardware import choose_placement, memory_in_use_gb
from engine.data.batching import (
    EAGER_STEP_COST,
    GRAPH_SHAPE_COST,
    MAX_BUCKETS,
    SMALL_STEP,
    Collator,
    join,
    label_tokens,
    planned,
    step_tokens,
)
from engine.training import distributed, precision
from engine.training.steps import (
    batches_for_epoch,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    micro_batches_of_run,
    publish_final,
    rows_of_run,
    save_checkpoint,
    save_tokenizer,
    total_steps,
)
from engine.training.validation import load_validation, make_validator

PLANNED = 20_000  # micro-batches a run's padding-free buckets are planned for


def train_sft(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train an `sft` or `pretrain` spec into `run_dir`; an out-of-memory step saves the last completed one."""
    from engine.memory.verdict import out_of_memory, out_of_memory_message

    progress = {}  # the last completed step, its data position and how to save it (set by the loop)
    try:
        return _train_sft(spec, run_dir, runlog, resume, should_stop, log, progress)
    except Exception as exc:  # only an allocation failure is handled here; anything else goes on up
        if "records" in progress:  # the last completed step's record first, whatever ended the loop
            progress["records"].write(quiet=True)
        if not out_of_memory(exc) or "save" not in progress:
            raise
        log(f"out of memory during step {progress['step'] + 1}: {str(exc).splitlines()[0][:200]}")
    # outside the handler: the failed step's tensors went with its traceback, so the save has room
    on_gpu = progress["on_gpu"]
    if on_gpu:
        import torch

        torch.cuda.empty_cache()
    # weights part-updated (in the optimizer step, or in the backward with released gradients) are no step's: the
    # latest checkpoint stays the one to resume from; in a new run's first step nothing was trained to save
    first = progress["step"] == 0
    saved = None if first or progress["updating"] or progress["released"] else progress["save"]()
    raise UserError(out_of_memory_message(progress["step"] + 1, saved, on_gpu))


def _train_sft(spec, run_dir: Path, runlog, resume: bool, should_stop, log, progress: dict) -> None:
    """The loop itself (SFT and continued pretraining); `progress` follows its last completed step."""
    import torch

    from engine.data.tokenizing import load_examples
    from engine.models.loading import load_for_training
    from engine.training import pretrain

    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    distributed.pin_device(spec)  # several ranks on GPUs: each on its own before anything touches CUDA
    placement = choose_placement(spec.device, spec.dtype)
    world = distributed.join(spec, placement, log)  # None: one process
    if world is not None:  # the memory plan is per GPU, with full fine-tuning's shards counted
        spec = spec.replace(gpus=world.size)
    runlog.set(state="loading", message="loading the model")
    loading = runlog.loading(log)  # a long pass over the data says where it is, in the status and the log
    data = {}  # the examples, loaded once the tokenizer has, before the weights (their memory plan is made for them)

    def load_data(tok, varlen):
        if spec.objective == "pretrain":
            data["train"] = pretrain.load_text_examples(spec, tok, log, loading, should_stop)
        else:
            data["train"] = load_examples(spec, tok, log, loading, should_stop, note=runlog.note)
        data["validation"] = load_validation(spec, tok, log, loading, should_stop, runlog.note)
        runlog.set(state="loading", message="loading the model")
        # several ranks (each one's micro-batches, FSDP2's gathers) plan for batch_size x max_seq_length as before
        train, validation = data["train"], data["validation"]
        data["tokens"] = None if world is not None else plan_tokens(spec, train, validation, varlen, data)
        return data["tokens"]

    compute = distributed.compute_placement(placement, world)  # a sharded model loads elsewhere, plans for its GPU
    model, tok = load_for_training(spec, distributed.load_placement(placement, world), log, compute, load_data)
    loaded = time.perf_counter()
    if world is not None and world.sharded:
        model = distributed.shard(model, world, placement, log)
        if spec.optimizer == "auto":  # bitsandbytes' 8-bit states cannot be sharded
            spec = spec.replace(optimizer="adamw")
    examples = data["train"]
    if spec.objective == "pretrain":
        if spec.train_embeddings and spec.method != "full":
            model = pretrain.add_embedding_training(model, log)
        groups = pretrain.param_groups(model, spec)
    else:
        groups = [p for p in model.parameters() if p.requires_grad]
    if placement.dtype == "fp16":  # before the optimizer: it holds (and the loss scaler unscales) fp32 weights
        precision.master_weights(model, log)
    ranks = 1 if world is None else world.size
    total = total_steps(spec.replace(grad_accum=spec.grad_accum * ranks), len(examples))
    params = [p for p in model.parameters() if p.requires_grad]
    memory = getattr(model, "memory_plan", None)
    scaler = distributed.grad_scaler(placement, world)
    if memory is not None and memory.grads_released and world is not None:
        raise UserError("This model's plan updates weights in the backward, which one GPU does; set gpus to 1.")
    if memory is not None and memory.grads_released:
        from engine.memory.grad_release import StepInBackward

        opt = StepInBackward(
            groups,
            lambda one: make_optimizer(spec, one, placement.device, lambda m: None),
            spec.learning_rate,
            spec.max_grad_norm,
        )
        log(
            f"optimizer: {type(next(iter(opt.inner.values()))).__name__} per weight, updated in the backward as each "
            f"gradient completes (no gradient buffer; max_grad_norm caps each weight's gradient), peak lr "
            f"{spec.learning_rate}, {spec.lr_schedule} schedule, warmup {spec.warmup_steps}"
        )
    else:  # a sharded model's loss scaler cannot drive the fused step (engine.training.steps.make_optimizer)
        fused = scaler is None or world is None or not world.sharded
        paged = memory is not None and memory.optimizer_in_host
        opt = make_optimizer(spec, groups, placement.device, log, fused, paged)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, spec.warmup_steps, spec.lr_schedule))
    # fp16 computes under autocast with the loss scaler on the CPU too (engine.training.distributed.grad_scaler): the
    # T4's path, which the tests can then run; other dtypes compute in the weights' own on the CPU
    autocast = torch.autocast(
        placement.device, dtype=placement.torch_dtype, enabled=placement.device == "cuda" or placement.dtype == "fp16"
    )
    step, epoch, micro = 0, 0, 0
    evened_by = None  # the resumed epoch's micro-batches per evened-out unit (its plan is made again the same way)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log("resume: no checkpoint yet, starting from step 0")
        runlog.metric(event="resume", step=0)  # the earlier attempt's steps are gone with it, from the curve too
    if ckpt is not None:
        restore = distributed.restore_sharded if world is not None and world.sharded else None
        state = load_checkpoint(ckpt, model, opt, sched, log, restore, scaler, total)
        step, epoch, micro = state["step"], state["epoch"], state["micro_in_epoch"]
        evened_by = state.get("evened_by", 1)  # checkpoints before joined steps evened out micro-batches
        runlog.metric(event="resume", step=step)
    model.train()
    if world is not None and not world.sharded:
        distributed.same_start(params, world)
    rank = 0 if world is None else world.rank
    if rank == 0:
        save_tokenizer(tok, run_dir / "tokenizer")
    runlog.set(state="running", message="training", step=step, total_steps=total)
    unit = "GPU" if placement.device == "cuda" else "process"
    per_gpu = (
        f" per {unit} x {ranks} = {spec.batch_size * spec.grad_accum * ranks} a step, lr unchanged" if world else ""
    )
    log(
        f"training: {len(examples)} examples, {total} steps of {spec.batch_size}x{spec.grad_accum}{per_gpu}, "
        f"max {spec.max_seq_length} tokens"
    )
    base = getattr(model, "get_base_model", lambda: model)()
    varlen = getattr(base, "varlen_attention", False)
    # padding-free micro-batches are evened out by tokens, so few buckets hold them with little padding
    lengths = [len(e.input_ids) for e in examples] if varlen else None
    # a step's micro-batches join into padding-free rows of up to the tokens the memory plan holds for one micro-batch
    # (batch_size examples of max_seq_length, or the data's largest micro-step that the plan was made for): the same
    # gradient in fewer, larger micro-steps, and the steps are what is evened out. Not under FSDP2 (a sharded model's
    # every forward gathers its weights from all ranks, so each rank must run as many passes as the others).
    # TUNESMITH_JOIN=0 keeps them apart, to measure a run without it
    sharded = world is not None and world.sharded
    joins = varlen and spec.grad_accum > 1 and not sharded and joining()
    cap = (data["tokens"] or spec.batch_size * spec.max_seq_length) if joins else 0
    per_step = spec.grad_accum * ranks if joins else 1
    # a resumed epoch keeps the micro-batches it started with, though joining may be decided otherwise now (another
    # number of GPUs, FSDP2, TUNESMITH_JOIN): the later epochs are evened out for this run's steps
    evened_by = per_step if evened_by is None else evened_by
    plan = batches_for_epoch(len(examples), spec.batch_size, spec.seed, epoch, lengths, evened_by)
    # the buckets are planned for the run's micro-batches (the first PLANNED of a long run: later epochs are shuffles
    # of the same examples; a micro-batch past the largest planned size gets a fixed size of its own)
    micro_batches = min(total * spec.grad_accum * ranks, PLANNED)  # every rank plans the same, global ones
    run = None
    if varlen:  # made once already where the plan's guess was the same (largest_step)
        run = data.get("runs", {}).get((True, micro_batches, per_step)) or micro_batches_of_run(
            len(examples), spec.batch_size, spec.seed, micro_batches, lengths, per_step
        )
    if joins:
        rows = rows_of_run(run, spec.grad_accum, ranks, lengths, cap)
        held = "the largest row planned for this data" if data["tokens"] else f"{spec.batch_size} x max_seq_length"
        log(
            f"batches: each step's {spec.grad_accum} micro-batches of {spec.batch_size} examples join into "
            f"padding-free rows of up to {cap} tokens ({held}, what the memory plan holds for one micro-batch): the "
            f"run's first {len(run)} micro-batches make {len(rows)} rows"
        )
        run = rows
    shape_cost = GRAPH_SHAPE_COST if getattr(base, "shape_graphs", False) else 0
    # a size of one micro-batch is never captured (an eager step), where the plan sees all of the run's micro-batches
    whole = micro_batches == total * spec.grad_accum * ranks
    once_cost = EAGER_STEP_COST if shape_cost and whole else None
    most = memory.shapes if memory is not None else MAX_BUCKETS  # the shapes the memory plan counts graphs for
    most = min(most, getattr(base, "shapes_held", most))  # engine.patching.graphs.install's (MoE layers: one)
    if varlen:
        shuffled = micro_batches_of_run(len(examples), spec.batch_size, spec.seed, micro_batches)
        log(
            f"batches: each epoch's shuffled micro-batches of {spec.batch_size} examples evened out by tokens (swaps "
            f"between them); as shuffled they would pad "
            f"{100 * planned(examples, shuffled, shape_cost, most, once_cost)[1]:.1f}%"
        )
    released = memory is not None and memory.grads_released
    make_batch = Collator(
        examples, spec.batch_size, tok.pad_token_id, placement.device, varlen, log, run, shape_cost, most, once_cost,
        spec.grad_accum if joins else 1, cap, world is None and not released,
    )  # fmt: skip
    labelled = functools.cache(lambda i: label_tokens(examples[i]))  # example -> the tokens its loss is taken over
    if hasattr(base, "eager_tokens"):  # engine.patching.graphs.install: these sizes are not captured
        base.eager_tokens.update(make_batch.once)
    pad_id = tok.pad_token_id
    validator = make_validator(spec, data["validation"], total, run_dir, pad_id, placement.device, varlen, log)
    if data["tokens"] is not None:  # micro-steps past the run's planned ones, or not as the plan expected them
        sets = (examples, data["validation"] or ())
        kept_to_plan(make_batch, validator, spec, sets, data["tokens"], varlen, released, log)
    started, steps_timed, step_times = time.perf_counter(), 0, []
    records = progress["records"] = StepRecords(runlog)
    log(f"startup: the first step begins {started - loaded:.2f} s after loading (optimizer, batch plan)")
    last_save = time.monotonic()

    def save(done, position):
        if world is None:
            return save_checkpoint(
                run_dir, done, model, opt, sched, position, spec.keep_checkpoints, log, scaler=scaler
            )
        return distributed.save_checkpoint(
            world, run_dir, done, model, opt, sched, position, spec.keep_checkpoints, log, scaler
        )

    def save_completed():  # after an out-of-memory error: the last completed step, its partial gradients dropped
        opt.zero_grad(set_to_none=True)
        done = progress["step"]
        position, keep = progress["position"], spec.keep_checkpoints
        save_checkpoint(run_dir, done, model, opt, sched, position, keep, log, scaler=scaler)
        return done

    progress.update(on_gpu=placement.device == "cuda", released=released)
    if world is None:  # with several ranks a save is collective: one rank's out-of-memory error cannot make one
        progress["save"] = save_completed
    stopping = False  # several ranks: a cancel on any of them, agreed at the end of each step
    # whether the first step compiled any Triton kernel the warm-up (engine.patching.warmup) did not
    compiles = None
    if placement.device == "cuda" and spec.fast_path:
        from engine.patching.warmup import CompileWatch

        compiles = CompileWatch()
    while step < total:
        progress.update(step=step, position=(epoch, micro, evened_by), updating=False)
        if should_stop() if world is None else stopping:
            records.write()
            if step:  # asked before the first step (while loading): no step trained, nothing to save
                save(step, (epoch, micro, evened_by))
            raise Cancelled()
        t0, loss_sum, n_tokens = time.perf_counter(), 0.0, 0
        mine, step_labels = [], 0  # this rank's micro-batches of the step; the step's label tokens on every rank
        for _ in range(spec.grad_accum):
            for r in range(ranks):  # the global sequence of micro-batches; this rank trains on every ranks-th one
                if micro >= len(plan):
                    epoch, micro, evened_by = epoch + 1, 0, per_step
                    plan = batches_for_epoch(len(examples), spec.batch_size, spec.seed, epoch, lengths, per_step)
                if r == rank:
                    mine.append(plan[micro])
                n_tokens += sum(len(examples[i].input_ids) for i in plan[micro])
                step_labels += sum(labelled(i) for i in plan[micro])
                micro += 1
        # a row whose size would run eagerly may run as rows of a captured size instead (Collator.rows; one rank)
        rows = [part for row in (join(mine, lengths, cap) if joins else mine) for part in make_batch.rows(row)]
        for k, row in enumerate(rows):
            # the step's loss is the mean over all its label tokens, as transformers' Trainer takes it: each row's
            # mean weighed by its share of them (times the ranks, whose gradients are averaged). A row without any
            # adds nothing (its mean would be 0/0); with several ranks it still runs, for the gradients they average
            share = ranks * sum(labelled(i) for i in row) / max(step_labels, 1)
            if not share and world is None:
                continue
            batch = make_batch([examples[i] for i in row])
            if world is not None:
                distributed.accumulating(model, world, k == len(rows) - 1)
            with autocast:
                loss = model(**batch).loss * share
            (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach()  # read once per step: a read per micro-batch would wait for the GPU each time
        records.write()  # the last step's, while the GPU runs this one's passes
        if world is not None and not world.sharded:
            distributed.average_gradients(params, world)
        loss_sum = float(loss_sum)
        timer = 0 < spec.save_every_minutes <= (time.monotonic() - last_save) / 60  # several ranks: any one's
        if world is not None:
            loss_sum, stopping, memories, timer = distributed.agree(
                world, loss_sum, should_stop(), distributed.peak_memory_gb(placement.device), placement.device, timer
            )
        if scaler:
            scaler.unscale_(opt)
        if hasattr(opt, "take_grad_norm"):  # engine.memory.grad_release: the weights were updated in the backward
            grad_norm = opt.take_grad_norm()
        else:  # read after the step's end: reading it here would leave the GPU idle while the update is launched
            grad_norm = torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm or float("inf"))
        if not math.isfinite(loss_sum) and not scaler:
            raise UserError(
                f"The loss became {loss_sum} at step {step + 1}; lower the learning rate "
                f"(now {spec.learning_rate}) and start again."
            )
        lr = sched.get_last_lr()[0]
        progress["updating"] = True
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        # a completed step: an allocation failure in its validation or its save is no partial update, and saves it
        progress.update(step=step, position=(epoch, micro, evened_by), updating=False)
        # no wait for the update's kernels: the GPU runs them while this makes the next batch and launches its
        # passes (the next step's loss read waits for them), so a step's time is from its start to its update's launch
        dt = time.perf_counter() - t0
        step_times.append(dt)
        if compiles is not None:
            log(compiles.stop())
            compiles = None
        steps_timed += 1
        eta = (time.perf_counter() - started) / steps_timed * (total - step)
        checked = validator.check(step, model, tok, autocast) if validator and validator.due(step) else {}
        records.hold(
            grad_norm,
            step=step,
            total_steps=total,
            loss=round(loss_sum, 6),
            lr=lr,
            tokens=n_tokens,  # the step's real (unpadded) tokens: which examples it trained on, in short
            tokens_per_s=round(n_tokens / dt, 1),
            memory_gb=round(memory_in_use_gb(placement.device), 3),
            eta_s=round(eta, 1),
            epoch=round(epoch + micro / len(plan), 4),
            **({} if world is None else dict(peak_memory_gb_per_gpu=memories)),
            **checked,  # eval_loss and best on validation steps
        )
        every = spec.save_every and step % spec.save_every == 0
        if step < total and (every or timer):
            records.write()
            save(step, (epoch, micro, evened_by))
            last_save = time.monotonic()
    records.write()
    if len(step_times) > 1:  # kernel compilation, autotuning and CUDA graph captures happen in the first steps
        later = sorted(step_times[1:])[len(step_times[1:]) // 2]
        extra = step_times[0] - later
        why = f"; the first step's extra {extra:.2f} s is compilation, autotuning and CUDA graph capture"
        log(f"timing: first step {step_times[0]:.2f} s, later steps {later:.3f} s (median){why if extra > 0 else ''}")
    saving = time.perf_counter()
    save(step, (epoch, micro, evened_by))
    if rank != 0:
        return
    final = run_dir / ("model" if spec.method == "full" else "adapter")
    # the checkpoint just saved holds the final weights: linked into place, not serialized (or gathered) again
    publish_final(checkpoint_dir(run_dir, step), final, run_dir / "tokenizer")
    log(f"saved {final.name}/ after {step} steps (the last checkpoint and it in {time.perf_counter() - saving:.2f} s)")


class StepRecords:
    """A step's metrics record, written when the next step's passes are launched (or before a save, and when the
    loop ends): writing it (metrics.jsonl, the log line, status.json's step) and reading the step's gradient norm
    then overlap the GPU's work. Written at once, they left the GPU idle after each update: the norm's read waited
    for the update's kernels, then the writes and the next batch ran before the next step's first kernel."""

    def __init__(self, runlog):
        self.runlog, self.record, self.norm = runlog, None, None

    def hold(self, grad_norm, **record) -> None:
        """Keep `record` (a step's fields but its gradient norm) and `grad_norm` (clip_grad_norm_'s result, or a
        number): a CUDA tensor's value is copied to pinned memory, read when the record is written."""
        import torch

        self.write()
        if isinstance(grad_norm, torch.Tensor) and grad_norm.is_cuda and not hasattr(grad_norm, "full_tensor"):
            host = torch.empty((), dtype=grad_norm.dtype, pin_memory=True)
            host.copy_(grad_norm, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self.norm = (host, done)
        else:
            self.norm = grad_norm if isinstance(grad_norm, float) else distributed.grad_norm(grad_norm)
        self.record = record

    def write(self, quiet: bool = False) -> None:
        """Write the record held, if any. `quiet`: as the loop ends on an error, which a failed write must not hide."""
        record, norm, self.record = self.record, self.norm, None
        if record is None:
            return
        try:
            if isinstance(norm, tuple):
                host, done = norm
                done.synchronize()
                norm = float(host)
            step = record["step"]
            self.runlog.metric(**dict(record, grad_norm=round(norm, 6)))
            self.runlog.progress(step)
        except Exception:
            if not quiet:
                raise


def joining() -> bool:
    """Whether a padding-free run with several micro-batches a step joins them into rows (TUNESMITH_JOIN=0: not, to
    measure a run without it)."""
    return os.environ.get("TUNESMITH_JOIN", "1") != "0"


def plan_tokens(spec, examples, validation, varlen: bool, keep: dict | None = None) -> int | None:
    """The most tokens, padding included, a micro-step of a one-process run of `spec` computes over `examples` and
    its validation passes over `validation` (`varlen`: padding-free micro-batches expected, whose rows join a step's
    micro-batches where the run joins them), for the memory plan made before the weights load
    (engine.models.loading.load_for_training): the largest of the run's own micro-batches or rows (`largest_step`),
    which the loop makes again the same way; past them (a long run's later epochs) a row over the plan is cut to fit
    (Collator.rows, `kept_to_plan`). Full fine-tuning, whose plan may update the weights in the backward where no row
    can be cut, and validation take the most any micro-batch of theirs can hold (engine.data.batching.step_tokens):
    for full fine-tuning padded or padding-free, whichever the model turns out to take.
    None where that is not fewer than batch_size x max_seq_length, the plan without the data, or where
    TUNESMITH_PLAN_FOR_DATA=0 asks for that plan (to measure a run without this one). `keep`: where the micro-batches
    made for it are kept (largest_step), for the training loop to reuse."""
    if os.environ.get("TUNESMITH_PLAN_FOR_DATA", "1") == "0":
        return None
    joined = spec.grad_accum if varlen and spec.grad_accum > 1 and joining() else 1
    train = step_tokens(examples, spec.batch_size, varlen, joined)
    if spec.method != "full" and examples:
        train = min(train, largest_step(spec, examples, varlen, joined, keep))
    # full fine-tuning may update the weights in the backward, where no micro-batch can be cut (kept_to_plan): its
    # plan holds right-padded micro-batches as well, should expects_varlen's guess be wrong
    padded = spec.method == "full" and varlen
    if padded:
        train = max(train, step_tokens(examples, spec.batch_size, False))
    tokens = max(train, step_tokens(validation or (), spec.batch_size, varlen and not padded))
    return tokens if tokens < spec.batch_size * spec.max_seq_length else None


def largest_step(spec, examples, varlen: bool, joined: int, keep: dict | None = None) -> int:
    """The most tokens, padding included and rounded up to SMALL_STEP as the planned buckets are, of the micro-batches
    (padding-free rows where `joined` > 1) that the run's first PLANNED micro-batches make, as _train_sft makes them;
    at least the longest example's, so a row cut to fit holds any example. The micro-batches go into `keep["runs"]`
    under (varlen, count, joined), so _train_sft does not even them out again."""
    lengths = [len(e.input_ids) for e in examples]
    count = min(total_steps(spec, len(examples)) * spec.grad_accum, PLANNED)
    run = micro_batches_of_run(len(examples), spec.batch_size, spec.seed, count, lengths if varlen else None, joined)
    if keep is not None:
        keep.setdefault("runs", {})[(varlen, count, joined)] = run
    if joined > 1:
        run = rows_of_run(run, spec.grad_accum, 1, lengths, spec.batch_size * spec.max_seq_length)
    sizes = [sum(lengths[i] for i in r) if varlen else len(r) * max(lengths[i] for i in r) for r in run if r]
    return -(-max(sizes + lengths) // SMALL_STEP) * SMALL_STEP


def kept_to_plan(make_batch, validator, spec, sets, tokens: int, varlen: bool, released: bool, log) -> None:
    """Keeps every micro-step within the memory plan made for `tokens` (plan_tokens), with the same gradient and loss
    (Collator.rows: each part weighed by its label tokens). Padding-free: a row over it (one past the run's planned
    micro-batches) runs as rows within it. Right-padded (`sets`: the training and the validation examples), where a
    micro-batch can be over it (the plan expected padding-free ones, engine.models.loading.expects_varlen guessed
    wrong, or a row past the planned ones): it runs as parts within it, in training and validation. Where the weights
    are updated in the backward (`released`, engine.memory.grad_release: each part would be an update) nothing is
    cut, and a run whose micro-batches could be over the plan is refused."""
    if varlen:
        if not released:  # and no bucket above the plan: planned (the same rows), or a fallback one within its cap
            make_batch.split_to = make_batch.split_to or tokens
            make_batch.cap = min(make_batch.cap, tokens)
            make_batch.sizes = [size for size in make_batch.sizes if size <= tokens]
        return
    need = max(step_tokens(examples, spec.batch_size, varlen=False) for examples in sets)
    if need <= tokens:
        return
    if released:
        raise UserError(
            f"This model takes padded batches of up to {need} tokens, more than the {tokens} its memory plan was made "
            "for; set the environment variable TUNESMITH_PLAN_FOR_DATA=0 and start the run again."
        )
    for collate in (make_batch, validator.collate if validator else None):
        if collate is not None:
            collate.padded_to = tokens
    log(f"batches: a right-padded micro-batch over the {tokens} tokens the memory plan was made for runs as parts")
