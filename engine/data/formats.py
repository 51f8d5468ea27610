"""Dataset formats: detect a row's format, map columns to fields, turn rows into conversations, check each row.

Formats (what `detect_format` returns):
  alpaca      {"instruction", "input"?, "output", "system"?}
  sharegpt    {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}
  chatml      {"messages": [{"role": "user"|"assistant"|"system", "content"}]}  (OpenAI / ChatML style)
  raw         {"text"}                                          (continued pretraining)
  preference  {"prompt", "chosen", "rejected"}                  (DPO / ORPO; plain text or message lists)
              {"conversations", "chosen": {"from", "value"}, "rejected": {...}}   (LLaMA-Factory's ShareGPT pairs)
  prompt      {"prompt"}                                        (RL prompts)
Every problem with a row names the file, the 1-based row and the field. Reading files is engine.data.reading's,
tokenizing engine.data.tokenizing's, the Data tab's summary engine.data.inspection's.
"""

import math
import re

from engine.core.errors import UserError

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


TOOL_ROLES = ("tool", "function", "ipython", "function_call", "observation")  # OpenAI, Llama 3.1, glaive-style ShareGPT


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


def parse_map(pairs: list[str] | None) -> dict:
    """CLI `--map col=field` pairs to a {column: field} dict; one --map may hold several, "q=instruction,a=output",
    as the Data tab's mapping box does."""
    out = {}
    for pair in (p.strip() for given in pairs or [] for p in given.split(",") if p.strip()):
        col, sep, fld = pair.partition("=")
        col, fld = col.strip(), fld.strip()
        if not sep or not col or not fld:
            raise UserError(f"Column mapping '{pair}' should look like column=field, e.g. question=instruction.")
        if col in out and out[col] != fld:
            raise UserError(
                f"Column '{col}' is mapped twice, to '{out[col]}' and to '{fld}'; a column can be one field only."
            )
        out[col] = fld
    return out


def map_columns(row: dict, mapping: dict, row_no: int, source: str) -> dict:
    """Rename the row's columns: {"question": "instruction"} makes a "question" column the instruction."""
    if not mapping:
        return row
    mapped_to: dict = {}
    for col, fld in mapping.items():
        if fld not in FIELDS:
            raise UserError(f"Column mapping {col}={fld}: '{fld}' is not a field; use one of {', '.join(FIELDS)}.")
        if fld in mapped_to:
            raise UserError(
                f"Columns '{mapped_to[fld]}' and '{col}' are both mapped to '{fld}', so one would overwrite the "
                f"other; map only one of them to '{fld}'."
            )
        mapped_to[fld] = col
    for col, fld in mapping.items():
        if col not in row:
            raise UserError(
                f"{source}: row {row_no} has no column '{col}' (mapped to '{fld}'); its columns are {sorted(row)}."
            )
    out, came_from = {}, {}
    for col, value in row.items():
        key = mapping.get(col, col)
        if key in out:  # an unmapped column already named as the field another column is mapped to
            mapped, kept = (col, came_from[key]) if col in mapping else (came_from[key], col)
            raise UserError(
                f"Column '{mapped}' is mapped to '{key}', but {source} also has a column '{kept}', so one would "
                f"overwrite the other; map '{kept}' to another field as well, or drop the mapping of '{mapped}'."
            )
        out[key], came_from[key] = value, col
    return out


def row_format(row: dict, prefer: tuple[str, ...] = ()) -> str | None:
    """The format one row is in, or None when its keys match none. A row with chosen and rejected columns is
    preference data when `prefer` (the formats an objective takes) names it, whatever else it holds: UltraFeedback
    (HuggingFaceH4/ultrafeedback_binarized) keeps the chosen conversation as 'messages' too, which else says chatml."""
    keys = set(row)
    if "preference" in prefer and {"chosen", "rejected"} <= keys:
        return "preference"
    if {"chosen", "rejected"} <= keys and isinstance(row["chosen"], dict):  # LLaMA-Factory's ShareGPT pairs
        return "preference"
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


NEEDED = {  # what a row that matches no format should have, by the formats its objective takes (check_format's prefer)
    "chat": "use instruction/output (Alpaca), conversations (ShareGPT) or messages (ChatML), or map your columns "
    "(e.g. question=instruction)",
    "prompt": "use a 'prompt' column (and the columns your rewards read), or map yours (e.g. question=prompt)",
    "preference": "use prompt, chosen and rejected columns, or map yours (e.g. question=prompt)",
}


