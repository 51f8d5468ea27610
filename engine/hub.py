"""Upload a finished export folder to the Hugging Face hub.

The token comes from the caller (the app's field) or HF_TOKEN and goes only to huggingface_hub's HTTP headers: it is
never logged, written to a file, or put in an exception's text (an error names the exception type and the message
with the token scrubbed, and is raised without its chained cause, whose repr could carry request details).
"""

import os
from pathlib import Path

from engine.errors import UserError

_REPO = r"^[A-Za-z0-9][\w.-]*/[\w.-]+$"


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def push(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False, log=print) -> str:
    """Upload every file of the finished export `folder` to the model repository `repo_id` (created if missing).

    Args:
        folder: a complete export folder (hidden files, such as partial uploads' leftovers, are skipped).
        repo_id: "user/name" or "org/name".
        token: a write token; None reads HF_TOKEN.
        private: create the repository private (an existing repository keeps its visibility).
        log: progress lines.

    Returns:
        The repository's URL. A failure raises a UserError and leaves the export folder as it was.
    """
    import re

    folder = Path(folder)
    token = token or os.environ.get("HF_TOKEN") or ""
    if not token:
        raise UserError(
            "Uploading to the Hugging Face hub needs a write token: set HF_TOKEN (create one at "
            "huggingface.co/settings/tokens) or enter it in the Export tab. The export itself is complete in "
            f"'{folder}'."
        )
    if not re.match(_REPO, repo_id):
        raise UserError(f"'{repo_id}' is not a hub repository name; use 'user/name'.")
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
