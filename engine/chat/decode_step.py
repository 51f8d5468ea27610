"""The decode step of our own for Llama-like models (llama, mistral, qwen2, qwen3): the layer math written out over
our kernels and a KV cache of our own, reading the model's weights where they are (engine.chat.decode runs it, captured
in a CUDA graph on a GPU).

Per layer, for one new token (T = 1) or a prompt (T > 1), where transformers' forward launches ~38 kernels:

    y, h = add_rms_norm(x, h)               residual add + input norm            kernels/add_rms_norm.py
    q, k, v = qkv(y)                        one matvec (q/k/v packed, see below)  kernels/matvec.py
                                            (NF4: one launch, see below)   kernels/nf4_group_matvec.py
    q = rope_kv_cache(q, k, v)              Qwen3 q/k norms, RoPE, K/V into the cache   kernels/rope_kv_cache.py
    a = decode_attention(q, cache)          GQA over the cache, split-K             kernels/decode_attention.py
                                            (a prompt: torch SDPA, causal)
    y, h = add_rms_norm(o_proj(a), h)       residual add + post-attention norm
    g, u = gate_up(y)                       one matvec (gate/up packed)
    x = down(swiglu(g, u))                  kernels/swiglu.py
    (one token, packed weights: each norm and the SwiGLU inside the next matvec's read, kernels/fused_matvec.py)
    ... final add + norm on the last token, lm_head, float32 logits.

The position of the token is read from a device tensor, so a captured graph replays for every position. At batch 1
the bound is reading the weights once (Qwen3-4B: 7.5 GiB, ~2.7 ms at an H100's 2.97 TB/s copy bandwidth); the rest
is ~10 launches a layer of a few microseconds each (7 with the fused inputs, `TUNESMITH_DECODE_FUSE=1`, read when
a step is built: off by default until it is timed on a GPU, bench/README.md). Measured on the
H100 (.bench/decode_bench.py, bench/README.md): 257.5 tokens/s, 3.9 ms a token (232 with cuBLAS's matvecs in place
of kernels/matvec.py), against 155 for transformers' forward in the same CUDA graph.

The step reads weights and never calls a layer's modules, so it runs only where that skips nothing (`unsupported`):
a layer with forward pre-hooks (engine/memory/offload.py's weight streaming brings weights in with one) or a module
whose forward was replaced (accelerate's offload hooks) decodes through the model's own forward instead.

Packed projections: a matvec of the q, k and v weights together reads the same bytes as three but is one launch, and
the small k/v products no longer run split-K with an extra reduction kernel. So when a layer's q/k/v (and gate/up)
are plain nn.Linear weights, they are copied once into one buffer per group and each original Parameter's `.data`
becomes a row slice of it (`pack_rows`): no second copy of the weights, the same Parameter objects. Why that is safe:

- PEFT and training see the modules and Parameters they saw before (same objects, names, shapes, contiguous);
  optimizers and PEFT's (unsafe) merge update `.data` in place, which writes through to the packed buffer.
- transformers' save_pretrained finds the slices share storage, sees they are disjoint and clones them before writing
  safetensors; torch.save stores the shared storage once. (safetensors' own save_file on a raw state_dict would refuse
  shared storage; nothing in the engine calls it on a model's weights.)
- Anything that replaces a Parameter's `.data` (`model.to()`, PEFT's safe merge, an fp32 cast of trainable weights)
  leaves that Parameter with storage of its own again and the buffer stale: `signature()` reads every weight's
  address, and engine.chat.decode rebuilds the step (and drops its graphs) when it changed, before each reply.
- Not when a decoder layer carries an instance `forward` (engine/patching/graphs.py installs one to replay training
  graphs): a captured graph holds the weights' addresses, and moving them would make it read freed memory. Those
  models keep separate matvecs.

NF4 groups: a QLoRA model's q/k/v (and gate/up) are bitsandbytes NF4 weights, which are not copied: the group runs
kernels/nf4_group_matvec.py, one launch that reads each weight where bitsandbytes keeps it (the same bytes and
QuantState fields, the nested offset read once as a Python float, `_nf4_fields`) and writes one output of the summed
rows, for up to its MAX_ROWS rows of x. Weights the kernel's tiling cannot split, a mixed group (NF4 and dense) or a
longer prompt take a launch per projection as before. `TUNESMITH_NF4_GROUPS=0` in the environment (read at import)
turns the groups off, to measure them against separate launches on the same machine.

Adapters: PEFT LoRA layers stay unmerged. A LoRA Linear's base (dense, or bitsandbytes NF4 through kernels/nf4_matvec.py
for up to its MAX_ROWS rows) is computed as above and each active adapter adds `lora_B(lora_A(x)) * scaling` in place,
as PEFT's forward does (with its dtype casts; dropout is off in eval), unless the adapters are disabled
(`disable_adapter()`) or merged. Whether they are is read when the step runs, so engine.chat.decode keeps one graph per
adapter state. Any other kind of module (DoRA, 8-bit, a custom layer) runs its own forward.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from kernels import dispatch
from kernels.add_rms_norm import add_rms_norm
from kernels.decode_attention import decode_attention
from kernels.fused_matvec import norm_matvec, swiglu_matvec
from kernels.matvec import matvec
from kernels.nf4 import cpu_repacked
from kernels.nf4_group_matvec import nf4_group_matvec, one_launch
from kernels.nf4_matvec import MAX_ROWS, nf4_matvec
from kernels.rope_kv_cache import rope_kv_cache
from kernels.swiglu import swiglu

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "FastRMSNorm")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # a position's cos/sin do not depend on the sequence length
ACTIVATIONS = ("silu", "swish")
NF4_GROUPS = os.environ.get("TUNESMITH_NF4_GROUPS", "1") != "0"  # one NF4 launch per group (module docstring)


def fuse_on() -> bool:
    """TUNESMITH_DECODE_FUSE=1: one token's norms and SwiGLU inside the packed matvecs (kernels/fused_matvec.py); off
    by default (the norms and SwiGLU as kernels of their own): measured slower on an H100, 269.2 against 278.1
    tokens/s on qwen3_4b bf16 (bench/README.md, "The norms and SwiGLU inside the matvecs"). Read per step built."""
    return os.environ.get("TUNESMITH_DECODE_FUSE", "0") == "1"


def _eps(norm) -> float:
    eps = getattr(norm, "variance_epsilon", None)
    return float(eps if eps is not None else norm.eps)


def _is_lora(module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")


def _ptr(t) -> int | None:
    return t.data_ptr() if isinstance(t, torch.Tensor) else None


def _norm_problem(norm, where: str) -> str | None:
    if type(norm).__name__ not in NORMS or getattr(norm, "weight", None) is None:
        return f"{where} is a {type(norm).__name__}, not a Llama-style RMSNorm"
    if getattr(norm, "offset", 0.0):
        return f"{where} scales by (offset + w)"
    return None


def unsupported(net) -> str | None:
    """Why the step cannot run `net` (a transformers causal LM, not a PeftModel), or None when it can."""
    cfg = net.config
    kind = cfg.model_type
    if kind not in FAMILIES:
        return f"model type '{kind}' has no decode step of ours (only {', '.join(FAMILIES)})"
    if getattr(cfg, "sliding_window", None) is not None or any(
        t != "full_attention" for t in getattr(cfg, "layer_types", None) or []
    ):
        return f"{kind} with sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") not in ACTIVATIONS:
        return f"MLP activation '{cfg.hidden_act}'"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return "logit soft-capping"
    decoder = getattr(net, "model", None)
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(decoder, "rotary_emb"):
        return f"an unknown layout ({type(net).__name__} has no .model.layers / .model.rotary_emb)"
    rope_type = getattr(decoder.rotary_emb, "rope_type", "default")
    if rope_type not in ROPE_TYPES:
        return f"RoPE type '{rope_type}', whose frequencies depend on the sequence length"
    if (problem := _norm_problem(decoder.norm, "the final norm")) is not None:
        return problem
    devices = {p.device for p in net.parameters()}
    if len(devices) != 1 or next(iter(devices)).type == "meta":
        return f"weights on {sorted(str(d) for d in devices)} (offloaded or split across devices)"
    for i, layer in enumerate(decoder.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")):
            return f"layer {i}'s attention is a {type(attn).__name__} without q/k/v/o projections"
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return f"layer {i}'s MLP is a {type(mlp).__name__} without gate/up/down projections"
        if getattr(attn, "sliding_window", None) is not None:
            return f"layer {i} has a sliding window"
        for name, module in layer.named_modules():  # the step reads weights and skips every module's forward
            if module._forward_pre_hooks:
                return f"layer {i}{' ' + name if name else ''} runs forward pre-hooks (weight streaming, offload)"
            if name and "forward" in vars(module):
                return f"layer {i}'s {name} has a replaced forward (offload hooks or another wrapper)"
        norms = [(layer.input_layernorm, "input"), (layer.post_attention_layernorm, "post-attention")]
        if getattr(attn, "q_norm", None) is not None:
            norms += [(attn.q_norm, "q"), (attn.k_norm, "k")]
        for norm, name in norms:
            if (problem := _norm_problem(norm, f"layer {i}'s {name} norm")) is not None:
                return problem
    return None


def _nf4_fields(weight, state) -> dict:
    """nf4_matvec's arguments from a bitsandbytes QuantState, read once here: the nested offset is a GPU scalar, and
    reading it inside a captured graph would be a host sync."""
    nested = state.nested
    return dict(
        packed=weight,
        absmax=state.absmax,
        shape=tuple(state.shape),
        blocksize=state.blocksize,
        code=state.code.float().contiguous(),
        absmax2=state.state2.absmax.float().contiguous() if nested else None,
        code2=state.state2.code.float().contiguous() if nested else None,
        offset=float(state.offset) if nested else 0.0,
        blocksize2=state.state2.blocksize if nested else 256,
    )


class Projection:
    """One Linear of the model as the step computes it: "dense" (nn.Linear), "nf4" (bitsandbytes Linear4bit), each
    with the PEFT LoRA terms of the adapters active when it runs; or "module": anything else runs its own forward."""

    def __init__(self, module):
        self.module = module
        self.lora = module if _is_lora(module) else None
        self.base = module.get_base_layer() if self.lora is not None else module
        state = getattr(getattr(self.base, "weight", None), "quant_state", None)
        if self.lora is not None and (getattr(self.lora, "lora_variant", None) or self._lora_not_linear()):
            self.kind = "module"  # DoRA and other variants: PEFT's forward
        elif type(self.base) is nn.Linear:
            self.kind = "dense"
        elif (
            state is not None
            and getattr(state, "quant_type", None) == "nf4"
            and type(self.base).__name__ == "Linear4bit"
            and not cpu_repacked(state)
        ):
            self.kind = "nf4"
            self.nf4 = _nf4_fields(self.base.weight, state)
            # The step reads this weight's bitsandbytes layout: keep bitsandbytes' CPU eval path (the prompt, or
            # transformers' generate on the same model) from repacking it under us (see kernels.nf4.cpu_repacked).
            self.base.support_avx512bf16_for_cpu = False
        else:
            self.kind = "module"

    def _lora_not_linear(self) -> bool:
        return any(type(a) is not nn.Linear for a in self.lora.lora_A.values())

    def base_out(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's product (the whole module's, for kind "module")."""
        if self.kind == "dense":
            return matvec(x, self.base.weight, self.base.bias)  # F.linear for a prompt
        if self.kind == "nf4":
            if x.shape[0] > MAX_ROWS:
                return self.base(x)  # a longer prompt: bitsandbytes' own matmul (dequantize, then cuBLAS)
            return nf4_matvec(x, bias=self.base.bias, **self.nf4)  # a token, B rows' tokens, a short prompt
        return self.module(x)

    def add_lora(self, x: torch.Tensor, y: torch.Tensor, casts: dict | None = None, mask=None) -> None:
        """Add the active adapters' terms to `y` in place, with PEFT's casts (its Linear adds in the adapter's dtype
        and rounds once; its Linear4bit rounds the term to the output dtype first). `casts` keeps x cast to an
        adapter dtype for the other projections of the same x. `mask` (rows, 1) of ones and zeros keeps the terms
        of the rows whose adapter is on (a batch of base and tuned replies); a zero term leaves a row's y as is."""
        lora = self.lora
        if lora is None or self.kind == "module" or lora.disable_adapters or lora.merged:
            return
        casts = {} if casts is None else casts
        for name in lora.active_adapters:
            if name not in lora.lora_A:
                continue
            a, b = lora.lora_A[name], lora.lora_B[name]
            dtype = a.weight.dtype
            if dtype not in casts:
                casts[dtype] = x if x.dtype == dtype else x.to(dtype)
            term = b(a(casts[dtype])) * lora.scaling[name]
            if mask is not None:
                term = term * mask.to(term.dtype)
            y.add_(term.to(y.dtype) if self.kind == "nf4" else term)

    def __call__(self, x: torch.Tensor, casts: dict | None = None, mask=None) -> torch.Tensor:
        y = self.base_out(x)
        self.add_lora(x, y, casts, mask)
        return y

    def after_swiglu(self, gate, up, fuse: bool, mask=None) -> torch.Tensor:
        """self(swiglu(gate, up)); a dense weight with `fuse` reads gate and up itself (kernels.fused_matvec)."""
        if not fuse or self.kind != "dense":
            return self(swiglu(gate, up), None, mask)
        y, v = swiglu_matvec(gate, up, self.base.weight, self.base.bias)
        self.add_lora(v, y, None, mask)
        return y


