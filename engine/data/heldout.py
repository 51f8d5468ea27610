"""The validation set of a job: rows of the training file held out by `eval_fraction`, or a separate `eval_data` file.

A row is held out when a hash of (seed, row number) falls below the fraction, so the choice is the same on every
resume and in `python -m engine eval` later, needs no count of the rows first (the file is read as a stream), and a
row never moves between the two sets when rows are appended to the file. The share is therefore close to the
fraction, not exact.
"""

import dataclasses
import hashlib

from engine.core.errors import UserError


def held_out(seed: int, row: int, fraction: float) -> bool:
    """Whether row number `row` of a training file belongs to the validation set."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def row_filter(spec, part: str):
    """A `keep(row_number)` predicate for `part` ("train" or "eval") of the spec's data file, or None for all rows.

    With `eval_data` the training file is all training and the eval file all validation."""
    if spec.eval_data or not spec.eval_fraction:
        return None
    want = part == "eval"
    return lambda row: held_out(spec.seed, row, spec.eval_fraction) == want


def eval_spec(spec):
    """The spec whose `data` is the validation set's file (its format detected on its own), or None when the job has
    no validation set; read its rows with `row_filter(spec, "eval")`."""
    if spec.eval_data:
        eval_only = dict(data=spec.eval_data, data_revision=spec.eval_data_revision, data_format="auto")
        return dataclasses.replace(spec, **eval_only, data_split="train")
    if spec.eval_fraction:
        return spec
    return None


def no_rows_error(spec, part: str) -> UserError:
    """The sentence for a split that came out empty."""
    if part == "eval":
        return UserError(
            f"No rows were held out for validation at eval_fraction {spec.eval_fraction}; raise it, or give a "
            "separate file in 'eval_data'."
        )
    return UserError(f"eval_fraction {spec.eval_fraction} held out every row; lower it so some are left to train on.")
