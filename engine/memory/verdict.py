"""One memory verdict for a run: the offload manager's plan for its settings on a VRAM budget, the peak GPU memory and
host RAM that plan expects, and whether it fits.

`python -m engine estimate`, the Model tab's fit badge, the Train tab's preset and the run itself
(engine.models.loading.plan_memory) all ask `plan_for`, so the figure shown is the figure the run plans with.
"""

import dataclasses
from dataclasses import dataclass

from engine.core.errors import BudgetTooSmall, UserError
from engine.memory import offload
from engine.memory.estimate import ALL_TARGETS, Arch, estimate, nf4_experts
from engine.memory.offload import Plan

LARGEST_BUDGET_GIB = 4096  # where the search for the smallest workable budget gives up
# A run on the CPU holds its training step in host RAM, computing in fp32 (engine.core.hardware): fitted to two LoRA
# runs of a 218M-parameter Qwen3 (hidden 1024, 12 layers, 65,536-entry vocabulary, checkpointing on) on this 2-core
# CPU machine, peak RSS 4.67 GiB at 2 x 1024 tokens and 2.16 GiB at 512 (python -m engine.run under /usr/bin/time;
# this formula says 4.73 and 2.27, counting torch's fp32 AdamW states, which `auto` makes there, for the adapters):
# GiB for the process itself, and bytes per token per vocabulary entry of
# transformers' fp32 loss (logits, log-softmax and their gradients).
CPU_FIXED_GIB = 0.58
CPU_LOSS_BYTES = 24


def plan_for(
    arch: Arch,
    spec,
    budget_gib: float | None,
    host_ram_gib: float | None,
    dtype: str = "bf16",
    on_gpu: bool | None = None,
    tokens: int | None = None,
) -> Plan:
    """engine.memory.offload's plan for a run of `spec` (a JobSpec) on `budget_gib` of GPU memory (None: no GPU, or
    no checkpointing on one: `on_gpu`, which defaults to whether there is a budget) and `host_ram_gib` of free host
    RAM (None: not checked), computing in `dtype`. Raises UserError when it cannot fit.

    The plan is made for micro-steps of batch_size x max_seq_length tokens (DPO, ORPO and GRPO: forward_shape), or of
    `tokens` where that is fewer: the most a run's own micro-steps compute, which it knows from its tokenized data
    (engine.training.sft, through engine.models.loading.load_planned). The estimates shown before a run (the UI,
    `python -m engine estimate`) do not know the data and stay those of batch_size x max_seq_length; the run may then
    plan for less.

    A budget below every plan's is refused (BudgetTooSmall) naming the smallest budget a plan exists for. A sharded
    full fine-tune refused where one GPU's plan fits says so (one_gpu_instead) before the other fixes, of which more
    GPUs (which the machine may not have) come last."""
    adapters_have_targets(arch, spec)
    try:
        return _plan_for(arch, spec, budget_gib, host_ram_gib, dtype, on_gpu, tokens)
    except BudgetTooSmall as e:
        need = smallest_budget(arch, spec, dtype, on_gpu, tokens)
        template, one = e.template, one_gpu_instead(arch, spec, budget_gib, host_ram_gib, dtype, on_gpu, tokens)
        fixes = "; " + offload.SHARDED_FIXES
        if one and template.endswith(fixes):  # the fix that works on this machine first, the others after it
            template = f"{template.removesuffix(fixes)}.{one} Otherwise {offload.SHARDED_FIXES}"
        else:
            template += one
        raise BudgetTooSmall(template, e.need if need is None else need) from None


