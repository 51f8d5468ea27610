"""Per-family fast paths: swap module instances of a loaded transformers model for kernel-backed drop-ins.

Each family file (llama.py, mistral.py, qwen2.py, qwen3.py, gemma.py, gemma2.py, gemma3.py, and the
mixture-of-experts qwen3_moe.py and mixtral.py) registers a `Family` for
its `model_type`. `patch_model` walks the decoder layers and replaces, in place:

- every RMSNorm (layer norms, the final norm, Qwen3/Gemma3 per-head q/k norms) with `FastRMSNorm` (kernels.rms_norm);
- each attention module with `FastAttention`: RoPE through kernels.rope, LoRA projections through kernels.lora,
  attention through transformers' own interface for the loaded implementation (SDPA: flash / memory-efficient);
- each gated MLP with `FastMLP`: kernels.swiglu for act(gate) * up, LoRA projections through kernels.lora;
- the causal-LM loss with kernels.cross_entropy (the logits never exist in full when labels are given), plus the
  router's load-balancing loss where a mixture-of-experts config adds it;
- in mixture-of-experts models (any model type, gpt-oss included), the experts' forward with engine.patching.moe's
  grouped expert path.

engine/patching/graphs.py then replays the layers' forward and backward as CUDA graphs on fixed-shape training steps,
and for engine.training.sft's own loop `modules.pack_adapters` packs every fused op's LoRA weights into one trainable
tensor of the model (instead of 14 a layer), so a per-tensor optimizer makes one step.

The drop-ins keep the original child modules and parameters under the same names, so PEFT finds and wraps the same
Linear layers, state dicts and saved adapters are unchanged, and `disable_adapter()` still works. A model of any other
family is left alone and trains through the plain transformers + PEFT path; the report says so.

Imports the kernels and nothing of the engine outside engine.patching.
"""

import importlib

from engine.patching import moe
from engine.patching.family import Family, PatchReport

FAMILY_MODULES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "qwen3_moe", "mixtral")


def family_for(model_type: str) -> Family | None:
    for name in FAMILY_MODULES:
        fam = importlib.import_module(f"engine.patching.{name}").FAMILY
        if fam.model_type == model_type:
            return fam
    return None


def patch_model(model, log=print) -> PatchReport:
    """Swap the drop-ins into `model` (a transformers causal LM, before PEFT wraps it); log and return the report."""
    from engine.patching.modules import patch_with

    model_type = model.config.model_type
    fam = family_for(model_type)
    if fam is None:
        report = PatchReport(None, notes=[f"no fast path for model type '{model_type}': plain transformers + PEFT"])
    else:
        report = patch_with(model, fam)
    experts = moe.install(model, log=lambda m: None)
    if experts:
        report.notes.append(f"grouped expert path (kernels.grouped_mm) in {experts} mixture-of-experts layers")
    log(f"patching: {report.summary()}")
    return report
