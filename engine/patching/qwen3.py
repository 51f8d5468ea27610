"""Qwen3: Llama's layout plus per-head RMSNorm of q and k before RoPE; sliding window per layer type."""

from engine.patching.family import Family

FAMILY = Family("qwen3", attention_kwargs=lambda attn: dict(sliding_window=attn.sliding_window))
