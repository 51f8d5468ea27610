"""The kernel-backed drop-ins that engine.patching swaps into a model, and the fused-loss forward.

Every drop-in takes over the original module's children and attributes, so parameter names (and so PEFT targets,
state dicts and saved adapters) are unchanged.

Over 500 lines on purpose: the drop-ins (norm, attention, MLP, loss) share the LoRA-packing and recompute helpers
they are built from; the CUDA graphs are engine.patching.graphs'.
"""

import contextlib
import sys
import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.patching.family import Family, PatchReport
from kernels.cross_entropy import fused_linear_cross_entropy
from kernels.lora import lora_linear, lora_linear_group
from kernels.nf4 import cpu_repacked
from kernels.rms_norm import rms_norm
from kernels.rope import rope
from kernels.swiglu import swiglu
from kernels.varlen_attention import varlen_attention

# transformers' activation classes -> kernels.swiglu's activation names
ACTIVATIONS = {"SiLUActivation": "silu", "SiLU": "silu", "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh"}
ATTENTION_ATTRS = (
    "config",
    "layer_idx",
    "layer_type",
    "head_dim",
    "num_key_value_groups",
    "scaling",
    "attention_dropout",
    "is_causal",
    "sliding_window",
    "is_sliding",
    "attn_logit_softcapping",
)


def fused_lora_args(module):
    """(weight, A, B, scale, bias, quant_state) when `module` is a PEFT LoRA Linear that kernels.lora computes
    exactly: one active adapter, not merged, no DoRA, no dropout while training, a frozen nn.Linear or NF4 base (with
    its 16-bit `dense_weight` when engine.memory.weights.keep_dense made one; not one bitsandbytes repacked for its CPU
    kernel). None otherwise (the module then runs its own forward)."""
    names = getattr(module, "active_adapters", None)
    if not names or len(names) != 1 or module.disable_adapters or module.merged:
        return None
    name = names[0]
    if name not in module.lora_A or module.use_dora.get(name) or getattr(module, "lora_bias", {}).get(name):
        return None
    if module.training and not isinstance(module.lora_dropout[name], nn.Identity):
        return None
    base = module.get_base_layer()
    weight = base.weight
    if weight.requires_grad:
        return None
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None and (quant_state.quant_type != "nf4" or cpu_repacked(quant_state)):
        return None
    if quant_state is None and type(base) is not nn.Linear:
        return None
    if quant_state is not None and getattr(base, "dense_weight", None) is not None:
        weight, quant_state = base.dense_weight, None  # engine.memory.weights.keep_dense: dequantized once at load
    A, B = module.lora_A[name].weight, module.lora_B[name].weight
    return weight, A, B, module.scaling[name], base.bias, quant_state


def project(module, x):
    """module(x), through the fused LoRA op when the module is a LoRA Linear it covers."""
    args = fused_lora_args(module)
    if args is None:
        return module(x)
    weight, A, B, scale, bias, quant_state = args
    return lora_linear(x, weight, A, B, scale, bias, quant_state)


def project_group(modules, x, output_unused=False, given=None, out=None, keep_dequantized=False):
    """[m(x) for m in modules], as one fused op when every module is a LoRA Linear the op covers (which skips the
    outputs' products when `output_unused`, or returns `given` values instead of computing them, or writes into `out`,
    or keeps its dequantized weights for the backward: see kernels.lora.lora_linear_group). Modules the op does not
    cover compute their outputs, copied into `out`."""
    args = [fused_lora_args(m) for m in modules]
    if any(a is None for a in args) or len({a[5] is None for a in args}) != 1:
        outs = [project(m, x) for m in modules]
        for y, buffer in zip(outs, out, strict=True) if out is not None else ():
            buffer.copy_(y)
        return outs
    projections = [(w, A, B, s, bias, qs) for w, A, B, s, bias, qs in args]
    return lora_linear_group(
        x, projections, output_unused=output_unused, given=given, out=out, keep_dequantized=keep_dequantized
    )


