"""Peak GPU memory and host RAM of a training run, from the model's architecture numbers and the run's settings.

    peak = weights + trainable (params, grads, optimizer states) + activations + loss (logits) + fixed
           + what the allocator reserves beyond that (the CUDA graphs' pool, fragmentation)
Weights: 2 bytes/param at 16 bits; NF4 linear layers 0.5 bytes/param plus 1/64 byte of double-quantized scale. Every
parameter counts: a mixture-of-experts layer's experts (all of them) and router, a vision tower, biases and extra
norms. transformers keeps a layer's experts as fused 3-D tensors, which bitsandbytes does not quantize; QLoRA on the
fast path stores them NF4 as they load (engine.patching.moe), so they count 4-bit there and 16-bit elsewhere, and
LoRA on them is one rank-r adapter per expert (PEFT's target_parameters), counted with the other adapters.
Activations: with checkpointing, each layer keeps its bf16 input (2 bytes x hidden per token) and one layer at a time
is rebuilt in full; without it, every layer keeps its full set. The per-token activation and loss coefficients below
were fitted to peaks measured on the GPU machine (engine/calibrate.py; table in presets/README.md).
"""

import math
from collections import Counter
from dataclasses import dataclass

from engine.core.scratch import experts_per_chunk
from engine.memory.configs import arch_fields
from engine.memory.expert_fetch import ACTIVE_SHARE
from engine.memory.families import mamba_mixer_bytes

GIB = 2**30
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Fitted to peaks measured on an H100 (python -m engine.calibrate fit, presets/README.md): bytes per token of one
# layer's full activations per unit of hidden (h), intermediate (i) and attention (a: q + k + v widths) size; bytes
# per token per vocabulary entry in the loss (transformers' path: bf16 logits, an fp32 copy, log-softmax, gradients);
# GiB fixed. The two models fitted (0.6B and 4B Qwen3) gave 11.5 and 11.1 bytes per logit.
COEF = dict(layer_h=1.3, layer_i=8.0, layer_a=12.0, loss_v=11.3, fixed_gib=0.05)
NF4_BYTES = 0.5 + 1 / 64  # packed 4-bit weight + uint8 absmax per 64-block (double quantization)
OFFLOAD_ON_GPU = 2  # checkpointed inputs on the GPU with activation offload: the last layer's and one in flight
OPTIMIZER_BYTES = {"adamw_8bit": 2, "adamw": 8}  # state bytes per fp32 trained value; torch's: two of its dtype
# CUDA graphs of checkpointed layers (engine.patching.graphs): their pool holds one layer's working set for good, which
# the estimate's activations already count once (the eager recompute's). On capped H100 runs the graphs added 0.12
# GiB in all to the eager peak (qwen3_4b LoRA at 4096 tokens, qwen3_14b QLoRA at 2048: peaks with and without graphs,
# less the exact bytes of the layers the graph plans streamed in addition, bench/README.md). A quarter of the working
# set plus the static buffers and one layer's gradients (0.21 and 0.18 GiB there) covers that with a margin.
GRAPH_POOL_SHARE = 0.25
# The allocated peak's share the caching allocator reserves on top of it (block rounding, split blocks it cannot
# reuse). A planning constant, not a measured one: bench/budget_sweep.py reports each run's peak reserved beside the
# estimate, which is what to fit it to.
FRAGMENTATION = 0.04
# A plan keeps its estimated peak times this within the budget: a margin for the estimate's own error (bench/README.md:
# capped runs' allocated peaks were 4-6% under its allocated part, the 65536-token one 1% over it).
ESTIMATE_SLACK = 1.05
# Kept attention outputs (q, k, v, o of a checkpointed layer, engine.memory.activations.Checkpoint): the graphs' two
# static sets (even and odd layers) and the activation store's two landing sets (the layer's fetched copy, the next one
# arriving).
ATTENTION_SETS = 4


