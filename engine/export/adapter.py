"""The LoRA adapter export: the run's adapter files with a model card (README.md) that says what is known (base
model, data, steps, loss) in place of PEFT's blank template, and a check that PEFT loads the exported folder onto
the base model and answers exactly as the run's adapter does.
"""

import shutil
import time
from pathlib import Path

from engine.core.errors import UserError
from engine.core.hub_id import HUB_ID

COPIED = (".json", ".safetensors", ".jinja", ".model", ".txt")  # README.md is written anew, not copied


def write_adapter(adapter: Path, base: str, dest: Path, skip: tuple[str, ...], tok_dir: Path | None = None) -> None:
    """Copy the adapter folder's files (not the training-state files in `skip`) into `dest`, with a model card, and
    the tokenizer of `tok_dir` where the adapter folder has none (a checkpoint's is the run's tokenizer/ folder: its
    chat template is the one the run trained with)."""
    for f in adapter.iterdir():
        if f.is_file() and f.suffix in COPIED and f.name not in skip:
            shutil.copy2(f, dest / f.name)
    if tok_dir is not None and tok_dir.is_dir() and not (dest / "tokenizer_config.json").exists():
        for f in tok_dir.iterdir():
            if f.is_file() and f.suffix in COPIED and not (dest / f.name).exists():
                shutil.copy2(f, dest / f.name)
    (dest / "README.md").write_text(model_card(adapter, base), encoding="utf-8")


def run_of(adapter: Path) -> Path | None:
    """The run folder an adapter belongs to (its adapter/, checkpoints/step-N/ or best/step-N/ folder), or None."""
    parent = adapter.parent.parent if adapter.parent.name in ("checkpoints", "best") else adapter.parent
    return parent if (parent / "job.yaml").is_file() else None


def _facts(adapter: Path, base: str) -> list[tuple[str, str]]:
    """(what, value) rows of the model card: all that the run folder tells about this adapter."""
    import json

    rows = [("Base model", f"`{base}`" if HUB_ID.match(base) else f"`{Path(base).name}` (a local folder)")]
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    rank = f"rank {cfg.get('r')}, alpha {cfg.get('lora_alpha')}" + (", rsLoRA" if cfg.get("use_rslora") else "")
    targets = cfg.get("target_modules") or []
    rows.append(("Adapter", f"LoRA, {rank}, on {', '.join(sorted(targets)) if targets else 'the default layers'}"))
    run = run_of(adapter)
    if run is None:
        return rows
    from engine.core.runlog import read_metrics
    from engine.spec.jobspec import read_job

    spec = read_job(run / "job.yaml")
    data = spec.data if HUB_ID.match(spec.data) else Path(spec.data).name  # a local path would name the user's home
    rows += [
        ("Method", f"{spec.method}, objective {spec.objective}"),
        ("Data", f"`{data}`" + (f" (split {spec.data_split})" if HUB_ID.match(spec.data) else "")),
        ("Learning rate", f"{spec.learning_rate:g}, {spec.lr_schedule} schedule"),
    ]
    metrics = read_metrics(run)
    if adapter.name.startswith("step-") and adapter.name[5:].isdigit():  # a checkpoint: the steps that made it
        metrics = [m for m in metrics if m["step"] <= int(adapter.name[5:])]
    if metrics:
        last = metrics[-1]
        total = last.get("total_steps") or spec.max_steps
        rows.append(("Steps", f"{last['step']}" + (f" of {total}" if total else "")))
        rows.append(("Final training loss", f"{last['loss']:.4f}"))
        if "time" in last:
            rows.append(("Trained", time.strftime("%Y-%m-%d", time.gmtime(last["time"]))))
    return rows


def model_card(adapter: Path, base: str) -> str:
    """README.md for the exported adapter: hub metadata, what it was trained on, and how to load it."""
    header = ["---"]
    if HUB_ID.match(base):  # the hub rejects a local path as base_model
        header += [f"base_model: {base}"]
    header += ["library_name: peft", "pipeline_tag: text-generation", "tags:", "- lora", "- tunesmith", "---", ""]
    run = run_of(adapter)
    title = run.name if run is not None else adapter.name
    table = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _facts(adapter, base)]
    usage = [
        "## Use it",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "from transformers import AutoTokenizer",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "PEFT loads the base model that `base_model_name_or_path` in adapter_config.json names (a hub id or a folder).",
    ]
    intro = [f"# {title}", "", "A LoRA adapter fine-tuned with Tunesmith.", ""]
    return "\n".join(header + intro + table + [""] + usage) + "\n"


def check_adapter(base: str, source: Path, exported: Path, tok_dir: Path | None, log) -> dict:
    """Load the base model in fp32, put the exported adapter on it with PEFT, and compare its logits on a probe with
    the run's own adapter and with the base model alone. Raises a UserError when PEFT misses a LoRA weight of the
    file or the two adapters disagree; returns the figures."""
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from engine.export.probe import CHECK_LAYERS, PROBE, fits_in_ram, load_fp32, num_layers, param_count
    from engine.models.loading import load_tokenizer, resolve_model

    path = resolve_model(base, log)
    total = num_layers(path)
    layers = None if fits_in_ram(4 * param_count(path)) else min(CHECK_LAYERS, total)
    checks = {"check_layers": f"{layers or total} of {total}"}
    has_tok = tok_dir is not None and (tok_dir / "tokenizer_config.json").is_file()
    tok = load_tokenizer(tok_dir if has_tok else path)
    probe = torch.tensor([tok(PROBE, add_special_tokens=False)["input_ids"][:32] or [0]])
    model = load_fp32(path, layers)
    with torch.inference_mode():
        plain = model(input_ids=probe).logits
        run = PeftModel.from_pretrained(model, source)(input_ids=probe).logits
    # each adapter on a base model of its own: PEFT ties a trained embedding to the head only for the first adapter
    # loaded (a second finds the head already wrapped), and unload() leaves the trained embedding in the model
    del model
    model = PeftModel.from_pretrained(load_fp32(path, layers), exported, adapter_name="exported")
    with torch.inference_mode():
        ours = model(input_ids=probe).logits
    loaded = get_peft_model_state_dict(model, adapter_name="exported")
    in_file = {}
    for f in sorted(exported.glob("adapter_model*.safetensors")):
        in_file.update(load_file(f))
    if layers is not None:  # the layers past the checked ones are not in the model
        in_file = {k: v for k, v in in_file.items() if not _past(k, layers)}
    missing = [k for k, v in in_file.items() if k not in loaded or not torch.equal(loaded[k].to(v.dtype), v)]
    checks["lora_weights_loaded"] = f"{len(in_file) - len(missing)} of {len(in_file)}"
    checks["max_logit_diff_vs_run"] = float((ours - run).abs().max())
    checks["adapter_effect"] = float((ours - plain).abs().max())
    log(f"export: PEFT loads the adapter onto the base model: {checks}")
    if missing:
        raise UserError(
            f"PEFT did not load {len(missing)} of the adapter's weights (e.g. '{missing[0]}'); report this."
        )
    if checks["max_logit_diff_vs_run"] > 0:
        raise UserError("The exported adapter answers differently from the run's adapter; the export was not saved.")
    return checks


def _past(key: str, layers: int) -> bool:
    """True for a weight of a decoder layer numbered `layers` or higher (".layers.N." in its name)."""
    parts = key.split(".")
    return any(
        p == "layers" and i + 1 < len(parts) and parts[i + 1].isdigit() and int(parts[i + 1]) >= layers
        for i, p in enumerate(parts)
    )
