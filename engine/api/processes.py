"""The background processes of runs and exports: start one (`python -m module`, its output to the folder's log.txt),
tell whether it is alive, stop it.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.core.runlog import TERMINAL

ROOT = Path(__file__).resolve().parents[2]


_children: dict[int, subprocess.Popen] = {}  # runs this process started, so their exit is reaped


SLUG_CHARS = 40  # at most 160 bytes in UTF-8: well inside any filesystem's 255-byte name limit


def slug(name: str) -> str:
    """The folder-name form of a run's (or export's) name: letters, digits and marks of any script ("Нова",
    "小助手", "café"), NFKC-normalised (full-width "ＡＢ" is "AB"), with '.', '_' and '-'; every other run of
    characters (spaces, slashes, punctuation, emoji) becomes one '-'. At most SLUG_CHARS characters; "run" when
    nothing is left. Hub repository names and GGUF file names, which must be ASCII, are not made from it."""
    import unicodedata

    name = unicodedata.normalize("NFKC", name)
    kept = "".join(c if c in "._-" or unicodedata.category(c)[0] in "LNM" else " " for c in name)
    slug = re.sub(r"\s+", "-", kept.strip()).strip("-.")[:SLUG_CHARS].strip("-.")
    return slug or "run"


def spawn(module: str, args: list[str], folder: Path, secrets: dict | None = None, status: dict | None = None) -> int:
    """Start `python -m module args` in the background with its output appended to folder/log.txt, and mark the
    folder's status.json "starting" with its pid (and the fields of `status`). The child runs only once that status is
    written (engine.core.spawned), so the status it writes itself is never overwritten by this one. `secrets` go to
    the child's environment only, never to a file."""
    env = dict(
        os.environ,
        **(secrets or {}),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
    )
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.core.spawned", module, *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            bufsize=0,  # stdin unbuffered: the go byte below is sent when written
            start_new_session=True,
        )
    _children[proc.pid] = proc
    # reap it the moment it exits: otherwise it stays a <defunct> zombie until something happens to poll it
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    from engine.core.files import write_json

    try:
        write_json(
            folder / "status.json",
            dict(
                state="starting",
                message="starting",
                step=0,
                total_steps=0,
                pid=proc.pid,
                updated=time.time(),
                **(status or {}),
            ),
        )
    finally:  # go, the status written or not: the child may write its own now
        try:
            proc.stdin.write(b"\n")
        except BrokenPipeError:  # it died already, which poll and cancel see
            pass
        proc.stdin.close()
    return proc.pid


def alive(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop(folder: Path, wait_s: float) -> bool:
    """SIGTERM the process of a run or export folder, SIGKILL it after `wait_s`. True when it left no final state
    (killed, or stopped before it could install its handler), so the caller records the cancellation itself; False
    when the status names another process by then (a resume started while this one was exiting: not ours)."""
    import json

    pid = json.loads((folder / "status.json").read_text()).get("pid")
    if pid and alive(pid) and runs_in(pid, folder):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + wait_s
        while alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if alive(pid):
            _kill(pid)
            while alive(pid):
                time.sleep(0.05)
    after = json.loads((folder / "status.json").read_text())
    return after.get("pid") == pid and after["state"] not in TERMINAL


def runs_in(pid: int, folder: Path, unknown: bool = False) -> bool:
    """Whether process `pid` works on the run or export `folder`: its command line names the folder or its job.yaml
    (spawn's arguments). Checked before a signal, since status.json's pid may name any process of this user: one that
    took the pid after the run died unseen, or any at all in a run folder handed over (a shell leading its session
    would be killed with its whole group). Where there is no /proc to tell, True. `unknown`: the answer while the
    command line is still empty after ~0.5 s (a process just started has none while exec gives it its new one, a
    moment it is read again for; a kernel thread has none at all)."""
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return not Path("/proc/self").is_dir()
        if cmdline:
            break
        time.sleep(0.01)
    else:
        return unknown
    args = cmdline.split(b"\0")
    target = Path(folder).resolve()
    for arg in filter(None, args):
        try:
            if Path(os.fsdecode(arg)).resolve() in (target, target / "job.yaml"):
                return True
        except (OSError, RuntimeError):  # a symlink loop
            continue
    return False


def _kill(pid: int) -> None:
    """SIGKILL `pid` and, when it leads its own process group (spawn starts each run in a new session), all it
    started: a multi-GPU run's torchrun and ranks (engine.training.launch) go with their supervisor."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def mark_cancelled(folder: Path, message: str, **fields) -> None:
    from engine.core.files import write_json

    write_json(folder / "status.json", dict(state="cancelled", message=message, updated=time.time(), **fields))


def exit_code(pid: int) -> int | None:
    """The exit code of a process this one started and that has ended; None otherwise."""
    proc = _children.get(pid)
    return proc.returncode if proc is not None else None