_recomputing = [False]  # True while engine.memory.offload's checkpoint reruns a layer's forward for its backward
_keep_dequantized = [False]  # that rerun's MLP keeps gate and up's dequantized weights for the backward


@contextlib.contextmanager
def recompute_pass(keep_dequantized: bool = False):
    """Marks a checkpointed layer's second forward, run only to rebuild what its backward needs. Its output is never
    read: an MLP whose output goes straight into the residual sum then skips its down projection's products, whose
    backward needs only their input (a quarter of a llama layer's matmul work in that pass). With `keep_dequantized`
    an untiled MLP keeps gate and up's dequantized NF4 weights for the backward that follows (two 16-bit copies held
    through the MLP's backward, one dequantization each fewer: engine.memory.offload.Plan.keep_dequantized)."""
    _recomputing[0], _keep_dequantized[0] = True, keep_dequantized
    try:
        yield
    finally:
        _recomputing[0], _keep_dequantized[0] = False, False


class AttentionOutputs:
    """A checkpointed layer's attention projection outputs (q, k, v, then o), passed from its first forward to its
    recompute so that the recompute skips those products (engine.memory.offload keeps them in host RAM with the layer's
    input). The first forward either records them (`mode` "record": appended to `tensors`) or writes them into
    `tensors` (mode "out": a CUDA graph's static buffers); the recompute takes them back (mode "given")."""

    def __init__(self, mode: str, tensors=None):
        self.mode = mode
        self.tensors = [] if tensors is None else list(tensors)
        self.taken = 0

    def take(self, count: int) -> list:
        taken = self.tensors[self.taken : self.taken + count]
        if len(taken) != count:
            raise RuntimeError("a layer's recompute asked for more attention outputs than its first forward kept")
        self.taken += count
        return taken


_attention_outputs: list = [None]  # the AttentionOutputs of the layer pass running now, or None


@contextlib.contextmanager
def attention_outputs(shared: AttentionOutputs):
    """Within it, every fast-path attention projection records, writes or takes its outputs through `shared`."""
    _attention_outputs[0] = shared
    try:
        yield shared
    finally:
        _attention_outputs[0] = None


class PackedProjections(nn.Module):
    """A drop-in whose LoRA projections run in groups through kernels.lora, each group's adapters optionally packed
    into one trainable tensor (`pack_adapters`). GROUPS: the packed tensor's name -> its projections."""

    GROUPS: dict[str, tuple[str, ...]] = {}

    def __init__(self):
        super().__init__()
        self.packed = {}  # group -> its piece of the model's PackedAdapters (a leaf tensor), made by `pack_adapters`
        self.packed_args = {}  # group -> (adapter name, its fused_lora_args per projection)
        self.packing = None  # the model's PackedAdapters

    def project(self, group: str, x, output_unused=False, given=None, out=None, keep_dequantized=False):
        """[m(x) for m in the group's projections], through the packed tensor when the group has one. With
        `output_unused` (nothing will read the outputs' values) the fused op skips their products; with `given` it
        returns those values instead of computing them; with `out` it writes the outputs there; with `keep_dequantized`
        its backward reuses the forward's dequantized weights."""
        modules = [getattr(self, name) for name in self.GROUPS[group]]
        packed = self.packed.get(group)
        if packed is not None:
            adapter, args = self.packed_args[group]
            # The operands were read once by `pack` (PEFT's get_base_layer() alone costs ~13 us of host time, and a
            # checkpointed step runs each projection twice); they hold while the packed adapter is the active one.
            if all(m.active_adapters == [adapter] and not m.disable_adapters and not m.merged for m in modules):
                return lora_linear_group(
                    x,
                    args,
                    packed=packed,
                    output_unused=output_unused,
                    given=given,
                    out=out,
                    keep_dequantized=keep_dequantized,
                )
            if packed.requires_grad and torch.is_grad_enabled() and not all(m.disable_adapters for m in modules):
                raise RuntimeError(
                    "packed LoRA adapters train only through the fused op, with the adapter they were packed from "
                    "active and unmerged (engine.patching.modules.pack_adapters)"
                )
        return project_group(modules, x, output_unused, given, out, keep_dequantized)

    def project_shared(self, group: str, x):
        """`project`, passing the outputs through the AttentionOutputs of the layer pass running now, if any."""
        shared = _attention_outputs[0]
        if shared is None:
            return self.project(group, x)
        if shared.mode == "given":
            return self.project(group, x, given=shared.take(len(self.GROUPS[group])))
        if shared.mode == "out":
            return self.project(group, x, out=shared.take(len(self.GROUPS[group])))
        outs = self.project(group, x)
        shared.tensors.extend(outs)
        return outs

    def packable(self) -> list:
        """[(group, its fused_lora_args per projection, its tensors: A_1, A_2, ..., B_1, B_2, ...)] for every group
        `pack_adapters` can pack: one active adapter, no dropout, every A and B trainable."""
        found = []
        for group, names in self.GROUPS.items():
            modules = [getattr(self, name) for name in names]
            args = [fused_lora_args(m) for m in modules]
            if group in self.packed or any(a is None for a in args):
                continue
            if any(not isinstance(m.lora_dropout[m.active_adapters[0]], nn.Identity) for m in modules):
                continue  # dropout in training would take the module's own forward, which packed weights cannot
            tensors = [a[1] for a in args] + [a[2] for a in args]
            if len({(t.dtype, t.device) for t in tensors}) == 1 and all(t.requires_grad for t in tensors):
                found.append((group, args, tensors))
        return found


