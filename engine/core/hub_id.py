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
