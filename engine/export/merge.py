"""Export a run or model: the LoRA adapter, a merged 16-bit safetensors model, or a GGUF file with its Ollama
Modelfile, each checked before it is done.

Every export is built in a temporary folder and renamed into place when complete, so an interrupted export never
looks finished, and an existing folder is never overwritten.

The merge streams: each base tensor is read alone from its safetensors shard, a LoRA pair is added in fp32
(W + scale * B @ A, scale = alpha / r, or alpha / sqrt(r) with rsLoRA), the result is cast to the model's 16-bit
dtype and appended to the output shard, whose header is planned before any tensor is read. RAM holds one tensor (in
fp32 when it has a LoRA pair) plus the adapter, whatever the model size (figures for an 8B model in _merge).

About 500 lines: one export pipeline (resolve the source, merge, write, verify) for every format; GGUF conversion is
engine.export.gguf's, the Modelfile engine.export.ollama's, the background job engine.export.job's.
"""

import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.chat.infer import locate
from engine.core.errors import UserError
from engine.core.files import check_free_disk, new_folder, write_text
from engine.core.hub_id import HUB_ID
from engine.core.statefile import weight_files
from engine.export import experts as experts_merge
from engine.export.gguf import QUANTS
from engine.export.probe import CHECK_LAYERS, PROBE, fits_in_ram, load_fp32, num_layers, param_count
from engine.training.steps import CHECKPOINT_FILES

FORMATS = ("lora", "merged16", *QUANTS)
REFERENCE_TOKENS = 16  # greedy tokens compared between PyTorch and llama.cpp after a GGUF export
SHARD_BYTES = 4 * 10**9  # output shard size, as save_pretrained(max_shard_size="4GB")


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
    """Export `source` as `fmt` into the new folder `out`. A full disk is a UserError, with nothing left at `out`."""
    from engine.core.disk import disk_full_error, remove_stale_partials

    if fmt not in FORMATS:
        raise UserError(f"Unknown export format '{fmt}'; use one of: {', '.join(FORMATS)}.")
    remove_stale_partials(out.parent, log=log)  # earlier exports here that were killed mid-write
    try:
        return _export(source, fmt, out, log)
    except Exception as e:
        err = disk_full_error(e, out.parent, f"writing the {fmt} export", f"nothing was written to '{out}'")
        if err is None:
            raise
        raise err from e


def _export(source: str, fmt: str, out: Path, log) -> ExportResult:
    from engine.export.dequantize import unquantized

    t0 = time.time()
    with _pinned(source, out) as (base, adapter, tok_dir):
        if fmt == "lora":
            if adapter is None:
                if not HUB_ID.match(base) and not Path(base).expanduser().exists():
                    from engine.models.loading import resolve_model

                    resolve_model(base, log)  # a mistyped run or folder: its sentence says that it does not exist
                raise UserError(f"'{source}' has no LoRA adapter to export (a full fine-tune exports as merged16).")
            check_free_disk(out.parent, 2 * _folder_bytes(adapter), "the adapter")
            from engine.export.adapter import check_adapter, write_adapter

            with new_folder(out) as tmp:
                write_adapter(adapter, base, tmp, CHECKPOINT_FILES, tok_dir)  # no checkpoint training state
                checks = check_adapter(base, adapter, tmp, tok_dir, log)
        else:  # a 4-bit checkpoint as base is merged into a dequantized 16-bit copy of it
            with unquantized(base, out.parent, log) as (base, origin):
                if fmt == "merged16":
                    with new_folder(out) as tmp:
                        checks, _ = _merge(base, adapter, tok_dir, tmp, out.parent, log)
                else:
                    checks = _export_gguf(base, adapter, tok_dir, fmt, out, log, _system_prompt(source, adapter))
            checks = {**origin, **checks}
    files = sorted(p.name for p in out.iterdir())
    log(f"export: {fmt} written to {out} ({', '.join(files)})")
    return ExportResult(out, fmt, files, round(time.time() - t0, 2), checks)