def check_format(row: dict, row_no: int, source: str, expected: str | None, prefer: tuple[str, ...] = ()) -> str:
    fmt = row_format(row, prefer)
    if fmt is None:
        if row_format(dict.fromkeys(str(k).lower() for k in row)) is not None:  # "Instruction" from a spreadsheet
            pairs = ", ".join(
                f"{k}={k.lower()}" for k in sorted(map(str, row)) if k != k.lower() and k.lower() in FIELDS
            )
            raise UserError(
                f"{source}: row {row_no} has fields {sorted(row)}; names are case-sensitive: rename them in "
                f"lower case, or map them ({pairs})."
            )
        hint = next((NEEDED[f] for f in prefer if f in NEEDED), NEEDED["chat"])
        raise UserError(f"{source}: row {row_no} has fields {sorted(row)} which match no known format; {hint}.")
    if expected and fmt != expected:
        raise UserError(f"{source}: row {row_no} is {fmt} but earlier rows are {expected}; a file holds one format.")
    return fmt


def detect_format(rows: list[dict], source: str = "dataset") -> str:
    """Detect the format from the first rows; rows of different formats in one file are an error."""
    fmt = None
    for i, row in enumerate(rows[:DETECT_ROWS], 1):
        fmt = check_format(row, i, source, fmt)
    return fmt


def _empty(value) -> bool:
    """None, or NaN: json.dumps writes pandas' empty cells (df.to_dict("records")) as NaN."""
    return value is None or isinstance(value, float) and math.isnan(value)


def _text(row: dict, key: str, where: str, numbers: bool = False) -> str:
    value = None if _empty(row.get(key)) else row.get(key)
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a numeric answer ("output": 4) is the text it reads as
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field '{key}' should be text, not {type(value).__name__}.")
    if not value or not value.strip():
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
        tool = isinstance(turn, dict) and (turn.get("tool_calls") or turn.get("function_call"))  # often no content
        if tool or isinstance(turn, dict) and turn.get(role_key) in TOOL_ROLES:
            raise UserError(
                f"{where}: turn {j} of '{key}' is a tool call or a tool's result, which cannot be trained on yet; "
                "leave out the rows with tool calls."
            )
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise UserError(f"{where}: turn {j} of '{key}' needs '{role_key}' and '{text_key}'.")
        given = turn[role_key] if isinstance(turn[role_key], str) else repr(turn[role_key])  # a list is no role
        role = SHAREGPT_ROLES.get(given) if sharegpt else given
        if role not in ROLES:
            names = SHAREGPT_ROLES if sharegpt else ROLES
            raise UserError(f"{where}: turn {j} has unknown role '{given}'; use {', '.join(names)}.")
        text = turn[text_key]
        if isinstance(text, list) and text and all(isinstance(p, dict) and p.get("type") == "text" for p in text):
            text = "".join(str(p.get("text") or "") for p in text)  # OpenAI's content parts, all of them text
        elif isinstance(text, list):
            raise UserError(
                f"{where}: turn {j} of '{key}' has a '{text_key}' of parts that are not all text "
                "(images or audio); only text can be trained on."
            )
        elif text is not None and not isinstance(text, str):
            raise UserError(f"{where}: turn {j} of '{key}' has a '{text_key}' that is {type(text).__name__}, not text.")
        if (not text or not text.strip()) and role == "system":  # exports often open with an empty system turn
            continue
        if not text or not text.strip():
            raise UserError(f"{where}: turn {j} of '{key}' has an empty '{text_key}'.")
        msgs.append({"role": role, "content": _encodable(text, f"{key}[{j}].{text_key}", where)})
    return msgs


def _history(row: dict, where: str) -> list[dict]:
    """The earlier turns of an alpaca row (LLaMA-Factory's `history`: [question, answer] pairs, oldest first), as
    messages; they were dropped, so a multi-turn row trained its last answer without the conversation before it."""
    history = row.get("history")
    if _empty(history):
        return []
    pairs = history if isinstance(history, list) else None
    if pairs is None or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise UserError(f"{where}: field 'history' should be a list of [question, answer] pairs.")
    msgs = []
    for j, pair in enumerate(pairs):
        for role, text in zip(("user", "assistant"), pair, strict=True):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: pair {j} of 'history' has an empty or non-text {role} turn.")
            msgs.append({"role": role, "content": _encodable(text, f"history[{j}]", where)})
    return msgs


