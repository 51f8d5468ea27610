"""The offload manager: what does not fit in the VRAM budget waits in pinned host RAM and comes back ahead of need.

Chosen by `plan` from the budget (the card, or TUNESMITH_VRAM_GIB) and the run's shape, before the model loads:

- Activation offload. A checkpointed decoder layer keeps only its input for the backward. `Checkpoint` (our own
  checkpoint function, installed per layer) copies that input to pinned host memory on a side stream during the
  forward, and during the backward of layer i brings back layer i-1's input while layer i recomputes and
  differentiates (double-buffered: at most OFFLOAD_ON_GPU inputs on the GPU). The last checkpointed layer's input
  stays on the GPU: it is the first one the backward needs.
- Weight streaming. The frozen linear weights of `plan.streamed` layers (NF4-packed or 16-bit) live in pinned host
  RAM; `WeightStream` copies them into a ring of GPU slots on a side stream, the next ones ahead, in forward order
  and then in reverse for the backward (where the recompute and the backward of a layer share one copy). A slot is
  overwritten only after the GPU has finished with its previous layer (an event recorded after that layer's last
  use). Streamed layers are always checkpointed, so no autograd node keeps a reference to a slot. LoRA weights, their
  optimizer state and the NF4 scales stay on the GPU. The run log reports copy, stall and compute time.
- Kept attention outputs. Where that fits with no weights streamed, the first forward of a fast-path LoRA/QLoRA
  layer also writes its q, k, v and o projections' outputs to host RAM beside its input (`Plan.keep_attention`), and
  the recompute takes them back instead of computing those products again (engine.patching.modules.
  AttentionOutputs). Those four are a fifth of a llama layer's weights; the cost is 80 MiB more each way per layer at
  4096 tokens (llama8b under 7.4 GiB on the H100: the copy stream busy 60% of the forward, up from 16%). The values
  are the ones the forward computed, so the gradients are exactly those of recomputing them. A micro-batch too large
  to hold them goes without them (engine.memory.checkpointing).
- Host embedding. An untied input embedding table stays in host RAM, pinned, and the GPU gathers the batch's rows
  from it over PCIe (kernels.embedding): 1 GiB of an 8B model's VRAM for a 32 MiB read per step.
- Tiled MLP. On long sequences the MLP runs over tiles of MLP_TILE tokens, each recomputed in the backward
  (engine.patching.modules.FastMLP), so its (tokens x intermediate) activations never exist at once.
- Dense copies. On a card with room to spare, QLoRA keeps a 16-bit copy of the first `plan.dense_layers` layers'
  NF4 weights (`keep_dense`), dequantized once at load with the same kernel, so those layers skip the two
  dequantizations of every step (forward and backward): the same values, computed once instead of per pass.
- CUDA graphs. A capped step recomputes every layer and is bound by the host issuing small kernels, so the
  checkpointed layers of the fast path's LoRA/QLoRA replay CUDA graphs of their two passes (the forward without
  gradients; the recompute with the backward), one launch each instead of ~40 (engine.patching.graphs.
  CheckpointGraphs; `Plan.graphs`). The recompute also skips the MLP's down projection, whose output nothing reads.
- Optimizer states. LoRA's 8-bit AdamW states are small and stay on the GPU. Full fine-tuning uses bitsandbytes'
  paged 8-bit AdamW (engine.training.sft), whose states page out to host RAM under memory pressure; the plan counts them
  there when that is what makes the run fit (`Plan.optimizer_in_host`).

`Ring` (which layer sits in which slot, what to prefetch) and `plan` are plain Python, unit-tested on the CPU.
"""

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass

from engine.core.errors import UserError
from engine.memory.checkpointing import SLACK
from engine.memory.estimate import GIB, Arch, estimate, layer_activation_bytes, layer_weight_bytes

RING_SLOTS = 3  # GPU slots for streamed layers: the one computing and two arriving
MLP_TILE = 8192  # tokens per MLP tile when a long sequence's activations do not fit otherwise
LOG_EVERY = 20  # training steps between timing lines in the run log
DENSE_SHARE = 0.5  # of the VRAM a no-recompute QLoRA plan leaves over, the most its 16-bit weight copies may take
SMALL_CARD_GIB = 24  # under this budget the fused loss works on 1024-token chunks (0.25 GiB of logits at 128K vocab)


