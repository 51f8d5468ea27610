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
  optimizer state and the NF4 scales stay on the GPU. The run log reports copy, stall and compute time. A small
  micro-batch's mixture-of-experts layers copy only the experts their router picks, after it
  (engine.memory.expert_fetch: the rule, and the fallback to the whole layer).
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
  dequantizations of every step (forward and backward): the same values, computed once instead of per pass. NF4
  experts get theirs too (a Qwen3-30B-A3B layer's are 1.1 GiB), which their grouped products then read.
- CUDA graphs. A capped step recomputes every layer and is bound by the host issuing small kernels, so the
  checkpointed layers of the fast path's LoRA/QLoRA replay CUDA graphs of their two passes (the forward without
  gradients; the recompute with the backward), one launch each instead of ~40 (engine.patching.graphs.
  CheckpointGraphs; `Plan.graphs`). The recompute also skips the MLP's down projection, whose output nothing reads.
- Optimizer states. LoRA's 8-bit AdamW states are small and stay on the GPU. Full fine-tuning uses bitsandbytes'
  paged 8-bit AdamW (engine.training.sft), whose states page out to host RAM under memory pressure; the plan counts them
  there when that is what makes the run fit (`Plan.optimizer_in_host`). LoRA does the same when even streaming every
  layer's weights does not fit: a mixture-of-experts model's per-expert adapters (Qwen3-30B-A3B at rank 16: 645M
  weights, 1.2 GiB of 8-bit states).

