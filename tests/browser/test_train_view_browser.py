"""The Train view in a real browser (issue 25): it follows the active run whatever happens to the page, shows every
setting with its help and as a job file, checks settings in the user's words, draws progress, speed and memory,
cancels at once, keeps its state across a language switch, and its history refreshes itself.

Same set-up as test_app_browser.py (its fixtures and helpers); screenshots go to test-output/screenshots/.
"""

import re
import time

import pytest
import test_app_browser as app_browser
from test_app_browser import (
    choose_model,
    coloured_pixels,
    expect_value,
    line_points,
    set_number,
    shot,
    tab,
    use_identity_data,
    wait_enabled,
    x_tick_labels,
)

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


def start_long_run(page, tiny_llama, identity_file):
    """A run of many steps on the tiny model, training when this returns; returns its id."""
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    set_number(page, "Steps (0: use epochs)", 100000)
    assert not cancel_button(page).is_enabled()  # nothing to cancel yet
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)
    wait_enabled(cancel_button(page), True)
    return page.get_by_label("Run", exact=True).input_value()


def cancel_button(page):
    return page.get_by_role("button", name="Cancel", exact=True)


def step_shown(page) -> int:
    text = page.get_by_text(RUNNING).inner_text()
    return int(re.search(r"step (\d+)", text).group(1))


def cancel_and_wait(page):
    cancel_button(page).click()
    page.get_by_text(re.compile(r"^cancelled · ")).first.wait_for(timeout=120_000)
    wait_enabled(cancel_button(page), False)  # nothing left to cancel


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
    wait_enabled(cancel_button(page), True)  # the reloaded page opened with it disabled; it follows the run
    page.get_by_text("Run history").click()
    history_cell(page, run_id).wait_for(timeout=30_000)
    shot(page, "25-1-followed-after-reload")
    cancel_and_wait(page)


def test_the_note_of_a_second_start_goes_when_the_run_it_names_ends(page, server, tiny_llama, identity_file):
    """The note 'Not started: Run X is still training; cancel it or wait' stayed under the buttons after X was
    cancelled (or had finished): the note is cleared once the run in view has ended."""
    start_long_run(page, tiny_llama, identity_file)
    page.get_by_role("button", name="Start training").click()
    note = page.get_by_text("is still training").first
    note.wait_for()
    cancel_and_wait(page)
    note.wait_for(state="hidden", timeout=10_000)
    shot(page, "train-busy-note-cleared")


def test_a_run_picked_in_the_history_shows_its_own_progress(page, server, tiny_llama, identity_file):
    """Picking a finished run in the history changed the status line to it, but the progress bar (its step count and
    elapsed time) and the speed and memory plots stayed the run shown before, as no timer ticks for a finished run."""
    from helpers import tiny_spec, wait_for

    from engine import api

    short, longer = (
        wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_steps=n, name=f"s{n}"), runs=server[1] / "runs"))
        for n in (2, 3)
    )
    tab(page, "Train")
    page.get_by_text("Run history").click()
    for run, steps in ((longer, 3), (short, 2)):
        history_cell(page, run.run_id).click()
        page.get_by_text(re.compile(rf"^done · step {steps}/{steps}")).wait_for(timeout=30_000)
        page.get_by_text(re.compile(rf"^step {steps}/{steps} · 100% · elapsed")).wait_for(timeout=10_000)
    shot(page, "train-history-pick-progress")


