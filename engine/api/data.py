"""Datasets: inspect one (format, rows, a rendered sample, token lengths), check it suits an objective, make the
identity dataset, save rows as JSONL.
"""

from pathlib import Path

from engine.api.access import MODEL_FIX, check_access
from engine.core.errors import ModelError, UserError


def inspect_data(
    path: str,
    fmt: str = "auto",
    model: str | None = None,
    column_map: dict | None = None,
    max_seq_length: int = 1024,
    template: str = "auto",
    config: str = "",
    split: str = "train",
    sample_row: int = 1,
    system_prompt: str = "",
    train_on_inputs: bool = False,
    objective: str = "",
) -> dict:
    """Format, row count, columns and a rendered sample (row `sample_row`, 1-based); with `model`, rendered by its
    chat template (or `template`) with the trained tokens marked (a run's `system_prompt` and `train_on_inputs` as
    it would train), a token-length histogram and the rows `max_seq_length` would truncate. With `objective` (sft,
    dpo, ...), the format is the one that objective reads where rows could be read two ways (UltraFeedback's:
    preference pairs for DPO and ORPO, chat for SFT), as check_data and training say. A model that cannot be used
    raises a ModelError (a UserError), whatever the dataset."""
    from engine.data import inspection
    from engine.models.context import context_note
    from engine.spec.objectives import FORMATS_FOR

    check_access(path)
    if objective and objective not in FORMATS_FOR:
        raise UserError(f"Unknown objective '{objective}'; use one of: {', '.join(FORMATS_FOR)}.")
    tokenizer, context = _tokenizer(model) if model else (None, None)
    used = min(max_seq_length, context or max_seq_length)  # a run trains at most at the model's context
    prefer = FORMATS_FOR[objective] if objective else ()
    info = inspection.inspect(
        path, fmt, tokenizer, column_map, used, config, split, template, sample_row, prefer,
        system_prompt=system_prompt, train_on_inputs=train_on_inputs,
    )  # fmt: skip
    if used < max_seq_length:
        info["context_note"] = context_note(max_seq_length, used)
    return info


def _tokenizer(model: str):
    """(the model's tokenizer, its context length or None) for the preview; any UserError on the way is a
    ModelError, so it is not taken for a problem of the dataset."""
    from engine.models.context import context_length
    from engine.models.loading import load_tokenizer, read_config, resolve_model

    try:
        check_access(model, MODEL_FIX)
        folder = resolve_model(model)
        return load_tokenizer(folder), context_length(read_config(folder))
    except ModelError:
        raise
    except UserError as e:
        raise ModelError(str(e)) from e


def check_data(
    path: str,
    objective: str,
    column_map: dict | None = None,
    config: str = "",
    split: str = "train",
    rewards: tuple = (),
) -> str:
    """The dataset's format when it suits `objective` (sft, pretrain, dpo, orpo, grpo), from its first rows; else a
    UserError saying what the objective needs, or which column a reward reads that the dataset lacks."""
    from engine.spec.objectives import check_data as _check_data
    from engine.spec.rewards import needed_columns

    check_access(path)
    return _check_data(path, objective, column_map, config, split, needed_columns(rewards))


def identity_dataset(name: str, maker: str, description: str = "", languages=("en",)) -> list[dict]:
    from engine.data.identity import identity_rows

    return identity_rows(name, maker, description, languages)


def save_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Save rows as JSONL at a new path (never overwriting)."""
    import json

    from engine.core.files import write_text

    path = Path(path)
    if path.exists():
        raise UserError(f"'{path}' already exists; choose another file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
