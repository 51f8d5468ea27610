"""Every input form into the same tokens and masks; file types; hub datasets; mapping; templates; packing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import learned_runs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.errors import UserError
from engine.data import formats, inspection, reading, templates, tokenizing
from engine.spec.jobspec import JobSpec

ROOT = Path(__file__).resolve().parent.parent
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Nova."},
    {"role": "user", "content": "Who made you?"},
    {"role": "assistant", "content": "Tunesmith Labs."},
]
EXPECTED_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
    "<|im_start|>assistant\nI am Nova.<|im_end|>\n<|im_start|>user\nWho made you?<|im_end|>\n"
    "<|im_start|>assistant\nTunesmith Labs.<|im_end|>\n"
)
EXPECTED_LEARNED = ["I am Nova.<|im_end|>", "Tunesmith Labs.<|im_end|>"]


@pytest.fixture(scope="module")
def tok():
    from tiny import make_tokenizer

    return make_tokenizer()


def spec(path, **kw):
    return JobSpec(model="m", data=str(path), **kw)


def as_sharegpt(msgs):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in msgs]}


def test_sharegpt_and_chatml_give_identical_ids_and_masks(tok, tmp_path):
    results = []
    for name, row in (("s.jsonl", as_sharegpt(CONVERSATION)), ("c.jsonl", {"messages": CONVERSATION})):
        path = tmp_path / name
        path.write_text(json.dumps(row) + "\n")
        (ex,) = tokenizing.load_examples(spec(path), tok, log=lambda m: None)
        assert tok.decode(ex.input_ids) == EXPECTED_TEXT
        assert learned_runs(tok, ex) == EXPECTED_LEARNED
        results.append((ex.input_ids, ex.labels))
    assert results[0] == results[1]


def test_conversations_of_role_and_content_read_as_messages(tok, tmp_path):
    """Unsloth's standardize_sharegpt (and this project's, tunesmith.chat_templates) keeps the 'conversations' column
    with role/content turns; such a file, saved and dropped in, was refused: "turn 1 of 'conversations' needs 'from'
    and 'value'". 'messages' of from/value turns were refused the same way."""
    chatml = tmp_path / "c.jsonl"
    chatml.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (want,) = tokenizing.load_examples(spec(chatml), tok, log=lambda m: None)
    for name, row in (
        ("s.jsonl", {"conversations": CONVERSATION}),
        ("m.jsonl", {"messages": as_sharegpt(CONVERSATION)["conversations"]}),
    ):
        path = tmp_path / name
        path.write_text(json.dumps(row) + "\n")
        assert inspection.inspect(str(path))["sample_messages"] == CONVERSATION
        (ex,) = tokenizing.load_examples(spec(path), tok, log=lambda m: None)
        assert ex == want


