"""A shared app (a login) with its own workspace (`--workspace`), in a real browser: what its Data tab says to a
logged-in user who types a path it does not open. Same set-up as test_app_browser.py (its helpers); screenshots go to
test-output/screenshots/.
"""

import json
import re

import pytest
import test_app_browser as shared
from test_app_browser import expect_value, serve, shot, tab

browser = shared.browser  # its fixture
pytestmark = shared.pytestmark
ROW = json.dumps(dict(instruction="Who are you?", input="", output="I am Nova.")) + "\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The workspace named on the command line: a file in data/, a hidden one there, and one beside data/."""
    work = tmp_path_factory.mktemp("shared-workspace")
    (work / "data").mkdir()
    for name in ("data/mine.jsonl", "data/.env.jsonl", "notes.jsonl"):
        (work / name).write_text(ROW)
    return work


@pytest.fixture(scope="module")
def server(tmp_path_factory, work):
    """`python app.py --auth alice:wonderland --workspace WORK`, started in the project folder."""
    args = ("--auth", "alice:wonderland", "--workspace", str(work))
    yield from serve(tmp_path_factory, *args, TUNESMITH_RUNS="", GRADIO_TEMP_DIR="")  # empty: Gradio's default


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(server[0])
    page.get_by_label("username").fill("alice")
    page.get_by_label("password").fill("wonderland")
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Model").wait_for()
    yield page
    page.close()


def load(page, path: str):
    tab(page, "Data")
    page.get_by_label("…or a hub dataset id").fill(path)
    page.get_by_role("button", name="Load hub dataset").click()


def test_the_data_tab_of_a_shared_app_opens_only_its_workspaces_folders(page, work):
    """A path typed relative to the workspace reads from it; a hidden file in data/, and a file of the workspace
    beside data/, are refused with a sentence saying what to do, and nothing of them is shown."""
    load(page, "data/mine.jsonl")
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"^data/mine\.jsonl$"))
    page.get_by_text(re.compile(r"^Format: alpaca · rows: 1")).wait_for()
    load(page, "data/.env.jsonl")
    page.get_by_text(re.compile(r"is hidden \(a name starting with '\.'\).*without the leading dot")).wait_for()
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"^$"))
    shot(page, "shared-hidden-file-refused")
    load(page, str(work / "notes.jsonl"))
    page.get_by_text(re.compile(r"only opens files inside its workspace's runs/, data/ and exports/")).wait_for()
    expect_value(page.get_by_label("Dataset in use"), re.compile(r"^$"))
    shot(page, "shared-outside-file-refused")


def test_a_file_uploaded_to_a_shared_app_is_kept_in_its_workspace(page, work, tmp_path):
    """The upload goes to the workspace's .uploads/ (no GRADIO_TEMP_DIR set: the machine's /tmp/gradio was every Gradio
    app's), and the Data tab reads it from there."""
    upload = tmp_path / "identity.jsonl"
    upload.write_text(ROW)
    tab(page, "Data")
    page.locator("input[type=file]").first.set_input_files(str(upload))
    expect_value(
        page.get_by_label("Dataset in use"), re.compile(rf"^{re.escape(str(work))}/\.uploads/\w+/identity\.jsonl$")
    )
    page.get_by_text(re.compile(r"^Format: alpaca · rows: 1")).wait_for()
    shot(page, "shared-upload-in-workspace")
