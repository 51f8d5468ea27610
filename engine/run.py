"""The training subprocess: `python -m engine.run runs/<id>/job.yaml [--resume]`.

Its stdout and stderr are the run's log.txt (the launcher points them there). Progress goes to metrics.jsonl and the
state to status.json. SIGTERM (cancel) is honoured between steps: a checkpoint is saved and the run ends
"cancelled". Every failure ends the run "failed" with a sentence for the user; the traceback stays in log.txt.
"""

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path


def log(msg: str) -> None:
    try:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)
    except OSError:  # log.txt on a full disk: the line is lost, the run's status must still be written
        pass


def failure_message(exc: BaseException, step: int, run_dir: Path | None = None) -> str:
    """The sentence a user sees for an unexpected exception."""
    from engine.core.disk import disk_full_error
    from engine.core.errors import UserError

    if isinstance(exc, UserError):
        return str(exc)
    full = disk_full_error(exc, run_dir or Path("."), f"training at step {step + 1}")
    if full is not None:
        return str(full)
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        return (
            f"Ran out of GPU memory at step {step + 1}. Lower the batch size or the maximum sequence length, or "
            "use QLoRA, then resume: the run continues from its last checkpoint."
        )
    if isinstance(exc, MemoryError):
        return "Ran out of RAM. Close other programs or pick a smaller model, then resume."
    return f"Training stopped with an error ({text.splitlines()[0][:200]}); the full report is in log.txt."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.run")
    ap.add_argument("job", help="runs/<id>/job.yaml")
    ap.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = ap.parse_args(argv)

    from engine.core.errors import UserError
    from engine.core.runlog import RunLog
    from engine.spec.jobspec import read_job

    job = Path(args.job)
    run_dir = job.parent
    runlog = RunLog(run_dir, log)
    stop = {"requested": False}

    def on_term(signum, frame):
        stop["requested"] = True
        log("cancel requested: stopping after this step")

    signal.signal(signal.SIGTERM, on_term)
    runlog.set(state="starting", message="starting")
    try:
        from engine.core.disk import remove_stale_partials

        remove_stale_partials(
            run_dir, run_dir / "checkpoints", log=log, legacy=True
        )  # left by an earlier attempt killed mid-save
        spec = read_job(job)
        from engine.core.errors import Cancelled
        from engine.training.dispatch import train

        try:
            train(spec, run_dir, runlog, args.resume, lambda: stop["requested"], log)
        except Cancelled:
            runlog.set(state="cancelled", message="Cancelled; resume continues from the last checkpoint.")
            log("cancelled")
            return 0
    except BaseException as exc:  # every failure becomes a state and a sentence; the traceback goes to log.txt
        log(traceback.format_exc())
        step = runlog.state.get("step", 0)
        message = failure_message(exc, step, run_dir) if not isinstance(exc, KeyboardInterrupt) else "Interrupted."
        runlog.set(state="failed", message=message)
        log(f"failed: {message}")
        return 2 if isinstance(exc, UserError) else 1
    runlog.set(state="done", message="Training finished.")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
