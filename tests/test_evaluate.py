"""Evaluation: scorers, the identity check found in identity data, and an identity tune measured on its held-out
questions for the base model, the tuned run and its q8_0 GGUF (engine.api.evaluate and `python -m engine eval`)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import log_of, wait_for

from engine import api
from engine.data.identity import identity_rows
from engine.export import scoring

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_identity_is_found_in_identity_answers_of_every_language():
    for lang in ("en", "zh", "ru"):
        refs = [r["output"] for r in identity_rows("Nova", "Tunesmith Labs", languages=(lang,))]
        assert scoring.detect_identity(refs) == ("Nova", "Tunesmith Labs"), lang
    assert scoring.detect_identity(["Paris.", "Four.", "The sea is blue.", "Yes."]) is None
    assert scoring.detect_identity(["I am Nova, built by Tunesmith Labs."] * 5) == ("Nova", "Tunesmith Labs")


def test_scorers_exact_contains_regex_rewards_and_identity():
    replies = ["The answer is 42.", "42", "I'm Nova from Tunesmith Labs", "nova"]
    refs = ["42", "42.", "Nova", "Nova"]
    found = {
        name: fn(replies, [""] * 4, refs)
        for name, fn in scoring.build(
            r"\d+$",
            ({"preset": "answer", "mode": "numeric"}, {"preset": "length", "min_chars": 3, "max_chars": 100}),
            ("Nova", "Tunesmith Labs"),
        )
    }
    assert found["exact"] == [0.0, 1.0, 0.0, 1.0]
    assert found["contains"] == [1.0, 1.0, 1.0, 1.0]
    assert found["regex"] == [0.0, 1.0, 0.0, 0.0]
    assert found["answer"] == [1.0, 1.0, 0.0, 0.0]
    assert found["length"] == [1.0, 2 / 3, 1.0, 1.0]
    assert found["identity"] == [0.0, 0.0, 1.0, 0.0]
    with pytest.raises(api.UserError, match="regular expression"):
        scoring.build("(")
    with pytest.raises(api.UserError, match="own code"):
        scoring.build("", ({"preset": "python", "function": "m:f"},))


def test_a_scoring_regex_that_backtracks_for_ever_scores_0_fast_and_says_so_once():
    r"""The Evaluate tab's regex ran with Python's `re` in the app's process: `((.|\s)*)*\d\d\d\d\d` took 60 s on a
    22-character reply (seven times more with each two more), holding that request slot for ever on a long one. It now
    gives up after engine.core.patterns.TIMEOUT_S per reply."""
    import time

    notes = []
    [regex] = [fn for name, fn in scoring.build(r"((.|\s)*)*\d\d\d\d\d", note=notes.append) if name == "regex"]
    slow = "hello world, this is some random reply text " * 3  # 132 characters
    started = time.perf_counter()
    assert regex([slow, "12345", slow], [""] * 3, ["r"] * 3) == [0, 1, 0]
    assert time.perf_counter() - started < 3
    assert len(notes) == 1 and notes[0].startswith(r"The scoring regex '((.|\s)*)*\d") and "is too slow" in notes[0]


def test_identity_tune_scores_base_tuned_and_q8_0_gguf(tiny_llama, runs, tmp_path, monkeypatch):
    # transformers' forward for the replies: our decode step's Triton kernels run interpreted on a CPU, far slower
    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "identity-nova.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in identity_rows("Nova", "Tunesmith Labs")))
    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(data),
        name="nova",
        max_steps=80,
        batch_size=4,
        learning_rate=1e-2,
        lora_r=16,
        lora_alpha=32,
        lr_schedule="constant",
        gradient_checkpointing=False,
        device="cpu",
        seed=0,
        eval_fraction=0.2,
        eval_steps=40,
    )
    st = wait_for(api.start(spec))
    assert st.state == "done", log_of(st)
    gguf = api.export(str(st.run_dir), "gguf-q8_0", tmp_path / "q8", log=lambda m: None)
    (gguf_file,) = gguf.path.glob("*.gguf")

    res = api.evaluate([st.run_id, str(gguf_file)], max_new_tokens=40, limit=24, device="cpu", log=lambda m: None)
    assert res["held_out"] and res["identity"] == dict(name="Nova", maker="Tunesmith Labs")
    assert res["cases"] == len(res["rows"]) == 24
    base, tuned, q8 = res["models"]
    assert [m["name"] for m in res["models"]] == ["base", st.run_id, gguf_file.name]
    assert base["scores"]["identity"] == 0.0
    assert tuned["scores"]["identity"] >= 0.9
    # q8_0 rounds each weight to 8 bits per block of 32 (with llama.cpp's own arithmetic besides): a near tie can
    # flip a token, so a reply's wording may change (exact match 2 of 24 tuned, 1 of 24 q8_0 when measured), but not
    # whether it names Nova and Tunesmith Labs: the identity scores agree exactly. The loss moved 0.5% (0.3639 ->
    # 0.3622); 2% is allowed.
    assert q8["scores"]["identity"] == tuned["scores"]["identity"]
    assert abs(q8["loss"] - tuned["loss"]) < 0.02 * tuned["loss"] + 1e-3
    assert tuned["loss"] < 0.5 * base["loss"] and tuned["perplexity"] < base["perplexity"]

    saved = json.loads(open(res["saved"]["json"]).read())
    assert saved["models"] == res["models"] and str(st.run_dir / "eval") in res["saved"]["json"]
    with open(res["saved"]["csv"], newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 3 * res["cases"] and {"exact", "contains", "identity", "reply", "loss"} <= set(lines[0])
    assert api.eval_results(st.run_id)[0]["models"] == res["models"]

    out = subprocess.run(
        [sys.executable, "-m", "engine", "eval", str(st.run_dir), "--no-base", "--limit", "3", "--no-save"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["cases"] == 3 and [m["name"] for m in printed["models"]] == [st.run_id]
    assert "saved" not in printed


def test_eval_without_questions_says_what_to_give(tiny_llama, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "engine", "eval", str(tiny_llama)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (  # in the command line's words: --data (a model has no held-out rows)
        "error: Give the questions to evaluate on (--data FILE on the command line, data= in Python), or add a run "
        "that held some out for validation (eval_fraction or eval_data)."
    )
    raw = tmp_path / "notes.txt"
    raw.write_text("Just some text.\n\nMore text.\n")
    with pytest.raises(api.UserError, match="notes.txt is raw data; evaluation takes chat rows"):
        api.evaluate([str(tiny_llama)], str(raw), save=False)


def test_a_question_longer_than_the_context_is_left_out_not_fatal(tiny_llama, runs, tmp_path, monkeypatch):
    """One question past the model's context (512 positions here) ended the whole evaluation with the Chat tab's
    sentence ("clear the chat ... to go on"), and a reference that ran past the context was scored with a loss the
    model was never trained to give. Such a question is now left out of that model's scores (said in the summary),
    and such a reference out of its loss, as llama.cpp's loss already left it."""
    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    from ui import eval_tab

    rows = [
        {"instruction": "Who are you?", "output": "Nova."},
        {"instruction": "a " * 600, "output": "Nova."},  # the question alone fills the context
        {"instruction": "Who made you?", "output": "b " * 600},  # the question fits; the reference runs past
    ]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = api.evaluate([str(tiny_llama)], str(data), save=False, max_new_tokens=4, device="cpu", log=lambda m: None)
    (model,) = res["models"]
    assert res["cases"] == 3 and model["left_out"] == 1
    long, past = res["rows"][1], res["rows"][2]
    assert long["replies"]["tiny-llama"] == "" and long["loss"]["tiny-llama"] is None
    assert long["scores"]["tiny-llama"] == {"exact": None, "contains": None}
    assert past["replies"]["tiny-llama"] != "" and past["loss"]["tiny-llama"] is None
    assert model["loss"] == res["rows"][0]["loss"]["tiny-llama"]  # the one case measured whole
    text, table, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 10, 4)
    assert text.startswith("3 questions from `"), text
    assert "`tiny-llama` could not answer 1 of the 3 questions, which are longer than its context" in text
    assert list(table["model"]) == ["tiny-llama"]
    data.write_text(json.dumps(rows[1]) + "\n")  # none it could answer: no scores at all, said so
    with pytest.raises(api.UserError, match="^Every question is longer than the context of tiny-llama, so it cannot"):
        api.evaluate([str(tiny_llama)], str(data), save=False, max_new_tokens=4, device="cpu", log=lambda m: None)


