"""What a run optimizes, and the dataset format each objective needs.

  sft       chat examples (alpaca, sharegpt, chatml); loss on the assistant turns          engine.training.sft
  pretrain  raw text; loss on every token, optional embedding / lm_head training             engine.training.pretrain
  dpo       preference pairs; the reference is the base model with the adapter switched off  engine.training.preference
  orpo      preference pairs; no reference model at all                                     engine.training.preference
  grpo      prompts; replies are sampled and scored by reward presets                         engine.training.grpo

A dataset of the wrong kind is refused before anything loads, with a sentence naming what the objective needs.
"""

import itertools
from pathlib import Path

from engine.core.errors import UserError
from engine.data.formats import CHAT_FORMATS, DETECT_ROWS, check_format, map_columns
from engine.data.reading import iter_source
from engine.data.tokenizing import batched_rows

OBJECTIVES = ("sft", "pretrain", "dpo", "orpo", "grpo")
FORMATS_FOR = {
    "sft": CHAT_FORMATS,
    "pretrain": ("raw",),
    "dpo": ("preference",),
    "orpo": ("preference",),
    "grpo": ("prompt",),
}
NAMES = {
    "sft": "Chat fine-tuning (SFT)",
    "pretrain": "Continued pretraining",
    "dpo": "DPO",
    "orpo": "ORPO",
    "grpo": "GRPO",
}
NEEDS = {
    "sft": "chat examples (Alpaca, ShareGPT or ChatML rows)",
    "pretrain": "raw text (a 'text' column, or a .txt / .md file)",
    "dpo": "preference pairs (prompt, chosen and rejected columns)",
    "orpo": "preference pairs (prompt, chosen and rejected columns)",
    "grpo": "prompts (a 'prompt' column, plus any column a reward compares with, such as 'answer')",
}


def format_problem(objective: str, fmt: str) -> str:
    """An empty string when data of format `fmt` suits `objective`, else the sentence saying what it needs."""
    if fmt in FORMATS_FOR[objective]:
        return ""
    fits = [o for o in OBJECTIVES if fmt in FORMATS_FOR[o]]
    hint = f" It suits {' or '.join(NAMES[o] for o in fits)}." if fits else ""
    return f"{NAMES[objective]} needs {NEEDS[objective]}; this dataset is {fmt}.{hint}"


def read_rows(spec, log=print, report=None, should_stop=None) -> list[dict]:
    """Every row of the spec's dataset, columns mapped, checked to be in one format that suits its objective.
    `report(text)` hears "reading: N of M rows" every few seconds and `should_stop()` true raises Cancelled
    (engine.data.tokenizing.batched_rows), so a large file neither looks hung nor ignores Cancel."""
    source = Path(spec.data).name
    rows, fmt = [], None if spec.data_format == "auto" else spec.data_format
    for batch in batched_rows(spec, "reading", report, should_stop):
        for i, row in batch:
            if spec.data_format == "auto":
                fmt = check_format(row, i, source, fmt, FORMATS_FOR[spec.objective])
            rows.append(row)
    if not rows:
        raise UserError(f"Dataset '{source}' has no rows.")
    problem = format_problem(spec.objective, fmt)
    if problem:
        raise UserError(problem)
    log(f"data: {source} is {fmt}, {len(rows)} rows")
    return rows


def check_data(
    source: str,
    objective: str,
    column_map: dict | None = None,
    config: str = "",
    split: str = "train",
    needs_columns: tuple[str, ...] = (),
    revision: str = "",
) -> str:
    """The format of the dataset's first rows; a UserError when it does not suit `objective` or lacks a column
    in `needs_columns` (e.g. the reference answer a reward reads). `revision`: a hub dataset's commit to read."""
    name = Path(source).name
    fmt, columns = None, set()
    for i, raw in itertools.islice(iter_source(source, config, split, revision), DETECT_ROWS):
        row = map_columns(raw, column_map or {}, i, name)
        fmt = check_format(row, i, name, fmt, FORMATS_FOR[objective])
        columns |= set(row)
    if fmt is None:
        raise UserError(f"Dataset '{name}' has no rows.")
    if objective == "sft" and fmt == "prompt" and "completion" in columns:  # OpenAI's legacy rows, not RL prompts
        raise UserError(
            f"{name} has 'prompt' and 'completion' columns: to fine-tune on them, map them as "
            "prompt=instruction, completion=output."
        )
    problem = format_problem(objective, fmt)
    if problem:
        raise UserError(problem)
    missing = [c for c in needs_columns if c not in columns]
    if missing:
        raise UserError(
            f"A reward compares replies with the column '{missing[0]}', which '{name}' does not have; its columns "
            f"are {sorted(columns)}. Map a column to it or change the reward's field."
        )
    return fmt
