"""Datasets: read a file or hub dataset, detect its format, map columns, turn rows into conversations, and tokenize
them with loss masks (and optionally pack them).

Formats (what `detect_format` returns):
  alpaca      {"instruction", "input"?, "output", "system"?}
  sharegpt    {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  chatml      {"messages": [{"role": "user"|"assistant"|"system", "content"}]}  (OpenAI / ChatML style)
  raw         {"text"}                                          (continued pretraining)
  preference  {"prompt", "chosen", "rejected"}                  (DPO / ORPO; plain text or message lists)
  prompt      {"prompt"}                                        (RL prompts)
Files: JSON (an array), JSONL, CSV, TSV, Parquet, and plain text (.txt/.md: one raw-text row per paragraph).
Every problem with a row names the file, the 1-based row and the field. Files are read as streams where the format
allows, so detecting the format of a file of several GB reads only its first rows; nothing is ever written back.
"""

import csv
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

FORMATS = ("alpaca", "sharegpt", "chatml", "raw", "preference", "prompt")
CHAT_FORMATS = ("alpaca", "sharegpt", "chatml")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
ROLES = ("system", "user", "assistant")
FIELDS = (
    "instruction",
    "input",
    "output",
    "system",
    "conversations",
    "messages",
    "text",
    "prompt",
    "chosen",
    "rejected",
)  # what a column can be mapped to
DETECT_ROWS = 50  # rows read to detect a format: enough to catch a mixed file early, cheap on huge files
TOKEN_STATS_ROWS = 2000  # rows tokenized for the length histogram and truncation count
SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".md")


