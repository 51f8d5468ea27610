"""Which files the app may read and write: the workspace (runs/, data/, exports/), user-typed names, and, in a shared
app, the refusal of any local path outside the workspace's runs/, data/ and exports/ (and Gradio's uploads), of a
hidden one, and of a link leading out of them.
"""

import os
from pathlib import Path

from engine.core.errors import UserError

MODEL_FIX = "put the model folder inside it, or pick a hub model"  # what to do about a model outside a shared app
SOURCE_FIX = "pick a run or an exported GGUF file, or a hub model"  # ... about a chat, eval or export source
NAME_BYTES = 200  # the longest name safe_name takes, in UTF-8 bytes
WORKSPACE_ENV = "TUNESMITH_WORKSPACE"  # the app's --workspace: the folder of runs/, data/ and exports/
UPLOADS = ".uploads"  # a shared app's upload folder in its workspace: hidden, so no run, data file or export
_allowed_roots: list[Path] | None = None  # set by restrict_files(): the folders a shared app may read


def runs_dir() -> Path:
    """Where run folders live: $TUNESMITH_RUNS, else runs/ in $TUNESMITH_WORKSPACE, else ./runs."""
    named = os.environ.get("TUNESMITH_RUNS")
    return (Path(named) if named else _named_workspace() / "runs").expanduser().resolve()


def workspace() -> Path:
    """The folder the app reads and writes: runs/, data/ and exports/ ($TUNESMITH_WORKSPACE, else the parent of
    runs_dir())."""
    return _named_workspace().resolve() if os.environ.get(WORKSPACE_ENV) else runs_dir().parent


def _named_workspace() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or ".").expanduser()


def safe_name(name: str, what: str = "name") -> str:
    """A file or folder name typed by a user: no path separators, no '..', not empty, at most NAME_BYTES long."""
    name = name.strip()
    if not name or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        raise UserError(
            f"The {what} '{name}' is not allowed: use letters, digits, '-', '_' and '.', with no path "
            "separators and not starting with a dot."
        )
    # a folder name holds 255 bytes; the temporary name it is built under (engine.core.files.new_folder) adds ~45
    if len(name.encode()) > NAME_BYTES:
        raise UserError(
            f"The {what} is too long for a file name; shorten it to {NAME_BYTES} characters or fewer "
            "(a third of that in Chinese or Japanese)."
        )
    return name


def uploads_dir() -> Path:
    """Where a shared app keeps its users' uploads (app.py names it Gradio's GRADIO_TEMP_DIR, unless that is set):
    .uploads/ in the workspace, not Gradio's /tmp/gradio, which every Gradio app of the machine shares."""
    return workspace() / UPLOADS


def shared_folders() -> list[Path]:
    """The workspace's folders whose files a shared app's users may name: runs/, data/ and exports/. The rest of the
    workspace (the project folder, often: its .git, .venv, notes and keys) is not theirs."""
    return [runs_dir(), *((workspace() / name).resolve() for name in ("data", "exports"))]


def restrict_files(uploads: list = ()) -> None:
    """From now on, refuse local paths outside the workspace's shared_folders() and `uploads` (Gradio's upload
    folder); the app calls this when it is reachable from elsewhere."""
    global _allowed_roots
    _allowed_roots = shared_folders() + [Path(r).resolve() for r in uploads]


def check_access(value: str, fix: str = "upload the file instead", roots: list[Path] | None = None) -> None:
    """Raise a UserError for a local path outside the allowed folders (or `roots`, some of them), a hidden one (a
    name starting with '.') or a link leading out of them, and for a folder holding such a link; hub ids and
    unrestricted apps pass. `fix` ends the sentence: what to do instead."""
    if _allowed_roots is None or not value:
        return
    roots = roots or _allowed_roots
    path = Path(os.path.expanduser(value))
    if not path.exists() and not value.startswith((".", "/", "~")):
        return  # a hub id, not a local path
    real = path.resolve()
    root = _root_of(real, roots)
    if root is None and _root_of(Path(os.path.abspath(path)), roots) is not None:
        raise UserError(
            f"'{value}' is a link to a file outside the workspace's runs/, data/ and exports/ ({workspace()}), which "
            "a shared app does not open; copy that file in instead of linking it."
        )
    if root is None:
        raise UserError(
            f"This app is shared, so it only opens files inside its workspace's runs/, data/ and exports/ folders "
            f"({workspace()}); {fix}."
        )
    # as named too: a hidden name is refused, even where it links to a file that is not hidden
    if _hidden_below(real, roots) or _hidden_below(Path(os.path.abspath(path)), roots):
        raise UserError(
            f"'{value}' is hidden (a name starting with '.'), and a shared app opens no hidden file or folder: rename "
            "it without the leading dot."
        )
    if real.is_dir():
        check_links(real, roots)