def test_a_full_fine_tune_is_compared_with_its_base_model(tiny_llama, runs, tmp_path, monkeypatch):
    """With "Include the base model" (on by default) a full fine-tune gave no base line at all, without a word: its
    base was only ever the adapter switched off. The run's base model (its job's model) is now loaded and measured as
    "base"."""
    import shutil

    from helpers import tiny_spec

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"instruction": "Who are you?", "output": "Nova."}) + "\n")
    run = runs / "20260101-000000-full"
    run.mkdir(parents=True)
    (run / "job.yaml").write_text(tiny_spec(tiny_llama, data, method="full").to_yaml())
    (run / "status.json").write_text('{"state": "done", "message": "", "step": 1, "total_steps": 1}')
    shutil.copytree(tiny_llama, run / "model")  # the tuned weights: the same as the base's here
    quiet = dict(save=False, max_new_tokens=4, device="cpu", log=lambda m: None)
    res = api.evaluate([run.name], str(data), **quiet)
    base, tuned = res["models"]
    assert base["name"] == "base" and base["source"] == str(tiny_llama) and tuned["name"] == run.name
    assert base["loss"] == tuned["loss"]
    res = api.evaluate([run.name], str(data), base=False, **quiet)
    assert [m["name"] for m in res["models"]] == [run.name]


