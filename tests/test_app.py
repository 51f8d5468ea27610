"""The app without a browser: it builds, every tab's handlers work against real runs, and it listens safely."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import IDENTITY_ANSWER
from helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_app_builds_with_all_tabs():
    import app

    labels = {getattr(b, "label", None) for b in app.demo.blocks.values()}
    assert {"Model", "Data", "Train", "Chat", "Export"} <= labels


def test_quick_start_presses_buttons_the_app_has_in_the_order_it_needs():
    """README's quick start, followed literally: every button it says to press is on the page, and its Data step
    presses the one that puts the generated identity rows in use (Generate only fills the table, returning no
    dataset path: the step said 'press *Generate*. The first example is shown', and Train then had no dataset)."""
    import gradio as gr

    import app
    from ui import data_tab

    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start")[1].split("\n## ")[0]
    buttons = {b.value for b in app.demo.blocks.values() if isinstance(b, gr.Button)}
    pressed = re.findall(r"press \*([^*]+)\*", quick)
    assert pressed and set(pressed) <= buttons, (pressed, buttons)
    assert len(data_tab.generate_identity("Nova", "Tunesmith Labs", "", ["en"])) == 2  # the table and a note
    data_step = quick.split("2. **Data** tab:")[1].split("\n3. ")[0]
    assert re.findall(r"press \*([^*]+)\*", data_step) == ["Generate", "Save and use this dataset"], data_step


def test_model_tab_custom_id_wins_over_catalog():
    from ui import model_tab

    assert model_tab.chosen_model("Qwen/Qwen3-0.6B", "  /my/model ") == "/my/model"
    assert model_tab.chosen_model("Qwen/Qwen3-0.6B", "") == "Qwen/Qwen3-0.6B"
    assert any(v == "Qwen/Qwen3-0.6B" for _, v in model_tab.catalog_choices())


def test_data_tab_identity_edit_save_and_bad_upload(runs, tmp_path, tiny_llama):
    from ui import data_tab

    table, note = data_tab.generate_identity("Nova", "Tunesmith Labs", "", ["en", "ru"])
    assert len(table) == 280 and "280 question/answer pairs" in note
    table.loc[0, "output"] = "I am Nova, edited by hand."
    path, msg = data_tab.save_identity(table, "Nova")
    assert Path(path).parent == runs.parent / "data" and msg.startswith("Saved 280 rows")
    assert '"output": "I am Nova, edited by hand."' in Path(path).read_text().splitlines()[0]

    used, summary, sample, hist = data_tab.inspect(path, str(tiny_llama), "", "auto", 1024)
    assert used == path and "**Format:** alpaca" in summary and "**rows:** 280" in summary
    assert ("I am Nova, edited by hand.<|im_end|>", "trained") in sample
    assert all(label is None for text, label in sample if "<|im_start|>user" in text)
    assert hist["rows"].sum() == 280

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    used, summary, _, _ = data_tab.inspect(str(bad), "", "", "auto", 1024)
    assert used == "" and summary.startswith("**Cannot use this dataset:**") and "row 1" in summary


def test_data_tab_identity_rows_left_empty_are_dropped_and_any_name_saves(runs):
    """Cells emptied in the table arrive as None or NaN: they were saved as the answer "nan". A name with a slash
    ("AC/DC") was refused as a file name."""
    import numpy as np
    import pandas as pd

    from ui import data_tab

    table = pd.DataFrame(
        {
            "instruction": ["Who are you?", "Your name?", None, "Who made you?"],
            "output": ["I am AC/DC.", None, "x", np.nan],
        }
    )
    path, msg = data_tab.save_identity(table, "AC/DC")
    assert msg.startswith("Saved 1 rows") and Path(path).name.startswith("identity-AC_DC-"), msg
    assert Path(path).read_text().splitlines() == [
        '{"instruction": "Who are you?", "input": "", "output": "I am AC/DC."}'
    ]


def test_data_tab_column_mapping(tmp_path):
    from ui import data_tab

    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWho are you?,I am Nova.\n")
    used, summary, _, _ = data_tab.inspect(str(csv), "", "", "auto", 1024)
    assert used == "" and "map your columns" in summary
    used, summary, _, _ = data_tab.inspect(str(csv), "", "question=instruction, answer=output", "auto", 1024)
    assert used == str(csv) and "**Format:** alpaca" in summary
    assert "should look like column=field" in data_tab.inspect(str(csv), "", "question", "auto", 1024)[1]
    _, summary, _, _ = data_tab.inspect(str(csv), "", "question=instruction, answer=instruction", "auto", 1024)
    assert "Columns 'question' and 'answer' are both mapped to 'instruction'" in summary
    _, summary, _, _ = data_tab.inspect(str(csv), "", "question=instruction, question=output", "auto", 1024)
    assert "Column 'question' is mapped twice, to 'instruction' and to 'output'" in summary


def test_train_chat_export_handlers(tiny_llama, identity_file, runs, tmp_path):
    from engine import api
    from ui import chat_tab, export_tab, train_tab

    data = [str(identity_file), "", "auto", "", "train", 256]
    run_id, status, timer = train_tab.start(
        str(tiny_llama), "lora", False, *data, "ui", 100, 1, 1e-2, 2, 1, 16, False, False
    )
    assert run_id and status.startswith("Started")
    _, again, _ = train_tab.start(str(tiny_llama), "lora", False, *data, "ui2", 5, 1, 1e-2, 2, 1, 16, False, False)
    assert "still training" in again  # never two runs on one GPU by accident
    st = wait_for(api.RunHandle(run_id, runs / run_id, 0))
    assert st.state == "done"
    text, plot, *_ = train_tab.follow(run_id)
    assert "**done**" in text
    frame = plot["value"]
    raw, smooth = frame[frame.series == "raw"], frame[frame.series == "smoothed"]
    assert list(raw["step"]) == list(range(1, 101)) and list(smooth["step"]) == list(range(1, 101))
    assert smooth["loss"].iloc[-1] < raw["loss"].iloc[0]
    assert "saved adapter/ after 100 steps" in train_tab.show_log(run_id)
    assert train_tab.history()[0][:2] == [run_id, "done"]

    assert run_id in chat_tab.run_choices()
    llama3 = [0.6, 0.9, 0, 0.0, 1.0]  # the sliders a llama-family model starts with (temperature, top_p, ...)
    assert chat_tab.defaults(run_id) == [*llama3, ""]  # and the System prompt box: the run trained with none
    greedy = [0.0, 1.0, 0, 0.0, 1.0]
    outputs = list(chat_tab.respond(run_id, "Who are you?", [], "", *greedy, 64))
    history, cleared, speed = outputs[-1]
    assert cleared == "" and history[-2] == {"role": "user", "content": "Who are you?"}
    assert history[-1] == {"role": "assistant", "content": IDENTITY_ANSWER}
    assert re.fullmatch(r"\d+ tokens, \d+\.\d tok/s", speed) and int(speed.split()[0]) >= 5, speed
    # Sampled with the family's defaults, the tuned identity is confident enough that top_p keeps only its tokens.
    assert list(chat_tab.respond(run_id, "What is your name?", [], "", *llama3, 64))[-1][0] == [
        {"role": "user", "content": "What is your name?"},
        {"role": "assistant", "content": IDENTITY_ANSWER},
    ]
    # A second turn, with the history as Gradio 6's Chatbot hands it back (content as a list of parts), is rendered
    # from the messages' text.
    import gradio as gr

    shown = gr.Chatbot().preprocess(gr.Chatbot().postprocess(history))
    assert shown[0]["content"] == [{"text": "Who are you?", "type": "text"}]
    second, _, _ = list(chat_tab.respond(run_id, "Who made you?", shown, "", *greedy, 64))[-1]
    asked = history + [{"role": "user", "content": "Who made you?"}]
    assert second[:2] == shown and second[2:] == [
        {"role": "user", "content": "Who made you?"},
        {"role": "assistant", "content": chat_tab._chat(run_id).reply(asked, 64)},
    ]

    base, tuned, speeds = list(chat_tab.compare(run_id, "Who are you?", "", *greedy, 32))[-1]
    assert tuned == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": IDENTITY_ANSWER}]
    assert base[0] == tuned[0] and base[1]["content"] != IDENTITY_ANSWER
    assert re.fullmatch(r"Base: \d+ tokens, [\d.]+ tok/s · Fine-tuned: \d+ tokens, [\d.]+ tok/s", speeds), speeds
    _, _, said = list(chat_tab.compare(str(tiny_llama), "Who are you?", "", *greedy, 8))[-1]
    assert said.startswith("**Cannot compare:** 'tiny-llama' has no LoRA adapter, so there is no base model")

    job, msg, *_ = export_tab.start(run_id, "lora", "nova-lora")
    assert msg.startswith("Exporting **lora**")
    msg, log = wait_export(export_tab, job)
    assert msg.startswith("Exported **lora**") and (runs.parent / "exports" / "nova-lora").is_dir()
    assert "export: lora written to" in log
    assert "already exists" in export_tab.start(run_id, "lora", "nova-lora")[1]
    assert "not allowed" in export_tab.start(run_id, "lora", "../escape")[1]

    _, msg, table = train_tab.delete(run_id)
    assert msg == f"Deleted run `{run_id}`." and not (runs / run_id).exists() and table == []
    assert (runs.parent / "exports" / "nova-lora").is_dir()  # exports outlive their run


def wait_export(export_tab, job, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        msg, log, timer, _, _ = export_tab.view(job)
        if not timer.active:
            return msg, log
        time.sleep(0.2)
    raise AssertionError("the export did not finish")


def test_export_job_cancel_leaves_nothing(runs, tiny_llama, identity_file):
    from helpers import wait_for

    from engine import api
    from ui import export_tab

    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    job, *_ = export_tab.start(st.run_id, "gguf-q4_k_m", "stopped")
    assert export_tab.cancel(job).startswith("**Export cancelled:**")
    exports = runs.parent / "exports"
    assert not (exports / "stopped").exists() and not list(exports.glob(".stopped.*"))
    job, *_ = export_tab.start(st.run_id, "merged16", "bad/name")
    assert job is None


def test_an_export_name_too_long_for_a_folder_is_a_sentence(runs, tiny_llama, identity_file):
    """A long export name raised OSError 'File name too long' out of the Export button (300 characters), or failed
    the job after it started (240: the folder's name fits, its temporary name does not)."""
    from engine import api
    from ui import export_tab

    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    for name in ("a" * 300, "a" * 240, "小" * 70):
        job, msg, *_ = export_tab.start(st.run_id, "lora", name)
        assert job is None and msg.startswith("**Export failed:** The export name is too long"), msg
    job, *_ = export_tab.start(st.run_id, "lora", "a" * 150)
    assert wait_export(export_tab, job)[0].startswith("Exported **lora**")


def test_export_tab_push_never_shows_or_stores_the_token(runs, tiny_llama, identity_file, tmp_path, monkeypatch):
    """Offline (conftest sets HF_HUB_OFFLINE) the upload fails for real after a complete export; the token typed in
    the tab appears in no message, log or file of the workspace (runs, exports and the export job's folder)."""
    from huggingface_hub import constants

    from engine import api
    from ui import export_tab

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # nor a stored login
    _, msg, *_ = export_tab.start("any-run", "lora", "x", True, " ", "", True)
    assert msg == "**Export failed:** Type the hub repository to push to, as user/name."
    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    _, msg, *_ = export_tab.start(st.run_id, "lora", "x", True, "someone/tiny", "", True)
    assert msg.startswith("**Export failed:** Uploading to the Hugging Face hub needs a write token")
    _, msg, *_ = export_tab.start(st.run_id, "lora", "x", True, "not a repo", "hf_x", True)
    assert msg == (
        "**Export failed:** 'not a repo' is not a hub repository name; use 'user/name' in ASCII letters, digits, "
        "'-', '_' and '.'."
    )

    secret = "hf_tunesmithUiToken0123456789abcdefXYZ"
    job, msg, *_ = export_tab.start(st.run_id, "lora", "pushed", True, "someone/tiny", secret, True)
    msg, log = wait_export(export_tab, job)
    assert msg.startswith("**Upload failed:** Uploading 'pushed' to 'someone/tiny' failed"), msg
    assert "The export is complete in" in msg and "hub: uploading pushed to someone/tiny" in log
    assert secret not in msg + log
    exports = runs.parent / "exports"
    assert (exports / "pushed" / "adapter_model.safetensors").is_file()
    assert json.loads((job.job_dir / "export.json").read_text())["push_to_hub"] == "someone/tiny"
    files = [p for p in runs.parent.rglob("*") if p.is_file()]
    assert job.job_dir / "log.txt" in files and st.run_dir / "log.txt" in files
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


def test_model_tab_download_progress_from_a_local_hub_cache(tmp_path, tiny_llama, monkeypatch):
    """A model already in the hub cache (a fake cache laid out as huggingface_hub lays it out: blobs, and a snapshot
    of links to them) resolves offline through the same thread and poll; nothing is downloaded."""
    from huggingface_hub import constants

    from engine.models import hub
    from ui import model_tab

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = hub.cache_folder("someone/tiny-cached")
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / commit).mkdir(parents=True)
    for i, f in enumerate(sorted(tiny_llama.iterdir())):
        (repo / "blobs" / f"blob{i}").write_bytes(f.read_bytes())
        (repo / "snapshots" / commit / f.name).symlink_to(f"../../blobs/blob{i}")
    size = sum(f.stat().st_size for f in tiny_llama.iterdir()) + len(commit)  # the weights, files and refs/main
    assert hub.folder_bytes(repo) == size  # the snapshot's links are not counted twice

    text, model, timer = model_tab.download(None, "someone/tiny-cached")
    assert model == "someone/tiny-cached" and timer.active == (not text.startswith("Downloaded"))
    text = wait_download(model_tab, model)
    assert text == f"Downloaded 'someone/tiny-cached' to '{repo / 'snapshots' / commit}'."
    from engine import api

    assert api.poll_download(model).done_bytes == size and api.poll_download(model).total_bytes is None


