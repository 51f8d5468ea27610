"""Checkpoints stored already quantized (e.g. Unsloth's "...-bnb-4bit"): which ones train, and their 16-bit original.

A bitsandbytes 4-bit checkpoint holds packed NF4/FP4 weights with their quantization state; it loads as it is for
QLoRA (nothing is quantized again) and is dequantized for merged and GGUF exports (engine.export.dequantize). A gpt-oss
checkpoint in MXFP4 (OpenAI's own) trains with any method: its experts are dequantized as it loads
(engine.models.mxfp4). Other stored quantizations (8-bit, GPTQ, AWQ, FP8, ...) are refused with a sentence.
"""

import os
import re
from pathlib import Path

from engine.core.errors import UserError
from engine.core.hub_id import HUB_ID

_BASE_MODEL = re.compile(r"^base_model:\s*(?:\n\s*-\s*)?['\"]?([\w./-]+)", re.MULTILINE)


def quantization(cfg: dict) -> str | None:
    """None for a checkpoint of plain weights; "bnb-4bit" for bitsandbytes 4-bit; else the method's name."""
    q = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    if not q:
        return None
    method = str(q.get("quant_method", "unknown"))
    if method == "bitsandbytes" and (q.get("load_in_4bit") or q.get("_load_in_4bit")):
        return "bnb-4bit"
    return "bnb-8bit" if method == "bitsandbytes" else method


def check_trainable(name: str, cfg: dict, method: str, original: str | None = None) -> bool:
    """Whether `name` (config `cfg`) is a 4-bit checkpoint, after refusing what cannot train from it with `method`."""
    kind = quantization(cfg)
    if kind is None:
        return False
    instead = f"load its 16-bit original{f' {original!r}' if original else ''}"
    if kind == "mxfp4" and cfg.get("model_type") == "gpt_oss":
        return False  # loads dequantized to 16 bits (engine.models.mxfp4), so it trains as a 16-bit checkpoint does
    if kind != "bnb-4bit":
        raise UserError(f"'{name}' is stored quantized ({kind}), which Tunesmith cannot train from; {instead}.")
    if method != "qlora":
        raise UserError(
            f"'{name}' is stored in 4-bit, so it trains only as QLoRA (4-bit weights with LoRA adapters); use QLoRA, "
            f"or {instead} for 16-bit LoRA or full fine-tuning."
        )
    return True


def original_model(path: Path, cfg: dict) -> str | None:
    """The 16-bit model a 4-bit checkpoint was quantized from, where its files say: config.json's `_name_or_path` (as
    older transformers saved it) or the model card's `base_model:`; None when neither names another hub model."""
    names = [cfg.get("_name_or_path")]
    card = path / "README.md"
    if card.is_file():
        found = _BASE_MODEL.search(card.read_text(errors="replace"))
        names.append(found and found[1])
    for name in names:
        if isinstance(name, str) and HUB_ID.match(name) and not Path(os.path.expanduser(name)).exists():
            if "bnb-4bit" not in name.lower() and name != path.name:
                return name
    return None
