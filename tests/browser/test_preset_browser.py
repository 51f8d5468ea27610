"""The Train tab's preset on a machine with a GPU (one of 14.6 GiB, told to the app through TUNESMITH_VRAM_GIB), in a
real browser: picking a model applies the preset; loading a job.yaml keeps the job's own settings.

Same set-up as test_app_browser.py (its fixtures and helpers); screenshots go to test-output/screenshots/.
"""

import re

import pytest
import test_app_browser as app_browser
from test_app_browser import expect_value, shot, tab

browser, page = app_browser.browser, app_browser.page  # its fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from app_browser.serve(tmp_path_factory, TUNESMITH_VRAM_GIB="14.6", TUNESMITH_RAM_GIB="64")


def test_a_loaded_job_keeps_its_settings_over_the_gpus_preset(page, server, tiny_llama, identity_file, tmp_path):
    """Gradio fires the change events of the model and method that a load fills in, and the preset they ran replaced
    the job's max length, batch, accumulation, rank, learning rate and checkpointing."""
    tab(page, "Model")
    page.get_by_label("…or a hub id or local folder").fill("Qwen/Qwen3-4B")  # the job names another model
    page.get_by_label("…or a hub id or local folder").press("Enter")
    tab(page, "Train")
    page.get_by_text("Preset for this GPU (16 GB tier)").wait_for(timeout=60_000)
    page.get_by_text("Advanced", exact=True).click()  # batch, accumulation and rank are in it
    preset_batch = page.get_by_label("Batch size", exact=True).input_value()
    assert preset_batch != "3"

    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {tiny_llama}\nmethod: qlora\ndata: {identity_file}\nname: loaded\nmax_seq_length: 300\n"
        "batch_size: 3\ngrad_accum: 5\nlora_r: 4\nlearning_rate: 0.0005\ngradient_checkpointing: false\n"
    )
    page.get_by_text("Job file and command line").click()
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Load job.yaml").click()
    chooser.value.set_files(str(job))
    page.get_by_text("Loaded the settings of job.yaml").wait_for()
    # the change events of the model and method the load filled in run the preset (slowly on a busy machine): it
    # says the job's settings are kept, and later events (none here) would find the same
    page.get_by_text("The loaded job's settings are kept").wait_for(timeout=90_000)
    page.wait_for_timeout(5000)
    expect_value(page.get_by_label("Batch size", exact=True), re.compile(r"^3$"))
    expect_value(page.get_by_label("Gradient accumulation", exact=True), re.compile(r"^5$"))
    expect_value(page.get_by_label("LoRA rank (alpha = rank)", exact=True), re.compile(r"^4$"))
    expect_value(page.get_by_label("Learning rate", exact=True), re.compile(r"^(0\.0005|5e-4)$"))
    shot(page, "preset-job-loaded-kept")


def test_the_fit_badge_and_the_preset_follow_the_objective_and_the_embeddings_box(page, server, monkeypatch):
    """Continued pretraining with trained embeddings: the Model tab's badge, built before the Train tab, planned
    without them while the preset counted them; and a switch to another objective with the box ticked left the preset
    as it was. Both now name the same peak, the one the run plans, at each step, and the badge says when it counts
    them."""
    from engine import api

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "14.6")  # as the server's
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    with_ = f"{api.estimate('Qwen/Qwen3-4B', 'qlora', train_embeddings=True)['peak_vram_gib']:.1f}"
    without = f"{api.estimate('Qwen/Qwen3-4B', 'qlora')['peak_vram_gib']:.1f}"
    assert with_ != without
    tab(page, "Model")
    page.get_by_label("…or a hub id or local folder").fill("Qwen/Qwen3-4B")
    page.get_by_label("…or a hub id or local folder").press("Enter")
    tab(page, "Train")
    page.get_by_text(f"peaks at {without} GiB").wait_for(timeout=60_000)
    page.get_by_label("Continued pretraining: raw text, every token").check()
    page.get_by_label("Also train the embeddings and output layer (new vocabulary or language; large)").check()
    for objective, peak in (("pretrain", with_), ("sft", without)):
        if objective == "sft":  # the box stays ticked, hidden
            page.get_by_label("Chat fine-tuning (SFT): learn from example conversations").check()
        page.get_by_text(f"peaks at {peak} GiB").wait_for(timeout=60_000)
        tab(page, "Model")
        badge = page.get_by_text(re.compile(rf"about {re.escape(peak)} GiB"))
        badge.wait_for(timeout=60_000)
        # its words say when its figure counts the embeddings
        assert ("with trained embeddings" in badge.inner_text()) == (objective == "pretrain"), badge.inner_text()
        shot(page, f"badge-{objective}-embeddings-ticked")
        tab(page, "Train")
