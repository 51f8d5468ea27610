"""The fast expert path for mixture-of-experts layers (Qwen3-MoE, Mixtral, gpt-oss): tokens grouped by expert and each
projection done as one grouped matrix product (kernels.grouped_mm), with its per-expert LoRA, forward and backward.

transformers 5 keeps a layer's experts as fused 3-D parameters of one module whose forward dispatches, through
transformers' own `ExpertsInterface`, on `config._experts_implementation`; this module registers one more
implementation there ("tunesmith_grouped") and `install` selects it on the given model's config only. Nothing of the
module tree changes, so PEFT's adapters, saved names and `disable_adapter()` work as before.

transformers' eager forward loops over the experts (two F.linear calls each). PEFT adapts a fused expert tensor by
re-parametrizing it: every forward it builds W + scale * lhs @ rhs for the whole stack (E x out x in, the size of the
experts) before the experts' forward runs. Here the experts' forward reads the raw W and PEFT's low-rank factors from
the parametrization instead and computes, per projection, over the rows of all experts at once:

    y = grouped(x, W) + scale * grouped(grouped(x, A), B)        (A, B: each expert's factors, rank r)

so the LoRA costs two thin grouped products and no stack-sized temporary. Routing, the gate activation and biases are
the model's own (`module._apply_gate`: SwiGLU, or gpt-oss's clamped GLU on interleaved gate/up columns).
"""

import torch

IMPLEMENTATION = "tunesmith_grouped"


def experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
    """An experts module's forward (the ExpertsInterface signature): [T, H] hidden states, [T, k] expert ids and
    routing weights -> [T, H]."""
    from kernels.grouped_mm import grouped_mm

    n_experts = _param(self, "gate_up_proj")[0].shape[0]
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)  # slot t * k + j sorted by expert: each expert's rows are contiguous
    token = order // k
    expert = flat[order]
    counts = torch.zeros(n_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    offsets = torch.cumsum(counts, 0).to(torch.int32)  # scatter_add, not bincount: no host sync on the GPU
    x = hidden_states[token]
    gate_up = _project(self, "gate_up_proj", x, offsets, expert, grouped_mm)
    out = _project(self, "down_proj", self._apply_gate(gate_up), offsets, expert, grouped_mm)
    out = out * top_k_weights.reshape(-1)[order, None].to(out.dtype)
    return torch.zeros_like(hidden_states).index_add_(0, token, out.to(hidden_states.dtype))


def _param(module, name: str):
    """(raw weight, PEFT LoRA factors or None) of an expert tensor. PEFT's single-adapter parametrization keeps the
    factors (lhs, rhs, scaling) with W + scaling * lhs @ rhs the adapted weight; any other parametrization (several
    adapters, a low-precision base) is evaluated as transformers would."""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(module, name):
        return getattr(module, name), None
    plist = module.parametrizations[name]
    proxy = plist[0]
    if len(plist) == 1 and all(hasattr(proxy, a) for a in ("lhs", "rhs", "scaling")):
        return plist.original, (proxy.lhs, proxy.rhs, proxy.scaling)
    return getattr(module, name), None


def _project(module, name: str, x, offsets, expert, grouped_mm):
    """x @ W_e (+ LoRA, + bias) for each row's expert e, in the stored layout: [E, in, out] when the module says
    is_transposed (gpt-oss), else [E, out, in] (nn.Linear orientation)."""
    w, lora = _param(module, name)
    transposed = getattr(module, "is_transposed", False)
    y = grouped_mm(x, w if transposed else w.transpose(1, 2), offsets)
    if lora is not None:
        lhs, rhs, scaling = lora  # transposed: lhs [E, in, r], rhs [E, r, out]; else lhs [E, out, r], rhs [E, r, in]
        first, second = (lhs, rhs) if transposed else (rhs.transpose(1, 2), lhs.transpose(1, 2))
        y = y + scaling * grouped_mm(grouped_mm(x, first.to(x.dtype), offsets), second.to(x.dtype), offsets)
    bias = getattr(module, f"{name}_bias", None)
    if bias is not None:
        y = y + bias[expert]
    return y


def install(model, log=print) -> int:
    """Select the grouped expert path for `model`'s experts (none: not a mixture-of-experts model); returns how many
    experts modules now run through it."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    experts = [m for m in model.modules() if hasattr(m, "_apply_gate") and hasattr(m, "gate_up_proj")]
    if not experts:
        return 0
    ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, experts_forward)  # a named entry; chosen per model config below
    for m in experts:
        m.config._experts_implementation = IMPLEMENTATION
    log(f"patching: grouped expert path (kernels.grouped_mm) for {len(experts)} mixture-of-experts layers")
    return len(experts)
