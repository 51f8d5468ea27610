"""The Hugging Face hub: upload a finished export folder, and download a model with progress the app can poll.

Upload: the token comes from the caller (the app's field), HF_TOKEN or the login `hf auth login` stored, and goes only
to huggingface_hub's HTTP headers: it is never logged, written to a file, or put in an exception's text (an error
names the exception type and the message with the token scrubbed, and is raised without its chained cause, whose
repr could carry request details).

Download: engine.models.loading.resolve_model (snapshot_download) runs on a background thread; the progress is the size
of the files in the model's hub cache folder (the .incomplete files being written included) against the total the hub
lists for the files resolve_model fetches, so it needs no hook into huggingface_hub's downloader.
"""

import os
import threading
from pathlib import Path

from engine.core.errors import UserError

_REPO = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$"  # the hub takes ASCII names only


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def check_target(repo_id: str, token: str | None = None) -> str:
    """The token to upload with (`token`, else HF_TOKEN, else the one `hf auth login` stored), or a UserError when
    there is none or `repo_id` is not a repository name; checked before an export starts, so a bad upload target is
    known at once."""
    import re

    from huggingface_hub import get_token

    # get_token reads HF_TOKEN, then the login `hf auth login` (or notebook_login()) stored in the Hugging Face home
    token = token or get_token() or ""
    if not token:
        raise UserError(
            "Uploading to the Hugging Face hub needs a write token: set HF_TOKEN, enter it in the Export tab, or log "
            "in with `hf auth login`; create one at huggingface.co/settings/tokens."
        )
    if not re.match(_REPO, repo_id):
        raise UserError(
            f"'{repo_id}' is not a hub repository name; use 'user/name' in ASCII letters, digits, '-', '_' and '.'."
        )
    return token


def push(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False, log=print) -> str:
    """Upload every file of the finished export `folder` to the model repository `repo_id` (created if missing).

    Args:
        folder: a complete export folder (hidden files, such as partial uploads' leftovers, are skipped).
        repo_id: "user/name" or "org/name".
        token: a write token; None reads HF_TOKEN, else the login `hf auth login` stored.
        private: create the repository private (an existing repository keeps its visibility).
        log: progress lines.

    Returns:
        The repository's URL. A failure raises a UserError and leaves the export folder as it was.
    """
    folder = Path(folder)
    try:
        token = check_target(repo_id, token)
    except UserError as e:
        raise UserError(f"{e} The export itself is complete in '{folder}'.") from None
    if not folder.is_dir():
        raise UserError(f"'{folder}' is not an export folder.")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    log(f"hub: uploading {folder.name} to {repo_id} ({'private' if private else 'public'} if new)")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"Upload {folder.name} exported by Tunesmith",
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as e:  # network, auth, quota: all end the same way, and the export stays as it is
        detail = _scrub(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", token)
        raise UserError(
            f"Uploading '{folder.name}' to '{repo_id}' failed ({detail[:300]}). The export is complete in "
            f"'{folder}'; check the token's write access and the connection, then push again."
        ) from None
    url = f"https://huggingface.co/{repo_id}"
    log(f"hub: uploaded {folder.name} to {url}")
    return url


def cache_folder(model: str) -> Path:
    """The hub cache folder of a model id (huggingface_hub's layout: models--owner--name)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model")


def folder_bytes(folder: Path) -> int:
    """Bytes in the regular files under `folder`, partial downloads included; symlinks (a cache snapshot's links to
    its blobs) are skipped so nothing counts twice. 0 for a folder that does not exist yet."""
    total = 0
    for f in Path(folder).rglob("*"):
        try:
            if not f.is_symlink() and f.is_file():
                total += f.stat().st_size
        except OSError:  # a partial file renamed into place between listing and stat
            continue
    return total


def hub_bytes(model: str) -> int | None:
    """Total size of the files resolve_model downloads for `model`, from the hub's file list; None when it cannot be
    read (offline, gated, unknown id: the download itself then says why)."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    from engine.core.hub_id import HUB_FILES

    try:
        info = HfApi().model_info(model, files_metadata=True)
    except Exception:  # noqa: BLE001  any failure only means the progress has no total
        return None
    files = [f for f in info.siblings or [] if any(fnmatch(f.rfilename, p) for p in HUB_FILES)]
    return sum(f.size or 0 for f in files)


class Download:
    """A hub model being fetched into the local cache by engine.models.loading.resolve_model on a daemon thread.

    `state` is "downloading", then "done" (`folder` is the local snapshot) or "failed" (`message` is the sentence
    resolve_model wrote). `progress()` may be called from any thread.
    """

    def __init__(self, model: str):
        self.model = model
        self.state, self.message, self.folder = "downloading", "", None
        self.total: int | None = None
        self.cache = cache_folder(model)
        threading.Thread(target=self._run, name=f"download {model}", daemon=True).start()

    def _run(self) -> None:
        from engine.models.loading import resolve_model

        self.total = hub_bytes(self.model)
        try:
            self.folder = resolve_model(self.model, log=lambda msg: None)
        except UserError as e:
            self.state, self.message = "failed", str(e)
            return
        except Exception as e:  # noqa: BLE001  a thread's error must become the sentence the app shows
            self.state = "failed"
            self.message = f"Could not download '{self.model}' ({type(e).__name__}); check the connection and retry."
            return
        self.state, self.message = "done", f"Downloaded '{self.model}' to '{self.folder}'."

    def progress(self) -> tuple[int, int | None]:
        """(bytes in the cache folder now, total bytes or None); a finished download reports its total as done."""
        done = folder_bytes(self.cache)
        if self.total is not None and (self.state == "done" or done > self.total):
            done = self.total  # other revisions' files may share the folder
        return done, self.total
