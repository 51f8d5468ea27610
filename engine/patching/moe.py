"""The fast expert path for mixture-of-experts layers (Qwen3-MoE, Mixtral, gpt-oss): tokens grouped by expert and each
projection done as one grouped matrix product (kernels.grouped_mm), with its per-expert LoRA, forward and backward.

transformers 5 keeps a layer's experts as fused 3-D parameters of one module whose forward dispatches, through
transformers' own `ExpertsInterface`, on `config._experts_implementation`; this module registers one more
implementation there ("tunesmith_grouped") and `install` selects it on the given model's config only, and swaps each
MoE block for `FastMoEBlock`, which keeps the block's router and experts under their names (so PEFT's adapters, saved
names and `disable_adapter()` work as before) and hands PEFT's LoRA factors to the grouped path itself.

transformers' eager forward loops over the experts (two F.linear calls each). PEFT adapts a fused expert tensor by
re-parametrizing it: every forward it builds W + scale * lhs @ rhs for the whole stack (E x out x in, the size of the
experts) before the experts' forward runs. Here the grouped path takes the raw W and PEFT's low-rank factors instead
and computes, per projection, over the rows of all experts at once:

    y = grouped(x, W) + scale * grouped(grouped(x, A), B)        (A, B: each expert's factors, rank r)

so the LoRA costs two thin grouped products and no stack-sized temporary. QLoRA keeps the experts NF4
(`quantize_expert_tensors`, at load) and dequantizes them a chunk of experts at a time (kernels.nf4_grouped_mm, chunks
of engine.core.scratch's size, or a layer's whole stack where the plan has room), so neither does the base weight; a
plan with more room keeps a 16-bit copy of them (engine.memory.weights.keep_dense), which the product reads instead.
Routing, the gate activation and biases are the model's own (`module._apply_gate`: SwiGLU, or gpt-oss's clamped GLU
on interleaved gate/up columns).
"""

import torch
from torch import nn

IMPLEMENTATION = "tunesmith_grouped"


