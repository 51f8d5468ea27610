"""Activation offload, as engine.memory.offload plans it: `Checkpoint`, the checkpoint function installed per decoder
layer, keeps each layer's input (and, with `Plan.keep_attention`, its attention outputs) in pinned host RAM through
`ActivationStore` and brings them back ahead of the backward.
"""

import contextlib
import functools

from engine.memory.weights import WeightStream


def _same_layout(buffers, tensors) -> bool:
    """Whether `buffers` (or None) match `tensors` one for one in shape and dtype."""
    return buffers is not None and [(b.shape, b.dtype) for b in buffers] == [(t.shape, t.dtype) for t in tensors]


class ActivationStore:
    """Checkpointed layers' inputs (and their attention projections' outputs, when kept) in pinned host RAM, brought
    back one layer ahead of the backward."""

    def __init__(self, device):
        import torch

        self.device = device
        self.copy = torch.cuda.Stream(device)
        self.host = {}  # layer -> its pinned buffers (reused while the shapes hold)
        self.held = {}  # layer -> its tensors on the GPU (kept, or fetched) or its host buffers (offloaded)
        self.ready = {}  # layer -> event after its copy back
        self.order = []  # layers stashed this step, in forward order
        # two GPU buffer sets the stashed layers' tensors come back into, in turn: fixed memory, where a fresh
        # allocation per layer (freed on another stream than it was filled on) made the capped allocator flush its
        # cache and wait
        self.landing = {}

    def stash(self, layer: int, tensors: list, keep: bool):
        """Keep `tensors` on the GPU (`keep`), or copy them to host RAM on the side stream; returns the event after
        those copies (None when kept): until then the GPU memory they came from must not be written."""
        import torch

        if not self.order or layer <= self.order[-1]:  # a new forward: drop what an unfinished step left
            self.order, self.held, self.ready = [], {}, {}
        self.order.append(layer)
        if keep:
            self.held[layer] = list(tensors)
            return None
        host = self.host.get(layer)
        if not _same_layout(host, tensors):
            host = self.host[layer] = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        self.copy.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy):
            for h, t in zip(host, tensors, strict=True):
                h.copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy)
        for t in tensors:
            t.record_stream(self.copy)  # the allocator keeps their memory until the copies are done
        self.held[layer] = host
        return done

    def _prefetch(self, layer: int) -> None:
        """Start copying `layer`'s tensors back into one of the two landing buffer sets, taken in turn. That set was
        last read by the backward two stashed layers later, already issued: the copy waits for it, and overlaps the
        backward in between."""
        import torch

        held = self.held.get(layer)
        if held is None or held[0].is_cuda or layer in self.ready:
            return
        slot = self.order.index(layer) % 2  # stashed layers in turn (not index parity: some may not recompute)
        landing = self.landing.get(slot)
        if not _same_layout(landing, held):
            landing = self.landing[slot] = [torch.empty_like(h, device=self.device) for h in held]
        self.copy.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy):
            for back, h in zip(landing, held, strict=True):
                back.copy_(h, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy)
        self.held[layer], self.ready[layer] = landing, event

    def fetch(self, layer: int) -> list:
        """The layer's tensors on the GPU (waiting for their copy if needed); starts bringing back the layer before.
        Work that reads them must be issued before the next `fetch`, whose prefetch reuses their set."""
        import torch

        self._prefetch(layer)
        tensors = self.held.pop(layer)
        if layer in self.ready:
            torch.cuda.current_stream(self.device).wait_event(self.ready.pop(layer))
        earlier = [i for i in self.order if i < layer]
        if earlier:
            self._prefetch(earlier[-1])
        return tensors


class Checkpoint:
    """A decoder layer's `_gradient_checkpointing_func`: forward without keeping activations, input to host RAM
    (activation offload) or kept, and in the backward the input back, the forward again with gradients (marked as a
    recompute pass, engine.patching.modules.recompute_pass, so an MLP skips the product its backward does not need),
    and the layer's backward, then the slot of a streamed layer released. With `keep_attention` the first forward
    also keeps its attention projections' outputs (q, k, v, o) beside the input, and the recompute takes them back
    instead of computing those products again (engine.patching.modules.AttentionOutputs)."""

    def __init__(
        self, index: int, store: ActivationStore | None, stream: WeightStream | None, last, graphs=None,
        keep_attention: bool = False, keep_dequantized: bool = False,
    ):  # fmt: skip
        self.index, self.store, self.stream, self.last = index, store, stream, last
        self.graphs = graphs  # engine.patching.graphs.CheckpointGraphs, or None: the passes run eagerly
        self.keep_attention = keep_attention
        self.keep_dequantized = keep_dequantized  # passed to the recompute pass (Plan.keep_dequantized)

    def __call__(self, run, hidden, *args):
        import torch

        if args or not torch.is_tensor(hidden):
            raise RuntimeError("offloaded checkpointing takes a layer called with its hidden states alone")
        if not torch.is_grad_enabled():  # a reference pass (DPO) or evaluation in training mode: nothing to keep
            return run(hidden)
        return _checkpoint_function().apply(self, run, hidden)


@functools.cache
def _checkpoint_function():
    """The autograd Function behind `Checkpoint` (built on first use: importing this module does not import torch)."""
    import torch

    from engine.patching.modules import AttentionOutputs, attention_outputs, recompute_pass

    class CheckpointFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, owner, run, hidden):
            ctx.owner, ctx.run = owner, run
            kind = hidden.device.type
            ctx.autocast = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
            ctx.rng = torch.get_rng_state(), torch.cuda.get_rng_state(hidden.device) if kind == "cuda" else None
            ctx.device = hidden.device
            graphs = owner.graphs
            out = graphs.forward(owner.index, run, hidden, owner.stream, owner.keep_attention) if graphs else None
            if out is not None:
                out, kept = out
            else:
                shared = AttentionOutputs("record")
                with attention_outputs(shared) if owner.keep_attention else contextlib.nullcontext():
                    out = run(hidden)
                kept = shared.tensors
            if owner.store is not None:
                done = owner.store.stash(owner.index, [hidden, *kept], keep=owner.index == owner.last())
                if graphs is not None:
                    graphs.stashed(owner.index, done)
            else:
                ctx.held = [hidden, *kept]
            return out

        @staticmethod
        def backward(ctx, grad):
            owner = ctx.owner
            hidden, *given = owner.store.fetch(owner.index) if owner.store is not None else ctx.held
            dx = None
            if owner.graphs is not None:
                dx = owner.graphs.backward(
                    owner.index, ctx.run, hidden, grad, ctx.autocast, owner.stream, given, owner.keep_dequantized
                )
            if dx is None:
                hidden = hidden.detach().requires_grad_()
                enabled, dtype = ctx.autocast
                kind = ctx.device.type
                shared = AttentionOutputs("given", given)
                with torch.random.fork_rng(devices=[ctx.device] if kind == "cuda" else []):
                    torch.set_rng_state(ctx.rng[0])
                    if ctx.rng[1] is not None:
                        torch.cuda.set_rng_state(ctx.rng[1], ctx.device)
                    recompute = recompute_pass(owner.keep_dequantized)
                    with torch.enable_grad(), torch.autocast(kind, dtype=dtype, enabled=enabled), recompute:
                        with attention_outputs(shared) if given else contextlib.nullcontext():
                            out = ctx.run(hidden)
                torch.autograd.backward(out, grad)
                dx = hidden.grad
            if owner.stream is not None and owner.index in owner.stream.weights:
                owner.stream.finished(owner.index)
            return None, None, dx

    return CheckpointFunction
