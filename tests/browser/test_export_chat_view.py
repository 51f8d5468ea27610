"""The Export and Chat tabs in a real browser (issue 25, items 3, 7, 9, 10, 11, 12, 13): each export downloaded
through the browser and loaded, the export page's sentences, the Chat tab's handling of what the user typed, the data
preview, error wording and the translations. Playwright drives headless Chromium against `python app.py`, with the
server, browser and page fixtures of test_app_browser.py; screenshots go to test-output/screenshots/.
"""

import json
import os
import re
import signal
import time
import zipfile

import pytest
from test_app_browser import (  # noqa: F401 (fixtures used by name)
    browser,
    download,
    expect_value,
    page,
    server,
    shot,
    tab,
    wait_enabled,
)


@pytest.fixture(scope="module")
def trained(server, tiny_llama):  # noqa: F811 (the imported fixture)
    """A finished 4-step LoRA run of the tiny Llama in the app's workspace, made after the page loaded its lists."""
    from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS
    from helpers import tiny_spec, wait_for

    from engine import api

    data = server[1] / "identity.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": q, "output": IDENTITY_ANSWER}) + "\n" for q in IDENTITY_QUESTIONS)
    )
    st = wait_for(api.start(tiny_spec(tiny_llama, data, max_steps=4, name="nova"), runs=server[1] / "runs"))
    assert st.state == "done"
    return st


def pick(page, label, value, nth=-1):  # noqa: F811
    box = page.get_by_label(label, exact=True).nth(nth)
    box.fill(value)
    box.press("Enter")


def export_log(page) -> str:  # noqa: F811
    """The Export tab's log, its accordion opened first where it is closed."""
    box = page.get_by_label("Export log lines", exact=True)
    if not box.is_visible():
        page.get_by_text("Export log", exact=True).click()
    box.wait_for(timeout=10_000)
    return box.input_value()


def export_through_the_page(page, run_id, fmt_label, folder):  # noqa: F811
    """Export `run_id` in the Export tab (its run list is not refreshed by hand) and wait until it is done."""
    tab(page, "Export")
    # the list of runs refreshes as the tab opens: a run typed before it arrives is not taken, so pick its option
    page.get_by_label("Run", exact=True).last.click()
    page.get_by_role("option", name=run_id).click(timeout=60_000)
    page.get_by_label(fmt_label).check()
    page.get_by_label("Folder name (under exports/)").fill(folder)
    cancel = page.get_by_role("button", name="Cancel export")
    wait_enabled(cancel, False)  # no export running (the last one, if any, has ended)
    page.get_by_role("button", name="Export", exact=True).click()
    said = page.get_by_text(re.compile(r"^(Exported |Export failed|Export cancelled)")).first
    said.wait_for(timeout=300_000)
    wait_enabled(cancel, False)
    if not said.inner_text().startswith("Exported "):
        shot(page, f"25-export-failed-{folder}")
        raise AssertionError(said.inner_text() + "\n" + export_log(page))


def test_each_export_downloads_through_the_browser_and_loads(page, server, trained, tmp_path):  # noqa: F811
    """Item 3: the adapter (a zip), the merged model (a zip) and the GGUF file with its Modelfile are offered as
    downloads with their sizes; what the browser saves loads in PEFT, transformers and llama.cpp."""
    import llama_cpp
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export_through_the_page(page, trained.run_id, "LoRA adapter (small; needs the base model)", "nova-lora")
    page.get_by_text(re.compile(r"Download below: nova-lora\.zip \(\d+\.\d KiB\)")).wait_for()
    shot(page, "25-3-export-download")
    zipped = download(page, "nova-lora.zip", tmp_path)
    zipfile.ZipFile(zipped).extractall(tmp_path)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained.model), tmp_path / "nova-lora")

    export_through_the_page(page, trained.run_id, "Merged 16-bit safetensors (standalone)", "nova-merged")
    zipfile.ZipFile(download(page, "nova-merged.zip", tmp_path)).extractall(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "nova-merged").num_parameters() > 0

    export_through_the_page(page, trained.run_id, "GGUF Q8_0", "nova-gguf")
    page.get_by_text(re.compile(r"Download below: Modelfile \(\d+ bytes\), nova-gguf-q8_0\.gguf \(")).wait_for()
    gguf = download(page, "nova-gguf-q8_0.gguf", tmp_path)
    assert "FROM ./nova-gguf-q8_0.gguf" in download(page, "Modelfile", tmp_path).read_text()
    llm = llama_cpp.Llama(str(gguf), n_ctx=64, verbose=False)
    try:
        assert llm.tokenize(b"Who are you?")
    finally:
        llm.close()


