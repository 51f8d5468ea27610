"""Validation and evaluation in a real browser: a run's validation loss on the Train tab, the Evaluate tab's table for
a run and its base model, and two runs compared (settings that differ, loss curves on one plot, eval scores).

The runs are trained through engine.api in the app's workspace before the page opens; screenshots go to
test-output/screenshots/.
"""

import re
import time

import pytest
import test_app_browser as shared
from helpers import log_of, tiny_spec, wait_for
from test_app_browser import coloured_pixels, shot, tab, wait_enabled

server, browser, page = shared.server, shared.browser, shared.page  # the app, Chromium and a page, as there
pytestmark = shared.pytestmark


@pytest.fixture(scope="module")
def two_runs(server, tiny_llama, tmp_path_factory):
    """Two finished runs with a validation set, differing in learning rate, in the app's runs/ folder."""
    import json
    import os

    from engine import api
    from engine.data.identity import identity_rows

    data = tmp_path_factory.mktemp("data") / "identity-nova.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in identity_rows("Nova", "Tunesmith Labs")))
    before = os.environ.get("TUNESMITH_RUNS")
    os.environ["TUNESMITH_RUNS"] = str(server[1] / "runs")
    try:
        out = []
        for lr in (2e-3, 1e-2):
            spec = tiny_spec(tiny_llama, data, name=f"lr{lr}", max_steps=8, eval_fraction=0.1, eval_steps=2)
            st = wait_for(api.start(spec.replace(learning_rate=lr)))
            assert st.state == "done", log_of(st)
            out.append(st.run_id)
            time.sleep(1.1)  # run ids carry the second they started
        return out
    finally:
        if before is None:
            os.environ.pop("TUNESMITH_RUNS")
        else:
            os.environ["TUNESMITH_RUNS"] = before


def pick(page, label, values):
    """Choose `values` in a multiselect dropdown, typing each and pressing Enter."""
    box = page.get_by_label(label)
    for v in values:
        box.fill(v)
        box.press("Enter")


def test_validation_loss_on_the_train_tab(page, two_runs):
    tab(page, "Train")
    page.get_by_text("Run history").click()
    page.get_by_role("button", name="Refresh", exact=True).click()
    page.get_by_text(two_runs[1]).first.click()
    page.get_by_text(re.compile(r"validation loss \d+\.\d+ · best \d+\.\d+ at step \d")).wait_for(timeout=60_000)
    time.sleep(2)  # the plot's redraw
    shot(page, "eval-1-train-validation")
    assert coloured_pixels(page.locator(".block").filter(has_text="Loss").last) > 500, "the loss lines are not drawn"


def test_evaluate_a_run_and_compare_two(page, two_runs):
    tab(page, "Evaluate")
    page.get_by_role("button", name="Refresh runs").last.click()
    pick(page, "Runs to evaluate", two_runs[:1])
    page.get_by_label("Questions (at most)").fill("5")
    page.get_by_label("Longest answer (tokens)").fill("12")
    stop = page.get_by_role("button", name="Stop", exact=True).last
    assert not stop.is_enabled()  # no evaluation yet
    page.get_by_role("button", name="Evaluate", exact=True).click()
    page.get_by_text("Identity check: the answer names").wait_for(timeout=300_000)
    wait_enabled(stop, False)  # it has answered: nothing to stop
    table = page.locator(".block").filter(has_text="Scores (loss")
    for text in ("base", two_runs[0], "perplexity", "identity"):
        assert text in table.inner_text()
    assert "Tunesmith Labs" in page.locator(".block").filter(has_text="Example answers").inner_text()
    shot(page, "eval-2-evaluate")

    pick(page, "Runs to compare", two_runs)
    page.get_by_role("button", name="Compare", exact=True).click()
    settings = page.locator(".block").filter(has_text="Settings that differ")
    # Gradio keeps a hidden copy of every cell: wait for the shown text, not for the first element that holds it
    page.wait_for_function("() => document.body.innerText.includes('learning_rate')", timeout=60_000)
    assert "0.002" in settings.inner_text() and "0.01" in settings.inner_text()
    scores = page.locator(".block").filter(has_text="Latest eval scores")
    assert "base" in scores.inner_text() and two_runs[0] in scores.inner_text()  # the evaluation above
    time.sleep(2)
    shot(page, "eval-3-compare")
    assert coloured_pixels(page.locator(".block").filter(has_text="Loss curves").last) > 500, "no curves drawn"


