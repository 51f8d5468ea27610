"""Mixtral: Mistral's attention (the config's sliding window) over mixture-of-experts MLPs, which
engine.patching.moe's grouped expert path runs (the dense FastMLP does not apply)."""

from engine.patching.family import Family

FAMILY = Family(
    "mixtral", attention_kwargs=lambda attn: dict(sliding_window=getattr(attn.config, "sliding_window", None))
)
