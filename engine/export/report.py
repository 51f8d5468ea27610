"""What a finished export hands the user: its checks as one sentence, and the files a browser downloads (a folder
export zipped, a GGUF file and its Modelfile as they are), with their sizes.
"""

import os
import zipfile
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import check_free_disk

ZIP_LIMIT = 2**30  # bytes of a folder export zipped for download: adapters and small models, not a merged 8B model


def _num(x: float) -> str:
    """A logit difference as people read it: 0 exactly, else 2 significant digits (0.0021, 0.35, 1.2)."""
    return "0" if x == 0 else f"{x:.2g}"


def summary(fmt: str, checks: dict) -> str:
    """The export's checks as one sentence, e.g. "matches the PyTorch model: greedy text identical, max logit
    difference 0.002"."""
    if fmt == "lora":
        return (
            f"PEFT loads it onto the base model ({checks['lora_weights_loaded']} LoRA weights) and it answers exactly "
            f"as the run's adapter (max logit difference {_num(checks['max_logit_diff_vs_run'])}); it moves the base "
            f"model's logits by up to {_num(checks['adapter_effect'])}{_layers(checks.get('check_layers'))}."
        )
    parts = []
    if "max_logit_diff_fp32" in checks:
        parts.append(
            f"matches the adapter model: max logit difference {_num(checks['max_logit_diff_fp32'])} in fp32, "
            f"{_num(checks['max_logit_diff_16bit'])} once saved in {checks.get('dtype', '16 bits')}"
            + _layers(checks.get("merge_check_layers"))
        )
    if fmt.startswith("gguf"):
        parts.append(_gguf(checks))
    if not parts:
        return "Saved in 16 bits; a model without an adapter has nothing to compare with."
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def _layers(checked: str | None) -> str:
    """' (checked on its first 2 of 32 layers)' when the check did not cover the whole model, else ''."""
    if not checked:
        return ""
    done, _, total = checked.partition(" of ")
    return "" if done == total else f" (checked on its first {checked} layers)"


def _gguf(checks: dict) -> str:
    tokenizer = "tokenizer identical" if checks.get("tokenizer_match") else "tokenizer differs"
    if not checks.get("tokens_compared"):  # a mismatch of the tokenizer fails the export (gguf.compare_greedy)
        return (
            "llama.cpp tokenizes the chat prompt exactly as the PyTorch model does (its answers are not compared: "
            "the model is too large for the check's fp32 copy in RAM)"
        )
    n, agree = checks["tokens_compared"], checks["tokens_agree"]
    if checks.get("greedy_match"):
        greedy = f"greedy text identical ({n} tokens)"
    else:
        clear = checks.get("clear_disagreements", 0)
        rest = f"{clear} clear disagreements" if clear else "the others are near-ties, which rounding may tip"
        greedy = f"greedy text agrees on {agree} of {n} tokens ({rest})"
    diff = _num(checks["max_logit_diff"])
    return f"llama.cpp matches the PyTorch model: {tokenizer}, {greedy}, max logit difference {diff}"


def downloads(export: Path, fmt: str, dest: Path, log=print) -> list[dict]:
    """The files to offer as browser downloads, as [{"path", "name", "bytes", "size" (as text)}].

    A GGUF export gives its .gguf file and Modelfile as they are. A folder export (LoRA adapter, merged model) of up
    to ZIP_LIMIT bytes gives one zip of the folder, written into `dest` (stored, not compressed: weights do not
    shrink); a larger one, or one the disk has no room to copy, its files one by one instead. The zip is a second copy
    that stays beside the export: a merged 8B model's would be 16 GB more on a disk a notebook's quota counts.
    """
    files = sorted(p for p in export.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    if not fmt.startswith("gguf") and size > ZIP_LIMIT:
        log(f"export: {size_text(size)}, over {size_text(ZIP_LIMIT)}: offering its files one by one, not a zip copy")
    elif not fmt.startswith("gguf"):
        try:
            check_free_disk(dest, size + 2**24, "a zip of the export for download")
        except UserError as e:  # the export itself is complete; only its one-file download is skipped
            log(f"export: no zip for download ({e}); offering its files one by one")
        else:
            files = [_zip(export, files, dest / f"{export.name}.zip")]
            log(f"export: {files[0].name} ready for download ({size_text(files[0].stat().st_size)})")
    return [dict(path=str(p), name=p.name, bytes=p.stat().st_size, size=size_text(p.stat().st_size)) for p in files]


def _zip(folder: Path, files: list[Path], target: Path) -> Path:
    """Zip `files` under a top folder named like `folder`, written to a temporary name and renamed when complete."""
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for f in files:
                z.write(f, f"{folder.name}/{f.name}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def size_text(n: int) -> str:
    """A file size as people read it: 812 bytes, 4.2 KiB, 1.3 GiB."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"