class PackedAdapters:
    """Every packed LoRA weight of a model in one trainable Parameter, `flat` (one per dtype and device).

    Each fused op trains its group's piece of `flat` as a leaf tensor of its own (autograd accumulates into it alone,
    without a full-size gradient per op), and the pieces' `.grad` are views of `flat.grad`. PEFT's A's and B's are
    frozen views of `flat` (names, state dicts and saved adapters are unchanged).

    The gradient buffer exists from a step's first gradient to the optimizer's zero_grad, as separate gradients
    would: `link` (a hook on each piece, run before autograd accumulates into it) makes it, zeroed, and `release`
    (before each training forward) frees the memory of one the optimizer dropped (zero_grad(set_to_none=True)) while
    the pieces keep pointing at it. Setting 128 pieces' `.grad` again every step cost ~2 ms of host time with the GPU
    idle (llama8b on the H100); holding the buffer through the forward ran qwen3_14b out of memory under 6 GiB.

    Code that replaces `flat.data` (TRL's SFTTrainer casts a 4-bit model's trainable weights to bf16 that way, and
    tunesmith's fp16 models cast them back to fp32) leaves the pieces and views on the old memory: `follow`, before
    each forward, points them at the new one, else the optimizer steps a tensor the model no longer reads."""

    def __init__(self, flat: nn.Parameter):
        self.flat = flat
        self.pieces = []  # (leaf tensor, start in flat)
        self.views = []  # (PEFT's A or B, start in flat)
        self.linked = None  # the gradient buffer the pieces' .grad are views of
        self.source = (flat.data_ptr(), flat.dtype)  # the memory the pieces and views are on

    def piece(self, start: int, count: int) -> torch.Tensor:
        """`count` values of `flat` from `start`, as a leaf tensor a fused op trains."""
        leaf = self.flat.detach()[start : start + count].requires_grad_()
        leaf.register_hook(self._before_accumulation)
        self.pieces.append((leaf, start))
        return leaf

    def _before_accumulation(self, grad):
        if not (grad.is_cuda and torch.cuda.is_current_stream_capturing()):  # a capture has leaves of its own
            self.link()

    def link(self) -> None:
        """Make `flat.grad` and point every piece's `.grad` at its slice (cheap when they already are)."""
        grad = self.flat.grad
        if grad is not None and grad is self.linked:
            return
        if grad is None and self.linked is not None:  # the buffer the optimizer dropped comes back, zeroed
            storage = self.linked.untyped_storage()
            if storage.size() == 0:
                storage.resize_(self.linked.numel() * self.linked.element_size())
            self.flat.grad = self.linked.zero_()
            return
        for leaf, _ in self.pieces:
            leaf.grad = None
        if grad is None:
            grad = self.flat.grad = torch.zeros_like(self.flat)
        for leaf, start in self.pieces:
            leaf.grad = grad[start : start + leaf.numel()].view(leaf.shape)
        self.linked = grad

    def follow(self) -> None:
        """Point the pieces and PEFT's views at `flat`'s memory again where `flat.data` was replaced since."""
        data = self.flat.data
        if (data.data_ptr(), data.dtype) == self.source:
            return
        for leaf, start in self.pieces:
            leaf.grad = None  # a view of the old gradient buffer, maybe of the old dtype
            leaf.data = data[start : start + leaf.numel()]
        for view, start in self.views:
            view.data = data[start : start + view.numel()].view(view.shape)
        self.linked = None
        self.source = (data.data_ptr(), data.dtype)

    def release(self) -> None:
        """Free the memory of a gradient buffer the optimizer dropped (the pieces' views stay, sizeless)."""
        if self.flat.grad is None and self.linked is not None:
            self.linked.untyped_storage().resize_(0)


