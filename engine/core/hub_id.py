"""What a Hugging Face hub repository id looks like (owner/name), for models and datasets alike.

Anything else given where a model or dataset is asked for is a local path.
"""

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# a repository's web page, as copied from the browser: huggingface.co/owner/name, /datasets/owner/name, /tree/main...
_HUB_URL = re.compile(r"^(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co)/(?:datasets/|spaces/)?([^/\s]+/[^/\s?#]+)")


def url_hint(text: str) -> str:
    """For a hub web address, the sentence that says to give its id instead; else ""."""
    m = _HUB_URL.match(text.strip())
    if m is None or not HUB_ID.match(m.group(1)):
        return ""
    return f"'{text.strip()}' is a web address; give its hub id '{m.group(1)}' instead."


def refusal(model: str, exc: BaseException) -> str | None:
    """The sentence for the hub refusing model `model` (huggingface_hub's error `exc`), or None for any other error.
    Without a token the hub answers a gated model's licence not accepted with 403 and a private repository with 401
    (as for one that does not exist); a token comes from HF_TOKEN or the login `hf auth login` stored."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return (
            f"'{model}' is gated: accept its licence on huggingface.co/{model} while logged in, then log in here "
            "with `hf auth login` (or set HF_TOKEN) and retry."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"No model '{model}' on the Hugging Face hub; check the spelling, or, if it is private, log in with "
            "`hf auth login` (or set HF_TOKEN) as a user who can read it."
        )
    return None
