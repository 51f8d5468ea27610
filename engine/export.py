"""Export a run or model: the LoRA adapter, or a merged 16-bit safetensors model, checked before it is done.

Every export is built in a temporary folder and renamed into place when complete, so an interrupted export never
looks finished, and an existing folder is never overwritten.
"""

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.files import check_free_disk, new_folder
from engine.infer import locate

FORMATS = ("lora", "merged16")


@dataclass
class ExportResult:
    path: Path
    format: str
    files: list[str]
    seconds: float
    checks: dict = field(default_factory=dict)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export(source: str, fmt: str, out: Path, log=print) -> ExportResult:
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format '{fmt}'; use one of: {', '.join(FORMATS)}.")
    t0 = time.time()
    base, adapter, tok_dir = locate(source)
    if fmt == "lora":
        if adapter is None:
            raise UserError(f"'{source}' has no LoRA adapter to export (a full fine-tune exports as merged16).")
        check_free_disk(out.parent, 2 * _folder_bytes(adapter), "the adapter")
        with new_folder(out) as tmp:
            for f in adapter.iterdir():
                if f.is_file() and f.suffix in (".json", ".safetensors", ".jinja", ".model", ".txt", ".md"):
                    shutil.copy2(f, tmp / f.name)
        checks = {}
    else:
        checks = _merge(base, adapter, tok_dir, out, log)
    files = sorted(p.name for p in out.iterdir())
    log(f"export: {fmt} written to {out} ({', '.join(files)})")
    return ExportResult(out, fmt, files, round(time.time() - t0, 2), checks)


def _merge(base: str, adapter: Path | None, tok_dir: Path | None, out: Path, log) -> dict:
    """Merge the adapter into the 16-bit base (not its 4-bit rounding) and save it in the base's 16-bit dtype."""
    import torch

    from engine.data import ensure_chat_template
    from engine.hardware import Placement
    from engine.loading import load_model, load_tokenizer, read_config, resolve_model

    path = resolve_model(base, log)
    cfg = read_config(path)
    out_dtype = {"float16": torch.float16}.get(cfg.get("dtype") or cfg.get("torch_dtype"), torch.bfloat16)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    check_free_disk(out.parent, int(weights * 1.1) + 2**20, "the merged model")
    # Merge in fp32 on the CPU: exact sums, and a GPU too small for the 16-bit model still exports.
    model = load_model(path, Placement("cpu", "fp32", "merge in fp32"))
    tok = load_tokenizer(tok_dir or path)
    ensure_chat_template(tok)
    probe = torch.tensor([tok("Hello, who are you?", add_special_tokens=False)["input_ids"][:32] or [0]])
    checks = {}
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        with torch.inference_mode():
            before = model(input_ids=probe).logits
        model = model.merge_and_unload()
        with torch.inference_mode():
            after = model(input_ids=probe).logits
        checks["max_logit_diff_fp32"] = float((before - after).abs().max())
        if checks["max_logit_diff_fp32"] > 1e-3 * max(1.0, float(before.abs().max())):
            raise UserError(
                f"The merged model disagrees with the adapter model (logits differ by "
                f"{checks['max_logit_diff_fp32']:.3g}); the export was not saved. Report this bug."
            )
    model = model.to(out_dtype)
    with torch.inference_mode():
        cast = model(input_ids=probe).logits.float()
    if adapter is not None:
        checks["max_logit_diff_16bit"] = float((before - cast).abs().max())
    checks["dtype"] = str(out_dtype).replace("torch.", "")
    with new_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="4GB")
        tok.save_pretrained(tmp)
    log(f"export: merged, checks {checks}")
    return checks