This module is the planner (`plan`, plain Python, unit-tested on the CPU); the parts that carry a plan out live beside
it: engine.memory.weights (`Ring`, `WeightStream`, streamed loading, dense copies), engine.memory.activations
(`ActivationStore`, `Checkpoint`), engine.memory.host_embedding, and engine.memory.install, which puts them into a
loaded model.
"""

import dataclasses
import math
from dataclasses import dataclass

from engine.core.errors import BudgetTooSmall, UserError
from engine.data.batching import MAX_BUCKETS
from engine.memory.checkpointing import SLACK, fits_checkpointed, layers_to_checkpoint
from engine.memory.estimate import (
    GIB,
    Arch,
    dense_copy_bytes,
    estimate,
    expert_factor_bytes,
    layer_activation_bytes,
    nf4_experts,
    spread,
)

RING_SLOTS = 3  # GPU slots for streamed layers: the one computing and two arriving

MLP_TILE = 8192  # tokens per MLP tile when a long sequence's activations do not fit otherwise

LOG_EVERY = 20  # training steps between timing lines in the run log

DENSE_SHARE = 0.5  # of the VRAM a no-recompute QLoRA plan leaves over, the most its 16-bit weight copies may take

# what a sharded full fine-tune that does not fit can do, first what works on this machine (more GPUs may not exist)
SHARDED_FIXES = "use LoRA or QLoRA, a shorter sequence length, or more GPUs."

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
    optimizer_in_host: bool  # paged optimizer states (full fine-tuning's, or LoRA's) are planned in host RAM
    peak_vram_gib: float
    peak_ram_gib: float
    layers: int
    dense_layers: int = 0  # QLoRA layers whose NF4 weights also have a 16-bit copy on the GPU (`keep_dense`)
    dense_experts: int = 0  # of them (from the first), those whose NF4 experts have one as well
    grads_released: bool = False  # full fine-tuning updates each weight in the backward (engine.memory.grad_release)
    graphs: bool = False  # checkpointed layers replay CUDA graphs of their passes (engine.patching.graphs)
    keep_attention: bool = False  # checkpointed layers keep q/k/v/o outputs in host RAM for the recompute (Checkpoint)
    keep_dequantized: bool = False  # a QLoRA recompute keeps gate and up's dequantized weights for its backward
    master_fp32: bool = False  # sharded full fine-tuning in fp16: fp32 shards, computing in fp16 (estimate's doc)
    experts_nf4: bool = False  # a mixture-of-experts model's fused experts are stored NF4 (estimate.nf4_experts)
    expert_stack: bool = False  # NF4 experts dequantized a layer's whole stack at once, not a chunk at a time
    fused_loss: bool = True  # the loss is the fast path's chunked cross-entropy (one chunk of logits at a time)
    # padding-free shapes (buckets, engine.data.batching.plan_buckets) whose CUDA graphs the run holds at once, each
    # counted at `graph_tokens` (the largest micro-batch); `layer_graphs`: nothing recomputes and every layer's
    # passes are captured (engine.patching.graphs.install), else those of the checkpointed layers (`graphs`)
    shapes: int = MAX_BUCKETS
    layer_graphs: bool = False
    graph_tokens: int = 0
    trained_embeddings: int = 0  # bytes a value of the trained embedding copies takes (estimate's doc); 0: none

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
            dense_experts=self.dense_experts,
            grads_released=self.grads_released,
            graphs=self.graphs,
            keep_attention=self.keep_attention,
            keep_dequantized=self.keep_dequantized,
            master_fp32=self.master_fp32,
            experts_nf4=self.experts_nf4,
            expert_stack=self.expert_stack,
            graph_shapes=self.shapes,
            layer_graphs=self.layer_graphs,
            graph_tokens=self.graph_tokens or None,
            trained_embeddings=self.trained_embeddings,
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
            experts = f", {self.dense_experts} layers' experts" if self.dense_experts else ""
            copies = f"16-bit copies of {self.dense_layers} layers' 4-bit weights{experts}"
            parts.append(f"{copies} (no per-step dequantization)")
        if self.expert_stack:
            parts.append("each layer's 4-bit experts dequantized at once (one launch a product)")
        if self.grads_released:
            parts.append("each weight updated in the backward as its gradient completes (no gradient buffer)")
        if self.graphs:
            parts.append(f"CUDA graphs of the checkpointed layers' passes, for up to {self.shapes} batch shapes")
        if self.layer_graphs and self.budget_gib:
            parts.append(f"CUDA graphs of every layer, for up to {self.shapes} batch shapes")
        if self.keep_attention:
            parts.append("q/k/v/o projection outputs in host RAM (the recompute skips those products)")
        if self.keep_dequantized:
            parts.append("gate/up weights dequantized once for the recompute and its backward")
        if self.master_fp32:
            parts.append("fp32 weight shards and gradients, computing in fp16")
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
            dense_expert_layers=self.dense_experts,
            experts_dequantized_whole=self.expert_stack,
            grads_released=self.grads_released,
            cuda_graphs=self.graphs,
            cuda_graph_shapes=self.shapes,  # padding-free batch shapes whose graphs the run holds (and buckets)
            attention_outputs_kept=self.keep_attention,
            dequantized_weights_kept=self.keep_dequantized,
            fp32_master_weights=self.master_fp32,
            peak_vram_gib=self.peak_vram_gib,
            peak_ram_gib=self.peak_ram_gib,
        )


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
    host_offload: bool = True,
    **estimate_kw,
) -> Plan:
    """The fastest way to train within the budget. In order: recompute nothing (and for QLoRA, with the fused loss,
    keep 16-bit copies of as many layers' NF4 weights as half the memory left over holds); else keep checkpointed
    inputs and the input embedding in host RAM (copies that overlap compute) and recompute only the layers that still
    do not fit; else also run the MLP in tiles of tokens (long sequences); else also stream the fewest layers' weights
    from host RAM, and when even every layer streamed does not fit, also page LoRA's 8-bit optimizer states to host RAM
    (`paged_optimizer`). Raises UserError when that does not fit the budget, or when host RAM cannot hold what must be
    offloaded.

    Full fine-tuning streams no weights (they are trained); with a paged optimizer (`paged_optimizer`, the default
    paged 8-bit AdamW) its states may instead be planned in host RAM, where bitsandbytes pages them under pressure;
    and when that is not enough and the run allows it (`release_gradients`: one micro-batch per step, no fp16 loss
    scaling), each weight is updated in the backward and its gradient freed at once (engine.memory.grad_release).

    Checkpointed layers of the fast path's LoRA and QLoRA keep their attention projections' outputs in host RAM
    beside their inputs (the recompute then skips those products) when that fits with no weights streamed and host
    RAM holds it, and replay CUDA graphs of their passes (the host issuing kernels is what bounds such steps). The
    graphs' memory is planned for; a budget that cannot hold it, or holds it only by streaming weights that the plan
    without graphs keeps on the GPU, gets the plan without graphs.

    Without `host_offload` (full fine-tuning sharded by FSDP2, whose layers' gathers and frees engine.memory's
    checkpoint function does not drive) nothing goes to host RAM: the plan recomputes the fewest layers that fit, or
    raises UserError.

    `budget_gib` None (no GPU, or no checkpointing) gives the plain plan: every layer checkpointed (none with
    `checkpointing` False in `estimate_kw`, the job's gradient_checkpointing off), nothing offloaded.
    `experts_nf4` (in `estimate_kw`; default: estimate.nf4_experts for QLoRA with the fused loss) is recorded in the
    plan, which the run loads a mixture-of-experts model's experts by."""
    estimate_kw.setdefault("experts_nf4", nf4_experts(method, fused_loss))
    args = (arch, method, seq, batch, budget_gib, host_ram_gib, fused_loss, embeddings_trained, paged_optimizer)
    args += (release_gradients, host_offload)

    def attempt(graphs_wanted):  # with the attention outputs kept, unless host RAM then cannot hold the plan
        try:
            return _plan(*args, graphs_wanted=graphs_wanted, keep_wanted=True, **estimate_kw)
        except UserError:
            return _plan(*args, graphs_wanted=graphs_wanted, keep_wanted=False, **estimate_kw)

    plain = attempt(False)
    chosen = plain
    # graphs: the fast path's adapters only, in layers with a FastMLP (engine.patching.graphs.eligible_layers)
    if not (method == "full" or not fused_loss or not plain.checkpointed or arch.moe_layers):
        try:
            graphed = attempt(True)
            chosen = plain if graphed.streamed and not plain.streamed else graphed
        except UserError:
            pass
    return check_ram(held_shapes(chosen, arch, method, seq, batch, fused_loss, estimate_kw), host_ram_gib)


def most_held(arch: Arch) -> int:
    """The most padding-free shapes' graphs a run holds: MAX_BUCKETS, one for mixture-of-experts layers
    (engine.patching.graphs.install)."""
    return 1 if arch.moe_layers else MAX_BUCKETS


def held_shapes(plan_: Plan, arch: Arch, method: str, seq: int, batch: int, fused_loss: bool, estimate_kw) -> Plan:
    """`plan_` (made counting one shape's CUDA graphs) holding as many padding-free shapes' graphs as its budget
    has room for, up to `most_held`, each counted at the largest micro-batch, with its peak for that many. A run that
    holds no graphs (no budget, or none captured) keeps MAX_BUCKETS and its figure."""
    held = plan_.graphs or plan_.layer_graphs
    if plan_.budget_gib is None or not held:
        return plan_
    tokens = seq * batch
    for shapes in range(most_held(arch), 0, -1):
        kw = {**plan_.estimate_kw(), "graph_shapes": shapes, "graph_tokens": tokens, **estimate_kw}
        e = estimate(arch, method, seq, batch, checkpointed_layers=plan_.checkpointed, fused_loss=fused_loss, **kw)
        if e.peak_vram_gib <= plan_.budget_gib / SLACK or shapes == 1:  # one shape: the figure the plan fit with
            return dataclasses.replace(plan_, shapes=shapes, graph_tokens=tokens, peak_vram_gib=e.peak_vram_gib)
    raise AssertionError("unreachable")


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
    host_offload: bool,
    graphs_wanted: bool,
    keep_wanted: bool,
    **estimate_kw,
) -> Plan:
    layers = arch.layers
    chunk = 4096 if budget_gib is None or budget_gib >= SMALL_CARD_GIB else 1024

    # every layer's passes are captured when nothing recomputes (engine.models.loading: the fast path's adapters, under
    # a budget, mixture-of-experts layers too); the plan is made counting one shape's graphs (`held_shapes`)
    layer_graphs = budget_gib is not None and fused_loss and method != "full"

    def est(**kw):
        kw = {"graph_shapes": 1, "layer_graphs": layer_graphs, **kw}
        return estimate(arch, method, seq, batch, fused_loss=fused_loss, loss_chunk=chunk, **estimate_kw, **kw)

    def most_shapes(**kw):  # the estimate with the graphs of as many shapes as fit, when one does
        shapes = range(most_held(arch), 0, -1)
        fitting = (e for e in (est(graph_shapes=n, **kw) for n in shapes) if e.peak_vram_gib <= cap)
        return next(fitting, None)

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
            experts_nf4=estimate_kw["experts_nf4"] and arch.moe_layers > 0,
            fused_loss=fused_loss,
            layer_graphs=layer_graphs and checkpointed == 0,
        )

    if budget_gib is None:  # every layer recomputes, unless the job turned checkpointing off (then none does)
        k = layers if estimate_kw.get("checkpointing", True) else 0
        return made(k, est(checkpointed_layers=k))
    cap = budget_gib / SLACK
    e = est(checkpointed_layers=0)
    if e.peak_vram_gib <= cap:
        if method != "qlora" or not fused_loss:
            return made(0, e)
        nf4_experts_ = arch.moe_layers > 0 and estimate_kw["experts_nf4"]
        # NF4 experts dequantized a whole layer at a time where that fits: the host issues a chunk's launches one
        # after another, and with chunks of at most 10 experts (29 a product) the GPU waited on the host 67% of a
        # 12-layer Qwen3-30B-A3B QLoRA step on the H100 (bench/README.md)
        stack = nf4_experts_ and est(checkpointed_layers=0, expert_stack=True).peak_vram_gib <= cap
        # the graphs of as many shapes as fit come first (`held_shapes` then holds as many), then the copies of the
        # linear weights (small, and each saves many launches), then the experts' (1.1 GiB a Qwen3-30B-A3B layer)
        e = most_shapes(checkpointed_layers=0, expert_stack=stack)
        dense = min(layers, math.floor((cap - e.peak_vram_gib) * DENSE_SHARE / (dense_copy_bytes(arch) / GIB)))
        e, experts = est(checkpointed_layers=0, dense_layers=dense, expert_stack=stack), 0
        if nf4_experts_ and dense == layers:
            per_layer = dense_copy_bytes(arch, experts=True) / GIB
            experts = min(layers, math.floor((cap - e.peak_vram_gib) * DENSE_SHARE / per_layer))
            stack = stack and experts < layers  # layers with 16-bit experts need no dequantization buffer
            e = est(checkpointed_layers=0, dense_layers=dense, dense_experts=experts, expert_stack=stack)
        return dataclasses.replace(made(0, e), dense_layers=dense, dense_experts=experts, expert_stack=stack)
    if not host_offload:
        # a budget means checkpointing is on (None above otherwise): the rule below decides how many layers recompute
        kw = dict(loss_chunk=chunk, **{k: v for k, v in estimate_kw.items() if k != "checkpointing"})
        return check_ram(_recompute_only(arch, method, seq * batch, budget_gib, fused_loss, kw, made), host_ram_gib)
    host_embedding = not arch.tied and method != "full" and not embeddings_trained
    # the fast path's adapters keep their attention outputs for the recompute when that fits with nothing streamed
    keep = keep_wanted and method != "full" and fused_loss
    offload = dict(offload_activations=True, host_embedding=host_embedding, graphs=graphs_wanted, keep_attention=keep)
    e = est(checkpointed_layers=layers, **offload)
    if e.peak_vram_gib > cap and keep:
        offload["keep_attention"] = False
        e = est(checkpointed_layers=layers, **offload)
    kept = offload.pop("keep_attention")
    # with the attention outputs kept, a QLoRA recompute also keeps gate and up's dequantized weights where that fits
    # (a FastMLP's: mixture-of-experts layers have none),
    # before un-checkpointing any layer (llama8b at 4096 tokens on the H100: 0.22 GiB for two of the 66.6 us
    # dequantizations a layer; one layer less recomputed took 0.44 GiB more peak, 343.7 -> 345.9 ms median step)
    both = dict(keep_attention=True, keep_dequantized=True)
    dequantized = (
        kept
        and method == "qlora"
        and not arch.moe_layers
        and est(checkpointed_layers=layers, **both, **offload).peak_vram_gib <= cap
    )
    if dequantized:
        e = est(checkpointed_layers=layers, **both, **offload)
    if e.peak_vram_gib <= cap:
        kw = dict(keep_attention=kept, keep_dequantized=dequantized, **offload)
        e = most_shapes(checkpointed_layers=layers, **kw)  # as many shapes' graphs as fit, then fewer recomputes
        per_layer = (layer_activation_bytes(arch, seq * batch) + expert_factor_bytes(arch, method, **estimate_kw)) / GIB
        free = min(layers, math.floor((cap - e.peak_vram_gib) / per_layer))
        k = layers - free
        e = est(checkpointed_layers=k, **kw)
        if k == 0 and e.peak_vram_gib > cap:  # recomputing nothing brings every layer's graphs: one layer recomputes
            k, e = 1, est(checkpointed_layers=1, **kw)
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
            raise BudgetTooSmall(
                "Full fine-tuning of this model needs at least {need:.1f} GiB of GPU memory even "
                f"with its activations{' and optimizer states' if paged_optimizer else ''} in host RAM"
                f"{' and each gradient freed in the backward' if release_gradients else ''}, over the "
                f"{budget_gib:.1f} GiB budget; use LoRA or QLoRA.",
                at_least(e.peak_vram_gib),
            )
        # the fewest streamed layers with a ring of three slots (two arriving while one computes), else with two
        tile = MLP_TILE if seq * batch > MLP_TILE else None
        offload["mlp_tile"] = tile
        offload["graphs"] = graphs_wanted and tile is None

        def fitting():
            return next(
                (
                    (slots, count)
                    for slots in (RING_SLOTS, 2)
                    for count in range(1, layers + 1)
                    if est(checkpointed_layers=layers, streamed_layers=count, ring_slots=slots, **offload).peak_vram_gib
                    <= cap
                ),
                (None, layers),
            )

        slots, count = fitting()
        if slots is None and paged_optimizer:  # then the adapters' 8-bit states too (many: a MoE's per-expert LoRA)
            offload["optimizer_in_host"] = True
            slots, count = fitting()
        e = est(checkpointed_layers=layers, streamed_layers=count, ring_slots=slots or 2, **offload)
        if slots is None:
            raise BudgetTooSmall(
                "This run needs at least {need:.1f} GiB of GPU memory even with every layer's "
                f"weights in host RAM, over the {budget_gib:.1f} GiB budget; use a shorter sequence length, a "
                "smaller batch, QLoRA, or a smaller model.",
                at_least(e.peak_vram_gib),
            )
        paged = offload.get("optimizer_in_host", False)
        plan_ = made(layers, e, True, spread(count, layers), host_embedding, slots, tile, paged=paged)
    return check_ram(plan_, host_ram_gib)