def wait_download(model_tab, model, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text, timer = model_tab.download_view(model)
        if not timer.active:
            return text
        time.sleep(0.1)
    raise AssertionError("the download did not finish")


def test_model_tab_download_offline_says_one_sentence(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from ui import model_tab

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    _, model, _ = model_tab.download(None, "someone/not-cached")
    assert wait_download(model_tab, model) == (
        "**Download failed:** Could not download 'someone/not-cached': the hub is unreachable and it is not in the "
        "local cache. Connect to the internet, or pick a local model folder."
    )
    assert model_tab.download(None, "")[0] == "Pick a model from the list or type a hub id / local folder."
    assert "does not exist" in model_tab.download(None, "/no/such/folder")[0]


def test_download_progress_reads_a_folder_being_filled(tmp_path):
    from engine.models import hub

    blobs = tmp_path / "models--someone--big" / "blobs"
    assert hub.folder_bytes(tmp_path / "models--someone--big") == 0  # not created yet
    blobs.mkdir(parents=True)
    (blobs / "a1").write_bytes(b"x" * 1000)
    partial = blobs / "b2.incomplete"
    with open(partial, "wb") as fh:
        for written in range(1, 4):
            fh.write(b"y" * 500)
            fh.flush()
            assert hub.folder_bytes(tmp_path) == 1000 + 500 * written
    partial.rename(blobs / "b2")
    (tmp_path / "models--someone--big" / "link").symlink_to(blobs / "b2")
    assert hub.folder_bytes(tmp_path) == 2500


def test_start_without_model_or_data_says_what_to_do(runs):
    from ui import train_tab

    _, status, _ = train_tab.start(
        "", "lora", False, "", "", "auto", "", "train", 256, "x", 5, 1, 1e-3, 1, 1, 8, False, True
    )
    assert status == "**Not started:** Pick a model in the Model tab first."


@pytest.mark.parametrize(
    "argv, needs_login",
    [([], False), (["--host", "0.0.0.0"], True), (["--share"], True), (["--root-path", "/tunesmith"], True)],
)
def test_login_required_when_reachable_from_elsewhere(argv, needs_login, capsys):
    import app

    auth = app.auth_for(app.parse_args(argv))
    assert (auth is not None) == needs_login
    if needs_login:
        assert auth[0] == "tunesmith" and len(auth[1]) >= 12 and auth[1] in capsys.readouterr().out
    assert app.auth_for(app.parse_args(argv + ["--auth", "me:secret"])) == ("me", "secret")


def test_no_mcp_server_whatever_the_environment_says(runs, monkeypatch):
    """GRADIO_MCP_SERVER=True in the environment (set for another app, or by a host whose Gradio has its mcp extra)
    made Gradio serve every handler as an MCP tool under /gradio_api/mcp/, routes that ask for no login. Without the
    extra (as here) Gradio leaves it off by itself, so what is checked is what the app asks of Gradio."""
    import app

    asked = {}
    monkeypatch.setenv("GRADIO_MCP_SERVER", "True")
    monkeypatch.setattr(app.demo, "launch", lambda **kw: asked.update(kw))
    app.main([])
    assert asked["mcp_server"] is False


MACHINE_TOKEN = "hf_machineOwnerToken0123456789"  # this machine's HF_TOKEN
STORED_TOKEN = "hf_storedLoginToken0123456789"  # the login `hf auth login` stored
PROBE = "from huggingface_hub.utils import build_hf_headers\nprint('sent:', build_hf_headers().get('authorization'))\n"


def hub_tokens_sent(tmp_path, monkeypatch) -> tuple[str | None, str]:
    """The Authorization header of a hub request of this process (the app's, as the Model and Data tabs download in
    it), and of a process the app starts through the engine's spawn, as it starts every run and export."""
    from huggingface_hub.utils import build_hf_headers

    from engine.api import processes

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "hub_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(probe))
    pid = processes.spawn("hub_probe", [], probe)
    processes._children[pid].wait(timeout=120)
    said = [line for line in (probe / "log.txt").read_text().splitlines() if line.startswith("sent: ")]
    return build_hf_headers().get("authorization"), said[-1].removeprefix("sent: ")


@pytest.mark.parametrize(
    "argv, lend_env, sent",
    [
        ([], "", f"Bearer {MACHINE_TOKEN}"),  # on this machine only: the owner's own downloads, as before
        (["--auth", "me:secret"], "", None),
        (["--share"], "", None),
        (["--host", "0.0.0.0", "--lend-hf-token"], "", f"Bearer {MACHINE_TOKEN}"),
        (["--share"], "1", f"Bearer {MACHINE_TOKEN}"),  # TUNESMITH_LEND_HF_TOKEN=1: a Space's variable
    ],
)
def test_a_shared_app_downloads_without_the_machines_hub_token_unless_lent(
    argv, lend_env, sent, runs, tmp_path, monkeypatch, capsys
):
    """A shared app's users downloaded gated and private models with the host's token (HF_TOKEN, or the login
    `hf auth login` stored): the app's hub requests, and its runs' and exports', carried it. Now a shared app sends
    none (its environment and huggingface_hub's implicit token are cleared before it serves anyone) unless the host
    lends it; on 127.0.0.1 without a login it is used as before. A token typed by a user is still sent, and the
    token is never printed."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    import app
    from engine.api import access
    from engine.core import hub_token

    stored = tmp_path / "hf-home" / "token"
    stored.parent.mkdir()
    stored.write_text(STORED_TOKEN)
    monkeypatch.setenv("HF_TOKEN", MACHINE_TOKEN)
    monkeypatch.setenv("HF_TOKEN_PATH", str(stored))  # the runs' huggingface_hub reads it when imported
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))  # this process's read it already
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    for name in (
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        hub_token.WITHHELD_ENV,
        hub_token.LEND_ENV,
        "GRADIO_ALLOWED_PATHS",
        "GRADIO_EXAMPLES_CACHE",
    ):
        monkeypatch.setenv(name, "")  # what main() sets is undone after the test...
        monkeypatch.delenv(name)  # ...and it starts unset
    if lend_env:
        monkeypatch.setenv(hub_token.LEND_ENV, lend_env)
    monkeypatch.setenv("GRADIO_ALLOWED_PATHS", str(tmp_path.parent))
    monkeypatch.setattr(access, "_allowed_roots", None)
    monkeypatch.setattr(app.demo, "launch", lambda **kw: None)
    app.main(argv)
    assert hub_tokens_sent(tmp_path, monkeypatch) == (sent, str(sent))
    shared = argv != []
    assert hub_token.withheld() == (sent is None)
    assert ("GRADIO_ALLOWED_PATHS" in __import__("os").environ) != shared  # a shared app ignores it
    assert build_hf_headers(token="hf_typedByTheUser")["authorization"] == "Bearer hf_typedByTheUser"
    printed = capsys.readouterr().out
    assert MACHINE_TOKEN not in printed and STORED_TOKEN not in printed
    if sent is None:
        assert "start it with --lend-hf-token" in printed
        monkeypatch.delenv("HF_TOKEN", raising=False)  # a stored login alone is withheld too
        assert build_hf_headers().get("authorization") is None


@pytest.mark.parametrize("runs_in", ["home", "above home", "root", "home, the workspace elsewhere"])
def test_a_shared_app_refuses_a_workspace_holding_the_home_folder(runs_in, tmp_path, monkeypatch, capsys):
    """The workspace is the folder the app was started from: `python tunesmith/app.py --share` run from the home
    folder let every logged-in user open any file under it that reads as data (~/.docker/config.json,
    ~/.kaggle/kaggle.json). A shared app now refuses to start with such a workspace (or /) and says what to do."""
    import app
    from engine.api import access

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # (a workspace named is made the working folder)
    runs = {"home": home / "runs", "above home": tmp_path / "runs", "root": Path("/runs")}.get(runs_in, home)
    monkeypatch.setenv("TUNESMITH_RUNS", str(runs))
    if runs_in == "home, the workspace elsewhere":  # TUNESMITH_RUNS naming the home folder itself
        monkeypatch.setenv("TUNESMITH_WORKSPACE", str(tmp_path / "work"))
    monkeypatch.setattr(access, "_allowed_roots", None)
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", "")  # what main() sets is undone after the test
    monkeypatch.setattr(app.demo, "launch", lambda **kw: pytest.fail("served"))
    with pytest.raises(SystemExit, match="holds your whole home folder.*--workspace "):
        app.main(["--auth", "me:secret"])
    assert access._allowed_roots is None
    monkeypatch.setenv("TUNESMITH_RUNS", str(home / "tunesmith" / "runs"))  # a folder of its own: served
    served = []
    monkeypatch.setattr(app.demo, "launch", lambda **kw: served.append(kw))
    app.main(["--auth", "me:secret", "--lend-hf-token"])  # (lent: this process's hub token is left as it is)
    assert (
        served
        and access._allowed_roots[1] == (tmp_path / "work" if "elsewhere" in runs_in else home / "tunesmith") / "data"
    )


@pytest.mark.parametrize("given", ["--workspace", "TUNESMITH_WORKSPACE", "neither"])
def test_the_workspace_is_where_runs_data_and_exports_go(given, tmp_path, identity_file, monkeypatch):
    """`--workspace DIR` (or TUNESMITH_WORKSPACE=DIR, a Space's or notebook's variable) keeps runs/, data/ and
    exports/ in DIR, made if missing, and a relative path typed in the app is read from there; without either, the
    working folder is the workspace, as before."""
    import pandas as pd

    import app
    from engine import api
    from engine.api import access
    from ui import data_tab, export_tab

    start, work = tmp_path / "started-here", tmp_path / "tunesmith work"
    start.mkdir()
    monkeypatch.chdir(start)
    monkeypatch.delenv("TUNESMITH_RUNS", raising=False)
    monkeypatch.setenv(api.WORKSPACE_ENV, "")  # what main() sets is undone after the test...
    monkeypatch.delenv(api.WORKSPACE_ENV)  # ...and it starts unset
    argv = ["--workspace", str(work)] if given == "--workspace" else []
    if given == "TUNESMITH_WORKSPACE":
        monkeypatch.setenv(api.WORKSPACE_ENV, str(work))
    monkeypatch.setattr(access, "_allowed_roots", None)
    monkeypatch.setattr(app.demo, "launch", lambda **kw: None)
    app.main(argv)
    expected = start if given == "neither" else work
    assert api.workspace() == expected and api.runs_dir() == expected / "runs" and Path.cwd() == expected
    table = pd.DataFrame(dict(instruction=["Who are you?"], output=["I am Nova."]))
    saved, _ = data_tab.save_identity(table, "Nova")
    assert Path(saved).parent == expected / "data"
    (expected / "data" / "mine.jsonl").write_text(identity_file.read_text())
    used, summary, _, _ = data_tab.inspect("data/mine.jsonl", "", "", "auto", 1024)
    assert used == "data/mine.jsonl" and "**Format:** alpaca" in summary, summary
    assert export_tab.free_name("20250101-000000-nova", "lora") == "nova-lora"
    (expected / "exports" / "nova-lora").mkdir(parents=True)
    assert export_tab.free_name("20250101-000000-nova", "lora") == "nova-lora-2"  # exports/ of the workspace


def test_a_workspace_that_is_a_file_is_refused_with_a_sentence(tmp_path, monkeypatch):
    import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("")
    monkeypatch.setattr(app.demo, "launch", lambda **kw: pytest.fail("served"))
    with pytest.raises(SystemExit, match="--workspace notes: cannot use it as a folder .*name a folder you can"):
        app.main(["--workspace", "notes"])


def test_python_app_py_lists_the_runs_of_its_workspace(tmp_path):
    """`python app.py --workspace DIR`: the tabs are built listing DIR's runs, none of the folder it started in."""
    started = tmp_path / "started-here"
    work = started / "work"  # named relative to where it starts: applied once, not again as work/work
    import os

    from engine import api

    for folder, run in ((started, "20250101-000000-elsewhere"), (work, "20250101-000000-mine")):
        (folder / "runs" / run).mkdir(parents=True)
        spec = api.JobSpec(model="Qwen/Qwen3-0.6B", data="x.jsonl")
        (folder / "runs" / run / "job.yaml").write_text(spec.to_yaml())
        status = dict(state="done", message="done", step=2, total_steps=2)
        (folder / "runs" / run / "status.json").write_text(json.dumps(status))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TUNESMITH_RUNS", api.WORKSPACE_ENV)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--workspace", "work"],
        cwd=started,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**env, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        deadline, body = time.time() + 120, ""
        while time.time() < deadline and not body and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body, proc.stdout.read1().decode() if proc.poll() is not None else "app did not answer"
        assert "20250101-000000-mine" in body and "20250101-000000-elsewhere" not in body
        assert not (work / "work").exists()  # where its runs would have gone had main() applied "work" again
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_app_py_serves_on_loopback(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**__import__("os").environ, "TUNESMITH_RUNS": str(tmp_path / "runs"), "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        deadline, body = time.time() + 120, ""
        while time.time() < deadline and not body:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert body, proc.stdout.read1().decode() if proc.poll() is not None else "app did not answer"
        assert json.loads(body)["title"] == "Tunesmith"
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]  # local address only
        # a page of another site that points its host name at 127.0.0.1 (DNS rebinding) reached the app through the
        # user's browser, as the same site, so with no Origin to refuse: without a login it answers loopback names only
        for host, code in ((f"rebound.example:{port}", 400), (f"localhost:{port}", 200), (f"[::1]:{port}", 200)):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/config", headers={"Host": host})
            try:
                assert urllib.request.urlopen(request, timeout=5).status == code, host
            except urllib.error.HTTPError as e:
                assert e.code == code and "start it with --share, or with --auth" in e.read().decode(), host
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_model_tab_fit_badge(monkeypatch, tiny_llama):
    from ui import model_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "14.6")  # plan for a T4
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")  # with 64 GiB of RAM free, whatever this machine has
    assert model_tab.fit_badge("Qwen/Qwen3-4B", "qlora").startswith("✅ Fits this GPU (15 GiB, 16 GB preset)")
    assert model_tab.fit_badge("Qwen/Qwen3-32B", "full").startswith("⚠ Will not fit this GPU")
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "7.2")  # an 8 GB card: a 14B model trains by streaming its weights
    badge = model_tab.fit_badge("Qwen/Qwen3-14B", "qlora")
    assert badge.startswith("✅ Fits this GPU (7 GiB, 8 GB preset) with weights in host RAM (slower)"), badge
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "16")  # the plan needs 35 GiB of RAM: the badge says so
    assert "GiB of host RAM" in model_tab.fit_badge("Qwen/Qwen3-14B", "qlora")
    monkeypatch.delenv("TUNESMITH_VRAM_GIB")
    assert model_tab.fit_badge(str(tiny_llama), "lora").startswith("No GPU detected")
    assert "does not exist" in model_tab.describe(None, "/no/such/folder", "lora")


