"""Files written so that an interruption never leaves one that looks finished.

Every file goes to a temporary name in the same folder first and is renamed into place when complete (a rename is
atomic on one filesystem). Folders are built under a temporary name and renamed the same way. Nothing existing is
overwritten: callers get a UserError instead.
"""

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from engine.core.disk import owner_tag
from engine.core.errors import UserError


def write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write `text` to `path` atomically (replacing a previous version of the same file). `durable`: on the disk
    before it replaces the old version (fsync), so a power cut leaves one or the other; without it a reader still
    sees one or the other, and the write is much cheaper (a training step's progress: `RunLog.progress`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; other users (an Ollama service) may need to read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable)


def append_jsonl(path: str | os.PathLike, obj) -> None:
    """Append one JSON line as one write() of the whole line, so a reader never sees half of it. A write that fails
    part way (a full disk) is cut back off, so the file never keeps a torn line; one left by a crash (or an older
    version) is ended first, so this record starts a line of its own."""
    line = (json.dumps(obj, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            if os.write(fd, line) != len(line):  # a short write means the disk filled up during it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read the complete JSON records of `path`: a last line still being written, and any line that is not a JSON
    object (torn by a crash or a full disk), are skipped."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # still being written: what follows it in this read may be the same line's rest
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


@contextmanager
def new_folder(dest: str | os.PathLike):
    """Build a folder under a temporary name and rename it to `dest` only if the block completes.

    Yields the temporary folder's Path. Refuses (UserError) when `dest` exists, so finished exports and runs are never
    overwritten; on any exception the temporary folder is removed.
    """
    dest = Path(dest)
    if dest.exists():
        raise UserError(f"'{dest}' already exists; choose another folder name (nothing is ever overwritten).")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the builder's id in the name lets engine.core.disk.remove_stale_partials tell a dead builder's folder from a
        # live one
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{owner_tag()}.", suffix=".partial"))
    except OSError as e:  # a parent that is a file, a folder not ours to write in; a full disk is said elsewhere
        if e.errno == errno.ENOSPC:
            raise
        blocker = next((p for p in dest.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            why = f"'{blocker}' is a file, not a folder"
        else:
            why = (e.strerror or str(e)) + (f" ('{e.filename}')" if e.filename else "")
        raise UserError(f"Cannot create '{dest}': {why}; pick another folder.") from None
    # mkdtemp makes it 0700: an Ollama service running as another user could not read an export
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        # its files (written by safetensors, save_pretrained, gguf: none of them syncs) reach the disk before the name
        # says the folder is complete, and the name after it: a power cut leaves the folder whole or not there
        _sync_tree(tmp)
        if dest.exists():  # made meanwhile (another export to the same folder): rename would replace an empty one
            raise FileExistsError(errno.EEXIST, "File exists", str(dest))
        os.rename(tmp, dest)
        _sync(dest.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise UserError(
                f"'{dest}' already exists; choose another folder name (nothing is ever overwritten)."
            ) from None
        raise


def _sync(path: Path) -> None:
    """fsync a file, or a folder's entries (a folder some filesystems cannot sync: EINVAL, passed over)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if not (e.errno == errno.EINVAL and path.is_dir()):
            raise
    finally:
        os.close(fd)


def _sync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder in it and `folder` itself (their entries)."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _sync(Path(root, name))
    for root, _, _ in os.walk(folder, topdown=False):
        _sync(Path(root))


def _umask() -> int:
    """The process's umask, from /proc where it can be read without changing it (the app has other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_free_disk(folder: str | os.PathLike, need_bytes: int, what: str) -> None:
    """Raise a UserError when the filesystem holding `folder` has less than `need_bytes` free."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(
            f"Not enough free disk for {what}: it needs about {need_bytes / 2**30:.1f} GiB and "
            f"'{folder}' has {free / 2**30:.1f} GiB free; free some space or pick another folder."
        )