def one_gpu_instead(arch: Arch, spec, budget_gib, host_ram_gib, dtype, on_gpu, tokens) -> str:
    """For full fine-tuning sharded over several GPUs (FSDP2) that no plan fits, the sentence that says one GPU's
    does, where it does on the same budget and free RAM: a one-GPU run pages its 8-bit optimizer states, offloads
    activations and frees each gradient in the backward, none of which a sharded run does, so it can need less per GPU
    than sharding over two (Qwen3-4B at 4096 tokens: 18.3 GiB on one 24 GiB GPU, 33.7 GiB on each of two). "" where
    it does not fit either, and in fp16, where one GPU cannot fine-tune fully (engine.models.loading.full_fp16_refusal).
    """
    if not sharded(spec) or budget_gib is None or dtype == "fp16":
        return ""
    try:
        one = _plan_for(arch, dataclasses.replace(spec, gpus=1), budget_gib, host_ram_gib, dtype, on_gpu, tokens)
    except UserError:
        return ""
    return (
        f" One GPU fits it (set gpus to 1): {one.peak_vram_gib:.1f} GiB of GPU memory and {one.peak_ram_gib:.0f} GiB "
        "of host RAM, since a one-GPU run may keep activations and optimizer states in host RAM and a sharded one "
        "does not."
    )


def adapters_have_targets(arch: Arch, spec) -> None:
    """A UserError for LoRA or QLoRA on a model whose layers the estimate knows by name (Arch.linears: Falcon's
    query_key_value, GPT-NeoX's dense_h_to_4h) where none of the default names the job's target_modules keeps is one
    of them, nor reaches its experts: engine.models.loading.add_lora would refuse it once the weights had loaded, and
    the plan would count no adapters. Other names (lm_head) are left to add_lora."""
    targets = set(spec.target_modules)
    if spec.method == "full" or not arch.linears or not targets <= set(ALL_TARGETS) or targets & arch.linear_names:
        return
    if arch.lora_params(spec.lora_r, spec.target_modules, spec.lora_experts):  # the experts take adapters
        return
    raise UserError(
        f"LoRA has nowhere to go in this model ({arch.model_type}): it has none of the layers chosen for adapters "
        f"({', '.join(spec.target_modules)}); its layers are named {', '.join(sorted(arch.linear_names))}. Train it "
        "with full fine-tuning, or name some of those in the job's target_modules."
    )


def _plan_for(arch: Arch, spec, budget_gib, host_ram_gib, dtype, on_gpu, tokens) -> Plan:
    on_gpu = budget_gib is not None if on_gpu is None else on_gpu
    master = sharded(spec) and dtype == "fp16"  # engine.training.distributed.shard: fp32 shards under fp16
    embeddings = embedding_width(spec, dtype)
    seq, batch = forward_shape(spec)
    if tokens is not None and tokens < seq * batch:  # the estimate and the plan read only their product
        seq, batch = tokens, 1
    plan = offload.plan(
        arch,
        spec.method,
        seq,
        batch,
        budget_gib,
        host_ram_gib if on_gpu else None,  # on the CPU, checked below with the training step's RAM
        fused_loss=fused_loss(arch, spec, on_gpu),
        experts_nf4=nf4_experts(spec.method, spec.fast_path and on_gpu),
        checkpointing=spec.gradient_checkpointing,
        embeddings_trained=spec.train_embeddings,
        # engine.training.sft: auto is paged for full fine-tuning on one GPU; FSDP2's states are sharded instead
        paged_optimizer=spec.optimizer in ("auto", "paged_adamw_8bit") and not sharded(spec),
        host_offload=not sharded(spec),
        # engine.memory.grad_release: only engine.training.sft's own loop, one micro-batch per step, no fp16 loss
        # scaling
        release_gradients=spec.objective in ("sft", "pretrain")
        and spec.grad_accum == 1
        and dtype != "fp16"
        and spec.gpus <= 1,  # several GPUs average the gradients before any update
        **estimate_kw(spec, on_gpu),
        **({"master_fp32": True} if master else {}),
        **({"trained_embeddings": embeddings} if embeddings else {}),
    )
    plan = dataclasses.replace(plan, master_fp32=master, trained_embeddings=embeddings)
    if not on_gpu:
        ram = cpu_ram_gib(arch, spec, plan, dtype, seq * batch)
        plan = offload.check_ram(dataclasses.replace(plan, peak_ram_gib=ram), host_ram_gib, on_cpu=True)
    return plan


