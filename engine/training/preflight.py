"""Checks a job before a run folder is made, so bad input is one sentence at once (the CLI exits 2) instead of a
failed run found after the model has loaded: the model folder and its config, the dataset's first rows, and the GPUs
the job asks for.

The settings themselves are checked by JobSpec; rows past the first DETECT_ROWS are checked as the run reads them.
"""

import itertools
import json
import os
from pathlib import Path

from engine.core.errors import UserError
from engine.data.formats import DETECT_ROWS, map_columns, validate_row
from engine.data.reading import iter_source
from engine.spec.objectives import check_data, format_problem


def check_job(spec) -> None:
    """Raise a UserError when the spec's model or the first rows of its dataset cannot work."""
    from engine.models.prequantized import check_trainable

    config = check_model(spec.model)
    if config is not None:
        check_trainable(spec.model, config, spec.method)
    check_first_rows(spec)
    if spec.gpus > 1:  # more GPUs than are visible, or an objective that trains on one
        from engine.training.launch import plan_launch

        plan_launch(spec)
    if spec.eval_data:  # the validation file's first rows too (engine.data.heldout)
        from engine.data.heldout import eval_spec

        check_first_rows(eval_spec(spec))


def check_model(model: str) -> dict | None:
    """A local model folder must hold a readable config.json and safetensors weights; a hub id is checked when it is
    fetched (that needs the network). Returns a folder's config (None for a hub id)."""
    from engine.core.hub_id import HUB_ID
    from engine.models.loading import resolve_model

    path = Path(os.path.expanduser(model))
    if not path.is_dir() and HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return None
    folder = resolve_model(model)  # a folder only: the sentence for a missing one, no config, pickled weights
    try:
        config = json.loads((folder / "config.json").read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"'{folder / 'config.json'}' is not valid JSON; the model folder is damaged.") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise UserError(
            f"'{folder / 'config.json'}' names no model_type, so it is not a transformers model configuration."
        )
    return config


def check_first_rows(spec) -> str:
    """The dataset's format, after checking that its first rows suit the objective and are complete."""
    from engine.spec.rewards import needed_columns

    if spec.data_format == "auto":
        needs = needed_columns(spec.rewards)
        fmt = check_data(
            spec.data, spec.objective, spec.column_map, spec.data_config, spec.data_split, needs, spec.data_revision
        )
    elif problem := format_problem(spec.objective, spec.data_format):
        raise UserError(problem)
    else:
        fmt = spec.data_format
    name = Path(spec.data).name
    rows = iter_source(spec.data, spec.data_config, spec.data_split, spec.data_revision)
    for i, raw in itertools.islice(rows, DETECT_ROWS):
        validate_row(map_columns(raw, spec.column_map, i, name), fmt, i, name)
    return fmt
