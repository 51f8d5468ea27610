"""Dataset reading, format detection, conversion, and assistant-only loss masks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import learned_runs

from engine.core.errors import UserError
from engine.data import formats, inspection, reading, tokenizing

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    from tiny import make_tokenizer

    return make_tokenizer()


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, "sharegpt"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "chatml"),
        ({"text": "once upon a time"}, "raw"),
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
        ({"prompt": "a"}, "prompt"),
    ],
)
def test_detects_each_format(tmp_path, row, fmt):
    path = write(tmp_path, "d.jsonl", [row, row])
    assert inspection.inspect(str(path))["format"] == fmt


def test_alpaca_renders_with_template_and_masks_all_but_the_reply(tok):
    msgs = formats.to_messages({"instruction": "Who are you?", "input": "", "output": "I am Nova."}, "alpaca", 1)
    ex = tokenizing.tokenize_conversation(tok, msgs, 256)
    text = "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Nova.<|im_end|>\n"
    assert tok.decode(ex.input_ids) == text
    learned = tok.decode([t for t in ex.labels if t != -100])
    assert learned == "I am Nova.<|im_end|>"  # the reply and its end-of-turn token, nothing else


def test_every_assistant_turn_of_a_conversation_is_learned(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Thank you!"},
        {"role": "assistant", "content": "You are welcome."},
    ]
    ex = tokenizing.tokenize_conversation(tok, msgs, 256)
    assert learned_runs(tok, ex) == ["Hi there<|im_end|>", "You are welcome.<|im_end|>"]


def test_train_on_inputs_learns_everything(tok):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ex = tokenizing.tokenize_conversation(tok, msgs, 256, train_on_inputs=True)
    assert ex.labels == ex.input_ids


def test_truncation_is_reported(tok):
    msgs = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "b"}]
    ex = tokenizing.tokenize_conversation(tok, msgs, 16)
    assert ex.truncated and len(ex.input_ids) == 16


def test_base_model_without_template_gets_the_plain_one_ending_in_eos():
    from tiny import make_tokenizer

    tok = make_tokenizer(chat_template=None)
    assert "plain" in tokenizing.ensure_chat_template(tok)
    ex = tokenizing.tokenize_conversation(
        tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], 64
    )
    assert tok.decode([t for t in ex.labels if t != -100]) == "Hello<|im_end|>"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', "d.jsonl: row 2 is not valid JSON"),
        (
            '{"instruction": "a", "output": "b"}\n{"messages": [{"role": "user", "content": "a"}]}\n',
            "d.jsonl: row 2 is chatml but earlier rows are alpaca",
        ),
        (
            '{"instruction": "a", "output": "b"}\n{"instruction": "", "output": "b"}\n',
            "d.jsonl: row 2: field 'instruction' is missing or empty",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}\n',
            "d.jsonl: row 1: turn 2 has unknown role 'robot'",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}]}\n',
            "d.jsonl: row 1: the conversation has no assistant turn",
        ),
        (
            '{"conversations": [{"from": ["human"], "value": "a"}, {"from": "gpt", "value": "b"}]}\n',
            "d.jsonl: row 1: turn 1 has unknown role",  # it was a TypeError (unhashable list)
        ),
        ('{"question": "a", "answer": "b"}\n', "d.jsonl: row 1 has fields \\['answer', 'question'\\]"),
        (
            '{"Instruction": "a", "Output": "b"}\n',
            "case-sensitive: rename them in lower case, or map them \\(Instruction=instruction, Output=output\\)",
        ),
        ("", "is empty"),
        ("[1, 2]", "row 1 is not a JSON object"),
        ('{"instruction": ["a"], "output": "b"}\n', "d.jsonl: row 1: field 'instruction' should be text, not list"),
        (  # valid JSON, pretty-printed: it was "row 1 is not valid JSON (Expecting property name ...)"
            json.dumps({"data": [{"instruction": "a", "output": "b"}]}, indent=2),
            "d.jsonl holds JSON objects spread over several lines; put one example per line",
        ),
    ],
)
def test_bad_files_name_file_row_and_field(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(UserError, match=message):
        inspection.inspect(str(path))
    assert path.read_bytes() == before  # nothing the user gave us is modified


def test_an_unknown_format_name_is_refused(tmp_path):
    """`data inspect --format nope` used to say "row 2 is alpaca but earlier rows are nope"."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n' * 2)
    with pytest.raises(UserError, match="^Unknown data format 'nope'; use auto or one of: alpaca, sharegpt, chatml"):
        inspection.inspect(str(path), "nope")


