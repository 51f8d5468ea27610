"""A hobbyist's first run in a real browser, and what they get wrong on the way: each test is a slip that once
showed Gradio's red "Error" badges, a wrong sentence or a stuck state. Same set-up as test_app_browser.py (its
fixtures and helpers); screenshots go to test-output/screenshots/.
"""

import json
import re

import test_app_browser as shared
from test_app_browser import choose_model, expect_value, shot, tab, use_identity_data

browser, page, server = shared.browser, shared.page, shared.server  # its fixtures
pytestmark = shared.pytestmark


def no_error_badges(page):
    """Gradio marks an output whose handler raised with a red "Error" badge."""
    assert page.locator(".error").filter(has_text=re.compile(r"^Error$")).count() == 0, "an Error badge is shown"


def test_clearing_the_max_length_to_type_another_says_so(page, tiny_llama, identity_file):
    choose_model(page, tiny_llama)
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(identity_file))
    page.get_by_text(re.compile(r"^Tokens per example: mean")).wait_for()
    box = page.get_by_label("Max sequence length", exact=True)
    box.fill("")
    box.press("Tab")
    page.get_by_text("Max sequence length is empty; enter a number.").wait_for()
    shot(page, "first-run-max-length-cleared")
    no_error_badges(page)
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"identity\.jsonl$"))
    box.fill("256")
    box.press("Tab")
    page.get_by_text(re.compile(r"^Tokens per example: mean .* longer than 256\.")).wait_for()


def test_saving_the_job_file_with_a_blank_box_says_so(page, tiny_llama, identity_file):
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    steps = page.get_by_label("Steps (0: use epochs)", exact=True)
    steps.fill("")
    steps.press("Tab")
    page.get_by_text("Job file and command line").click()
    page.get_by_role("button", name="Save as job.yaml").click()
    page.get_by_text("Not saved: Steps is empty; enter a number.").wait_for()
    shot(page, "first-run-save-blank-steps")
    no_error_badges(page)


def test_the_data_preview_follows_the_system_prompt_typed_in_the_train_tab(page, tiny_llama, identity_file):
    """The preview showed the rows without the system turn the Train tab's System prompt adds to every example, so
    the user could not see what the run would learn from; it now shows it (test_data_formats checks its marking)."""
    choose_model(page, tiny_llama)
    use_identity_data(page, identity_file)
    tab(page, "Train")
    page.get_by_text("Advanced").click()
    system = page.get_by_label("System prompt").locator("visible=true")  # the Chat tab has one too
    system.fill("You are Nova.")
    system.press("Tab")
    page.get_by_label("Learn the prompts too").check()
    tab(page, "Data")
    sample = page.locator(".block").filter(has_text="The example as the model sees it").last
    sample.get_by_text("You are Nova.").first.wait_for(timeout=30_000)
    shot(page, "first-run-preview-system-prompt")
    no_error_badges(page)


def test_the_data_tab_names_the_format_the_objective_reads(page, tmp_path):
    """UltraFeedback's rows (chosen, rejected, and the chosen again as 'messages') read "Format: chatml" on the Data
    tab while the Train tab said DPO suits them as preference pairs: the Data tab follows the objective picked."""
    turns = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]
    wrong = [*turns[:1], {"role": "assistant", "content": "Five."}]
    path = tmp_path / "ultrafeedback.jsonl"
    path.write_text(json.dumps(dict(prompt=turns[0]["content"], chosen=turns, rejected=wrong, messages=turns)) + "\n")
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_text(re.compile(r"^Format: chatml · rows: 1")).wait_for()
    tab(page, "Train")
    page.get_by_label("DPO: prefer the chosen reply over the rejected one").check()
    page.get_by_text("The dataset (preference) suits this objective.").wait_for()
    tab(page, "Data")
    page.get_by_text(re.compile(r"^Format: preference · rows: 1")).wait_for()
    shot(page, "first-run-ultrafeedback-for-dpo")
    no_error_badges(page)
    tab(page, "Train")
    page.get_by_label("Chat fine-tuning (SFT): learn from example conversations").check()
    tab(page, "Data")
    page.get_by_text(re.compile(r"^Format: chatml · rows: 1")).wait_for()
