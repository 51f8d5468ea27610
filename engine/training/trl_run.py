"""One of TRL's trainers run as a Tunesmith run: the same model, optimizer, schedule, metrics, checkpoints and cancel
as the SFT loop (engine.training.sft), for the objectives whose loss TRL already implements well (DPO, ORPO, GRPO).

The engine builds the model (engine.models.loading, fast path and LoRA included), the optimizer and the learning-rate
schedule, and hands them to the trainer; TRL computes the loss. A TrainerCallback bridges the rest: one runlog line
per optimizer step with the objective's own metrics, checkpoints every `save_every` steps and `save_every_minutes`
in the SFT loop's layout, and the cancel signal, which finishes the current step, saves a checkpoint and ends the
run "cancelled".

Resume restores the adapter (or weights), optimizer, schedule and random state from the latest checkpoint and trains
the remaining steps. DPO, ORPO and GRPO read their rows in an order of ours (`keep_order`), so a resumed run continues
with the batches the first attempt would have seen.
"""

import math
import shutil
import time
from pathlib import Path

from engine.core.errors import Cancelled, UserError
from engine.core.hardware import memory_in_use_gb
from engine.training.steps import (
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    publish_final,
    restore_rng,
    rng_state,
    save_checkpoint,
    save_tokenizer,
)