def test_4_every_setting_with_help_saved_loaded_and_as_a_command(page, server, tiny_llama, identity_file, tmp_path):
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    page.get_by_text("Advanced", exact=True).click()
    for help_line in (
        "Steps over which the learning rate rises",
        "Scales the adapter's effect",
        "Fixes the data order",
    ):
        page.get_by_text(help_line).first.wait_for()
    set_number(page, "Warmup steps", 5)
    set_number(page, "Seed", 77)
    page.get_by_label("rsLoRA").check()
    page.get_by_text("Job file and command line").click()
    page.get_by_role("button", name="Save as job.yaml").click()
    page.get_by_text("python -m engine train job.yaml").wait_for()
    page.get_by_text("warmup_steps: 5").first.wait_for()
    page.get_by_text("use_rslora: true").first.wait_for()
    shot(page, "25-4-advanced-and-job-file")

    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {tiny_llama}\ndata: {identity_file}\nname: loaded\nmax_steps: 33\nlearning_rate: 0.0005\n"
        "seed: 99\nlr_schedule: cosine\n"
    )
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Load job.yaml").click()
    chooser.value.set_files(str(job))
    page.get_by_text("Loaded the settings of job.yaml").wait_for()
    expect_value(page.get_by_label("Steps (0: use epochs)", exact=True), re.compile(r"^33$"))
    expect_value(page.get_by_label("Seed", exact=True), re.compile(r"^99$"))
    expect_value(page.get_by_label("Run name"), re.compile(r"^loaded$"))
    shot(page, "25-4-job-loaded")


def test_a_loaded_grpo_job_shows_its_rewards_ticked(page, server, tiny_llama, tmp_path):
    """Load job.yaml of a GRPO run left its rewards unticked, so Start trained with other rewards or refused."""
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "What is two plus two?", "answer": "4"}\n')
    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {tiny_llama}\ndata: {data}\nobjective: grpo\nrewards:\n"
        "- {preset: regex, pattern: '^[0-9]+$', weight: 0.5}\n- {preset: answer, mode: numeric}\n"
    )
    tab(page, "Train")
    page.get_by_text("Job file and command line").click()
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Load job.yaml").click()
    chooser.value.set_files(str(job))
    page.get_by_text("Loaded the settings of job.yaml").wait_for()
    regex = page.get_by_label("Reply matches a regular expression")
    regex.wait_for()
    deadline = time.time() + 30
    while not (regex.is_checked() and page.get_by_label("Answer matches the dataset column").is_checked()):
        assert time.time() < deadline, "the job's rewards were not ticked"
        time.sleep(0.2)
    expect_value(page.get_by_label("Pattern", exact=True), re.compile(r"^\^\[0-9\]\+\$$"))
    assert page.get_by_label("numeric").is_checked()
    assert not page.get_by_label("Length within bounds (characters)").is_checked()
    shot(page, "grpo-job-loaded-with-rewards")


def test_6_settings_checked_in_the_users_words(page, server, tiny_llama, identity_file):
    runs = server[1] / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Model")
    page.get_by_label("…or a hub id or local folder").fill("no-such-folder/model")
    page.get_by_label("…or a hub id or local folder").press("Enter")
    page.get_by_text("Memory estimate unavailable").wait_for()  # the Model tab knows it is not there
    tab(page, "Train")
    set_number(page, "Learning rate", -1)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Learning rate must be a positive number; you entered -1.").first.wait_for()
    set_number(page, "Learning rate", 50)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Learning rate 50 is far above the usual range").first.wait_for()
    shot(page, "25-6-warning")
    page.get_by_role("button", name="Start training").click()  # again: the warning was seen
    page.get_by_text(re.compile(r"^Not started: Could not read the config of 'no-such-folder/model'")).first.wait_for()
    shot(page, "25-6-missing-model")
    assert (set(runs.iterdir()) if runs.exists() else set()) == before  # no run folder was made


def test_5_progress_bar_times_and_speed_and_memory_charts(page, server, tiny_llama, identity_file):
    start_long_run(page, tiny_llama, identity_file)
    page.wait_for_function("() => /step ([3-9]|\\d\\d+)\\//.exec(document.body.innerText)", timeout=120_000)
    bar = page.locator(".ts-progress")
    bar.get_by_text(re.compile(r"elapsed \d+.* · about .* left")).wait_for(timeout=30_000)
    assert bar.locator("progress").get_attribute("max") == "100"
    time.sleep(2)  # the charts' redraw
    shot(page, "25-5-progress")
    for name in ("Loss", "Tokens/s", "Memory (GB)"):
        chart = page.locator(".block").filter(has=page.get_by_text(name, exact=True)).last
        # drawn (its line short: the step axis spans 50 steps so early in a run), over whole steps only
        assert line_points(chart) >= 3 and coloured_pixels(chart) > 10, f"the {name} line is not drawn"
        ticks = x_tick_labels(chart)
        assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), (name, ticks)
    # a flat memory line was scaled to its own width: ticks 0.5210, 0.5215, ... GB; the axis starts at 0
    memory = page.locator(".block").filter(has=page.get_by_text("Memory (GB)", exact=True)).last
    assert not re.search(r"\d\.\d{3,}", memory.inner_text()), memory.inner_text()
    cancel_and_wait(page)