def pack_adapters(model, log=print) -> int:
    """Pack the LoRA adapters of every fast-path attention and MLP into one trainable tensor (`PackedAdapters`, one
    per dtype and device): an optimizer that steps tensor by tensor (bitsandbytes' AdamW8bit synchronizes the GPU
    after each one) makes one step instead of 14 per decoder layer. Call it after PEFT and engine.memory.offload, before
    the optimizer is made; only for training loops that run every adapter through the fused op (one adapter, no
    dropout). Returns the number of fused ops packed."""
    found = [(m, *entry) for m in model.modules() if isinstance(m, PackedProjections) for entry in m.packable()]
    kinds = {}
    for entry in found:
        kinds.setdefault((entry[3][0].dtype, entry[3][0].device), []).append(entry)
    packings = [_pack(model, index, entries) for index, entries in enumerate(kinds.values())]

    def before_forward(*_):
        for packing in packings:
            packing.follow()
            if torch.is_grad_enabled():
                packing.release()

    if packings:
        model.register_forward_pre_hook(before_forward)
        log(f"adapters: packed into {len(packings)} trainable tensor(s), the LoRA weights of {len(found)} fused ops")
    return len(found)


def _pack(model, index: int, entries) -> PackedAdapters:
    """One PackedAdapters for `entries` (module, group, its fused_lora_args, its tensors), registered on `model`."""
    tensors = [t for *_, group_tensors in entries for t in group_tensors]
    flat = nn.Parameter(torch.cat([t.detach().reshape(-1) for t in tensors]))
    model.register_parameter("packed_adapters" if index == 0 else f"packed_adapters_{index}", flat)
    packing = PackedAdapters(flat)
    start = 0
    for module, group, args, group_tensors in entries:
        module.packed[group] = packing.piece(start, sum(t.numel() for t in group_tensors))
        for t in group_tensors:
            t.data = flat.data[start : start + t.numel()].view(t.shape)
            t.requires_grad_(False)
            t.packed_in = (flat, start)  # where its gradient is: packed_gradient
            packing.views.append((t, start))
            start += t.numel()
        module.packed_args[group] = (getattr(module, module.GROUPS[group][0]).active_adapters[0], args)
        module.packing = packing
    return packing