def test_export_page_says_its_checks_as_a_sentence(page, server, trained, tmp_path):  # noqa: F811
    """Item 13: the LoRA export is checked (PEFT loads it), the checks read as a sentence, the log has no progress
    bars, and the adapter's README says what is known instead of PEFT's template."""
    export_through_the_page(page, trained.run_id, "LoRA adapter (small; needs the base model)", "card")
    result = page.get_by_text(re.compile(r"^Exported ")).inner_text()
    assert "PEFT loads it onto the base model (28 of 28 LoRA weights)" in result, result
    assert "checks" not in result and "{" not in result and "max_logit" not in result, result
    log = export_log(page)
    assert "export: lora written to" in log and "█" not in log and "it/s]" not in log, log
    shot(page, "25-13-export-checks")
    zipfile.ZipFile(download(page, "card.zip", tmp_path)).extractall(tmp_path)
    card = (tmp_path / "card" / "README.md").read_text()
    assert (
        "More Information Needed" not in card and "| Steps | 4 of 4 |" in card and "| Data | `identity.jsonl` |" in card
    )


def test_finished_exports_leave_no_defunct_process(page, server, trained):  # noqa: F811
    """Item 10: once an export (or a run) has finished, the app has reaped its process: no <defunct> child."""
    import psutil

    export_through_the_page(page, trained.run_id, "LoRA adapter (small; needs the base model)", "reaped")
    time.sleep(3)  # the job has exited by now; before the fix it stays a zombie of the app until something polls it
    zombies = [p for p in psutil.Process().children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]
    assert not zombies, [p.pid for p in zombies]


def running_export_pid(exports, folder: str, timeout=120) -> tuple:
    """(job folder, pid) of the export job writing exports/`folder`, once it says it is exporting: it has left its
    start-up and is at work."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for job in (exports / ".jobs").glob("*"):
            try:
                spec = json.loads((job / "export.json").read_text())
                status = json.loads((job / "status.json").read_text())
            except (OSError, ValueError):  # being written
                continue
            if spec["out"].endswith(f"/{folder}") and status["state"] == "running":
                return job, status["pid"]
        time.sleep(0.05)
    raise AssertionError(f"no export to {folder} started")


def sigterm_pending(pid: int) -> bool:
    """Whether a SIGTERM waits for the stopped process `pid` (the process-wide pending set, ShdPnd, bit 15)."""
    with open(f"/proc/{pid}/status") as f:
        pending = re.search(r"ShdPnd:\s*([0-9a-f]+)", f.read())[1]
    return bool(int(pending, 16) & (1 << (signal.SIGTERM - 1)))


def test_a_reloaded_page_follows_the_running_export_and_cancels_it(page, server, trained):  # noqa: F811
    """After a reload the running export belonged to the old page: the new one showed no progress and its Cancel
    stayed disabled (bc9cd80). The reloaded page follows it: 'Exporting…' with the job's message, Cancel enabled, and
    Cancel heard: the export stops and leaves nothing. The tiny model's export takes ~5 s, mostly its imports, as
    long as a reload: the test holds the real export process with SIGSTOP once it is at work, so the reloaded page
    finds it running for sure, and lets it go on (SIGCONT) once the page's Cancel has sent its SIGTERM."""
    tab(page, "Export")
    page.get_by_label("Run", exact=True).last.click()
    page.get_by_role("option", name=trained.run_id).click(timeout=60_000)
    page.get_by_label("GGUF Q4_K_M (Ollama / llama.cpp, smallest)").check()
    page.get_by_label("Folder name (under exports/)").fill("reloaded")
    cancel = page.get_by_role("button", name="Cancel export")
    wait_enabled(cancel, False)  # no export running
    page.get_by_role("button", name="Export", exact=True).click()
    exports = server[1] / "exports"
    job, pid = running_export_pid(exports, "reloaded")
    os.kill(pid, signal.SIGSTOP)
    try:
        assert json.loads((job / "status.json").read_text())["state"] == "running"  # caught at work, not finished
        wait_enabled(cancel, True)
        page.reload()
        tab(page, "Export")
        cancel = page.get_by_role("button", name="Cancel export")
        wait_enabled(cancel, True)  # the reloaded page opened with it disabled; it follows the export
        page.get_by_text(re.compile(r"^Exporting… exporting gguf-q4_k_m to .*reloaded$")).wait_for(timeout=30_000)
        shot(page, "export-followed-after-reload")
        cancel.click()
        deadline = time.time() + 60
        while not sigterm_pending(pid):  # the page's Cancel reached the job
            assert time.time() < deadline, "Cancel sent no SIGTERM to the export"
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    page.get_by_text(re.compile(r"^Export cancelled")).first.wait_for(timeout=120_000)
    wait_enabled(cancel, False)
    assert json.loads((job / "status.json").read_text())["state"] == "cancelled"
    assert not (exports / "reloaded").exists() and not list(exports.glob(".reloaded.*"))  # nothing left behind


