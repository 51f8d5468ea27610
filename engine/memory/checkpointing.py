"""Which decoder layers recompute their activations in the backward: only as many as the VRAM budget requires.

A checkpointed layer keeps just its input and runs its forward a second time in the backward (about a third more
compute for that layer); an un-checkpointed one keeps all its activations. On a big card nothing needs recomputing;
on a small one every layer does. The choice depends on the tokens in a micro-batch, so it is made before each forward
from that batch's shape (and remembered per shape), with engine.memory.estimate's model of peak memory.
"""

import math

from engine.memory.estimate import (
    ESTIMATE_SLACK,
    Arch,
    estimate,
    expert_factor_bytes,
    graph_shape_bytes,
    layer_activation_bytes,
    layers_activation_bytes,
)

SLACK = ESTIMATE_SLACK  # the estimate's error margin, as in Estimate.fits (the allocator's share is in the estimate)


def layers_to_checkpoint(arch: Arch, method: str, tokens: int, budget_gib: float | None, fused_loss: bool, **kw) -> int:
    """How many of `arch.layers` layers to checkpoint so the step's estimated peak stays within the budget: none when
    the step fits without any (as engine.memory.offload's plan checks first; the count below is linear in the layers
    and overstates one layer's cost, that of rebuilding a checkpointed one), else the fewest by that count. All of
    them when there is no budget (the CPU) or when even that does not fit."""
    if budget_gib is None:
        return arch.layers
    none = estimate(arch, method, tokens, 1, checkpointing=False, fused_loss=fused_loss, **kw)
    if none.peak_vram_gib <= budget_gib / SLACK:
        return 0
    all_ckpt = estimate(arch, method, tokens, 1, checkpointing=True, fused_loss=fused_loss, **kw)
    spare = budget_gib / SLACK - all_ckpt.peak_vram_gib
    kept = 0 if kw.get("offload_activations") else tokens * arch.hidden * 2  # an offloaded input costs no VRAM
    per_layer = (layer_activation_bytes(arch, tokens) + expert_factor_bytes(arch, method, **kw) - kept) / 2**30
    free = max(0, min(arch.layers, math.floor(spare / per_layer)))
    return arch.layers - free


def fits_checkpointed(arch: Arch, method: str, tokens: int, budget_gib: float | None, fused_loss: bool, **kw) -> bool:
    """Whether the step fits the budget with every layer checkpointed."""
    if budget_gib is None:
        return True
    peak = estimate(arch, method, tokens, 1, checkpointing=True, fused_loss=fused_loss, **kw).peak_vram_gib
    return peak <= budget_gib / SLACK


def layer_graphs_fit(arch: Arch, method: str, tokens: int, budget_gib: float | None, fused_loss: bool, **kw) -> bool:
    """Whether a step of `tokens` tokens with no layer recomputed fits the budget with every layer's passes captured
    as CUDA graphs (engine.patching.graphs.install), as many shapes as the plan holds, each of this size; and whether
    the plan's largest micro-batch (`graph_tokens`) still fits, every layer recomputed, beside what those graphs keep
    for the rest of the run (`layer_graphs_held`)."""
    if budget_gib is None:
        return False
    kw = {**kw, "layer_graphs": True}
    largest = kw.pop("graph_tokens", None)
    peak = estimate(arch, method, tokens, 1, checkpointing=False, fused_loss=fused_loss, **kw).peak_vram_gib
    if peak > budget_gib / SLACK:
        return False
    if not largest or largest <= tokens:
        return True
    rest = budget_gib - layer_graphs_held(arch, tokens, **kw)
    return fits_checkpointed(arch, method, largest, rest, fused_loss, **{**kw, "layer_graphs": False})


def layer_graphs_held(arch: Arch, tokens: int, **kw) -> float:
    """GiB that every layer's graphs captured at `tokens` tokens keep for the rest of the run: their memory pool (the
    captured step's activations) and their static buffers, for as many shapes as the plan holds."""
    shapes = kw.get("graph_shapes") or 1
    pool = layers_activation_bytes(arch, tokens, range(arch.layers), kw.get("mlp_tile"))
    return (pool + shapes * graph_shape_bytes(arch, tokens, 0, False, 0)) / 2**30