def experts_forward(
    self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, factors=None
):
    """An experts module's forward (the ExpertsInterface signature): [T, H] hidden states, [T, k] expert ids and
    routing weights -> [T, H]. `factors`: {tensor name: PEFT's (lhs, rhs, scaling)} given by FastMoEBlock; without
    it they are read from PEFT's parametrization of the module."""
    from kernels.grouped_mm import grouped_mm

    n_experts = self.num_experts
    tokens, k = top_k_index.shape
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)  # slot t * k + j sorted by expert: each expert's rows are contiguous
    slot = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    expert = flat[order]
    counts = torch.zeros(n_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    offsets = torch.cumsum(counts, 0).to(torch.int32)  # scatter_add, not bincount: no host sync on the GPU
    x = Rows.apply(hidden_states, order // k, slot, k)
    gate_up = _project(self, "gate_up_proj", x, offsets, expert, grouped_mm, factors)
    out = _project(self, "down_proj", self._apply_gate(gate_up), offsets, expert, grouped_mm, factors)
    hidden = out.shape[-1]
    out = Rows.apply(out, slot, order, 1).view(tokens, k, hidden)  # back in slot order: token t's k rows together
    weights = top_k_weights.to(out.dtype).reshape(tokens, 1, k)
    return torch.bmm(weights, out).view(tokens, hidden).to(hidden_states.dtype)  # each token's weighted sum of rows


class Rows(torch.autograd.Function):
    """x[index] for an `index` that takes each row of x `k` times (an expert path's rows: each token's k slots in
    expert order, or back), whose gradient is a gather too: `back` is the inverse permutation of the k-fold index,
    and a row's k gradients are summed as a view, with no atomic adds (torch's own backward of x[index] is an
    index_put that accumulates; the index_add_ that summed a token's rows before took 0.54 ms a layer at 4,096
    tokens of Qwen3-30B-A3B on the H200, bench/README.md)."""

    @staticmethod
    def forward(ctx, x, index, back, k: int):
        ctx.save_for_backward(back)
        ctx.k = k
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        (back,) = ctx.saved_tensors
        rows = grad[back]
        return rows.view(rows.shape[0] // ctx.k, ctx.k, rows.shape[1]).sum(1) if ctx.k > 1 else rows, None, None, None


def _param(module, name: str, factors=None):
    """(raw weight, PEFT LoRA factors or None) of an expert tensor. PEFT's single-adapter parametrization keeps the
    factors (lhs, rhs, scaling) with W + scaling * lhs @ rhs the adapted weight; any other parametrization (several
    adapters, a low-precision base) is evaluated as transformers would."""
    from torch.nn.utils import parametrize

    if factors is not None:
        return _weight(module, name), factors.get(name)
    if not parametrize.is_parametrized(module, name):
        return getattr(module, name), None
    plist = module.parametrizations[name]
    proxy = plist[0]
    if len(plist) == 1 and all(hasattr(proxy, a) for a in ("lhs", "rhs", "scaling")):
        return plist.original, (proxy.lhs, proxy.rhs, proxy.scaling)
    return getattr(module, name), None


def _project(module, name: str, x, offsets, expert, grouped_mm, factors):
    """x @ W_e (+ LoRA, + bias) for each row's expert e, in the stored layout: [E, in, out] when the module says
    is_transposed (gpt-oss), else [E, out, in] (nn.Linear orientation). NF4 experts (quantize_expert_tensors) are
    read from their 16-bit copy where the plan keeps one, else dequantized a chunk of experts at a time
    (kernels.nf4_grouped_mm)."""
    transposed = getattr(module, "is_transposed", False)
    active = getattr(module, "active_experts", None)
    # engine.memory.expert_fetch brought only the experts with rows here, as [A, ...] stacks in id order: the base
    # product takes their groups' ends (every other expert's group is empty); the adapters keep all E groups
    base_offsets = offsets if active is None else offsets[active.ids]
    stored = active.stored[name] if active is not None else None
    packed = module._buffers.get(f"{name}_nf4")
    if packed is not None:
        lora = factors.get(name) if factors is not None else None
        # a 16-bit copy where the plan has room for it (engine.memory.weights.keep_dense, Plan.dense_experts)
        dense = getattr(module, "dense_experts", {}).get(name) if stored is None else None
        if dense is not None:
            y = grouped_mm(x, dense if transposed else dense.transpose(1, 2), base_offsets)
        else:
            from engine.core.scratch import experts_per_chunk
            from kernels.nf4_grouped_mm import nf4_grouped_mm

            packed, state, shape = stored if stored is not None else (packed, *module.nf4_states[name])
            # a layer's whole stack where the plan has room for it (engine.memory.offload, Plan.expert_stack)
            whole = getattr(module, "whole_stack", False)
            chunk = shape[0] if whole else experts_per_chunk(shape[1] * shape[2] * x.element_size())
            y = nf4_grouped_mm(x, packed, state, shape, base_offsets, transposed, chunk)
    else:
        w, lora = _param(module, name, factors)
        w = stored if stored is not None else w
        if w.stride(-1) == 0:  # engine.memory.weights' placeholder of a streamed layer's experts
            raise RuntimeError(f"the experts' {name} is not on the device: its streamed layer was used before loading")
        y = grouped_mm(x, w if transposed else w.transpose(1, 2), base_offsets)
    if lora is not None:
        lhs, rhs, scaling = lora  # transposed: lhs [E, in, r], rhs [E, r, out]; else lhs [E, out, r], rhs [E, r, in]
        first, second = (lhs, rhs) if transposed else (rhs.transpose(1, 2), lhs.transpose(1, 2))
        update = grouped_mm(grouped_mm(x, first.to(x.dtype), offsets), second.to(x.dtype), offsets)
        # one pass over the [rows x out] outputs where the scale is a number (PEFT's is), not a product and a sum
        y = y.add(update, alpha=scaling) if isinstance(scaling, (int, float)) else y + scaling * update
    bias = getattr(module, f"{name}_bias", None)
    if bias is not None:
        y = y + bias[expert]
    return y


class FastMoEBlock(nn.Module):
    """Drop-in for a mixture-of-experts block (Qwen3-MoE's and Mixtral's sparse MoE block, gpt-oss's MLP) that keeps
    its router and experts as children under their own names, so PEFT wraps and saves them as before.

    PEFT runs an adapted expert tensor through a parametrization registered anew on every forward, which evaluates
    W + scale * lhs @ rhs for the whole stack once to check its shape. When one adapter is active and not merged (the
    training case), this block takes PEFT's factors from its ParamWrappers and calls the grouped path on the raw
    experts module directly, so no stack-sized tensor is built; otherwise (adapters disabled, merged, several, dropout)
    it calls the experts as they are.
    """

    def __init__(self, block, router: str, returns_scores: bool):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.router_name = router
        self.returns_scores = returns_scores  # gpt-oss's MLP returns (hidden, router scores)
        self.jitter_noise = getattr(block, "jitter_noise", 0.0)  # Mixtral's training-time input jitter

    def forward(self, hidden_states: torch.Tensor):
        batch, seq, hidden = hidden_states.shape
        if self.training and self.jitter_noise > 0:
            noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            hidden_states = hidden_states * noise
        x = hidden_states.reshape(-1, hidden)
        _, weights, index = getattr(self, self.router_name)(x)
        base, factors = _lora_factors(self.experts)
        if factors is None and hasattr(_innermost(self.experts), "nf4_states"):
            raise RuntimeError("NF4 experts run only with one active, unmerged adapter without dropout")
        out = self.experts(x, index, weights) if factors is None else experts_forward(base, x, index, weights, factors)
        out = out.reshape(batch, seq, hidden)
        return (out, weights) if self.returns_scores else out


def _lora_factors(experts):
    """(the raw experts module, {tensor name: (lhs, rhs, scaling)}) under PEFT's ParamWrappers; factors None when the
    wrappers must run themselves (adapters disabled or merged, several adapters, dropout)."""
    from peft.tuners.lora.layer import ParamWrapper

    factors, module = {}, experts
    while isinstance(module, ParamWrapper):
        if module.merged:
            return module, None
        if not module.disable_adapters:  # disabled (DPO's reference pass): the base weight alone
            active = [a for a in module.active_adapters if a in module.lora_A]
            if len(active) != 1 or module.num_experts < 2:
                return module, None
            if not isinstance(module.lora_dropout[active[0]], nn.Identity):
                return module, None
            factors[module.parameter_name] = module.get_delta_factors(active[0])
        module = module.base_layer
    return module, factors


def capturable(model, block) -> bool:
    """Whether engine.patching.graphs may capture a layer with this MoE block, held to one shape, where nothing
    recomputes (so nothing is streamed either); never when the load-balancing loss reads router logits (transformers
    records them with hooks, which a replay does not run) or with Mixtral's input jitter (a random draw each step).
    On by default since queue call 22 (H100, qwen3_30b_a3b_12l QLoRA seq 2048 bs 2): 45,834 tokens/s captured against
    42,801 eager, Unsloth 30,389 in the same call; TUNESMITH_MOE_GRAPHS=0 turns it off. The groups' ends stay on the
    GPU (`experts_forward`) except where NF4 experts are dequantized a chunk at a time (`reads_host`), which the
    capture checks first, as those are decided after this (engine.models.loading)."""
    import os

    return (
        isinstance(block, FastMoEBlock)
        and os.environ.get("TUNESMITH_MOE_GRAPHS", "1") != "0"
        and not getattr(model.config, "output_router_logits", False)
        and not block.jitter_noise
    )


def reads_host(block) -> bool:
    """Whether MoE block `block` reads its groups' ends on the host, which no CUDA graph can capture: NF4 experts
    dequantized a chunk at a time (kernels.nf4_grouped_mm), neither a layer's whole stack at once nor from the 16-bit
    copies the plan keeps (engine.memory.weights.keep_dense)."""
    module = _innermost(block.experts)
    nf4 = [name[: -len("_nf4")] for name in module._buffers if name.endswith("_nf4")]
    dense = getattr(module, "dense_experts", {})
    return not getattr(module, "whole_stack", False) and any(name not in dense for name in nf4)


def runs_grouped(block) -> bool:
    """Whether FastMoEBlock `block` computes its experts through the grouped path itself (else PEFT's wrappers run,
    which read the whole stack of each expert tensor)."""
    return _lora_factors(block.experts)[1] is not None


def _innermost(experts):
    while hasattr(experts, "base_layer"):  # PEFT's ParamWrappers
        experts = experts.base_layer
    return experts


def _weight(module, name: str) -> torch.Tensor:
    """An expert tensor: the parameter, or the dequantization of its NF4 copy (quantize_experts)."""
    from kernels.nf4 import nf4_dequantize_state

    packed = module._buffers.get(f"{name}_nf4")
    if packed is None:
        return getattr(module, name)
    state, shape = module.nf4_states[name]
    return nf4_dequantize_state(packed, state).reshape(shape)


EXPERT_TENSORS = ("gate_up_proj", "down_proj")


def is_experts(module) -> bool:
    """Whether `module` is a transformers experts module (fused 3-D expert weights and the model's gate function)."""
    return hasattr(module, "_apply_gate") and hasattr(module, "gate_up_proj")


def cast_experts(model, dtype) -> None:
    """Put a loaded model's fused expert weights in the run's `dtype`: transformers leaves the ones it dequantized
    from MXFP4 (engine.models.mxfp4) in bf16 whatever dtype the model loads in (fp32 on the CPU, fp16 on a T4)."""
    for module in model.modules():
        if is_experts(module):
            for name in EXPERT_TENSORS:
                p = module._parameters[name]
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)


def quantize_expert_tensors(experts) -> int:
    """QLoRA: store an experts module's fused weights in NF4 (bitsandbytes' layout, blocks of 64, nested absmax, as
    bitsandbytes stores Linear layers) as `<name>_nf4` buffers with their states in `nf4_states`, and free the 16-bit
    copies where they are (engine.memory.weights quantizes each layer this way as it moves to the GPU). The parameter
    stays, frozen, as a stride-0 view of one element with the stack's shape and dtype: PEFT reads the shape of the
    tensors it adapts, and nothing computes with it (FastMoEBlock refuses a forward that would). Returns the number
    of tensors quantized (0 when already done)."""
    import bitsandbytes.functional as bnbf

    if getattr(experts, "nf4_states", None):
        return 0
    experts.nf4_states = {}
    for name in EXPERT_TENSORS:
        w = experts._parameters[name].data
        # 2-D: bitsandbytes' CPU quantizer mis-blocks 3-D tensors (measured: 3x the round-trip error)
        packed, state = bnbf.quantize_4bit(
            w.reshape(-1, w.shape[-1]), blocksize=64, compress_statistics=True, quant_type="nf4"
        )
        experts.register_buffer(f"{name}_nf4", packed)
        experts.nf4_states[name] = (state, tuple(w.shape))
        experts._parameters[name] = nn.Parameter(w.new_zeros(1).expand(w.shape), requires_grad=False)
    return len(EXPERT_TENSORS)


def quantize_experts(model, log=print) -> int:
    """QLoRA: `quantize_expert_tensors` on every FastMoEBlock's experts not already stored NF4 (a model loaded by
    transformers' bitsandbytes path, which leaves them 16-bit). Returns the number of tensors quantized."""
    count = 0
    for block in [m for m in model.modules() if isinstance(m, FastMoEBlock)]:
        count += quantize_expert_tensors(_innermost(block.experts))
    if count:
        log(f"qlora: {count} fused expert tensors stored in NF4 (dequantized a chunk of experts at a time)")
    return count


def install(model, log=print) -> int:
    """Select the grouped expert path for `model`'s experts (none: not a mixture-of-experts model); returns how many
    experts modules now run through it."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    experts = [m for m in model.modules() if is_experts(m)]
    if not experts:
        return 0
    ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, experts_forward)  # a named entry; chosen per model config below
    for m in experts:
        m.config._experts_implementation = IMPLEMENTATION
    for parent in list(model.modules()):
        for name, block in list(parent.named_children()):
            router = _router_of(block)
            if router is not None:
                setattr(parent, name, FastMoEBlock(block, router, returns_scores=hasattr(block, "router")))
    log(f"patching: grouped expert path (kernels.grouped_mm) for {len(experts)} mixture-of-experts layers")
    return len(experts)


def _router_of(block) -> str | None:
    """The router's name in a MoE block (a child beside `experts` with one weight row per expert), else None."""
    experts = getattr(block, "experts", None)
    if experts is None or not hasattr(experts, "gate_up_proj") or isinstance(block, FastMoEBlock):
        return None
    n = experts.gate_up_proj.shape[0]
    for name, child in block.named_children():
        weight = getattr(child, "weight", None)
        if child is not experts and weight is not None and weight.dim() == 2 and weight.shape[0] == n:
            return name
    return None
