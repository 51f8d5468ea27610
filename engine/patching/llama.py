"""Llama (1-3.x): RMSNorm `w * x`, SwiGLU, rotate-half RoPE; the attention call takes no extras."""

from engine.patching.family import Family

FAMILY = Family("llama")
