"""The Evaluate tab's handlers and the validation series it lends the Train tab's loss plot."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from engine import api
from ui import eval_tab

ROOT = Path(__file__).resolve().parent.parent


def metrics():
    return [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.5, "eval_loss": 2.8},
        {"step": 3, "loss": 2.0},
        {"step": 4, "loss": 1.5, "eval_loss": 2.9},
    ]


def test_validation_is_a_series_of_its_own():
    frame = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [3.0, 2.5, 2.0, 1.5], "series": ["raw"] * 4})
    out = eval_tab.with_validation(frame, metrics())
    assert out[out.series == "validation"][["step", "loss"]].values.tolist() == [[2, 2.8], [4, 2.9]]
    assert len(out[out.series == "raw"]) == 4
    assert eval_tab.with_validation(frame, metrics()[:1]) is frame
    assert eval_tab.with_validation(None, metrics()) is None


def test_validation_line_names_the_best_step():
    assert eval_tab.validation_lines(metrics()) == [
        "validation loss 2.9000 · best 2.8000 at step 2 (kept in the run's best/ folder)"
    ]
    assert eval_tab.validation_lines(metrics()[:1]) == []


def test_tables_of_results():
    results = {
        "models": [
            {"name": "base", "loss": 3.21, "perplexity": 24.8, "scores": {"exact": 0.0, "identity": 0.0}},
            {"name": "run", "loss": None, "perplexity": None, "scores": {"exact": 0.5, "identity": 1.0}},
        ],
        "rows": [
            {"prompt": f"q{k}", "reference": "r", "replies": {"base": "x", "run": "r"}}
            for k in range(eval_tab.EXAMPLES + 2)
        ],
    }
    table = eval_tab.score_table(results["models"])
    assert table.to_dict("records") == [
        {"model": "base", "loss": 3.21, "perplexity": 24.8, "exact": 0.0, "identity": 0.0},
        {"model": "run", "loss": "", "perplexity": "", "exact": 0.5, "identity": 1.0},
    ]
    examples = eval_tab.example_table(results)
    assert len(examples) == eval_tab.EXAMPLES and list(examples.columns) == ["question", "reference", "base", "run"]


def test_errors_become_a_sentence():
    text, table, examples = eval_tab.run_evaluation([], [], True, "", "", "", "", 5)
    assert text.startswith("**Evaluation failed:** Pick a model") and table is None and examples is None
    *_, note = eval_tab.compare(["only-one"])
    assert note == "**Comparison failed:** Pick two or more runs to compare."


def test_the_app_has_the_evaluate_tab():
    import app

    labels = {getattr(b, "label", None) for b in app.demo.blocks.values()}
    assert {"Evaluate", "Runs to evaluate", "Runs to compare", "Loss curves"} <= labels


def test_a_cleared_questions_box_evaluates_the_usual_number_not_every_row(tiny_llama, runs, tmp_path, monkeypatch):
    """Clearing 'Questions (at most)' (Gradio hands None) asked for limit 0, which reads as every row: a 50,000-row
    file meant a reply per row and model, hours with no way to stop it. A cleared box now takes the engine's usual
    number (engine.export.evaluate.LIMIT, 2 here)."""
    import json

    from engine.export import evaluate

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    monkeypatch.setattr(evaluate, "LIMIT", 2)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(3)))
    text, table, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", None, 4)
    assert text.startswith("2 questions from `"), text
    text, _, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 3, 4)
    assert text.startswith("3 questions from `"), text
    text, _, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 1, 4)
    first = text.split("\n")[0]
    assert first == f"1 question from `{data}`.", text  # said "1 questions from the `...`"
    from ui import i18n

    assert i18n.message(first, "zh") == f"来自 `{data}` 的 1 个问题。"


def test_a_scoring_regex_too_slow_is_a_sentence_and_the_evaluation_finishes(tiny_llama, runs, tmp_path, monkeypatch):
    """A scoring regex that backtracks without end (nested repeats, on a long reply) held the request for ever. Here
    the limit is 0, so every reply is too slow: the evaluation finishes, those replies score 0, and the summary says
    why, in the page's language too."""
    import json

    from engine.core import patterns
    from ui import i18n

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    monkeypatch.setattr(patterns, "TIMEOUT_S", 0)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(2)))
    pattern = r"((.|\s)*)*\d\d\d\d\d"
    text, table, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), pattern, "", "", 2, 4)
    assert text.startswith("2 questions from `"), text
    said = f"The scoring regex '{pattern}' is too slow: it ran past 0 s on a reply of "
    assert text.count(said) == 1 and "simplify the pattern" in text, text
    assert table["regex"].tolist() == [0.0]
    note = text[text.index(said) :].split("\n")[0]
    assert i18n.message(note, "zh").startswith(f"评分正则 '{pattern}' 太慢")


