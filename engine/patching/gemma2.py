"""Gemma 2: Gemma's norms and GeGLU, four norms per layer, sliding windows on alternate layers, attention logit
soft-capping passed to the attention call, and final-logit soft-capping in the loss."""

from engine.patching.family import Family

FAMILY = Family(
    "gemma2",
    norm_offset=1.0,
    attention_kwargs=lambda attn: dict(sliding_window=attn.sliding_window, softcap=attn.attn_logit_softcapping),
    sandwich_norms=True,
)
