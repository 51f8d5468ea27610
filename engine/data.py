"""Datasets: read a file, detect its format, turn each row into a conversation, and tokenize it with loss masks.

Formats (what `detect_format` returns):
  alpaca      {"instruction", "input"?, "output", "system"?}
  sharegpt    {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  chatml      {"messages": [{"role": "user"|"assistant"|"system", "content"}]}  (OpenAI / ChatML style)
  raw         {"text"}                                          (continued pretraining)
  preference  {"prompt", "chosen", "rejected"}                  (DPO / ORPO)
  prompt      {"prompt"}                                        (RL prompts)
The first three train as chat (SFT) here. Every problem with a row names the file, the 1-based row and the field.
"""

import json
import os
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
DETECT_ROWS = 50  # rows read to detect a format: enough to see a mixed file's first deviations, cheap on huge files

# Used when a tokenizer has no chat template of its own (a base model). It uses only tokens the model already has
# (EOS ends each reply), so no embedding row has to be learned; saved with the run so chat and export agree.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n"
    "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass(frozen=True)
class Example:
    """One tokenized training example: labels are -100 where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Read rows from a JSON array or JSONL file, streaming JSONL so `limit` rows never load the whole file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Dataset file '{path}' does not exist; check the path or upload it again.")
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.strip():
        raise UserError(f"Dataset file '{path.name}' is empty; it needs at least one example.")
    if b"\x00" in head:
        raise UserError(f"Dataset file '{path.name}' looks binary, not text; save it as JSON or JSONL.")
    first = head.lstrip()[:1]
    if first == b"[":
        try:
            rows = json.loads(_read_text(path))
        except json.JSONDecodeError as e:
            raise UserError(f"{path.name}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}).") from None
        _check_objects(path, rows)
        return rows[:limit] if limit else rows
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path.name}: row {lineno} is not UTF-8 text; re-save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path.name}: row {lineno} is not valid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(rows[-1], dict):
                raise UserError(f"{path.name}: row {lineno} is not a JSON object ({{...}}).")
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise UserError(f"Dataset file '{path.name}' has no rows.")
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name}: byte {e.start} is not UTF-8 text; re-save the file as UTF-8.") from None


def _check_objects(path: Path, rows) -> None:
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path.name}: expected a non-empty JSON list of examples.")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path.name}: row {i} is not a JSON object ({{...}}).")


def row_format(row: dict) -> str | None:
    """The format one row is in, or None when its keys match none."""
    keys = set(row)
    if "messages" in keys:
        return "chatml"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if "text" in keys:
        return "raw"
    if "prompt" in keys:
        return "prompt"
    return None


def detect_format(rows: list[dict], source: str = "dataset") -> str:
    """Detect the format from the first rows; rows of different formats in one file are an error."""
    seen = None
    for i, row in enumerate(rows[:DETECT_ROWS], 1):
        fmt = row_format(row)
        if fmt is None:
            raise UserError(
                f"{source}: row {i} has fields {sorted(row)} which match no known format; use "
                "instruction/output (Alpaca), conversations (ShareGPT) or messages (ChatML)."
            )
        if seen and fmt != seen:
            raise UserError(f"{source}: row {i} is {fmt} but earlier rows are {seen}; a file holds one format.")
        seen = fmt
    return seen


def to_messages(row: dict, fmt: str, row_no: int, source: str = "dataset", system_prompt: str = "") -> list[dict]:
    """Turn one row of a chat format into a list of {"role", "content"} messages ending with an assistant turn."""
    where = f"{source}: row {row_no}"
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UserError(f"{where}: field '{key}' is missing or empty.")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{where}: field 'input' should be text.")
        user = row["instruction"] if not extra.strip() else f"{row['instruction']}\n\n{extra}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs.insert(0, {"role": "system", "content": row["system"]})
    elif fmt in ("sharegpt", "chatml"):
        key, role_key, text_key = (
            ("conversations", "from", "value") if fmt == "sharegpt" else ("messages", "role", "content")
        )
        turns = row.get(key)
        if not isinstance(turns, list) or not turns:
            raise UserError(f"{where}: field '{key}' should be a non-empty list of turns.")
        msgs = []
        for j, turn in enumerate(turns, 1):
            if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
                raise UserError(f"{where}: turn {j} of '{key}' needs '{role_key}' and '{text_key}'.")
            role = SHAREGPT_ROLES.get(turn[role_key]) if fmt == "sharegpt" else turn[role_key]
            if role not in ROLES:
                raise UserError(
                    f"{where}: turn {j} has unknown role '{turn[role_key]}'; use "
                    f"{', '.join(SHAREGPT_ROLES if fmt == 'sharegpt' else ROLES)}."
                )
            if not isinstance(turn[text_key], str) or not turn[text_key].strip():
                raise UserError(f"{where}: turn {j} has an empty '{text_key}'.")
            msgs.append({"role": role, "content": turn[text_key]})
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to learn.")
    else:
        raise UserError(f"{source}: {fmt} data is not chat data; this method trains on alpaca, sharegpt or chatml.")
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def ensure_chat_template(tokenizer) -> str:
    """Give a tokenizer without a chat template the plain one; returns the template's name for the log."""
    if getattr(tokenizer, "chat_template", None):
        return "the tokenizer's own"
    if not tokenizer.eos_token:
        raise UserError(
            "This model's tokenizer has neither a chat template nor an end-of-sequence token, so a reply "
            "could never end; pick an instruct model or one with an EOS token."
        )
    tokenizer.chat_template = PLAIN_TEMPLATE
    return "plain ### User / ### Assistant (the model has none of its own)"


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of `text` (the whole rendered conversation) that belong to assistant turns.

    A span runs from where the template hands over to the assistant to the end of that turn, so the end-of-turn
    token is inside it and the model learns to stop. Templates that render earlier turns differently once later turns
    exist (e.g. dropping reasoning) fall back to finding each reply's text, plus the end-of-turn marker after it.
    """
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
        eos = tokenizer.eos_token or ""
        rest = text[end:]
        if eos and rest.lstrip(" \n").startswith(eos):
            end += len(rest) - len(rest.lstrip(" \n")) + len(eos)
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
    return Example(ids[:max_len], labels[:max_len], truncated)


def load_chat_examples(
    path: str,
    tokenizer,
    max_len: int,
    fmt: str = "auto",
    system_prompt: str = "",
    train_on_inputs: bool = False,
    log=print,
) -> list[Example]:
    """Read, convert and tokenize a chat dataset; rows with nothing left to learn after truncation are dropped."""
    source = Path(path).name
    rows = read_rows(path)
    fmt = detect_format(rows, source) if fmt == "auto" else fmt
    examples, dropped, truncated = [], 0, 0
    for i, row in enumerate(rows, 1):
        ex = tokenize_conversation(tokenizer, to_messages(row, fmt, i, source, system_prompt), max_len, train_on_inputs)
        truncated += ex.truncated
        if all(label == -100 for label in ex.labels):
            dropped += 1
            continue
        examples.append(ex)
    log(
        f"data: {source} is {fmt}, {len(rows)} rows; {truncated} truncated to {max_len} tokens; "
        f"{dropped} dropped (no assistant tokens left)"
    )
    if not examples:
        raise UserError(
            f"{source}: no example has an assistant reply within {max_len} tokens; raise the maximum sequence length."
        )
    return examples


def inspect(path: str, fmt: str = "auto", tokenizer=None) -> dict:
    """Summary of a dataset file for the Data tab and `python -m engine data inspect`."""
    source = Path(path).name
    rows = read_rows(path)
    fmt = detect_format(rows, source) if fmt == "auto" else fmt
    columns = sorted({k for row in rows[:DETECT_ROWS] for k in row})
    out = dict(file=str(path), format=fmt, rows=len(rows), columns=columns)
    if fmt in CHAT_FORMATS:
        for i, row in enumerate(rows, 1):
            to_messages(row, fmt, i, source)  # validates every row: one sentence for the first bad one
        msgs = to_messages(rows[0], fmt, 1, source)
        out["sample_messages"] = msgs
        if tokenizer is None:
            out["sample"] = _render_chatml(msgs)
        else:
            ensure_chat_template(tokenizer)
            out["sample"] = render(tokenizer, msgs)
    else:
        out["sample"] = json.dumps(rows[0], ensure_ascii=False)
    return out


def _render_chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