@dataclass(frozen=True)
class Arch:
    """The architecture numbers memory depends on. A mixture-of-experts model has `moe_layers` layers whose MLP is
    `experts` experts of width `expert_intermediate` (`experts_per_token` of them run per token) beside an optional
    shared expert of width `shared_intermediate`; its other layers have a dense MLP of width `intermediate`."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    experts: int = 0
    expert_intermediate: int = 0
    moe_layers: int = 0
    experts_per_token: int = 0
    shared_intermediate: int = 0
    expert_biases: bool = False  # gpt-oss: each expert's projections have biases
    # parameters outside the decoder layers' linears, the embeddings and the two norms a layer: the routers, per-head
    # q/k norms, attention biases and sinks, extra norms, a vision tower; frozen and kept in 16 bits
    other_params: int = 0
    model_type: str = ""  # the config's (a text config's for a multimodal one); "" for numbers written by hand
    # the MoE layers' indices where dense layers come between them (Qwen2/3-MoE's mlp_only_layers and
    # decoder_sparse_step); () when the MoE layers are the last `moe_layers` (all, or DeepSeek-style dense first ones)
    moe_ids: tuple[int, ...] = ()
    # DeepSeek's multi-head latent attention: (q_lora_rank, 0 where q is one projection; kv_lora_rank; the per-head
    # widths of q/k without and with rotary positions, and of v); () for the usual q, k, v and o
    latent: tuple[int, ...] = ()
    # each decoder layer's nn.Linear modules as (name, in, out), where a family's are not the q, k, v, o and gate, up,
    # down above (engine.memory.families: Phi's fc1 and fc2, a fused query_key_value, Jamba's Mamba mixers); () for
    # those. LoRA's targets match these names, as PEFT matches the model's.
    linears: tuple[tuple[tuple[str, int, int], ...], ...] = ()
    # a hybrid's Mamba layers (Jamba): their indices, and their mixers' d_inner, d_state and dt_rank; () for none
    mamba_ids: tuple[int, ...] = ()
    mamba: tuple[int, int, int] = ()

    @classmethod
    def from_config(cls, cfg: dict, with_vision: bool = True) -> "Arch":
        """From a transformers config.json. A multimodal config keeps the language model's numbers in text_config;
        its vision tower (vision_config) is counted when `with_vision` and the run loads it
        (engine.memory.configs.loads_vision)."""
        return cls(**arch_fields(cfg, with_vision))

    @property
    def attention_shapes(self) -> dict[str, tuple[int, int]]:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.latent:
            q_rank, kv_rank, nope, rope, v = self.latent
            q = self.heads * (nope + rope)
            query = dict(q_a_proj=(h, q_rank), q_b_proj=(q_rank, q)) if q_rank else dict(q_proj=(h, q))
            kv_ = dict(kv_a_proj_with_mqa=(h, kv_rank + rope), kv_b_proj=(kv_rank, self.heads * (nope + v)))
            return {**query, **kv_, "o_proj": (self.heads * v, h)}
        return dict(q_proj=(h, q), k_proj=(h, kv), v_proj=(h, kv), o_proj=(q, h))

    @staticmethod
    def mlp_shapes(hidden: int, width: int) -> dict[str, tuple[int, int]]:
        return dict(gate_proj=(hidden, width), up_proj=(hidden, width), down_proj=(width, hidden))

    @property
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of a layer with a dense MLP, by module name."""
        return {**self.attention_shapes, **self.mlp_shapes(self.hidden, self.intermediate)}

    @property
    def _layer_linears(self) -> list[tuple[int, dict]]:
        """(how many layers, their nn.Linear shapes by module name), for the dense and the MoE layers: what
        bitsandbytes quantizes and LoRA's target_modules adapt. The experts of transformers' MoE layers are fused
        3-D parameters, not nn.Linear modules: counted in `expert_params`."""
        if self.linears:
            return [(n, {name: (a, b) for name, a, b in layer}) for layer, n in Counter(self.linears).items()]
        dense = [(self.layers - self.moe_layers, self.linear_shapes)]
        if not self.moe_layers:
            return dense
        shared = self.mlp_shapes(self.hidden, self.shared_intermediate) if self.shared_intermediate else {}
        return dense + [(self.moe_layers, {**self.attention_shapes, **shared})]

    @property
    def attention_width(self) -> int:
        """The widths of q, k and v a token's attention computes."""
        if self.latent:
            _, _, nope, rope, v = self.latent
            return self.heads * (2 * (nope + rope) + v)
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    @property
    def linear_params(self) -> int:
        return sum(n * sum(a * b for a, b in shapes.values()) for n, shapes in self._layer_linears)

    @property
    def expert_params(self) -> int:
        """All experts' weights (and biases) of every MoE layer, not just the ones a token uses."""
        per_expert = 3 * self.hidden * self.expert_intermediate
        if self.expert_biases:
            per_expert += 2 * self.expert_intermediate + self.hidden
        return self.moe_layers * self.experts * per_expert

    def layer_is_moe(self, index: int) -> bool:
        """Whether decoder layer `index` has experts (else a dense MLP)."""
        return index in self.moe_ids if self.moe_ids else index >= self.layers - self.moe_layers

    def layer_params(self, index: int) -> tuple[int, int]:
        """(nn.Linear weights, fused expert weights) of decoder layer `index`: what weight streaming moves of it."""
        moe = self.layer_is_moe(index)
        if self.linears:
            shapes = {name: (a, b) for name, a, b in self.linears[index]}
        else:
            shapes = self._layer_linears[-1][1] if moe else self.linear_shapes
        experts = self.experts * 3 * self.hidden * self.expert_intermediate if moe else 0
        return sum(a * b for a, b in shapes.values()), experts

    @property
    def router_params(self) -> int:
        """Every MoE layer's router (experts x hidden, and gpt-oss's bias): counted in `other_params`."""
        return self.moe_layers * self.experts * (self.hidden + self.expert_biases)

    @property
    def expert_weight_params(self) -> int:
        """The experts' fused 3-D weight tensors alone (no biases): what QLoRA's fast path stores NF4."""
        return self.moe_layers * self.experts * 3 * self.hidden * self.expert_intermediate

    def expert_lora_params(self, rank: int, targets=ALL_TARGETS) -> int:
        """PEFT's adapters on the fused expert tensors (engine.models.experts: gate_proj or up_proj selects gate_up,
        down_proj selects down): one rank-r pair per expert, rank * experts * (the tensor's two matrix sides)."""
        h, i = self.hidden, self.expert_intermediate
        sides = (2 * i + h if {"gate_proj", "up_proj"} & set(targets) else 0) + (i + h if "down_proj" in targets else 0)
        return self.moe_layers * self.experts * rank * sides

    @property
    def linear_names(self) -> set[str]:
        """The names of the decoder layers' nn.Linear modules: what LoRA's target_modules can name."""
        return {name for _, shapes in self._layer_linears for name in shapes}

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.expert_params + self.embedding_params + norms + self.other_params

    @property
    def largest_linear(self) -> int:
        return max(a * b for n, shapes in self._layer_linears if n for a, b in shapes.values())

    @property
    def mlp_width(self) -> int:
        """The widest per-token MLP activation of a layer: a dense MLP's, or a MoE layer's experts per token (each
        token's rows for each of its experts) and its shared expert."""
        moe = self.experts_per_token * self.expert_intermediate + self.shared_intermediate if self.moe_layers else 0
        return max(self.intermediate if self.moe_layers < self.layers else 0, moe)

    def lora_params(self, rank: int, targets=ALL_TARGETS, experts: bool = True) -> int:
        """Adapter weights on the `targets` that exist as nn.Linear modules, and on the fused experts unless
        `experts` is off (a job's lora_experts)."""
        linear = sum(
            n * sum(rank * (a + b) for name, (a, b) in shapes.items() if name in targets)
            for n, shapes in self._layer_linears
        )
        return linear + (self.expert_lora_params(rank, targets) if experts else 0)


