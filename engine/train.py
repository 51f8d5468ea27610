"""The SFT training loop: batches, optimizer, schedule, metrics, checkpoints, cancel and resume.

A plain loop rather than a Trainer subclass, so every step's metrics, the cancel signal and the checkpoint layout are
ours. It runs inside the run subprocess (engine.run). Continued pretraining runs the same loop on raw text
(engine.pretrain); DPO, ORPO (engine.preference) and GRPO (engine.grpo) run TRL's trainers with the same model,
metrics, checkpoints and cancel.
"""

import functools
import math
import random
import shutil
import time
from pathlib import Path

from engine.batching import Collator
from engine.batching import padded as collate  # noqa: F401  right-padded rows, for callers of engine.train
from engine.errors import Cancelled, UserError
from engine.files import new_folder, write_json
from engine.hardware import choose_placement, memory_in_use_gb

# optimizer, scheduler and rng are each a .safetensors + .json pair (engine.statefile): no checkpoint file is a pickle
CHECKPOINT_FILES = (
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.safetensors",
    "scheduler.json",
    "rng.safetensors",
    "rng.json",
    "state.json",
)


def batches_for_epoch(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each micro-batch of one epoch: a fresh shuffle per epoch, the same on every resume."""
    order = list(range(n))
    random.Random(seed * 1000003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


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


def make_optimizer(spec, params, device: str, log):
    """AdamW as the spec asks. `params` is a list of tensors or of optimizer groups (dicts with their own lr).

    Full fine-tuning on a GPU defaults to bitsandbytes' paged 8-bit AdamW: its states (1/4 of fp32 AdamW's) live in
    unified memory, so under pressure they page out to RAM instead of failing with out-of-memory.
    """
    import torch

    name = spec.optimizer
    if name == "auto":
        name = "adamw" if device != "cuda" else "paged_adamw_8bit" if spec.method == "full" else "adamw_8bit"
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb  # on a CPU the paged one runs unpaged (bitsandbytes warns)

        kind = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else adamw_8bit()
        opt = kind(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay, fused=device == "cuda")
    log(f"optimizer: {name}, peak lr {spec.learning_rate}, {spec.lr_schedule} schedule, warmup {spec.warmup_steps}")
    return opt


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(run_dir: Path, step: int, model, opt, sched, epoch_pos, keep: int, log) -> Path:
    """Write checkpoints/step-NNNNNN atomically, then prune the oldest beyond `keep`. A full disk leaves the earlier
    checkpoints as they were and raises engine.disk's sentence saying which one is kept."""
    import torch

    from engine.disk import disk_full_error
    from engine.statefile import save_state

    dest = run_dir / "checkpoints" / f"step-{step:06d}"
    if dest.is_dir():  # saved at this step already (save_every, then a cancel before the next step)
        return dest
    try:
        with new_folder(dest) as tmp:
            save_trainable(model, tmp)
            save_state(opt.state_dict(), tmp, "optimizer")
            save_state(sched.state_dict(), tmp, "scheduler")
            rng = dict(
                torch=torch.get_rng_state(),
                python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            )
            save_state(rng, tmp, "rng")
            write_json(tmp / "state.json", dict(step=step, epoch=epoch_pos[0], micro_in_epoch=epoch_pos[1]))
    except Exception as e:
        err = disk_full_error(e, run_dir, f"saving the checkpoint of step {step}")
        if err is None:
            raise
        raise err from e
    for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log(f"checkpoint: saved step {step}")
    return dest


def save_trainable(model, folder: Path) -> None:
    """The LoRA adapter (PEFT format) or, for full fine-tuning, the whole model, as safetensors."""
    model.save_pretrained(folder, safe_serialization=True)


