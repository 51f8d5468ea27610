"""Mistral: Llama's layout; the attention call passes the config's sliding window."""

from engine.patching.family import Family

FAMILY = Family(
    "mistral", attention_kwargs=lambda attn: dict(sliding_window=getattr(attn.config, "sliding_window", None))
)