@dataclass(frozen=True)
class Plan:
    """What the offload manager does for one run, and the peaks it expects."""

    budget_gib: float | None
    checkpointed: int  # layers that recompute, at the planned micro-batch
    offload_activations: bool
    streamed: tuple[int, ...]  # layers whose frozen weights live in host RAM
    ring_slots: int
    host_embedding: bool
    loss_chunk: int  # tokens per chunk of the fused loss
    mlp_tile: int | None  # tokens per MLP tile on long sequences (engine.patching.modules.FastMLP), else None
    optimizer_in_host: bool  # full fine-tuning's paged optimizer states are planned in host RAM
    peak_vram_gib: float
    peak_ram_gib: float
    layers: int
    dense_layers: int = 0  # QLoRA layers whose NF4 weights also have a 16-bit copy on the GPU (`keep_dense`)
    grads_released: bool = False  # full fine-tuning updates each weight in the backward (engine.memory.grad_release)
    graphs: bool = False  # checkpointed layers replay CUDA graphs of their passes (engine.patching.graphs)
    keep_attention: bool = False  # checkpointed layers keep q/k/v/o outputs in host RAM for the recompute (Checkpoint)
    keep_dequantized: bool = False  # a QLoRA recompute keeps gate and up's dequantized weights for its backward

    def estimate_kw(self) -> dict:
        """The estimate's offload arguments for this plan (engine.memory.checkpointing re-plans per token count with
        them)."""
        return dict(
            loss_chunk=self.loss_chunk,
            offload_activations=self.offload_activations,
            streamed_layers=len(self.streamed),
            ring_slots=self.ring_slots,
            host_embedding=self.host_embedding,
            mlp_tile=self.mlp_tile,
            optimizer_in_host=self.optimizer_in_host,
            dense_layers=self.dense_layers,
            grads_released=self.grads_released,
            graphs=self.graphs,
            keep_attention=self.keep_attention,
            keep_dequantized=self.keep_dequantized,
        )

    @property
    def active(self) -> bool:
        return self.offload_activations or bool(self.streamed) or self.host_embedding or self.mlp_tile is not None

    def describe(self) -> str:
        where = f"{self.budget_gib:.1f} GiB budget" if self.budget_gib else "no GPU budget"
        parts = [f"checkpointing {self.checkpointed} of {self.layers} layers"]
        parts.append("activation offload to host RAM" if self.offload_activations else "no activation offload")
        if self.streamed:
            parts.append(f"{len(self.streamed)} layers' weights streamed through {self.ring_slots} GPU slots")
        else:
            parts.append("no weight streaming")
        if self.host_embedding:
            parts.append("input embedding in host RAM")
        if self.mlp_tile:
            parts.append(f"MLP in tiles of {self.mlp_tile} tokens")
        if self.optimizer_in_host:
            parts.append("paged optimizer states in host RAM")
        if self.dense_layers:
            parts.append(f"16-bit copies of {self.dense_layers} layers' 4-bit weights (no per-step dequantization)")
        if self.grads_released:
            parts.append("each weight updated in the backward as its gradient completes (no gradient buffer)")
        if self.graphs:
            parts.append("CUDA graphs of the checkpointed layers' passes")
        if self.keep_attention:
            parts.append("q/k/v/o projection outputs in host RAM (the recompute skips those products)")
        if self.keep_dequantized:
            parts.append("gate/up weights dequantized once for the recompute and its backward")
        return (
            f"plan ({where}): " + ", ".join(parts) + f"; expected peak {self.peak_vram_gib:.2f} GiB GPU, "
            f"{self.peak_ram_gib:.1f} GiB host RAM"
        )

    def as_dict(self) -> dict:
        return dict(
            gradient_checkpointing=self.checkpointed > 0,
            checkpointed_layers=self.checkpointed,
            activation_offload=self.offload_activations,
            weight_streaming=bool(self.streamed),
            streamed_layers=len(self.streamed),
            host_embedding=self.host_embedding,
            loss_chunk=self.loss_chunk,
            mlp_tile=self.mlp_tile,
            optimizer_in_host=self.optimizer_in_host,
            dense_layers=self.dense_layers,
            grads_released=self.grads_released,
            cuda_graphs=self.graphs,
            attention_outputs_kept=self.keep_attention,
            dequantized_weights_kept=self.keep_dequantized,
            peak_vram_gib=self.peak_vram_gib,
            peak_ram_gib=self.peak_ram_gib,
        )