class TrlRun:
    """The run-side state around one trainer: optimizer, schedule, resume point, and the callback that reports."""

    def __init__(self, spec, run_dir: Path, runlog, should_stop, log, model, tok, placement, total: int, resume: bool):
        import torch

        self.spec, self.run_dir, self.runlog, self.should_stop, self.log = spec, run_dir, runlog, should_stop, log
        self.model, self.tok, self.placement, self.total = model, tok, placement, total
        params = [p for p in model.parameters() if p.requires_grad]
        paged = getattr(getattr(model, "memory_plan", None), "optimizer_in_host", False)  # engine.memory.offload
        self.opt = make_optimizer(spec, params, placement.device, log, paged=paged)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, total, spec.warmup_steps, spec.lr_schedule)
        )
        self.first_step = 0
        self.rng = None  # the checkpoint's random state, until the first step of a resumed run puts it back
        ckpt = latest_checkpoint(run_dir) if resume else None
        if resume and ckpt is None:
            log("resume: no checkpoint yet, starting from step 0")
            runlog.metric(event="resume", step=0)  # the earlier attempt's steps are gone with it, from the curve too
        if ckpt is not None:
            self.first_step = load_checkpoint(ckpt, model, self.opt, self.sched, log, total=total)["step"]
            runlog.metric(event="resume", step=self.first_step)
            # the trainer seeds the generators again when it is made (transformers' set_seed), so the callback puts
            # the checkpoint's back before the first step, as the Trainer does after its own resume's data skip: a
            # resumed GRPO run samples the replies the uninterrupted one did (and a reward drawing from NumPy's
            # generator draws what it did); load_checkpoint has just put them back, so they are taken from there
            self.rng = rng_state()
        self.step = self.first_step
        self.cancelled = False
        self.tokens = 0
        self.rows = 0  # the rows (pairs, prompts) an epoch has, once keep_order set the order
        model.register_forward_pre_hook(self._count_tokens, with_kwargs=True)

    def _count_tokens(self, module, args, kwargs):
        """Tokens of the forward passes that train (the reference and sampling passes run without gradients)."""
        import torch

        if torch.is_grad_enabled():
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                self.tokens += int(mask.sum())
            elif kwargs.get("input_ids") is not None:
                self.tokens += kwargs["input_ids"].numel()

    def args(self, config_cls, **settings):
        """TRL's config for this spec (`settings` add to it or override it): the batch shape and step count; saving,
        logging and the schedule stay ours."""
        spec, device = self.spec, self.placement.device
        base = dict(
            output_dir=str(self.run_dir / "trainer"),  # scratch: with saving and reporting off TRL writes nothing there
            per_device_train_batch_size=spec.batch_size,
            gradient_accumulation_steps=spec.grad_accum,
            max_steps=self.total - self.first_step,
            max_grad_norm=spec.max_grad_norm,
            seed=spec.seed,
            bf16=self.placement.dtype == "bf16",
            fp16=self.placement.dtype == "fp16",
            use_cpu=device == "cpu",
            gradient_checkpointing=False,  # engine.models.loading already set it up as the spec asks
            gradient_checkpointing_kwargs={"use_reentrant": False},  # TRL re-enables it with these after no-grad passes
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=device == "cuda",
        )
        config = config_cls(**{**base, **settings})
        if device == "cuda" and config.n_gpu > 1:
            # one process with several GPUs visible (engine.training.launch gives these objectives one): transformers'
            # Trainer would wrap the model in nn.DataParallel over all of them and multiply the batch by their
            # number, as it does for a model-parallel one; this run trains on the current GPU alone
            config._n_gpu = 1
        return config

    def keep_order(self, trainer, generations: int = 1) -> None:
        """Make the trainer read its rows in the uninterrupted run's order from the resume point on: a permutation
        an epoch (seeded by the spec's seed and the epoch), cut into steps of batch_size x grad_accum rows, the steps
        already trained left out. TRL's samplers would start a resumed run at the beginning of a fresh shuffle, so
        some rows came twice in the epoch and others never.

        With `generations` (GRPO's num_generations) the order takes the layout of GRPOTrainer's RepeatSampler: a
        step's prompts, each `generations` times in a row, once for each of its grad_accum micro-steps; the trainer
        samples replies for the step's first and slices the rest from them (steps_per_generation is grad_accum)."""
        import torch

        self.rows = n = len(trainer.train_dataset)
        per_step = self.spec.batch_size * self.spec.grad_accum
        order, epoch = [], 0
        while len(order) < self.total * per_step:
            order += torch.randperm(n, generator=torch.Generator().manual_seed(self.spec.seed + epoch)).tolist()
            epoch += 1
        order = order[self.first_step * per_step : self.total * per_step]
        if generations > 1:
            steps = [order[at : at + per_step] for at in range(0, len(order), per_step)]
            order = [i for step in steps for _ in range(self.spec.grad_accum) for i in step for _ in range(generations)]
        # the Trainer builds its DataLoader with this sampler: a list is read in its order, one pass
        trainer._get_train_sampler = lambda dataset=None: order

    def callback(self, metrics: dict[str, str]):
        """The TrainerCallback; `metrics` maps runlog names to the trainer's log keys (e.g. margin: rewards/margins)."""
        from transformers import TrainerCallback

        run = self

        class Bridge(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.started = self.last = self.saved = time.perf_counter()
                run.tokens = 0

            def on_step_begin(self, args, state, control, **kw):
                if run.rng is not None:
                    restore_rng(run.rng)
                    run.rng = None

            def on_step_end(self, args, state, control, **kw):
                run.step = run.first_step + state.global_step
                spec = run.spec
                every = spec.save_every and run.step % spec.save_every == 0
                due = 0 < spec.save_every_minutes <= (time.perf_counter() - self.saved) / 60
                if (every or due) and run.step < run.total:
                    run.checkpoint(state)
                    self.saved = time.perf_counter()
                if run.should_stop():
                    run.cancelled = control.should_training_stop = True

            def on_log(self, args, state, control, logs=None, **kw):
                if not logs or "loss" not in logs:  # the end-of-training summary has train_loss instead
                    return
                now = time.perf_counter()
                done = state.global_step
                if not math.isfinite(logs["loss"]):
                    raise UserError(
                        f"The loss became {logs['loss']} at step {run.first_step + done}; lower the learning rate "
                        f"(now {run.spec.learning_rate}) and start again."
                    )
                record = dict(
                    step=run.first_step + done,
                    total_steps=run.total,
                    loss=round(float(logs["loss"]), 6),
                    lr=float(logs.get("learning_rate", 0.0)),
                    grad_norm=round(float(logs.get("grad_norm", 0.0)), 6),
                    tokens_per_s=round(run.tokens / max(now - self.last, 1e-9), 1),
                    memory_gb=round(memory_in_use_gb(run.placement.device), 3),
                    eta_s=round((now - self.started) / max(done, 1) * (run.total - run.first_step - done), 1),
                    # the trainer counts epochs over the rows it was given, from the resume point on
                    epoch=round(run.epochs(done) if run.rows else float(logs.get("epoch", 0.0)), 4),
                    tokens=run.tokens,
                )
                # GRPO logs a reward's mean as None for a step where that reward scored no reply (TRL 1.15): the step
                # has no value for it, as a plot leaves it out, rather than a crash or a made-up number
                record.update(
                    {name: round(float(logs[key]), 6) for name, key in metrics.items() if _number(logs.get(key))}
                )
                run.runlog.metric(**record)
                run.runlog.progress(record["step"])
                self.last, run.tokens = now, 0

        return Bridge()

    def epochs(self, done: int) -> float:
        """Epochs trained after `done` steps of this attempt, for a trainer given its order by keep_order."""
        return (self.first_step + done) * self.spec.batch_size * self.spec.grad_accum / self.rows

    def checkpoint(self, state=None) -> None:
        """Save checkpoints/step-NNNNNN for the current step (the SFT loop's layout), unless it is already there."""
        if checkpoint_dir(self.run_dir, self.step).exists():
            return  # saved by save_every at this very step
        epoch = int(self.epochs(state.global_step) if self.rows else state.epoch or 0) if state is not None else 0
        save_checkpoint(
            self.run_dir, self.step, self.model, self.opt, self.sched, (epoch, 0), self.spec.keep_checkpoints, self.log
        )

    def train(self, trainer) -> None:
        """Run the trainer to the last step (or a cancel), then save the final adapter (model/ for full fine-tuning)
        with the tokenizer, as the SFT loop does."""
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the runlog has every step; log.txt stays for humans
        save_tokenizer(self.tok, self.run_dir / "tokenizer")
        self.runlog.set(state="running", message="training", step=self.step, total_steps=self.total)
        if self.should_stop():
            if self.step:  # asked before the first step (while loading): no step trained, nothing to save
                self.checkpoint()
            raise Cancelled()
        if self.step < self.total:
            trainer.train()
        shutil.rmtree(self.run_dir / "trainer", ignore_errors=True)
        self.checkpoint(trainer.state)
        if self.cancelled and self.step < self.total:  # a cancel during the last step leaves nothing to stop
            raise Cancelled()
        final = self.run_dir / ("model" if self.spec.method == "full" else "adapter")
        # the checkpoint just saved holds the final weights: linked into place, not serialized again
        publish_final(checkpoint_dir(self.run_dir, self.step), final, self.run_dir / "tokenizer")
        self.log(f"saved {final.name}/ after {self.step} steps")


def _number(value) -> bool:
    """Whether a logged metric is a finite number (a float, a numpy or torch scalar; not None, NaN or text)."""
    try:
        return not isinstance(value, str) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def prepare(placement) -> None:
    """Process settings for a TRL run.

    TRL 1.15 computes its losses with a Triton kernel whatever the device; on a CPU only Triton's interpreter could run
    it (tens of seconds a step), so the same computation runs in torch there (engine.training.trl_loss) unless
    TRITON_INTERPRET=1 was set. TRL tokenizes through datasets.map, whose progress bars would fill log.txt.
    """
    import datasets

    if placement.device == "cpu":
        from engine.training.trl_loss import use_torch_loss

        use_torch_loss()
    datasets.disable_progress_bars()