@contextmanager
def _pinned(source: str, out: Path):
    """locate(source), with the checkpoint it picks hard-linked (copied where links are refused) into a hidden folder
    beside `out` for the export's time: a run still training deletes its older checkpoints (keep_checkpoints), and its
    best/ one when a better comes, while a long export reads it. The copy keeps the run folder's layout (its job.yaml,
    its metrics so far), so the model card still names the run and the checkpoint's steps."""
    from engine.core.disk import owner_tag

    for attempt in range(3):
        base, adapter, tok_dir = locate(source)
        ckpt = Path(base) if adapter is None else adapter
        run = ckpt.parent.parent
        if ckpt.parent.name not in ("checkpoints", "best") or not (run / "job.yaml").is_file():
            yield base, adapter, tok_dir
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            hidden = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{owner_tag()}.", suffix=".partial"))
        except (FileExistsError, NotADirectoryError, PermissionError):  # new_folder(out) says what to do
            yield base, adapter, tok_dir
            return
        try:
            pinned = hidden / run.name / ckpt.parent.name / ckpt.name
            try:
                pinned.mkdir(parents=True)
                for f in ckpt.iterdir():
                    if f.is_file() and f.name not in CHECKPOINT_FILES:  # no training state
                        _link_or_copy(f, pinned / f.name)
                shutil.copyfile(run / "job.yaml", hidden / run.name / "job.yaml")
                if (run / "metrics.jsonl").is_file():
                    shutil.copyfile(run / "metrics.jsonl", hidden / run.name / "metrics.jsonl")
            except FileNotFoundError:  # the run deleted it meanwhile, having saved a newer one
                if attempt == 2:
                    raise
                continue
            tok_dir = pinned if tok_dir == ckpt else tok_dir  # a best/ folder holds its tokenizer
            yield (str(pinned), None, tok_dir) if adapter is None else (base, pinned, tok_dir)
            return
        finally:
            shutil.rmtree(hidden, ignore_errors=True)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except FileNotFoundError:  # gone: the caller looks again
        raise
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, dest)


def _system_prompt(source: str, adapter: Path | None) -> str:
    """The system prompt the run of `source` (a run, or one of its checkpoints) trained with on every example, or ""."""
    from engine.export.adapter import run_of
    from engine.spec.jobspec import read_job

    run = Path(source) if (Path(source) / "job.yaml").is_file() else run_of(adapter) if adapter else None
    return read_job(run / "job.yaml").system_prompt if run is not None else ""


def _export_gguf(
    base: str, adapter: Path | None, tok_dir: Path | None, fmt: str, out: Path, log, system: str = ""
) -> dict:
    """Merge into a hidden subfolder, convert to a 16-bit GGUF, quantize, compare with PyTorch, write the Modelfile
    (with `system`, the run's system prompt).

    Everything happens inside one new_folder, so until the final rename nothing named `out` exists; the merged
    safetensors and the 16-bit intermediate are removed before it.
    """
    from engine.export import gguf, ollama
    from engine.models.loading import read_config, resolve_model

    path = resolve_model(base, log)
    ok, why = gguf.supported(path, tok_dir)
    if not ok:
        raise UserError(why)
    gguf.check_format(path, fmt)
    n = param_count(path)
    gtype16, quant = QUANTS[fmt]
    if gtype16 is None:  # quantize from the model's own 16-bit type, so a bf16 model never passes through f16
        cfg = read_config(path)
        gtype16 = "F16" if (cfg.get("dtype") or cfg.get("torch_dtype")) == "float16" else "BF16"
    size = gguf.estimate_bytes(n, fmt, path)
    need = 2 * n + (2 * n if quant else 0) + size + 2**24  # merged folder + 16-bit GGUF (+ quantized file)
    log(f"export: {n / 1e6:.1f}M weights; the {fmt} file will be about {size / 2**20:.1f} MiB")
    check_free_disk(out.parent, need, f"the {fmt} export")
    with new_folder(out) as tmp:
        merged = tmp / ".merged"
        merged.mkdir()
        checks, ref = _merge(base, adapter, tok_dir, merged, out.parent, log, reference=REFERENCE_TOKENS)
        name = gguf.gguf_file_name(out.name, fmt)  # named as the user named the export
        if quant:
            tmp16 = tmp / f".{gtype16.lower()}.gguf"
            info = gguf.convert(merged, tmp16, gtype16, log)
            gguf.quantize(tmp16, tmp / name, fmt, log)
            tmp16.unlink()
        else:
            info = gguf.convert(merged, tmp / name, gtype16, log)
        checks.update(gguf.compare_greedy(tmp / name, ref, strict=quant is None))
        log(f"export: llama.cpp vs PyTorch {checks}")
        text = ollama.modelfile(
            name,
            info["template"],
            info["stops"],
            info["sampling"],
            info["bos_added"],
            system,
            {k: info[k] for k in ("bos_token", "eos_token")},
        )
        write_text(tmp / "Modelfile", text)
        checks["modelfile_template"] = "TEMPLATE" in text
        shutil.rmtree(merged)
    return checks


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _prompt(tok) -> dict:
    from engine.data.tokenizing import render

    text = render(tok, [{"role": "user", "content": PROBE}], add_generation_prompt=True)
    return dict(text=text, prompt_ids=tok(text, add_special_tokens=False)["input_ids"])


