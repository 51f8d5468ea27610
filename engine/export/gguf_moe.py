"""GGUF export of mixture-of-experts models (Qwen3-MoE as llama.cpp's "qwen3moe", Mixtral as its "llama" with
experts, gpt-oss as its "gpt-oss"), in the `gguf` package's MoE layout: a layer's experts as one stacked tensor per
projection, blk.N.ffn_{gate,up,down}_exps [E, out, in] (ggml ne = in, out, E), and the router as blk.N.ffn_gate_inp.

transformers saves Qwen3-MoE's and Mixtral's experts one Linear per expert (experts.{e}.gate_proj.weight, Mixtral's
w1/w3/w2), so the converter stacks each layer's E tensors into one as it writes (RAM holds one projection of one
layer's experts: 400 MB for Qwen3-30B-A3B in bf16); such a checkpoint that already holds them fused
(experts.gate_up_proj) is refused with a sentence. llama.cpp renormalizes the top-k routing weights of both
architectures, so a Qwen3-MoE config with norm_topk_prob false (the routing would differ) is refused too.

gpt-oss stores its experts fused and transposed (experts.gate_up_proj [E, H, 2I] with gate and up interleaved on the
last axis, experts.down_proj [E, I, H], each with a bias [E, 2I] / [E, H]): gate is [..., ::2] and up [..., 1::2],
each written transposed to [E, I, H] as ffn_gate_exps / ffn_up_exps (down to [E, H, I]), and the expert biases in F32
as llama.cpp's converter writes them (ggml adds them per expert in F32). Its attention sinks go to attn_sinks.weight.
llama.cpp's gpt-oss graph hard-codes what the config does not carry: the clamped SwiGLU (alpha 1.702, limit 7.0, as
transformers' GptOssExperts), a softmax over the top-k router logits, and sliding-window attention on even layers and
full attention on odd ones; a config whose layer_types differ from that is refused. llama.cpp's YaRN rounds its
correction range to whole dimensions, which gpt-oss's rope (truncate: false) does not: the tiny test model's f16
logits move by 0.15 (0.023 with truncate: true), well below a clear greedy step (tests/test_gguf_gpt_oss.py).
"""

import re
from dataclasses import dataclass

from engine.core.errors import UserError

ARCHS = {"qwen3_moe": "QWEN3MOE", "mixtral": "LLAMA", "gpt_oss": "GPT_OSS"}
_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(\w+)\.weight$")
_FUSED = re.compile(r"(.+\.experts)\.(gate_up_proj|down_proj)(_bias)?$")  # gpt-oss's fused expert tensors


@dataclass(frozen=True)
class Part:
    """A tensor written from part of a checkpoint tensor: `name`[..., take] (its last axis), transposed last two axes
    when `transpose`. Prints as `name`, which is what the 16-bit conversion's name checks look at."""

    name: str
    take: slice
    transpose: bool

    def __str__(self) -> str:
        return self.name


def check(cfg: dict, model_type: str) -> None:
    """Refuse a mixture-of-experts config whose routing llama.cpp would not reproduce."""
    if model_type == "qwen3_moe" and not cfg.get("norm_topk_prob", False):
        raise UserError(
            "GGUF export: this Qwen3-MoE model does not renormalize its top-k routing weights (norm_topk_prob false), "
            "which llama.cpp always does; export as merged16 instead."
        )
    if model_type in ARCHS and (cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1):
        raise UserError("GGUF export: dense layers between the MoE layers are not supported; export as merged16.")
    n_layers = cfg.get("num_hidden_layers", 0)
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    if model_type == "gpt_oss" and cfg.get("layer_types", alternating) != alternating:
        raise UserError(
            "GGUF export: llama.cpp's gpt-oss uses sliding-window attention on even layers and full attention on odd "
            "ones, and this model's layer_types differ; export as merged16 instead."
        )


