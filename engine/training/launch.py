"""Several GPUs: how many processes a run trains on, and the supervisor that launches them through PyTorch's own
launcher (`python -m torch.distributed.run`, i.e. torchrun) and turns their end into the run's one state.

A run of one process is engine.run alone, as before. A run of N > 1 is:

  engine.run (the supervisor: status.json's pid, so cancel and the app's liveness check see it)
    -> torchrun --standalone --nproc-per-node N --max-restarts 0
         -> engine.run on each rank (RANK, LOCAL_RANK, WORLD_SIZE from torchrun): engine.training.distributed

Rank 0 alone writes status.json and metrics.jsonl (with the supervisor's pid); the other ranks are quiet. Cancel
(SIGTERM to the supervisor) is passed to every rank, which agree at the next step to stop and save one checkpoint.
A rank that fails writes its sentence to `.rank-N-failed.json` in the run folder; a rank that is killed writes
nothing, and torchrun's monitor stops the others at once (their collectives also time out:
engine.training.distributed.TIMEOUT_S). The supervisor then marks the run failed with the sentence of the rank that
failed first for a reason of its own, rather than the "connection closed" its peers saw.

On a CPU `gpus: N` runs N processes over gloo (how CI tests this path); on GPUs NCCL, one GPU per process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import UserError
from engine.core.runlog import TERMINAL, RunLog

SHUTDOWN_S = 15  # after a rank died, torchrun waits this long for the others to leave before it kills them
SUPERVISOR_PID = "TUNESMITH_RUN_PID"  # the pid the ranks write into status.json (engine.core.runlog)


@dataclass(frozen=True)
class Launch:
    """How a run is launched: `processes` ranks, each on a GPU (`unit` "GPU") or a CPU process (`unit` "process")."""

    processes: int
    unit: str
    note: str = ""  # the log's line when a run takes fewer GPUs than are visible, and why

    def name(self, rank: int) -> str:
        return f"{self.unit} {rank} of {self.processes}"

    @property
    def units(self) -> str:
        return f"{self.processes} {self.unit}{'es' if self.unit == 'process' else 's'}"


def plan_launch(spec, found: int | None = None) -> Launch:
    """The processes a run trains on: `gpus` of the visible GPUs (0: all of them), one process each; on a CPU
    `gpus` processes (at least one). Raises a UserError when the job asks for more GPUs than are visible.
    `found`: the visible GPUs (None: as torch counts them).

    Only SFT and continued pretraining without validation train data-parallel; the other runs take one GPU (the
    first visible one, with a note for the log) unless `gpus` asks for more, which is refused with a sentence."""
    if found is None:
        import torch

        found = torch.cuda.device_count() if spec.device != "cpu" and torch.cuda.is_available() else 0
    on_gpu = spec.device != "cpu" and found > 0
    if on_gpu and spec.gpus > found:
        raise UserError(
            f"This job asks for {spec.gpus} GPUs but {found} {'is' if found == 1 else 'are'} visible; set gpus to "
            f"{found} or less (0 uses all of them), or check CUDA_VISIBLE_DEVICES."
        )
    wanted = (spec.gpus or found) if on_gpu else max(1, spec.gpus)
    one_gpu = one_gpu_reason(spec.objective, bool(spec.eval_fraction or spec.eval_data))
    if wanted > 1 and one_gpu:
        if spec.gpus > 1:
            raise UserError(f"{one_gpu}; set gpus to 1.")
        note = f"launch: {one_gpu}: {wanted} GPUs are visible, this run uses the first of them"
        return Launch(1, "GPU", note)
    return Launch(wanted, "GPU" if on_gpu else "process")


def one_gpu_reason(objective: str, validates: bool = False) -> str | None:
    """Why a run of `objective` (with validation where `validates`) trains on one GPU; None when it trains
    data-parallel. The estimate (engine.api.machine.run_gpus) plans with the same answer."""
    if objective not in ("sft", "pretrain"):
        return f"{objective.upper()} trains on one GPU for now"
    if validates:  # engine.training.validation runs in one process
        return "A run with validation (eval_fraction or eval_data) trains on one GPU for now"
    return None


def worker_rank() -> int | None:
    """This process's rank when torchrun started it as one of several, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ["RANK"])


class QuietRunLog(RunLog):
    """The run record of a rank other than 0: it keeps its state for its own messages and writes nothing."""

    def set(self, **fields) -> None:
        self.state.update(fields)

    def metric(self, **record) -> None:
        pass


def failure_file(run_dir: Path, rank: int) -> Path:
    return run_dir / f".rank-{rank}-failed.json"


def report_failure(run_dir: Path, rank: int, message: str, exc: BaseException) -> None:
    """A rank's failure, for the supervisor: its sentence, whether it is a collective that broke because another
    rank went away (`communication`) and whether it is the user's to fix."""
    from engine.core.files import write_json

    write_json(
        failure_file(run_dir, rank),
        dict(
            rank=rank,
            message=message,
            communication=communication_error(exc),
            user=type(exc).__name__ == "UserError",
            time=time.time(),
        ),
    )


