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
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import Cancelled, UserError

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
TOKENIZE_BATCH = 512  # rows per call of the tokenizer: batch calls are faster, and cancel is checked between them
REPORT_S = 2.0  # seconds between progress reports while reading and tokenizing
SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".md")
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors put at the start of a file
CSV_FIELD_BYTES = 256 * 2**20  # the largest CSV cell read (csv's own limit is 128 KiB)


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
    yield from file_rows(path)[1]


def file_rows(path: str | os.PathLike, count: bool = False) -> tuple[int | None, Iterator[tuple[int, dict]]]:
    """The file's last row number when it is known without parsing every row, and its (row number, row) pairs.

    The number is exact for Parquet (its metadata) and JSON arrays (parsed whole); for JSONL, with `count`, it is the
    line count (one pass over the bytes; blank lines are not rows but keep their number); otherwise None.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Dataset file '{path}' does not exist; check the path or upload it again.")
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(BOM)
    if not head.strip():
        raise UserError(f"Dataset file '{path.name}' is empty; it needs at least one example.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_total(path), _parquet_rows(path)
    if b"\x00" in head:
        raise UserError(f"Dataset file '{path.name}' looks binary, not text; save it as JSON, JSONL, CSV or Parquet.")
    if suffix in (".csv", ".tsv"):
        return None, _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".txt", ".md"):
        return None, _text_rows(path)
    if head.lstrip()[:1] == b"[":
        rows = _json_array(path)
        return len(rows), _json_array_rows(path, rows)
    if head.lstrip()[:1] == b"{":
        return _line_count(path) if count else None, _jsonl_rows(path)
    raise UserError(f"'{path.name}' is neither JSON nor JSONL; use one of {', '.join(SUFFIXES)}.")


def _decode(path: Path, raw: bytes, row: int) -> str:
    try:
        return raw.decode("utf-8-sig" if row == 1 else "utf-8")  # a BOM (Windows editors write one) is not data
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: row {row} is not UTF-8 text; re-save the file as UTF-8.") from None


def _line_count(path: Path) -> int:
    """Lines of a file, read in 1 MiB blocks (a pass over the bytes, far cheaper than parsing them)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(2**20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _json_value(path: Path, text: str, where: str):
    """json.loads with a sentence for its errors, including nesting deeper than Python's recursion allows."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if where == "the file":
            raise UserError(f"{path.name}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}).") from None
        raise UserError(f"{path.name}: {where} is not valid JSON ({e.msg} at column {e.colno}).") from None
    except RecursionError:
        raise UserError(
            f"{path.name}: {where} nests lists or objects thousands of levels deep; no training example does that, "
            "so the file is probably damaged."
        ) from None


def _jsonl_rows(path: Path):
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(path, raw, lineno)
            if not line.strip():
                continue
            row = _json_value(path, line, f"row {lineno}")
            if not isinstance(row, dict):
                raise UserError(f"{path.name}: row {lineno} is not a JSON object ({{...}}).")
            yield lineno, row


def _json_array(path: Path) -> list:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name}: byte {e.start} is not UTF-8 text; re-save the file as UTF-8.") from None
    rows = _json_value(path, text, "the file")
    if not isinstance(rows, list):
        raise UserError(f"{path.name}: expected a JSON list of examples.")
    return rows


def _json_array_rows(path: Path, rows: list):
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path.name}: row {i} is not a JSON object ({{...}}).")
        yield i, row


def _csv_rows(path: Path, delimiter: str):
    # csv refuses fields over 128 KiB by default; a long document in one cell is a fair training example
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_BYTES))
    with open(path, "rb") as f:
        lines = (_decode(path, raw, n) for n, raw in enumerate(f, 1))
        reader = csv.DictReader(lines, delimiter=delimiter)
        i = 0
        try:
            header = reader.fieldnames or []
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise UserError(f"{path.name}: the header names the column '{twice[0]}' twice; rename one of them.")
            for i, row in enumerate(reader, 1):
                if None in row:
                    raise UserError(f"{path.name}: row {i} has more values than the header has columns.")
                yield i, {k: v for k, v in row.items() if v is not None}
        except csv.Error as e:
            raise UserError(f"{path.name}: row {i + 1} cannot be read as CSV ({e}).") from None


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception:
        raise UserError(f"'{path.name}' is not a readable Parquet file.") from None


def _parquet_total(path: Path) -> int:
    return _parquet_file(path).metadata.num_rows


def _parquet_rows(path: Path):
    n = 0
    for batch in _parquet_file(path).iter_batches(batch_size=1024):
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
    yield from source_rows(source, config, split)[1]


def source_rows(
    source: str, config: str = "", split: str = "train", count: bool = False
) -> tuple[int | None, Iterator[tuple[int, dict]]]:
    """Like iter_source, with the last row number first where it is known (see file_rows, whose `count` it takes;
    hub datasets know their length), for progress reports."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return file_rows(path, count)
    from engine.core.hub_id import HUB_ID

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
    return len(ds), ((i, dict(row)) for i, row in enumerate(ds, 1))


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
    return _encodable(value, key, where)


def raw_text(row: dict, row_no: int, source: str) -> str:
    """The text of a raw-text row (continued pretraining); an empty one is allowed and gives no example."""
    value = row.get("text")
    if not isinstance(value, str):
        raise UserError(f"{source}: row {row_no}: field 'text' should be text, not {type(value).__name__}.")
    return _encodable(value, "text", f"{source}: row {row_no}")


def _encodable(value: str, key: str, where: str) -> str:
    """`value`, unless it holds a lone surrogate (JSON's "\\ud800" escape decodes to one), which no tokenizer or
    file can take: then a sentence naming the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(
            f"{where}: field '{key}' holds an invalid character ({value[e.start]!a}, half of a UTF-16 pair) at "
            f"position {e.start}; remove it or fix the program that wrote the file."
        ) from None
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
        msgs.append({"role": role, "content": _encodable(turn[text_key], f"{key}[{j}].{text_key}", where)})
    return msgs


def to_messages(row: dict, fmt: str, row_no: int, source: str = "dataset", system_prompt: str = "") -> list[dict]:
    """Turn one row of a chat format into a list of {"role", "content"} messages with at least one assistant turn."""
    where = f"{source}: row {row_no}"
    if fmt == "alpaca":
        instruction, output = _text(row, "instruction", where), _text(row, "output", where)
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{where}: field 'input' should be text.")
        _encodable(extra, "input", where)
        user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs.insert(0, {"role": "system", "content": _encodable(row["system"], "system", where)})
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
        if isinstance(row["prompt"], str):
            _encodable(row["prompt"], "prompt", where)
    elif fmt == "preference":
        for key in ("chosen", "rejected"):
            value = row.get(key)
            if isinstance(value, list):
                _turns(value, key, where, sharegpt=False)
            else:
                _text(row, key, where)


# ----------------------------------------------------------------------------------------------- rendering and masks


def ensure_chat_template(tokenizer, name: str = "auto") -> str:
    """Set the chat template (engine.data.templates.apply); returns its description for the log."""
    from engine.data.formats import templates

    return templates.apply(tokenizer, name)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, where: str = "") -> str:
    """The conversation as text through the chat template. A template refusing it (many raise on turns out of
    order) is a UserError naming `where` (e.g. "data.jsonl: row 7")."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # a template is a program of its own: it can fail in any way, always for this input
        roles = ", ".join(m["role"] for m in messages)
        why = str(e).splitlines()[0][:200].rstrip(".") if str(e) else type(e).__name__
        raise UserError(
            f"{where or 'A conversation'}: the chat template cannot render its turns ({roles}): {why}. Check the "
            "turn order or pick another chat template."
        ) from None


def assistant_spans(tokenizer, messages: list[dict], text: str, where: str = "") -> list[tuple[int, int]]:
    """Character spans of `text` (the whole rendered conversation) that belong to assistant turns.

    A span runs from where the template hands over to the assistant to the end of that turn, so the end-of-turn
    token is inside it and the model learns to stop. Templates that render earlier turns differently once later turns
    exist (e.g. dropping reasoning) fall back to finding each reply's text, plus the end-of-turn marker after it.
    """
    from engine.data.templates import END_OF_TURN

    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        # an assistant turn that opens the conversation has no prefix to render: its reply's text is found instead
        before = render(tokenizer, messages[:i], add_generation_prompt=True, where=where) if i else None
        upto = render(tokenizer, messages[: i + 1], where=where)
        if before is not None and text.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
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
    return tokenize_conversations(tokenizer, [messages], max_len, train_on_inputs)[0]


def tokenize_conversations(
    tokenizer, conversations: list[list[dict]], max_len: int, train_on_inputs: bool = False, where: list[str] = ()
) -> list[Example]:
    """tokenize_conversation for many conversations, through one batch call of the (fast) tokenizer. `where` names
    each conversation for errors ("data.jsonl: row 7")."""
    where = list(where) or [""] * len(conversations)
    texts = [render(tokenizer, msgs, where=w) for msgs, w in zip(conversations, where, strict=True)]
    encoded = encode_batch(tokenizer, texts, add_special_tokens=False, offsets=not train_on_inputs)
    out = []
    for k, (msgs, text, (ids, offsets)) in enumerate(zip(conversations, texts, encoded, strict=True)):
        if train_on_inputs:
            labels = list(ids)
        else:
            spans = assistant_spans(tokenizer, msgs, text, where[k])
            learned = [b > a and any(s <= a < e for s, e in spans) for a, b in offsets]
            labels = [t if keep else -100 for t, keep in zip(ids, learned, strict=True)]
        out.append(Example(ids[:max_len], labels[:max_len], len(ids) > max_len, (min(len(ids), max_len),)))
    return out


def encode_batch(tokenizer, texts: list[str], add_special_tokens: bool, offsets: bool = False) -> Iterator[tuple]:
    """(token ids, character offsets or None) of each text, as `tokenizer(texts, ...)` gives them.

    A plain fast tokenizer is called through its Rust tokenizer directly: half the time of the transformers wrapper
    (measured on the tests' tokenizer), and each row's offsets are made only when it is reached, where the wrapper
    makes every row's at once (tens of thousands of live tuples that keep Python's garbage collector busy). A slow
    tokenizer, a subclass with its own encoding, split special tokens or truncation / padding set in tokenizer.json
    go through the wrapper, whose result differs then.
    """
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = (
        backend is not None
        and type(tokenizer)._encode_plus is PreTrainedTokenizerFast._encode_plus
        and backend.truncation is None
        and backend.padding is None
        and bool(getattr(tokenizer, "split_special_tokens", False)) == backend.encode_special_tokens
    )
    if direct:
        for enc in backend.encode_batch(texts, add_special_tokens=add_special_tokens):
            yield enc.ids, enc.offsets if offsets else None
        return
    enc = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets)
    yield from zip(enc["input_ids"], enc["offset_mapping"] if offsets else [None] * len(texts), strict=True)