def packed_gradient(param):
    """The gradient of a PEFT adapter weight that `pack_adapters` moved into a packed tensor (a view of the packed
    tensor's gradient), or its own gradient when it was not packed."""
    where = getattr(param, "packed_in", None)
    if where is None:
        return param.grad
    flat, start = where
    if flat.grad is None:
        return None
    return flat.grad[start : start + param.numel()].view(param.shape)


class FastRMSNorm(nn.Module):
    """RMSNorm through kernels.rms_norm: saves only its input and one fp32 scale per row for the backward."""

    def __init__(self, norm: nn.Module, offset: float):
        super().__init__()
        self.weight = norm.weight
        self.eps = getattr(norm, "variance_epsilon", None) or norm.eps
        self.offset = offset

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, self.offset)


_tables: list = [None, None]  # the cos tensor the RoPE tables were last made from, and those tables


def rotate(q, k, cos, sin):
    """Rotate (B, T, H, D) q and k by the model's own (B or 1, T, D) cos/sin, in one kernels.rope launch.

    Each token's row of the model's tables becomes its own table row (position id = row index), so every RoPE
    variant the model computes (scaled, dynamic, per-layer-type) is applied exactly as transformers would. The model
    passes the same cos/sin to every layer of a forward, so the fp32 tables are made once per forward."""
    if _tables[0] is not cos:
        _tables[:] = [cos, rope_tables(cos, sin)]
    return rope(q, k, *_tables[1])


def rope_tables(cos, sin, out=None):
    """kernels.rope's (cos table, sin table, positions) for the model's (B or 1, T, D) cos/sin; written into `out`
    (tables made here before) when given, so a CUDA graph that reads them sees new values at the same addresses."""
    half = cos.shape[-1] // 2
    rows, seq = cos.shape[:2]
    table_cos = cos[..., :half].reshape(rows * seq, half)
    table_sin = sin[..., :half].reshape(rows * seq, half)
    if out is not None:
        out[0].copy_(table_cos)
        out[1].copy_(table_sin)
        return out
    positions = torch.arange(rows * seq, device=cos.device).view(rows, seq)
    return table_cos.float().contiguous(), table_sin.float().contiguous(), positions


def use_rope_tables(cos, tables) -> None:
    """Make `rotate` read `tables` whenever it is given `cos` (engine.patching.graphs, before a capture)."""
    _tables[:] = [cos, tables]


class FastAttention(PackedProjections):
    """Attention with LoRA projections through kernels.lora, RoPE through kernels.rope, and the score computation
    through transformers' interface for the loaded implementation (SDPA by default), with the family's extras."""

    GROUPS = {"adapters_qkv": ("q_proj", "k_proj", "v_proj"), "adapters_o": ("o_proj",)}

    def __init__(self, attn: nn.Module, family: Family):
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, getattr(attn, name))
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)
        for name in ATTENTION_ATTRS:
            if hasattr(attn, name):
                setattr(self, name, getattr(attn, name))
        self.eager = sys.modules[type(attn).__module__].eager_attention_forward
        self.extra = family.attention_kwargs(attn)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        b, t = hidden_states.shape[:2]
        q, k, v = (y.view(b, t, -1, self.head_dim) for y in self.project_shared("adapters_qkv", hidden_states))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, k, *position_embeddings)
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        if cu_seqlens is not None and past_key_values is None:  # a padding-free row (engine.data.batching)
            out = varlen_attention(
                q.view(b * t, -1, self.head_dim),
                k.view(b * t, -1, self.head_dim),
                v.reshape(b * t, -1, self.head_dim),
                cu_seqlens,
                self.scaling,
                softcap=getattr(self, "attn_logit_softcapping", None) or 0.0,
                window=getattr(self, "sliding_window", None) or 0,
            )
            return self.project_shared("adapters_o", out.reshape(b, t, -1))[0], None
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, self.eager)
        out, weights = interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **self.extra,
            **kwargs,
        )
        return self.project_shared("adapters_o", out.reshape(b, t, -1))[0], weights