def communication_error(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because a peer left or stopped answering (not this rank's own fault)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return any(
        s in text
        for s in ("Connection closed by peer", "Connection reset by peer", "Gloo", "gloo", "NCCL", "timed out")
    )


def supervise(job: Path, resume: bool, launch: Launch, runlog: RunLog, log) -> int:
    """Run the job on `launch.processes` ranks through torchrun and leave the run folder in one final state.
    Returns the exit code: 0 done or cancelled, 2 a user's error, 1 any other failure."""
    import psutil

    run_dir = job.parent
    for old in run_dir.glob(".rank-*-failed.json"):
        old.unlink()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={launch.processes}",
        "--max-restarts=0",
        "--monitor-interval=0.2",
        "-m",
        "engine.run",
        str(job),
        *(["--resume"] if resume else []),
    ]
    env = dict(os.environ, **{SUPERVISOR_PID: str(os.getpid())}, TORCH_ELASTIC_SHUTDOWN_TIMEOUT=str(SHUTDOWN_S))
    log(f"launch: {launch.units}, one process each, through torchrun")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    cancel = {"asked": False, "told": set()}
    ranks: dict[int, int] = {}  # pid -> rank of each worker seen
    first_dead = None

    def on_term(signum, frame):  # the ranks agree on the step to stop at; torchrun itself is left to wait for them
        cancel["asked"] = True

    signal.signal(signal.SIGTERM, on_term)
    while proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children()
        except psutil.Error:
            children = []
        for child in children:
            if child.pid not in ranks:
                try:
                    ranks[child.pid] = int(child.environ().get("RANK", "-1"))
                except psutil.Error:
                    continue
            if cancel["asked"] and child.pid not in cancel["told"]:
                cancel["told"].add(child.pid)
                child.send_signal(signal.SIGTERM)
        if first_dead is None:
            first_dead = _first_gone(ranks)
        time.sleep(0.1)
    return _finish(run_dir, runlog, launch, proc.returncode, first_dead, cancel["asked"], log)


def _first_gone(ranks: dict[int, int]) -> list[int] | None:
    """The ranks gone at the first look that finds any gone (several when torchrun stopped the others between two
    looks), or None while every rank runs."""
    import psutil

    gone = []
    for pid, rank in ranks.items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            pass
        gone.append(rank)
    return sorted(gone) or None


def _finish(run_dir: Path, runlog: RunLog, launch: Launch, code: int, first_dead, cancelled: bool, log) -> int:
    """The run's final state from torchrun's exit code, the ranks' failure files and the first rank seen gone."""
    try:
        state = json.loads((run_dir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    failures = []
    for path in sorted(run_dir.glob(".rank-*-failed.json")):
        try:
            failures.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
        path.unlink()
    if state.get("pid") not in (None, os.getpid()):  # resumed by a new process already: its status is not ours
        return 0 if code == 0 else 1
    if state.get("state") in TERMINAL and code == 0:
        return 0
    if state.get("state") in ("done", "cancelled") and not failures:
        return 0
    if cancelled and not failures:
        runlog.set(state="cancelled", message="Cancelled; resume continues from the last checkpoint, if any.")
        return 0
    root = root_cause(run_dir / "log.txt")  # torchrun's own account, where it made one, beats the polled one
    message, user = _failure_sentence(failures, [root] if root is not None else first_dead, launch, code)
    runlog.set(state="failed", message=message)
    log(f"failed: {message}")
    return 2 if user else 1


def root_cause(log_file: Path) -> int | None:
    """The rank torchrun's failure report (written to the run's log.txt as torchrun exits) names as the root cause,
    the first observed failure; None without such a report."""
    import re

    try:
        text = log_file.read_text(errors="replace")[-20_000:]
    except OSError:
        return None
    _, found, after = text.rpartition("Root Cause (first observed failure):")
    match = re.search(r"rank\s*:\s*(\d+)", after) if found else None
    return int(match.group(1)) if match else None


def _failure_sentence(failures: list[dict], first_dead, launch: Launch, code: int) -> tuple[str, bool]:
    """The sentence for a failed run of several ranks, and whether it is the user's to fix: the first rank's own
    failure; else the rank seen gone first (killed: it wrote nothing); else the first of the broken collectives."""
    failures = sorted(failures, key=lambda f: f["time"])
    own = [f for f in failures if not f["communication"]]
    if own:
        first = own[0]
        if first["user"]:
            return first["message"], True
        return f"The {launch.name(first['rank'])} stopped: {first['message']}", False
    # of the ranks first seen gone, one that wrote no failure of its own was killed; the others wrote why they stopped
    silent = [rank for rank in first_dead or () if rank not in {f["rank"] for f in failures}]
    if silent:
        return (
            f"The {launch.name(silent[0])} ended without a word (killed, perhaps for lack of memory), so the others "
            "stopped too; see log.txt. Resume continues from the last checkpoint."
        ), False
    if failures:
        return f"The {launch.name(failures[0]['rank'])} stopped: {failures[0]['message']}", False
    return (
        f"The training processes stopped unexpectedly (exit code {code}); see log.txt. Resume continues from the last "
        "checkpoint."
    ), False
