"""Weight streaming and dense copies, as engine.memory.offload plans them: the frozen linear weights of streamed
layers in pinned host RAM, copied into a ring of GPU slots ahead of use (`Ring` decides which, `WeightStream` copies),
loading a model straight into that layout, and 16-bit copies of NF4 weights where the card has room (`keep_dense`).
"""

import math

from engine.memory.estimate import GIB
from engine.memory.expert_fetch import ExpertFetch
from engine.memory.offload import LOG_EVERY, RING_SLOTS, Plan


def _aligned(n: int) -> int:
    return -(-n // 256) * 256  # slot offsets aligned for any dtype and vectorized loads


class Ring:
    """Which streamed layer each GPU slot holds, and which to load next.

    A step uses the streamed layers in the order s0 .. sn-1 (forward), then sn-1 .. s0 (backward), then again. `use`
    is told each use and returns the (layer, slot) loads to issue: the layer itself if it is not resident, then the
    next `slots - 1` distinct layers of that cycle. A load evicts the resident layer whose next use is furthest away,
    never the one in use.
    """

    def __init__(self, streamed: list[int], slots: int):
        self.cycle = [(i, "f") for i in streamed] + [(i, "b") for i in reversed(streamed)]
        self.slots = slots
        self.held: list[int | None] = [None] * slots  # layer in each slot

    def slot_of(self, layer: int) -> int | None:
        return self.held.index(layer) if layer in self.held else None

    def _upcoming(self, position: int) -> list[int]:
        """Distinct layers in cycle order from `position` on (the one used there first)."""
        seen: list[int] = []
        n = len(self.cycle)
        for k in range(n):
            layer = self.cycle[(position + k) % n][0]
            if layer not in seen:
                seen.append(layer)
        return seen

    def use(self, layer: int, phase: str) -> list[tuple[int, int]]:
        upcoming = self._upcoming(self.cycle.index((layer, phase)))
        wanted = upcoming[: self.slots]
        loads = []
        for want in wanted:
            if want in self.held:
                continue
            rank = {held: upcoming.index(held) for held in self.held if held is not None}
            free = [s for s, held in enumerate(self.held) if held is None or held not in wanted]
            slot = max(free, key=lambda s: math.inf if self.held[s] is None else rank[self.held[s]])
            self.held[slot] = want
            loads.append((want, slot))
        return loads


def in_backward() -> bool:
    """True while autograd runs a backward pass on this thread (a checkpoint's recompute)."""
    import torch

    return torch._C._current_graph_task_id() != -1


def streamed_tensors(layer, frozen_only: bool = True) -> list[tuple[object, str, object]]:
    """(module, name, tensor) of a decoder layer's weights that streaming moves: each nn.Linear's weight (NF4 or
    16-bit; not a trained one, nor a packed LoRA weight), and each experts module's fused expert weights: their NF4
    buffers where engine.patching.moe quantized them, else the 16-bit 3-D parameters. `frozen_only` off (at load,
    before anything is frozen) takes every Linear and expert weight."""
    import torch

    from engine.patching.moe import EXPERT_TENSORS, is_experts

    found = []
    for module in layer.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight
            if not (frozen_only and weight.requires_grad) and not hasattr(weight, "packed_in"):
                found.append((module, "weight", weight))
        if is_experts(module):
            quantized = getattr(module, "nf4_states", None) or {}
            for name in EXPERT_TENSORS:
                if name in quantized:
                    found.append((module, f"{name}_nf4", module._buffers[f"{name}_nf4"]))
                elif not (frozen_only and module._parameters[name].requires_grad):
                    found.append((module, name, module._parameters[name]))
    return found


def _absent(module, name: str, like, device):
    """What a streamed tensor (`like`: it, or its host copy) leaves on `device` while its layer is not resident: an
    empty tensor (a use fails), except for an experts module's fused 16-bit parameter (LoRA's experts), which keeps
    its shape as a stride-0 view of one element, as NF4 experts' parameter does: PEFT's target_parameters, the adapter
    targets (engine.models.experts) and the grouped path's router lookup (engine.patching.moe) read that shape, and
    the grouped path refuses to compute with it."""
    import torch

    from engine.patching.moe import EXPERT_TENSORS, is_experts

    if name in EXPERT_TENSORS and name in module._parameters and is_experts(module):
        return torch.empty(1, dtype=like.dtype, device=device).expand(like.shape)
    return torch.empty(0, dtype=like.dtype, device=device)


def _place(module, name: str, value) -> None:
    """Point a streamed weight at `value`: a parameter keeps its identity (PEFT and bitsandbytes hold it), a buffer
    is replaced."""
    if name in module._parameters:
        module._parameters[name].data = value
    else:
        module._buffers[name] = value


class WeightStream:
    """Frozen weights of some decoder layers (`streamed_tensors`: linear layers' and experts') in pinned host RAM,
    copied into GPU slots ahead of use.

    Each streamed layer gets a forward pre-hook (make its weights resident, start the next loads) and a forward hook
    (in the forward, mark its slot reusable once the GPU is past it); `Checkpoint.backward` marks it after the
    layer's backward. A mixture-of-experts layer's experts may wait for its router instead, and come alone where
    few are picked (`experts`: engine.memory.expert_fetch). Without a GPU (`device` the CPU) the same slots and
    schedule run with plain copies, in order."""

    def __init__(self, layers: dict, device, slots: int = RING_SLOTS, log=print):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self.copy = torch.cuda.Stream(device) if self.cuda else None
        self.weights = {}  # layer index -> [(module, name, host tensor)]
        for index, layer in layers.items():
            pairs = []
            for module, name, tensor in streamed_tensors(layer):
                host = getattr(tensor, "host_copy", None)  # put there by load_streamed
                if host is None:
                    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.cuda)
                    host.copy_(tensor.data)
                else:
                    del tensor.host_copy
                _place(module, name, _absent(module, name, tensor, device))
                pairs.append((module, name, host))
            self.weights[index] = pairs
        if self.cuda:
            torch.cuda.empty_cache()
        self.offsets, self.slot_bytes = {}, 0  # layer index -> each streamed tensor's byte offset in the layer's slot
        for index, pairs in self.weights.items():
            sizes = [_aligned(h.numel() * h.element_size()) for *_, h in pairs]
            self.offsets[index] = [sum(sizes[:j]) for j in range(len(sizes))]
            self.slot_bytes = max(self.slot_bytes, sum(sizes))
        self.buffers = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.ring = Ring(sorted(layers), slots)
        self.ready = {}  # layer -> event: its weights are in its slot (None without a GPU: copied already)
        self.done = {}  # layer -> event: the GPU is past its last use
        self.timing = []  # ("copy" | "stall", start event, end event, bytes) since the last tick
        self.last_tick, self.steps = None, 0
        self.log = log
        self.paused = False  # True while a CUDA graph is captured: engine.patching.graphs calls `use` itself
        for index, layer in layers.items():
            layer.register_forward_pre_hook(self._pre_hook(index))
            layer.register_forward_hook(self._post_hook(index))
        self.experts = ExpertFetch(self, layers, log)  # MoE layers: only the router's experts, where that pays

    def slot_view(self, layer: int, position: int, numel: int, dtype):
        """`numel` elements of `dtype` at the place of the layer's streamed tensor `position` in its slot."""
        offset = self.offsets[layer][position]
        return self.buffers[self.ring.slot_of(layer)][offset : offset + numel * dtype.itemsize].view(dtype)

    def _load(self, layer: int, slot: int) -> None:
        import contextlib

        import torch

        evicted = [i for i in self.ready if i != layer and self.ring.slot_of(i) is None]
        for i in evicted:  # its slot now belongs to `layer`: point its weights nowhere until it is loaded again
            del self.ready[i]
            self.experts.forget(i)
            for module, name, host in self.weights[i]:
                _place(module, name, _absent(module, name, host, self.device))
        deferred = self.experts.defer(layer)  # experts that wait for the router (engine.memory.expert_fetch)
        moved = 0
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.copy) if self.cuda else contextlib.nullcontext():
            for i in evicted:
                if i in self.done:
                    self.copy.wait_event(self.done.pop(i))
            if self.cuda:
                start.record(self.copy)
            for position, (module, name, host) in enumerate(self.weights[layer]):
                if position in deferred:
                    _place(module, name, _absent(module, name, host, self.device))
                    continue
                view = self.slot_view(layer, position, host.numel(), host.dtype).view(host.shape)
                view.copy_(host, non_blocking=self.cuda)
                _place(module, name, view)
                moved += host.numel() * host.element_size()
            if self.cuda:
                end.record(self.copy)
        self.ready[layer] = end if self.cuda else None
        if self.cuda:
            self.timing.append(("copy", start, end, moved))

    def copy_now(self, layer: int, positions) -> None:
        """Copy the layer's streamed tensors at `positions` whole into their places in its slot, for the work queued
        next (engine.memory.expert_fetch: the experts of a layer whose router picked most of them)."""
        pieces, placed = [], []
        for position in sorted(positions):
            module, name, host = self.weights[layer][position]
            view = self.slot_view(layer, position, host.numel(), host.dtype).view(host.shape)
            pieces.append((view, host))
            placed.append((module, name, view))
        self.copy_pieces(pieces)
        for module, name, view in placed:
            _place(module, name, view)

    def copy_pieces(self, pieces: list) -> None:
        """(slot view, host tensor) copies on the side stream, after the work queued so far (it may still read the
        slot's earlier contents), which the work queued next waits for."""
        import torch

        if not self.cuda:
            for target, host in pieces:
                target.copy_(host)
            return
        compute = torch.cuda.current_stream(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.copy.wait_stream(compute)
        with torch.cuda.stream(self.copy):
            start.record(self.copy)
            for target, host in pieces:
                target.copy_(host, non_blocking=True)
            end.record(self.copy)
        before.record(compute)
        compute.wait_event(end)
        after.record(compute)
        moved = sum(host.numel() * host.element_size() for _, host in pieces)
        self.timing += [("copy", start, end, moved), ("stall", before, after, 0)]

    def use(self, layer: int, phase: str, tokens: int | None = None) -> None:
        """Before layer `layer` runs in `phase` ("f" or "b") on `tokens` tokens (None: as its last forward): its
        weights resident, the next ones on their way."""
        import torch

        if phase == "f" and tokens is not None:
            self.experts.step(tokens)
        for want, slot in self.ring.use(layer, phase):
            self._load(want, slot)
        if not self.cuda:
            return
        compute = torch.cuda.current_stream(self.device)
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record(compute)
        compute.wait_event(self.ready[layer])
        after.record(compute)
        self.timing.append(("stall", before, after, 0))

    def finished(self, layer: int) -> None:
        """The GPU work of the layer's current use is enqueued: its slot may be reused once that work is done."""
        import torch

        if self.cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.done[layer] = event

    def _pre_hook(self, index: int):
        def hook(module, args):
            if not self.paused:
                hidden = args[0] if args else None
                tokens = hidden.shape[:-1].numel() if hasattr(hidden, "shape") else None
                self.use(index, "b" if in_backward() else "f", tokens)

        return hook

    def _post_hook(self, index: int):
        def hook(module, args, output):
            if not (self.paused or in_backward()):
                self.finished(index)

        return hook

    def slot_key(self, index: int) -> int | None:
        """Where the layer's streamed weights sit now (a CUDA graph of it reads them there), None if not streamed."""
        pairs = self.weights.get(index)
        if not pairs:
            return None
        module, name, _ = pairs[0]
        return (module._parameters[name] if name in module._parameters else module._buffers[name]).data_ptr()

    def tick(self) -> None:
        """Called at each training forward: every LOG_EVERY steps, log the last step's copy, stall and compute time
        (one synchronization); otherwise forget its events."""
        import torch

        if not self.cuda:
            self.steps += 1
            return
        now = torch.cuda.Event(enable_timing=True)
        now.record(torch.cuda.current_stream(self.device))
        if self.last_tick is not None and self.steps % LOG_EVERY == 1:
            now.synchronize()
            step = self.last_tick.elapsed_time(now)
            copy, stall, moved = self.step_summary()
            self.log(
                f"offload: a {step:.0f} ms step copied {moved:.2f} GB of weights in {copy:.0f} ms on the side "
                f"stream; compute waited {stall:.0f} ms for copies and computed {step - stall:.0f} ms"
            )
        self.timing.clear()
        self.last_tick = now
        self.steps += 1

    def step_summary(self) -> tuple[float, float, float]:
        """(copy ms, stall ms, GB copied) of the events recorded since the last tick."""
        if self.timing:
            self.timing[-1][2].synchronize()
        copy = sum(s.elapsed_time(e) for kind, s, e, _ in self.timing if kind == "copy")
        stall = sum(s.elapsed_time(e) for kind, s, e, _ in self.timing if kind == "stall")
        moved = sum(n for *_, n in self.timing) / 1e9
        return copy, stall, moved


def load_streamed(
    path,
    placement,
    four_bit: bool,
    plan_: Plan | None,
    trust_remote_code: bool = False,
    log=print,
    nf4_experts: bool = False,
    host: tuple | None = None,
):
    """Load a model whose weights do not fit the GPU: read it into host RAM in 16 bits, then move it to the GPU layer
    by layer (quantizing linear weights to NF4 on the way for QLoRA, as transformers' bitsandbytes loading does, and
    with `nf4_experts` a mixture-of-experts layer's fused expert weights too: engine.patching.moe), with the streamed
    layers' frozen weights (`streamed_tensors`) left in pinned host RAM (the GPU holds a placeholder, `_absent`, until
    WeightStream brings them in). The GPU never holds more than the resident part plus one layer in 16 bits.
    `plan_` None streams nothing. `host`: (model, fill), the model built in host RAM without some weights, which
    `fill(layer)` reads into each layer as the loop reaches it (an MXFP4 checkpoint's experts, dequantized a layer at
    a time: engine.models.loading.mxfp4_host_model), in place of from_pretrained's."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_layers import GradientCheckpointingLayer

    from engine.patching.moe import is_experts, quantize_expert_tensors

    device = torch.device(placement.device)
    kw = dict(dtype=placement.torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    model, fill = host if host is not None else (None, None)
    try:
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", device_map={"": "cpu"}, **kw)
    except ValueError as e:  # gpt-oss (attention sinks): transformers' eager attention, as engine.models.loading
        if "scaled_dot_product_attention" not in str(e):
            raise
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", device_map={"": "cpu"}, **kw)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    on_host = set(plan_.streamed if plan_ is not None else ())
    for index, layer in enumerate(layers):
        if fill is not None:
            fill(layer)
        if four_bit:
            for name, module in list(layer.named_modules()):
                if type(module) is torch.nn.Linear:
                    parent, _, attr = name.rpartition(".")
                    setattr(layer.get_submodule(parent) if parent else layer, attr, _nf4(module, device, placement))
        layer.to(device)
        if nf4_experts:
            for module in layer.modules():
                if is_experts(module):
                    quantize_expert_tensors(module)  # frees the layer's 16-bit experts on the GPU
        if index in on_host:
            for module, name, tensor in streamed_tensors(layer, frozen_only=False):
                host = tensor.data.to("cpu")
                host = host.pin_memory() if device.type == "cuda" else host
                placeholder = _absent(module, name, tensor, device)
                _place(module, name, placeholder)
                # a parameter keeps its identity, so the copy rides on it; a buffer is replaced by the placeholder
                (tensor if name in module._parameters else placeholder).host_copy = host
    skip = {id(p) for layer in layers for p in layer.parameters()}
    if plan_ is not None and plan_.host_embedding:  # install() wraps it where it is
        skip |= {id(p) for p in model.get_input_embeddings().parameters()}
    for module in model.modules():  # embeddings, final norm, head, rotary tables: the rest of the model
        for param in list(module.parameters(recurse=False)):
            if id(param) not in skip and param.device != device:
                param.data = param.data.to(device)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.device != device:
                module._buffers[name] = buf.to(device)
    if four_bit:
        model.is_loaded_in_4bit = True
    if nf4_experts:
        log("loading: the experts' fused weights stored NF4 as each layer reached the GPU")
    log(f"loading: {len(on_host)} of {len(layers)} layers' weights stay in host RAM (weight streaming)")
    return model


def _nf4(linear, device, placement):
    """`linear` as a bitsandbytes NF4 Linear4bit on `device`, quantized as transformers' loading does (blocks of
    64, double-quantized scales, compute in the run's dtype)."""
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=placement.torch_dtype,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    q.weight = bnb.nn.Params4bit(
        linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", module=q
    ).to(device)
    if linear.bias is not None:
        q.bias = linear.bias
    return q.to(device)


def keep_dense(model, count: int, experts: int = 0, log=print) -> int:
    """Give the NF4 base of every LoRA projection in the first `count` decoder layers a 16-bit copy,
    dequantized once (kernels.nf4, the values the per-pass dequantization would give) and stored as the base
    module's `dense_weight`, which engine.patching's fused LoRA then multiplies by instead of dequantizing; the NF4
    experts (engine.patching.moe) of the first `experts` layers get theirs as the experts module's `dense_experts`,
    {tensor name: [G, A, B]}, which the grouped path multiplies by. The NF4 weights stay (saving, merging and chat
    read them). Returns the bytes added."""
    import time

    from transformers.modeling_layers import GradientCheckpointingLayer

    from kernels.nf4 import nf4_dequantize_state, read_offsets

    started = time.perf_counter()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    bases, stacks = [], []
    for index, layer in enumerate(layers[: max(count, experts)]):
        for module in layer.modules():
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else None
            state = getattr(getattr(base, "weight", None), "quant_state", None)
            if index < count and state is not None and state.quant_type == "nf4" and base.weight.device.type == "cuda":
                bases.append(base)
            names = (getattr(module, "nf4_states", None) or {}) if index < experts else {}
            stacks += [(module, name) for name in names if module._buffers[f"{name}_nf4"].device.type == "cuda"]
    states = [base.weight.quant_state for base in bases] + [module.nf4_states[name][0] for module, name in stacks]
    read_offsets(states)  # one wait for the GPU, not one per weight
    added = 0
    for base in bases:
        base.dense_weight = nf4_dequantize_state(base.weight, base.weight.quant_state)
        added += base.dense_weight.numel() * base.dense_weight.element_size()
    for module, name in stacks:
        state, shape = module.nf4_states[name]
        dense = nf4_dequantize_state(module._buffers[f"{name}_nf4"], state).reshape(shape)
        module.dense_experts = {**getattr(module, "dense_experts", {}), name: dense}
        added += dense.numel() * dense.element_size()
    took = time.perf_counter() - started  # the launches' time: the copies themselves finish on the GPU after it
    with_experts = f" and {min(experts, len(layers))} layers' experts" if stacks else ""
    log(
        f"offload: 16-bit copies of {min(count, len(layers))} layers' 4-bit weights{with_experts} ({added / GIB:.2f} "
        f"GiB, launched in {took:.2f} s): no dequantization"
    )
    return added
