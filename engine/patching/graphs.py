"""CUDA graphs of the decoder layers' forward and backward: `install` for training steps that recompute nothing,
`CheckpointGraphs` for the layers engine.memory.offload's checkpoint recomputes under a small budget.

A small model's step is bound by the CPU, not the GPU: on an H100, torch.profiler found qwen3_0.6b at 4096 tokens
keeping the GPU busy 51 ms of a 215 ms step, the rest spent issuing kernels from Python (2,356 matmuls alone in two
steps, ~34 us of CPU each). Captured with torch.cuda.make_graphed_callables, every layer's forward and backward
replays as one launch each.

A layer replays its graph only when the step allows it: training with gradients, no layer of this shape checkpointed
(engine.memory.checkpointing decided so), no attention mask (plain causal attention, or a padding-free row whose
attention reads cu_seqlens: engine.data.batching), no KV cache, and a captured shape. Anything else runs the layer as it
is. `Captures` decides what is held: the first training step's shape is captured at once (fixed-length batches keep it:
the benchmark, pretraining pieces), any other shape once it has run eagerly (padding-free micro-batches come in a few
token-count buckets, each one shape), at most MAX_SHAPES shapes at a time (the least recently used set is dropped;
all sets share one memory pool, which holds a step's activations; a run under a VRAM budget holds as many as its
memory plan counts, engine.memory.offload.Plan.shapes). cu_seqlens is an input of the graphs like cos and sin, so one
graph serves every micro-batch of its bucket. Families whose attention needs a mask or a soft cap (sliding windows,
Gemma 2) are not captured. Each layer gets an instance `forward` (module tree unchanged: adapters save as before).
"""

import contextlib
import functools
import time
import types
from collections import OrderedDict

import torch
from torch import nn

from engine.data.batching import MAX_BUCKETS


class _LayerCall(nn.Module):
    """The layer's own forward with the tensors a graph takes as positional inputs; its parameters are the layer's."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden, cos, sin, *cu_seqlens):
        varlen = dict(cu_seq_lens_q=cu_seqlens[0], cu_seq_lens_k=cu_seqlens[0]) if cu_seqlens else {}
        layer = self.layer
        return type(layer).forward(layer, hidden, position_embeddings=(cos, sin), attention_mask=None, **varlen)

    def parameters(self, recurse: bool = True):
        """The layer's parameters and its packed adapters' pieces (engine.patching.modules.PackedAdapters: leaf
        tensors, not Parameters of the layer), which make_graphed_callables differentiates as the graph's inputs."""
        from engine.patching.modules import PackedProjections

        yield from self.layer.parameters(recurse)
        for m in self.layer.modules():
            if isinstance(m, PackedProjections):
                yield from m.packed.values()


# Graph sets held at once: as many as a run plans buckets (engine.data.batching), so none is captured twice. They share
# one memory pool (a step replays one shape's graphs from its forward to its backward, so sets of other shapes may
# reuse that memory between steps), and a set dropped and captured again costs its capture (~1.2 s for qwen3_4b's 36
# layers at 512-900 tokens on the H200): an identity run of 400 examples used 5 buckets, and with 3 sets held
# re-captured two of them in its 50 steps.
MAX_SHAPES = MAX_BUCKETS

# What each shape held adds beyond the one memory pool every shape shares, the sizes in the estimate (engine.memory.
# estimate.graph_shape_bytes), T tokens, h hidden, d head_dim, 16-bit activations:
# - `install` (make_graphed_callables, torch/cuda/graphs.py): per layer, the sample inputs it keeps as the graphs'
#   static inputs (hidden T*h, cos and sin T*d each, cu_seqlens), the static gradient of the output it allocates
#   before the backward capture (T*h), and, live in the pool so no later capture reuses them, the static output (T*h)
#   and the static input gradients: the hidden state's (T*h) and the layer's packed adapters' (fp32, their size).
#   The layer's saved activations are freed when its backward is captured: that is the pool's shared memory.
# - `CheckpointGraphs`: one static set per shape, outside the pool: x, dy and out (T*h each), cos and sin (T*d each),
#   the RoPE tables made from them (fp32 T*d/2 twice, int64 positions T), cu_seqlens, and with kept attention outputs
#   two sets (even and odd layers) of the q, k, v and o projections' outputs. The graphs write only into those, so
#   their pool memory is scratch that every layer's and every shape's graph reuses (one pool for all sets); the
#   adapters' gradient buffer is one for all shapes too.
# cu_seqlens (int32, a run's fixed number of entries) and the graphs' own device memory are a few KiB, not counted.


