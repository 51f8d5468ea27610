"""A 16-bit copy of a bitsandbytes 4-bit checkpoint, for the merged and GGUF exports of a run trained on one.

The merge adds LoRA deltas to the base's 16-bit weights; a pre-quantized base ("...-bnb-4bit") stores packed uint8
data ([n/2, 1] bytes per weight matrix) beside its quantization state, so it is dequantized first, weight by weight,
with bitsandbytes' own dequantize_4bit (the arithmetic its Linear4bit runs in training, so the merged model is the
model that was trained). The copy goes in a hidden folder beside the export and is removed afterwards; its config has
no quantization_config and names the 16-bit original when the checkpoint does (engine.models.prequantized).
"""

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

SHARD_BYTES = 4 * 10**9
_QUANT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state")


@contextlib.contextmanager
def unquantized(base: str, near: Path, log=print):
    """Yield (base, checks): `base` itself for plain weights; for a bnb 4-bit checkpoint, a dequantized 16-bit copy
    in a hidden folder under `near` (removed on exit) with checks naming where it came from."""
    from engine.core.disk import owner_tag
    from engine.models.loading import read_config, resolve_model
    from engine.models.prequantized import original_model, quantization

    path = resolve_model(base, log)
    cfg = read_config(path)
    if quantization(cfg) != "bnb-4bit":
        yield base, {}
        return
    original = original_model(path, cfg)
    # named as engine.core.files.new_folder names a half-built folder: one a killed export leaves is removed by the
    # next export there (engine.core.disk.remove_stale_partials)
    hidden = Path(tempfile.mkdtemp(dir=near, prefix=f".{path.name}.{owner_tag()}.", suffix=".partial"))
    try:
        dest = hidden / path.name  # the GGUF file is named after the base folder
        dest.mkdir()
        dequantize(path, dest, cfg, original, log)
        checks = {"base": f"{base} (4-bit, dequantized)"}
        if original:
            checks["original_model"] = original
            log(f"export: the base is the 4-bit checkpoint of {original}; merged into its dequantized weights")
        yield str(dest), checks
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def dequantize(path: Path, dest: Path, cfg: dict, original: str | None, log=print) -> None:
    """Write the 4-bit checkpoint at `path` as 16-bit safetensors (in its config's dtype) with its other files."""
    import torch
    from bitsandbytes.functional import QuantState, dequantize_4bit
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtype = {"float16": torch.float16}.get(cfg.get("dtype") or cfg.get("torch_dtype"), torch.bfloat16)
    files = sorted(path.glob("*.safetensors"))
    index, shard, size, count = {}, {}, 0, 0

    def flush():
        nonlocal shard, size
        name = f"part-{len(set(index.values())) + 1:05d}.safetensors"
        save_file(shard, dest / name, metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for f in files:
        with safe_open(f, framework="pt") as st:
            keys = set(st.keys())
            for key in sorted(keys):
                if any(key.startswith(w + ".") and key[len(w) + 1 :].split(".")[0] in _QUANT_PARTS for w in keys):
                    continue  # a part of a 4-bit weight's quantization state
                t = st.get_tensor(key)
                parts = {k: st.get_tensor(k) for k in keys if k.startswith(key + ".")}
                if parts:
                    t = dequantize_4bit(t, QuantState.from_dict(parts, torch.device("cpu"))).to(dtype)
                    count += 1
                elif t.is_floating_point():
                    t = t.to(dtype)
                shard[key] = t.contiguous()
                size += t.numel() * t.element_size()
                if size >= SHARD_BYTES:
                    flush()
    if shard:
        flush()
    names = sorted(set(index.values()))
    if len(names) == 1:
        (dest / names[0]).rename(dest / "model.safetensors")
    else:
        total = sum((dest / n).stat().st_size for n in names)
        (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                       "weight_map": index}, indent=2))  # fmt: skip
    out = {k: v for k, v in cfg.items() if k != "quantization_config"}
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = {k: v for k, v in out["text_config"].items() if k != "quantization_config"}
    if original:
        out["_name_or_path"] = original
    (dest / "config.json").write_text(json.dumps(out, indent=2) + "\n")
    for f in path.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(f, dest / f.name)
    log(f"export: dequantized {count} 4-bit weights of {path.name} to {str(dtype).removeprefix('torch.')}")
