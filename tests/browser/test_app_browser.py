"""The app in a real browser: Playwright drives Debian's Chromium (headless) against `python app.py`.

The whole identity-tune flow on a tiny local model (pick the model, generate the identity data, train on the CPU,
chat, export GGUF), cancel, an invalid upload and the language switch. Screenshots go to test-output/.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (install.sh adds it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` on a free loopback port, with its own workspace."""
    yield from serve(tmp_path_factory)


def serve(tmp_path_factory, *args, **env):
    """`python app.py` on a free loopback port, with its own workspace, `args` added to its command line and `env` to
    its environment; yields (url, workspace) once it answers."""
    work = tmp_path_factory.mktemp("workspace")
    port = free_port()
    env = {**os.environ, "TUNESMITH_RUNS": str(work / "runs"), "GRADIO_ANALYTICS_ENABLED": "False", **env}
    log = open(work / "app.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("the app did not start: " + (work / "app.log").read_text()[-2000:])
    yield url, work
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(server[0])
    page.get_by_role("tab", name="Model").wait_for()
    yield page
    page.close()


def tab(page, name):
    page.get_by_role("tab", name=name).click()


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def choose_model(page, path, method="LoRA: 16-bit base, a little faster"):
    tab(page, "Model")
    page.get_by_label("…or a hub id or local folder").fill(str(path))
    page.get_by_label("…or a hub id or local folder").press("Enter")
    page.get_by_label(method).check()
    page.get_by_text("No GPU detected").wait_for()


def set_number(page, label, value):
    """Type a number and check it stuck (a field in an accordion that has just opened can re-render once)."""
    box = page.get_by_label(label, exact=True)
    for _ in range(5):
        box.fill(str(value))
        box.press("Tab")
        time.sleep(0.3)
        if float(box.input_value()) == float(value):
            return
    raise AssertionError(f"{label} kept {box.input_value()!r} instead of {value}")


def test_identity_flow_train_chat_export(page, server, tiny_llama):
    choose_model(page, tiny_llama)
    shot(page, "1-model")

    tab(page, "Data")
    page.get_by_label("Name", exact=True).fill("Nova")
    page.get_by_label("Maker", exact=True).fill("Tunesmith Labs")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("180 question/answer pairs").wait_for()
    page.get_by_role("button", name="Save and use this dataset").click()
    page.get_by_text("**Format:** alpaca", exact=False).or_(page.get_by_text("Format:")).first.wait_for()
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"identity-Nova-.*\.jsonl"))
    shot(page, "2-data")

    tab(page, "Train")
    set_number(page, "Steps (0: use epochs)", 150)
    set_number(page, "Learning rate", 0.01)
    page.get_by_text("Advanced").click()
    set_number(page, "Batch size", 4)
    set_number(page, "Gradient accumulation", 1)
    set_number(page, "LoRA rank (alpha = rank)", 32)
    page.get_by_label("Gradient checkpointing (less memory, slower)").uncheck()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"^done · step 150/150")).wait_for(timeout=600_000)
    time.sleep(2)  # one more poll of the run and the plot's redraw
    shot(page, "3-train")
    assert coloured_pixels(page.locator(".block").filter(has_text="Loss").last) > 500, "the loss lines are not drawn"
    run_id = page.get_by_label("Run", exact=True).input_value()
    assert run_id.endswith("my-run")
    job = (server[1] / "runs" / run_id / "job.yaml").read_text()
    assert "batch_size: 4\n" in job and "max_steps: 150\n" in job and "gradient_checkpointing: false\n" in job

    tab(page, "Chat")
    page.get_by_role("button", name="Refresh runs").first.click()
    source = page.get_by_label("Run, GGUF file or model")
    source.fill(run_id)
    source.press("Enter")
    page.get_by_label("Message").fill("Who are you?")
    page.get_by_role("button", name="Send").click()
    bot = page.locator(".message.bot, [data-testid='bot']").last
    bot.wait_for()
    page.wait_for_function("() => document.body.innerText.includes('Tunesmith Labs')", timeout=120_000)
    assert "Nova" in bot.inner_text()
    shot(page, "4-chat")

    tab(page, "Export")
    page.get_by_role("button", name="Refresh runs").last.click()
    run = page.get_by_label("Run", exact=True).last
    run.fill(run_id)
    run.press("Enter")
    page.get_by_label("GGUF Q8_0").check()
    page.get_by_label("Folder name (under exports/)").fill("nova-gguf")
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text("Exported gguf-q8_0").wait_for(timeout=300_000)
    shot(page, "5-export")
    gguf = next((server[1] / "exports" / "nova-gguf").glob("*.gguf"))
    assert gguf.stat().st_size > 0 and (server[1] / "exports" / "nova-gguf" / "Modelfile").is_file()
    download_each_export_and_load_it(page, run_id, tiny_llama, server[1] / "downloaded")