def test_a_numeric_alpaca_answer_is_its_text(tmp_path):
    """{"output": 4} (a maths dataset) used to be refused as "missing or empty"."""
    path = tmp_path / "maths.jsonl"
    path.write_text('{"instruction": "What is 2+2?", "output": 4}\n{"instruction": "Half of 5?", "output": 2.5}\n')
    info = inspection.inspect(str(path))
    assert info["sample_messages"][-1] == {"role": "assistant", "content": "4"}
    assert formats.to_messages(reading.read_rows(path)[1], "alpaca", 2)[-1]["content"] == "2.5"


def test_an_empty_pandas_cell_written_as_nan_is_empty(tmp_path):
    """json.dumps(df.to_dict("records")) writes pandas' empty cells as NaN: an empty 'input' was refused as "field
    'input' should be text", and an empty 'output' trained the model to answer "nan"."""
    path = tmp_path / "pandas.jsonl"
    path.write_text('{"instruction": "Who are you?", "input": NaN, "output": "I am Nova."}\n')
    assert inspection.inspect(str(path))["sample_messages"][0] == {"role": "user", "content": "Who are you?"}
    path.write_text('{"instruction": "Who are you?", "input": "", "output": NaN}\n')
    with pytest.raises(UserError, match="pandas.jsonl: row 1: field 'output' is missing or empty"):
        inspection.inspect(str(path))


def test_openai_content_parts_are_read_as_their_text(tmp_path):
    """ "content": [{"type": "text", "text": ...}] (OpenAI's parts) was refused as an empty 'content'."""
    path = tmp_path / "parts.jsonl"
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "Who are "}, {"type": "text", "text": "you?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Nova."}]},
    ]
    path.write_text(json.dumps({"messages": turns}) + "\n")
    assert inspection.inspect(str(path))["sample_messages"] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Nova."},
    ]
    turns[0]["content"].insert(0, {"type": "image_url", "image_url": {"url": "cat.png"}})
    path.write_text(json.dumps({"messages": turns}) + "\n")
    with pytest.raises(UserError, match="row 1: turn 1 of 'messages' has a 'content' of parts that are not all text"):
        inspection.inspect(str(path))


