"""The model and probe the export checks run on: the base or merged model in fp32 on the CPU (only its first layers
when the whole one does not fit in RAM), and the probe text whose logits are compared.
"""

from pathlib import Path

PROBE = "Hello, who are you?"
# The merge check runs the adapter model and the merged model in fp32 on the probe. When the fp32 model does not fit
# in RAM_FRACTION of the available memory, only the first CHECK_LAYERS decoder layers (with the embeddings and head)
# are loaded and compared; the greedy reference for the GGUF check needs the whole model and is skipped then.
CHECK_LAYERS = 2
RAM_FRACTION = 0.6


def param_count(path: Path) -> int:
    """Number of weights in a safetensors model folder, from the file headers (no tensor is read); an MXFP4 expert
    tensor counts its dequantized weights (engine.models.mxfp4)."""
    from engine.models.mxfp4 import param_count as count

    return count(path)


def fits_in_ram(n_bytes: int) -> bool:
    import psutil

    return n_bytes < RAM_FRACTION * psutil.virtual_memory().available


def load_fp32(path: Path, layers: int | None):
    """The model at `path` in fp32 on the CPU (MXFP4 experts dequantized); with `layers`, only its first decoder
    layers (for the merge check)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from engine.models.loading import read_config
    from engine.models.mxfp4 import load_kwargs
    from engine.patching.moe import cast_experts

    cfg = AutoConfig.from_pretrained(path)
    if layers is not None:
        text = getattr(cfg, "text_config", None) or cfg
        text.num_hidden_layers = layers
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:layers]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skipped layers' weights are "unused", as intended
    try:
        # eager attention: the only one that applies Gemma 2's attention soft-capping, as llama.cpp does
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=cfg,
            dtype=torch.float32,
            use_safetensors=True,
            attn_implementation="eager",
            **load_kwargs(read_config(path)),
        )
        cast_experts(model, torch.float32)
        return model.eval()
    finally:
        hf_logging.set_verbosity(verbosity)


def num_layers(path: Path) -> int:
    from engine.models.loading import read_config

    cfg = read_config(path)
    return (cfg.get("text_config") or cfg)["num_hidden_layers"]