def _reference(model, tok, steps: int) -> dict:
    """transformers' greedy continuation of the chat-rendered PROBE, with its fp32 logits and top-1 margins."""
    import numpy as np
    import torch

    ref = _prompt(tok)
    tokens, logits, margins = [], [], []
    inp, past = torch.tensor([ref["prompt_ids"]]), None
    with torch.inference_mode():
        for _ in range(steps):
            out = model(input_ids=inp, past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1].float()
            top = last.topk(2)
            tokens.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            logits.append(last.numpy())
            inp = top.indices[:1].view(1, 1)
    return dict(ref, tokens=tokens, logits=np.stack(logits), margins=margins)


# --- streaming merge ---------------------------------------------------------------------------------------------

_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.+)\.lora_(A|B|embedding_A|embedding_B)(?:\.default)?(?:\.weight)?")
_FLOAT = {"F32", "F16", "BF16", "F64"}
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ST_DTYPE = {"float16": "F16", "bfloat16": "BF16"}


@dataclass
class _Delta:
    """One LoRA pair: the merged weight is W + scale * (B @ A), transposed for embeddings and fan-in-fan-out."""

    module: str  # the module's name in the PEFT model (without base_model.model.)
    a: object
    b: object
    scale: float
    transpose: bool

    def apply(self, w):
        """w (fp32) + delta, computed as PEFT's merge does: (B @ A) * scale, then added."""
        delta = (self.b.float() @ self.a.float()) * self.scale
        return w.add_(delta.T if self.transpose else delta)


def _read_adapter(adapter: Path) -> tuple[dict[str, _Delta], dict]:
    """({module name: _Delta}, {weight name: replacement tensor}) of a PEFT LoRA adapter folder.

    Replacements are modules_to_save (a fully trained head or embedding), saved under the base weight's own name.
    """
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora") or cfg.get("lora_bias"):
        kind = "DoRA" if cfg.get("use_dora") else "LoRA-bias" if cfg.get("lora_bias") else cfg.get("peft_type")
        raise UserError(f"Merging a {kind} adapter is not supported; export it as 'lora' instead.")
    files = sorted(adapter.glob("adapter_model*.safetensors"))
    if not files:
        raise UserError(f"'{adapter}' has no adapter_model.safetensors; export it as 'lora' or retrain.")
    pairs: dict[str, dict] = {}
    replace = {}
    for f in files:
        for key, t in load_file(f).items():
            m = _LORA_KEY.fullmatch(key)
            if m:
                pairs.setdefault(m[1], {})[m[2].removeprefix("embedding_")] = t
                pairs[m[1]]["embedding"] = m[2].startswith("embedding_")
            else:
                replace[key.removeprefix("base_model.model.").replace(".modules_to_save.default", "")] = t
    deltas = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B", "embedding"}:
            raise UserError(f"The adapter's LoRA weights for '{module}' are incomplete; the adapter file is damaged.")
        r = ab["A"].shape[0]
        alpha = experts_merge.pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        transpose = ab["embedding"] or bool(cfg.get("fan_in_fan_out"))  # PEFT stores both as (in, out)
        deltas[module] = _Delta(module, ab["A"], ab["B"], scale, transpose)
    return deltas, replace


def _text_config(path: Path) -> dict:
    """config.json's language-model settings (a multimodal config keeps them under text_config)."""
    cfg = json.loads((path / "config.json").read_text())
    return cfg.get("text_config", cfg)