def test_an_evaluation_out_of_gpu_memory_is_a_sentence(tiny_llama, runs, tmp_path, monkeypatch):
    """The loss pass over a long reference (every position's logits at once) running out of GPU memory reached the
    Evaluate tab as torch's OutOfMemoryError, an error box; a reply that did said "clear the chat", the Chat tab's
    advice. Both now say what to lower here."""
    import json

    import torch

    from engine.chat.infer import OUT_OF_MEMORY
    from engine.export import evaluate

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"instruction": "Who are you?", "output": "Nova."}) + "\n")
    said = (
        "**Evaluation failed:** The GPU ran out of memory evaluating tiny-llama; lower 'Longest answer (tokens)', or "
        "evaluate on shorter questions or a smaller model."
    )

    def loss(self, case, adapter):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.16 GiB")

    def reply(self, case, adapter, max_new_tokens):
        raise api.UserError(OUT_OF_MEMORY)

    for name, short in (("loss", loss), ("reply", reply)):
        with monkeypatch.context() as m:
            m.setattr(evaluate.TorchModel, name, short)
            text, table, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 1, 4)
        assert text == said and table is None, name


def test_evaluating_frees_the_chat_tabs_model_first(tiny_llama, runs, tmp_path, monkeypatch):
    """Train, chat, then evaluate: the Chat tab kept its model in GPU memory while the evaluation loaded its own copy
    of the same weights, twice the memory (an 8B LoRA fits a 24 GB card once, not twice), and the load's sentence
    then blamed the model's size. The chat's model is let go before an evaluation loads anything."""
    import gc
    import json
    import weakref

    from ui import chat_tab

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"instruction": "Who are you?", "output": "Nova."}) + "\n")
    chatting = weakref.ref(chat_tab._chat(str(tiny_llama)))
    loaded_at_eval = []
    real = api.evaluate

    def evaluate(*args, **kw):
        gc.collect()
        loaded_at_eval.append(chatting() is not None)
        return real(*args, **kw)

    monkeypatch.setattr(api, "evaluate", evaluate)
    text, _, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 1, 4)
    assert text.startswith("1 question from `") and loaded_at_eval == [False]
    assert chat_tab._chat(str(tiny_llama)) is not None  # the next message loads it again
    chat_tab._loaded.clear()


def test_stop_ends_a_running_evaluation_and_saves_nothing(tiny_llama, runs, tmp_path, monkeypatch):
    """An evaluation of many questions could not be stopped: the tab had no Stop, and the GPU stayed busy until the
    last reply (Train waited behind it). Stop now ends it before its next question, in Chinese too, and saves
    nothing."""
    import json

    import gradio as gr

    from engine.export import evaluate
    from ui import i18n

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(9)))
    request = gr.Request(session_hash="page-1")
    replies, real = [], evaluate.TorchModel.reply

    def reply(self, case, adapter, max_new_tokens):
        replies.append(case)
        if len(replies) == 2:  # the user presses Stop while the second answer is written
            eval_tab.stop_evaluation(request=request)
        return real(self, case, adapter, max_new_tokens)

    monkeypatch.setattr(evaluate.TorchModel, "reply", reply)
    text, table, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 9, 4, request)
    assert text == "**Evaluation stopped:** Nothing was saved." and table is None
    assert len(replies) == 2 and not (runs.parent / "evals").exists()
    assert i18n.message(text, "zh") == "**评估已停止：** 未保存任何内容。"
    replies.clear()  # the next evaluation starts afresh: the Stop pressed before is not kept
    monkeypatch.setattr(evaluate.TorchModel, "reply", real)
    text, *_ = eval_tab.run_evaluation([str(tiny_llama)], [], False, str(data), "", "", "", 2, 4, request)
    assert text.startswith("2 questions from `"), text


