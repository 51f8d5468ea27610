"""Gemma 1: RMSNorm `(1 + w) * x` (offset 1), GeGLU with tanh-approximate GELU."""

from engine.patching.family import Family

FAMILY = Family("gemma", norm_offset=1.0)