@dataclass(frozen=True)
class Example:
    """One tokenized training sequence: labels are -100 where no loss is taken. A packed sequence holds several
    examples; `segments` gives each one's length (position ids restart and attention stops at each boundary)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    segments: tuple[int, ...] = ()


# ---------------------------------------------------------------------------------------------------------- reading


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (1-based row number, row) from a dataset file, streaming where the format allows."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Dataset file '{path}' does not exist; check the path or upload it again.")
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.strip():
        raise UserError(f"Dataset file '{path.name}' is empty; it needs at least one example.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    if b"\x00" in head:
        raise UserError(f"Dataset file '{path.name}' looks binary, not text; save it as JSON, JSONL, CSV or Parquet.")
    if suffix in (".csv", ".tsv"):
        yield from _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".txt", ".md"):
        yield from _text_rows(path)
    elif head.lstrip()[:1] == b"[":
        yield from _json_array_rows(path)
    elif head.lstrip()[:1] == b"{":
        yield from _jsonl_rows(path)
    else:
        raise UserError(f"'{path.name}' is neither JSON nor JSONL; use one of {', '.join(SUFFIXES)}.")


def _decode(path: Path, raw: bytes, row: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: row {row} is not UTF-8 text; re-save the file as UTF-8.") from None


def _jsonl_rows(path: Path):
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(path, raw, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path.name}: row {lineno} is not valid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(row, dict):
                raise UserError(f"{path.name}: row {lineno} is not a JSON object ({{...}}).")
            yield lineno, row


def _json_array_rows(path: Path):
    text = path.read_bytes()
    try:
        rows = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name}: byte {e.start} is not UTF-8 text; re-save the file as UTF-8.") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path.name}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}).") from None
    if not isinstance(rows, list):
        raise UserError(f"{path.name}: expected a JSON list of examples.")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path.name}: row {i} is not a JSON object ({{...}}).")
        yield i, row


def _csv_rows(path: Path, delimiter: str):
    with open(path, "rb") as f:
        lines = (_decode(path, raw, n) for n, raw in enumerate(f, 1))
        reader = csv.DictReader(lines, delimiter=delimiter)
        for i, row in enumerate(reader, 1):
            if None in row:
                raise UserError(f"{path.name}: row {i} has more values than the header has columns.")
            yield i, {k: v for k, v in row.items() if v is not None}


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception:
        raise UserError(f"'{path.name}' is not a readable Parquet file.") from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _text_rows(path: Path):
    with open(path, "rb") as f:
        lines = (_decode(path, raw, n) for n, raw in enumerate(f, 1))
        n, para = 0, []
        for line in itertools.chain(lines, [""]):
            if line.strip():
                para.append(line)
            elif para:
                n += 1
                yield n, {"text": "".join(para).strip()}
                para = []


def iter_source(source: str, config: str = "", split: str = "train") -> Iterator[tuple[int, dict]]:
    """Rows of a local file, or of a hub dataset (or local dataset folder) loaded through `datasets`."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        yield from iter_rows(path)
        return
    from engine.loading import HUB_ID

    if not (path.is_dir() or HUB_ID.match(source)):
        raise UserError(f"Dataset file '{source}' does not exist; check the path or upload it again.")
    import datasets

    try:
        ds = datasets.load_dataset(source, config or None, split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            raise UserError(f"Dataset '{source}' has no split '{split}'; pick one it has (often 'train').") from None
        raise UserError(f"Could not load dataset '{source}': {str(e).splitlines()[0][:200]}") from None
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise UserError(
            f"Could not load dataset '{source}' ({type(e).__name__}): check the name, the connection, "
            "or download it on a connected machine."
        ) from None
    for i, row in enumerate(ds, 1):
        yield i, dict(row)


def read_rows(source: str | os.PathLike, limit: int | None = None, **where) -> list[dict]:
    return [row for _, row in itertools.islice(iter_source(str(source), **where), limit)]


# ------------------------------------------------------------------------------------------------ format and mapping


def parse_map(pairs: list[str] | None) -> dict:
    """CLI `--map col=field` pairs to a {column: field} dict."""
    out = {}
    for pair in pairs or []:
        col, sep, fld = pair.partition("=")
        if not sep or not col or not fld:
            raise UserError(f"Column mapping '{pair}' should look like column=field, e.g. question=instruction.")
        out[col] = fld
    return out


def map_columns(row: dict, mapping: dict, row_no: int, source: str) -> dict:
    """Rename the row's columns: {"question": "instruction"} makes a "question" column the instruction."""
    if not mapping:
        return row
    for col, fld in mapping.items():
        if fld not in FIELDS:
            raise UserError(f"Column mapping {col}={fld}: '{fld}' is not a field; use one of {', '.join(FIELDS)}.")
        if col not in row:
            raise UserError(
                f"{source}: row {row_no} has no column '{col}' (mapped to '{fld}'); its columns are {sorted(row)}."
            )
    return {mapping.get(k, k): v for k, v in row.items()}


def row_format(row: dict) -> str | None:
    """The format one row is in, or None when its keys match none."""
    keys = set(row)
    if "messages" in keys:
        return "chatml"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "chosen", "rejected"} <= keys or {"chosen", "rejected"} <= keys:
        return "preference"
    if "text" in keys:
        return "raw"
    if "prompt" in keys:
        return "prompt"
    return None


def check_format(row: dict, row_no: int, source: str, expected: str | None) -> str:
    fmt = row_format(row)
    if fmt is None:
        raise UserError(
            f"{source}: row {row_no} has fields {sorted(row)} which match no known format; use "
            "instruction/output (Alpaca), conversations (ShareGPT) or messages (ChatML), or map your "
            "columns (e.g. question=instruction)."
        )
    if expected and fmt != expected:
        raise UserError(f"{source}: row {row_no} is {fmt} but earlier rows are {expected}; a file holds one format.")
    return fmt


def detect_format(rows: list[dict], source: str = "dataset") -> str:
    """Detect the format from the first rows; rows of different formats in one file are an error."""
    fmt = None
    for i, row in enumerate(rows[:DETECT_ROWS], 1):
        fmt = check_format(row, i, source, fmt)
    return fmt


def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field '{key}' is missing or empty.")
    return value


def _turns(turns, key: str, where: str, sharegpt: bool) -> list[dict]:
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: field '{key}' should be a non-empty list of turns.")
    msgs = []
    for j, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise UserError(f"{where}: turn {j} of '{key}' needs '{role_key}' and '{text_key}'.")
        role = SHAREGPT_ROLES.get(turn[role_key]) if sharegpt else turn[role_key]
        if role not in ROLES:
            names = SHAREGPT_ROLES if sharegpt else ROLES
            raise UserError(f"{where}: turn {j} has unknown role '{turn[role_key]}'; use {', '.join(names)}.")
        if not isinstance(turn[text_key], str) or not turn[text_key].strip():
            raise UserError(f"{where}: turn {j} of '{key}' has an empty '{text_key}'.")
        msgs.append({"role": role, "content": turn[text_key]})
    return msgs


