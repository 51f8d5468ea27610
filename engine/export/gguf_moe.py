"""GGUF export of mixture-of-experts models (Qwen3-MoE as llama.cpp's "qwen3moe", Mixtral as its "llama" with
experts), in the `gguf` package's MoE layout: a layer's experts as one stacked tensor per projection,
blk.N.ffn_{gate,up,down}_exps [E, out, in] (ggml ne = in, out, E), and the router as blk.N.ffn_gate_inp.

transformers saves these models' experts one Linear per expert (experts.{e}.gate_proj.weight, Mixtral's w1/w3/w2), so
the converter stacks each layer's E tensors into one as it writes (RAM holds one projection of one layer's experts: 400
MB for Qwen3-30B-A3B in bf16); a checkpoint that already holds them fused (experts.gate_up_proj) is refused with a
sentence. llama.cpp renormalizes the top-k routing weights of both architectures, so a Qwen3-MoE config with
norm_topk_prob false (the routing would differ) is refused too.
"""

import re

from engine.core.errors import UserError

ARCHS = {"qwen3_moe": "QWEN3MOE", "mixtral": "LLAMA"}
_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(\w+)\.weight$")


def check(cfg: dict, model_type: str) -> None:
    """Refuse a mixture-of-experts config whose routing llama.cpp would not reproduce."""
    if model_type == "qwen3_moe" and not cfg.get("norm_topk_prob", False):
        raise UserError(
            "GGUF export: this Qwen3-MoE model does not renormalize its top-k routing weights (norm_topk_prob false), "
            "which llama.cpp always does; export as merged16 instead."
        )
    if model_type in ARCHS and (cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1):
        raise UserError("GGUF export: dense layers between the MoE layers are not supported; export as merged16.")


def add_hparams(w, cfg: dict, model_type: str) -> None:
    """The experts' header keys (count, per token, Qwen3-MoE's per-expert width)."""
    if model_type not in ARCHS:
        return
    w.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if model_type == "qwen3_moe":
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])


def is_expert(name: str) -> bool:
    return _EXPERT.match(name) is not None


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
    """The tensor of a plan entry: one safetensors tensor, or the stack of a layer's experts."""
    import torch
    from safetensors import safe_open

    names = hf_name if isinstance(hf_name, tuple) else ((hf_name, f),)
    tensors = []
    for name, file in names:
        with safe_open(file, framework="pt") as st:  # a handle per tensor: its memory map closes at once
            tensors.append(st.get_tensor(name))
    return tensors[0] if not isinstance(hf_name, tuple) else torch.stack(tensors)