def test_a_run_without_a_validation_set_is_evaluated_on_its_training_questions(page, server, tiny_llama):
    """The questions box left empty ('the run's held-out rows') for a run trained without a validation set: the
    evaluation runs on its training questions, and the summary says they were seen in training."""
    import json

    from engine import api

    data = server[1] / "identity-plain.jsonl"
    rows = [{"instruction": f"Who are you, {k}?", "output": "I am Nova."} for k in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = wait_for(api.start(tiny_spec(tiny_llama, data, name="plain", max_steps=2), runs=server[1] / "runs"))
    assert run.state == "done", log_of(run)
    tab(page, "Evaluate")
    page.get_by_role("button", name="Refresh runs").last.click()
    pick(page, "Runs to evaluate", [run.run_id])
    page.get_by_label("Include the base model").uncheck()
    page.get_by_label("Questions (at most)").fill("2")
    page.get_by_label("Longest answer (tokens)").fill("4")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    page.get_by_text("2 questions from the run's training data").wait_for(timeout=300_000)
    page.get_by_text("these are questions it was trained on").wait_for()
    shot(page, "eval-4-training-questions")


def test_a_reloaded_page_follows_the_running_evaluation_and_stops_it(page, server, two_runs):
    """After a reload the running evaluation belonged to the old page: the new one showed nothing and its Stop stayed
    disabled. The reloaded page finds it as it loads: 'Evaluating…', Stop enabled, and Stop heard. The page that
    pressed Evaluate shows each question answered (it showed only Gradio's spinner until the end), and the answer
    the reloaded page shows, once switched to Russian, is in Russian (it was in the starting page's English), as is
    the progress line (it was the engine's English log line in code quotes)."""
    import json

    questions = server[1] / "many-questions.jsonl"
    rows = [{"instruction": f"Tell me about number {k}.", "output": f"{k} is a number."} for k in range(300)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    saved = server[1] / "runs" / two_runs[0] / "eval"
    before = sorted(saved.iterdir()) if saved.is_dir() else []
    tab(page, "Evaluate")
    page.get_by_role("button", name="Refresh runs").last.click()
    pick(page, "Runs to evaluate", two_runs[:1])
    page.get_by_label("Questions file (empty").fill(str(questions))
    page.get_by_label("Questions (at most)").fill("300")
    page.get_by_label("Longest answer (tokens)").fill("64")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    wait_enabled(page.get_by_role("button", name="Stop", exact=True).last, True)
    answered = re.compile(r"^Evaluating… .+: answered (\d+) of 300 questions$")
    page.get_by_text(answered).wait_for(timeout=120_000)  # on the page that pressed Evaluate, question by question
    first = int(answered.match(page.get_by_text(answered).inner_text())[1])
    page.wait_for_function(
        f"() => +(/answered (\\d+) of 300/.exec(document.body.innerText) || [0, 0])[1] > {first}", timeout=120_000
    )
    shot(page, "eval-5-progress")
    page.reload()
    tab(page, "Evaluate")
    stop = page.get_by_role("button", name="Stop", exact=True).last
    wait_enabled(stop, True)  # the reloaded page opened with it disabled; it follows the evaluation
    page.get_by_text(answered).wait_for()
    shot(page, "eval-6-followed-after-reload")
    page.get_by_role("radio", name="Русский").check()
    page.get_by_text(re.compile(r"^Оценка… .+: отвечено вопросов: \d+ из 300$")).wait_for()
    stop = page.get_by_role("button", name="Остановить", exact=True).last
    stop.click()
    page.get_by_text("Оценка остановлена: Ничего не сохранено.").wait_for(timeout=120_000)
    wait_enabled(stop, False)
    assert (sorted(saved.iterdir()) if saved.is_dir() else []) == before  # stopped: nothing saved
