"""Training runs: start one in the background (`python -m engine.run`), resume, poll, cancel, list, delete, read
its log."""

import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.api.access import MODEL_FIX, allowed_roots, as_processes_read, check_access, check_links, runs_dir
from engine.api.processes import alive, exit_code, mark_cancelled, runs_in, slug, spawn, stop
from engine.core.errors import UserError
from engine.core.runlog import TERMINAL, read_metrics
from engine.spec.jobspec import JobSpec, read_job, with_paths_beside

CANCEL_MARK = "cancel-requested"  # written by request_cancel: the run is saving a checkpoint before it stops
FINISH_CHECK_S = 0.05  # wait() looks at a run's state this often
LOW_DISK_BYTES = 64 * 2**20  # below this, a run that died without a word is said to have probably filled the disk


@dataclass(frozen=True)
class RunHandle:
    run_id: str
    run_dir: Path
    pid: int


@dataclass
class RunStatus:
    run_id: str
    run_dir: Path
    state: str  # starting, loading, running, done, failed, cancelled
    message: str
    step: int
    total_steps: int
    name: str = ""
    model: str = ""
    metrics: list[dict] = field(default_factory=list)
    started: float = 0.0  # when the run folder was made (seconds since the epoch)
    updated: float = 0.0  # the last state change or step; for a finished run, when it ended
    notes: list[str] = field(default_factory=list)  # sentences to show beside the state (e.g. examples cut to length)
    idle_s: float = 0.0  # of the time since `started`, how long it lay stopped between attempts (resumed runs)

    @property
    def finished(self) -> bool:
        """No process works on it: done, failed, cancelled, or damaged (its files cannot be read)."""
        return self.state in TERMINAL or self.state == "damaged"

    @property
    def loss(self) -> float | None:
        return self.metrics[-1]["loss"] if self.metrics else None

    @property
    def eta_s(self) -> float | None:
        return self.metrics[-1]["eta_s"] if self.metrics else None


def start(spec: JobSpec, runs: Path | None = None, *, allow_code: bool = False) -> RunHandle:
    """Check the model and the dataset's first rows, write the spec to a new run folder and start
    `python -m engine.run` on it in the background.

    A job whose rewards include a `python` one (a module:function path) runs that code in the training process, so
    it is refused unless `allow_code` is True: the CLI and Python callers may pass it, the app never does.
    """
    # the process starts in the project folder: a model or data path relative to here would be missing there
    spec = with_paths_beside(spec, Path.cwd())
    _check_job(spec, allow_code)
    from engine.training.preflight import check_job

    check_job(spec)  # a bad model folder or bad first rows: one sentence now, no run folder
    runs = Path(runs) if runs else runs_dir()
    runs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        run_id = f"{stamp}-{slug(spec.name)}" + (f"-{n}" if n else "")
        try:
            (runs / run_id).mkdir()
            break
        except FileExistsError:
            continue
    run_dir = runs / run_id
    from engine.core.files import write_text

    write_text(run_dir / "job.yaml", spec.to_yaml())
    return _launch(run_dir, resume=False)


def _check_job(spec: JobSpec, allow_code: bool, resumed: bool = False) -> None:
    """Refuse a job the caller may not run: a model or dataset outside a shared app's workspace; unless `allow_code`,
    trust_remote_code in a shared app (a hub model's own Python would run on this machine, as any user of it chose)
    or in a `resumed` job.yaml (a run folder may come from anyone), and a `python` reward (a module:function path,
    which runs that code in the training process)."""
    from engine.spec.rewards import runs_code

    check_access(spec.model, MODEL_FIX)
    check_access(spec.data)
    check_access(spec.eval_data)
    if spec.trust_remote_code and not allow_code and allowed_roots() is not None:
        raise UserError(
            "This app is shared, so it runs no code shipped with a model: untick 'Trust remote code', or train this "
            "model from the command line on the machine itself."
        )
    if spec.trust_remote_code and not allow_code and resumed:
        raise UserError(
            "This run's job.yaml turns on trust_remote_code (Python shipped with its model runs on this machine), and "
            "a run folder may come from anyone: if you trust its model, resume it from the command line "
            "(python -m engine resume RUN)."
        )
    if runs_code(spec.rewards) and not allow_code:
        raise UserError(
            "This job has a 'python' reward, which runs your own code: that is accepted only from the command line "
            "or the Python API (engine.api.start(spec, allow_code=True)), never from the app."
        )