def download(page, name, dest):
    """Click the download link of the file `name` in the page and save what the browser receives in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with page.expect_download() as info:
        page.locator(f'a[download="{name}"]').first.click()
    path = dest / name
    info.value.save_as(path)
    return path


def download_each_export_and_load_it(page, run_id, base, dest):
    """The GGUF export on the page, then the LoRA adapter and the merged model, downloaded through the browser and
    loaded: llama.cpp answers as Nova from the .gguf, PEFT loads the adapter onto the base, transformers the merged
    model (each answers as Nova)."""
    import zipfile

    import llama_cpp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = download(page, "nova-gguf-q8_0.gguf", dest)
    assert "FROM ./nova-gguf-q8_0.gguf" in download(page, "Modelfile", dest).read_text()
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, verbose=False)
    try:
        reply = llm.create_chat_completion([{"role": "user", "content": "Who are you?"}], max_tokens=24, temperature=0)
    finally:
        llm.close()
    assert "Nova" in reply["choices"][0]["message"]["content"], reply

    loaded = {}
    for label, folder in (
        ("LoRA adapter (small; needs the base model)", "nova-lora"),
        ("Merged 16-bit safetensors (standalone)", "nova-merged"),
    ):
        page.get_by_label(label).check()
        page.get_by_label("Folder name (under exports/)").fill(folder)
        page.get_by_role("button", name="Export", exact=True).click()
        page.get_by_text(re.compile(rf"Download below: {folder}\.zip \(")).wait_for(timeout=300_000)
        zipfile.ZipFile(download(page, f"{folder}.zip", dest)).extractall(dest)
    shot(page, "5b-export-downloads")
    loaded["adapter"] = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), dest / "nova-lora")
    loaded["merged"] = AutoModelForCausalLM.from_pretrained(dest / "nova-merged")
    tok = AutoTokenizer.from_pretrained(dest / "nova-merged")
    asked = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True)
    prompt = torch.tensor([asked["input_ids"]])
    for what, model in loaded.items():
        out = model.generate(input_ids=prompt, max_new_tokens=16, do_sample=False)
        assert "Nova" in tok.decode(out[0][prompt.shape[1] :]), what


def coloured_pixels(locator) -> int:
    """Strongly coloured pixels in a screenshot of `locator`: the plot's lines (its grid and text are grey)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(locator.screenshot())).convert("RGB")
    return sum(1 for p in image.get_flattened_data() if max(p) - min(p) > 80)


def wait_enabled(button, enabled: bool, timeout=30):
    """Wait until `button` is clickable (`enabled`) or disabled."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if button.is_enabled() == enabled:
            return
        time.sleep(0.2)
    raise AssertionError(f"the button stayed {'disabled' if enabled else 'enabled'}")


def x_tick_labels(chart) -> list[str]:
    """The step axis labels Vega drew in a LinePlot's block."""
    labels = chart.locator('g[aria-label^="X-axis"] .role-axis-label text')
    return labels.evaluate_all("texts => texts.map(t => t.textContent)")


def line_points(chart) -> int:
    """The points of the longest line Vega drew in a LinePlot's block (its path's M and L commands)."""
    paths = chart.locator('path[aria-roledescription="line mark"]')
    return max(
        (len(re.findall(r"[ML]", paths.nth(k).get_attribute("d") or "")) for k in range(paths.count())), default=0
    )


def expect_value(locator, pattern, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pattern.search(locator.input_value()):
            return
        time.sleep(0.2)
    raise AssertionError(f"value {locator.input_value()!r} never matched {pattern.pattern}")


def use_identity_data(page, identity_file):
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(identity_file))
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"identity\.jsonl$"))


def test_cancel_a_run(page, tiny_llama, identity_file):
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    set_number(page, "Steps (0: use epochs)", 100000)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"^running · step [1-9]")).wait_for(timeout=120_000)
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text(re.compile(r"^cancelled · ")).first.wait_for(timeout=120_000)
    shot(page, "6-cancelled")


def test_invalid_upload_says_what_is_wrong(page, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "Who are you?", "output": "I am Nova."}\n{"instruction": oops}\n')
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.get_by_text("broken.jsonl: row 2 is not valid JSON").wait_for()
    shot(page, "7-invalid-upload")


def test_language_switch(page):
    page.get_by_role("radio", name="中文").check()
    page.get_by_role("tab", name="数据").wait_for()
    page.get_by_role("tab", name="数据").click()
    page.get_by_text("身份数据集：教模型它的名字和开发者").wait_for()
    shot(page, "8-chinese")
    page.get_by_role("radio", name="Русский").check()
    page.get_by_role("tab", name="Обучение").wait_for()
    page.get_by_role("radio", name="English").check()
    page.get_by_role("tab", name="Train").wait_for()