def usable_gib(budget_gib: float | None, device) -> float | None:
    """The budget, lowered to what this GPU can still give this process: its free memory plus what the process
    holds already (the model is loaded by now). Another process on the card (the app chatting with a model while
    this run trains) leaves less than the card's total."""
    import torch

    if budget_gib is None or device.type != "cuda" or not torch.cuda.is_available():
        return budget_gib
    free, _ = torch.cuda.mem_get_info(device)
    return min(budget_gib, (free + torch.cuda.memory_reserved(device)) / 2**30)


def install(
    model, method: str, budget_gib: float | None, fused_loss: bool, log=print, always=(), **estimate_kw
) -> None:
    """Enable checkpointing on `model`'s decoder layers, then before each forward switch it off on as many layers as
    the budget holds for that micro-batch's token count. Layers in `always` (streamed by engine.memory.offload) always
    recompute; `estimate_kw` carries the offload plan's choices into the estimate. A plan that keeps dequantized
    weights or attention outputs for the recompute (engine.memory.activations.Checkpoint) drops them, in that order, for
    micro-batches they do not fit."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    order = [*always, *(i for i in range(len(layers)) if i not in set(always))]  # which layers recompute first
    arch = Arch.from_config(model.config.to_dict())
    decided: dict[int, int] = {}
    said = {}  # the decision last logged: a line when it changes, not for every new micro-batch size

    def choose(module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return  # generation and evaluation keep no activations for a backward
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        tokens = x.shape[0] * x.shape[1]
        if tokens not in decided:
            budget = usable_gib(budget_gib, x.device)
            graphed = getattr(model, "layer_graph_tokens", None)  # engine.patching.graphs.install(per_shape=True)
            if graphed and tokens not in graphed:  # their pool stays reserved (usable_gib counts it as this run's)
                budget -= layer_graphs_held(arch, max(graphed), **estimate_kw)
            kw = dict(estimate_kw)
            lean = {**kw, "keep_dequantized": False, "keep_attention": False}
            if not fits_checkpointed(arch, method, tokens, budget, fused_loss, **kw) and fits_checkpointed(
                arch, method, tokens, budget, fused_loss, **lean
            ):  # no room at this micro-batch's size for all the plan keeps: the dequantized weights go first
                for flag in ("keep_dequantized", "keep_attention"):
                    if kw.get(flag) and not fits_checkpointed(arch, method, tokens, budget, fused_loss, **kw):
                        kw[flag] = False
            k = max(layers_to_checkpoint(arch, method, tokens, budget, fused_loss, **kw), len(always))
            decided[tokens] = k, kw.get("keep_attention", False), kw.get("keep_dequantized", False)
            if graphed is not None and k == 0 and layer_graphs_fit(arch, method, tokens, budget, fused_loss, **kw):
                graphed.add(tokens)
                for other in [t for t in decided if t not in graphed]:  # decided beside no graphs: decide again
                    del decided[other]
                log(f"cuda graphs: every layer's passes captured at {tokens} tokens per micro-batch (none recomputes)")
            where = f"{budget:.1f} GiB budget" if budget else "no GPU budget"
            where += ", attention outputs kept for the recompute" if decided[tokens][1] else ""
            where += ", gate/up dequantized once for it" if decided[tokens][2] else ""
            if said.get("decision") != decided[tokens]:
                said["decision"] = decided[tokens]
                log(
                    f"checkpointing: {k} of {len(layers)} layers recompute at {tokens} tokens per micro-batch ({where})"
                )
            if not fits_checkpointed(arch, method, tokens, budget, fused_loss, **lean) and not said.get("over"):
                said["over"] = True  # longer than planned for: said once
                log(
                    f"memory: {tokens} tokens in one micro-batch need more than the {budget:.1f} GiB budget holds "
                    "even with every layer recomputed; a step that runs out of memory stops the run with a "
                    "checkpoint (lower batch_size or max_seq_length)"
                )
        k, keep, dequantized = decided[tokens]
        recompute = set(order[:k])
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i in recompute
            function = getattr(layer, "_gradient_checkpointing_func", None)
            if hasattr(function, "keep_attention"):  # engine.memory.activations.Checkpoint
                function.keep_attention, function.keep_dequantized = keep, dequantized

    model.base_model.register_forward_pre_hook(choose, with_kwargs=True)