def to_messages(row: dict, fmt: str, row_no: int, source: str = "dataset", system_prompt: str = "") -> list[dict]:
    """Turn one row of a chat format into a list of {"role", "content"} messages with at least one assistant turn."""
    where = f"{source}: row {row_no}"
    if fmt == "alpaca":
        instruction, output = _text(row, "instruction", where), _text(row, "output", where)
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{where}: field 'input' should be text.")
        user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs.insert(0, {"role": "system", "content": row["system"]})
    elif fmt in ("sharegpt", "chatml"):
        key = "conversations" if fmt == "sharegpt" else "messages"
        msgs = _turns(row.get(key), key, where, fmt == "sharegpt")
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to learn.")
    else:
        raise UserError(
            f"{source}: {fmt} data is not chat data; supervised fine-tuning takes alpaca, sharegpt or chatml rows."
        )
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def validate_row(row: dict, fmt: str, row_no: int, source: str) -> None:
    """Raise a UserError naming the row and field when a row of `fmt` is unusable."""
    where = f"{source}: row {row_no}"
    if fmt in CHAT_FORMATS:
        to_messages(row, fmt, row_no, source)
    elif fmt == "raw":
        _text(row, "text", where)
    elif fmt == "prompt":
        if not isinstance(row.get("prompt"), (str, list)) or not row["prompt"]:
            raise UserError(f"{where}: field 'prompt' is missing or empty.")
    elif fmt == "preference":
        for key in ("chosen", "rejected"):
            value = row.get(key)
            if isinstance(value, list):
                _turns(value, key, where, sharegpt=False)
            else:
                _text(row, key, where)


# ----------------------------------------------------------------------------------------------- rendering and masks


def ensure_chat_template(tokenizer, name: str = "auto") -> str:
    """Set the chat template (engine.templates.apply); returns its description for the log."""
    from engine import templates

    return templates.apply(tokenizer, name)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of `text` (the whole rendered conversation) that belong to assistant turns.

    A span runs from where the template hands over to the assistant to the end of that turn, so the end-of-turn
    token is inside it and the model learns to stop. Templates that render earlier turns differently once later turns
    exist (e.g. dropping reasoning) fall back to finding each reply's text, plus the end-of-turn marker after it.
    """
    from engine.templates import END_OF_TURN

    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if text.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            end = len(before) + len(upto[len(before) :].rstrip())  # the separator after end-of-turn is not learned
            spans.append((len(before), end))
            cursor = len(upto)
            continue
        start = text.find(m["content"], cursor)
        if start < 0:
            raise UserError(
                "The chat template changes assistant replies when it renders them; pick another "
                "template (e.g. chatml) for this model."
            )
        end = start + len(m["content"])
        rest = text[end:].lstrip(" \n")
        for marker in (tokenizer.eos_token or "", *END_OF_TURN):
            if marker and rest.startswith(marker):
                end = len(text) - len(rest) + len(marker)
                break
        spans.append((start, end))
        cursor = end
    return spans


def tokenize_conversation(tokenizer, messages: list[dict], max_len: int, train_on_inputs: bool = False) -> Example:
    """Render with the chat template and tokenize; labels keep only assistant tokens unless `train_on_inputs`."""
    text = render(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if train_on_inputs:
        labels = list(ids)
    else:
        spans = assistant_spans(tokenizer, messages, text)
        learned = [b > a and any(s <= a < e for s, e in spans) for a, b in offsets]
        labels = [t if keep else -100 for t, keep in zip(ids, learned, strict=True)]
    truncated = len(ids) > max_len
    return Example(ids[:max_len], labels[:max_len], truncated, (min(len(ids), max_len),))


def pack(examples: list[Example], max_len: int) -> list[Example]:
    """Concatenate examples, in order, into sequences of at most `max_len` tokens (first fit into the open one).

    Each example keeps its own positions and attention (see Example.segments); its first token takes no loss,
    since it would be predicted from the previous example's last token.
    """
    packed, ids, labels, segs = [], [], [], []
    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_len:
            packed.append(Example(ids, labels, False, tuple(segs)))
            ids, labels, segs = [], [], []
        ids = ids + ex.input_ids
        labels = labels + [-100] + ex.labels[1:]
        segs.append(len(ex.input_ids))
    if ids:
        packed.append(Example(ids, labels, False, tuple(segs)))
    return packed


def load_examples(spec, tokenizer, log=print) -> list[Example]:
    """Read, map, convert, tokenize (and pack) the spec's chat dataset."""
    source = Path(spec.data).name
    rows = [
        map_columns(r, spec.column_map, i, source) for i, r in iter_source(spec.data, spec.data_config, spec.data_split)
    ]
    if not rows:
        raise UserError(f"Dataset '{source}' has no rows.")
    fmt = detect_format(rows, source) if spec.data_format == "auto" else spec.data_format
    examples, dropped, truncated = [], 0, 0
    for i, row in enumerate(rows, 1):
        if spec.data_format == "auto":
            check_format(row, i, source, fmt)
        msgs = to_messages(row, fmt, i, source, spec.system_prompt)
        ex = tokenize_conversation(tokenizer, msgs, spec.max_seq_length, spec.train_on_inputs)
        truncated += ex.truncated
        if all(label == -100 for label in ex.labels):
            dropped += 1
            continue
        examples.append(ex)
    log(
        f"data: {source} is {fmt}, {len(rows)} rows; {truncated} truncated to {spec.max_seq_length} tokens; "
        f"{dropped} dropped (no assistant tokens left)"
    )
    if not examples:
        raise UserError(
            f"{source}: no example has an assistant reply within {spec.max_seq_length} tokens; raise "
            "the maximum sequence length."
        )
    if spec.packing:
        n = len(examples)
        examples = pack(examples, spec.max_seq_length)
        log(f"data: packed {n} examples into {len(examples)} sequences of up to {spec.max_seq_length} tokens")
    return examples