def embedding_width(spec, dtype: str) -> int:
    """Bytes a value of the embed_tokens / lm_head copies a run of `spec` trains takes, computing in `dtype`: 0 where
    it trains none (engine.training.sft: continued pretraining with LoRA and train_embeddings), 4 as fp32 master
    weights (fp16, engine.training.precision) or in an fp32 model, else the base's 2."""
    if not (spec.objective == "pretrain" and spec.train_embeddings and spec.method != "full"):
        return 0
    return 4 if dtype in ("fp16", "fp32") else 2


def cpu_ram_gib(arch: Arch, spec, plan: Plan, dtype: str, tokens: int) -> float:
    """Host RAM of a run that trains on the CPU: the larger of loading the checkpoint (the plan's figure) and the
    training step, which holds there what a GPU would (`parts`), its 16-bit weights, activations and full
    fine-tuning's gradients and states at 4 bytes in fp32, and transformers' loss over all the logits
    (CPU_LOSS_BYTES; COEF's GPU-measured bf16 figure in 16 bits), for micro-steps of `tokens` tokens.

    Full fine-tuning peaks either there or in the optimizer step, after the loss is freed: torch's AdamW on the CPU
    (one tensor at a time) makes two temporaries the size of the tensor it updates (exp_avg_sq.sqrt(), then that
    over its bias correction), so two of the largest (the embedding table) beside every weight, gradient and state.
    The 218M Qwen3 of CPU_FIXED_GIB, fully fine-tuned at 256 tokens, peaked at 4.31 GiB RSS (4,521,428 KiB under
    /usr/bin/time); the training step alone said 4.26, the optimizer step says 4.33."""
    from engine.memory.estimate import COEF, GIB, NF4_BYTES

    # full fine-tuning's trainable part as a GPU's (16-bit gradients, 8-bit states: 6 bytes a weight), which `wide`
    # makes fp32 AdamW's 12 below, whether the job names auto or adamw (the CPU's is torch's AdamW either way);
    # adapters' and trained embeddings' with the CPU's torch AdamW, sized already
    full = spec.method == "full"
    cpu = spec.replace(optimizer="auto") if full and spec.optimizer == "adamw" else spec
    p = parts(arch, cpu, plan, tokens, on_gpu=full)
    wide = 2 if dtype == "fp32" else 1
    nf4 = arch.linear_params * NF4_BYTES / GIB if spec.method == "qlora" else 0  # stays 4-bit
    frozen = p["weights"] + p.get("reference", 0)  # a DPO full fine-tune's reference copy is loaded as the model is
    scaled = frozen - nf4 + p["activations"] + (p["trainable"] if spec.method == "full" else 0)
    adapters = p["trainable"] if spec.method != "full" else 0  # fp32 already
    logit = CPU_LOSS_BYTES if dtype == "fp32" else COEF["loss_v"]
    loss = tokens * arch.vocab * logit / GIB
    step = CPU_FIXED_GIB + nf4 + wide * scaled + adapters + p["embeddings"] + p["dequant"] + loss  # sized already
    if spec.method == "full":
        largest = max(arch.vocab * arch.hidden, arch.largest_linear) * 2 * wide / GIB
        update = CPU_FIXED_GIB + wide * (p["weights"] + p["trainable"]) + 2 * largest
        step = max(step, update)
    return round(max(plan.peak_ram_gib, step), 2)


def fused_loss(arch: Arch, spec, on_gpu: bool) -> bool:
    """Whether the run's loss is the fast path's chunked cross-entropy (engine.patching.patch_model, with a
    mixture-of-experts config's load-balancing loss added to it): on a GPU, for a model type engine.patching has a
    family for, FSDP2's sharded runs included (engine.models.loading patches the model before it is sharded; the
    head's weight is the root's, gathered whole while the root's forward computes the loss). Others (gpt-oss) compute
    transformers' loss over all the logits at once, and are planned so."""
    if not (spec.fast_path and on_gpu):
        return False
    from engine.patching import family_for  # the kernels (Triton): imported only for a run on a GPU

    return not arch.model_type or family_for(arch.model_type) is not None  # "": an Arch written by hand