def load_checkpoint(ckpt: Path, model, opt, sched, log):
    """Restore the weights, optimizer, schedule and random generators of `ckpt`; returns its state.json.

    Nothing here is unpickled: weights and states are safetensors and JSON (engine.statefile), and a checkpoint of
    the older pickle format is read with torch's restricted loader or refused."""
    import json

    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    from engine.statefile import load_state

    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors"))
    else:
        for shard in sorted(ckpt.glob("*.safetensors")):
            if shard.stem not in ("optimizer", "scheduler", "rng"):
                model.load_state_dict(load_file(shard), strict=False)
    opt.load_state_dict(load_state(ckpt, "optimizer"))
    sched.load_state_dict(load_state(ckpt, "scheduler"))
    rng = load_state(ckpt, "rng")
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((ckpt / "state.json").read_text())
    log(f"resume: from {ckpt.name}")
    return state


def train(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train `spec` into `run_dir`. `should_stop()` is polled between steps; True saves a checkpoint and stops."""
    if spec.objective in ("dpo", "orpo"):
        from engine.preference import train_preference

        return train_preference(spec, run_dir, runlog, resume, should_stop, log)
    if spec.objective == "grpo":
        from engine.grpo import train_grpo

        return train_grpo(spec, run_dir, runlog, resume, should_stop, log)
    from engine.memory import out_of_memory, out_of_memory_message

    progress = {}  # the last completed step, its data position and how to save it (set by the loop)
    try:
        return _train_sft(spec, run_dir, runlog, resume, should_stop, log, progress)
    except Exception as exc:  # only an allocation failure is handled here; anything else goes on up
        if not out_of_memory(exc) or "save" not in progress:
            raise
        log(f"out of memory during step {progress['step'] + 1}: {str(exc).splitlines()[0][:200]}")
    # outside the handler: the failed step's tensors went with its traceback, so the save has room
    on_gpu = progress["on_gpu"]
    if on_gpu:
        import torch

        torch.cuda.empty_cache()
    # weights part-updated (in the optimizer step, or in the backward with released gradients) are no step's: the
    # latest checkpoint stays the one to resume from
    saved = None if progress["updating"] or progress["released"] else progress["save"]()
    raise UserError(out_of_memory_message(progress["step"] + 1, saved, on_gpu))


def _train_sft(spec, run_dir: Path, runlog, resume: bool, should_stop, log, progress: dict) -> None:
    """engine.train's own loop (SFT and continued pretraining); `progress` follows its last completed step."""
    import torch

    from engine import pretrain
    from engine.data import load_examples
    from engine.loading import load_for_training

    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    placement = choose_placement(spec.device, spec.dtype)
    runlog.set(state="loading", message="loading the model")
    model, tok = load_for_training(spec, placement, log)

    loading = runlog.loading(log)  # a long pass over the data says where it is, in the status and the log
    if spec.objective == "pretrain":
        if spec.train_embeddings and spec.method != "full":
            model = pretrain.add_embedding_training(model, log)
        examples = pretrain.load_text_examples(spec, tok, log, loading, should_stop)
        groups = pretrain.param_groups(model, spec)
    else:
        examples = load_examples(spec, tok, log, loading, should_stop)
        groups = [p for p in model.parameters() if p.requires_grad]
    total = total_steps(spec, len(examples))
    params = [p for p in model.parameters() if p.requires_grad]
    memory = getattr(model, "memory_plan", None)
    if memory is not None and memory.grads_released:
        from engine.grad_release import StepInBackward

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
    else:
        opt = make_optimizer(spec, groups, placement.device, log)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, spec.warmup_steps, spec.lr_schedule))
    scaler = torch.amp.GradScaler("cuda") if placement.dtype == "fp16" else None
    autocast = (
        torch.autocast("cuda", dtype=placement.torch_dtype)
        if placement.device == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    step, epoch, micro = 0, 0, 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log("resume: no checkpoint yet, starting from step 0")
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, opt, sched, log)
        step, epoch, micro = state["step"], state["epoch"], state["micro_in_epoch"]
        runlog.metric(event="resume", step=step)
    model.train()
    tok.save_pretrained(run_dir / "tokenizer")
    runlog.set(state="running", message="training", step=step, total_steps=total)
    log(
        f"training: {len(examples)} examples, {total} steps of {spec.batch_size}x{spec.grad_accum}, "
        f"max {spec.max_seq_length} tokens"
    )
    plan = batches_for_epoch(len(examples), spec.batch_size, spec.seed, epoch)
    varlen = getattr(getattr(model, "get_base_model", lambda: model)(), "varlen_attention", False)
    make_batch = Collator(examples, spec.batch_size, tok.pad_token_id, placement.device, varlen, log)
    started, steps_timed, step_times = time.perf_counter(), 0, []
    last_save = time.monotonic()

    def save_completed():  # after an out-of-memory error: the last completed step, its partial gradients dropped
        opt.zero_grad(set_to_none=True)
        done = progress["step"]
        save_checkpoint(run_dir, done, model, opt, sched, progress["position"], spec.keep_checkpoints, log)
        return done

    released = memory is not None and memory.grads_released
    progress.update(save=save_completed, on_gpu=placement.device == "cuda", released=released)
    while step < total:
        progress.update(step=step, position=(epoch, micro), updating=False)
        if should_stop():
            save_checkpoint(run_dir, step, model, opt, sched, (epoch, micro), spec.keep_checkpoints, log)
            raise Cancelled()
        t0, loss_sum, n_tokens = time.perf_counter(), 0.0, 0
        for _ in range(spec.grad_accum):
            if micro >= len(plan):
                epoch, micro = epoch + 1, 0
                plan = batches_for_epoch(len(examples), spec.batch_size, spec.seed, epoch)
            batch = make_batch([examples[i] for i in plan[micro]])
            micro += 1
            with autocast:
                loss = model(**batch).loss / spec.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach()  # read once per step: a read per micro-batch would wait for the GPU each time
            n_tokens += sum(len(examples[i].input_ids) for i in plan[micro - 1])
        loss_sum = float(loss_sum)
        if scaler:
            scaler.unscale_(opt)
        if hasattr(opt, "take_grad_norm"):  # engine.grad_release: the weights were updated in the backward
            grad_norm = opt.take_grad_norm()
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm or float("inf")))
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
        if placement.device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        step_times.append(dt)
        steps_timed += 1
        eta = (time.perf_counter() - started) / steps_timed * (total - step)
        runlog.metric(
            step=step,
            total_steps=total,
            loss=round(loss_sum, 6),
            lr=lr,
            grad_norm=round(grad_norm, 6),
            tokens=n_tokens,  # the step's real (unpadded) tokens: which examples it trained on, in short
            tokens_per_s=round(n_tokens / dt, 1),
            memory_gb=round(memory_in_use_gb(placement.device), 3),
            eta_s=round(eta, 1),
            epoch=round(epoch + micro / len(plan), 4),
        )
        runlog.set(step=step)
        every = spec.save_every and step % spec.save_every == 0
        if step < total and (every or 0 < spec.save_every_minutes <= (time.monotonic() - last_save) / 60):
            save_checkpoint(run_dir, step, model, opt, sched, (epoch, micro), spec.keep_checkpoints, log)
            last_save = time.monotonic()
    if len(step_times) > 1:  # kernel compilation, autotuning and CUDA graph captures happen in the first steps
        later = sorted(step_times[1:])[len(step_times[1:]) // 2]
        log(
            f"timing: first step {step_times[0]:.2f} s, later steps {later:.3f} s (median); the first step's extra "
            f"{step_times[0] - later:.2f} s is compilation, autotuning and CUDA graph capture"
        )
    save_checkpoint(run_dir, step, model, opt, sched, (epoch, micro), spec.keep_checkpoints, log)
    final = run_dir / ("model" if spec.method == "full" else "adapter")
    with new_folder(final) as tmp:
        save_trainable(model, tmp)
        tok.save_pretrained(tmp)
    log(f"saved {final.name}/ after {step} steps")
