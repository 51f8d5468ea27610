"""Qwen2: Llama's layout with q/k/v biases; sliding window per layer type."""

from engine.patching.family import Family

FAMILY = Family("qwen2", attention_kwargs=lambda attn: dict(sliding_window=attn.sliding_window))
