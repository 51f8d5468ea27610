"""The Train view in a real browser (issue 25): it follows the active run whatever happens to the page, shows every
setting with its help and as a job file, checks settings in the user's words, draws progress, speed and memory,
cancels at once, keeps its state across a language switch, and its history refreshes itself.

Same set-up as test_app_browser.py (its fixtures and helpers); screenshots go to test-output/screenshots/.
"""

import re
import time

import pytest
import test_app_browser as app_browser
from test_app_browser import choose_model, expect_value, set_number, shot, tab

browser, page, server = app_browser.browser, app_browser.page, app_browser.server  # its fixtures
RUNNING = re.compile(r"^running · step [1-9]")


@pytest.fixture(autouse=True)
def no_run_left_training(server):
    """A failed test must not leave a run training: the next one would find it active."""
    yield
    from engine import api

    for run in api.list_runs(server[1] / "runs"):
        if not run.finished:
            api.cancel(run.run_dir)


def history_cell(page, text):
    """The visible history cell holding `text` (the table keeps hidden copies of its cells for measuring)."""
    return page.get_by_text(text, exact=True).locator("visible=true").first


def use_identity_data(page, identity_file):
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(identity_file))
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"identity\.jsonl$"))


def start_long_run(page, tiny_llama, identity_file):
    """A run of many steps on the tiny model, training when this returns; returns its id."""
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    set_number(page, "Steps (0: use epochs)", 100000)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)
    return page.get_by_label("Run", exact=True).input_value()


def step_shown(page) -> int:
    text = page.get_by_text(RUNNING).inner_text()
    return int(re.search(r"step (\d+)", text).group(1))


def cancel_and_wait(page):
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.get_by_text(re.compile(r"^cancelled · ")).first.wait_for(timeout=120_000)


def test_1_the_view_follows_the_active_run(page, server, tiny_llama, identity_file):
    run_id = start_long_run(page, tiny_llama, identity_file)
    page.get_by_role("button", name="Start training").click()  # a second Start
    page.get_by_text("is still training").first.wait_for()
    time.sleep(2)
    assert page.get_by_label("Run", exact=True).input_value() == run_id
    before = step_shown(page)
    page.wait_for_function(f"() => /step (\\d+)/.exec(document.body.innerText)[1] > {before}", timeout=30_000)

    page.reload()
    tab(page, "Train")
    expect_value(page.get_by_label("Run", exact=True), re.compile(re.escape(run_id)), timeout=30)
    page.get_by_text(RUNNING).wait_for(timeout=30_000)
    page.get_by_text("Run history").click()
    history_cell(page, run_id).wait_for(timeout=30_000)
    shot(page, "25-1-followed-after-reload")
    cancel_and_wait(page)
