"""What the Data tab shows of a dataset: format, row count, columns, a rendered sample with the trained tokens marked,
a token-length histogram and the rows a maximum length would truncate.
"""

import json
from pathlib import Path

from engine.core.errors import UserError
from engine.data.formats import CHAT_FORMATS, DETECT_ROWS, FORMATS, check_format, map_columns, to_messages, validate_row
from engine.data.reading import iter_source
from engine.data.tokenizing import Example, ensure_chat_template, render, tokenize_conversation, tokenize_conversations

TOKEN_STATS_ROWS = 2000  # rows tokenized for the length histogram and truncation count


def masked_segments(tokenizer, ex: Example) -> list[list]:
    """The sample as [text, trained] runs: what the Data tab highlights."""
    runs: list[list] = []
    for tok, label in zip(ex.input_ids, ex.labels, strict=True):
        trained = label != -100
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tok)
        else:
            runs.append([[tok], trained])
    return [[tokenizer.decode(ids), trained] for ids, trained in runs]


def histogram(lengths: list[int], bins: int = 10) -> list[dict]:
    if not lengths:
        return []
    hi = max(lengths)
    width = max(1, -(-hi // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, n // width)] += 1
    return [{"from": i * width, "to": (i + 1) * width, "rows": c} for i, c in enumerate(counts)]


def inspect(
    source: str,
    fmt: str = "auto",
    tokenizer=None,
    column_map: dict | None = None,
    max_len: int = 1024,
    config: str = "",
    split: str = "train",
    template: str = "auto",
    sample_row: int = 1,
    prefer: tuple[str, ...] = (),
    system_prompt: str = "",
    train_on_inputs: bool = False,
) -> dict:
    """Everything the Data tab and `python -m engine data inspect` show, validating every row in one streaming pass.
    `prefer`: the formats the run's objective takes, which decide the format of rows that could be read either way
    (check_format: UltraFeedback's are preference pairs for DPO and ORPO, chat for SFT), as training reads them.

    With a tokenizer: the sample rendered by its chat template with trained/masked runs, a token-length histogram
    and how many rows `max_len` would truncate (over the first TOKEN_STATS_ROWS rows). The sample is row
    `sample_row` (1-based; the last row when there are fewer), whose number is returned as "sample_row". The
    examples are made as training makes them: `system_prompt` added where a row has no system turn, and the prompts
    trained too with `train_on_inputs`.
    """
    if fmt != "auto" and fmt not in FORMATS:  # a job's data_format is checked by JobSpec; this is the CLI's --format
        raise UserError(f"Unknown data format '{fmt}'; use auto or one of: {', '.join(FORMATS)}.")
    name = Path(source).name
    picked, picked_at, rows, columns, lengths, truncated, replyless = None, 0, 0, set(), [], 0, 0
    sample_row = max(1, int(sample_row))
    if tokenizer is not None:
        ensure_chat_template(tokenizer, template)
    auto = fmt == "auto"
    for i, raw in iter_source(source, config, split):
        row = map_columns(raw, column_map or {}, i, name)
        first = rows == 0  # counted: a JSONL's row number is its line, and its first row need not be on line 1
        if rows < DETECT_ROWS:
            columns |= set(raw)
        if auto or not first and rows < DETECT_ROWS:  # training checks every row's format when it is detected
            fmt = check_format(row, i, name, None if first else fmt, prefer)
        validate_row(row, fmt, i, name)
        rows += 1
        # the example asked for, or the last one when the dataset is shorter; counted, since a JSONL's row number
        # is its line, and blank lines are not examples
        if rows <= sample_row:
            picked, picked_at = row, i
        if tokenizer is not None and fmt in CHAT_FORMATS and rows <= TOKEN_STATS_ROWS:
            msgs = to_messages(row, fmt, i, name, system_prompt)
            (whole,) = tokenize_conversations(tokenizer, [msgs], 2**31, train_on_inputs, where=[f"{name}: row {i}"])
            lengths.append(len(whole.input_ids))
            cut = len(whole.input_ids) > max_len
            truncated += cut
            # cut to max_len, a row whose reply starts past it has nothing to learn: training leaves it out
            replyless += cut and all(label == -100 for label in whole.labels[:max_len])
    if picked is None:
        raise UserError(f"Dataset '{name}' has no rows.")
    sample_row = min(sample_row, rows)
    out = dict(file=str(source), format=fmt, rows=rows, columns=sorted(columns), sample_row=sample_row)
    if fmt in CHAT_FORMATS:
        msgs = to_messages(picked, fmt, picked_at, name, system_prompt)
        out["sample_messages"] = msgs
        if tokenizer is None:
            out["sample"] = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        else:
            out["sample"] = render(tokenizer, msgs, where=f"{name}: row {picked_at}")
            example = tokenize_conversation(tokenizer, msgs, max_len, train_on_inputs)
            out["sample_masked"] = masked_segments(tokenizer, example)
            out["token_lengths"] = dict(
                rows_counted=len(lengths),
                max=max(lengths),
                mean=round(sum(lengths) / len(lengths), 1),
                histogram=histogram(lengths),
            )
            out["max_seq_length"] = max_len
            out["truncated_rows"] = truncated
            if truncated:
                lost = f"; {replyless} of them keep none of their reply and are left out of training"
                out["warning"] = (
                    f"{truncated} of the first {len(lengths)} rows are longer than {max_len} tokens "
                    f"and will be cut{lost if replyless else ''}; raise the maximum sequence length to keep them whole."
                )
    else:
        out["sample"] = json.dumps(picked, ensure_ascii=False)
    return out
