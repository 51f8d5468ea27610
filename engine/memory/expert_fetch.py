"""Active-only expert fetch for streamed mixture-of-experts layers (engine.memory.weights.WeightStream).

A streamed layer's experts are most of its bytes (Qwen3-30B-A3B: 288 of 297 MiB in NF4), and a small micro-batch
routes its tokens to few of them: 4 tokens of Qwen3-30B-A3B pick at most 32 of a layer's 128 experts. For such a
micro-batch the ring leaves a layer's experts out of its prefetch; the router's forward hook then reads which experts
its tokens picked and copies only those into the layer's slot (a compact [A, ...] stack in expert-id order, its NF4
scales gathered beside it), and the grouped path (engine.patching.moe) multiplies by it with each group's end taken
from the picked experts' rows alone (the other experts' groups are empty). The recompute in the backward runs the
router again on the same input, so it picks the same experts (were they others, it would copy its own); while the
layer holds them in its slot they are not copied again.

The rule, once per micro-batch from its token count T (k experts a token, E a layer): with balanced routing (what the
load-balancing loss aims at) a micro-batch is expected to use a share 1 - (1 - k/E)^T of the experts. When that is at
most ACTIVE_SHARE, the experts wait for the router; else the ring prefetches the whole layer ahead of use as before.
After the router, a layer whose tokens picked more than ACTIVE_SHARE of the experts gets all of them (fallback), as
does one run through PEFT's own wrappers (merged or several adapters, dropout: they read the whole stack).

Why half: a layer whose experts are prefetched takes about max(C, W) (C its compute, W the copy of its experts,
overlapped); one whose experts wait for the router takes C + s W (s the share copied; the compute waits for it). With
s at most one half that is the faster one whenever C < W / 2: a micro-batch of a few tokens computes a layer far
faster than its hundreds of MiB of experts cross PCIe. Past half, the whole tensors are copied (one copy each
instead of one per run of picked experts, and no gathered scales), and the larger micro-batches that pick that many
are the ones whose compute hides the prefetch.

Memory: the compact stack sits in the layer's slot, which keeps the whole layer's size (the fallback needs it); the
gathered fp32 scales of NF4 experts (at most ACTIVE_SHARE of a layer's, in each slot) are counted by
engine.memory.estimate. TUNESMITH_ACTIVE_EXPERTS=0 turns the rule off (the whole layer always), so both can be
measured on one machine.
"""

import math
import os

ACTIVE_SHARE = 0.5  # the most of a layer's experts fetched alone (why: the module docstring)


def expected_share(tokens: int, per_token: int, experts: int) -> float:
    """The share of a layer's experts a micro-batch of `tokens` tokens is expected to pick, routing balanced."""
    return 1.0 - (1.0 - per_token / experts) ** tokens


class ActiveExperts:
    """What an experts module holds on the device while only some experts are: their ids ([A], sorted, on the
    device) and, per streamed tensor name, the [A, ...] 16-bit stack, or (packed NF4 bytes, quantization state,
    shape) for NF4 experts (engine.patching.moe reads `experts.active_experts`)."""

    def __init__(self, ids, key: tuple, stored: dict):
        self.ids, self.key, self.stored = ids, key, stored


def _innermost(module):
    while hasattr(module, "base_layer"):  # PEFT's ParamWrappers
        module = module.base_layer
    return module


class _Layer:
    """A streamed layer's MoE block: its experts module, and which of the layer's streamed tensors are its experts'
    (position in WeightStream.weights[layer], tensor name, host tensor, elements per expert)."""

    def __init__(self, block, experts, tensors):
        self.block, self.experts, self.tensors = block, experts, tensors
        self.positions = {pos for pos, *_ in tensors}