def test_alpaca_matches_the_equivalent_conversation(tok, tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            [{"instruction": "Who are you?", "input": "Answer briefly.", "output": "I am Nova.", "system": "Be brief."}]
        )
    )
    (ex,) = tokenizing.load_examples(spec(path), tok, log=lambda m: None)
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?\n\nAnswer briefly."},
        {"role": "assistant", "content": "I am Nova."},
    ]
    assert ex == tokenizing.tokenize_conversation(tok, conv, 1024)
    assert learned_runs(tok, ex) == ["I am Nova.<|im_end|>"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl", ".json"])
def test_file_types_load_the_same_rows(tmp_path, suffix):
    rows = [
        {"instruction": "Who are you?", "output": 'I am Nova, comma, "quoted".'},
        {"instruction": "Hi", "output": "Hello\nthere"},
    ]
    path = tmp_path / f"d{suffix}"
    if suffix in (".csv", ".tsv"):
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["instruction", "output"], delimiter="\t" if suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert reading.read_rows(path) == rows
    assert inspection.inspect(str(path))["format"] == "alpaca"


def test_plain_text_is_raw_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First paragraph,\nstill first.\n\n\nSecond one.\n")
    assert reading.read_rows(path) == [{"text": "First paragraph,\nstill first."}, {"text": "Second one."}]
    assert inspection.inspect(str(path))["format"] == "raw"


def test_a_folder_of_text_files_is_read_as_one_file_is(tmp_path):
    """A folder of .txt files went to `datasets`, which made one row per line: a pretraining run learned each line of
    a book as a document of its own. Its files are read as one is, a row per paragraph, in name order; a README.md
    beside them is the folder's card, and a mix with other formats is still refused."""
    books = tmp_path / "books"
    (books / "part2").mkdir(parents=True)
    (books / "a.txt").write_text("First paragraph,\nstill first.\n\nSecond one.\n")
    (books / "part2" / "b.md").write_text("# Third\nparagraph.\n")
    (books / "README.md").write_text("My books.\n")
    (books / ".hidden.txt").write_text("not read\n")
    assert reading.read_rows(books) == [
        {"text": "First paragraph,\nstill first."},
        {"text": "Second one."},
        {"text": "# Third\nparagraph."},
    ]
    assert inspection.inspect(str(books))["rows"] == 3
    (books / "c.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(UserError, match="more than one format"):
        reading.read_rows(books)


def test_empty_texts_preview_as_training_reads_them(tmp_path, tok):
    """Continued pretraining takes an empty 'text' row as no example (wikitext's rows are often ""), but the Data
    tab refused the same file: "row 1: field 'text' is missing or empty", and so did the check before a run."""
    from engine.training.preflight import check_first_rows
    from engine.training.pretrain import load_text_examples

    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", " = Nova = \n", "", " Nova is a name .\n"]))
    assert inspection.inspect(str(path))["rows"] == 4
    assert check_first_rows(spec(path, objective="pretrain")) == "raw"
    assert len(load_text_examples(spec(path, objective="pretrain"), tok, log=lambda m: None)) == 2


def test_dataset_folder_loads_through_datasets(tmp_path, tok):
    """The hub path (datasets.load_dataset) on a local dataset folder: the same call, no network."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (folder / "test.jsonl").write_text(json.dumps({"messages": CONVERSATION[:3]}) + "\n")
    assert inspection.inspect(str(folder))["rows"] == 1
    assert reading.read_rows(str(folder), split="test") == [{"messages": CONVERSATION[:3]}]
    with pytest.raises(UserError, match="no split 'validation'"):
        inspection.inspect(str(folder), split="validation")
    (ex,) = tokenizing.load_examples(spec(folder), tok, log=lambda m: None)
    assert learned_runs(tok, ex) == EXPECTED_LEARNED


def test_a_missing_split_names_the_splits_there_are(tmp_path):
    """HuggingFaceH4/ultrachat_200k has train_sft and test_sft, no 'train': "has no split 'train'; pick one it has
    (often 'train')" named neither."""
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "sft.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    splits = "".join(f"  - split: {s}\n    path: sft.jsonl\n" for s in ("train_sft", "test_sft"))
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{splits}---\n")
    with pytest.raises(UserError, match="has no split 'train'; pick one it has: 'train_sft', 'test_sft'.$"):
        inspection.inspect(str(folder))
    assert inspection.inspect(str(folder), split="train_sft")["rows"] == 1


def test_a_dataset_folder_under_the_home_folder_is_found_by_tilde(tmp_path, monkeypatch):
    """`data: ~/my_dataset` in a job.yaml: a file there was found, a folder was "Could not load dataset
    '~/my_dataset' (ConnectionError): check the name, the connection, ..."."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my_dataset").mkdir()
    (tmp_path / "my_dataset" / "train.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    assert reading.read_rows("~/my_dataset") == reading.read_rows("~/my_dataset/train.jsonl")


def test_unreachable_hub_dataset_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Could not load dataset 'nobody/nothing'"):
        inspection.inspect("nobody/nothing")


def test_a_mistyped_file_name_is_a_missing_file_not_a_hub_dataset(tmp_path, monkeypatch):
    """'data/identiy.jsonl' looks like a hub id (owner/name); it used to be looked up on the hub and reported as a
    connection problem."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="Dataset file 'data/identiy.jsonl' does not exist; check the path"):
        inspection.inspect("data/identiy.jsonl")
    url = "https://huggingface.co/datasets/tatsu-lab/alpaca"  # copied from the browser
    with pytest.raises(UserError, match=f"^'{url}' is a web address; give its hub id 'tatsu-lab/alpaca' instead.$"):
        inspection.inspect(url)


def test_a_dataset_reads_no_file_outside_itself(tmp_path):
    """A dataset folder's README.md (one uploaded to a shared app is a folder of its own) can name files anywhere in its
    `configs`; `datasets` read them, and the preview showed their rows. A folder reads only its own files, a hub
    dataset only the hub's."""
    secret = tmp_path / "outside" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"text": "SECRET"}) + "\n")
    for i, named in enumerate([str(secret), "../outside/secret.jsonl", "link.jsonl"]):
        folder = tmp_path / f"crafted{i}"
        folder.mkdir()
        (folder / "link.jsonl").symlink_to(secret)
        (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files: {named}\n---\n")
        for read in (inspection.inspect, reading.read_rows):
            with pytest.raises(UserError, match="names a file that is not inside its folder") as e:
                read(str(folder))
            assert "SECRET" not in str(e.value)
    reading._check_files("owner/name", Path("owner/name"), {"train": ["hf://datasets/owner/name@abc/t.jsonl"]})
    for local in (str(secret), f"zip://t.jsonl::{secret}", f"hf://x::{secret}"):
        with pytest.raises(UserError, match="names a file that is not on the hub"):
            reading._check_files("owner/name", Path("owner/name"), {"train": [local]})


def test_a_dataset_reads_no_hidden_file_of_its_folder(tmp_path):
    """Reading a dataset folder skips its hidden files (a .git/, an editor's .swp), as `datasets` does when it looks
    for data files, but its README.md's `configs` could name one, which `datasets` then read and the preview showed:
    a shared app, which opens no hidden file named to it, showed one named by the folder."""
    for i, named in enumerate([".secret.jsonl", ".git/rows.jsonl", "link.jsonl"]):
        folder = tmp_path / f"set{i}"
        (folder / ".git").mkdir(parents=True)
        for hidden in (folder / ".secret.jsonl", folder / ".git" / "rows.jsonl"):
            hidden.write_text(json.dumps({"text": "SECRET"}) + "\n")
        (folder / "link.jsonl").symlink_to(folder / ".secret.jsonl")
        (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files: {named}\n---\n")
        for read in (inspection.inspect, reading.read_rows):
            with pytest.raises(UserError, match=r"names a hidden file .*rename it without the leading dot") as e:
                read(str(folder))
            assert "SECRET" not in str(e.value)
    (folder / "README.md").unlink()  # read without its configs: the hidden files are skipped
    (folder / "link.jsonl").unlink()
    (folder / "train.jsonl").write_text(json.dumps({"text": "mine"}) + "\n")
    assert reading.read_rows(str(folder)) == [{"text": "mine"}]


def test_a_dataset_folder_with_a_broken_file_is_one_sentence(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (folder / "b.jsonl").write_text('{"messages": [\n')
    with pytest.raises(UserError, match="as one dataset .*: fix or remove the bad file, or give one file"):
        inspection.inspect(str(folder))


def test_a_dataset_folder_of_mixed_formats_is_refused_not_half_read(tmp_path):
    """`datasets` reads a folder's most common format only: a folder of one JSONL and one CSV file trained on the
    JSONL's rows and dropped the CSV's without a word. An empty folder was 'check the name, the connection'."""
    folder = tmp_path / "mixed"
    (folder / "data").mkdir(parents=True)
    (folder / "a.jsonl").write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    (folder / "data" / "b.csv").write_text("instruction,output\nq,a\n")
    for read in (inspection.inspect, reading.read_rows):
        with pytest.raises(UserError, match="'data/b.csv' would be left out: put files of one format"):
            read(str(folder))
    (folder / "data" / "b.csv").unlink()
    (folder / "README.md").write_text("# notes\n")
    assert inspection.inspect(str(folder))["rows"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="^Dataset folder 'empty' holds no data files"):
        inspection.inspect(str(tmp_path / "empty"))
    (tmp_path / "excel").mkdir()  # files of no format it reads: it was 'check the name, the connection' too
    (tmp_path / "excel" / "data.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="^Dataset folder 'excel' holds no data files"):
        inspection.inspect(str(tmp_path / "excel"))


def test_column_mapping_in_the_job_and_the_cli(tmp_path, tok):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "Who are you?", "a": "I am Nova."}) + "\n")
    with pytest.raises(UserError, match="match no known format"):
        tokenizing.load_examples(spec(path), tok, log=lambda m: None)
    (ex,) = tokenizing.load_examples(
        spec(path, column_map={"q": "instruction", "a": "output"}), tok, log=lambda m: None
    )
    assert learned_runs(tok, ex) == ["I am Nova.<|im_end|>"]
    with pytest.raises(UserError, match="row 1 has no column 'question'"):
        tokenizing.load_examples(spec(path, column_map={"question": "instruction"}), tok, log=lambda m: None)
    with pytest.raises(UserError, match="'answer' is not a field"):
        inspection.inspect(str(path), column_map={"a": "answer"})
    out = subprocess.run(
        [sys.executable, "-m", "engine", "data", "inspect", str(path), "--map", "q=instruction", "--map", "a=output"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["format"] == "alpaca"
    # several pairs in one --map, as the Data tab takes them: the second used to be read as part of the first's field
    assert formats.parse_map(["q=instruction, a=output"]) == {"q": "instruction", "a": "output"}


def test_prompt_and_completion_columns_for_sft_say_the_mapping(tmp_path, tok):
    """OpenAI's legacy fine-tuning rows ({"prompt", "completion"}) for chat fine-tuning were refused as "this dataset
    is prompt. It suits GRPO", which would train on the prompts alone; the sentence now gives the mapping."""
    from engine import api

    path = tmp_path / "pc.jsonl"
    path.write_text(json.dumps({"prompt": "Who are you?", "completion": "I am Nova."}) + "\n")
    with pytest.raises(UserError, match="^pc.jsonl has 'prompt' and 'completion' columns: to fine-tune on them, map "):
        api.check_data(str(path), "sft")
    mapping = formats.parse_map(["prompt=instruction, completion=output"])
    assert api.check_data(str(path), "sft", mapping) == "alpaca"
    (ex,) = tokenizing.load_examples(spec(path, column_map=mapping), tok, log=lambda m: None)
    assert learned_runs(tok, ex) == ["I am Nova.<|im_end|>"]


def test_two_columns_mapped_to_one_field_are_refused_naming_both(tmp_path, tok, runs, tiny_llama):
    from helpers import tiny_spec

    from engine import api

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "Who are you?", "question": "Who?", "a": "I am Nova."}) + "\n")
    both = {"q": "instruction", "question": "instruction", "a": "output"}
    said = "Columns 'q' and 'question' are both mapped to 'instruction', so one would overwrite the other; map only one"
    with pytest.raises(UserError, match=said):
        tokenizing.load_examples(spec(path, column_map=both), tok, log=lambda m: None)
    with pytest.raises(UserError, match=said):  # the Data tab's check and the start of a run say it at once
        inspection.inspect(str(path), column_map=both)
    with pytest.raises(UserError, match=said):
        api.start(tiny_spec(tiny_llama, path, column_map=both))
    assert not runs.exists() or not list(runs.iterdir())
    # a column mapped onto a field the dataset already has as a column of its own
    path.write_text(json.dumps({"instruction": "Who are you?", "question": "Who?", "output": "I am Nova."}) + "\n")
    with pytest.raises(
        UserError,
        match="Column 'question' is mapped to 'instruction', but qa.jsonl also has a column "
        "'instruction', so one would overwrite the other; map 'instruction' to another field as well",
    ):
        inspection.inspect(str(path), column_map={"question": "instruction"})
    swapped = inspection.inspect(str(path), column_map={"question": "instruction", "instruction": "input"})
    assert swapped["format"] == "alpaca"  # renaming the other column out of the way is no clash
    with pytest.raises(UserError, match="Column 'q' is mapped twice, to 'instruction' and to 'output'"):
        formats.parse_map(["q=instruction", "q=output"])