def resume(run: "str | Path | RunHandle", *, allow_code: bool = False) -> RunHandle:
    """Continue a cancelled or failed run from its latest checkpoint, in the same folder.

    Its job.yaml is checked as start() checks a new job: the folder may have been copied from elsewhere, so a
    `python` reward or trust_remote_code needs `allow_code` (the command line passes it, the app never does)."""
    import fcntl

    folder = find_run(run)
    # one resume at a time per run (two tabs, the app and the command line): the second one waits here and then finds
    # the first one's process "starting", where both would have found the run stopped and trained in the one folder
    with open(folder / "job.yaml", "rb") as job:
        fcntl.flock(job, fcntl.LOCK_EX)
        status = _poll_dir(folder)
        if status.state == "damaged":
            raise UserError(f"Run {status.run_id} cannot be resumed: {status.message}")
        if not status.finished:
            raise UserError(f"Run {status.run_id} is still {status.state}; cancel it before resuming.")
        if status.state == "done":
            raise UserError(f"Run {status.run_id} already finished; start a new run to train further.")
        spec = JobSpec.from_yaml((status.run_dir / "job.yaml").read_text())
        _check_job(spec, allow_code, resumed=True)
        read = {k: as_processes_read(getattr(spec, k)) for k in ("model", "data", "eval_data")}
        if any(read[k] != getattr(spec, k) for k in read):  # its relative paths, as the run reads them
            _check_job(spec.replace(**read), allow_code, resumed=True)
        _check_no_links(status.run_dir)
        _check_steps_left(status.run_dir, spec)
        return _launch(status.run_dir, resume=True)


def _check_steps_left(run_dir: Path, spec: JobSpec) -> None:
    """Refuse, before a process starts, to resume a run whose job.yaml was edited in a setting its checkpoints cannot
    go on with (engine.training.edits), or whose max_steps was lowered below the step its latest checkpoint reached
    (it would train nothing and end past its last step). A step count from epochs needs the data counted: the
    training process refuses that one (engine.training.steps.load_checkpoint)."""
    from engine.training.edits import check_unchanged
    from engine.training.launch import plan_launch
    from engine.training.steps import latest_checkpoint, past_the_end

    check_unchanged(run_dir, spec, plan_launch(spec).processes)
    ckpt = latest_checkpoint(run_dir)
    if spec.max_steps and ckpt is not None and (refusal := past_the_end(ckpt, spec.max_steps)) is not None:
        raise refusal


def _check_no_links(run_dir: Path) -> None:
    """Refuse to resume a run folder holding a symbolic link: the app makes none (a final adapter is hard-linked),
    and a folder handed over could link log.txt to ~/.bashrc or checkpoints/ to any folder, which the run would then
    append its log to (lines that quote its job.yaml), or write and delete checkpoints in."""
    import os

    for parent, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            if Path(parent, name).is_symlink():
                raise UserError(
                    f"Run {run_dir.name} cannot be resumed: '{Path(parent, name).relative_to(run_dir)}' in its folder "
                    "is a link, which a run folder made here never holds; replace the link with the file itself."
                )


def _launch(run_dir: Path, resume: bool) -> RunHandle:
    run_dir = run_dir.absolute()  # the process starts in the project folder: a relative path would name another run
    (run_dir / CANCEL_MARK).unlink(missing_ok=True)  # a cancel asked of an earlier attempt is done with
    idle = {"idle_s": _idle_s(run_dir)} if resume else {}
    pid = spawn("engine.run", [str(run_dir / "job.yaml")] + (["--resume"] if resume else []), run_dir, status=idle)
    return RunHandle(run_dir.name, run_dir, pid)


def _idle_s(run_dir: Path) -> float:
    """The seconds a run about to resume has lain stopped: its earlier pauses (status.json's idle_s) and the time
    since its last attempt ended (the status's last update), which its time worked leaves out."""
    import json

    try:
        st = json.loads((run_dir / "status.json").read_text())
        return round(float(st.get("idle_s", 0.0)) + max(0.0, time.time() - float(st["updated"])), 3)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0.0  # no readable status: nothing known to leave out