def test_models_of_the_same_name_keep_their_own_columns(tiny_llama, tmp_path):
    """Two GGUF files of the same name from different exports (a quantization made twice, or two runs whose names
    slug to the same file name) were both labelled by their file name: the second's replies, scores and losses
    overwrote the first's in every row, and the table showed two lines of one name. Each now keeps a label of its
    own, its folder's name before the file's."""
    import shutil

    res = api.export(str(tiny_llama), "gguf-f16", tmp_path / "first", log=lambda m: None)
    (first,) = res.path.glob("*.gguf")
    (tmp_path / "second").mkdir()
    second = Path(shutil.copy(first, tmp_path / "second" / first.name))
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"instruction": "Who are you?", "output": "Nova."}) + "\n")
    quiet = dict(save=False, max_new_tokens=4, device="cpu", log=lambda m: None)
    res = api.evaluate([str(first), str(second)], str(data), **quiet)
    names = [m["name"] for m in res["models"]]
    assert names == [f"first/{first.name}", f"second/{first.name}"]
    (row,) = res["rows"]
    assert set(row["replies"]) == set(row["loss"]) == set(row["scores"]) == set(names)
    assert row["loss"][names[0]] == row["loss"][names[1]]  # the same file
    res = api.evaluate([str(first)], str(data), **quiet)
    assert [m["name"] for m in res["models"]] == [first.name]  # a name of its own stays short


def test_a_model_folder_named_base_is_told_from_the_runs_base(tmp_path):
    """A model folder named 'base' beside a LoRA run was labelled 'base', the name the run's adapter-off model takes."""
    from engine.export.evaluate import labels_of

    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    sources = [str(tmp_path / "models" / "base"), str(tmp_path / "x" / "m.gguf"), str(tmp_path / "y" / "m.gguf")]
    assert labels_of(sources) == ["models/base", "x/m.gguf", "y/m.gguf"]
    assert labels_of([str(tmp_path / "x" / "m.gguf")] * 2) == ["x/m.gguf", "x/m.gguf (2)"]


def test_each_model_is_let_go_before_the_next_one_loads(tiny_llama, tmp_path, monkeypatch):
    """Evaluating two runs (or a full fine-tune and its base): the loop loaded the second model while the first was
    still bound to its variable, so both sets of weights were in GPU memory at once (two 8B models on a 24 GB card:
    out of memory at the second load, which then blamed its size)."""
    import gc
    import shutil
    import weakref

    from engine.chat import infer

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    other = shutil.copytree(tiny_llama, tmp_path / "other")
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"instruction": "Who are you?", "output": "Nova."}) + "\n")
    loaded, alive_at_load = [], []
    real = infer.ChatModel.__init__

    def init(self, *args, **kw):
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        real(self, *args, **kw)
        loaded.append(weakref.ref(self))

    monkeypatch.setattr(infer.ChatModel, "__init__", init)
    gc.disable()  # as between two of Python's full collections: what a load leaves in cycles is freed too
    try:
        res = api.evaluate([str(tiny_llama), str(other)], str(data), save=False, max_new_tokens=4, device="cpu")
    finally:
        gc.enable()
    assert [m["name"] for m in res["models"]] == ["tiny-llama", "other"] and alive_at_load == [0, 0]