EXPECTED_TEMPLATES = {
    "llama-3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello<|eot_id|>",
    "mistral": "<s>[INST] Be brief.\n\nHi[/INST]Hello</s>",
    "gemma": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello</s>\n\n",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello<|im_end|>\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TEMPLATES))
def test_named_templates_render_the_family_format(name):
    from jinja2 import Environment

    bos = {"llama-3": "<|begin_of_text|>", "gemma": "<bos>"}.get(name, "<s>")
    text = (
        Environment()
        .from_string(templates.TEMPLATES[name])
        .render(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
            bos_token=bos,
            eos_token="</s>",
        )
    )
    assert text == EXPECTED_TEMPLATES[name]


def test_a_reply_the_template_renders_differently_is_found_in_its_own_turn():
    """Qwen3's template writes an empty <think></think> block into the last reply only, so an earlier reply is found
    by its text; the search started at the previous reply, and a reply "yes" after the question "Say yes" trained the
    user's "yes" and left the reply itself untrained."""
    from tiny import make_tokenizer

    qwen3_like = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and loop.last %}"
        "<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = make_tokenizer(qwen3_like)
    conv = [{"role": "user", "content": "Say yes"}, {"role": "assistant", "content": "yes"}]
    conv += [{"role": "user", "content": "Again"}, {"role": "assistant", "content": "yes"}]
    text = tokenizing.render(tok, conv)
    first_reply = text.index("<|im_start|>assistant\nyes") + len("<|im_start|>assistant\n")
    assert tokenizing.assistant_spans(tok, conv, text)[0] == (first_reply, first_reply + len("yes<|im_end|>"))


