"""The Export and Chat tabs in a real browser (issue 25, items 3, 7, 9, 10, 11, 12, 13): each export downloaded
through the browser and loaded, the export page's sentences, the Chat tab's handling of what the user typed, the data
preview, error wording and the translations. Playwright drives headless Chromium against `python app.py`, with the
server, browser and page fixtures of test_app_browser.py; screenshots go to test-output/screenshots/.
"""

import json
import re
import time
import zipfile

import pytest
from test_app_browser import browser, page, server, shot, tab  # noqa: F401 (fixtures used by name)


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


def export_through_the_page(page, run_id, fmt_label, folder):  # noqa: F811
    """Export `run_id` in the Export tab (its run list is not refreshed by hand) and wait until it is done."""
    tab(page, "Export")
    pick(page, "Run", run_id)
    page.get_by_label(fmt_label).check()
    page.get_by_label("Folder name (under exports/)").fill(folder)
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text(re.compile(r"^Exported ")).wait_for(timeout=300_000)


def download(page, name, dest):  # noqa: F811
    """Click the download link of the file `name` and save what the browser receives in `dest`."""
    with page.expect_download() as info:
        page.locator(f'a[download="{name}"]').first.click()
    path = dest / name
    info.value.save_as(path)
    return path


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
    page.get_by_text("Export log").click()
    log = page.get_by_label("Export log").or_(page.locator("textarea").last).last.input_value()
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
