"""What a Hugging Face hub repository id looks like (owner/name), for models and datasets alike.

Anything else given where a model or dataset is asked for is a local path.
"""

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a causal LM (or a LoRA adapter) needs from a hub repository; skips .bin/.pt/.gguf duplicates of the weights.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
# a repository's web page, as copied from the browser: huggingface.co/owner/name, /datasets/owner/name, /tree/main...
_HUB_URL = re.compile(r"^(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co)/(?:datasets/|spaces/)?([^/\s]+/[^/\s?#]+)")


def url_hint(text: str, spaces: bool = True) -> str:
    """For a hub web address, the sentence that says to give its id instead; with `spaces`, for an id typed with
    spaces (a model's name as its page titles it, 'Qwen/Qwen3 4B'), the one that says ids have none; else ""."""
    text = text.strip()
    m = _HUB_URL.match(text)
    if m is not None and HUB_ID.match(m.group(1)):
        return f"'{text}' is a web address; give its hub id '{m.group(1)}' instead."
    meant = re.sub(r"\s+", "-", re.sub(r"\s*/\s*", "/", text))
    if spaces and meant != text and HUB_ID.match(meant) and not text.startswith((".", "/", "~")):
        return f"No folder '{text}' here, and hub ids have no spaces: did you mean '{meant}'?"
    return ""


def refusal(model: str, exc: BaseException) -> str | None:
    """The sentence for the hub refusing model `model` (huggingface_hub's error `exc`), or None for any other error.
    Without a token the hub answers a gated model's licence not accepted with 403 and a private repository with 401
    (as for one that does not exist); a token comes from HF_TOKEN or the login `hf auth login` stored, except in a
    shared app that does not lend it (engine.core.hub_token), where the sentence says how the host lends it."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from engine.core.hub_token import HOW_TO_LEND, withheld

    if isinstance(exc, RepositoryNotFoundError) and withheld():  # a shared app: the machine's login is not sent
        kind = "is gated" if isinstance(exc, GatedRepoError) else "is not on the hub or is private"
        return (
            f"'{model}' {kind}, and this shared app downloads without this machine's Hugging Face token: "
            f"{HOW_TO_LEND}, or put the model's folder in the workspace."
        )
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