def takes_varlen(model) -> bool:
    """Whether every attention module of `model` is a FastAttention that computes padding-free rows (no dropout
    while training, which kernels.varlen_attention does not do): engine.data.batching's padding-free format then needs
    no mask."""
    attention = [m for m in model.modules() if isinstance(m, FastAttention)]
    others = [m for m in model.modules() if type(m).__name__.endswith("Attention") and not isinstance(m, FastAttention)]
    return bool(attention) and not others and not any(m.attention_dropout for m in attention)


# A 4D attention mask of no size: transformers' mask creation returns a 4D mask as it is, so a padding-free row
# (whose attention FastAttention computes from cu_seqlens) skips building the (T, T) mask, and its host sync, that
# transformers' packed-sequence detection would make from the position ids. No module reads it.
NO_MASK = torch.empty(1, 1, 0, 0, dtype=torch.bool)


def mask_skipped(attention_mask) -> bool:
    """Whether `attention_mask` is NO_MASK or None: the layer needs no mask."""
    return attention_mask is None or (attention_mask.dim() == 4 and attention_mask.numel() == 0)


def cu_seqlens_from_positions(position_ids):
    """cu_seqlens (int32, T + 1 entries) of a padding-free row from its (T,) position ids, where a segment starts
    wherever a position is not the previous one plus 1 (as transformers' find_packed_sequence_indices reads them).
    Made on the device without reading anything back: the starts are sorted before T (every other token), so the
    entries after the last start repeat T (empty segments) and the shape depends only on T."""
    total = position_ids.shape[0]
    tokens = torch.arange(total, device=position_ids.device)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[1:] = position_ids[1:] != position_ids[:-1] + 1
    ends = torch.where(starts, tokens, total).sort().values
    return torch.cat([ends, ends.new_full((1,), total)]).to(torch.int32)


class FastMLP(PackedProjections):
    """down(act(gate(x)) * up(x)) with kernels.swiglu for the gated activation and kernels.lora for the projections."""

    GROUPS = {"adapters_gate_up": ("gate_proj", "up_proj"), "adapters_down": ("down_proj",)}

    def __init__(self, mlp: nn.Module, activation: str, feeds_residual: bool = False):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.activation = activation
        self.tile = None  # tokens per tile under the offload plan's tiling (engine.memory.offload), else None
        self.feeds_residual = feeds_residual  # the layer adds the output to the residual as it is (no norm after)

    def _mlp(self, x, keep_dequantized=False):
        gate, up = self.project("adapters_gate_up", x, keep_dequantized=keep_dequantized)
        # In a recompute pass the layer's output is not read, and a sum's backward does not read its operands.
        unused = self.feeds_residual and _recomputing[0]
        return self.project("adapters_down", swiglu(gate, up, self.activation), output_unused=unused)[0]

    def forward(self, x):
        tokens = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        if self.tile is None or tokens <= self.tile:
            return self._mlp(x, keep_dequantized=_keep_dequantized[0])  # see recompute_pass
        # Long sequences: the MLP is per token, so tiles of tokens each keep only their input and recompute their
        # (tile x intermediate) activations in the backward: one extra MLP forward for ~3x intermediate/hidden less
        # activation memory. Without gradients (a checkpointed layer's first pass) the tiles bound the transient
        # gate/up/activation tensors the same way.
        flat = x.reshape(tokens, x.shape[-1])
        tiles = [flat[start : start + self.tile] for start in range(0, tokens, self.tile)]
        if torch.is_grad_enabled():
            out = [checkpoint(self._mlp, piece, use_reentrant=False) for piece in tiles]
        else:
            out = [self._mlp(piece) for piece in tiles]
        return torch.cat(out).view(*x.shape[:-1], -1)


