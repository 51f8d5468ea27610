"""The one place that picks a run's trainer by its objective; the run subprocess (engine.run) calls `train`.

The objectives are peers: sft and pretrain run engine.training.sft's loop, dpo and orpo engine.training.preference,
grpo engine.training.grpo. Each is imported only when chosen, so a run loads only its own trainer's libraries.
"""

from pathlib import Path


def train(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train `spec` into `run_dir`. `should_stop()` is polled between steps; True saves a checkpoint and stops.

    First, in a run of one process, a resume's edits of job.yaml that its checkpoints cannot go on with are refused,
    and the job the checkpoints are made with is recorded (engine.training.edits), before anything loads. The ranks
    of a run of several leave that to their supervisor (engine.run), which did it before it launched them. Every
    process reads a hub dataset at the commit the record keeps (edits.pinned)."""
    from engine.training.edits import check_and_record, pinned, read_record
    from engine.training.launch import worker_rank

    if worker_rank() is None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)  # engine.run's is the job's folder; a caller's may be new
        record = check_and_record(run_dir, spec, resume, processes=1)
    else:
        record = read_record(run_dir)
    spec = _within_context(pinned(spec, record), runlog, log)
    if spec.objective in ("dpo", "orpo"):
        from engine.training.preference import train_preference

        return train_preference(spec, run_dir, runlog, resume, should_stop, log)
    if spec.objective == "grpo":
        from engine.training.grpo import train_grpo

        return train_grpo(spec, run_dir, runlog, resume, should_stop, log)
    from engine.training.sft import train_sft

    return train_sft(spec, run_dir, runlog, resume, should_stop, log)


def _within_context(spec, runlog, log):
    """The spec with max_seq_length no longer than the model's context (engine.models.context.fit_to_context); a
    clamp is told in the log and kept as a note of the run's status, which the Train tab and the CLI show."""
    import os

    from engine.models.context import fit_to_context
    from engine.models.loading import read_config, resolve_model

    if not Path(os.path.expanduser(spec.model)).is_dir():
        runlog.set(state="loading", message="loading the model")  # a hub model is fetched now, not as it loads
    spec, note = fit_to_context(spec, read_config(resolve_model(spec.model, log)))
    if note:
        log(f"note: {note}")
        runlog.note(note)
    return spec
