"""Chat: a loaded chat model (a run, a model folder, a hub id or a .gguf file) and its starting sampling settings."""

import re
from pathlib import Path

from engine.api.access import check_source, runs_dir
from engine.core.errors import UserError
from engine.models.presets import catalog

RUN_ID = re.compile(r"\d{8}-\d{6}-\S+")  # a run folder's name: its start time, then its name (engine.api.runs.start)


def check_not_gone(source: str) -> None:
    """A run id that no folder answers to (a run deleted or moved while a tab still has it picked) is said to be
    gone, rather than read as a model folder typed wrong."""
    if RUN_ID.fullmatch(source) and not Path(source).exists() and not (runs_dir() / source).exists():
        raise UserError(
            f"Run `{source}` is no longer in the runs folder ({runs_dir()}): it was deleted or moved; pick another run."
        )


def Chat(source: str, device: str = "auto"):
    """A loaded chat model: a run (its adapter over its base model), a merged model folder, a hub id, or a .gguf
    file (through llama.cpp, with the chat template embedded in the file)."""
    check_source(str(source))
    check_not_gone(str(source))
    if str(source).lower().endswith(".gguf"):
        from engine.chat.gguf_chat import GGUFChat

        return GGUFChat(source, device)
    from engine.chat.infer import ChatModel

    return ChatModel(source, device)


def sampling_defaults(source: str) -> dict:
    """The sampling settings to start a chat with (temperature, top_p, top_k, min_p, repetition_penalty): the model's
    generation_config.json where it sets them, else its family's (Qwen3, Llama 3, Gemma, ...). Reads only local files:
    a run, a model folder, a .gguf file, or a hub id (from the cache, or by its catalog family)."""
    check_source(str(source))
    if str(source).lower().endswith(".gguf"):
        from engine.chat.gguf_chat import file_sampling

        return file_sampling(source)
    from engine.chat.infer import source_sampling

    families = {i: m["family"] for m in catalog() for i in (m["id"], m.get("id_4bit")) if i}
    return source_sampling(str(source), families)


def system_prompt(source: str) -> str | None:
    """The system prompt a run trained with on every example that had none ("" when it had none), for its chat to
    start with, since the tuned model learned its replies after that turn: a run's from its job, a GGUF file's from
    the Ollama Modelfile its export wrote beside it (SYSTEM); a checkpoint's (checkpoints/ or best/) from its run.
    None for any other source."""
    check_source(str(source))
    path = Path(source)
    if str(source).lower().endswith(".gguf"):
        return _modelfile_system(path)
    if path.parent.name in ("checkpoints", "best") and not (path / "job.yaml").is_file():
        path = path.parent.parent  # a run's checkpoint learned its replies after the run's system turn too
    if not (path / "job.yaml").is_file():
        return None
    from engine.spec.jobspec import read_job

    return read_job(path / "job.yaml").system_prompt


def _modelfile_system(gguf: Path) -> str | None:
    """The SYSTEM of the Modelfile beside `gguf` that names it (engine.export.ollama.modelfile), "" when it has
    none; None without such a Modelfile (a file made elsewhere)."""
    modelfile = gguf.parent / "Modelfile"
    try:
        text = modelfile.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if f"FROM ./{gguf.name}\n" not in text:
        return None
    found = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return found.group(1) if found else ""