@dataclass(frozen=True)
class Estimate:
    peak_vram_gib: float
    peak_ram_gib: float
    parts_gib: dict

    def fits(self, budget_gib: float) -> bool:
        """Fits when the estimate plus its own error (ESTIMATE_SLACK) is within the budget."""
        return self.peak_vram_gib * ESTIMATE_SLACK <= budget_gib


def estimate(
    arch: Arch,
    method: str,
    seq: int,
    batch: int,
    rank: int = 16,
    checkpointing: bool = True,
    optimizer: str = "adamw_8bit",
    targets=ALL_TARGETS,
    checkpointed_layers: int | None = None,
    fused_loss: bool = False,
    loss_chunk: int = 4096,
    offload_activations: bool = False,
    streamed_layers: int = 0,
    ring_slots: int = 0,
    host_embedding: bool = False,
    mlp_tile: int | None = None,
    optimizer_in_host: bool = False,
    dense_layers: int = 0,
    dense_experts: int = 0,
    grads_released: bool = False,
    graphs: bool = False,
    keep_attention: bool = False,
    keep_dequantized: bool = False,
    shards: int = 1,
    lora_experts: bool = True,
    processes: int = 1,
    master_fp32: bool = False,
    experts_nf4: bool | None = None,
    expert_stack: bool = False,
    train_router: bool = False,
    graph_shapes: int = 0,
    layer_graphs: bool = False,
    graph_tokens: int | None = None,
    trained_embeddings: int = 0,
    reference_copy: bool = False,
) -> Estimate:
    """Peak allocated GPU memory (and host RAM) of one training step, in GiB.

    `checkpointed_layers` (default: all when `checkpointing`, else none) counts the layers that keep only their input;
    `fused_loss` is the fast path's chunked cross-entropy, which holds one chunk of `loss_chunk` tokens' logits instead
    of all of them. The offload manager's choices (engine.memory.offload): `offload_activations` keeps checkpointed
    inputs in host RAM (at most OFFLOAD_ON_GPU of them on the GPU at once), `streamed_layers` layers' frozen weights
    live in host RAM and pass through `ring_slots` GPU slots, `host_embedding` keeps the input embedding table in host
    RAM, `mlp_tile` runs the MLP over tiles of that many tokens, and `optimizer_in_host` counts the paged optimizer
    states (full fine-tuning's, or LoRA's) in host RAM (where bitsandbytes' paged AdamW moves them under memory
    pressure), and `dense_layers` QLoRA layers keep a 16-bit copy of their NF4 weights beside them, and `grads_released`
    (full fine-tuning, engine.memory.grad_release) frees each gradient as soon as its weight is updated, in the
    backward, so at most the largest one exists at a time, and `graphs` replays the checkpointed layers' passes as CUDA
    graphs (engine.patching.graphs.CheckpointGraphs), whose memory pool keeps one layer's working set for good (see
    GRAPH_POOL_SHARE), with three static (tokens x hidden) buffers, and `keep_attention` keeps each checkpointed layer's
    q, k, v and o projection outputs in host RAM with its input (engine.memory.activations.Checkpoint), with
    ATTENTION_SETS sets of them on the GPU at the peak, and `keep_dequantized` has a QLoRA recompute keep gate and up's
    dequantized weights for its backward (two 16-bit copies), and `shards` GPUs share full fine-tuning's weights,
    gradients and optimizer states (FSDP2, engine.training.distributed): each holds 1/shards of them plus two layers
    gathered whole (the one computing and the next, prefetched) and one layer's whole gradient before its
    reduce-scatter, and the root's embeddings gathered whole with the head's whole gradient. LoRA and QLoRA runs on
    several GPUs hold the same per GPU as on one. Sharded full fine-tuning in fp16 (`master_fp32`) keeps its shards
    and their gradients in fp32 (FSDP2's mixed precision: AdamW's fp16 updates would underflow), each layer gathered
    in fp16.

    `graph_shapes` is how many padding-free shapes' CUDA graphs the run holds at once
    (engine.memory.offload.Plan.shapes), each sized for `graph_tokens` (default: this micro-batch's), counted by
    `graph_shape_bytes` (part "graph_shapes"): the checkpointed layers' graphs (`graphs`) when layers recompute, else,
    with `layer_graphs`, the graphs of every layer's forward and backward (engine.patching.graphs.install), whose pool
    keeps a captured step's activations while a new shape's first step runs eagerly beside it (part "graph_pool", with
    more than one shape).

    The host RAM figure is the machine's, for all `processes` ranks of a run on several GPUs: the 16-bit checkpoint
    once (a sharded run's rank 0 alone loads it, the other ranks receive their shards from it; a LoRA or QLoRA rank
    maps the same weight files as the others, whose pages the OS holds once), and each rank's own overhead and pinned
    buffers. `lora_experts` off leaves a mixture-of-experts model's experts without adapters (the job's lora_experts).

    `experts_nf4` says whether the run keeps a mixture-of-experts model's fused expert weights NF4 (the plan decides it
    with `nf4_experts`, the rule the run loads them by); None takes QLoRA with the fused loss for the GPU's fast path.
    NF4 experts are dequantized a chunk of experts at a time into one scratch buffer (engine.patching.moe), a layer's
    whole stack at once with `expert_stack` (a plan with room for it: one dequantization and one grouped launch per
    product instead of a chunk's each, which the host issues one after another); a streamed layer's slot may hold
    some of them alone, with their scales gathered in fp32 (`active_scale_bytes`).
    `train_router` (the job's) trains the routers: LoRA trains a 16-bit copy of each (PEFT's modules_to_save; the
    frozen original stays), with its 16-bit gradient and optimizer states; full fine-tuning freezes them without it.
    `trained_embeddings` is the bytes a value of continued pretraining's trained embedding copies takes (0: none
    trained; `trained_embedding_bytes`, part "embeddings")."""
    tokens = seq * batch
    if experts_nf4 is None:
        experts_nf4 = nf4_experts(method, fused_loss)
    if checkpointed_layers is None:
        checkpointed_layers = arch.layers if checkpointing else 0
    if method == "qlora":
        four_bit = arch.linear_params + (arch.expert_weight_params if experts_nf4 else 0)
        weights = four_bit * NF4_BYTES + (arch.params - four_bit) * 2
        # a bf16 copy of the largest weight: transformers' path holds one in the forward and one in the backward;
        # the fast path (which brings the fused loss) dequantizes into one shared buffer (kernels.lora), and NF4
        # experts into one chunk's buffer of their own
        dequant = (1 if fused_loss else 2) * arch.largest_linear * 2
        if experts_nf4 and arch.moe_layers and dense_experts < arch.layers:
            dequant += expert_chunk_bytes(arch, expert_stack)
        dequant += dense_layers * dense_copy_bytes(arch) + dense_experts * dense_copy_bytes(arch, experts=True)
        if experts_nf4 and any(arch.layer_is_moe(i) for i in spread(streamed_layers, arch.layers)):
            dequant += ring_slots * active_scale_bytes(arch)  # each slot's compact experts' fp32 scales
        if keep_dequantized and checkpointed_layers:
            dequant += 2 * arch.intermediate * arch.hidden * 2
    else:
        weights, dequant = arch.params * 2, 0
    # the streamed layers (those engine.memory.offload.plan picks) leave the GPU; each of the ring's slots holds the
    # largest of them (engine.memory.weights.WeightStream sizes its slots so)
    per_layer = [layer_weight_bytes(arch, method, experts_nf4, i) for i in spread(streamed_layers, arch.layers)]
    streamed = sum(per_layer)
    weights -= streamed - max(per_layer, default=0) * ring_slots
    if host_embedding and not arch.tied:
        weights -= arch.vocab * arch.hidden * 2
    opt = OPTIMIZER_BYTES[optimizer]
    adapters = arch.lora_params(rank, targets, lora_experts)
    router = arch.router_params if train_router else 0  # LoRA's trained copy of the routers
    # full fine-tuning trains every weight but the routers, unless asked
    trained = arch.params - (arch.router_params - router if method == "full" else 0)
    paged = (trained if method == "full" else adapters + router) * opt if optimizer_in_host else 0
    if method == "full":  # bf16 gradient, 2 more (bench/README.md, issue 11), states: bf16, fp32 with master_fp32
        trainable = trained * (2 + 2 + (opt if optimizer == "adamw_8bit" else 2 * (4 if master_fp32 else 2))) - paged
        if grads_released:  # only the largest tensor's gradient exists at a time
            fused_experts = arch.experts * 2 * arch.expert_intermediate * arch.hidden  # a MoE layer's gate_up tensor
            largest = max(arch.vocab * arch.hidden, arch.largest_linear, fused_experts)
            trainable -= (trained - largest) * 2
    else:
        # fp32 adapters, their grads, optimizer states; a trained router's 16-bit copy, its grad, optimizer states
        trainable = adapters * (4 + 4 + opt) + router * (2 + 2 + opt) - paged
    if method == "full" and shards > 1:  # the layers gathered whole are as large as the largest one
        largest = max(layer_weight_bytes(arch, method, experts_nf4, i) for i in range(arch.layers))
        if master_fp32:  # fp32 shards and gradients: two bytes more of each per parameter
            weights, trainable = weights * 2, trainable + arch.params * 2
        # the root (embeddings, final norm, head) stays gathered whole from its forward to the backward's end (FSDP2
        # does not reshard the root after its forward), and the head's gradient stays whole until the root's
        # reduce-scatter at that end
        weights = weights / shards + 2 * largest + arch.embedding_params * 2
        trainable = trainable / shards + largest + arch.vocab * arch.hidden * 2
    factor = expert_factor_bytes(arch, method, rank, targets, lora_experts)
    layer = layer_activation_bytes(arch, tokens, mlp_tile) + factor  # the largest layer's, rebuilt one at a time
    on_gpu = min(checkpointed_layers, OFFLOAD_ON_GPU) if offload_activations else checkpointed_layers
    kept = on_gpu * tokens * arch.hidden * 2  # a checkpointed layer keeps its bf16 input
    # the first `checkpointed_layers` recompute (engine.memory.checkpointing.install's order), the others keep theirs
    whole = range(checkpointed_layers, arch.layers)
    whole_bytes = layers_activation_bytes(arch, tokens, whole, mlp_tile) + len(whole) * factor
    activations = kept + whole_bytes + (layer if checkpointed_layers else 0)
    if fused_loss:  # one bf16 chunk of logits, reused as its gradient, plus fp32 dh
        loss = min(tokens, loss_chunk) * arch.vocab * 2 + tokens * arch.hidden * 4
    else:
        loss = tokens * arch.vocab * COEF["loss_v"]
    embeddings = trained_embedding_bytes(arch, trained_embeddings, optimizer) if trained_embeddings else 0
    if optimizer_in_host and embeddings:  # their states paged with the adapters'
        states = trained_embedding_bytes(arch, trained_embeddings, optimizer, states=True)
        embeddings, paged = embeddings - states, paged + states
    parts = dict(
        weights=weights,
        trainable=trainable,
        embeddings=embeddings,
        activations=activations,
        loss=loss,
        dequant=dequant,
        fixed=COEF["fixed_gib"] * GIB,
        **({"reference": arch.params * 2} if reference_copy else {}),  # DPO full: a frozen 16-bit reference model
    )
    if graphs and checkpointed_layers:  # the pool's excess, three (tokens x hidden) buffers, one layer's gradients
        grads = adapters * 4 / arch.layers
        parts["graphs"] = GRAPH_POOL_SHARE * layer + 3 * tokens * arch.hidden * 2 + grads
    kept_attention = tokens * (arch.attention_width + arch.hidden) * 2 if keep_attention and checkpointed_layers else 0
    if kept_attention:
        parts["attention_kept"] = ATTENTION_SETS * kept_attention
    # What the allocator reserves beyond the allocated peak above (the process's cap counts reserved memory): the
    # graphs' private pool keeps a recompute's whole working set for good beside the main pool, which still holds the
    # one the first (eager) step used (llama8b QLoRA at 4096 tokens: 1 GiB of pool beside 6.51 GiB allocated, issue
    # 24; this term gives 0.96); and the rounding and split blocks of the caching allocator.
    if graphs and checkpointed_layers:
        pool = layer
        if keep_dequantized and method == "qlora":
            pool += 2 * arch.intermediate * arch.hidden * 2
        parts["graph_pool"] = pool
    shape = graph_shape_bytes(arch, graph_tokens or tokens, checkpointed_layers, keep_attention, adapters)
    if graph_shapes and graphs and checkpointed_layers:  # less the one set "graphs" and "attention_kept" count
        counted = 3 * tokens * arch.hidden * 2 + 2 * kept_attention
        parts["graph_shapes"] = graph_shapes * shape - counted
    elif graph_shapes and layer_graphs and not checkpointed_layers:
        parts["graph_shapes"] = graph_shapes * shape
        if graph_shapes > 1:
            parts["graph_pool"] = layers_activation_bytes(arch, graph_tokens or tokens, range(arch.layers), mlp_tile)
    parts["fragmentation"] = FRAGMENTATION * sum(parts.values())
    parts = {k: round(v / GIB, 3) for k, v in parts.items()}
    # Host RAM: measured peak RSS (python -m engine.calibrate tiers) was the whole 16-bit checkpoint plus about
    # 1 GiB for every model and method: transformers maps every weight file while it loads, QLoRA included. What the
    # offload manager keeps in pinned host memory comes on top, per rank of a run on several GPUs.
    pinned = streamed + paged + (checkpointed_layers * tokens * arch.hidden * 2 if offload_activations else 0)
    pinned += checkpointed_layers * kept_attention
    ram = processes * (1.0 + pinned / GIB) + arch.params * (4 if master_fp32 else 2) / GIB  # fp32: loaded so
    return Estimate(round(sum(parts.values()), 2), round(ram, 2), parts)


