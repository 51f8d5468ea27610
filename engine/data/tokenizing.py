"""Rows to training examples: the chat template (named, or the model's own), rendering, assistant-turn loss masks,
batched tokenizing of a whole dataset with progress reports and cancel, and packing.
"""

import itertools
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import Cancelled, UserError
from engine.data.formats import check_format, map_columns, to_messages
from engine.data.reading import source_rows

TOKENIZE_BATCH = 512  # rows per call of the tokenizer: batch calls are faster, and cancel is checked between them


REPORT_S = 2.0  # seconds between progress reports while reading and tokenizing


@dataclass(frozen=True)
class Example:
    """One tokenized training sequence: labels are -100 where no loss is taken. A packed sequence holds several
    examples; `segments` gives each one's length (position ids restart and attention stops at each boundary)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    segments: tuple[int, ...] = ()


def ensure_chat_template(tokenizer, name: str = "auto") -> str:
    """Set the chat template (engine.data.templates.apply); returns its description for the log."""
    from engine.data import templates

    return templates.apply(tokenizer, name)


def leading_bos(tokenizer) -> str:
    """The BOS text the tokenizer puts before any text it encodes on its own (Llama, Gemma, Mistral), or ""."""
    key = (tokenizer.bos_token, tokenizer.bos_token_id)
    known = getattr(tokenizer, "_tunesmith_bos", None)  # asked once per row and turn: the answer is kept
    if known is None or known[0] != key:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"] if None not in key else []
        known = (key, key[0] if probe and probe[0] == key[1] else "")
        tokenizer._tunesmith_bos = known
    return known[1]


def bos_first_template(tokenizer) -> str | None:
    """The tokenizer's chat template, made to put the tokenizer's BOS first where it writes none, as render() does;
    None where the tokenizer adds no BOS (Qwen) or has no template. For TRL's trainers, which tokenize conversations
    through apply_chat_template(tokenize=True), which adds no BOS: DPO after SFT would train on prompts without the
    BOS that SFT, the chat and llama.cpp put first. The `{{ '' }}` keep trim_blocks and lstrip_blocks from eating
    whitespace at the template's ends."""
    template = tokenizer.chat_template
    if not leading_bos(tokenizer) or not isinstance(template, str):
        return None
    return (
        "{% set tunesmith_text %}{{ '' }}" + template + "{{ '' }}{% endset %}"
        "{% if not tunesmith_text.startswith(bos_token) %}{{ bos_token }}{% endif %}{{ tunesmith_text }}"
    )


@contextmanager
def bos_first(tokenizer) -> Iterator[None]:
    """The tokenizer with bos_first_template's chat template inside the block, its own again after it, so that what
    the run saves is unchanged (TRL's DPO trainer tokenizes its dataset when made)."""
    template, own = bos_first_template(tokenizer), tokenizer.chat_template
    if template is not None:
        tokenizer.chat_template = template
    try:
        yield
    finally:
        tokenizer.chat_template = own


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, where: str = "") -> str:
    """The conversation as text through the chat template, after the tokenizer's BOS where the template writes none:
    a base model given ChatML (Gemma, Llama 3) trained without the BOS it always saw, and which llama.cpp and Ollama
    put before every prompt of its GGUF. A template refusing the conversation (many raise on turns out of order) is a
    UserError naming `where` (e.g. "data.jsonl: row 7")."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # a template is a program of its own: it can fail in any way, always for this input
        roles = ", ".join(m["role"] for m in messages)
        why = str(e).splitlines()[0][:200].rstrip(".") if str(e) else type(e).__name__
        raise UserError(
            f"{where or 'A conversation'}: the chat template cannot render its turns ({roles}): {why}. Check the "
            "turn order or pick another chat template."
        ) from None
    bos = leading_bos(tokenizer)
    return text if text.startswith(bos) else bos + text


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
        if before is not None and text.startswith(before):  # the reply is after the turns before it, not in them
            cursor = max(cursor, len(before))
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


def length_notes(
    rows: int, truncated: int, cut_out: int, replyless: int, max_len: int, what: str = "examples"
) -> list[str]:
    """The sentences on what training does not see whole: examples cut to `max_len` tokens (`cut_out` of them with
    none of their reply left, so left out) and `replyless` ones with no reply to learn at all; none when neither.
    `what` names the rows ("validation examples", "preference pairs")."""
    said = []
    if truncated:
        left_out = f"; {cut_out} of them kept none of their reply and were left out" if cut_out else ""
        said.append(
            f"{truncated} of {rows} {what} were longer than max_seq_length {max_len} and were cut to their first "
            f"{max_len} tokens{left_out}. Raise max_seq_length to keep them whole."
        )
    if replyless:
        said.append(f"{replyless} of {rows} {what} have no assistant reply to learn and were left out.")
    return said


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


def batched_rows(
    spec, what: str, report=None, should_stop=None, part: str = "train"
) -> Iterator[list[tuple[int, dict]]]:
    """The spec's dataset as lists of up to TOKENIZE_BATCH (row number, row) pairs, columns mapped, read as a stream
    with progress reports and cancel checks between batches (Progress). `part` "eval" gives the rows held out for
    validation (engine.data.heldout), "train" the others."""
    from engine.data.heldout import row_filter

    source = Path(spec.data).name
    total, rows = source_rows(spec.data, spec.data_config, spec.data_split, count=True, revision=spec.data_revision)
    progress = Progress(what, total, report, should_stop)
    keep = row_filter(spec, part)
    last = 0
    while batch := list(itertools.islice(rows, TOKENIZE_BATCH)):
        kept = [(i, r) for i, r in batch if keep is None or keep(i)]
        if kept:
            yield [(i, map_columns(r, spec.column_map, i, source)) for i, r in kept]
        last = batch[-1][0]
        progress.tick(last)
    progress.tell(last)


def no_rows(spec, part: str) -> UserError:
    """The sentence for a dataset (or its held-out part) without rows."""
    from engine.data.heldout import no_rows_error, row_filter

    if row_filter(spec, part) is not None:
        return no_rows_error(spec, part)
    return UserError(f"Dataset '{Path(spec.data).name}' has no rows.")


def load_examples(
    spec, tokenizer, log=print, report=None, should_stop=None, part: str = "train", note=None
) -> Examples:
    """Read, map, convert, tokenize (and pack) the spec's chat dataset as a stream: rows are tokenized in batches
    and kept only as token ids; `report(text)` hears the progress every few seconds; `should_stop()` true raises
    Cancelled between batches. `part` picks the training or the held-out rows (batched_rows). `note(text)` hears
    the sentence on examples cut to max_seq_length or left out (length_notes; "validation examples" for the held-out
    part), for the run's status."""
    source = Path(spec.data).name
    fmt = None if spec.data_format == "auto" else spec.data_format
    examples, rows, dropped, truncated, cut_out = Examples(), 0, 0, 0, 0
    for batch in batched_rows(spec, "tokenizing", report, should_stop, part):
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
                cut_out += ex.truncated
                continue
            examples.append(ex)
        rows += len(batch)
    if not rows:
        raise no_rows(spec, part)
    log(
        f"data: {source} is {fmt}, {rows} rows; {truncated} truncated to {spec.max_seq_length} tokens; "
        f"{dropped} dropped (no assistant tokens left)"
    )
    what = "validation examples" if part == "eval" else "examples"
    for said in length_notes(rows, truncated, cut_out, dropped - cut_out, spec.max_seq_length, what):
        if note is not None:
            note(said)
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