class Examples(Sequence):
    """Tokenized examples held compactly: every example's token ids and labels in two flat int32 arrays with offsets
    (8 bytes a token, where lists of Python ints take 60 or more). Indexing gives an Example of plain lists."""

    def __init__(self, examples: Iterable[Example] = ()):
        self.ids, self.labels = array("i"), array("i")
        self.starts = array("q", [0])  # example k is ids[starts[k]:starts[k + 1]]
        self.segments, self.segment_starts = array("i"), array("q", [0])
        self.truncated = bytearray()
        for ex in examples:
            self.append(ex)

    def append(self, ex: Example) -> None:
        self.ids.extend(ex.input_ids)
        self.labels.extend(ex.labels)
        self.starts.append(len(self.ids))
        self.segments.extend(ex.segments or (len(ex.input_ids),))
        self.segment_starts.append(len(self.segments))
        self.truncated.append(ex.truncated)

    def __len__(self) -> int:
        return len(self.truncated)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"example {k} of {len(self)}")
        a, b = self.starts[k], self.starts[k + 1]
        segs = tuple(self.segments[self.segment_starts[k] : self.segment_starts[k + 1]])
        return Example(self.ids[a:b].tolist(), self.labels[a:b].tolist(), bool(self.truncated[k]), segs)

    def tokens(self) -> int:
        return len(self.ids)


