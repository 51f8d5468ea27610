"""Whether the hub downloads of this process, and of the runs and exports it starts, use this machine's Hugging Face
token.

A shared app (one with a login: a public link, another address than loopback, a reverse proxy) works for people other
than the machine's owner. Its downloads went out with the owner's token (HF_TOKEN, or the login `hf auth login`
stored), so any logged-in user could fetch the gated and private models that token reaches. The app withholds it
unless its host lends it (`--lend-hf-token`, or TUNESMITH_LEND_HF_TOKEN=1: a Space that sets HF_TOKEN to reach a
gated Llama). An upload never uses it in a shared app (engine.api.exports asks for the user's own).
"""

import os
from pathlib import Path

LEND_ENV = "TUNESMITH_LEND_HF_TOKEN"
WITHHELD_ENV = "TUNESMITH_HF_TOKEN_WITHHELD"  # set by withhold(); the runs and exports started after inherit it
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # huggingface_hub reads both, HF_TOKEN first
HOW_TO_LEND = (
    "the host can lend this machine's Hugging Face token to the app's users by starting it with --lend-hf-token (or "
    "TUNESMITH_LEND_HF_TOKEN=1)"
)


def lend_asked(environ=os.environ) -> bool:
    """Whether TUNESMITH_LEND_HF_TOKEN asks to lend the token (1, true, yes or on)."""
    return environ.get(LEND_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def withhold() -> bool:
    """From now on, hub requests of this process and of every process it starts send no token of this machine: the
    token leaves the environment, and huggingface_hub's implicit token (which would read the stored login too) is
    switched off. Every library here (transformers, datasets, peft) leaves the token to huggingface_hub, so this
    covers their downloads. An explicit token (a user's typed into the Export tab) is still sent.

    Returns whether this machine had a token to withhold (in the environment or a stored login)."""
    from huggingface_hub import constants

    had = any(os.environ.get(name) for name in TOKEN_ENV) or Path(constants.HF_TOKEN_PATH).is_file()
    for name in TOKEN_ENV:
        os.environ.pop(name, None)
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # read when a process imports huggingface_hub: the runs
    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True  # this process imported it already
    os.environ[WITHHELD_ENV] = "1"
    return had


def withheld() -> bool:
    """Whether this process (the app, or a run it started) sends no token of the machine: a refusal of the hub then
    says what the host can do."""
    return os.environ.get(WITHHELD_ENV) == "1"
