"""A LoRA adapter given where a model is asked for: a folder or hub repository with adapter_config.json (which names
its base model) and adapter weights, but no config.json.

The notebook API (tunesmith.FastLanguageModel.from_pretrained) loads the base with the adapter on it, as Unsloth does.
A run (JobSpec.model), the estimate and the Model tab's fit badge start from a whole model, so they refuse an adapter
before loading anything, with the sentence that names the base model to pick.
"""

import json
import os
from pathlib import Path


def is_adapter(folder: Path) -> bool:
    """Whether `folder` holds a PEFT adapter alone (adapter_config.json and no config.json)."""
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def base_of(config_file: Path) -> str:
    """base_model_name_or_path of an adapter_config.json ("" when it names none or cannot be read)."""
    try:
        base = json.loads(Path(config_file).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return ""
    return base if isinstance(base, str) else ""


def refusal(model: str, config_file: Path) -> str:
    """The sentence for adapter `model` (its adapter_config.json is `config_file`) given as the model to train."""
    base = base_of(config_file)
    if not base:
        return (
            f"'{model}' is a LoRA adapter, not a model, and its adapter_config.json names no base model; pick the "
            "model it was trained from instead."
        )
    return (
        f"'{model}' is a LoRA adapter, not a model: pick its base model '{base}' to train or estimate (chat with the "
        f"adapter, export it, or train it further in a notebook with FastLanguageModel.from_pretrained('{model}'))."
    )


def hub_adapter(model: str) -> Path | None:
    """For a hub id, the local snapshot of that repository when it is a LoRA adapter (its adapter_config.json is in the
    local cache, or on the hub, and it has no config.json), downloaded with the files a model needs; None for
    anything else, and when neither the cache nor the hub can say (offline: the model's own download then does)."""
    from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache

    from engine.core.hub_id import HUB_FILES, HUB_ID

    if Path(os.path.expanduser(model)).is_dir() or not HUB_ID.match(model) or model.startswith((".", "/", "~")):
        return None
    cached = try_to_load_from_cache(model, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE"))
    if isinstance(cached, str):  # a model downloaded before: no hub request
        return None
    try:
        hf_hub_download(model, "adapter_config.json")
    except Exception:  # noqa: BLE001  no such file (a model), offline, gated: the model's own loading says why
        return None
    folder = Path(snapshot_download(repo_id=model, allow_patterns=HUB_FILES))
    return folder if is_adapter(folder) else None