def test_chat_keeps_the_question_lists_new_runs_and_orders_the_compare_line(page, server, trained, tiny_llama):  # noqa: F811
    """Item 9: Send with no run picked keeps the typed question and says what to pick; an empty message is not
    sent; a run that finished after the page loaded is in the Chat, Export and Evaluate lists without a Refresh (and a
    GGUF file exported since, in Evaluate's); the compare line names the base model first, as the panels do."""
    from helpers import tiny_spec, wait_for

    from engine import api

    tab(page, "Chat")
    message = page.get_by_label("Message")
    message.fill("Who are you?")
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Pick a finished run or a GGUF file in 'Run, GGUF file or model' above").wait_for()
    assert message.input_value() == "Who are you?"
    shot(page, "25-9-chat-no-run")

    data = server[1] / "identity.jsonl"
    late = wait_for(api.start(tiny_spec(tiny_llama, data, max_steps=1, name="late"), runs=server[1] / "runs"))
    tab(page, "Model")
    tab(page, "Chat")
    source = page.get_by_label("Run, GGUF file or model")
    source.click()
    page.get_by_role("option", name=late.run_id).wait_for(timeout=10_000)
    source.press("Escape")
    tab(page, "Export")
    page.get_by_label("Run", exact=True).last.click()
    page.get_by_role("option", name=late.run_id).wait_for(timeout=10_000)
    page.get_by_label("Run", exact=True).last.press("Escape")
    gguf = server[1] / "exports" / "late" / "late-q8_0.gguf"  # an export made since the page loaded
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(b"GGUF")
    tab(page, "Evaluate")
    lists = (("Runs to evaluate", late.run_id), ("GGUF files", str(gguf)), ("Runs to compare", late.run_id))
    for label, option in lists:
        page.get_by_label(label).click()
        box = page.locator(".block").filter(has=page.get_by_label(label))  # another list may still be open
        box.get_by_role("option", name=option).first.wait_for(timeout=10_000)
        page.get_by_label(label).press("Escape")

    tab(page, "Chat")
    pick(page, "Run, GGUF file or model", trained.run_id)
    message.fill("")
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Type a message first.").wait_for()
    assert page.locator(".message.user, [data-testid='user']").count() == 0  # nothing was sent

    page.get_by_text("Base vs fine-tuned (same prompt)").click()
    page.get_by_label("Prompt for both models").fill("Who are you?")
    page.get_by_role("button", name="Compare").click()
    line = page.get_by_text(re.compile(r"^Base: \d+ tokens, [\d.]+ tok/s · Fine-tuned: \d+ tokens"))
    line.wait_for(timeout=120_000)
    shot(page, "25-9-compare")


