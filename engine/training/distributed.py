"""One rank of a data-parallel run (engine.training.launch starts the ranks): the process group, the model's
wrapper, the step's agreement between ranks, and checkpoints that any number of processes can resume.

- LoRA and QLoRA: the frozen base (NF4 or 16-bit) is loaded whole on every GPU, and after a step's last backward
  the trainable weights' gradients (the adapters only) are averaged over the ranks by one all-reduce. Not torch's
  DistributedDataParallel: it starts its all-reduces from autograd's hooks on each weight, and the fast path's packed
  adapters (engine.patching.modules.pack_adapters) take their gradients outside those hooks, so DDP would never see
  them. An adapter's gradients are small (Llama-3.1-8B at rank 16: 42M values), so one all-reduce after the backward
  costs little beside the step; with packing it is one tensor.
- Full fine-tuning: FSDP2 (`torch.distributed.fsdp.fully_shard`) per decoder layer and at the root. Rank 0 loads the
  model into host RAM; the other ranks build it without weights (on the meta device), and after sharding each rank
  receives its 1/N shard of the weights from rank 0, one tensor at a time, so the machine's RAM holds the model once.
  Each rank keeps its shard of the weights, gradients and AdamW states on its GPU. Its memory plan is its GPU's, with
  the shards counted (engine.memory.verdict, as `python -m engine estimate --gpus N`). In fp16 (a T4 has no bf16)
  the shards are fp32 master weights and each layer is gathered in fp16 to compute (FSDP2's MixedPrecisionPolicy):
  AdamW on fp16 weights turns a zero gradient into NaN (its eps underflows to 0) and loses small updates. The loss
  scaler is torch's ShardedGradScaler, which all-reduces its inf/NaN check, so every rank skips the same steps.
  The fast path (engine.patching) is swapped in before fully_shard (engine.models.loading.prepare_for_training): its
  drop-ins read their weights through their own attributes in their forward, where FSDP2 has put the gathered ones,
  and the fused loss reads the head's weight in the root's forward (FSDP2 keeps the root gathered until the backward
  ends). No CUDA graphs: a replayed layer would skip the all-gather and reduce-scatter FSDP2's hooks start around it.
- Data: every rank walks the same global sequence of micro-batches (engine.training.steps.batches_for_epoch) and
  trains on every N-th one, so a step sees batch_size x grad_accum x N examples and a checkpoint's position is the
  same whatever N is. A step's loss is the mean over its label tokens on every rank (each rank knows them all): a
  rank's micro-batch loss is weighed by N x its share of them and the gradients are averaged over ranks, so the step
  equals one process's step with grad_accum x N micro-batches.
- Each step ends with one small all-gather of (loss, stop flag, memory): the logged loss is the global mean, and a
  cancel on any rank stops every rank at the same step.
- Checkpoints hold what one process would write (the optimizer's state keyed by parameter index), so a run resumes
  on any number of processes. Rank 0 writes them; the others wait at a barrier.

Collectives time out after TIMEOUT_S ($TUNESMITH_COLLECTIVE_TIMEOUT_S), so a rank that stops answering ends the run
rather than hanging it.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

from engine.core.errors import UserError
from engine.core.hardware import Placement

TIMEOUT_S = float(os.environ.get("TUNESMITH_COLLECTIVE_TIMEOUT_S", "600"))


@dataclass(frozen=True)
class World:
    """This process's place among the run's ranks, and how the model is spread over them."""

    rank: int
    size: int
    local_rank: int
    sharded: bool  # FSDP2 (full fine-tuning); else the trainable weights are replicated, their gradients averaged

    @property
    def main(self) -> bool:
        return self.rank == 0


def pin_device(spec) -> None:
    """On GPUs, make this rank's GPU (LOCAL_RANK) the current one before anything touches CUDA, so nothing of this
    rank lands on GPU 0, or opens a context there, by default. Nothing to do for one process or on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or spec.device == "cpu":
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def join(spec, placement: Placement, log) -> World | None:
    """Join the run's process group (NCCL on GPUs, gloo on the CPU); None when the run has one process. On a GPU this
    rank's device becomes the current one, so "cuda" means it everywhere else."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    world = World(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]), spec.method == "full"
    )
    if world.sharded and spec.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        raise UserError(
            f"Full fine-tuning on several GPUs shards AdamW's states, which {spec.optimizer} cannot; set optimizer to "
            "auto or adamw, or gpus to 1."
        )
    backend = "gloo"
    if placement.device == "cuda":
        torch.cuda.set_device(world.local_rank)
        backend = "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    how = "FSDP2: weights, gradients and optimizer states sharded" if world.sharded else "adapters' gradients averaged"
    log(f"data-parallel: {world.size} ranks over {backend}, {how}; collectives time out after {TIMEOUT_S:.0f} s")
    return world


def leave() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_placement(placement: Placement, world: World | None) -> Placement:
    """Where the model is loaded: a sharded model into rank 0's host RAM, so no GPU ever holds all of it
    (fully_shard moves each rank's shard to its GPU), and without weights on the other ranks (`shard` sends them
    theirs); anything else onto this rank's GPU, named by its index."""
    if world is None:
        return placement
    dtype = "fp32" if placement.dtype == "fp16" else placement.dtype  # fp16: fp32 master weights (`shard`)
    if world.sharded and not world.main:
        return Placement("meta", dtype, placement.reason + "; built without weights, sharded from rank 0's")
    if world.sharded:
        return Placement("cpu", dtype, placement.reason + "; loaded into RAM, then sharded over the ranks")
    if placement.device == "cpu":
        return placement
    return Placement(f"cuda:{world.local_rank}", placement.dtype, placement.reason)