def run_budget_gib() -> float | None:
    """The VRAM budget a run on this machine plans with (engine.models.loading.plan_memory): TUNESMITH_VRAM_GIB or the
    card's memory, lowered to what GPU 0 has free now; None without a GPU."""
    import torch

    from engine.core.hardware import vram_budget_gib
    from engine.memory.checkpointing import usable_gib

    return usable_gib(vram_budget_gib(), torch.device("cuda"))


def run_dtype() -> str:
    """The dtype a run on this machine computes in (engine.core.hardware.choose_placement's choice)."""
    from engine.core.hardware import choose_placement

    return choose_placement().dtype


def sharded(spec) -> bool:
    """Whether a run of `spec` is full fine-tuning sharded over several GPUs by FSDP2 (engine.training.distributed)."""
    return spec.method == "full" and spec.gpus > 1


def forward_shape(spec) -> tuple[int, int]:
    """(tokens a sequence, sequences) of the largest training forward of a run of `spec`: batch_size x max_seq_length,
    but DPO and ORPO (TRL's trainers) run a pair's chosen and rejected replies, each after the prompt, as two rows of
    one forward, and GRPO (TRL's GRPOTrainer, one forward for its loss) each prompt's num_generations replies, a prompt
    (shorter than max_seq_length, engine.training.grpo leaves out longer ones, TRL cuts none) with up to max_new_tokens
    after it."""
    if spec.objective == "grpo":
        return spec.max_seq_length + spec.max_new_tokens, spec.batch_size * spec.num_generations
    return spec.max_seq_length, spec.batch_size * (2 if spec.objective in ("dpo", "orpo") else 1)


def reference_copy(spec) -> bool:
    """Whether a run of `spec` holds a frozen copy of the model as its reference: full fine-tuning's DPO
    (engine.training.preference._full_reference), and GRPO's with a KL term (grpo_beta > 0: TRL 1.15's GRPOTrainer
    loads one in the run's dtype). With LoRA both take the base model, the adapter switched off; ORPO has none."""
    kl = spec.objective == "dpo" or spec.objective == "grpo" and spec.grpo_beta > 0
    return spec.method == "full" and kl


def estimate_kw(spec, on_gpu: bool = True) -> dict:
    """The estimate's arguments that come from the job's LoRA, optimizer and objective settings and its GPU count, for
    a run on a GPU or (`on_gpu` False) on the CPU, where `auto` makes torch's AdamW (engine.training.steps's
    make_optimizer), with the reference model a preference or GRPO run may hold (reference_copy)."""
    plain = spec.optimizer == "adamw" or sharded(spec) or (spec.optimizer == "auto" and not on_gpu)  # FSDP2: too
    return dict(
        rank=spec.lora_r,
        targets=spec.target_modules,
        optimizer="adamw" if plain else "adamw_8bit",
        lora_experts=spec.lora_experts,
        train_router=spec.train_router,
        reference_copy=reference_copy(spec),
        **({"shards": spec.gpus} if sharded(spec) else {}),
        **({"processes": spec.gpus} if spec.gpus > 1 else {}),
    )


@dataclass(frozen=True)
class Verdict:
    """Whether a run fits, with the plan that makes it fit and that plan's peaks. `parts_gib` splits the peak VRAM
    figure into what holds it; `min_budget_gib` is the smallest VRAM budget a plan exists for, where the budget given
    is below it."""

    fits: bool
    reason: str
    plan: Plan | None
    peak_vram_gib: float | None
    peak_ram_gib: float | None
    parts_gib: dict | None
    min_budget_gib: float | None = None