def pack(examples: Iterable[Example], max_len: int) -> Examples:
    """Concatenate examples, in order, into sequences of at most `max_len` tokens (first fit into the open one).

    Each example keeps its own positions and attention (see Example.segments); its first token takes no loss,
    since it would be predicted from the previous example's last token.
    """
    packed, ids, labels, segs = Examples(), [], [], []
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


class Progress:
    """Counts rows through a long pass over a dataset: says "tokenizing: 120,000 of 3,000,000 rows" through `report`
    every REPORT_S seconds (not per row), and raises Cancelled as soon as `should_stop()` is true."""

    def __init__(self, what: str, total: int | None, report=None, should_stop=None):
        self.what, self.total, self.report, self.should_stop = what, total, report, should_stop
        self.told, self.last = None, time.monotonic()
        self.tell(0)

    def text(self, done: int) -> str:
        return f"{self.what}: {done:,} of {self.total:,} rows" if self.total else f"{self.what}: {done:,} rows"

    def tell(self, done: int) -> None:
        if self.report is not None and done != self.told:
            self.report(self.text(done))
        self.told, self.last = done, time.monotonic()

    def tick(self, done: int) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()
        if time.monotonic() - self.last >= REPORT_S:
            self.tell(done)


def batched_rows(spec, what: str, report=None, should_stop=None) -> Iterator[list[tuple[int, dict]]]:
    """The spec's dataset as lists of TOKENIZE_BATCH (row number, row) pairs, columns mapped, read as a stream with
    progress reports and cancel checks between batches (Progress)."""
    source = Path(spec.data).name
    total, rows = source_rows(spec.data, spec.data_config, spec.data_split, count=True)
    progress = Progress(what, total, report, should_stop)
    last = 0
    while batch := list(itertools.islice(rows, TOKENIZE_BATCH)):
        yield [(i, map_columns(r, spec.column_map, i, source)) for i, r in batch]
        last = batch[-1][0]
        progress.tick(last)
    progress.tell(last)