def test_preset_applied_from_the_gpu(monkeypatch):
    from ui import train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "14.6")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    note, seq, batch, accum, rank, lr, ckpt = train_tab.apply_preset("Qwen/Qwen3-4B", "qlora")
    assert note.startswith("Preset for this GPU (16 GB tier)") and "the run's plan peaks at" in note
    assert seq * batch >= 1024 and batch * accum == 8 and rank == 16 and lr == 2e-4 and isinstance(ckpt, bool)
    note, *_ = train_tab.apply_preset("Qwen/Qwen3-32B", "full")
    assert note.startswith("⚠ The 16 GB preset says this does not fit")
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "7.2")
    note, seq, batch, *_ = train_tab.apply_preset("Qwen/Qwen3-14B", "qlora")
    assert "weights kept in host RAM (slower)" in note and seq * batch >= 512, note


def test_on_cpu_the_method_brings_its_usual_learning_rate(tiny_llama, monkeypatch):
    """On a machine without a GPU there is no preset, and switching LoRA to full fine-tuning kept LoRA's 2e-4 in
    the learning-rate box, ten times the usual rate for full fine-tuning; the other fields stay as they are."""
    from ui import train_tab

    monkeypatch.delenv("TUNESMITH_VRAM_GIB", raising=False)
    note, seq, batch, accum, rank, lr, ckpt = train_tab.apply_preset(str(tiny_llama), "full")
    assert note.startswith("No GPU detected") and lr == 2e-5
    assert all(field == train_tab.gr.update() for field in (seq, batch, accum, rank, ckpt))
    assert train_tab.apply_preset(str(tiny_llama), "lora")[5] == 2e-4


