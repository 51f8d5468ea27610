"""CUDA graphs of the decoder layers' forward and backward, for training steps that recompute nothing.

A small model's step is bound by the CPU, not the GPU: on an H100, torch.profiler found qwen3_0.6b at 4096 tokens
keeping the GPU busy 51 ms of a 215 ms step, the rest spent issuing kernels from Python (2,356 matmuls alone in two
steps, ~34 us of CPU each). Captured with torch.cuda.make_graphed_callables, every layer's forward and backward
replays as one launch each.

A layer replays its graph only when the step allows it: training with gradients, no layer of this shape checkpointed
(engine.checkpointing decided so), no attention mask (unpadded, unpacked batches: plain causal attention), no KV
cache, and the captured shape. Anything else runs the layer as it is. `Captures` decides what is held: the first
training step's shape is captured (fixed-length batches keep it: the benchmark, pretraining pieces, truncated long
examples), and the graphs are dropped as soon as a step cannot use them, since their memory pool holds a whole
step's activations; no later capture is tried (see `Captures.before_step`). Families whose attention needs a mask
or a soft cap (sliding windows, Gemma 2) are not captured. The model's module tree is unchanged (each layer gets an
instance `forward`), so adapters save as before.
"""

import types

import torch
from torch import nn


class _LayerCall(nn.Module):
    """The layer's own forward with the tensors a graph takes as positional inputs; its parameters are the layer's."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden, cos, sin):
        return type(self.layer).forward(self.layer, hidden, position_embeddings=(cos, sin), attention_mask=None)


class Captures:
    """The graphs held (one shape at most) and whether a capture is still possible."""

    def __init__(self):
        self.graphs: dict[tuple, list] = {}  # (hidden shape, cos shape, dtype) -> graphed callable per layer
        self.steps = 0
        self.enabled = True  # False once a capture ran out of memory

    def before_step(self, key) -> bool:
        """Called once per training forward with its shape key (None when the step cannot use graphs): drops graphs
        of any other shape and says whether to capture `key` now, which is only ever at the first step. After an
        eager backward the adapters' gradient nodes remember the default stream, and on torch 2.11 a later capture
        then fails ("operation would make the legacy stream depend on a capturing blocking stream"; newer torch has
        set_override_stale_capture_stream for it)."""
        first = self.steps == 0
        self.steps += 1
        if key in self.graphs:
            return False
        self.graphs.clear()
        return self.enabled and first and key is not None


def eligible_layers(model) -> list | None:
    """The decoder layers, when every one can be captured (fast-path attention without window or soft cap)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from engine.patching.modules import FastAttention, FastMLP

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        attn = getattr(layer, "self_attn", None)
        if not isinstance(attn, FastAttention) or not isinstance(getattr(layer, "mlp", None), FastMLP):
            return None
        if getattr(attn, "sliding_window", None) is not None or getattr(attn, "attn_logit_softcapping", None):
            return None
    return layers or None


def install(model, log=print) -> bool:
    """Give each decoder layer a forward that replays captured graphs when the step allows; False when the model's
    layers cannot be captured (the reason is logged)."""
    layers = eligible_layers(model)
    if layers is None:
        log("cuda graphs: off (a layer needs an attention mask, a window or a soft cap, or is not on the fast path)")
        return False
    held = Captures()
    graphs = held.graphs

    def capture(key, hidden, cos, sin):
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        calls = [_LayerCall(layer) for layer in layers]
        samples = tuple(
            (torch.randn_like(hidden).requires_grad_(), cos.detach().clone(), sin.detach().clone()) for _ in calls
        )
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
                graphs[key] = list(torch.cuda.make_graphed_callables(tuple(calls), samples))
        except torch.cuda.OutOfMemoryError:
            graphs.clear()
            held.enabled = False
            torch.cuda.empty_cache()
            log("cuda graphs: off for this run (capturing them ran out of GPU memory); the layers run as they are")
            return
        log(f"cuda graphs: captured {len(calls)} layers' forward and backward for batch {tuple(hidden.shape[:2])}")

    for index, layer in enumerate(layers):

        def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None, **kw):
            cos, sin = position_embeddings if position_embeddings is not None else (None, None)
            usable = (
                self.training
                and torch.is_grad_enabled()
                and not self.gradient_checkpointing
                and attention_mask is None
                and past_key_values is None
                and cos is not None
                and hidden_states.is_cuda
            )
            key = (tuple(hidden_states.shape), tuple(cos.shape), hidden_states.dtype) if usable else None
            if self.graph_index == 0 and self.training and torch.is_grad_enabled() and held.before_step(key):
                capture(key, hidden_states, cos, sin)
            if key in graphs:
                if not hidden_states.requires_grad:  # the graph was captured with an input that needs a gradient
                    hidden_states = hidden_states.detach().requires_grad_()
                return graphs[key][self.graph_index](hidden_states, cos, sin)
            return type(self).forward(
                self,
                hidden_states,
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
                **kw,
            )

        layer.graph_index = index
        layer.forward = types.MethodType(forward, layer)
    return True