def _recompute_only(arch: Arch, method: str, tokens: int, budget_gib: float, fused_loss: bool, kw: dict, made):
    """The plan that keeps everything on the GPU: the layers engine.memory.checkpointing recomputes at this size
    (it decides per micro-batch with the same rule), or a UserError when even recomputing all of them does not fit."""
    if not fits_checkpointed(arch, method, tokens, budget_gib, fused_loss, **kw):
        e = estimate(arch, method, tokens, 1, fused_loss=fused_loss, **kw)
        raise BudgetTooSmall(
            "Full fine-tuning of this model needs at least {need:.1f} GiB on each GPU even "
            f"with every layer recomputed, over the {budget_gib:.1f} GiB budget; {SHARDED_FIXES}",
            at_least(e.peak_vram_gib),
        )
    k = layers_to_checkpoint(arch, method, tokens, budget_gib, fused_loss, **kw)
    return made(k, estimate(arch, method, tokens, 1, checkpointed_layers=k, fused_loss=fused_loss, **kw))


def check_ram(plan_: Plan, host_ram_gib: float | None, on_cpu: bool = False) -> Plan:
    """`plan_`, or a UserError where its host RAM figure is over `host_ram_gib` (`on_cpu`: a run training on the CPU,
    whose training step is in host RAM too)."""
    if host_ram_gib is not None and plan_.peak_ram_gib > host_ram_gib:
        kept = f", and what does not fit in {plan_.budget_gib:.1f} GiB of GPU memory" if plan_.active else ""
        kept = ", and the training step on the CPU" if on_cpu else kept
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