def find_run(run: "str | Path | RunHandle") -> Path:
    """A run folder from a handle, a path, or a run id under runs_dir(). A shared app (restrict_files) takes run
    ids only: the name of a folder directly under runs_dir(), not a link."""
    if isinstance(run, RunHandle):
        return run.run_dir
    if not str(run).strip():  # an empty Run box: as a path it is the working folder, which is no run of the list
        raise UserError("Pick a run in the history first.")
    if allowed_roots() is not None:
        return _shared_run(str(run))
    path = Path(run)
    if (path / "job.yaml").is_file():
        return path
    if (runs_dir() / str(run) / "job.yaml").is_file():
        return runs_dir() / str(run)
    raise UserError(f"No run '{run}': give a run folder (with job.yaml) or a run id from the run list.")


def _shared_run(run_id: str) -> Path:
    """The folder of `run_id` under runs_dir(), refusing anything that could name a folder elsewhere, and a hidden
    folder (a half-built one, or one put there to be left alone)."""
    runs = runs_dir()
    folder = runs / run_id
    plain = not run_id.startswith(".") and "/" not in run_id and "\\" not in run_id and "\0" not in run_id
    if not (plain and folder.is_dir() and not folder.is_symlink() and (folder / "job.yaml").is_file()):
        raise UserError(
            f"'{run_id[:80]}' is not a run of this app; pick one from the run history (a run id is the name of a "
            "folder in runs/)."
        )
    check_links(folder)  # its log, status, checkpoints are read and shown
    return folder


def poll(run: "str | Path | RunHandle") -> RunStatus:
    """The run's state, progress and metrics. A process that died without saying so is reported failed; a folder
    whose files cannot be read is reported "damaged" rather than raising."""
    return _poll_dir(find_run(run))


def _poll_dir(run_dir: Path) -> RunStatus:
    try:
        return _read_status(run_dir)
    except Exception as e:  # one bad folder must not break the run history or the app's start
        why = str(e)[:200] if isinstance(e, UserError) else f"{type(e).__name__}: {str(e)[:120]}"
        message = f"This run folder is damaged ({why}); delete it, or fix its files by hand."
        return RunStatus(run_dir.name, run_dir, "damaged", message, 0, 0, "?", "?", [])


def _read_status(run_dir: Path) -> RunStatus:
    import json

    try:
        st = json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        st = dict(state="failed", message="This run has no status; it never started.", step=0, total_steps=0)
    # a pid that names another program now (ids are reused, from 1 again after a restart) is a process gone too
    pid = st.get("pid") if st["state"] not in TERMINAL else None
    if pid and not (alive(pid) and runs_in(pid, run_dir, unknown=True)):
        code = exit_code(st["pid"])
        st["state"] = "failed"
        killed = (
            " It was killed (SIGKILL), most often by the system when RAM runs out: pick a smaller model, batch or "
            "sequence length, or close other programs."
            if code == -9
            else ""
        )
        st["message"] = (
            "The training process stopped unexpectedly"
            + (f" (exit code {code})" if code is not None else "")
            + f"; see log.txt.{killed}{_low_disk_note(run_dir)} Resume continues from the last checkpoint."
        )
    if st["state"] not in TERMINAL and (run_dir / CANCEL_MARK).is_file():
        st["state"], st["message"] = "cancelling", "Cancelling: saving a checkpoint, then stopping."
    spec = read_job(run_dir / "job.yaml")  # unreadable or invalid: the folder is damaged (_poll_dir)
    metrics = read_metrics(run_dir)
    step, total = st.get("step", 0), st.get("total_steps", 0)
    if not step and metrics:  # a resume that has not restored its checkpoint yet stands where the run stopped
        step, total = metrics[-1]["step"], metrics[-1].get("total_steps", total)
    return RunStatus(
        run_dir.name,
        run_dir,
        st["state"],
        st.get("message", ""),
        step,
        total,
        spec.name,
        spec.model,
        metrics,
        (run_dir / "job.yaml").stat().st_mtime,
        st.get("updated", 0.0),
        [str(n) for n in st.get("notes", [])],
        float(st.get("idle_s", 0.0)),
    )


