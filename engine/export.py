"""Export a run or model: the LoRA adapter, a merged 16-bit safetensors model, or a GGUF file with its Ollama
Modelfile, each checked before it is done.

Every export is built in a temporary folder and renamed into place when complete, so an interrupted export never
looks finished, and an existing folder is never overwritten.
"""

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.files import check_free_disk, new_folder, write_text
from engine.gguf import QUANTS
from engine.infer import locate

FORMATS = ("lora", "merged16", *QUANTS)
PROBE = "Hello, who are you?"
REFERENCE_TOKENS = 16  # greedy tokens compared between PyTorch and llama.cpp after a GGUF export


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
    elif fmt == "merged16":
        with new_folder(out) as tmp:
            checks, _ = _merge(base, adapter, tok_dir, tmp, out.parent, log)
    else:
        checks = _export_gguf(base, adapter, tok_dir, fmt, out, log)
    files = sorted(p.name for p in out.iterdir())
    log(f"export: {fmt} written to {out} ({', '.join(files)})")
    return ExportResult(out, fmt, files, round(time.time() - t0, 2), checks)


def _param_count(path: Path) -> int:
    """Number of weights in a safetensors model folder, from the file headers (no tensor is read)."""
    import math

    from safetensors import safe_open

    n = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def _export_gguf(base: str, adapter: Path | None, tok_dir: Path | None, fmt: str, out: Path, log) -> dict:
    """Merge into a hidden subfolder, convert to a 16-bit GGUF, quantize, compare with PyTorch, write the Modelfile.

    Everything happens inside one new_folder, so until the final rename nothing named `out` exists; the merged
    safetensors and the 16-bit intermediate are removed before it.
    """
    import shutil

    from engine import gguf
    from engine.loading import read_config, resolve_model

    path = resolve_model(base, log)
    ok, why = gguf.supported(path, tok_dir)
    if not ok:
        raise UserError(why)
    n = _param_count(path)
    gtype16, quant = QUANTS[fmt]
    if gtype16 is None:  # quantize from the model's own 16-bit type, so a bf16 model never passes through f16
        cfg = read_config(path)
        gtype16 = "F16" if (cfg.get("dtype") or cfg.get("torch_dtype")) == "float16" else "BF16"
    size = gguf.estimate_bytes(n, fmt)
    need = 2 * n + (2 * n if quant else 0) + size + 2**24  # merged folder + 16-bit GGUF (+ quantized file)
    log(f"export: {n / 1e6:.1f}M weights; the {fmt} file will be about {size / 2**20:.1f} MiB")
    check_free_disk(out.parent, need, f"the {fmt} export")
    with new_folder(out) as tmp:
        merged = tmp / ".merged"
        merged.mkdir()
        checks, ref = _merge(base, adapter, tok_dir, merged, out.parent, log, reference=REFERENCE_TOKENS)
        name = gguf.gguf_file_name(Path(_source_name(base, adapter)).name, fmt)
        if quant:
            tmp16 = tmp / f".{gtype16.lower()}.gguf"
            info = gguf.convert(merged, tmp16, gtype16, log)
            gguf.quantize(tmp16, tmp / name, fmt, log)
            tmp16.unlink()
        else:
            info = gguf.convert(merged, tmp / name, gtype16, log)
        checks.update(gguf.compare_greedy(tmp / name, ref, strict=quant is None))
        log(f"export: llama.cpp vs PyTorch {checks}")
        text = gguf.modelfile(name, info["template"], info["stops"], gguf.sampling_defaults(merged))
        write_text(tmp / "Modelfile", text)
        checks["modelfile_template"] = "TEMPLATE" in text
        shutil.rmtree(merged)
    return checks


def _source_name(base: str, adapter: Path | None) -> str:
    """A short name for file names: the run folder's name for a run's adapter, else the model folder's."""
    if adapter is not None:
        parent = adapter.parent.parent if adapter.parent.name == "checkpoints" else adapter.parent
        return parent.name if (parent / "job.yaml").is_file() else adapter.name
    return Path(base).name


def _reference(model, tok, steps: int) -> dict:
    """transformers' greedy continuation of the chat-rendered PROBE, with its fp32 logits and top-1 margins."""
    import torch

    from engine.data import render

    text = render(tok, [{"role": "user", "content": PROBE}], add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tokens, logits, margins = [], [], []
    inp, past = torch.tensor([ids]), None
    with torch.inference_mode():
        for _ in range(steps):
            out = model(input_ids=inp, past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1].float()
            top = last.topk(2)
            tokens.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            logits.append(last.numpy())
            inp = top.indices[:1].view(1, 1)
    import numpy as np

    return dict(text=text, prompt_ids=ids, tokens=tokens, logits=np.stack(logits), margins=margins)


def _merge(
    base: str, adapter: Path | None, tok_dir: Path | None, dest: Path, disk: Path, log, reference: int = 0
) -> tuple[dict, dict | None]:
    """Merge the adapter into the 16-bit base (not its 4-bit rounding) and save it in the base's 16-bit dtype.

    Writes into the existing folder `dest` (the caller's new_folder); `disk` is where free space is checked. With
    `reference` > 0 also returns transformers' greedy reference (see _reference) computed in fp32 on the saved
    16-bit weights, so a converted file is compared with exactly what was saved.
    """
    import torch

    from engine.data import ensure_chat_template
    from engine.hardware import Placement
    from engine.loading import load_model, load_tokenizer, read_config, resolve_model

    path = resolve_model(base, log)
    cfg = read_config(path)
    out_dtype = {"float16": torch.float16}.get(cfg.get("dtype") or cfg.get("torch_dtype"), torch.bfloat16)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    check_free_disk(disk, int(weights * 1.1) + 2**20, "the merged model")
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
    model.save_pretrained(dest, safe_serialization=True, max_shard_size="4GB")
    tok.save_pretrained(dest)
    log(f"export: merged, checks {checks}")
    ref = _reference(model.float(), tok, reference) if reference else None
    return checks, ref