def trained_embedding_bytes(arch: Arch, width: int, optimizer: str = "adamw_8bit", states: bool = False) -> int:
    """GPU bytes of continued pretraining's trained embed_tokens and lm_head (engine.training.pretrain: PEFT's
    modules_to_save copies beside the frozen originals, which `weights` counts; a tied model trains one copy, its head
    tied to it): each value in `width` bytes (2: the base's 16 bits; 4: fp32, the master weights of an fp16 run,
    engine.training.precision, or a CPU run's fp32), its gradient in the same, and AdamW's two states (8-bit: a byte
    each; torch's: the value's width each). Only the states with `states`."""
    opt = OPTIMIZER_BYTES["adamw_8bit"] if optimizer == "adamw_8bit" else 2 * width
    return arch.embedding_params * (opt if states else 2 * width + opt)


def graph_shape_bytes(arch: Arch, tokens: int, checkpointed_layers: int, keep_attention: bool, adapters: int) -> int:
    """Bytes one padding-free shape of `tokens` tokens holds in CUDA graphs beyond the pool every shape shares (the
    buffers engine.patching.graphs lists): with checkpointed layers, CheckpointGraphs' static set (x, dy, out; cos,
    sin and their fp32 RoPE tables and positions; two sets of q/k/v/o outputs when `keep_attention`); else, per layer,
    `install`'s static inputs (hidden, cos, sin), the output's gradient, the output and the hidden state's gradient,
    and the `adapters`' fp32 gradients."""
    h, d = arch.hidden, arch.head_dim
    if checkpointed_layers:
        rope = tokens * (2 * d * 2 + d * 4 + 8)  # cos and sin (16-bit), the two fp32 half tables, int64 positions
        kept = 2 * tokens * (arch.attention_width + h) * 2 if keep_attention else 0
        return 3 * tokens * h * 2 + rope + kept
    return arch.layers * (4 * tokens * h * 2 + 2 * tokens * d * 2) + adapters * 4