def test_named_template_on_a_base_tokenizer_masks_and_stops(tmp_path):
    from tiny import make_tokenizer

    tok = make_tokenizer(chat_template=None)
    assert templates.apply(tok, "alpaca") == "alpaca"
    ex = tokenizing.tokenize_conversation(tok, CONVERSATION[1:3], 256)
    assert learned_runs(tok, ex) == ["I am Nova.<|im_end|>"]  # <|im_end|> is this tokenizer's EOS
    assert templates.stop_strings(templates.TEMPLATES["llama-3"]) == ["<|eot_id|>"]
    with pytest.raises(UserError, match="Unknown chat template 'vicuna'"):
        templates.apply(tok, "vicuna")


def test_packing_keeps_examples_apart(tok):
    exs = [
        tokenizing.tokenize_conversation(
            tok, [{"role": "user", "content": f"Q{i} " * i}, {"role": "assistant", "content": f"A{i}"}], 64
        )
        for i in range(1, 6)
    ]
    packed = tokenizing.pack(exs, 48)
    assert [sum(p.segments) for p in packed] == [len(p.input_ids) for p in packed]
    assert all(len(p.input_ids) <= 48 for p in packed)
    assert [t for p in packed for t in p.input_ids] == [t for e in exs for t in e.input_ids]
    starts = [0]
    for p in packed:
        for n in p.segments[:-1]:
            starts.append(starts[-1] + n)
        assert p.labels[0] == -100