def spread(count: int, layers: int) -> tuple[int, ...]:
    """`count` layer indices spread evenly over `layers`: resident layers' compute hides the streamed ones' copies."""
    return tuple(sorted({j * layers // count for j in range(count)})) if count else ()


def plan(
    arch: Arch,
    method: str,
    seq: int,
    batch: int,
    budget_gib: float | None,
    host_ram_gib: float | None = None,
    fused_loss: bool = True,
    embeddings_trained: bool = False,
    paged_optimizer: bool = True,
    release_gradients: bool = False,
    **estimate_kw,
) -> Plan:
    """The fastest way to train within the budget. In order: recompute nothing (and for QLoRA, with the fused loss,
    keep 16-bit copies of as many layers' NF4 weights as half the memory left over holds); else keep checkpointed
    inputs and the input embedding in host RAM (copies that overlap compute) and recompute only the layers that still
    do not fit; else also run the MLP in tiles of tokens (long sequences); else also stream the fewest layers' weights
    from host RAM. Raises UserError when even streaming every layer does not fit the budget, or when host RAM cannot
    hold what must be offloaded.

    Full fine-tuning streams no weights (they are trained); with a paged optimizer (`paged_optimizer`, the default
    paged 8-bit AdamW) its states may instead be planned in host RAM, where bitsandbytes pages them under pressure;
    and when that is not enough and the run allows it (`release_gradients`: one micro-batch per step, no fp16 loss
    scaling), each weight is updated in the backward and its gradient freed at once (engine.memory.grad_release).

    Checkpointed layers of the fast path's LoRA and QLoRA keep their attention projections' outputs in host RAM
    beside their inputs (the recompute then skips those products) when that fits with no weights streamed and host
    RAM holds it, and replay CUDA graphs of their passes (the host issuing kernels is what bounds such steps). The
    graphs' memory is planned for; a budget that cannot hold it, or holds it only by streaming weights that the plan
    without graphs keeps on the GPU, gets the plan without graphs.

    `budget_gib` None (no GPU) gives the plain plan: every layer checkpointed, nothing offloaded."""
    args = (arch, method, seq, batch, budget_gib, host_ram_gib, fused_loss, embeddings_trained, paged_optimizer)
    args += (release_gradients,)

    def attempt(graphs_wanted):  # with the attention outputs kept, unless host RAM then cannot hold the plan
        try:
            return _plan(*args, graphs_wanted=graphs_wanted, keep_wanted=True, **estimate_kw)
        except UserError:
            return _plan(*args, graphs_wanted=graphs_wanted, keep_wanted=False, **estimate_kw)

    plain = attempt(False)
    if method == "full" or not fused_loss or not plain.checkpointed:  # graphs: the fast path's adapters only
        return check_ram(plain, host_ram_gib)
    try:
        graphed = attempt(True)
    except UserError:
        return check_ram(plain, host_ram_gib)
    return check_ram(plain if graphed.streamed and not plain.streamed else graphed, host_ram_gib)


def at_least(peak_gib: float) -> float:
    """The smallest budget, rounded up to 0.1 GiB, that holds a plan of this estimated peak."""
    return math.ceil(round(peak_gib * SLACK * 10, 6)) / 10


def _plan(
    arch: Arch,
    method: str,
    seq: int,
    batch: int,
    budget_gib: float | None,
    host_ram_gib: float | None,
    fused_loss: bool,
    embeddings_trained: bool,
    paged_optimizer: bool,
    release_gradients: bool,
    graphs_wanted: bool,
    keep_wanted: bool,
    **estimate_kw,
) -> Plan:
    layers = arch.layers
    chunk = 4096 if budget_gib is None or budget_gib >= SMALL_CARD_GIB else 1024

    def est(**kw):
        return estimate(arch, method, seq, batch, fused_loss=fused_loss, loss_chunk=chunk, **estimate_kw, **kw)

    def made(
        checkpointed,
        e,
        offload=False,
        streamed=(),
        host_embedding=False,
        slots=0,
        tile=None,
        paged=False,
        kept=False,
        dequantized=False,
    ):
        graphs = offload and graphs_wanted and checkpointed > 0 and tile is None  # a tiled MLP is not captured
        return Plan(
            budget_gib,
            checkpointed,
            offload,
            streamed,
            slots,
            host_embedding,
            chunk,
            tile,
            paged,
            e.peak_vram_gib,
            e.peak_ram_gib,
            layers,
            graphs=graphs,
            keep_attention=kept and checkpointed > 0,
            keep_dequantized=dequantized and checkpointed > 0,
        )

    if budget_gib is None:
        return made(layers, est(checkpointed_layers=layers))
    cap = budget_gib / SLACK
    e = est(checkpointed_layers=0)
    if e.peak_vram_gib <= cap:
        if method != "qlora" or not fused_loss:
            return made(0, e)
        per_layer = layer_weight_bytes(arch, "lora") / GIB
        dense = min(layers, math.floor((cap - e.peak_vram_gib) * DENSE_SHARE / per_layer))
        return dataclasses.replace(made(0, est(checkpointed_layers=0, dense_layers=dense)), dense_layers=dense)
    host_embedding = not arch.tied and method != "full" and not embeddings_trained
    # the fast path's adapters keep their attention outputs for the recompute when that fits with nothing streamed
    keep = keep_wanted and method != "full" and fused_loss
    offload = dict(offload_activations=True, host_embedding=host_embedding, graphs=graphs_wanted, keep_attention=keep)
    e = est(checkpointed_layers=layers, **offload)
    if e.peak_vram_gib > cap and keep:
        offload["keep_attention"] = False
        e = est(checkpointed_layers=layers, **offload)
    kept = offload.pop("keep_attention")
    # with the attention outputs kept, a QLoRA recompute also keeps gate and up's dequantized weights where that fits,
    # before un-checkpointing any layer (llama8b at 4096 tokens on the H100: 0.22 GiB for two of the 66.6 us
    # dequantizations a layer; one layer less recomputed took 0.44 GiB more peak, 343.7 -> 345.9 ms median step)
    both = dict(keep_attention=True, keep_dequantized=True)
    dequantized = kept and method == "qlora" and est(checkpointed_layers=layers, **both, **offload).peak_vram_gib <= cap
    if dequantized:
        e = est(checkpointed_layers=layers, **both, **offload)
    if e.peak_vram_gib <= cap:
        per_layer = layer_activation_bytes(arch, seq * batch) / GIB
        free = min(layers, math.floor((cap - e.peak_vram_gib) / per_layer))
        k = layers - free
        e = est(checkpointed_layers=k, keep_attention=kept, keep_dequantized=dequantized, **offload)
        plan_ = made(k, e, True, (), host_embedding, kept=kept, dequantized=dequantized)
    elif (
        seq * batch > MLP_TILE
        and est(checkpointed_layers=layers, mlp_tile=MLP_TILE, **{**offload, "graphs": False}).peak_vram_gib <= cap
    ):
        e = est(checkpointed_layers=layers, mlp_tile=MLP_TILE, **{**offload, "graphs": False})
        plan_ = made(layers, e, True, (), host_embedding, tile=MLP_TILE)
    else:
        if method == "full":
            e = est(checkpointed_layers=layers, optimizer_in_host=paged_optimizer, **offload)
            if paged_optimizer and e.peak_vram_gib <= cap:
                return check_ram(made(layers, e, True, (), host_embedding, paged=True), host_ram_gib)
            if release_gradients:
                kw = dict(checkpointed_layers=layers, optimizer_in_host=paged_optimizer, grads_released=True)
                e = est(**kw, **offload)
                if e.peak_vram_gib <= cap:
                    plan_ = made(layers, e, True, (), host_embedding, paged=paged_optimizer)
                    return check_ram(dataclasses.replace(plan_, grads_released=True), host_ram_gib)
            raise UserError(
                f"Full fine-tuning of this model needs at least {at_least(e.peak_vram_gib):.1f} GiB of GPU memory even "
                f"with its activations{' and optimizer states' if paged_optimizer else ''} in host RAM"
                f"{' and each gradient freed in the backward' if release_gradients else ''}, over the "
                f"{budget_gib:.1f} GiB budget; use LoRA or QLoRA."
            )
        # the fewest streamed layers with a ring of three slots (two arriving while one computes), else with two
        tile = MLP_TILE if seq * batch > MLP_TILE else None
        offload["mlp_tile"] = tile
        offload["graphs"] = graphs_wanted and tile is None
        fitting = (
            (slots, count)
            for slots in (RING_SLOTS, 2)
            for count in range(1, layers + 1)
            if est(checkpointed_layers=layers, streamed_layers=count, ring_slots=slots, **offload).peak_vram_gib <= cap
        )
        slots, count = next(fitting, (None, layers))
        e = est(checkpointed_layers=layers, streamed_layers=count, ring_slots=slots or 2, **offload)
        if slots is None:
            raise UserError(
                f"This run needs at least {at_least(e.peak_vram_gib):.1f} GiB of GPU memory even with every layer's "
                f"weights in host RAM, over the {budget_gib:.1f} GiB budget; use a shorter sequence length, a "
                "smaller batch, QLoRA, or a smaller model."
            )
        plan_ = made(layers, e, True, spread(count, layers), host_embedding, slots, tile)
    return check_ram(plan_, host_ram_gib)


def check_ram(plan_: Plan, host_ram_gib: float | None) -> Plan:
    if host_ram_gib is not None and plan_.peak_ram_gib > host_ram_gib:
        kept = f", and what does not fit in {plan_.budget_gib:.1f} GiB of GPU memory" if plan_.active else ""
        raise UserError(
            f"This run needs about {plan_.peak_ram_gib:.1f} GiB of host RAM (the 16-bit checkpoint while it loads"
            f"{kept}), and {host_ram_gib:.1f} GiB is free; close other programs, use a smaller model, or a machine "
            "with more RAM."
        )
    return plan_


def host_ram_gib() -> float:
    """Host RAM available now, in GiB; $TUNESMITH_RAM_GIB plans for a machine with that much free instead (as
    TUNESMITH_VRAM_GIB does for the GPU)."""
    import os

    import psutil

    if os.environ.get("TUNESMITH_RAM_GIB"):
        return float(os.environ["TUNESMITH_RAM_GIB"])
    return psutil.virtual_memory().available / GIB


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


class WeightStream:
    """Frozen linear weights of some decoder layers in pinned host RAM, copied into GPU slots ahead of use.

    Each streamed layer gets a forward pre-hook (make its weights resident, start the next loads) and a forward hook
    (in the forward, mark its slot reusable once the GPU is past it); `Checkpoint.backward` marks it after the
    layer's backward."""

    def __init__(self, layers: dict, device, slots: int = RING_SLOTS, log=print):
        import torch

        self.device = device
        self.copy = torch.cuda.Stream(device)
        self.weights = {}  # layer index -> [(parameter, pinned host tensor)]
        for index, layer in layers.items():
            pairs = []
            for module in layer.modules():
                frozen = isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
                if frozen and not hasattr(module.weight, "packed_in"):  # a packed LoRA weight trains: not streamed
                    param = module.weight
                    host = getattr(param, "host_copy", None)  # put there by load_streamed
                    if host is None:
                        host = torch.empty(param.data.shape, dtype=param.dtype, pin_memory=True)
                        host.copy_(param.data)
                    else:
                        del param.host_copy
                    param.data = torch.empty(0, dtype=param.dtype, device=device)
                    pairs.append((param, host))
            self.weights[index] = pairs
        torch.cuda.empty_cache()
        self.slot_bytes = max(sum(_aligned(h.numel() * h.element_size()) for _, h in p) for p in self.weights.values())
        self.buffers = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.ring = Ring(sorted(layers), slots)
        self.ready = {}  # layer -> event: its weights are in its slot
        self.done = {}  # layer -> event: the GPU is past its last use
        self.timing = []  # ("copy" | "stall", start event, end event, bytes) since the last tick
        self.last_tick, self.steps = None, 0
        self.log = log
        self.paused = False  # True while a CUDA graph is captured: engine.patching.graphs calls `use` itself
        for index, layer in layers.items():
            layer.register_forward_pre_hook(self._pre_hook(index))
            layer.register_forward_hook(self._post_hook(index))

    def _load(self, layer: int, slot: int) -> None:
        import torch

        evicted = [i for i, ev in self.ready.items() if i != layer and self.ring.slot_of(i) is None]
        for i in evicted:  # its slot now belongs to `layer`: point its parameters nowhere until it is loaded again
            del self.ready[i]
            for param, _ in self.weights[i]:
                param.data = torch.empty(0, dtype=param.dtype, device=self.device)
        buffer, offset, moved = self.buffers[slot], 0, 0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.copy):
            for i in evicted:
                if i in self.done:
                    self.copy.wait_event(self.done.pop(i))
            start.record(self.copy)
            for param, host in self.weights[layer]:
                n = host.numel() * host.element_size()
                view = buffer[offset : offset + n].view(host.dtype).view(host.shape)
                view.copy_(host, non_blocking=True)
                param.data = view
                offset += _aligned(n)
                moved += n
            end.record(self.copy)
        self.ready[layer] = end
        self.timing.append(("copy", start, end, moved))

    def use(self, layer: int, phase: str) -> None:
        """Before layer `layer` runs in `phase` ("f" or "b"): its weights resident, the next ones on their way."""
        import torch

        for want, slot in self.ring.use(layer, phase):
            self._load(want, slot)
        compute = torch.cuda.current_stream(self.device)
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record(compute)
        compute.wait_event(self.ready[layer])
        after.record(compute)
        self.timing.append(("stall", before, after, 0))

    def finished(self, layer: int) -> None:
        """The GPU work of the layer's current use is enqueued: its slot may be reused once that work is done."""
        import torch

        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self.done[layer] = event

    def _pre_hook(self, index: int):
        def hook(module, args):
            if not self.paused:
                self.use(index, "b" if in_backward() else "f")

        return hook

    def _post_hook(self, index: int):
        def hook(module, args, output):
            if not (self.paused or in_backward()):
                self.finished(index)

        return hook

    def slot_key(self, index: int) -> int | None:
        """Where the layer's streamed weights sit now (a CUDA graph of it reads them there), None if not streamed."""
        pairs = self.weights.get(index)
        return pairs[0][0].data_ptr() if pairs else None

    def tick(self) -> None:
        """Called at each training forward: every LOG_EVERY steps, log the last step's copy, stall and compute time
        (one synchronization); otherwise forget its events."""
        import torch

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


def _aligned(n: int) -> int:
    return -(-n // 256) * 256  # slot offsets aligned for any dtype and vectorized loads


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


def host_embedding(embedding, device):
    """A module computing `embedding(ids)` from a table in host RAM and giving the (tokens x hidden) result on
    `device`; the original module, moved to the host, stays as `base_layer`.

    The GPU waits for these rows at the start of every step. On CUDA a plain table is pinned, and the GPU gathers its
    tokens' rows itself over PCIe (kernels.embedding: no host work, no synchronization); a host lookup, pinned and
    copied, left the GPU idle 9-12 ms of every llama8b step at 4096 tokens on the H100 machine. Elsewhere, for a table
    whose module does more than look rows up (a scaled embedding), and once a GPU turns out unable to read pinned
    host memory, the module runs on the host and its result is copied over."""
    import torch

    from kernels.embedding import gather_rows

    device = torch.device(device)

    class HostEmbeddingModule(torch.nn.Module):
        def __init__(self, base_layer):
            super().__init__()
            self.base_layer = base_layer.to("cpu")
            plain = type(base_layer) is torch.nn.Embedding and base_layer.max_norm is None
            self.gpu_gather = plain and device.type == "cuda"
            if self.gpu_gather:
                weight = self.base_layer.weight
                weight.data = weight.data.contiguous().pin_memory()  # readable by the GPU over PCIe

        @property
        def weight(self):
            return self.base_layer.weight

        def get_base_layer(self):
            return self.base_layer

        def forward(self, ids):
            with torch.no_grad():  # the table is frozen: nothing to differentiate on the host
                out = None
                if self.gpu_gather:
                    try:
                        out = gather_rows(self.base_layer.weight, ids.to(device, non_blocking=True))
                    except (RuntimeError, ValueError):  # a GPU or driver that cannot read pinned host memory
                        self.gpu_gather = False
                if out is None:
                    out = self.base_layer(ids.to("cpu"))
                    out = out.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else out.to(device)
            return out.requires_grad_(torch.is_grad_enabled())  # as enable_input_require_grads asks

    return HostEmbeddingModule(embedding)


def load_streamed(path, placement, four_bit: bool, plan_: Plan, trust_remote_code: bool = False, log=print):
    """Load a model whose weights do not fit the GPU: read it into host RAM in 16 bits, then move it to the GPU layer
    by layer (quantizing linear weights to NF4 on the way for QLoRA, as transformers' bitsandbytes loading does), with
    the streamed layers' frozen linear weights left in pinned host RAM (the GPU holds an empty placeholder until
    WeightStream brings them in). The GPU never holds more than the resident part plus one layer."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_layers import GradientCheckpointingLayer

    device = torch.device(placement.device)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=placement.torch_dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        attn_implementation="sdpa",
        device_map={"": "cpu"},
    )
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    on_host = set(plan_.streamed)
    for index, layer in enumerate(layers):
        if four_bit:
            for name, module in list(layer.named_modules()):
                if type(module) is torch.nn.Linear:
                    parent, _, attr = name.rpartition(".")
                    setattr(layer.get_submodule(parent) if parent else layer, attr, _nf4(module, device, placement))
        layer.to(device)
        if index in on_host:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    param = module.weight
                    param.host_copy = param.data.to("cpu").pin_memory()
                    param.data = torch.empty(0, dtype=param.dtype, device=device)
    skip = {id(p) for layer in layers for p in layer.parameters()}
    if plan_.host_embedding:  # install() wraps it where it is
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


def keep_dense(model, count: int, log=print) -> int:
    """Give the NF4 base of every LoRA projection in the first `count` decoder layers a 16-bit copy,
    dequantized once (kernels.nf4, the values the per-pass dequantization would give) and stored as the base
    module's `dense_weight`, which engine.patching's fused LoRA then multiplies by instead of dequantizing. The NF4
    weight stays (saving, merging and chat read it). Returns the bytes added."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from kernels.nf4 import nf4_dequantize_state

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)][:count]
    added = 0
    for layer in layers:
        for module in layer.modules():
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else None
            state = getattr(getattr(base, "weight", None), "quant_state", None)
            if state is None or state.quant_type != "nf4" or base.weight.device.type != "cuda":
                continue
            base.dense_weight = nf4_dequantize_state(base.weight, state)
            added += base.dense_weight.numel() * base.dense_weight.element_size()
    log(f"offload: 16-bit copies of {len(layers)} layers' 4-bit weights ({added / GIB:.2f} GiB): no dequantization")
    return added


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
    torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if plan_.mlp_tile:
        from engine.patching.modules import FastMLP

        for module in model.modules():
            if isinstance(module, FastMLP):
                module.tile = plan_.mlp_tile
    if plan_.host_embedding:
        net = model.get_base_model() if hasattr(model, "get_base_model") else model
        net.set_input_embeddings(host_embedding(net.get_input_embeddings(), device))
        torch.cuda.empty_cache()
    stream = None
    if plan_.streamed:
        stream = WeightStream({i: layers[i] for i in plan_.streamed}, device, plan_.ring_slots, log)
    store = ActivationStore(device) if plan_.offload_activations else None
    from engine.patching import graphs as cuda_graphs

    graphs = cuda_graphs.CheckpointGraphs(layers, log) if plan_.graphs and cuda_graphs.eligible_layers(model) else None

    def last_checkpointed():
        return max(i for i, layer in enumerate(layers) if layer.gradient_checkpointing)

    for index, layer in enumerate(layers):
        layer._gradient_checkpointing_func = Checkpoint(
            index, store, stream, last_checkpointed, graphs, plan_.keep_attention, plan_.keep_dequantized
        )
    if stream is not None:
        net = model.get_base_model() if hasattr(model, "get_base_model") else model

        def tick(module, args):
            if module.training and torch.is_grad_enabled():
                stream.tick()

        net.base_model.register_forward_pre_hook(tick)
    return stream