def test_an_empty_system_turn_is_no_system_turn(tmp_path):
    """ShareGPT and OpenAI exports often open with {"from": "system", "value": ""}: every such row was refused with
    "turn 1 of 'conversations' has an empty 'value'", though an empty system prompt is none at all."""
    path = tmp_path / "sg.jsonl"
    turns = [{"from": "system", "value": ""}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    path.write_text(json.dumps({"conversations": turns}) + "\n")
    assert inspection.inspect(str(path))["sample_messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    turns[2]["value"] = " "  # an empty reply is still refused
    path.write_text(json.dumps({"conversations": turns}) + "\n")
    with pytest.raises(UserError, match="row 1: turn 3 of 'conversations' has an empty 'value'"):
        inspection.inspect(str(path))


def test_tool_calls_are_named_as_such(tmp_path):
    """OpenAI's function-calling rows (an assistant turn of tool_calls with "content": null, then a "tool" turn) were
    refused with "turn 2 of 'messages' has an empty 'content'", which filling in no content could fix."""
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    said = "is a tool call or a tool's result, which cannot be trained on yet; leave out the rows with tool calls"
    for n, turn in (
        (2, {"role": "assistant", "content": None, "tool_calls": [call]}),
        (2, {"role": "assistant", "tool_calls": [call]}),
        (3, None),
    ):
        turns = [
            {"role": "user", "content": "Weather?"},
            turn or {"role": "assistant", "content": "Let me look."},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ]
        path = tmp_path / "tools.jsonl"
        path.write_text(json.dumps({"messages": turns}) + "\n")
        with pytest.raises(UserError, match=f"tools.jsonl: row 1: turn {n} of 'messages' {said}"):
            inspection.inspect(str(path))


def test_non_utf8_and_binary_files(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"instruction": "caf\xe9", "output": "b"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="row 1 is not UTF-8"):
        inspection.inspect(str(latin))
    excel = tmp_path / "excel.csv"  # Excel's "CSV" on Windows is cp1252; its first row is the file's second line
    excel.write_bytes("instruction,output\nWho?,Nov\xe9\n".encode("cp1252"))
    with pytest.raises(UserError, match="excel.csv: line 2 is not UTF-8 text; re-save the file as UTF-8"):
        inspection.inspect(str(excel))
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(b"\x00\x01\x02PK")
    with pytest.raises(UserError, match="looks binary"):
        inspection.inspect(str(binary))
    notepad = tmp_path / "unicode.jsonl"  # Windows Notepad's "Unicode"
    notepad.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-16")
    with pytest.raises(UserError, match="'unicode.jsonl' is UTF-16 text; save it again as UTF-8"):
        inspection.inspect(str(notepad))


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_named(tmp_path, encoding):
    """UTF-16 without a BOM (what a program writing "utf-16-le" saves) was "looks binary, not text; save it as JSON,
    JSONL, CSV or Parquet", of a file that is JSON already."""
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"instruction": "a", "output": "b"}\n'.encode(encoding))
    with pytest.raises(UserError, match="'d.jsonl' is UTF-16 text; save it again as UTF-8"):
        inspection.inspect(str(path))


def test_cli_data_inspect(tmp_path):
    good = write(
        tmp_path, "g.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    )
    out = subprocess.run(
        [sys.executable, "-m", "engine", "data", "inspect", str(good)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["format"] == "sharegpt" and info["rows"] == 1 and info["columns"] == ["conversations"]
    assert "<|im_start|>assistant\nHello<|im_end|>" in info["sample"]
    bad = tmp_path / "b.jsonl"
    bad.write_text("{nope}\n")
    out = subprocess.run(
        [sys.executable, "-m", "engine", "data", "inspect", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: b.jsonl: row 1 is not valid JSON (Expecting property name enclosed in double quotes at column 2)."
    ]


def test_identity_generator_covers_languages():
    from engine.data.identity import identity_rows

    rows = identity_rows("Nova", "Tunesmith Labs", languages=("en", "zh", "ru"))
    assert len(rows) >= 150
    assert all("Nova" in r["output"] and "Tunesmith Labs" in r["output"] for r in rows)
    assert any("你" in r["instruction"] for r in rows) and any("Кто" in r["instruction"] for r in rows)
    with pytest.raises(UserError):
        identity_rows("", "x")


# --- issue 23: large files stream, odd input gets a sentence, Windows files and shared exports work -------------------

STREAM_SCRIPT = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from tiny import make_tokenizer
from engine.training import pretrain
from engine.spec.jobspec import JobSpec
tok = make_tokenizer()
def status_kb(key):  # VmRSS now, VmHWM the peak since exec (ru_maxrss would carry the forking parent's peak)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
# a first pass over a few rows brings in the code and libraries it runs, so the figure below is the data's alone
pretrain.load_text_examples(JobSpec(model="m", data={small!r}, objective="pretrain"), tok, lambda m: None)
before = status_kb("VmRSS")
reports = []
spec = JobSpec(model="m", data={data!r}, objective="pretrain", max_seq_length=64)
ex = pretrain.load_text_examples(spec, tok, lambda m: None, reports.append)
grown = status_kb("VmHWM") - before
print(json.dumps(dict(grown_kb=grown, reports=reports, examples=len(ex), tokens=ex.tokens())))
"""


def test_a_large_file_streams_with_progress_and_bounded_memory(tmp_path):
    """100,000 rows: progress reports with the row total, and the peak memory grows by about the token ids' own
    size (8 bytes a token) rather than by the rows and lists of Python ints (200 MB for 200,000 rows before)."""
    rows = 100_000
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"text": f"Row {i} of the file."}) + "\n")
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"text": f"Row {i} of the file."}) + "\n" for i in range(600)))
    script = STREAM_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), data=str(path), small=str(small))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["examples"] == rows
    assert res["reports"][0] == "tokenizing: 0 of 100,000 rows"
    assert res["reports"][-1] == "tokenizing: 100,000 of 100,000 rows"
    # the ids and labels (8 bytes a token, twice over for the arrays' growth) and per-row offsets, plus 24 MiB for
    # one batch of rows and the allocator
    bound_kb = (16 * res["tokens"] + 64 * rows) // 1024 + 24 * 1024
    assert res["grown_kb"] < bound_kb, (res["grown_kb"], bound_kb, path.stat().st_size)


def test_tokenizing_reports_every_few_seconds_and_stops_on_cancel(tmp_path, tok, monkeypatch):
    from engine.core.errors import Cancelled
    from engine.spec.jobspec import JobSpec

    path = write(tmp_path, "d.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3000)])
    spec = JobSpec(model="m", data=str(path))
    monkeypatch.setattr(tokenizing, "TOKENIZE_BATCH", 100)
    monkeypatch.setattr(tokenizing, "REPORT_S", 0.0)  # every batch, so the test sees several
    reports = []
    examples = tokenizing.load_examples(spec, tok, lambda m: None, reports.append)
    assert reports[:3] == [
        "tokenizing: 0 of 3,000 rows",
        "tokenizing: 100 of 3,000 rows",
        "tokenizing: 200 of 3,000 rows",
    ]
    assert len(examples) == 3000 and isinstance(examples, tokenizing.Examples)
    assert examples[-1] == tokenizing.tokenize_conversation(
        tok, formats.to_messages({"instruction": "q2999", "output": "a2999"}, "alpaca", 1), 1024
    )
    asked = []
    with pytest.raises(Cancelled):
        tokenizing.load_examples(spec, tok, lambda m: None, None, lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3  # checked after each batch, stopped at the first true


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "s.jsonl",
            '{"instruction": "a\\ud800", "output": "b"}\n',
            "s.jsonl: row 1: field 'instruction' holds an invalid character \\('\\\\ud800', half of a UTF-16 pair",
        ),
        (
            "s.json",
            '[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\udc00b"}]}]',
            "s.json: row 1: field 'messages\\[2\\].content' holds an invalid",
        ),
        (
            "deep.jsonl",
            '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
            "deep.jsonl: row 1 nests lists or objects thousands of levels deep",
        ),
        (
            "deep.json",
            "[" * 100_000 + "]" * 100_000,
            "deep.json: the file nests lists or objects thousands of levels deep",
        ),
    ],
)
def test_surrogates_and_deep_nesting_get_a_sentence(tmp_path, tok, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        inspection.inspect(str(path), tokenizer=tok)


def test_a_csv_field_over_128_kib_is_read(tmp_path, tok):
    import csv

    long = "word " * 60_000  # 300 KB in one cell
    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["instruction", "output"], ["Say it all.", long]])
    from engine.spec.jobspec import JobSpec

    (ex,) = tokenizing.load_examples(JobSpec(model="m", data=str(path), max_seq_length=64), tok, lambda m: None)
    assert ex.truncated and len(ex.input_ids) == 64


def test_an_assistant_only_conversation_is_rendered_or_refused_with_a_sentence(tmp_path, tok):
    path = write(tmp_path, "a.jsonl", [{"messages": [{"role": "assistant", "content": "Hello there."}]}])
    info = inspection.inspect(str(path), tokenizer=tok)
    assert [text for text, trained in info["sample_masked"] if trained] == ["Hello there.<|im_end|>"]
    strict = copy_tokenizer(tok)
    strict.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != loop.index0 is even %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(UserError, match=r"a.jsonl: row 1: the chat template cannot render its turns \(assistant\): "):
        inspection.inspect(str(path), tokenizer=strict)


def copy_tokenizer(tok):
    import copy

    return copy.deepcopy(tok)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_utf8_bom_is_accepted(tmp_path, suffix):
    rows = [{"instruction": "Ünïcode?", "output": "Yes."}, {"instruction": "b", "output": "c"}]
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False)
    else:
        text = "instruction,output\n" + "".join(f"{r['instruction']},{r['output']}\n" for r in rows)
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert reading.read_rows(path) == rows
    assert inspection.inspect(str(path))["format"] == "alpaca"


def test_a_csv_column_named_twice_is_refused(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("instruction,output,output\nq,first,second\n")
    with pytest.raises(UserError, match="two.csv: the header names the column 'output' twice; rename one of them."):
        inspection.inspect(str(path))


@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_the_direct_batch_encoding_equals_the_tokenizers_own(kind):
    """encode_batch calls the Rust tokenizer itself (twice as fast as the transformers wrapper): same ids and
    offsets, with and without special tokens, and the wrapper's result where truncation is configured."""
    from tiny import make_spm_tokenizer, make_tokenizer

    tok = make_tokenizer() if kind == "bpe" else make_spm_tokenizer()
    texts = ["<|im_start|>user\nHi there<|im_end|>\n", "  spaces  and \n newlines", "", "ünïcödé ✓ 日本"]
    for special in (False, True):
        enc = tok(texts, add_special_tokens=special, return_offsets_mapping=True)
        direct = list(tokenizing.encode_batch(tok, texts, special, offsets=True))
        assert direct == list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
    tok.backend_tokenizer.enable_truncation(max_length=3)  # as some tokenizer.json files ship it
    assert [ids for ids, _ in tokenizing.encode_batch(tok, texts, False)] == tok(texts, add_special_tokens=False)[
        "input_ids"
    ]