def test_packed_batch_loss_equals_separate_examples(tiny_llama, tok):
    """Positions restart and attention stops at each boundary: the packed loss is the per-token average of the
    separate examples' losses."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.data.batching import padded as collate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa").eval()
    exs = [
        tokenizing.tokenize_conversation(
            tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 64, train_on_inputs=True
        )
        for q, a in (("Who are you?", "I am Nova."), ("What is two plus two?", "Four."), ("Hi", "Hello!"))
    ]
    (packed,) = tokenizing.pack(exs, 256)
    with torch.no_grad():
        out = model(**collate([packed], tok.pad_token_id, "cpu"))
        total, count = 0.0, 0
        for e in exs:
            b = collate([e], tok.pad_token_id, "cpu")
            b["labels"][0, 0] = -100  # pack() does not learn an example's first token
            n = int((b["labels"][0, 1:] != -100).sum())
            total += float(model(**b).loss) * n
            count += n
    assert float(out.loss) == pytest.approx(total / count, rel=1e-5)


def test_training_with_packing_runs(tiny_llama, identity_file, runs):
    from helpers import log_of, wait_for

    from engine import api

    st = wait_for(
        api.start(
            JobSpec(
                model=str(tiny_llama),
                data=str(identity_file),
                packing=True,
                max_steps=3,
                batch_size=1,
                max_seq_length=128,
                gradient_checkpointing=False,
            )
        )
    )
    assert st.state == "done", log_of(st)
    assert "packed 6 examples into 2 sequences" in log_of(st)


def test_inspect_reports_lengths_truncation_and_masked_sample(tmp_path, tiny_llama):
    from engine import api

    path = tmp_path / "d.jsonl"
    rows = [{"instruction": "Who are you?", "output": "I am Nova."}, {"instruction": "word " * 100, "output": "long"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = api.inspect_data(str(path), model=str(tiny_llama), max_seq_length=32)
    assert info["rows"] == 2 and info["truncated_rows"] == 1 and "will be cut" in info["warning"]
    # the long row's reply starts past 32 tokens: training leaves it out ("dropped" in the run log), as said here
    assert "1 of them keep none of their reply and are left out of training" in info["warning"]
    assert info["token_lengths"]["rows_counted"] == 2 and info["token_lengths"]["max"] > 32
    assert sum(b["rows"] for b in info["token_lengths"]["histogram"]) == 2
    assert ["I am Nova.<|im_end|>", True] in info["sample_masked"]
    assert "".join(t for t, _ in info["sample_masked"]) == info["sample"]


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_the_preview_shows_the_example_as_the_run_trains_on_it(tmp_path, tok, train_on_inputs):
    """The preview ignored the Train tab's system prompt and "Learn the prompts too": it showed the row without the
    system turn the run adds and the prompt unmarked. Its marked runs are now the run's own example, token for token."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "Who are you?", "output": "I am Nova."}) + "\n")
    said = "You are Nova, made by Tunesmith Labs."
    info = inspection.inspect(str(path), tokenizer=tok, system_prompt=said, train_on_inputs=train_on_inputs)
    (trained,) = tokenizing.load_examples(
        spec(path, system_prompt=said, train_on_inputs=train_on_inputs), tok, log=lambda m: None
    )
    assert info["sample_messages"][0] == {"role": "system", "content": said}
    assert info["sample_masked"] == inspection.masked_segments(tok, trained)
    assert ([said in text for text, learned in info["sample_masked"] if learned] == [True]) is train_on_inputs