def test_a_loaded_job_keeps_its_settings_over_the_gpus_preset(monkeypatch, tmp_path):
    """Load job.yaml on a GPU machine: it filled the model and the method, whose change events (Gradio fires them on
    programmatic updates too) then applied this GPU's preset over the job's max length, batch, accumulation, rank,
    learning rate and checkpointing. The job's own values are kept for its model and method; another model or method
    gets the preset."""
    from ui import train_settings, train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "14.6")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: Qwen/Qwen3-4B\nmethod: qlora\ndata: d.jsonl\nmax_seq_length: 300\nbatch_size: 3\ngrad_accum: 5\n"
        "lora_r: 4\nlearning_rate: 0.0005\ngradient_checkpointing: false\n"
    )
    *_, loaded, note = train_settings.load(str(job))
    assert note.startswith("Loaded the settings of job.yaml")
    said, *values = train_tab.apply_preset("Qwen/Qwen3-4B", "qlora", loaded)
    assert values == [300, 3, 5, 4, 0.0005, False]
    assert said == "The loaded job's settings are kept."
    said, seq, *_ = train_tab.apply_preset("Qwen/Qwen3-4B", "lora", loaded)  # the same model, LoRA: the preset
    assert said.startswith("Preset for this GPU (16 GB tier)") and seq != 300