def test_chat_starts_with_the_runs_system_prompt(page, server, tiny_llama):  # noqa: F811
    """Picking a run trained with a system prompt fills the System prompt box with it, and the chat answers with it;
    the Stop button is there beside Send."""
    from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS
    from helpers import tiny_spec, wait_for

    from engine import api

    data = server[1] / "identity-sys.jsonl"
    rows = [{"instruction": q, "output": IDENTITY_ANSWER} for q in IDENTITY_QUESTIONS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tiny_spec(tiny_llama, data, max_steps=1, name="sys", system_prompt="You are Nova.")
    run = wait_for(api.start(spec, runs=server[1] / "runs"))
    tab(page, "Chat")
    source = page.get_by_label("Run, GGUF file or model")
    source.click()
    page.get_by_role("option", name=run.run_id).click(timeout=10_000)
    system = page.get_by_label("System prompt")
    expect_value(system, re.compile(r"^You are Nova\.$"), timeout=10)
    page.get_by_role("textbox", name="Message").fill("Who are you?")
    stop = page.get_by_role("button", name="Stop", exact=True).first
    assert stop.is_visible() and not stop.is_enabled()  # no reply yet
    page.get_by_role("button", name="Send").click()
    page.get_by_text(re.compile(r"^\d+ tokens, [\d.]+ tok/s")).wait_for(timeout=120_000)
    wait_enabled(stop, False)  # the reply has ended
    shot(page, "chat-run-system-prompt")


def test_a_model_problem_is_named_as_such_and_clears_when_the_model_changes(page, tiny_llama, identity_file):  # noqa: F811
    """Item 7: an offline hub model is reported as the model's problem, not "Cannot use this dataset" (the dataset
    stays in use), and picking another model re-renders the dataset, so the old error goes."""
    custom = page.get_by_label("…or a hub id or local folder")
    custom.fill("someone/not-in-the-cache")
    custom.press("Enter")
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(identity_file))
    page.get_by_text("(Model tab): Could not download 'someone/not-in-the-cache'").wait_for()
    assert page.get_by_label("Dataset in use").input_value().endswith("identity.jsonl")
    assert page.get_by_text("Cannot use this dataset").count() == 0
    shot(page, "25-7-model-error")
    tab(page, "Model")
    custom.fill(str(tiny_llama))
    custom.press("Enter")
    tab(page, "Data")
    page.get_by_text(re.compile(r"^Tokens per example: mean")).wait_for()
    assert page.get_by_text("Could not download").count() == 0


def test_histogram_renders_in_numeric_order_and_the_preview_pages(page, tiny_llama, tmp_path):  # noqa: F811
    """Item 11: the tokens-per-example histogram is drawn (no "NaN"), its bins in numeric order; the preview pages
    from the first example to the next."""
    from test_app_browser import coloured_pixels

    path = tmp_path / "lengths.jsonl"
    rows = [{"instruction": f"Question {n}?", "output": " ".join(["word"] * n)} for n in (1, 5, 20, 60, 150, 300)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    custom = page.get_by_label("…or a hub id or local folder")
    custom.fill(str(tiny_llama))
    custom.press("Enter")
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_text("showing example 1 of 6").wait_for()
    time.sleep(2)  # the plot's redraw
    plot = page.locator(".block").filter(has_text="Tokens per example").last
    plot.scroll_into_view_if_needed()
    shot(page, "25-11-histogram")
    assert coloured_pixels(plot) > 200, "no bars drawn"
    text = plot.inner_text()
    assert "NaN" not in text, text
    labels = re.findall(r"\b(\d+)-\d+\b", text)
    assert labels and [int(x) for x in labels] == sorted(int(x) for x in labels), text
    page.get_by_role("button", name="Next example ▶").click()
    page.get_by_text("showing example 2 of 6").wait_for()
    page.get_by_text("Question 5?").first.wait_for()


@pytest.fixture
def restarted(tiny_llama, tmp_path_factory):
    """The app started over a workspace that holds a finished run trained with a system prompt: yields (url, run)."""
    from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS
    from helpers import tiny_spec, wait_for
    from test_app_browser import serve

    from engine import api

    runs = tmp_path_factory.mktemp("restarted") / "runs"
    data = runs.parent / "identity.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": q, "output": IDENTITY_ANSWER}) + "\n" for q in IDENTITY_QUESTIONS)
    )
    run = wait_for(
        api.start(tiny_spec(tiny_llama, data, max_steps=1, name="sys", system_prompt="You are Nova."), runs=runs)
    )
    for url, _ in serve(tmp_path_factory, TUNESMITH_RUNS=str(runs)):
        yield url, run