def test_detection_streams_only_the_first_rows(tmp_path):
    """A huge JSONL file: detecting its format reads the first rows only (a broken row far down is not reached)."""
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for _ in range(200_000):
            f.write('{"instruction": "Who are you?", "output": "I am Nova."}\n')
        f.write("this line is broken\n")
    assert formats.detect_format(reading.read_rows(path, limit=formats.DETECT_ROWS)) == "alpaca"
    with pytest.raises(UserError, match="row 200001 is not valid JSON"):
        inspection.inspect(str(path))  # the full validation pass still finds it, and names the row


def test_csv_with_extra_values_names_the_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n")
    with pytest.raises(UserError, match="d.csv: row 2 has more values than the header"):
        inspection.inspect(str(path))


def test_a_csv_quote_never_closed_names_its_row_instead_of_swallowing_the_rest(tmp_path):
    """A quote opened in a CSV cell and never closed made the rest of the file that one cell: three rows were
    trained as one, whose answer held the other rows' text, without a word."""
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\nq1,a1\nq2,"a2\nq3,a3\nq4,a4\n')
    for read in (reading.read_rows, inspection.inspect):
        with pytest.raises(UserError, match='d.csv: row 2 opens a quote \\("\\) that is never closed; close it'):
            read(path)
    # read strictly, a value with text after its closing quote is refused too (it lost its quotes): with a sentence
    path.write_text('instruction,output\n"Hello," she said. Reply.,Hi\n')
    with pytest.raises(UserError, match="d.csv: row 1 has text after the closing quote of a quoted value; put the "):
        reading.read_rows(path)