def load_examples(spec, tokenizer, log=print, report=None, should_stop=None) -> Examples:
    """Read, map, convert, tokenize (and pack) the spec's chat dataset as a stream: rows are tokenized in batches
    and kept only as token ids; `report(text)` hears the progress every few seconds; `should_stop()` true raises
    Cancelled between batches."""
    source = Path(spec.data).name
    fmt = None if spec.data_format == "auto" else spec.data_format
    examples, rows, dropped, truncated = Examples(), 0, 0, 0
    for batch in batched_rows(spec, "tokenizing", report, should_stop):
        conversations, where = [], [f"{source}: row {i}" for i, _ in batch]
        for i, row in batch:
            if spec.data_format == "auto":
                fmt = check_format(row, i, source, fmt)
            conversations.append(to_messages(row, fmt, i, source, spec.system_prompt))
        tokenized = tokenize_conversations(tokenizer, conversations, spec.max_seq_length, spec.train_on_inputs, where)
        for ex in tokenized:
            truncated += ex.truncated
            if all(label == -100 for label in ex.labels):
                dropped += 1
                continue
            examples.append(ex)
        rows += len(batch)
    if not rows:
        raise UserError(f"Dataset '{source}' has no rows.")
    log(
        f"data: {source} is {fmt}, {rows} rows; {truncated} truncated to {spec.max_seq_length} tokens; "
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
            msgs = to_messages(row, fmt, i, name)
            (whole,) = tokenize_conversations(tokenizer, [msgs], 2**31, where=[f"{name}: row {i}"])
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
            out["sample"] = render(tokenizer, msgs, where=f"{name}: row 1")
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