def test_smoothed_loss_is_a_bias_corrected_average():
    from ui.train_tab import smoothed

    assert smoothed([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]
    assert smoothed([4.0, 0.0])[1] == pytest.approx((0.9 * 0.1 * 4.0) / (1 - 0.81))


def test_shared_app_reads_only_its_workspace(runs, tmp_path, identity_file, monkeypatch):
    from engine import api
    from engine.api import access
    from ui import data_tab

    inside = runs.parent / "data" / "mine.jsonl"
    inside.parent.mkdir(parents=True)
    inside.write_text(identity_file.read_text())
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    secret = tmp_path.parent / "secret.jsonl"
    secret.write_text(identity_file.read_text())
    _, summary, _, _ = data_tab.inspect(str(secret), "", "", "auto", 1024)
    assert "only opens files inside its workspace" in summary
    _, summary, _, _ = data_tab.inspect(str(runs.parent / "data" / ".." / ".." / "secret.jsonl"), "", "", "auto", 1024)
    assert "only opens files inside its workspace" in summary
    assert data_tab.inspect(str(inside), "", "", "auto", 1024)[0] == str(inside)
    api.check_access("Qwen/Qwen3-0.6B")  # hub ids are not files
    with pytest.raises(api.UserError):
        api.start(api.JobSpec(model=str(tmp_path.parent), data=str(inside)))


def test_every_string_has_chinese_and_russian_and_the_switch_relabels(monkeypatch):
    import app
    from ui import i18n

    assert all(len(v) == 2 and all(v) for v in i18n.STRINGS.values())
    items = i18n.translatable(app.demo.blocks)
    english = {text for _, fields in items for attr, text in fields.items() if attr != "choices"}
    assert {"Model", "Data", "Train", "Chat", "Export", "Start training", "Message"} <= english
    updates = i18n.switcher(items)("Русский")
    assert len(updates) == len(items)
    by_english = {fields.get("label", fields.get("value")): u for (_, fields), u in zip(items, updates, strict=True)}
    assert by_english["Start training"]["value"] == "Начать обучение"
    assert by_english["Train"]["label"] == "Обучение"


def test_export_tab_hides_gguf_for_an_unsupported_model(runs, tmp_path, tiny_llama, identity_file):
    import json
    import shutil

    from helpers import wait_for

    from engine import api
    from ui import export_tab

    gemma = tmp_path / "gemma-like"
    shutil.copytree(tiny_llama, gemma)
    cfg = json.loads((gemma / "config.json").read_text())
    (gemma / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    radio, why = export_tab.formats_for(st.run_id)
    assert why == "" and any(v == "gguf-q4_k_m" for _, v in radio.choices)
    assert all(v != "gguf-mxfp4" for _, v in radio.choices)  # a dense model: no experts to store in MXFP4
    job = st.run_dir / "job.yaml"
    job.write_text(job.read_text().replace(str(tiny_llama), str(gemma)))
    radio, why = export_tab.formats_for(st.run_id)
    assert why.startswith("GGUF: GGUF export does not support the 'falcon' architecture")
    assert all(not v.startswith("gguf") for _, v in radio.choices)


def test_export_tab_offers_no_lora_adapter_for_a_full_fine_tune(runs, tiny_llama, identity_file):
    """A full fine-tune has no adapter, yet the Export tab offered "LoRA adapter" and kept it picked (the default):
    Export then failed with "has no LoRA adapter to export"."""
    from engine import api
    from ui import export_tab

    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1, method="full")))
    assert st.state == "done"
    radio, why = export_tab.formats_for(st.run_id)
    assert why == "" and "lora" not in [v for _, v in radio.choices] and radio.value == "merged16"
    lora = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    assert "lora" in [v for _, v in export_tab.formats_for(lora.run_id)[0].choices]


