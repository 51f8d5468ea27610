"""The machine: the doctor's report, live GPU memory and use, and whether training a model fits here (the estimate)."""

import dataclasses

from engine.api.models import model_arch_and_config
from engine.core.errors import UserError
from engine.spec.jobspec import JobSpec


def doctor() -> dict:
    from engine.core.hardware import doctor as _doctor

    return _doctor()


def gpu_stats() -> dict | None:
    """Live GPU memory and utilisation through NVML (nvidia-ml-py), or None without an NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return dict(used_gb=round(mem.used / 1e9, 2), total_gb=round(mem.total / 1e9, 2), util_pct=util.gpu)
    except Exception:  # no driver, no GPU, or NVML missing: the view simply shows no GPU line
        return None


def estimate(
    model: str,
    method: str = "qlora",
    seq: int | None = None,
    batch: int | None = None,
    rank: int = 16,
    vram_gib: float | None = None,
    ram_gib: float | None = None,
    gpus: int | None = None,
    machine: str | None = None,
    train_embeddings: bool = False,
    objective: str = "sft",
) -> dict:
    """Whether training `model` fits this machine (or a card of `vram_gib` and `ram_gib` free host RAM): the plan a
    run of these settings would make (engine.memory.verdict.plan_for, the run's own computation), its peak VRAM and host
    RAM, and the preset for those settings. Settings left as None come from the preset of the GPU's tier.

    `fits` is True exactly when that plan exists within the VRAM budget and the free RAM. `peak_parts_gib` splits
    the peak VRAM figure; `min_vram_gib` (when the budget is too small) is the smallest budget a plan exists for.
    With `gpus` > 1 everything is per GPU of a data-parallel run: full fine-tuning's weights, gradients and optimizer
    states sharded over them (FSDP2), LoRA and QLoRA the same as on one GPU; None: one GPU, or with `machine` as
    many of its GPUs as a run of `objective` takes (run_gpus). `machine` names a preset of presets/machines.yaml
    (e.g. "kaggle-2xt4"): its GPU count, memory per GPU and dtype stand in for this machine's. `objective` is the
    run's (sft, pretrain, dpo, orpo, grpo): only SFT and continued pretraining free each gradient in the backward
    where the budget needs it (engine.memory.grad_release), and DPO, ORPO and GRPO train on one GPU.
    `train_embeddings` plans continued pretraining that also trains embed_tokens and lm_head (the job's own), whose
    copies the plan counts (fp32 in fp16)."""
    from engine.memory import verdict as memory
    from engine.memory.offload import host_ram_gib
    from engine.models import presets
    from engine.training.launch import one_gpu_reason

    if method not in ("qlora", "lora", "full"):
        raise UserError(f"Unknown method '{method}'; use qlora, lora or full.")
    if train_embeddings and objective not in ("sft", "pretrain"):
        raise UserError(f"Trained embeddings are continued pretraining's; plan {objective} without them.")
    objective = "pretrain" if train_embeddings else objective
    arch, config = model_arch_and_config(model)
    dtype = None
    if machine is not None:
        from engine.models.machines import machine as machine_preset

        chosen = machine_preset(machine)
        gpus, vram_gib, dtype = gpus or run_gpus(objective, chosen.gpus), chosen.vram_gib, chosen.dtype
    gpus = gpus or 1
    budget = vram_gib if vram_gib is not None else memory.run_budget_gib()
    ram = ram_gib if ram_gib is not None else host_ram_gib()
    tier = presets.tier_for(budget) if budget else None
    tier_preset = presets.preset_for(tier, arch.params, method) if tier else None
    base = tier_preset if isinstance(tier_preset, presets.Preset) else None
    seq = seq if seq is not None else (base.max_seq_length if base else 1024)
    batch = batch if batch is not None else (base.batch_size if base else 1)
    # one micro-batch per step, as a preset for a run that needs its gradients released sets
    # (engine.memory.grad_release); a GRPO job needs a reward to be valid, and which one changes no memory planned
    spec = JobSpec(model=model, data="-", method=method, max_seq_length=seq, batch_size=batch, lora_r=rank,
                   lora_alpha=base.lora_alpha if base else rank, gpus=gpus, objective=objective,
                   train_embeddings=train_embeddings,
                   rewards=({"preset": "format"},) if objective == "grpo" else ())  # fmt: skip
    one_gpu = one_gpu_reason(objective)
    if gpus > 1 and one_gpu:  # engine.training.launch.plan_launch refuses that run with the same sentence
        raise UserError(f"{one_gpu}; set gpus to 1.")
    note = None
    if config is not None:  # the run trains at most the model's context (engine.training.dispatch), and plans so
        from engine.models.context import fit_to_context

        spec, note = fit_to_context(spec, config)
        seq = spec.max_seq_length
    dtype = dtype or ("bf16" if vram_gib is not None else memory.run_dtype())
    v = memory.verdict(arch, spec, budget, ram, dtype)
    out = dict(
        model=model,
        method=method,
        params_b=round(arch.params / 1e9, 2),
        seq=seq,
        batch=batch,
        rank=rank,
        gpus=gpus,
        dtype=dtype,
        vram_budget_gib=round(budget, 2) if budget else None,
        free_ram_gib=round(ram, 1),
        tier_gb=tier,
        fits=v.fits,
        peak_vram_gib=v.peak_vram_gib,
        peak_ram_gib=v.peak_ram_gib,
        peak_parts_gib=v.parts_gib,
        plan=v.plan.as_dict() if v.plan else None,
    )
    if note:
        out["note"] = note
    if not v.fits:
        out["reason"] = v.reason
    if v.min_budget_gib is not None:
        out["min_vram_gib"] = v.min_budget_gib
    if not budget:
        out["preset"] = None
    elif v.fits:
        out["preset"] = dataclasses.asdict(presets.from_plan(v.plan, base, spec))
    else:
        out["preset"] = dict(fits=False, reason=v.reason)
    return out


def gpus_found() -> list[str]:
    """The names of the GPUs a run can use (CUDA_VISIBLE_DEVICES applies); none without CUDA. Named through NVML, as
    gpu_stats reads them: asking torch for a name would start CUDA on every GPU in the app's own process."""
    import os

    import torch

    count = torch.cuda.device_count()
    if not count:
        return []
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    indexes = [int(v) for v in visible] if visible and all(v.isdigit() for v in visible) else range(count)
    try:
        import pynvml

        pynvml.nvmlInit()
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in list(indexes)[:count]]
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except Exception:  # NVML missing, or devices named by UUID: the count is still right
        return ["GPU"] * count


def gpus_for(spec: JobSpec) -> int:
    """How many GPUs (on a CPU, processes) a run of `spec` trains on: engine.training.launch's choice."""
    from engine.training.launch import plan_launch

    return plan_launch(spec).processes


def run_gpus(objective: str = "sft", found: int | None = None) -> int:
    """How many GPUs a run of `objective` trains on when its job leaves `gpus` at 0 (every visible one) and asks for
    no validation, as engine.training.launch.plan_launch chooses: all `found` (None: gpus_found()) for SFT and
    continued pretraining, one for DPO, ORPO and GRPO; one on a CPU. The estimate a form shows is per GPU of these."""
    from engine.training.launch import one_gpu_reason

    found = len(gpus_found()) if found is None else found
    return 1 if one_gpu_reason(objective) else max(1, found)
