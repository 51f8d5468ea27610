"""Validation during training: the held-out split, eval_loss in metrics.jsonl, the best weights kept and exportable."""

import csv
import json
import time

import pytest
from helpers import log_of, tiny_spec, wait_for

from engine import api
from engine.core.files import read_jsonl
from engine.data.heldout import held_out
from engine.data.identity import identity_rows


@pytest.fixture
def identity_rows_file(tmp_path):
    path = tmp_path / "identity-nova.jsonl"
    rows = identity_rows("Nova", "Tunesmith Labs")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_held_out_rows_are_fixed_by_the_seed_and_near_the_fraction():
    rows = range(1, 10001)
    picked = {r for r in rows if held_out(7, r, 0.2)}
    assert picked == {r for r in rows if held_out(7, r, 0.2)}
    assert picked != {r for r in rows if held_out(8, r, 0.2)}
    assert 1800 < len(picked) < 2200
    assert not any(held_out(7, r, 0.0) for r in rows)


def test_eval_settings_are_checked(tiny_llama, identity_rows_file):
    with pytest.raises(api.UserError, match="eval_fraction"):
        tiny_spec(tiny_llama, identity_rows_file, eval_fraction=1.0)
    with pytest.raises(api.UserError, match="sft and pretrain"):
        tiny_spec(tiny_llama, identity_rows_file, objective="dpo", eval_fraction=0.1)


def test_validation_loss_in_metrics_and_best_weights_exportable(tiny_llama, identity_rows_file, runs, tmp_path):
    spec = tiny_spec(tiny_llama, identity_rows_file, max_steps=12, eval_fraction=0.2, eval_steps=4, learning_rate=5e-3)
    st = wait_for(api.start(spec))
    assert st.state == "done", log_of(st)
    records = read_jsonl(st.run_dir / "metrics.jsonl")
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert sorted(evals) == [4, 8, 12]
    assert evals[12] < evals[4]  # the held-out answers share the training answers' identity
    assert [m.get("eval_loss") for m in st.metrics if m["step"] in evals] == list(evals.values())
    held = sum(held_out(spec.seed, i, 0.2) for i in range(1, 181))
    assert f"validation data: identity-nova.jsonl is alpaca, {held} rows" in log_of(st)
    assert f"data: identity-nova.jsonl is alpaca, {180 - held} rows" in log_of(st)

    best = api.best_checkpoint(st.run_dir)
    step = min(evals, key=evals.get)
    assert best.name == f"step-{step:06d}"
    assert json.loads((best / "best.json").read_text()) == dict(step=step, eval_loss=evals[step])
    assert [p.name for p in (st.run_dir / "best").iterdir()] == [best.name]  # earlier bests are removed
    res = api.export(str(best), "merged16", tmp_path / "merged", log=lambda m: None)
    assert res.checks["max_logit_diff_fp32"] < 1e-4

    # the Export tab offers the best weights where a run kept them, and exports them when ticked
    from ui import export_tab

    offered = export_tab.best_for(st.run_id)
    assert offered.visible and best.name in offered.label
    job, text, *_ = export_tab.start(st.run_id, "lora", "best-lora", best=True)
    assert job is not None, text
    assert json.loads((job.job_dir / "export.json").read_text())["source"] == str(best)
    deadline = time.time() + 300
    while not (done := api.poll_export(job)).finished:
        assert time.time() < deadline, done.log
        time.sleep(0.2)
    assert done.state == "done", done.log


def test_separate_eval_file_in_another_format(tiny_llama, identity_rows_file, runs, tmp_path):
    eval_file = tmp_path / "eval.csv"
    with open(eval_file, "w", newline="") as f:
        w = csv.DictWriter(f, ["instruction", "input", "output"])
        w.writeheader()
        w.writerows(identity_rows("Nova", "Tunesmith Labs", seed=1)[:10])
    spec = tiny_spec(tiny_llama, identity_rows_file, max_steps=4, eval_data=str(eval_file), eval_steps=2)
    st = wait_for(api.start(spec))
    assert st.state == "done", log_of(st)
    assert [m["step"] for m in st.metrics if "eval_loss" in m] == [2, 4]
    assert "validation data: eval.csv is alpaca, 10 rows" in log_of(st)
    assert "data: identity-nova.jsonl is alpaca, 180 rows" in log_of(st)


def test_pretrain_validation_and_a_resume_keeps_the_records(tiny_llama, runs, tmp_path):
    from helpers import resume_after_cut
    from tiny import CORPUS

    lines = [line for line in CORPUS.splitlines() if line.strip()]
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"{k}. {lines[k % len(lines)]}" for k in range(40)) + "\n")
    spec = tiny_spec(
        tiny_llama, text, objective="pretrain", max_steps=4, save_every=2, eval_fraction=0.25, eval_steps=2
    )
    st = wait_for(api.start(spec))
    assert st.state == "done", log_of(st)
    held = sum(held_out(spec.seed, i, 0.25) for i in range(1, 41))
    assert f"validation data: notes.txt is raw, {held} rows" in log_of(st)
    first = {m["step"]: m["eval_loss"] for m in st.metrics if "eval_loss" in m}
    assert sorted(first) == [2, 4]

    again = resume_after_cut(st, 2, 4)
    assert again.state == "done", log_of(again)
    assert {m["step"]: m["eval_loss"] for m in again.metrics if "eval_loss" in m} == first  # the same weights
    assert json.loads((api.best_checkpoint(again.run_dir) / "best.json").read_text())["eval_loss"] == min(
        first.values()
    )


def test_validation_examples_cut_to_length_are_a_note_of_the_run(tiny_llama, runs, tmp_path):
    """Held-out examples cut to max_seq_length are told in the run's status and the Train tab, as training's are."""
    from ui import train_tab

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"instruction": "Who are you?", "output": "I am Nova."}) + "\n")
    long = tmp_path / "eval.jsonl"
    rows = [
        {"instruction": "Who are you?", "output": "I am Nova."},
        {"instruction": "Who are you?", "output": "I am Nova. " * 30},  # cut inside its reply
        {"instruction": "word " * 100, "output": "long"},  # cut before its reply: left out
    ]
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = wait_for(api.start(tiny_spec(tiny_llama, train, eval_data=str(long), max_seq_length=32, max_steps=1)))
    assert st.state == "done", log_of(st)
    note = (
        "2 of 3 validation examples were longer than max_seq_length 32 and were cut to their first 32 tokens; 1 of "
        "them kept none of their reply and were left out. Raise max_seq_length to keep them whole."
    )
    assert st.notes == [note]
    assert note in train_tab.follow(st.run_id)[0]
