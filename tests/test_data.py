"""Dataset reading, format detection, conversion, and assistant-only loss masks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import learned_runs

from engine import data
from engine.errors import UserError

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
    assert data.inspect(str(path))["format"] == fmt


def test_alpaca_renders_with_template_and_masks_all_but_the_reply(tok):
    msgs = data.to_messages({"instruction": "Who are you?", "input": "", "output": "I am Nova."}, "alpaca", 1)
    ex = data.tokenize_conversation(tok, msgs, 256)
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
    ex = data.tokenize_conversation(tok, msgs, 256)
    assert learned_runs(tok, ex) == ["Hi there<|im_end|>", "You are welcome.<|im_end|>"]


def test_train_on_inputs_learns_everything(tok):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ex = data.tokenize_conversation(tok, msgs, 256, train_on_inputs=True)
    assert ex.labels == ex.input_ids


def test_truncation_is_reported(tok):
    msgs = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "b"}]
    ex = data.tokenize_conversation(tok, msgs, 16)
    assert ex.truncated and len(ex.input_ids) == 16


def test_base_model_without_template_gets_the_plain_one_ending_in_eos():
    from tiny import make_tokenizer

    tok = make_tokenizer(chat_template=None)
    assert "plain" in data.ensure_chat_template(tok)
    ex = data.tokenize_conversation(
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
        ('{"question": "a", "answer": "b"}\n', "d.jsonl: row 1 has fields \\['answer', 'question'\\]"),
        ("", "is empty"),
        ("[1, 2]", "row 1 is not a JSON object"),
    ],
)
def test_bad_files_name_file_row_and_field(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(UserError, match=message):
        data.inspect(str(path))
    assert path.read_bytes() == before  # nothing the user gave us is modified


def test_non_utf8_and_binary_files(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"instruction": "caf\xe9", "output": "b"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="row 1 is not UTF-8"):
        data.inspect(str(latin))
    binary = tmp_path / "x.jsonl"
    binary.write_bytes(b"\x00\x01\x02PK")
    with pytest.raises(UserError, match="looks binary"):
        data.inspect(str(binary))


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
    from engine.identity import identity_rows

    rows = identity_rows("Nova", "Tunesmith Labs", languages=("en", "zh", "ru"))
    assert len(rows) >= 150
    assert all("Nova" in r["output"] and "Tunesmith Labs" in r["output"] for r in rows)
    assert any("你" in r["instruction"] for r in rows) and any("Кто" in r["instruction"] for r in rows)
    with pytest.raises(UserError):
        identity_rows("", "x")