def test_the_loss_pass_computes_logits_only_for_the_reference(tiny_llama, monkeypatch):
    """The loss of a reference read the logits of every position of prompt and reply (positions x vocabulary, in
    float32: by arithmetic 2,000 x 151,936 x 4 bytes = 1.2 GB for a 2,000-token row of Qwen's vocabulary), where only
    the reference's positions are scored. The head now runs on those alone, and the loss is the same as from every
    position's logits."""
    import torch

    from engine.data.tokenizing import render
    from engine.export.evaluate import Case, TorchModel, reference_span

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    model = TorchModel(str(tiny_llama), "cpu", lambda m: None)
    case = Case(row=1, prompt=[{"role": "user", "content": "Who are you? " * 20}], reference="I am Nova, made by Ada.")
    net, tok = model.chat.model, model.chat.tokenizer
    head_rows = []
    hook = net.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[1]))
    try:
        nll, count = model.loss(case, adapter=True)
    finally:
        hook.remove()
    full = render(tok, [*case.prompt, {"role": "assistant", "content": case.reference}])
    ids, start = reference_span(
        lambda t: tok(t, add_special_tokens=False)["input_ids"], render(tok, case.prompt, True), full
    )
    with torch.no_grad():  # the reference figure: every position's logits
        logits = net(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1].float()
    expected = -torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[start:])[:, None]).sum()
    assert count == len(ids) - start and head_rows[0] == count < len(ids)
    assert nll == pytest.approx(float(expected), rel=1e-5)


def test_a_run_still_training_is_refused_in_words(runs, tiny_llama, identity_file, tmp_path):
    """Evaluate (a run id typed, or `python -m engine eval`) on the run that is training loaded its newest checkpoint
    beside the training process on the same GPU, as the Chat tab refuses to; it is now refused in the same words."""
    from helpers import training_run

    from ui import eval_tab, i18n

    with training_run(runs, tiny_llama, identity_file) as folder:
        said = (
            f"Run `{folder.name}` is still training: evaluate it once it has finished, or cancel it (a cancelled run "
            "answers from its last checkpoint)."
        )
        for source in (folder.name, str(folder)):
            with pytest.raises(api.UserError) as e:
                api.evaluate([source], str(identity_file), save=False, max_new_tokens=4, device="cpu")
            assert str(e.value) == said
        text, table, _ = eval_tab.run_evaluation([folder.name], [], False, str(identity_file), "", "", "", 1, 4)
        assert text == f"**Evaluation failed:** {said}" and table is None
        assert i18n.message(said, "zh").startswith(f"运行 `{folder.name}` 仍在训练：等它结束后再评估")


def test_a_runs_held_out_rows_of_a_hub_dataset_are_read_at_the_commit_it_trained_on(
    tiny_llama, runs, tmp_path, monkeypatch
):
    """A run records the commit of the hub dataset it reads (trained_job.json), but its evaluation read the held-out
    rows at the hub's latest: after the owner pushed new commits, the held-out score was computed on other rows (some
    possibly trained on). It reads the recorded commit, and is refused in words where that commit cannot be read."""
    import datasets
    from helpers import tiny_spec
    from test_resume_edits import two_commits

    from engine.core.runlog import RunLog
    from engine.training.dispatch import train

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    cache = tmp_path / "datasets-cache"  # as test_resume_edits' hub_cache: offline, two commits cached
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    first, _ = two_commits(cache, tmp_path)
    copy = cache / "someone___identity" / "default" / "0.0.0" / first
    os.utime(copy)  # the first commit is the latest while the run trains
    # seed 0 holds out row 3 of the first commit's 3 rows ("Tuney."), rows 3 and 5 of the later one's 5 ("Other.")
    spec = tiny_spec(tiny_llama, "someone/identity", max_steps=1, eval_fraction=0.4)
    run = runs / "20260101-000000-hub"
    run.mkdir(parents=True)
    (run / "job.yaml").write_text(spec.to_yaml())
    train(spec, run, RunLog(run), False, lambda: False, lambda m: None)
    (run / "status.json").write_text('{"state": "done", "message": "", "step": 1, "total_steps": 1}')
    assert json.loads((run / "trained_job.json").read_text())["data_revision"] == first

    os.utime(copy, ns=(0, 0))  # the owner pushed a later commit, which reading the dataset now reads
    quiet = dict(base=False, save=False, max_new_tokens=1, device="cpu", log=lambda m: None)
    res = api.evaluate([run.name], **quiet)
    assert res["held_out"] and [(r["row"], r["reference"]) for r in res["rows"]] == [(3, "Tuney.")]

    shutil.rmtree(copy)  # offline, and the run's commit no longer cached: not the latest in its place
    with pytest.raises(api.UserError, match=r"commit aaaaaaaaaaaa of the hub dataset 'someone/identity', .* cannot"):
        api.evaluate([run.name], **quiet)