def compute_placement(placement: Placement, world: World | None) -> Placement | None:
    """Where and in which dtype a sharded model computes (this rank's GPU), which is not where or how it loads
    (load_placement): its memory plan is that GPU's; None for any other model."""
    if world is None or not world.sharded:
        return None
    device = f"cuda:{world.local_rank}" if placement.device == "cuda" else placement.device
    return Placement(device, placement.dtype, placement.reason)


def shard(model, world: World, placement: Placement, log):
    """FSDP2 over `model` in place: each decoder layer its own unit (gathered only while it computes), then the
    root (embeddings, final norm, head). Rank 0's model holds the weights (load_placement); the other ranks' were
    built without them and receive their shards from rank 0, one tensor at a time."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    whole = model.state_dict() if world.main else {}  # rank 0's loaded weights, kept while fully_shard splits them
    mesh = init_device_mesh(placement.device, (world.size,))
    # fp16: the shards stay fp32 (load_placement), each layer is gathered in fp16, gradients reduced in fp32
    fp16 = dict(param_dtype=torch.float16, reduce_dtype=torch.float32) if placement.dtype == "fp16" else {}
    policy = MixedPrecisionPolicy(**fp16)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if any(p.is_meta for p in model.parameters()):
        # room for this rank's shards; to_empty leaves every tensor uninitialised, the computed buffers (rotary
        # frequencies, not in any state dict) included, so those are put back
        buffers = {name: b.clone() for name, b in model.named_buffers() if not b.is_meta}
        model.to_empty(device=placement.device)
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole, options=options)
    del whole
    master = "; fp32 shards, computing in fp16" if fp16 else ""
    log(
        f"fsdp2: {len(layers)} decoder layers and the root sharded over {world.size} ranks from rank 0's weights"
        + master
        + f"; each rank computes {computes(model)}"
    )
    return model


def computes(model) -> str:
    """What a sharded rank's forward runs, for the log: the fast path's drop-ins (engine.patching, swapped in before
    fully_shard) and its fused loss, or plain transformers. Never CUDA graphs: a replayed layer would skip the
    all-gather and reduce-scatter that FSDP2's hooks start around it (and full fine-tuning holds none on one GPU
    either)."""
    kernels = sum(type(m).__module__.startswith("engine.patching.") for m in model.modules())  # MoE blocks too
    fused = getattr(model.forward, "__name__", "") == "fused_loss_forward"  # engine.patching.modules' loss
    if not kernels and not fused:
        return "through plain transformers (no fast path), without CUDA graphs"
    loss = "the fused cross-entropy loss" if fused else "transformers' loss"
    return f"through the fast path ({kernels} kernel drop-ins, {loss}), without CUDA graphs (FSDP2's collectives)"


def grad_scaler(placement: Placement, world: World | None):
    """The fp16 loss scaler (None in other dtypes): torch's ShardedGradScaler for a sharded model, whose gradients
    are shards whose inf/NaN check every rank must agree on (it all-reduces it); torch.amp.GradScaler otherwise (the
    adapters' gradients, averaged before the check, agree already)."""
    import torch

    if placement.dtype != "fp16":
        return None
    if world is not None and world.sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(placement.device)
    return torch.amp.GradScaler(placement.device)


def accumulating(model, world: World | None, last: bool) -> None:
    """Before one micro-batch's forward and backward: a sharded model reduce-scatters its gradients only on the
    step's last micro-batch (the others accumulate locally)."""
    if world is not None and world.sharded:
        model.set_requires_gradient_sync(last)


def average_gradients(params, world: World) -> None:
    """Average the gradients of `params` (the trainable weights) over the ranks, in place: one all-reduce of them
    all, flattened into one buffer unless they already are one tensor (packed adapters)."""
    import torch.distributed as dist

    def average(flat):
        dist.all_reduce(flat)  # a sum: gloo has no average
        flat.div_(world.size)

    _as_one([p.grad for p in params if p.grad is not None], average)


def same_start(params, world: World) -> None:
    """Give every rank rank 0's trainable weights (they start equal from the same seed and checkpoint; this makes
    sure of it before the first averaged step, as DDP does): one broadcast."""
    import torch.distributed as dist

    _as_one([p.data for p in params], lambda flat: dist.broadcast(flat, 0))


def _as_one(tensors: list, collective) -> None:
    """Run `collective` in place on `tensors` as one flat buffer (one call, whatever their number)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    if len(tensors) == 1:
        collective(tensors[0])
        return
    flat = _flatten_dense_tensors(tensors)
    collective(flat)
    for tensor, value in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
        tensor.copy_(value)


def agree(
    world: World, loss: float, stop: bool, memory_gb: float, device: str, due: bool = False
) -> tuple[float, bool, list[float], bool]:
    """The step's global mean loss, whether any rank was asked to stop, each rank's `memory_gb`, and whether any
    rank's checkpoint timer is `due`: a save is collective, and each rank's clock started at its own moment, so one
    rank's timer alone must not decide it (the other would go on into the next step's collectives, and hang)."""
    import torch
    import torch.distributed as dist

    mine = torch.tensor([loss, float(stop), memory_gb, float(due)], dtype=torch.float64, device=device)
    every = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(every, mine)
    rows = torch.stack(every).cpu()
    memories = [round(float(m), 3) for m in rows[:, 2]]
    return float(rows[:, 0].mean()), bool(rows[:, 1].any()), memories, bool(rows[:, 3].any())


def peak_memory_gb(device: str) -> float:
    """This rank's peak allocated GPU memory so far (GB), or its resident RAM on the CPU."""
    import torch

    from engine.core.hardware import memory_in_use_gb

    return torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else memory_in_use_gb(device)