def test_8_cancel_at_once_history_refreshes_itself_and_deleting_asks(page, server, tiny_llama, identity_file):
    run_id = start_long_run(page, tiny_llama, identity_file)
    page.get_by_text("Run history").click()
    row = history_cell(page, run_id)
    row.wait_for(timeout=30_000)  # no Refresh pressed
    cells = page.get_by_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")).locator("visible=true")
    assert cells.count() >= 1  # the start time
    page.get_by_text(re.compile(r"^\d+ (s|min \d\d s)$")).locator("visible=true").first.wait_for()  # the duration
    page.get_by_role("button", name="Cancel", exact=True).click()
    page.get_by_text(re.compile(r"^cancelling · ")).first.wait_for(timeout=10_000)  # before the run has stopped
    shot(page, "25-8-cancelling")
    page.get_by_text(re.compile(r"^cancelled · ")).first.wait_for(timeout=120_000)

    row.click()
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('span')].some(s => s.innerText === '{run_id}' &&
            [s.parentElement, s.parentElement.parentElement].some(
                e => getComputedStyle(e).backgroundColor === 'rgb(253, 230, 138)'))""",
        timeout=30_000,
    )  # the selected row is highlighted
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_text(f"Delete run {run_id} and everything in its folder").wait_for()
    shot(page, "25-8-delete-asks")
    page.get_by_role("button", name="Keep it").click()
    time.sleep(1)
    assert (server[1] / "runs" / run_id).is_dir()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("button", name="Yes, delete it").click()
    page.get_by_text(f"Deleted run {run_id}.").wait_for()
    assert not (server[1] / "runs" / run_id).exists()


def test_2_switching_language_keeps_live_state(page, server, tiny_llama, identity_file):
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    set_number(page, "Steps (0: use epochs)", 3)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"^done · step 3/3")).wait_for(timeout=300_000)
    live = ["Format:", "No GPU detected: the CPU trains", "done · step 3/3"]
    chinese = ["格式：", "未检测到 GPU：CPU 按下面的设置训练", "完成 · 第 3/3 步"]  # kept, and translated (item 12)

    def all_there(texts):
        for text in texts:  # hidden ones too (the Data tab's summary)
            assert page.get_by_text(text).count() >= 1, f"{text!r} is gone"

    page.get_by_role("radio", name="中文").check()
    page.get_by_role("tab", name="训练").wait_for()
    time.sleep(1)
    all_there(chinese)
    shot(page, "25-2-chinese-keeps-state")
    page.get_by_role("radio", name="English").check()
    page.get_by_role("tab", name="Train").wait_for()
    time.sleep(1)
    all_there(live)


def test_14_the_run_log_has_one_line_per_step(page, server, tiny_llama, identity_file):
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    set_number(page, "Steps (0: use epochs)", 4)  # gradient checkpointing on: micro-batches of several sizes
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"^done · step 4/4")).wait_for(timeout=300_000)
    page.get_by_text("Log", exact=True).click()
    page.get_by_role("button", name="Show log").click()
    box = page.get_by_label("log.txt (last 200 lines)")
    expect_value(box, re.compile(r"step 4/4: loss"))
    log = box.input_value()
    steps = re.findall(r"step (\d)/4: loss \d+\.\d{4}, lr \S+, [\d,]+ tokens/s, memory \d+\.\d\d GB", log)
    assert steps == ["1", "2", "3", "4"], log
    assert log.count("checkpointing:") <= 1, log  # the plan once, not once per step
    shot(page, "25-14-run-log")