def test_stop_is_clickable_only_while_an_evaluation_runs(tiny_llama, runs, tmp_path, monkeypatch):
    """Stop was always clickable, with no evaluation running. It starts disabled; the Evaluate button's handler
    enables it once a Stop can be heard (the session's event is set up before), and disables it with the answer."""
    import json

    import gradio as gr

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    with gr.Blocks():
        assert eval_tab.build()["stop"].interactive is False
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(3)))
    request = gr.Request(session_hash="page-stop")
    steps = eval_tab.evaluating([str(tiny_llama)], [], False, str(data), "", "", "", 3, 4, request)
    key, _, _, _, stop, _ = next(steps)
    assert stop.interactive is True and eval_tab._EVALS["page-stop"].outputs is None
    eval_tab.stop_evaluation(key, request)  # pressed as soon as it is enabled: heard
    _, answer, _, _, stop, _ = next(steps)
    assert stop.interactive is False and answer == "**Evaluation stopped:** Nothing was saved."
    assert eval_tab._EVALS["page-stop"].outputs is not None and not (runs.parent / "evals").exists()
    assert eval_tab.follow()[0] == ""  # nothing running is left for a page to follow


def test_a_reloaded_page_follows_the_running_evaluation_and_stops_it(tiny_llama, runs, tmp_path, monkeypatch):
    """After a reload the running evaluation belonged to the old page (its session's Stop): the new page showed
    nothing, its Stop stayed disabled, and the answer went to the page that was gone. The load handler now finds
    it: progress shown, Stop enabled and heard, and the answer shown once it comes."""
    import json
    import threading

    import gradio as gr

    from engine.export import evaluate

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(9)))
    answering, go_on, real = threading.Event(), threading.Event(), evaluate.TorchModel.reply

    def reply(self, case, adapter, max_new_tokens):
        answering.set()
        go_on.wait(60)  # the evaluation is running while the page reloads
        return real(self, case, adapter, max_new_tokens)

    monkeypatch.setattr(evaluate.TorchModel, "reply", reply)
    assert eval_tab.follow()[0] == "" and eval_tab.follow()[-1].active is False  # none running: the page as it is
    old_page = gr.Request(session_hash="old-page")
    args = ([str(tiny_llama)], [], False, str(data), "", "", "", 9, 4, old_page)
    worker = threading.Thread(target=eval_tab.run_evaluation, args=args)
    worker.start()
    try:
        assert answering.wait(120)
        key, text, _, _, stop, timer = eval_tab.follow()  # the reloaded page loads
        assert key == "old-page" and text == f"Evaluating… `{tiny_llama.name}`: answering 9 questions"
        assert stop.interactive is True and timer.active
        assert eval_tab.follow(key)[4].interactive is True  # its timer's ticks
        eval_tab.stop_evaluation(key, gr.Request(session_hash="new-page"))  # the new page's Stop
    finally:
        go_on.set()
        worker.join(120)
    key, text, table, _, stop, timer = eval_tab.follow(key)
    assert text == "**Evaluation stopped:** Nothing was saved." and table is None
    assert key == "" and stop.interactive is False and not timer.active
    assert not (runs.parent / "evals").exists() and eval_tab.follow()[0] == ""