def add_hparams(w, cfg: dict, model_type: str) -> None:
    """The experts' header keys (count, per token, Qwen3-MoE's per-expert width)."""
    if model_type not in ARCHS:
        return
    w.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if model_type == "qwen3_moe":
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if model_type == "gpt_oss":
        w.add_expert_feed_forward_length(cfg["intermediate_size"])  # gpt-oss's intermediate_size is one expert's
        w.add_sliding_window(int(cfg["sliding_window"]))


def is_expert(name: str) -> bool:
    return _EXPERT.match(name) is not None


def expert_weights(model_dir) -> int:
    """Number of expert projection weights (per-expert Linears or gpt-oss's fused tensors, not their biases) in a
    safetensors folder, from its headers (an MXFP4 pair counts as its dequantized tensor)."""
    import math

    from engine.models.mxfp4 import tensors

    return sum(math.prod(shape) for name, _, shape, _ in tensors(model_dir) if _is_expert_weight(name))


def _is_expert_weight(name: str) -> bool:
    fused = _FUSED.match(name)
    return is_expert(name) or (fused is not None and not fused[3])


def gpt_oss_entries(name: str, f, shape: tuple, nmap, model_type: str) -> list | None:
    """Plan entries (gguf name, Part, file, shape) of a gpt-oss tensor that the name map does not place as it is
    stored (fused experts: split, transposed; sinks: named .weight), or None for any other tensor."""
    if model_type != "gpt_oss":
        return None
    if name.endswith(".self_attn.sinks"):
        return [(nmap.get_name(name) + ".weight", Part(name, slice(None), False), f, shape)]
    m = _FUSED.match(name)
    if m is None:
        return None
    block, proj, bias = m[1], m[2], bool(m[3])
    suffix = ".bias" if bias else ".weight"
    if proj == "down_proj":
        parts = [("down_proj", slice(None))]
    else:
        parts = [("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))]
    entries = []
    for hf_proj, take in parts:
        new = nmap.get_name(f"{block}.{hf_proj}{suffix}", try_suffixes=(suffix,))
        out = (*shape[:-1], len(range(shape[-1])[take]))
        if not bias:
            out = (*out[:-2], out[-1], out[-2])
        entries.append((new, Part(name, take, not bias), f, out))
    return entries


def stacked(entries: list[tuple[str, object, tuple]], nmap) -> list[tuple[str, tuple, object, tuple]]:
    """Plan entries (gguf name, ((hf name, file), ...) in expert order, first file, stacked shape) for the per-expert
    tensors `entries` [(hf name, file, shape)]."""
    groups: dict[str, dict[int, tuple]] = {}
    for name, f, shape in entries:
        m = _EXPERT.match(name)
        groups.setdefault(f"{m[1]}.{m[3]}.weight", {})[int(m[2])] = (name, f, shape)
    plan = []
    for key, by_expert in groups.items():
        if sorted(by_expert) != list(range(len(by_expert))):
            raise UserError(f"GGUF export: the experts of '{key}' are not numbered 0..{len(by_expert) - 1}.")
        parts = tuple((by_expert[e][0], by_expert[e][1]) for e in range(len(by_expert)))
        new = nmap.get_name(key, try_suffixes=(".weight",))
        if new is None:
            raise UserError(f"GGUF export does not know where the experts '{key}' go; export as merged16 instead.")
        plan.append((new, parts, parts[0][1], (len(parts), *by_expert[0][2])))
    return plan


def read(hf_name, f):
    """The tensor of a plan entry: one safetensors tensor, part of one (Part), or the stack of a layer's experts."""
    import torch
    from safetensors import safe_open

    if isinstance(hf_name, Part):
        with safe_open(f, framework="pt") as st:
            t = st.get_tensor(hf_name.name)[..., hf_name.take]
        return (t.transpose(-1, -2) if hf_name.transpose else t).contiguous()
    names = hf_name if isinstance(hf_name, tuple) else ((hf_name, f),)
    tensors = []
    for name, file in names:
        with safe_open(file, framework="pt") as st:  # a handle per tensor: its memory map closes at once
            tensors.append(st.get_tensor(name))
    return tensors[0] if not isinstance(hf_name, tuple) else torch.stack(tensors)