# ------------------------------------------------------------------------------------------------------- inspection


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
) -> dict:
    """Everything the Data tab and `python -m engine data inspect` show, validating every row in one streaming pass.

    With a tokenizer: the sample rendered by its chat template with trained/masked runs, a token-length histogram
    and how many rows `max_len` would truncate (over the first TOKEN_STATS_ROWS rows).
    """
    name = Path(source).name
    first, rows, columns, lengths, truncated = None, 0, set(), [], 0
    if tokenizer is not None:
        ensure_chat_template(tokenizer, template)
    for i, raw in iter_source(source, config, split):
        row = map_columns(raw, column_map or {}, i, name)
        if i <= DETECT_ROWS:
            columns |= set(raw)
            if fmt == "auto" or i > 1:
                fmt = check_format(row, i, name, None if i == 1 else fmt)
        validate_row(row, fmt, i, name)
        rows += 1
        if first is None:
            first = row
        if tokenizer is not None and fmt in CHAT_FORMATS and i <= TOKEN_STATS_ROWS:
            whole = tokenize_conversation(tokenizer, to_messages(row, fmt, i, name), max_len=2**31)
            lengths.append(len(whole.input_ids))
            truncated += len(whole.input_ids) > max_len
    if first is None:
        raise UserError(f"Dataset '{name}' has no rows.")
    out = dict(file=str(source), format=fmt, rows=rows, columns=sorted(columns))
    if fmt in CHAT_FORMATS:
        msgs = to_messages(first, fmt, 1, name)
        out["sample_messages"] = msgs
        if tokenizer is None:
            out["sample"] = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        else:
            out["sample"] = render(tokenizer, msgs)
            out["sample_masked"] = masked_segments(tokenizer, tokenize_conversation(tokenizer, msgs, max_len))
            out["token_lengths"] = dict(
                rows_counted=len(lengths),
                max=max(lengths),
                mean=round(sum(lengths) / len(lengths), 1),
                histogram=histogram(lengths),
            )
            out["max_seq_length"] = max_len
            out["truncated_rows"] = truncated
            if truncated:
                out["warning"] = (
                    f"{truncated} of the first {len(lengths)} rows are longer than {max_len} tokens "
                    "and will be cut; raise the maximum sequence length to keep them whole."
                )
    else:
        out["sample"] = json.dumps(first, ensure_ascii=False)
    return out
