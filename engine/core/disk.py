"""A full disk, and what interrupted writes leave behind.

A full disk shows up in many shapes: OSError ENOSPC from Python, a RuntimeError from torch's zip writer ("[enforce
fail at inline_container.cc] ... file write failed"), a SafetensorError wrapping "No space left on device (os error
28)". `disk_full_error` recognizes them all and words one sentence: what was being written, how much is free, what
was kept, and what to free.

Folders are built under a temporary name (engine.core.files.new_folder) that carries the builder's process id and start
time, `.NAME.PID-START.XXXXXXXX.partial`. A process killed mid-build (kill -9, power loss, the machine's out-of-memory
killer) leaves one behind; `remove_stale_partials` removes those whose process is gone at the next start, and keeps
the ones still being built.
"""

import errno
import os
import re
import shutil
import time
from pathlib import Path

from engine.core.errors import UserError

_FULL_TEXT = ("no space left on device", "storagefull", "os error 28", "disk quota exceeded")
_PARTIAL = re.compile(r"^\..+\.(\d+)-(\d+)\.[^.]+\.partial$")
_LEGACY_PARTIAL = re.compile(r"^\..+\.[a-z0-9_]{8}\.partial$")  # mkdtemp's name before the owner tag
LEGACY_PARTIAL_AGE_S = 24 * 3600  # a .partial without an owner tag (older versions) this old is no longer built


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is the filesystem running out of space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if any(t in text for t in _FULL_TEXT):
            return True
        if "inline_container" in text and ("write" in text or "unexpected pos" in text):
            return True  # torch's zip writer reports a short write without the errno
        exc = exc.__cause__ or exc.__context__
    return False


def _free(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.0f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"


def disk_full_error(exc: BaseException, folder: Path, doing: str, kept: str = "") -> UserError | None:
    """The UserError for `exc` when it is a full disk (else None): "The disk is full: `doing` failed ...".
    `kept` says what is safe; without it, the latest checkpoint of the run folder `folder` is named."""
    if not is_disk_full(exc):
        return None
    folder = Path(folder)
    if not kept:
        ckpts = sorted((folder / "checkpoints").glob("step-*"))
        kept = (
            f"the last complete checkpoint ({ckpts[-1].name}) is kept, and resume continues from it"
            if ckpts
            else "no checkpoint had been saved yet, so a resume starts from step 0"
        )
    return UserError(
        f"The disk is full: {doing} failed ({_free(folder)} free where '{folder}' is); {kept}. Free some space "
        "(old runs, exports, the Hugging Face cache) and try again."
    )


def overwrite_in_place(path: Path, text: str) -> None:
    """Replace a small file's content without a new file: the last resort for status.json on a full disk, where the
    temporary copy of an atomic write finds no room but the file's own block is already allocated."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), 0 where there is no /proc; None when no live process has
    this id (a zombie counts as gone)."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): only whether the id is in use
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def owner_tag() -> str:
    """This process's id and start time, for the names of the temporary folders it builds."""
    return f"{os.getpid()}-{_start_time(os.getpid()) or 0}"


def _owner_alive(pid: int, start: int) -> bool:
    now = _start_time(pid)
    return now is not None and (start == 0 or now in (0, start))  # a reused id has another start time


def remove_stale_partials(*folders: Path, log=None, legacy: bool = False) -> list[Path]:
    """Remove the `.partial` folders directly inside `folders` whose builder process is gone; returns them.

    With `legacy` (only for the workspace's own folders: another program's folder elsewhere could look alike), also
    those of older versions, which carry no owner, once untouched for LEGACY_PARTIAL_AGE_S."""
    removed = []
    for folder in folders:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:  # missing, or not a folder
            continue
        for p in entries:
            if not p.name.endswith(".partial") or p.is_symlink() or not p.is_dir():
                continue
            m = _PARTIAL.match(p.name)
            if m:
                stale = not _owner_alive(int(m.group(1)), int(m.group(2)))
            else:
                old = time.time() - p.stat().st_mtime > LEGACY_PARTIAL_AGE_S
                stale = legacy and old and _LEGACY_PARTIAL.match(p.name) is not None
            if stale:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
                if log:
                    log(f"removed {p}, left half-built by a process that is gone")
    return removed