class Group:
    """Projections of the same input (q/k/v, or gate/up): one matvec over a packed weight when there is one, one
    NF4 launch over their weights where they lie when all are NF4 (`nf4`), else one each."""

    def __init__(self, projections: list[Projection], packed: tuple | None, nf4: bool = False):
        self.projections = projections
        self.packed = packed  # (weight, bias or None, [(start, end) rows of each projection])
        self.nf4 = [p.nf4 for p in projections] if nf4 else None  # kernels.nf4_group_matvec's weights
        self.kind = "packed" if packed is not None else "nf4" if nf4 else "separate"

    def __call__(self, x: torch.Tensor, mask=None) -> list[torch.Tensor]:
        casts = {}  # x in the adapters' dtype, cast once for the group
        if self.nf4 is not None and x.shape[0] <= MAX_ROWS:
            outs = nf4_group_matvec(x, self.nf4, [p.base.bias for p in self.projections])
        elif self.packed is None:
            return [p(x, casts, mask) for p in self.projections]
        else:
            weight, bias, bounds = self.packed
            y = matvec(x, weight, bias)
            outs = [y[:, start:end] for start, end in bounds]
        for p, out in zip(self.projections, outs, strict=True):
            p.add_lora(x, out, casts, mask)
        return outs

    def normed(self, x, h, norm, fuse: bool, mask=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(self(y), h) for y, h = add_rms_norm(x, h, norm): with `fuse` and a packed weight, one launch that
        normalizes as it reads (kernels.fused_matvec); y is still made, for the adapters."""
        if not fuse or self.packed is None:
            y, h = add_rms_norm(x, h, norm.weight, _eps(norm))
            return self(y, mask), h
        weight, bias, bounds = self.packed
        product, y, h = norm_matvec(x, h, norm.weight, _eps(norm), weight, bias)
        outs, casts = [product[:, start:end] for start, end in bounds], {}
        for p, out in zip(self.projections, outs, strict=True):
            p.add_lora(y, out, casts, mask)
        return outs, h


def _same_storage_run(tensors) -> torch.Tensor | None:
    """A tensor over `tensors` stacked by rows when they already lie back to back in one storage, else None."""
    first = tensors[0]
    offset, cols = first.storage_offset(), first.shape[1:]
    for t in tensors:
        if t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or t.storage_offset() != offset:
            return None
        if t.shape[1:] != cols or not t.is_contiguous():
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in tensors)
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, *cols), first.stride())


def pack_rows(params: list[nn.Parameter]) -> torch.Tensor:
    """One tensor holding `params` stacked by rows, with each Parameter's `.data` made a slice of it (see the module
    docstring); parameters already packed so are reused as they lie."""
    with torch.inference_mode(False), torch.no_grad():
        run = _same_storage_run([p.data for p in params])
        if run is not None:
            return run
        packed = torch.cat([p.detach() for p in params])
        start = 0
        for p in params:
            p.data = packed[start : start + p.shape[0]]
            start += p.shape[0]
        return packed


def _group(modules: list, pack: bool) -> Group:
    projections = [Projection(m) for m in modules]
    bases = [p.base for p in projections]
    if NF4_GROUPS and all(p.kind == "nf4" for p in projections):  # nothing moves: no `pack` needed
        biases = [b.bias for b in bases]
        return Group(projections, None, nf4=one_launch([p.nf4 for p in projections], 1, biases) is not None)
    can = pack and all(p.kind == "dense" for p in projections)
    can = can and len({(b.weight.dtype, b.weight.device, b.weight.shape[1]) for b in bases}) == 1
    with_bias = [b.bias is not None for b in bases]
    if not can or (any(with_bias) and not all(with_bias)):
        return Group(projections, None)
    weight = pack_rows([b.weight for b in bases])
    bias = pack_rows([b.bias for b in bases]) if all(with_bias) else None
    bounds, start = [], 0
    for b in bases:
        bounds.append((start, start + b.weight.shape[0]))
        start += b.weight.shape[0]
    return Group(projections, (weight, bias, bounds))


def _projection_signature(module) -> tuple:
    lora = module if _is_lora(module) else None
    base = module.get_base_layer() if lora is not None else module
    sig = (id(module), id(base), _ptr(getattr(base, "weight", None)), _ptr(getattr(base, "bias", None)))
    if lora is None:
        return sig
    adapters = tuple(
        (n, _ptr(lora.lora_A[n].weight), _ptr(lora.lora_B[n].weight), lora.scaling.get(n)) for n in lora.lora_A
    )
    return (*sig, tuple(lora.active_adapters), lora.merged, adapters)


def signature(net) -> tuple:
    """What a built step (and a graph captured from it) depends on: the modules in each slot, the addresses of their
    weights and the adapters' state. Equal signatures mean the step is still valid."""
    decoder = net.model
    embed = net.get_input_embeddings()
    parts = [
        id(embed),
        _ptr(getattr(embed, "weight", None)),
        _projection_signature(net.get_output_embeddings()),
        _ptr(decoder.norm.weight),
    ]
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        parts.append(tuple(_projection_signature(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")))
        parts.append(tuple(_projection_signature(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj")))
        norms = (layer.input_layernorm, layer.post_attention_layernorm, getattr(attn, "q_norm", None))
        parts.append(tuple(_ptr(getattr(n, "weight", None)) for n in (*norms, getattr(attn, "k_norm", None))))
    return tuple(parts)


def pack_blocker(net) -> str | None:
    """Why the q/k/v and gate/up weights must stay where they are, or None when they may be packed."""
    for i, layer in enumerate(net.model.layers):
        if "forward" in vars(layer):
            return f"layer {i} has an instance forward (a training CUDA graph may hold its weights' addresses)"
    return None


def choose_backend(device: torch.device) -> tuple[str, str]:
    """(kernels.dispatch backend for the step, why): the Triton kernels on CUDA when dispatch picked Triton, else the
    pure-torch references. On the CPU that is so even under TRITON_INTERPRET=1: the interpreter runs a step's kernels
    ~100x slower than the references, and tests/kernels checks them against the references; a test that wants the
    kernels in the step sets `step.backend = "triton"`."""
    if device.type != "cuda":
        return "reference", f"{device.type}: the kernels' pure-torch references"
    if dispatch.backend() != "triton":
        return "reference", f"the kernels' pure-torch references ({dispatch.REASON})"
    return "triton", "Triton kernels"


class Layer:
    """One decoder layer's pieces, as the step reads them."""

    def __init__(self, layer, pack: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.qkv = _group([attn.q_proj, attn.k_proj, attn.v_proj], pack)
        self.o = Projection(attn.o_proj)
        self.gate_up = _group([mlp.gate_proj, mlp.up_proj], pack)
        self.down = Projection(mlp.down_proj)
        self.scale = float(attn.scaling)
        self.head_dim = int(attn.head_dim)


class DecodeStep:
    """The step for one model: its layers, its KV cache and RoPE tables, and `forward`.

    Args:
        net: a transformers causal LM of a family in FAMILIES for which `unsupported(net)` is None (for a PeftModel,
            its base model: the LoRA layers inside are read where they are).
    """

    def __init__(self, net):
        self.net = net
        decoder = net.model
        self.embed = net.get_input_embeddings()
        self.final_norm = decoder.norm
        self.head = Projection(net.get_output_embeddings())
        self.blocker = pack_blocker(net)
        self.layers = [Layer(layer, self.blocker is None) for layer in decoder.layers]
        self.signature = signature(net)
        weight = getattr(self.embed, "weight", None)  # the activations' dtype (a wrapped embedding may hide it)
        self.dtype = (weight if weight is not None else self.final_norm.weight).dtype
        self.device = self.final_norm.weight.device
        cfg = net.config
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.capacity = 0
        self.k_cache = self.v_cache = self.cos = self.sin = None
        self.rows: Cache | None = None  # the batched cache (engine.chat.decode_batch)
        self.backend, self.backend_reason = choose_backend(self.device)
        self.fuse = fuse_on()  # norms and SwiGLU inside the packed matvecs (module docstring)

    def describe(self) -> str:
        groups = [g.kind for layer in self.layers for g in (layer.qkv, layer.gate_up)]
        kinds = sorted({p.kind for layer in self.layers for p in (*layer.qkv.projections, layer.o)})
        if "packed" in groups:
            layers = groups.count("packed") // 2
            how = f"q/k/v and gate/up packed into one matvec each in {layers} of {len(self.layers)} layers"
        elif "nf4" in groups:
            how = f"{groups.count('nf4')} of the {len(groups)} q/k/v and gate/up groups as one NF4 launch each"
        else:
            how = f"separate matvecs ({self.blocker or 'the projections are not plain nn.Linear or NF4 weights'})"
        return f"{len(self.layers)} layers, {'/'.join(kinds)} projections, {how}; {self.backend_reason}"

    def allocate(self, capacity: int, rows: int | None = None) -> None:
        """A KV cache and RoPE tables for positions 0..capacity-1 (the old ones are dropped first). `rows` allocates
        the batched cache instead, one per row (`self.rows`), beside the one-sequence cache."""
        if rows is not None:
            self.rows = None
            self.rows = Cache(self, capacity, rows)
            return
        self.k_cache = self.v_cache = self.cos = self.sin = None
        one = Cache(self, capacity)
        self.k_cache, self.v_cache, self.cos, self.sin = one.k, one.v, one.cos, one.sin
        self.capacity = capacity

    def forward(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Run T tokens `ids` (T,) from `position` (a device tensor; a prompt of T > 1 tokens starts at 0), writing
        their K and V into the cache; return the last token's float32 logits (V,)."""
        with dispatch.force(self.backend):
            return self._forward(ids, position, self.k_cache, self.v_cache, self.cos, self.sin)[0]

    def prefill_row(self, ids: torch.Tensor, row: int) -> torch.Tensor:
        """`forward` of a prompt (T,) from position 0 into row `row` of the batched cache: its last logits (V,)."""
        rows, start = self.rows, torch.zeros(1, dtype=torch.long, device=self.device)
        with dispatch.force(self.backend):
            return self._forward(ids, start, rows.k[:, row], rows.v[:, row], rows.cos, rows.sin)[0]

    def forward_rows(self, ids: torch.Tensor, positions: torch.Tensor, mask=None) -> torch.Tensor:
        """One token per row of the batched cache: `ids` (B,) at `positions` (B,) -> float32 logits (B, V). `mask`
        (B, 1), ones and zeros, keeps the adapters' terms of some rows only (see Projection.add_lora)."""
        rows = self.rows
        with dispatch.force(self.backend):
            return self._forward(ids, positions, rows.k, rows.v, rows.cos, rows.sin, batched=True, mask=mask)

    def _forward(self, ids, position, k_cache, v_cache, cos, sin, batched=False, mask=None) -> torch.Tensor:
        t = ids.shape[0]
        x = self.embed(ids.view(1, t))[0]
        h = None
        for i, layer in enumerate(self.layers):
            (q, k, v), h = layer.qkv.normed(x, h, layer.input_norm, self.fuse, mask)
            qk = (layer.q_norm.weight, layer.k_norm.weight) if layer.q_norm is not None else (None, None)
            eps = _eps(layer.q_norm) if layer.q_norm is not None else 1e-6
            q = rope_kv_cache(q, k, v, cos, sin, position, k_cache[i], v_cache[i], *qk, eps)
            if batched:  # (B, Hq, D): row b over its own cache
                a = decode_attention(q, k_cache[i], v_cache[i], position, layer.scale)
            elif t == 1:
                a = decode_attention(q[0], k_cache[i], v_cache[i], position, layer.scale)
            else:
                keys, values = k_cache[i, None, :, :t], v_cache[i, None, :, :t]
                a = F.scaled_dot_product_attention(
                    q.transpose(0, 1)[None], keys, values, is_causal=True, scale=layer.scale, enable_gqa=True
                )[0].transpose(0, 1)
            o = layer.o(a.reshape(t, -1), None, mask)
            (gate, up), h = layer.gate_up.normed(o, h, layer.post_norm, self.fuse, mask)
            x = layer.down.after_swiglu(gate, up, self.fuse, mask)
        if not batched:  # a prompt: the last token's logits only
            x, h = x[-1:], h[-1:]
        y, _ = add_rms_norm(x, h, self.final_norm.weight, _eps(self.final_norm))
        return self.head(y, None, mask).float()


class Cache:
    """K and V of every layer over `capacity` positions, (L, Hk, C, D), or (L, rows, Hk, C, D) for `rows` sequences
    decoding together; and the model's RoPE tables (C, D) for those positions."""

    def __init__(self, step: DecodeStep, capacity: int, rows: int | None = None):
        d = step.layers[0].head_dim
        shape = (len(step.layers), *((rows,) if rows is not None else ()), step.kv_heads, capacity, d)
        self.k = torch.zeros(shape, dtype=step.dtype, device=step.device)
        self.v = torch.zeros(shape, dtype=step.dtype, device=step.device)
        positions = torch.arange(capacity, device=step.device).view(1, capacity)
        probe = torch.empty(0, dtype=step.dtype, device=step.device)
        cos, sin = step.net.model.rotary_emb(probe, positions)  # the model's own tables, as transformers computes them
        if cos.shape[-1] != d:
            raise ValueError(f"rotary tables of {cos.shape[-1]} dims for heads of {d} (partial rotary)")
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()
        self.capacity, self.count = capacity, rows