class ExpertFetch:
    """The active-only fetch of a WeightStream's MoE layers: decides per micro-batch whether the ring prefetches
    their experts (`defer`), copies the router's picks after it (`fetch`), and counts the expert bytes copied
    (`bytes`, and `counts` of "prefetched" whole layers, "active" compact fetches and "whole" fallbacks)."""

    def __init__(self, stream, layers: dict, log=print):
        import collections

        from engine.patching.moe import EXPERT_TENSORS, FastMoEBlock

        self.stream = stream
        self.layers = {}  # layer index -> _Layer
        self.held = {}  # layer index -> "all" | ActiveExperts | None: the experts its slot holds
        self.deferring = False  # this micro-batch's experts wait for the router
        self.bytes, self.counts = 0, collections.Counter()
        self.share = ACTIVE_SHARE if os.environ.get("TUNESMITH_ACTIVE_EXPERTS", "1") != "0" else 0.0
        reasons = set()
        for index, layer in layers.items():
            for block in (m for m in layer.modules() if isinstance(m, FastMoEBlock)):
                experts = _innermost(block.experts)
                tensors = []
                for pos, (module, name, host) in enumerate(stream.weights[index]):
                    base = name.removesuffix("_nf4")
                    if module is experts and base in EXPERT_TENSORS:
                        shape = experts.nf4_states[base][1] if name != base else tuple(host.shape)
                        per_expert = shape[1] * shape[2]
                        if name != base and per_expert % experts.nf4_states[base][0].blocksize:
                            reasons.add("an expert's NF4 blocks straddle the next expert")
                        tensors.append((pos, base, host, per_expert))
                if tensors:
                    self.layers[index] = _Layer(block, experts, tensors)
                    router = getattr(block, block.router_name)
                    router.register_forward_hook(self._router_hook(index))
                    self.per_token = getattr(router, "top_k", None) or experts.config.num_experts_per_tok
                    self.total = experts.num_experts
        if reasons:
            self.layers = {}
        if self.layers:
            self._log_mode(log)
        elif reasons:
            log(f"offload: streamed mixture-of-experts layers fetch the whole layer ({', '.join(sorted(reasons))})")

    def _log_mode(self, log) -> None:
        if not self.share:
            log("offload: streamed mixture-of-experts layers fetch the whole layer (TUNESMITH_ACTIVE_EXPERTS=0)")
            return
        # the largest micro-batch whose expected share is within the rule
        most = math.floor(math.log(1 - self.share) / math.log(1 - self.per_token / self.total))
        log(
            f"offload: streamed mixture-of-experts layers fetch only the experts their router picks in micro-batches "
            f"of up to {most} tokens ({self.per_token} of {self.total} experts a token: at most "
            f"{self.share:.0%} of them expected), falling back to all of them when more are picked; larger "
            "micro-batches prefetch the whole layer"
        )

    def step(self, tokens: int) -> None:
        """A forward use of a streamed layer with `tokens` tokens: whether this micro-batch's experts wait for the
        router (the ring's next loads follow it)."""
        if self.layers:
            self.deferring = expected_share(tokens, self.per_token, self.total) <= self.share

    def defer(self, layer: int) -> set:
        """Positions of `layer`'s streamed tensors the ring's load leaves for after the router (none when the whole
        layer comes now); the layer's slot holds none of its experts, or all of them, after the load."""
        part = self.layers.get(layer)
        self.forget(layer)
        if part is None:
            return set()
        if self.deferring:
            return part.positions
        self._whole(layer, "prefetched")
        return set()

    def _whole(self, layer: int, how: str) -> None:
        """`layer`'s slot holds all of its experts, copied `how` ("prefetched" by the ring, or "whole" on demand)."""
        part = self.layers[layer]
        part.experts.active_experts = None
        self.held[layer] = "all"
        self.counts[how] += 1
        self.bytes += sum(self.stream.weights[layer][pos][2].nbytes for pos in part.positions)

    def forget(self, layer: int) -> None:
        """`layer`'s slot no longer holds its experts (evicted, or about to be loaded again)."""
        part = self.layers.get(layer)
        if part is not None:
            part.experts.active_experts = None
            self.held[layer] = None

    def _router_hook(self, layer: int):
        def hook(module, args, output):
            if not self.stream.paused:
                self.fetch(layer, output[2])

        return hook

    def fetch(self, layer: int, index) -> None:
        """After `layer`'s router picked `index` ([T, k] expert ids): its slot holds those experts (or all)."""
        import torch

        from engine.patching.moe import runs_grouped

        part, held = self.layers[layer], self.held.get(layer)
        if held == "all":
            return
        ids = torch.unique(index.reshape(-1))  # sorted
        key = tuple(ids.tolist())  # the picks on the host (a GPU sync; the grouped path has one per product too)
        grouped = runs_grouped(part.block)  # else PEFT's wrappers read the whole stack
        if not grouped or len(key) > self.share * self.total:
            self.stream.copy_now(layer, part.positions)
            self._whole(layer, "whole")
            return
        if isinstance(held, ActiveExperts) and held.key == key:
            return  # the recompute's router picked what the forward's did: still in the slot
        self.held[layer] = part.experts.active_experts = self._copy_active(layer, part, ids, key)
        self.counts["active"] += 1

    def _copy_active(self, layer: int, part: _Layer, ids, ids_list: tuple) -> ActiveExperts:
        """Copy the experts `ids` (`ids_list` on the host) of each streamed tensor into its place in the layer's
        slot, one copy per run of consecutive ids, as an [A, ...] stack in id order."""
        runs, start = [], 0  # (first expert, position in the stack, experts)
        for j in range(1, len(ids_list) + 1):
            if j == len(ids_list) or ids_list[j] != ids_list[j - 1] + 1:
                runs.append((ids_list[start], start, j - start))
                start = j
        stored, jobs = {}, []
        for pos, name, host, per_expert in part.tensors:
            flat = host.reshape(-1)
            n = per_expert // 2 if host.dtype.itemsize == 1 else per_expert  # NF4 packs two weights a byte
            target = self.stream.slot_view(layer, pos, len(ids_list) * n, host.dtype)
            jobs += [
                (target[at * n : (at + count) * n], flat[first * n : (first + count) * n]) for first, at, count in runs
            ]
            if host.dtype.itemsize == 1:
                state, shape = part.experts.nf4_states[name]
                stored[name] = (target, _active_state(state, ids, per_expert), (len(ids_list), *shape[1:]))
            else:
                stored[name] = target.view(len(ids_list), *host.shape[1:])
            self.bytes += len(ids_list) * n * host.element_size()
        self.stream.copy_pieces(jobs)
        return ActiveExperts(ids, ids_list, stored)


def _active_state(state, ids, per_expert: int):
    """The quantization state of experts `ids` of an NF4 stack stored as one (bitsandbytes' QuantState, blocks of
    `state.blocksize`), for their compact copy: each block's absmax in fp32 (the double quantization undone as
    kernels.nf4 does it), since the compact copy's blocks need not start on a second-level block."""
    import types

    import torch

    from kernels.nf4 import state_args

    per_block = per_expert // state.blocksize
    blocks = (ids[:, None] * per_block + torch.arange(per_block, device=ids.device)).reshape(-1)
    if state.nested:
        second = blocks // state.state2.blocksize
        absmax = state.state2.code.float()[state.absmax[blocks].long()] * state.state2.absmax.float()[second]
        absmax = absmax + state_args(state)["offset"]
    else:
        absmax = state.absmax[blocks].float()
    return types.SimpleNamespace(absmax=absmax, nested=False, blocksize=state.blocksize, code=state.code)