def test_a_run_without_a_validation_set_is_evaluated_on_its_training_questions(
    tiny_llama, runs, identity_file, monkeypatch
):
    """With the questions file left empty ('the run's held-out rows'), a run trained without a validation set (the
    default) was refused: 'Give the questions to evaluate on (a data file), or pick a run that held some out'. The
    tab now evaluates it on its training questions and says that they were seen in training and what to do for
    new ones; the CLI and the Python API keep the refusal unless asked (seen_rows)."""
    import pytest
    from helpers import wait_for

    from ui import i18n

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    assert st.state == "done"
    text, _, rows = eval_tab.run_evaluation([st.run_id], [], False, "", "", "", "", 3, 4)
    assert text.startswith(f"3 questions from the run's training data (`{identity_file}`). {eval_tab.SEEN_NOTE}")
    training = [json.loads(line) for line in identity_file.read_text().splitlines()[:3]]
    assert list(rows["question"]) == [r["instruction"] for r in training]  # its first rows, every one trained on
    said = "3 questions from the run's training data (`d.jsonl`)."  # each sentence is translated on its own
    assert i18n.message(said, "zh") == "来自运行训练数据（`d.jsonl`）的 3 个问题。"
    assert i18n.message(eval_tab.SEEN_NOTE, "ru").startswith("Запуск не отложил строк для валидации")
    with pytest.raises(api.UserError) as refused:  # the CLI and Python: what to give, or seen_rows
        api.evaluate([st.run_id], base=False, save=False)
    assert str(refused.value) == (
        f"Run '{st.run_id}' held no rows out for validation, so it has no unseen questions: give some (--data FILE "
        "on the command line, data= in Python), or evaluate it on the questions it trained on (--seen-rows, "
        "seen_rows=True in Python, as the app's Evaluate tab does), which shows what it learned rather than how it "
        "answers new questions."
    )
    # the command line's --seen-rows (it had none: its refusal could only point to --data)
    cli = [sys.executable, "-m", "engine", "eval", str(st.run_dir), "--no-base", "--limit", "3", "--no-save"]
    out = subprocess.run([*cli, "--seen-rows"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["seen_in_training"] and printed["cases"] == 3 and printed["data"] == str(identity_file)


def test_with_no_questions_and_no_run_the_tab_says_what_to_give_in_its_words(tiny_llama, runs):
    """With the questions file empty and no run picked, the tab said the engine's 'or pick a run that held some out
    for validation (eval_fraction or eval_data)', stale since the tab evaluates any run (on its training questions
    where it held none out). It names the tab's questions file and any run, translated."""
    from ui import i18n

    text, table, _ = eval_tab.run_evaluation([str(tiny_llama)], [], False, "", "", "", "", 3, 4)
    assert table is None and text == (
        "**Evaluation failed:** Give the questions to evaluate on (a questions file), or add a run: its held-out rows "
        "are used, else the questions it trained on."
    )
    assert (
        i18n.message(text, "zh")
        == "**评估失败：** 请给出用于评估的问题（问题文件），或加入一个运行：使用它留出的行，否则用它训练过的问题。"
    )
    assert i18n.message(text, "ru").startswith("**Оценка не удалась:** Укажите вопросы для оценки (файл вопросов)")


def test_the_loss_curves_of_compared_runs_tick_whole_steps(tiny_llama, identity_file, runs):
    """Compare's loss curves kept Vega's default ticks (1, 1.5, 2 for runs of a few steps) where the Train tab's
    plots over steps tick whole steps (train_live.step_plot); they now do too, at any width up to 2,800 pixels."""
    import math

    from helpers import wait_for
    from test_train_view import tick_spacing

    done = [wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=2))) for _ in "ab"]
    _, curves, _, note = eval_tab.compare([st.run_id for st in done])
    assert isinstance(curves, dict) and curves.get("x_lim"), curves
    assert sorted(set(curves["value"]["step"])) == [1, 2] and note.startswith("No run here has been evaluated")
    low, high = curves["x_lim"]
    assert low == 1 and int(high) == high
    for width in range(200, 2801, 40):
        spacing = tick_spacing(low, high, math.ceil(width / 40))
        assert spacing >= 1 and spacing == int(spacing), (width, spacing)


