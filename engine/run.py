"""The training subprocess: `python -m engine.run runs/<id>/job.yaml [--resume]`.

Its stdout and stderr are the run's log.txt (the launcher points them there). Progress goes to metrics.jsonl and the
state to status.json. SIGTERM (cancel) is honoured between steps: a checkpoint is saved and the run ends
"cancelled". Every failure ends the run "failed" with a sentence for the user; the traceback stays in log.txt.
A run on several GPUs is this process as the supervisor of torchrun's ranks, each of them this module again
(engine.training.launch).
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


def _quiet(msg: str) -> None:
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
        # a resume trains the job as it is (a checkpoint is of its model and batch): smaller settings are a new run
        return (
            f"Ran out of GPU memory at step {step + 1}. Resume continues from the last checkpoint once GPU memory is "
            "free; or start again with a smaller batch size or maximum sequence length, or with QLoRA."
        )
    if isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in text:  # torch's, on the CPU
        return (
            "Ran out of RAM. Close other programs and resume (the run continues from its last checkpoint); or start "
            "again with a smaller model."
        )
    return f"Training stopped with an error ({text.splitlines()[0][:200]}); the full report is in log.txt."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.run")
    ap.add_argument("job", help="runs/<id>/job.yaml")
    ap.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = ap.parse_args(argv)

    from engine.core.errors import UserError
    from engine.core.runlog import RunLog
    from engine.spec.jobspec import read_job
    from engine.training import launch

    job = Path(args.job)
    if not job.exists():  # status.json goes beside the job: a missing folder was a traceback, another a stray file
        print(f"error: Job file '{job}' does not exist.", file=sys.stderr)
        return 2
    run_dir = job.parent
    rank = launch.worker_rank()  # None: one process, or the supervisor of several
    runlog = RunLog(run_dir, log) if not rank else launch.QuietRunLog(run_dir)
    say = log if not rank else _quiet  # the other ranks say only why they failed; rank 0 speaks for the run
    stop = {"requested": False}

    def on_term(signum, frame):
        stop["requested"] = True
        say("cancel requested: stopping after this step")

    signal.signal(signal.SIGTERM, on_term)
    if args.resume:
        runlog.resuming()
    runlog.set(state="starting", message="starting")
    try:
        from engine.core.disk import remove_stale_partials

        # left by an earlier attempt killed mid-save: a checkpoint, the final folder, the best weights by validation
        remove_stale_partials(run_dir, run_dir / "checkpoints", run_dir / "best", log=say, legacy=True)
        spec = read_job(job)
        if rank is None:
            plan = launch.plan_launch(spec)
            if plan.note:
                say(plan.note)
            if plan.processes > 1:
                from engine.training.edits import check_and_record

                # before the ranks start (a run of one process checks in dispatch.train)
                check_and_record(run_dir, spec, args.resume, plan.processes)
                return launch.supervise(job, args.resume, plan, runlog, say)
        from engine.core.errors import Cancelled
        from engine.training.dispatch import train

        try:
            train(spec, run_dir, runlog, args.resume, lambda: stop["requested"], say)
        except Cancelled:
            runlog.set(state="cancelled", message="Cancelled; resume continues from the last checkpoint.")
            say("cancelled")
            return 0
    except BaseException as exc:  # every failure becomes a state and a sentence; the traceback goes to log.txt
        if rank:
            say = lambda m: print(f"[rank {rank}] {m}", flush=True)  # noqa: E731 (its failure is worth a line)
        say(traceback.format_exc())
        step = runlog.state.get("step", 0)
        message = failure_message(exc, step, run_dir) if not isinstance(exc, KeyboardInterrupt) else "Interrupted."
        if rank is None:
            runlog.set(state="failed", message=message)
        else:  # the supervisor picks the sentence of the rank that failed first
            launch.report_failure(run_dir, rank, message, exc)
        say(f"failed: {message}")
        return 2 if isinstance(exc, UserError) else 1
    finally:
        if rank is not None:
            from engine.training.distributed import leave

            leave()
    runlog.set(state="done", message="Training finished.")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