def verdict(arch: Arch, spec, budget_gib: float | None, host_ram_gib: float | None, dtype: str = "bf16") -> Verdict:
    """The plan for `spec` on this budget and free RAM, and whether it fits (never raises for a run that does not;
    raises for one that cannot run at all, adapters_have_targets)."""
    adapters_have_targets(arch, spec)
    gpu = budget_gib is not None  # plan_for's default: a run without a budget is planned for the CPU
    try:
        plan = plan_for(arch, spec, budget_gib, host_ram_gib, dtype)
        return Verdict(True, "", plan, plan.peak_vram_gib, plan.peak_ram_gib, parts(arch, spec, plan, on_gpu=gpu))
    except BudgetTooSmall as e:
        return Verdict(False, str(e), None, None, None, None, e.need)
    except UserError as e:
        reason = str(e)
    try:  # the GPU budget holds it and host RAM does not: the plan and its figures, not fitting
        plan = plan_for(arch, spec, budget_gib, None, dtype)
    except BudgetTooSmall as e:
        return Verdict(False, str(e), None, None, None, None, e.need)
    try:  # the reason, for the plan shown
        offload.check_ram(plan, host_ram_gib, on_cpu=budget_gib is None)
    except UserError as e:
        reason = str(e)
    return Verdict(False, reason, plan, plan.peak_vram_gib, plan.peak_ram_gib, parts(arch, spec, plan, on_gpu=gpu))


def parts(arch: Arch, spec, plan: Plan, tokens: int | None = None, on_gpu: bool = True) -> dict:
    """What holds the plan's peak GPU memory, in GiB (the estimate the plan was made with; they add up to its peak),
    for micro-steps of batch_size x max_seq_length tokens (DPO, ORPO and GRPO: forward_shape), or of `tokens`, of a
    run on a GPU or (`on_gpu` False) the CPU."""
    kw = dict(plan.estimate_kw(), **estimate_kw(spec, on_gpu))
    seq, batch = (tokens, 1) if tokens is not None else forward_shape(spec)
    e = estimate(arch, spec.method, seq, batch, checkpointed_layers=plan.checkpointed, fused_loss=plan.fused_loss,
                 **kw)  # fmt: skip
    return e.parts_gib


def smallest_budget(arch: Arch, spec, dtype: str = "bf16", on_gpu=None, tokens=None) -> float | None:
    """The smallest VRAM budget (a multiple of 0.1 GiB) a plan for `spec` exists for, host RAM aside; None when none
    does. `on_gpu` and `tokens` as plan_for's."""

    def works(tenths):
        try:
            _plan_for(arch, spec, tenths / 10, None, dtype, on_gpu, tokens)
            return True
        except UserError:
            return False

    low, high = 0, LARGEST_BUDGET_GIB * 10  # in tenths of a GiB: `low` never plans, `high` does
    if not works(high):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if works(mid) else (mid, high)
    return high / 10


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure: CUDA's out-of-memory error, or the CPU allocator's (a RuntimeError
    saying it cannot allocate) and Python's MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def out_of_memory_message(step: int, saved: int | None, on_gpu: bool) -> str:
    """What a run that ran out of memory during step `step` (1-based) says: what was kept (`saved`: the step
    checkpointed, None when nothing could be) and what to lower."""
    if step == 1 and saved is None:  # a new run's first step: nothing trained, nothing to resume from
        where = "a lower budget (TUNESMITH_VRAM_GIB), " if on_gpu else ""
        return (
            f"Ran out of {'GPU ' if on_gpu else ''}memory in the first step, before anything was trained; start again "
            f"with {where}a smaller batch size or maximum sequence length, or a smaller model."
        )
    kept = (
        f"The run saved step {saved}; resume continues from it"
        if saved is not None
        else "It ran out while updating the weights, so resume continues from the latest checkpoint"
    )
    if on_gpu:
        return (
            f"Ran out of GPU memory at step {step} (another program took GPU memory, or a batch needed more than "
            f"planned). {kept} once GPU memory is free, or with a lower budget (TUNESMITH_VRAM_GIB); or start again "
            "with a smaller batch size or maximum sequence length."
        )
    return (
        f"Ran out of memory at step {step}. {kept} once other programs have freed RAM; or start again with a "
        "smaller batch size or maximum sequence length."
    )