def test_the_page_that_pressed_evaluate_shows_each_question_answered(tiny_llama, runs, tmp_path, monkeypatch):
    """Evaluate's page showed nothing but Gradio's spinner until the last answer, and a page reloaded meanwhile only
    "evaluate: base on 50 cases" (the engine logged a line per model). The engine now logs each answer written, and
    the page that pressed Evaluate follows its own evaluation as a reloaded page does: its first answer names the
    evaluation and starts the timer whose ticks (`follow`) show the latest line, and the last one stops it. The line
    is said as a sentence, in the page's language (it was the engine's English log line, in code quotes)."""
    from types import SimpleNamespace

    import gradio as gr
    from gradio.context import LocalContext
    from test_i18n import english_left

    from ui import i18n

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(3)))
    lines = []
    api.evaluate([str(tiny_llama)], str(data), False, limit=3, max_new_tokens=4, save=False, log=lines.append)
    answered = [line for line in lines if ": answered " in line]
    assert answered == [f"evaluate: {tiny_llama.name}: answered {n} of 3" for n in (1, 2, 3)], lines
    for line in (line for line in lines if line.startswith("evaluate: ")):  # the model, each answer, the loss pass
        shown = eval_tab._progress(SimpleNamespace(line=line))
        assert shown.startswith(f"Evaluating… `{tiny_llama.name}`: ") and "evaluate:" not in shown, shown
        for lang in ("zh", "ru"):  # were the engine's English line, in code quotes
            assert not english_left(i18n.message(shown, lang)), i18n.message(shown, lang)

    request = gr.Request(session_hash="page-progress")
    steps = eval_tab.evaluating([str(tiny_llama)], [], False, str(data), "", "", "", 3, 4, request)
    key, text, _, _, stop, timer = next(steps)
    assert key == "page-progress" and text == "Evaluating…" and stop.interactive is True and timer.active
    evaluation = eval_tab._EVALS[key]
    evaluation.log("evaluate: tiny-llama: answered 2 of 3")  # as the engine does after the second answer
    assert eval_tab.follow(key)[1] == "Evaluating… `tiny-llama`: answered 2 of 3 questions"  # a tick of the timer
    i18n.SESSIONS["page-progress"] = "ru"  # the page switched to Russian meanwhile
    token = LocalContext.request.set(request)  # the tick answers that page, as in its event
    try:
        assert eval_tab.follow(key)[1] == "Оценка… `tiny-llama`: отвечено вопросов: 2 из 3"
    finally:
        LocalContext.request.reset(token)
        i18n.SESSIONS.pop("page-progress")
    key, text, table, _, stop, timer = next(steps)
    assert key == "" and text.startswith("3 questions from `") and not timer.active and stop.interactive is False
    assert evaluation.line.endswith("the loss of the 3 reference answers") and table is not None


def test_a_page_reloaded_in_another_language_shows_the_results_in_its_own(tiny_llama, runs, tmp_path, monkeypatch):
    """The results a reloaded page follows were made (and translated) by the page that pressed Evaluate: a page
    reloaded and switched to Russian showed an English page's results in English, and an English page a Russian
    one's in Russian. They are kept in English and each page shows them in its own language."""
    import contextlib

    import gradio as gr
    from gradio.context import LocalContext

    from ui import i18n

    @contextlib.contextmanager
    def on_page(page):  # the handlers answer this page, as in one of its events
        token = LocalContext.request.set(gr.Request(session_hash=page))
        try:
            yield gr.Request(session_hash=page)
        finally:
            LocalContext.request.reset(token)

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    monkeypatch.setitem(i18n.SESSIONS, "page-ru", "ru")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": "Nova."}) + "\n" for i in range(2)))
    args = ([str(tiny_llama)], [], False, str(data), "", "", "", 2, 4)
    with on_page("page-en") as request:
        english = eval_tab.run_evaluation(*args, request)  # the English page's own answer
    with on_page("page-ru"):
        followed_in_russian = eval_tab.follow("page-en")[1:4]  # a Russian page's tick, following it
    with on_page("page-ru") as request:
        russian = eval_tab.run_evaluation(*args, request)
    with on_page("page-en"):
        followed_in_english = eval_tab.follow("page-ru")[1:4]
    assert english[0].startswith("2 questions from `") and russian[0].startswith("2 вопросов из `")
    assert english[0].split("\n\n")[1].startswith("Saved to `")
    assert russian[0].split("\n\n")[1].startswith("Сохранено в `")
    for shown, want in ((followed_in_russian, russian), (followed_in_english, english)):
        question, saved = shown[0].split("\n\n")  # each evaluation saved to a folder of its own
        assert question == want[0].split("\n\n")[0] and saved[:12] == want[0].split("\n\n")[1][:12]
        assert list(shown[1].columns) == list(want[1].columns) and list(shown[2].columns) == list(want[2].columns)
    assert list(russian[1].columns) != list(english[1].columns)  # the tables' headers are translated too