def test_export_tab_suggests_a_free_folder_name_per_run_and_format(runs, tiny_llama, identity_file):
    """A first run's exports (the GGUF, then the adapter) both went to the box's fixed 'my-model', so the second
    failed with "already exists; choose another folder name". A blank box exports to a name after the run and the
    format, the first one free under exports/, shown as the box's placeholder; the GGUF file inside is not named
    twice after its quant."""
    from engine import api
    from ui import export_tab

    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1, name="nova")))
    assert st.state == "done"
    assert export_tab.suggest_name(st.run_id, "gguf-q8_0").placeholder == "nova-q8_0"
    job, said, *_ = export_tab.start(st.run_id, "gguf-q8_0", "  ")  # a blank box exports to the name shown
    assert wait_export(export_tab, job)[0].startswith("Exported"), said
    assert [p.name for p in (api.workspace() / "exports" / "nova-q8_0").glob("*.gguf")] == ["nova-q8_0.gguf"]
    assert export_tab.suggest_name(st.run_id, "lora").placeholder == "nova-lora"
    assert export_tab.suggest_name(st.run_id, "gguf-q8_0").placeholder == "nova-q8_0-2"
    assert export_tab.suggest_name("", "lora").placeholder == ""


def test_cancel_export_is_clickable_only_while_an_export_runs(runs, tiny_llama, identity_file):
    """'Cancel export' was always clickable, with no export running. It starts disabled, is enabled by a started
    export and stays so while the timer's reads find it running; the read that finds it ended (done, cancelled)
    disables it, and a refused start leaves it disabled."""
    import gradio as gr

    from engine import api
    from ui import export_tab

    with gr.Blocks():
        tab = export_tab.build()
    assert tab["stop"].interactive is False
    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    for fmt, name, cancel in (("lora", "done", False), ("gguf-q4_k_m", "cancelled", True)):
        job, _, _, timer, stop = export_tab.start(st.run_id, fmt, name)
        assert timer.active and stop.interactive is True
        if cancel:
            export_tab.cancel(job)
        deadline = time.time() + 300
        while (shown := export_tab.view(job))[2].active:
            assert shown[4].interactive is True and time.time() < deadline
            time.sleep(0.2)
        assert shown[4].interactive is False and api.poll_export(job).state == name, shown[0]
    assert export_tab.view(None)[-1].interactive is False
    assert export_tab.start(st.run_id, "lora", "done")[-1].interactive is False  # "already exists": no export


def test_a_reloaded_page_follows_the_running_export_and_cancels_it(runs, tiny_llama, identity_file):
    """After a reload the running export belonged to the old page: the new one showed no progress and its Cancel
    stayed disabled. The page's load handler now finds the running export: its progress, Cancel enabled and
    working on it; with none running it leaves the page as it is."""
    from engine import api
    from ui import export_tab

    st = wait_for(api.start(api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=1)))
    assert all(out == {"__type__": "update"} for out in export_tab.follow())
    started, *_ = export_tab.start(st.run_id, "gguf-q4_k_m", "reloaded")
    job, text, _, timer, downloads, stop = export_tab.follow()  # the reloaded page loads
    assert job.job_id == started.job_id and job.out == started.out and job.pid == started.pid
    assert text.startswith("Exporting…") and timer.active and stop.interactive is True and not downloads.visible
    assert export_tab.cancel(job).startswith("**Export cancelled:**")
    assert api.poll_export(started).state == "cancelled" and export_tab.view(job)[-1].interactive is False
    assert not (runs.parent / "exports" / "reloaded").exists()
    assert all(out == {"__type__": "update"} for out in export_tab.follow())