def _root_of(path: Path, roots: list[Path]) -> Path | None:
    return next((root for root in roots if path == root or root in path.parents), None)


def _hidden_below(path: Path, roots: list[Path]) -> bool:
    root = _root_of(path, roots)
    return root is not None and any(part.startswith(".") for part in path.relative_to(root).parts)


def check_source(source: str) -> None:
    """check_access for a chat, eval or export source and, in a shared app, for the base model that a run's job.yaml
    or an adapter's config names (a folder handed over could name any path there). A source is a model: in a shared
    app it is in the workspace, never among the uploads (a .gguf uploaded there would be parsed by llama.cpp)."""
    if _allowed_roots is None:
        return
    check_access(source, SOURCE_FIX, shared_folders())
    if source.lower().endswith(".gguf"):
        return
    from engine.chat.infer import locate

    base, adapter, tokenizer = locate(source)
    check_access(base, SOURCE_FIX, shared_folders())
    if (read := as_processes_read(base)) != base:  # a relative base, as an export reads it
        check_access(read, SOURCE_FIX, shared_folders())
    for folder in (Path(source), adapter, tokenizer):  # the run's or checkpoint's adapter and tokenizer are read too
        if folder is not None and folder.is_dir():
            check_access(str(folder), SOURCE_FIX, shared_folders())


def as_processes_read(value: str) -> str:
    """A relative path as the runs and exports the app starts read it from a job.yaml: from the project folder, where
    they work (engine.api.processes.ROOT), which need not be the app's working folder (--workspace); else `value`."""
    from engine.api.processes import ROOT

    path = Path(value) if value else None
    return str(ROOT / path) if path and not path.is_absolute() and (ROOT / path).exists() else value


def check_links(folder: Path, roots: list[Path] | None = None) -> None:
    """In a shared app, refuse a folder holding a link to anything outside the allowed folders (or `roots`): a run
    folder, a model or a dataset folder handed over (unpacked with its links) could link its log.txt, adapter,
    tokenizer or a text file to any file of this machine, which the app would then show or load. A link to a folder
    inside is followed, as the readers follow it."""
    if _allowed_roots is None:
        return
    roots = roots or shared_folders()
    seen, todo = set(), [folder]
    while todo:
        top = todo.pop()
        for parent, dirs, files in os.walk(top):
            for name in dirs + files:
                link = Path(parent, name)
                if not link.is_symlink():
                    continue
                real = link.resolve()
                if _root_of(real, roots) is None:
                    raise UserError(
                        f"'{link.relative_to(top)}' in '{top.name}' is a link to a file outside the workspace's "
                        f"runs/, data/ and exports/ ({workspace()}), which a shared app does not open; copy that file "
                        "in instead of linking it."
                    )
                if real.is_dir() and real not in seen:
                    seen.add(real)
                    todo.append(real)


def tidy_workspace() -> list[Path]:
    """Remove the half-built folders (`.partial`) that dead processes left in the workspace's runs, checkpoints and
    exports (the app calls this at start); folders a live run or export is building are kept."""
    from engine.core.disk import remove_stale_partials

    runs = runs_dir()
    folders = [runs, workspace() / "exports", workspace() / "data"]
    if runs.is_dir():
        for run in runs.iterdir():
            if run.is_dir() and not run.is_symlink():
                folders.append(run)
                if not (run / "checkpoints").is_symlink():  # a run folder handed over may link it to any folder
                    folders.append(run / "checkpoints")
    return remove_stale_partials(*folders, legacy=True)


def allowed_roots() -> list[Path] | None:
    """The folders a shared app may read (restrict_files), or None when the app is not shared."""
    return _allowed_roots