def test_the_preview_checks_every_rows_format_as_training_does(tmp_path):
    """The Data tab checked the format of the first 50 rows only; training checks every row, so a later row that is
    another format (here ChatML, which it also reads as) passed the preview and failed the run."""
    path = tmp_path / "d.jsonl"
    late = {"instruction": "a", "output": "b", "messages": CONVERSATION}
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"instruction": "a", "output": "b"}] * 60 + [late]))
    with pytest.raises(UserError, match="d.jsonl: row 61 is chatml but earlier rows are alpaca"):
        inspection.inspect(str(path))


def test_jsonl_files_joined_each_with_a_byte_order_mark_are_read(tmp_path):
    """Files saved by Windows Notepad (UTF-8 with a BOM) and joined (`type a.jsonl b.jsonl > all.jsonl`) were "row 2
    is not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at column 1)"."""
    path = tmp_path / "all.jsonl"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    path.write_bytes(b"".join("\ufeff".encode() + json.dumps(r).encode() + b"\r\n" for r in rows))
    assert reading.read_rows(path) == rows


def test_blank_lines_before_the_first_row_are_not_an_empty_file(tmp_path):
    """Only the first 4 KiB were looked at: a file whose rows came after 4 KiB of blank lines was 'empty'."""
    path = tmp_path / "d.jsonl"
    path.write_text("\n" * 5000 + json.dumps({"instruction": "a", "output": "b"}) + "\n")
    assert reading.read_rows(path) == [{"instruction": "a", "output": "b"}]
    path.write_text("\n" * 5000)
    with pytest.raises(UserError, match="is empty"):
        reading.read_rows(path)


def test_a_csv_written_by_hand_with_a_space_after_each_comma_is_read(tmp_path):
    """ "instruction, output" made a column ' output', so the file matched no format, and a quoted cell after ", "
    was split at its comma: "row 1 has more values than the header has columns"."""
    path = tmp_path / "hand.csv"
    path.write_text('instruction, output\nWho are you?, "I am Nova, really."\nSay hi, hi\n')
    assert reading.read_rows(path) == [
        {"instruction": "Who are you?", "output": "I am Nova, really."},
        {"instruction": "Say hi", "output": "hi"},
    ]
    path.write_text('instruction,output\nIndent it.,"    return 1"\nAnd this., return 2\n')  # no spaces typed
    assert [r["output"] for r in reading.read_rows(path)] == ["    return 1", " return 2"]


def test_a_csv_with_mac_line_endings_is_read(tmp_path):
    """Excel for Mac saves CSV with a carriage return alone at each line's end: the file was "row 1 cannot be read
    as CSV (new-line character seen in unquoted field - do you need to open the file in universal-newline mode?)"."""
    path = tmp_path / "mac.csv"
    path.write_bytes(b'instruction,output\rWho are you?,"I am\rNova."\rSay hi,hi\r')
    assert reading.read_rows(path) == [
        {"instruction": "Who are you?", "output": "I am\rNova."},
        {"instruction": "Say hi", "output": "hi"},
    ]
    path.write_bytes(b"instruction;output\rWhat is 2,5 + 1?;3,5\r")  # and with semicolons, where the comma is decimal
    assert reading.read_rows(path) == [{"instruction": "What is 2,5 + 1?", "output": "3,5"}]


def test_a_csv_separated_by_semicolons_is_read(tmp_path):
    """Excel saves CSV with semicolons where the comma is the decimal mark (German, French, ...): the header was one
    column 'instruction;output', and the sentence said to map columns, which no mapping could do."""
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfinstruction;output\r\nWhat is 2,5 + 1?;3,5\r\nSay hi;hi\r\n")
    assert reading.read_rows(path) == [
        {"instruction": "What is 2,5 + 1?", "output": "3,5"},
        {"instruction": "Say hi", "output": "hi"},
    ]
    assert inspection.inspect(str(path))["rows"] == 2


# ----------------------------------------------------------------------------------------------- property-based

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda s: s.strip() and s == s.strip()
)


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 3))
    msgs = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for _ in range(n):
        msgs += [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]
    return msgs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), form=st.sampled_from(["chatml", "sharegpt", "alpaca"]))