def nf4_experts(method: str, fast_path_on_gpu: bool) -> bool:
    """Whether a run keeps a mixture-of-experts model's fused expert weights NF4: QLoRA on the GPU's fast path, with
    gradient checkpointing or without it. The one rule: the plan counts them by it (engine.memory.verdict.plan_for,
    `Plan.experts_nf4`) and the run loads and quantizes them by that plan (engine.models.loading)."""
    return method == "qlora" and fast_path_on_gpu


def layer_weight_bytes(arch: Arch, method: str, experts_nf4: bool = False, index: int | None = None) -> float:
    """Bytes of decoder layer `index`'s frozen weights that weight streaming moves (None: averaged over the layers):
    its linear layers' and its experts' (NF4: the packed 4-bit data; the small scales stay on the GPU)."""
    if index is None:
        linear, experts, layers = arch.linear_params, arch.expert_weight_params, arch.layers
    else:
        (linear, experts), layers = arch.layer_params(index), 1
    return (linear * (0.5 if method == "qlora" else 2) + experts * (0.5 if experts_nf4 else 2)) / layers


def spread(count: int, layers: int) -> tuple[int, ...]:
    """`count` layer indices spread evenly over `layers`: resident layers' compute hides the streamed ones' copies."""
    return tuple(sorted({j * layers // count for j in range(count)})) if count else ()


def dense_copy_bytes(arch: Arch, experts: bool = False) -> float:
    """Bytes of one layer's 16-bit copies of its NF4 linear weights, or of its NF4 experts (`experts`; the layers'
    mean), engine.memory.weights.keep_dense."""
    return (arch.expert_weight_params if experts else arch.linear_params) / arch.layers * 2


def expert_factor_bytes(arch: Arch, method: str, rank=16, targets=ALL_TARGETS, lora_experts=True, **_) -> float:
    """Bytes a MoE layer's grouped products save of its expert adapters for the backward (the layers' mean): PEFT's
    16-bit copies of the factors, made contiguous for CUTLASS (engine.patching.moe)."""
    trained = method != "full" and lora_experts and arch.moe_layers
    return arch.expert_lora_params(rank, targets) * 2 / arch.layers if trained else 0.0


def expert_chunk_bytes(arch: Arch, whole: bool = False) -> int:
    """The scratch buffer NF4 experts are dequantized into: a chunk of experts' gate_up tensors, 16-bit
    (engine.core.scratch, as engine.patching.moe sizes it), or all of a layer's (`whole`)."""
    per_expert = 2 * arch.expert_intermediate * arch.hidden * 2
    return (arch.experts if whole else experts_per_chunk(per_expert)) * per_expert


def active_scale_bytes(arch: Arch) -> int:
    """The fp32 scales of the most NF4 experts a streamed layer fetches alone (engine.memory.expert_fetch: a share
    ACTIVE_SHARE of them, each block's absmax gathered for their compact copy)."""
    return math.floor(ACTIVE_SHARE * arch.experts) * 3 * arch.hidden * arch.expert_intermediate // 64 * 4


# A MoE layer's grouped path (engine.patching.moe) also keeps two 16-bit [tokens x top-k, hidden] tensors: the rows
# gathered for the experts and the experts' outputs in token order (saved for the routing weights' sum); without them
# the qwen3_30b_a3b_12l QLoRA plan at 4,096 tokens said 13.70 GiB against 16.38 allocated (H100, bench/README.md).
MOE_ROW_BYTES = 4


def layer_activation_bytes(arch: Arch, tokens: int, mlp_tile: int | None = None, index: int | None = None) -> float:
    """Bytes decoder layer `index` (None: the largest layer) keeps for its backward when it is not checkpointed; with
    `mlp_tile`, the MLP's intermediate activations exist for one tile of tokens at a time (engine.patching's tiled
    MLP). A hybrid's Mamba layer keeps its mixer's (families.mamba_mixer_bytes) where others keep attention's."""
    if index is None and arch.mamba_ids:  # a Mamba layer or an attention one, whichever keeps more
        others = [i for i in range(arch.layers) if i not in arch.mamba_ids][:1]
        return max(layer_activation_bytes(arch, tokens, mlp_tile, i) for i in (arch.mamba_ids[0], *others))
    mamba = index in arch.mamba_ids
    mixer = mamba_mixer_bytes(*arch.mamba, arch.hidden) if mamba else COEF["layer_a"] * arch.attention_width
    width = COEF["layer_h"] * arch.hidden + mixer
    if arch.moe_layers:
        width += MOE_ROW_BYTES * arch.experts_per_token * arch.hidden
    return tokens * width + min(tokens, mlp_tile or tokens) * COEF["layer_i"] * arch.mlp_width


def layers_activation_bytes(arch: Arch, tokens: int, layers: range, mlp_tile: int | None = None) -> float:
    """What the decoder layers `layers` keep for their backward, none of them checkpointed."""
    if not arch.mamba_ids:  # every layer keeps as much
        return len(layers) * layer_activation_bytes(arch, tokens, mlp_tile)
    return sum(layer_activation_bytes(arch, tokens, mlp_tile, i) for i in layers)
