"""Carry out an engine.memory.offload plan on a loaded model: checkpoint functions with activation offload, weight
streaming, the host embedding, tiled MLPs and CUDA graphs.
"""

from engine.memory.activations import ActivationStore, Checkpoint
from engine.memory.host_embedding import host_embedding
from engine.memory.offload import Plan
from engine.memory.weights import WeightStream


def install(model, plan_: Plan, device, log=print):
    """Apply `plan_` to a loaded model whose layers have checkpointing enabled (engine.memory.checkpointing.install):
    the input embedding to host RAM, streamed layers' weights to host RAM, and our checkpoint function on every
    decoder layer (replaying CUDA graphs when the plan says so and the layers can be captured). Returns the
    WeightStream (or None) for the training loop's timing log."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not plan_.active:
        return None
    # A tight budget leaves no room for the caching allocator's fragmentation (a 65536-token llama8b step failed
    # with 3.3 GiB reserved but unallocated): grow segments in place instead.
    if device.type == "cuda":  # (tests carry plans out on the CPU too)
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    if plan_.mlp_tile:
        from engine.patching.modules import FastMLP

        for module in model.modules():
            if isinstance(module, FastMLP):
                module.tile = plan_.mlp_tile
    if plan_.host_embedding:
        net.set_input_embeddings(host_embedding(net.get_input_embeddings(), device))
        torch.cuda.empty_cache()
    stream = None
    if plan_.streamed:
        stream = WeightStream({i: layers[i] for i in plan_.streamed}, device, plan_.ring_slots, log)
    store = ActivationStore(device) if plan_.offload_activations else None
    from engine.patching import graphs as cuda_graphs

    eligible = plan_.graphs and cuda_graphs.eligible_layers(model)
    graphs = cuda_graphs.CheckpointGraphs(layers, log, plan_.shapes) if eligible else None
    if graphs is not None:  # each padding-free bucket costs a capture: engine.data.batching.plan_buckets
        net.shape_graphs = True

    def last_checkpointed():
        return max(i for i, layer in enumerate(layers) if layer.gradient_checkpointing)

    for index, layer in enumerate(layers):
        layer._gradient_checkpointing_func = Checkpoint(
            index, store, stream, last_checkpointed, graphs, plan_.keep_attention, plan_.keep_dequantized
        )
    if stream is not None:

        def tick(module, args):
            if module.training and torch.is_grad_enabled():
                stream.tick()

        net.base_model.register_forward_pre_hook(tick)
    return stream
