"""Gemma 3 (text): Gemma 2's layout with per-head q/k norms (offset 1) and local/global RoPE per layer type."""

from engine.patching.family import Family

FAMILY = Family(
    "gemma3_text",
    norm_offset=1.0,
    attention_kwargs=lambda attn: dict(sliding_window=attn.sliding_window),
    sandwich_norms=True,
)