def _match(names: set[str], wanted: str) -> str | None:
    """The base tensor name for a PEFT module's weight: the same name, or the unique one ending like it (a checkpoint
    whose keys transformers renames on load, e.g. a multimodal model's language_model prefix)."""
    if wanted in names:
        return wanted
    parts = wanted.split(".")
    for i in range(1, len(parts) - 2):
        tail = "." + ".".join(parts[i:])
        found = [n for n in names if n.endswith(tail)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            return None
    return None


def _write_shard(file: Path, items: list[tuple[str, tuple, str, int]], produce) -> None:
    """Write a safetensors file whose header is known before its tensors: `produce(name)` returns each in turn."""
    import torch

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, nbytes in items:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(file, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for name, _, _, nbytes in items:
            t = produce(name).contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy()
            if data.nbytes != nbytes:
                raise RuntimeError(f"merge: {name} has {data.nbytes} bytes, planned {nbytes}")
            fh.write(data.data)


def _stream_merge(path: Path, adapter: Path | None, out_dtype, dest: Path, log) -> dict[str, _Delta]:
    """Write the merged model's weights to `dest` shard by shard; returns the adapter's deltas (by module name)."""
    import torch

    from engine.models import mxfp4

    deltas, replace = _read_adapter(adapter) if adapter is not None else ({}, {})
    entries = mxfp4.tensors(path)  # an MXFP4 expert tensor (blocks and scales) is one entry, read dequantized
    names = {e[0] for e in entries}
    experts = experts_merge.split_expert_deltas(deltas, adapter, _text_config(path)) if adapter else {}
    try:
        by_name = experts_merge.base_targets(experts, names, _text_config(path).get("model_type", ""))
    except KeyError as e:
        raise UserError(
            f"The adapter changes '{e.args[0]}', which this base model does not have; wrong base?"
        ) from None
    for module, d in deltas.items():
        target = _match(names, module + ".weight")
        if target is None:
            raise UserError(f"The adapter changes '{module}', which this base model does not have; wrong base model?")
        by_name[target] = d.apply
    new = {}
    tied = _text_config(path).get("tie_word_embeddings", True)
    for key, t in replace.items():
        target = _match(names, key)
        if target is None and tied and key.endswith("lm_head.weight"):
            continue  # a tied head: PEFT saves it beside the embedding it equals; the base stores only the embedding
        if target is None:
            raise UserError(f"The adapter replaces '{key}', which this base model does not have; wrong base model?")
        new[target] = t
    st_out = _ST_DTYPE[str(out_dtype).removeprefix("torch.")]
    plan, shard, size = [], [], 0
    for name, _, shape, dtype in entries:
        dtype = st_out if dtype in _FLOAT else dtype
        if dtype not in _BYTES:
            raise UserError(f"The base weight '{name}' is stored as {dtype}, which the merge does not handle.")
        nbytes = math.prod(shape) * _BYTES[dtype]
        if shard and size + nbytes > SHARD_BYTES:
            plan.append(shard)
            shard, size = [], 0
        shard.append((name, shape, dtype, nbytes))
        size += nbytes
    plan.append(shard)
    source = {e[0]: e[1] for e in entries}

    def produce(name):
        # One safe_open per tensor: its memory map is closed at once, so pages of the base read so far never pile
        # up in this process's resident set (with one open handle they grew to the shard size). MXFP4 is read as
        # bf16, which holds its values exactly.
        t = mxfp4.read(name, source[name], torch.bfloat16)
        if name in new:
            t = new[name]
        if name in by_name:
            t = by_name[name](t.to(torch.float32))
        return t.to(out_dtype) if t.is_floating_point() else t

    weight_map = {}
    total = len(plan)
    t0 = time.time()
    for i, items in enumerate(plan):
        fname = "model.safetensors" if total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        with torch.no_grad():
            _write_shard(dest / fname, items, produce)
        weight_map.update({it[0]: fname for it in items})
        log(f"export: merged shard {i + 1}/{total} ({time.time() - t0:.0f}s, resident {_rss_gib():.1f} GiB)")
    if total > 1:
        index = {"metadata": {"total_size": sum(it[3] for s in plan for it in s)}, "weight_map": weight_map}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    log(f"export: {len(by_name)} LoRA pairs and {len(new)} replaced weights merged into {len(entries)} tensors")
    return {**deltas, **experts}


def _check_merge(path: Path, adapter: Path | None, dest: Path, deltas: dict, probe, n_params: int, log) -> dict:
    """Logits of the adapter model, of the same weights merged in fp32 (the arithmetic the merge used), and of the
    saved 16-bit merged model, on `probe`; raises when the fp32 merge disagrees with PEFT's adapter model."""
    import torch

    total = num_layers(path)
    layers = None if fits_in_ram(4 * n_params) else min(CHECK_LAYERS, total)
    checks = {"merge_check_layers": f"{layers or total} of {total}"}
    if layers:
        log(f"export: the fp32 model does not fit in RAM; checking the merge on its first {layers} layers")
    model = load_fp32(path, layers)
    with torch.inference_mode():
        before = model(input_ids=probe).logits
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        with torch.inference_mode():
            before = model(input_ids=probe).logits
        model = model.unload()  # the base model again, weights untouched
        params = dict(model.named_parameters())
        with torch.no_grad():
            experts_merge.apply_to_model(model, deltas)
            for module, d in deltas.items():
                p = params.get(module + ".weight")
                if p is not None:  # None: a layer past the checked ones
                    d.apply(p.data)
        del params  # they hold every weight: without this the fp32 copy outlives `model` below
        with torch.inference_mode():
            after = model(input_ids=probe).logits
        checks["max_logit_diff_fp32"] = float((before - after).abs().max())
        if checks["max_logit_diff_fp32"] > 1e-3 * max(1.0, float(before.abs().max())):
            raise UserError(
                f"The merged model disagrees with the adapter model (logits differ by "
                f"{checks['max_logit_diff_fp32']:.3g}); the export was not saved. Report this bug."
            )
    del model
    merged = load_fp32(dest, layers)
    with torch.inference_mode():
        cast = merged(input_ids=probe).logits
    checks["max_logit_diff_16bit"] = float((before - cast).abs().max())
    return checks


def _merge(
    base: str, adapter: Path | None, tok_dir: Path | None, dest: Path, disk: Path, log, reference: int = 0
) -> tuple[dict, dict | None]:
    """Merge the adapter into the 16-bit base (not its 4-bit rounding) and save it in the base's 16-bit dtype.

    Writes into the existing folder `dest` (the caller's new_folder); `disk` is where free space is checked. With
    `reference` > 0 also returns transformers' greedy reference (see _reference) computed in fp32 on the saved
    16-bit weights, so a converted file is compared with exactly what was saved; when the fp32 model does not fit in
    RAM the reference holds the rendered prompt only (the GGUF check is then the tokenizer's).

    Measured on a 2-core, 24 GB CPU machine (shared with other work), random Llama-3.1-8B-shaped bf16 model (16 GB)
    with an r=16 adapter on every linear layer: the streaming merge stays at 0.6 GiB resident for all five 4 GB
    shards; the process peaks at 9.0 GiB during the 2-layer fp32 check, whose fp32 embedding and head (128256 x
    4096 each, 2 GiB apiece) dominate, so the peak does not grow with the layer count.
    """
    import torch

    from engine.data.tokenizing import ensure_chat_template
    from engine.models.loading import load_tokenizer, read_config, resolve_model

    path = resolve_model(base, log)
    cfg = read_config(path)
    out_dtype = {"float16": torch.float16}.get(cfg.get("dtype") or cfg.get("torch_dtype"), torch.bfloat16)
    # the merged 16-bit model: the base files, or twice its weight count where they hold fewer bytes (MXFP4 experts)
    weights = max(sum(f.stat().st_size for f in weight_files(path)), 2 * param_count(path))
    check_free_disk(disk, int(weights * 1.1) + 2**20, "the merged model")
    has_tok = tok_dir is not None and any((tok_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok = load_tokenizer(tok_dir if has_tok else path)  # a bare adapter folder uses its base's tokenizer
    ensure_chat_template(tok)
    deltas = _stream_merge(path, adapter, out_dtype, dest, log)
    dtype_name = str(out_dtype).removeprefix("torch.")
    cfg_out = {k: v for k, v in dict(cfg, dtype=dtype_name).items() if k != "quantization_config"}  # MXFP4's
    if "torch_dtype" in cfg_out:
        cfg_out["torch_dtype"] = dtype_name
    (dest / "config.json").write_text(json.dumps(cfg_out, indent=2, sort_keys=True) + "\n")
    if (path / "generation_config.json").is_file():
        shutil.copy2(path / "generation_config.json", dest / "generation_config.json")
    tok.save_pretrained(dest)
    n = param_count(dest)
    probe = torch.tensor([tok(PROBE, add_special_tokens=False)["input_ids"][:32] or [0]])
    checks = {"dtype": dtype_name}
    if adapter is not None:
        checks.update(_check_merge(path, adapter, dest, deltas, probe, n, log))
    log(f"export: merged, checks {checks}")
    if not reference:
        return checks, None
    if not fits_in_ram(4 * n):
        checks["greedy_check"] = f"skipped: the fp32 model ({4 * n / 2**30:.0f} GiB) does not fit in RAM"
        log(f"export: {checks['greedy_check']}; only the tokenizer is compared with llama.cpp")
        return checks, _prompt(tok)
    model = load_fp32(dest, None)
    return checks, _reference(model, tok, reference)
