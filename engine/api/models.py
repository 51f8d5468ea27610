"""Models: download a hub model in the background with progress, and read a model's architecture numbers."""

import os
from dataclasses import dataclass
from pathlib import Path

from engine.api.access import check_access
from engine.core.errors import UserError
from engine.models.adapter_source import refusal as adapter_refusal
from engine.models.presets import catalog

_downloads: dict = {}  # hub id -> engine.models.hub.Download started here (one per model, shared by sessions)


@dataclass
class DownloadStatus:
    model: str
    state: str  # downloading, done, failed
    message: str
    done_bytes: int
    total_bytes: int | None  # None while (or when) the hub's file list is unknown
    folder: Path | None = None

    @property
    def finished(self) -> bool:
        return self.state != "downloading"


def start_download(model: str) -> DownloadStatus:
    """Fetch a hub model into the local cache on a background thread (as training and chat would); a local folder
    needs nothing. Poll it with poll_download(model); a second call while it runs joins the same download."""
    from engine.core.hub_id import HUB_ID

    model = model.strip()
    check_access(model)
    path = Path(os.path.expanduser(model))
    if path.is_dir() or not HUB_ID.match(model):
        from engine.models.loading import resolve_model

        folder = resolve_model(model)  # a folder is checked, a bad name raises its sentence
        return DownloadStatus(model, "done", f"'{model}' is a local folder; nothing to download.", 0, 0, folder)
    if model not in _downloads or _downloads[model].state == "failed":
        from engine.models.hub import Download

        _downloads[model] = Download(model)
    return poll_download(model)


def poll_download(model: str) -> DownloadStatus:
    """The progress of start_download(model): bytes in its cache folder so far, of the total the hub lists."""
    if model not in _downloads:
        raise UserError(f"No download of '{model}' was started.")
    d = _downloads[model]
    done, total = d.progress()
    return DownloadStatus(model, d.state, d.message, done, total, d.folder)


def model_arch(model: str):
    """Architecture numbers of a model, from its config.json: in a local folder, else in the local hub cache, else
    (for a catalog model) the catalog's numbers, else downloaded from the hub (the config alone)."""
    return model_arch_and_config(model)[0]


def model_arch_and_config(model: str) -> tuple:
    """(model_arch's numbers, the config.json they come from: None for a catalog model's numbers)."""
    import json

    from engine.memory.estimate import Arch

    def read(file: Path) -> tuple:
        cfg = json.loads(file.read_text())
        return Arch.from_config(cfg), cfg

    check_access(model)
    path = Path(os.path.expanduser(model))
    if (path / "config.json").is_file():
        return read(path / "config.json")
    if path.is_dir() or path.is_file():  # one with no config.json (a folder above the model, a file): not missing
        from engine.models.loading import resolve_model

        resolve_model(model, log=lambda msg: None)  # raises the sentence the run would
    from engine.core.hub_id import HUB_ID, url_hint

    listed = next((m for m in catalog() if model in (m["id"], m.get("id_4bit"), m["name"])), None)
    hub_id = HUB_ID.match(model) and not model.startswith((".", "/", "~"))
    cached = _cached_config(model) if hub_id else None
    if cached is not None:
        return read(cached)
    if hub_id and (adapter := _cached_config(model, "adapter_config.json")) is not None:
        raise UserError(adapter_refusal(model, adapter))  # a LoRA adapter's repository: the sentence names its base
    if listed is not None:
        return Arch(*listed["arch"]), None
    if not hub_id:
        raise UserError(
            url_hint(model) or f"Model folder '{model}' does not exist; give an existing folder or a hub id."
        )
    from huggingface_hub import hf_hub_download

    from engine.core.hub_id import refusal

    try:
        cfg = hf_hub_download(model, "config.json")
    except Exception as e:  # noqa: BLE001  gated or private: what to do about the token; offline or missing: the rest
        if refusal(model, e):
            raise UserError(refusal(model, e)) from None
        try:  # no config.json: a LoRA adapter's repository has adapter_config.json instead
            adapter = Path(hf_hub_download(model, "adapter_config.json"))
        except Exception:  # noqa: BLE001  not an adapter either: the sentence below
            adapter = None
        if adapter is not None:
            raise UserError(adapter_refusal(model, adapter)) from None
        raise UserError(
            f"Could not read the config of '{model}' from the hub ({type(e).__name__}), and it is not in the local "
            "cache; check the name and the connection, or give a local folder."
        ) from None
    return read(Path(cfg))


def _cached_config(model: str, name: str = "config.json") -> Path | None:
    """File `name` (config.json) of hub id `model` in the local hub cache (HF_HUB_CACHE), with no network: the main
    revision's, else the newest snapshot's."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    found = try_to_load_from_cache(model, name, cache_dir=cache)
    if isinstance(found, str):
        return Path(found)
    snapshots = Path(cache) / f"models--{model.replace('/', '--')}" / "snapshots"
    configs = sorted(snapshots.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    return configs[-1] if configs else None


def adapter_layers(model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the names of the decoder layers' linear modules LoRA can adapt in `model`, the ones a form ticks at first).
    Llama's names (JobSpec's default target_modules, all ticked) unless the estimate knows the model's layers by name
    (engine.memory.families: Falcon's and GPT-NeoX's query_key_value, phi's fc1, StarCoder2's c_fc, Jamba's Mamba
    projections), whose names are then listed, the default's first. Ticked: the default's names where the model has
    them all (Jamba: its Mamba projections are offered, not ticked), else every one of its layers, as the default does
    for a Llama. A model whose config cannot be read gets Llama's names: the run names any problem with them."""
    from engine.spec.jobspec import ALL_LINEAR

    try:
        arch = model_arch(model) if model else None
    except (UserError, OSError, ValueError, KeyError, TypeError):  # no config reachable, or one the estimate misreads
        arch = None
    if arch is None or not arch.linears:
        return ALL_LINEAR, ALL_LINEAR
    found = list(dict.fromkeys(name for layer in arch.linears for name, _, _ in layer))
    names = tuple([n for n in ALL_LINEAR if n in found] + [n for n in found if n not in ALL_LINEAR])
    return names, ALL_LINEAR if set(ALL_LINEAR) <= set(names) else names