def to_messages(row: dict, fmt: str, row_no: int, source: str = "dataset", system_prompt: str = "") -> list[dict]:
    """Turn one row of a chat format into a list of {"role", "content"} messages with at least one assistant turn."""
    where = f"{source}: row {row_no}"
    if fmt == "alpaca":
        instruction, output = _text(row, "instruction", where, True), _text(row, "output", where, True)
        extra = "" if _empty(row.get("input")) else row.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{where}: field 'input' should be text.")
        _encodable(extra, "input", where)
        user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
        msgs = [*_history(row, where), {"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            msgs.insert(0, {"role": "system", "content": _encodable(row["system"], "system", where)})
    elif fmt in ("sharegpt", "chatml"):
        key = "conversations" if fmt == "sharegpt" else "messages"
        turns = row.get(key)
        # the column's name does not say the turns' keys: Unsloth's standardize_sharegpt keeps 'conversations' with
        # role/content turns, and some ShareGPT exports name the column 'messages'; the first turn's keys do
        first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
        sharegpt = "from" in first if ("from" in first) != ("role" in first) else fmt == "sharegpt"
        msgs = _turns(turns, key, where, sharegpt)
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to learn.")
    else:
        raise UserError(
            f"{source}: {fmt} data is not chat data; supervised fine-tuning takes alpaca, sharegpt or chatml rows."
        )
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


TRANSCRIPT_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def transcript_turns(text) -> list[dict] | None:
    """Anthropic HH-RLHF's chosen or rejected text ("\\n\\nHuman: ...\\n\\nAssistant: ...") as {"role", "content"}
    turns, or None for anything that is not such a transcript."""
    if not isinstance(text, str) or not text.lstrip().startswith("Human:"):
        return None
    parts = TRANSCRIPT_TURN.split("\n\n" + text.lstrip())  # "", "Human", what they said, "Assistant", ...
    return [
        {"role": "user" if who == "Human" else "assistant", "content": said.strip()}
        for who, said in zip(parts[1::2], parts[2::2], strict=True)
    ]


def whole_conversation(value) -> bool:
    """Whether a preference row's chosen or rejected value is a whole conversation: a message list with more than
    replies in it, whose turns before the replies are the prompt."""
    return isinstance(value, list) and any(isinstance(t, dict) and t.get("role") != "assistant" for t in value)


def chat_turns(turns, key: str, where: str) -> list[dict]:
    """A field of {"role", "content"} turns as plain messages, as chat data reads them: OpenAI's content parts become
    their text and an empty system turn is dropped; a UserError naming `where` and `key` for a bad turn."""
    return _turns(turns, key, where, sharegpt=False)


def prompt_turns(row: dict, where: str) -> list[dict]:
    """A prompt row's prompt (GRPO's) as {"role", "content"} turns: text is one user turn. A UserError naming `where`
    (e.g. "data.jsonl: row 7") and the field when it is missing, empty, or turns without role and content."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        return chat_turns(prompt, "prompt", where)
    return [{"role": "user", "content": _text(row, "prompt", where)}]


def sharegpt_pair(row: dict, where: str) -> dict:
    """LLaMA-Factory's ShareGPT preference row ('conversations' turns, then 'chosen' and 'rejected' as one turn each,
    all {"from", "value"}) as prompt/chosen/rejected message lists; any other row as it is."""
    turns, chosen, rejected = row.get("conversations"), row.get("chosen"), row.get("rejected")
    if not (isinstance(turns, list) and isinstance(chosen, dict) and isinstance(rejected, dict)):
        return row
    if not _empty(row.get("prompt")):
        raise UserError(f"{where} has both 'prompt' and 'conversations'; keep one of them as the prompt.")
    first = turns[0] if turns and isinstance(turns[0], dict) else {}
    sharegpt = "role" not in first  # Unsloth's standardize_sharegpt keeps the column with role/content turns
    out = {k: v for k, v in row.items() if k != "conversations"}
    out["prompt"] = _turns(turns, "conversations", where, sharegpt)
    for key in ("chosen", "rejected"):
        out[key] = _turns([row[key]], key, where, sharegpt)
        if out[key][0]["role"] != "assistant":
            raise UserError(f"{where}: '{key}' should be the assistant's reply, not a '{out[key][0]['role']}' turn.")
    return out


def validate_row(row: dict, fmt: str, row_no: int, source: str) -> None:
    """Raise a UserError naming the row and field when a row of `fmt` is unusable."""
    where = f"{source}: row {row_no}"
    if fmt in CHAT_FORMATS:
        to_messages(row, fmt, row_no, source)
    elif fmt == "raw":
        raw_text(row, row_no, source)  # as continued pretraining reads it: an empty text is no example, not an error
    elif fmt == "prompt":
        prompt_turns(row, where)
    elif fmt == "preference":
        row = sharegpt_pair(row, where)
        prompt = None if _empty(row.get("prompt")) else row["prompt"]
        # Anthropic HH-RLHF: no prompt, whole transcripts as text
        replies = {k: (prompt is None and transcript_turns(row.get(k))) or row.get(k) for k in ("chosen", "rejected")}
        for key, value in replies.items():
            if isinstance(value, list):
                _turns(value, key, where, sharegpt=False)
            else:
                _text(row, key, where)
        if isinstance(prompt, list):
            _turns(prompt, "prompt", where, sharegpt=False)
        elif prompt is not None:
            _text(row, "prompt", where)
        elif not all(whole_conversation(value) for value in replies.values()):
            raise UserError(
                f"{where} has no 'prompt'; then 'chosen' and 'rejected' must be whole conversations (message lists) "
                "that share their first turns. Add a prompt column, or map one (e.g. question=prompt)."
            )
