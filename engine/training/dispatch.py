"""The one place that picks a run's trainer by its objective; the run subprocess (engine.run) calls `train`.

The objectives are peers: sft and pretrain run engine.training.sft's loop, dpo and orpo engine.training.preference,
grpo engine.training.grpo. Each is imported only when chosen, so a run loads only its own trainer's libraries.
"""

from pathlib import Path


def train(spec, run_dir: Path, runlog, resume: bool, should_stop, log) -> None:
    """Train `spec` into `run_dir`. `should_stop()` is polled between steps; True saves a checkpoint and stops."""
    if spec.objective in ("dpo", "orpo"):
        from engine.training.preference import train_preference

        return train_preference(spec, run_dir, runlog, resume, should_stop, log)
    if spec.objective == "grpo":
        from engine.training.grpo import train_grpo

        return train_grpo(spec, run_dir, runlog, resume, should_stop, log)
    from engine.training.sft import train_sft

    return train_sft(spec, run_dir, runlog, resume, should_stop, log)