def grad_norm(norm) -> float:
    """clip_grad_norm_'s result as a number: FSDP2's is a DTensor (already reduced over the ranks)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def save_checkpoint(world: World, run_dir, step, model, opt, sched, position, keep, log, scaler=None):
    """engine.training.steps.save_checkpoint for a run of several ranks: a sharded model's weights and optimizer
    states are gathered whole (every rank takes part), rank 0 writes them as one process would, and every rank
    waits until it has."""
    import torch.distributed as dist

    from engine.training.steps import save_checkpoint as save_one

    states = full_states(model, opt) if world.sharded else {}
    if world.main:
        save_one(run_dir, step, model, opt, sched, position, keep, log, **states, scaler=scaler)
    dist.barrier()


def full_states(model, opt=None) -> dict:
    """The whole model's weights (and the optimizer's state, keyed by parameter index as one process keys it) of a
    sharded model, on rank 0's CPU; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    whole = get_model_state_dict(model, options=options)
    # a tied weight comes back under each of its names, as copies save_pretrained would write twice: one process's
    # model (save_trainable) writes it once, under its first name (the embedding's)
    first = {name for name, _ in model.named_parameters()}
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - first
    states = dict(model_state={name: value for name, value in whole.items() if name not in tied})
    if opt is not None:
        by_name = get_optimizer_state_dict(model, opt, options=options)
        if by_name:  # rank 0; the others get nothing back
            names = [n for group in by_name["param_groups"] for n in group["params"]]
            index = {name: i for i, name in enumerate(names)}
            states["opt_state"] = dict(
                state={index[n]: s for n, s in by_name["state"].items()},
                param_groups=[{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]],
            )
    return states


def restore_sharded(model, opt, ckpt) -> None:
    """Load one process's checkpoint `ckpt` (weights by name, optimizer state by parameter index) into a sharded model
    and its optimizer: rank 0 reads it and each rank receives its shard, one tensor at a time, so the machine's RAM
    holds the checkpoint once."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    from engine.core.statefile import load_state
    from engine.training.steps import checkpoint_weights

    weights, by_name = {}, {}
    if dist.get_rank() == 0:
        weights, opt_state = checkpoint_weights(ckpt), load_state(ckpt, "optimizer")
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        by_name = dict(
            state={names[i]: s for i, s in opt_state["state"].items()},
            param_groups=[{**g, "params": [names[i] for i in g["params"]]} for g in opt_state["param_groups"]],
        )
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, opt, by_name, options=options)
