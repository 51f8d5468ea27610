"""Merging per-expert LoRA adapters (PEFT target_parameters on fused 3-D expert weights) into a mixture-of-experts base.

PEFT adapts a fused expert tensor of shape [E, d1, d2] with one rank-r pair per expert, stored stacked: lora_A
[E*r, in] (viewed [E, r, in]) and lora_B [out, E*r] (viewed [out, r, E]); expert e's delta in nn.Linear orientation
(out x in) is scale * B_e @ A_e. A layer's two adapted tensors (gate_up_proj, down_proj) nest as ParamWrappers, so their
saved modules are `...experts` and `...experts.base_layer`; which is which follows from the shapes (gate_up: in = H,
out = 2I; down: in = I, out = H; both hold only when I = H = 2I, never).

The base checkpoint may hold the experts fused (gpt-oss: gate_up_proj [E, H, 2I], transposed) or, as transformers 5
saves Qwen3-MoE and Mixtral, one Linear per expert (`experts.{e}.gate_proj/up_proj/down_proj.weight`, Mixtral's
`block_sparse_moe.experts.{e}.w1/w3/w2.weight`), gate rows first in the fused layout; each base tensor gets its own
slice of the delta, computed when that tensor is written (never the whole stack at once).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

TRANSPOSED = {"gpt_oss"}  # model types whose fused expert tensors are stored [E, in, out]
# Per-expert Linear names of (gate, up, down), and the MoE block's name, as checkpoints store them.
SPLIT_NAMES = {"mlp": ("gate_proj", "up_proj", "down_proj"), "block_sparse_moe": ("w1", "w3", "w2")}


@dataclass
class ExpertDelta:
    """One fused expert tensor's adapter: `module`.`param` of the loaded model gets scale * B_e @ A_e per expert."""

    module: str  # e.g. model.layers.0.mlp.experts
    param: str  # gate_up_proj or down_proj
    a: object  # [E, r, in]
    b: object  # [E, out, r]
    scale: float

    def expert(self, e: int, rows: slice = slice(None)):
        """Expert e's delta in Linear orientation (out x in), fp32; `rows`: a slice of its output rows."""
        return (self.b[e, rows].float() @ self.a[e].float()) * self.scale

    def stacked(self):
        return (self.b.float() @ self.a.float()) * self.scale  # [E, out, in]


def split_expert_deltas(deltas: dict, adapter: Path, config: dict) -> dict[str, ExpertDelta]:
    """Remove the expert adapters from `deltas` (engine.export.merge's {module: _Delta}) and return them by
    '<module>.<param>'. A dense model's deltas are left alone (empty result)."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if not cfg.get("target_parameters"):
        return {}
    hidden = config["hidden_size"]
    inter = config.get("moe_intermediate_size") or config["intermediate_size"]  # one expert's width
    found = {}
    for name in [n for n in deltas if n.endswith(".experts") or ".experts.base_layer" in n]:
        d = deltas.pop(name)
        module = re.sub(r"(\.base_layer)+$", "", name)
        r = pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
        n_experts = d.a.shape[0] // r
        n_in, n_out = d.a.shape[1], d.b.shape[0]
        a = d.a.reshape(n_experts, r, n_in)
        b = d.b.reshape(n_out, r, n_experts).permute(2, 0, 1)
        param = "gate_up_proj" if (n_in, n_out) == (hidden, 2 * inter) else "down_proj"
        alpha = pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        found[f"{module}.{param}"] = ExpertDelta(module, param, a, b, scale)
    return found


def base_targets(experts: dict[str, ExpertDelta], names: set[str], model_type: str) -> dict:
    """{base tensor name: function(fp32 tensor) -> merged fp32 tensor} for every base tensor an expert adapter
    changes; raises KeyError naming an adapter whose tensors the base lacks."""
    targets = {}
    for key, d in experts.items():
        if key in names:  # fused in the checkpoint too
            transpose = model_type in TRANSPOSED
            targets[key] = lambda w, d=d, t=transpose: w.add_(d.stacked().transpose(1, 2) if t else d.stacked())
            continue
        parent, block = d.module.rsplit(".", 1)[0], None
        for block_name, (gate, up, down) in SPLIT_NAMES.items():
            stored = re.sub(r"\.mlp$", f".{block_name}", parent) + ".experts"
            if f"{stored}.0.{down}.weight" in names:
                block = (stored, gate, up, down)
        if block is None:
            raise KeyError(key)
        stored, gate, up, down = block
        half = d.b.shape[1] // 2
        parts = [(down, slice(None))] if d.param == "down_proj" else [(gate, slice(0, half)), (up, slice(half, None))]
        for e in range(d.a.shape[0]):
            for proj, rows in parts:
                targets[f"{stored}.{e}.{proj}.weight"] = lambda w, d=d, e=e, rows=rows: w.add_(d.expert(e, rows))
    return targets


def apply_to_model(model, deltas: dict) -> None:
    """Add the ExpertDeltas among `deltas` to a loaded transformers model's fused expert parameters (layers it lacks
    are skipped)."""
    params = dict(model.named_parameters())
    transpose = model.config.model_type in TRANSPOSED
    for key, d in deltas.items():
        p = params.get(key)
        if p is not None and isinstance(d, ExpertDelta):
            p.data.add_(d.stacked().transpose(1, 2) if transpose else d.stacked())


def pattern_value(patterns: dict | None, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first pattern matching the end of the module's name."""
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default