def test_after_a_restart_no_run_is_picked_without_its_settings(browser, restarted):  # noqa: F811
    """After a restart the Chat tab showed the first finished run picked, with an empty System prompt box and greedy
    sliders (a pick's settings are filled only when the user picks), so "Who are you?" went without the system turn
    the run learned its replies after; the Export tab had it picked with every format offered (a LoRA adapter for a
    full fine-tune too). Nothing is picked until the user picks, which fills its settings."""
    url, run = restarted
    fresh = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        fresh.goto(url)
        tab(fresh, "Chat")
        source = fresh.get_by_label("Run, GGUF file or model")
        assert source.input_value() == "", "a run is shown picked without its system prompt"
        source.click()
        fresh.get_by_role("option", name=run.run_id).click(timeout=10_000)
        system = fresh.get_by_label("System prompt")
        expect_value(system, re.compile(r"^You are Nova\.$"), timeout=10)
        tab(fresh, "Export")
        assert fresh.get_by_label("Run", exact=True).last.input_value() == ""
    finally:
        fresh.close()


def test_chat_with_this_run_opens_the_chat_tab_with_the_run(page, trained):  # noqa: F811
    """The Train tab's "Chat with this run" set the Chat tab's run and left the user on the Train tab, where nothing
    changed: it opens the Chat tab."""
    tab(page, "Train")
    page.get_by_text("Run history").click()
    page.get_by_text(trained.run_id, exact=True).locator("visible=true").first.click()
    page.get_by_role("button", name="Chat with this run").click()
    page.get_by_role("tab", name="Chat", selected=True).wait_for(timeout=10_000)
    assert page.get_by_label("Run, GGUF file or model").input_value() == trained.run_id


def test_the_export_folder_name_follows_the_run_and_format_until_typed(page, trained):  # noqa: F811
    """The folder box said 'my-model' for every export, so a first run's second export failed with 'already exists'.
    Picking the run and a format shows a name after both (the first one free under exports/) in grey, which a blank
    box exports to. A name typed right after a pick stays: the pick's answer once arrived later and replaced it."""
    tab(page, "Export")
    page.get_by_label("Run", exact=True).last.click()
    page.get_by_role("option", name=trained.run_id).click(timeout=60_000)
    box = page.get_by_label("Folder name (under exports/)")
    page.wait_for_function("el => /^nova-lora(-\\d+)?$/.test(el.placeholder)", arg=box.element_handle(), timeout=30_000)
    page.get_by_label("GGUF Q8_0").check()
    page.wait_for_function("el => /^nova-q8_0(-\\d+)?$/.test(el.placeholder)", arg=box.element_handle(), timeout=30_000)
    assert box.input_value() == ""
    page.get_by_label("GGUF Q4_K_M (Ollama / llama.cpp, smallest)").check()
    box.fill("for-ollama")  # before the format's answer is back
    time.sleep(2)  # the format's change event has had its answer
    assert box.input_value() == "for-ollama"
    assert re.fullmatch(r"nova-q4_k_m(-\d+)?", box.get_attribute("placeholder"))