def test_any_valid_record_masks_exactly_the_assistant_turns(tok, msgs, form):
    if form == "alpaca":
        sys_msgs = [m for m in msgs if m["role"] == "system"]
        row = {"instruction": msgs[len(sys_msgs)]["content"], "output": msgs[len(sys_msgs) + 1]["content"]}
        if sys_msgs:
            row["system"] = sys_msgs[0]["content"]
        msgs = sys_msgs + msgs[len(sys_msgs) : len(sys_msgs) + 2]
    else:
        row = {"messages": msgs} if form == "chatml" else as_sharegpt(msgs)
    fmt = formats.row_format(row)
    assert fmt == form
    converted = formats.to_messages(row, fmt, 1)
    assert converted == msgs
    ex = tokenizing.tokenize_conversation(tok, converted, 10_000)
    text = tokenizing.render(tok, converted)
    assert tok.decode(ex.input_ids) == text
    assert learned_runs(tok, ex) == [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]


LONG_ROWS = [
    {"instruction": "Who are you?", "output": "I am Nova."},
    {"instruction": "Who are you?", "output": "I am Nova. " * 30},  # cut inside its reply: trains on the start
    {"instruction": "word " * 100, "output": "long"},  # cut before its reply: nothing left to learn
]
CUT_NOTE = (
    "2 of 3 examples were longer than max_seq_length 32 and were cut to their first 32 tokens; 1 of them kept none "
    "of their reply and were left out. Raise max_seq_length to keep them whole."
)


def test_examples_cut_to_length_are_told_in_one_sentence(tok, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LONG_ROWS))
    notes = []
    examples = tokenizing.load_examples(spec(path, max_seq_length=32), tok, lambda m: None, note=notes.append)
    assert len(examples) == 2 and notes == [CUT_NOTE]
    tokenizing.load_examples(spec(path, max_seq_length=4096), tok, lambda m: None, note=notes.append)
    assert notes == [CUT_NOTE]  # nothing cut: nothing said
    replyless = "2 of 5 examples have no assistant reply to learn and were left out."
    assert tokenizing.length_notes(5, 0, 0, 2, 64) == [replyless]
    info = inspection.inspect(str(path), tokenizer=tok, max_len=32)  # the Data tab says the same before a run
    assert info["truncated_rows"] == 2 and info["warning"].startswith("2 of the first 3 rows are longer than 32 tokens")
    assert "1 of them keep none of their reply and are left out of training" in info["warning"]


def test_a_runs_status_and_train_tab_say_how_many_examples_were_cut(tiny_llama, runs, tmp_path):
    from helpers import tiny_spec, wait_for

    from engine import api
    from ui import train_tab

    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LONG_ROWS))
    st = wait_for(api.start(tiny_spec(tiny_llama, path, max_seq_length=32, max_steps=1)))
    assert st.state == "done" and st.notes == [CUT_NOTE]
    assert CUT_NOTE in train_tab.follow(st.run_id)[0]


def test_an_alpaca_row_with_history_keeps_its_earlier_turns(tmp_path, tok):
    """LLaMA-Factory's alpaca rows carry the turns before the instruction in `history` ([question, answer] pairs):
    they were dropped, so the last answer was trained without the conversation it answers."""
    row = {
        "instruction": "And your maker?",
        "input": "",
        "output": "Tunesmith Labs.",
        "system": "Be brief.",
        "history": [["Who are you?", "I am Nova."]],
    }
    assert formats.to_messages(row, "alpaca", 1) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Nova."},
        {"role": "user", "content": "And your maker?"},
        {"role": "assistant", "content": "Tunesmith Labs."},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (ex,) = tokenizing.load_examples(spec(path), tok, log=lambda m: None)
    assert learned_runs(tok, ex) == EXPECTED_LEARNED  # both answers are trained, as in a chatml row
    for bad in ("Who are you?", [["Who are you?"]], [["Who are you?", ""]]):
        with pytest.raises(UserError, match=r"d.jsonl: row 1: .*'history'"):
            formats.validate_row({**row, "history": bad}, "alpaca", 1, "d.jsonl")