def fused_loss_forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    inputs_embeds=None,
    labels=None,
    use_cache=None,
    logits_to_keep=0,
    **kwargs,
):
    """The causal LM's forward; given labels, the loss comes from kernels.cross_entropy over chunks of tokens and
    `.logits` is None (the full logits are never built). A mixture-of-experts config with `output_router_logits`
    adds its router load-balancing loss as transformers does (the model's own `load_balancing_loss_func`, times
    `router_aux_loss_coef`, after the token average). Without labels it is the model's own forward."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    head = self.get_output_embeddings()
    if labels is None or type(head) is not nn.Linear:
        return type(self).forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
    balance = getattr(self.config, "output_router_logits", False) and hasattr(self, "router_aux_loss_coef")
    if balance:
        kwargs["output_router_logits"] = True
    mask = attention_mask  # the batch's padding, for the load-balancing loss (before any varlen replacement)
    num_items = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    cached = past_key_values is not None or (use_cache if use_cache is not None else self.config.use_cache)
    if attention_mask is None and not cached and getattr(self, "varlen_attention", False):
        if kwargs.get("cu_seq_lens_q") is None and position_ids is not None and position_ids.shape[0] == 1:
            cu_seqlens = cu_seqlens_from_positions(position_ids[0])  # TRL's padding-free batches give positions alone
            kwargs.update(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens)
        if kwargs.get("cu_seq_lens_q") is not None:
            attention_mask = NO_MASK
    out = self.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        inputs_embeds=inputs_embeds,
        use_cache=use_cache,
        **kwargs,
    )
    hidden = out.last_hidden_state
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype
    softcap = getattr(self.config, "final_logit_softcapping", None)
    targets = targets.to(hidden.device)
    chunk = getattr(self, "loss_chunk", None)  # the offload plan's, under a small budget (engine.memory.offload)
    weight = head.weight.to(dtype)
    loss = fused_linear_cross_entropy(hidden.to(dtype), weight, targets, softcap=softcap, chunk_size=chunk)
    if num_items is not None:  # sum over tokens / tokens of the whole accumulated batch, as transformers does
        loss = loss * (targets != -100).sum() / num_items
    if balance:
        func = sys.modules[type(self).__module__].load_balancing_loss_func
        aux = func(out.router_logits, self.num_experts, self.num_experts_per_tok, mask)
        loss = loss + self.router_aux_loss_coef * aux.to(loss.device)
    return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=out.past_key_values)


def patch_with(model, family: Family, fuse_loss: bool = True) -> PatchReport:
    """Swap norms, attention, MLPs and (with `fuse_loss`) the loss of `model` for the drop-ins; count what changed."""
    report = PatchReport(family.model_type)

    def count(name):
        report.swapped[name] = report.swapped.get(name, 0) + 1

    def children():
        return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]

    # Norms first, so the attention drop-ins pick up the already-swapped q/k norms.
    for parent, name, child in children():
        if type(child).__name__.endswith("RMSNorm") and getattr(child, "weight", None) is not None:
            setattr(parent, name, FastRMSNorm(child, family.norm_offset))
            count("FastRMSNorm")
    for parent, name, child in children():
        if name == "self_attn" and all(hasattr(child, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            setattr(parent, name, FastAttention(child, family))
            count("FastAttention")
        elif name == "mlp" and all(hasattr(child, p) for p in ("gate_proj", "up_proj", "down_proj")):
            activation = ACTIVATIONS.get(type(getattr(child, "act_fn", None)).__name__)
            if activation is None:
                report.notes.append(f"MLP activation {type(child.act_fn).__name__} kept unfused")
                continue
            setattr(parent, name, FastMLP(child, activation, feeds_residual=not family.sandwich_norms))
            count("FastMLP")
    model.varlen_attention = takes_varlen(model)  # read by fused_loss_forward and engine.training.sft, once
    if fuse_loss and hasattr(model, "model") and type(model.get_output_embeddings()) is nn.Linear:
        model.forward = types.MethodType(fused_loss_forward, model)
        count("fused cross-entropy loss")
    else:
        report.notes.append(f"loss kept unfused ({'no plain linear head' if fuse_loss else 'plus router loss'})")
    return report
