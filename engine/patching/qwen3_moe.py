"""Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorm, sliding window per layer) over mixture-of-experts MLPs, which
engine.patching.moe's grouped expert path runs (the dense FastMLP does not apply)."""

from engine.patching.family import Family

FAMILY = Family("qwen3_moe", attention_kwargs=lambda attn: dict(sliding_window=attn.sliding_window))