def wait(run: "str | Path | RunHandle", seconds: float) -> None:
    """Sleep up to `seconds`, returning early once the run's status.json names a final state: a caller that polls in
    between (the command line following a run) sees the run end at once rather than up to `seconds` later. It reads
    only that small file, every FINISH_CHECK_S."""
    import json

    status = find_run(run) / "status.json"
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            if json.loads(status.read_text()).get("state") in TERMINAL:
                return
        except (OSError, ValueError):  # being replaced this moment, or not written yet
            pass
        time.sleep(min(FINISH_CHECK_S, left))


def _low_disk_note(folder: Path) -> str:
    """A sentence when the disk holding `folder` is nearly full: the likely reason a process died without a word
    (with a full disk it could not even write its status)."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free >= LOW_DISK_BYTES:
        return ""
    return f" The disk may be full (only {free / 2**20:.0f} MiB free there): free some space first."


def cancel(run: "str | Path | RunHandle", wait_s: float = 60.0) -> RunStatus:
    """Ask the run to stop (it finishes its step and checkpoints first); after `wait_s`, or twice the longest time it
    took from one step to the next where that is longer (a step, and a checkpoint after it), it is killed."""
    status = poll(run)
    wait_s = max([wait_s] + [2 * gap for gap in _step_gaps(status.run_dir)])
    if not status.finished and stop(status.run_dir, wait_s):
        mark_cancelled(
            status.run_dir,
            "Cancelled before it could save a checkpoint; resume continues from the last checkpoint, if any.",
            step=status.step,
            total_steps=status.total_steps,
        )
    return _poll_dir(status.run_dir)


def _step_gaps(run_dir: Path) -> list[float]:
    """Seconds between consecutive steps of the run's latest attempt (metrics.jsonl since its last resume: the time
    between two attempts is no step's)."""
    from engine.core.files import read_jsonl

    times = []
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        if rec.get("event") == "resume":
            times = []
        elif "loss" in rec and isinstance(rec.get("time"), (int, float)):
            times.append(rec["time"])
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def request_cancel(run: "str | Path | RunHandle") -> RunStatus:
    """Ask the run to stop without waiting: it saves a checkpoint at the end of its step, then ends "cancelled".
    Until then poll() says "cancelling". cancel() waits for the end (and kills a process that does not stop)."""
    import os
    import signal

    status = poll(run)
    if status.finished:
        return status
    (status.run_dir / CANCEL_MARK).touch()
    pid = _pid(status.run_dir)
    if pid and alive(pid) and runs_in(pid, status.run_dir):
        os.kill(pid, signal.SIGTERM)
    return _poll_dir(status.run_dir)


def _pid(run_dir: Path) -> int | None:
    import json

    try:
        return json.loads((run_dir / "status.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def list_runs(runs: Path | None = None) -> list[RunStatus]:
    """Every run folder, newest first."""
    runs = Path(runs) if runs else runs_dir()
    if not runs.is_dir():
        return []
    shared = allowed_roots() is not None  # a shared app lists no link nor hidden folder, which it would not open
    folders = [d for d in sorted(runs.iterdir(), reverse=True) if not (shared and (d.is_symlink() or d.name[0] == "."))]
    return [_poll_dir(d) for d in folders if (d / "job.yaml").is_file()]


def delete_run(run: "str | Path | RunHandle") -> None:
    """Delete a finished run's folder (a running one must be cancelled first)."""
    import shutil

    status = poll(run)
    if not status.finished:
        raise UserError(f"Run {status.run_id} is still {status.state}; cancel it before deleting it.")
    shutil.rmtree(status.run_dir)


def run_log(run: "str | Path | RunHandle", lines: int = 200) -> str:
    """The last `lines` lines of a run's log.txt."""
    path = find_run(run) / "log.txt"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def best_checkpoint(run: "str | Path | RunHandle") -> Path | None:
    """The folder of a run's best weights by validation loss (best/step-NNNNNN, an adapter or a model with its
    tokenizer, which export and chat take as a source), or None when the run has no validation set or no pass yet."""
    from engine.training.validation import best_checkpoint as best

    return best(find_run(run))