class Captures:
    """The graphs held (per shape, at most `most`) and whether a capture is still possible."""

    def __init__(self, most: int = MAX_SHAPES):
        self.most = most
        self.graphs: OrderedDict[tuple, list] = OrderedDict()  # shape key -> graphed callable per layer, LRU first
        self.seen: set = set()  # shape keys run eagerly once
        self.steps = 0
        self.enabled = True  # False once a capture failed (out of memory, or a capture the torch build refuses)
        self.pool = None  # the memory pool every set is captured into

    def before_step(self, key) -> bool:
        """Called once per training forward with its shape key (None when the step cannot use graphs); says whether
        to capture `key` now: at the first step (as before any eager run), or at a shape's second step (its first
        ran eagerly: kernels compiled and tuned), dropping the least recently used set beyond `most`."""
        first = self.steps == 0
        self.steps += 1
        if key is None or not self.enabled:
            return False
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return False
        if not first and key not in self.seen:
            self.seen.add(key)
            return False
        while self.graphs and len(self.graphs) >= self.most:
            self.graphs.popitem(last=False)
        return True


def eligible_layers(model) -> list | None:
    """The decoder layers, when every one can be captured (fast-path attention without window or soft cap, and a
    fast MLP or a mixture-of-experts block that `moe.capturable` allows)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from engine.patching.modules import FastAttention, FastMLP
    from engine.patching.moe import capturable

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if not isinstance(attn, FastAttention) or not (isinstance(mlp, FastMLP) or capturable(model, mlp)):
            return None
        if getattr(attn, "sliding_window", None) is not None or getattr(attn, "attn_logit_softcapping", None):
            return None
    return layers or None


def install(model, log=print, most: int = MAX_SHAPES, per_shape: bool = False) -> bool:
    """Give each decoder layer a forward that replays captured graphs when the step allows, holding at most `most`
    shapes' graphs (a memory plan's `shapes`); False when the model's layers cannot be captured (the reason is
    logged). Micro-batches whose token count is in `model.eager_tokens` (a size only one micro-batch of the run has,
    filled by the training loop) run as they are. `per_shape`: only micro-batches whose token count is in
    `model.layer_graph_tokens` are captured, the sizes at which a memory plan that recomputes layers at its largest
    micro-batch recomputes none and has room for these graphs (engine.memory.checkpointing adds them as it decides
    each size); the others run as they are, their recomputed layers through CheckpointGraphs."""
    from engine.patching.modules import mask_skipped
    from engine.patching.moe import FastMoEBlock, reads_host

    layers = eligible_layers(model)
    if layers is None:
        log("cuda graphs: off (a layer needs an attention mask, a window or a soft cap, or is not on the fast path)")
        return False
    if any(isinstance(getattr(layer, "mlp", None), FastMoEBlock) for layer in layers):  # moe.capturable
        if per_shape:
            log("cuda graphs: off (mixture-of-experts layers are captured only where the plan recomputes nothing)")
            return False
        most = 1  # the memory plan counts no MoE layer's graphs: one shape, whose pool holds what eager steps would
    model.shape_graphs = True  # each padding-free bucket costs a capture: engine.data.batching.plan_buckets
    model.shapes_held = most  # engine.training.sft plans at most this many bucket sizes
    allowed = model.layer_graph_tokens = set() if per_shape else None
    eager = model.eager_tokens = set()  # the run's sizes of one micro-batch (engine.data.batching.used_once)
    held = Captures(most)
    graphs = held.graphs

    def capture(key, hidden, cos, sin, cu_seqlens, warmed):
        if any(isinstance(layer.mlp, FastMoEBlock) and reads_host(layer.mlp) for layer in layers):
            held.enabled = False  # decided here: the NF4 experts' copies come after install (engine.models.loading)
            return log("cuda graphs: off (NF4 experts dequantized a chunk at a time read their groups on the host)")
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        calls = [_LayerCall(layer) for layer in layers]
        extra = (cu_seqlens,) if cu_seqlens is not None else ()
        samples = tuple(
            (torch.randn_like(hidden).requires_grad_(), cos.detach().clone(), sin.detach().clone())
            + tuple(t.clone() for t in extra)
            for _ in calls
        )
        started = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
                # A shape that ran eagerly has its kernels compiled and tuned: one warm-up pass instead of three.
                if held.pool is None:
                    held.pool = torch.cuda.graph_pool_handle()
                graphed = torch.cuda.make_graphed_callables(
                    tuple(calls), samples, num_warmup_iters=1 if warmed else 3, pool=held.pool
                )
                graphs[key] = list(graphed)
        except Exception as exc:  # noqa: BLE001  out of memory, or a capture this torch refuses: run as they are
            held.enabled = False
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            reason = "out of GPU memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else str(exc).split("\n")[0]
            log(f"cuda graphs: no new captures for this run ({reason}); {len(graphs)} shape(s) kept")
            return
        log(
            f"cuda graphs: captured {len(calls)} layers' forward and backward for batch {tuple(hidden.shape[:2])} in "
            f"{time.perf_counter() - started:.2f} s ({len(graphs)} shape(s) held)"
        )

    for index, layer in enumerate(layers):

        def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None, **kw):
            cos, sin = position_embeddings if position_embeddings is not None else (None, None)
            cu_seqlens = kw.get("cu_seq_lens_q")
            usable = (
                self.training
                and torch.is_grad_enabled()
                and not self.gradient_checkpointing
                and (attention_mask is None or cu_seqlens is not None and mask_skipped(attention_mask))
                and past_key_values is None
                and cos is not None
                and hidden_states.is_cuda
                and (allowed is None or hidden_states.shape[0] * hidden_states.shape[1] in allowed)
                and hidden_states.shape[0] * hidden_states.shape[1] not in eager
            )
            key = None
            if usable:
                cu_shape = tuple(cu_seqlens.shape) if cu_seqlens is not None else None
                key = (tuple(hidden_states.shape), tuple(cos.shape), hidden_states.dtype, cu_shape)
            if self.graph_index == 0 and self.training and torch.is_grad_enabled() and held.before_step(key):
                capture(key, hidden_states, cos, sin, cu_seqlens, warmed=key in held.seen)
            if key in graphs:
                if not hidden_states.requires_grad:  # the graph was captured with an input that needs a gradient
                    hidden_states = hidden_states.detach().requires_grad_()
                extra = (cu_seqlens,) if cu_seqlens is not None else ()
                return graphs[key][self.graph_index](hidden_states, cos, sin, *extra)
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


SET_ATTRS = ("graphs", "warm", "static", "tables", "cos_seen", "copied")  # CheckpointGraphs' per-shape state


class CheckpointGraphs:
    """CUDA graphs of checkpointed layers' two passes (engine.memory.activations.Checkpoint): the forward without
    gradients, and the recompute with the backward, one graph each per layer, replayed when a step allows.

    A checkpointed step under a small budget is bound by the host issuing ~40 small kernels per layer per pass
    (bench/README.md); a replay issues one. Every graph reads its input from one static buffer and writes its
    results (the layer output; the input and adapter gradients) into static buffers outside the graphs' shared
    memory pool, which therefore holds only one layer's working set at a time: the layers run one after another,
    so their graphs reuse the same memory. The layer's packed adapters (engine.patching.modules.pack_adapters) are
    differentiated as fresh leaves sharing their storage (torch 2.11 refuses a capture through gradient nodes an
    eager backward has used), and their gradients are accumulated into `.grad` after each replay. A streamed layer's
    weights are read where its ring slot holds them, so it gets a graph per slot (`WeightStream.slot_key`).

    A layer replays only when: it was run eagerly once at this shape (kernels compiled and tuned), the step is
    unmasked (no attention mask, no KV cache), its attention has no window, soft cap or dropout, its MLP is not tiled,
    and its trainable parameters are all packed. Each shape (a padding-free bucket: engine.data.batching) has its own
    static buffers (cu_seqlens among them) and graphs, captured once it has run eagerly at that shape, into the one pool
    all sets share; at most `most` sets are held (a memory plan's `shapes`), the least recently used dropped.
    A capture that fails (out of memory under the cap, or anything the graph cannot hold) switches the
    graphs off for the run, with the reason logged; the layers then run eagerly as before."""

    def __init__(self, layers, log=print, most: int = MAX_SHAPES):
        self.layers = layers
        self.log = log
        self.most = most
        self.enabled = True
        self.key = None  # the shape the current set of graphs and static buffers is for
        self.sets = OrderedDict()  # other shapes' sets (SET_ATTRS), least recently used first
        self.grad_buffer = None  # the adapters' gradients every graph writes (the layers run one at a time)
        self.graphs = {}  # (layer, phase, slot key) -> CUDAGraph
        self.warm = set()  # (layer, phase) run eagerly at this shape
        self.static = {}
        self.tables = None  # the RoPE tables the graphs read (modules.rope_tables), refreshed when cos changes
        self.cos_seen = None
        self.pool = None  # every set's graphs: each writes only static buffers, so its pool memory is scratch
        self.grads = {}  # layer -> [(module, packed group name, its view of the shared gradient buffer)], or None
        self.copied = [None, None]  # events after the copies out of the even and odd layers' kept attention outputs

    def _eligible(self, index, run, hidden, autocast):
        """The step's shape key when layer `index` may replay or be captured now, else None. `autocast`: the
        forward's (enabled, dtype), which the backward (on autograd's thread) must pass along."""
        kw = getattr(run, "keywords", None)
        if not self.enabled or kw is None or not hidden.is_cuda:
            return None
        cos_sin = kw.get("position_embeddings")
        from engine.patching.modules import mask_skipped

        cu_seqlens = kw.get("cu_seq_lens_q")
        mask = kw.get("attention_mask")
        if not (mask is None or cu_seqlens is not None and mask_skipped(mask)):
            return None
        if kw.get("past_key_values") is not None or cos_sin is None:
            return None
        layer = self.layers[index]  # fast-path attention and MLP without window or soft cap: `eligible_layers`
        if layer.mlp.tile is not None or getattr(layer.self_attn, "attention_dropout", 0.0):
            return None
        if index not in self.grads:
            from engine.patching.modules import PackedProjections

            groups = [(m, name) for m in layer.modules() if isinstance(m, PackedProjections) for name in m.packed]
            trained = any(p.requires_grad for p in layer.parameters())  # any not packed
            same = groups and not trained and len({m.packed[name].dtype for m, name in groups}) == 1
            self.grads[index] = [(m, name, None) for m, name in groups] if same else None
        if self.grads[index] is None:
            return None
        cos = cos_sin[0]
        cu_shape = tuple(cu_seqlens.shape) if cu_seqlens is not None else None
        return (tuple(hidden.shape), hidden.dtype, tuple(cos.shape), cos.dtype, *autocast, cu_shape)

    def _prepare(self, key, run, hidden):
        """Static buffers for `key` (dropping graphs of another shape) and the step's cos/sin and RoPE tables in
        them; returns `run` reading the static cos/sin."""
        from engine.patching.modules import rope_tables

        cos, sin = run.keywords["position_embeddings"]
        cu_seqlens = run.keywords.get("cu_seq_lens_q")
        if key != self.key:
            self._switch(key, hidden, cos, sin, cu_seqlens)
        if cos is not self.cos_seen:  # a new step (each forward makes its cos/sin once)
            self.static["cos"].copy_(cos)
            self.static["sin"].copy_(sin)
            rope_tables(self.static["cos"], self.static["sin"], out=self.tables)
            if cu_seqlens is not None:
                self.static["cu"].copy_(cu_seqlens)
            self.cos_seen = cos
        static = {"position_embeddings": (self.static["cos"], self.static["sin"])}
        if cu_seqlens is not None:
            static.update(cu_seq_lens_q=self.static["cu"], cu_seq_lens_k=self.static["cu"])
        return functools.partial(run.func, **{**run.keywords, **static})

    def _switch(self, key, hidden, cos, sin, cu_seqlens):
        """Make `key`'s set of graphs and static buffers the current one (new, or held from an earlier step),
        keeping the one it replaces unless `most` sets are held."""
        from engine.patching.modules import rope_tables

        if self.key is not None:
            self.sets[self.key] = {name: getattr(self, name) for name in SET_ATTRS}
        self.key = key
        held = self.sets.pop(key, None)
        if held is not None:
            for name, value in held.items():
                setattr(self, name, value)
            return
        while len(self.sets) >= self.most:  # the others held, beside the one made current
            self.sets.popitem(last=False)
        self.graphs, self.warm, self.cos_seen, self.copied = {}, set(), None, [None, None]
        self.static = dict(
            x=torch.empty_like(hidden),
            dy=torch.empty_like(hidden),
            out=torch.empty_like(hidden),  # the forward's output, or the backward's input gradient
            cos=torch.empty_like(cos),
            sin=torch.empty_like(sin),
        )
        if cu_seqlens is not None:
            self.static["cu"] = torch.empty_like(cu_seqlens)
        self.tables = rope_tables(self.static["cos"], self.static["sin"])

    def _ready(self, index, phase, run, hidden, autocast, stream):
        """(`run` on the static cos/sin, the weights' slot key) when layer `index` replays (or is captured) in
        `phase` now, its streamed weights made resident; None when it runs eagerly."""
        key = self._eligible(index, run, hidden, autocast)
        if key is None:
            return None
        static_run = self._prepare(key, run, hidden)
        if (index, phase) not in self.warm:  # first eagerly at this shape: kernels compiled and tuned
            self.warm.add((index, phase))
            return None
        if stream is not None and index in stream.weights:
            stream.use(index, phase)
        self.static["x"].copy_(hidden)
        return static_run, stream.slot_key(index) if stream is not None else None

    def forward(self, index, run, hidden, stream=None, keep_attention=False):
        """The layer's forward without gradients through its graph (capturing it first if due): (a copy of its
        output, the attention projections' outputs it kept when `keep_attention`, else []), or None: run it eagerly.
        The kept outputs are static buffers, one set for even layers and one for odd: the caller copies them out and
        reports the copy's event (`stashed`) before the layer after next writes the same set again."""
        autocast = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        ready = self._ready(index, "f", run, hidden, autocast, stream)
        if ready is None:
            return None
        static_run, slot = ready
        kept = self._kept_set(index, hidden) if keep_attention else []
        graph = self.graphs.get((index, "f", slot))
        if graph is None:
            graph = self._capture(index, "f", slot, lambda: self._forward_body(static_run, kept), stream)
            if graph is None:
                return None  # the caller runs it eagerly (`use` again finds its weights resident)
        if keep_attention and self.copied[index % 2] is not None:
            torch.cuda.current_stream().wait_event(self.copied[index % 2])  # the set's last copy out is done
        graph.replay()
        if stream is not None and index in stream.weights:
            stream.finished(index)
        return self.static["out"].clone(), kept

    def stashed(self, index, done) -> None:
        """The event after the copies out of layer `index`'s kept set (None: the set is held as it is)."""
        self.copied[index % 2] = done

    def _kept_set(self, index, hidden):
        """The static buffers layer `index`'s forward writes its q, k, v and o projections' outputs into."""
        sets = self.static.get("kept")
        if sets is None:
            attn = self.layers[index].self_attn
            enabled, dtype = self.key[4:6]
            dtype = dtype if enabled else hidden.dtype
            widths = [getattr(attn, name).out_features for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
            sets = self.static["kept"] = [
                [torch.empty(*hidden.shape[:-1], w, dtype=dtype, device=hidden.device) for w in widths] for _ in "01"
            ]
        return sets[index % 2]

    def _forward_body(self, static_run, kept):
        from engine.patching.modules import AttentionOutputs, attention_outputs

        with torch.no_grad(), attention_outputs(AttentionOutputs("out", kept)) if kept else contextlib.nullcontext():
            out = static_run(self.static["x"])
            self.static["out"].copy_(out[0] if isinstance(out, tuple) else out)

    def backward(self, index, run, hidden, grad, autocast, stream=None, given=(), keep_dequantized=False):
        """The layer's recompute and backward through its graph: the input's gradient, with the adapters' gradients
        accumulated into their `.grad`; None: do it eagerly. `autocast` is the forward's (enabled, dtype); `given`,
        the attention projections' outputs its forward kept, copied into the layer's set of static buffers (which
        the forward wrote them into, and which the backward reads); `keep_dequantized`, the recompute pass's (a
        micro-batch size decides it, as it decides the shape the graphs are for)."""
        ready = self._ready(index, "b", run, hidden, autocast, stream)
        if ready is None:
            return None
        static_run, slot = ready
        self.static["dy"].copy_(grad)
        static_given = self._kept_set(index, hidden) if given else []  # free in the backward: the forward's set
        for buffer, t in zip(static_given, given, strict=True):
            if buffer.data_ptr() != t.data_ptr():  # the last layer's are still where its forward wrote them
                buffer.copy_(t)
        entries = self._grad_views(index)
        graph = self.graphs.get((index, "b", slot))
        if graph is None:
            body = lambda: self._backward_body(static_run, entries, static_given, keep_dequantized)  # noqa: E731
            graph = self._capture(index, "b", slot, body, stream)
            if graph is None:
                return None  # the caller runs it eagerly (its weights are resident: `use` was called)
        graph.replay()
        for m, name, view in entries:  # into .grad before the next layer's graph overwrites the shared buffer
            m.packing.link()
            m.packed[name].grad.add_(view)
        return self.static["out"].clone()

    def _grad_views(self, index):
        """The layer's (module, packed group, view of the shared gradient buffer) entries: every layer's graph
        writes its adapters' gradients into the same buffer (the layers run one at a time)."""
        entries = self.grads[index]
        if entries[0][2] is not None:
            return entries
        params = [m.packed[name] for m, name, _ in entries]
        numel, dtype = sum(p.numel() for p in params), params[0].dtype
        buf = self.grad_buffer
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            if buf is not None:  # graphs that wrote into the old buffer are captured again, in a new pool
                self.graphs.clear()
                self.sets.clear()
                self.pool = None
                for other in self.grads.values():
                    if other is not None and other is not entries:
                        other[:] = [(m, n, None) for m, n, _ in other]
            buf = self.grad_buffer = torch.empty(numel, dtype=dtype, device=params[0].device)
        views, start = [], 0
        for (m, name, _), p in zip(entries, params, strict=True):
            views.append((m, name, buf[start : start + p.numel()].view(p.shape)))
            start += p.numel()
        entries[:] = views
        return entries

    def _backward_body(self, static_run, entries, given, keep_dequantized):
        from engine.patching.modules import AttentionOutputs, attention_outputs, recompute_pass

        leaves = []
        for m, name, _ in entries:  # fresh leaves on the same storage, put back after the capture
            leaf = m.packed[name].detach().requires_grad_()
            leaves.append((m, name, m.packed[name], leaf))
            m.packed[name] = leaf
        try:
            x = self.static["x"].detach().requires_grad_()
            with torch.enable_grad():  # under the capture's autocast (`_capture`)
                shared = attention_outputs(AttentionOutputs("given", given)) if given else contextlib.nullcontext()
                with recompute_pass(keep_dequantized), shared:
                    out = static_run(x)
                grads = torch.autograd.grad(out, [x, *(leaf for *_, leaf in leaves)], self.static["dy"])
            self.static["out"].copy_(grads[0])
            for (_, _, buf), g in zip(entries, grads[1:], strict=True):
                buf.copy_(g)
        finally:
            for m, name, piece, _ in leaves:
                m.packed[name] = piece

    def _capture(self, index, phase, slot, body, stream):
        """Capture `body` as the graph of (index, phase, slot); None after switching graphs off on a failure."""
        from engine.patching.modules import use_rope_tables

        use_rope_tables(self.static["cos"], self.tables)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        if stream is not None:
            stream.paused = True
        try:
            enabled, dtype = self.key[4:6]
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                    body()
        except Exception as exc:  # noqa: BLE001  anything a graph cannot hold: the layers run eagerly instead
            self.enabled = False
            self.graphs.clear()
            self.sets.clear()
            self.pool = None
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            reason = "out of GPU memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else f"{exc}".split("\n")[0]
            self.log(f"cuda graphs: off for the checkpointed layers ({reason}); they run as they are")
            return None
        finally:
            if stream is not None:
                stream.paused = False
        self.graphs[(index, phase, slot)] = graph
        if len(self.graphs) == 1:
            self.log(
                f"cuda graphs: capturing the checkpointed layers' passes for batch {tuple(self.key[0][:2])} "
                f"({len(self.sets) + 1} shape(s) held)"
            )
        return graph
