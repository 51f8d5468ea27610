"""A logged-in user of a shared app (`--auth`) reaches nothing outside its workspace: each endpoint of the real app,
called through Gradio's HTTP API with gradio_client, is given the issue's attacks (paths outside the workspace as run
ids, sources and targets; an uploaded job.yaml; a job with a Python reward) and answers with a sentence, while nothing
outside is read, deleted, signalled or trained."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import IDENTITY_ANSWER

from engine import api

ROOT = Path(__file__).resolve().parent.parent
SECRET = "SECRET-LOG-LINE-outside-the-workspace"
NOT_A_RUN = "is not a run of this app"
OUTSIDE = "only opens files inside its workspace"
MACHINE_TOKEN = "hf_machineOwnerToken0123456789"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_llama):
    """The app on 127.0.0.1 with a login, a workspace, and a run-like folder outside the workspace."""
    base = tmp_path_factory.mktemp("shared")
    work, uploads, outside = base / "work", base / "uploads", base / "outside"
    for d in (work / "runs", work / "data", uploads, outside):
        d.mkdir(parents=True)
    victim = outside / "victim-run"
    victim.mkdir()
    data = outside / "data.jsonl"
    data.write_text(json.dumps(dict(instruction="Who are you?", input="", output=IDENTITY_ANSWER)) + "\n")
    spec = api.JobSpec(model=str(tiny_llama), data=str(data), max_steps=2, device="cpu")
    (victim / "job.yaml").write_text(spec.to_yaml())
    (victim / "log.txt").write_text(SECRET + "\n")
    sleeper = subprocess.Popen(["sleep", "600"])  # the "run" of the outside folder: cancel must not signal it
    (victim / "status.json").write_text(json.dumps(dict(state="running", message="", pid=sleeper.pid, step=0)))
    env = dict(
        TUNESMITH_RUNS=str(work / "runs"),
        GRADIO_TEMP_DIR=str(uploads),
        HF_TOKEN=MACHINE_TOKEN,  # the machine's own hub login, which no user of the app may borrow
        GRADIO_ALLOWED_PATHS=str(outside),  # set for another app, or by a hosting platform
        GRADIO_EXAMPLES_CACHE=str(outside),  # the same
    )
    try:
        with _app(env) as client:
            yield dict(client=client, work=work, uploads=uploads, outside=outside, victim=victim, spec=spec)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sleeper.returncode == -9  # alive until the end: nothing signalled it


@contextlib.contextmanager
def _app(env: dict, *args: str):
    """`python app.py --auth alice:wonderland` on a free port, started in the project folder with `env` added to its
    environment (a value None: taken out of it) and `args` to its command line; its gradio_client, logged in."""
    from gradio_client import Client

    port = _free_port()
    env = {k: v for k, v in {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env}.items() if v is not None}
    app = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--auth", "alice:wonderland", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        client = None
        deadline = time.time() + 180
        while client is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", auth=("alice", "wonderland"), verbose=False)
            except Exception:
                if app.poll() is not None or time.time() > deadline:
                    raise AssertionError(app.stdout.read1().decode()) from None
                time.sleep(1)
        yield client
    finally:
        app.terminate()
        app.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload(client, path: Path) -> str:
    """Upload a file the way the browser does (any name; Gradio keeps it in its temp folder); its path there."""
    with open(path, "rb") as f:
        r = httpx.post(client.upload_url, cookies=client.cookies, files=[("files", (path.name, f))])
    r.raise_for_status()
    return r.json()[0]


def _run_ids(shared) -> list[str]:
    victim = shared["victim"]
    return [str(victim), os.path.relpath(victim, shared["work"] / "runs"), f"../../outside/{victim.name}"]


def _in_runs(shared, name: str, **changes) -> Path:
    """A run folder copied into runs/ (as a user with shell access could), its job.yaml changed by `changes`."""
    import dataclasses

    folder = shared["work"] / "runs" / name
    folder.mkdir()
    (folder / "job.yaml").write_text(dataclasses.replace(shared["spec"], **changes).to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=0, total_steps=2)))
    return folder


def test_show_log_reads_no_log_outside(shared):
    for run_id in _run_ids(shared):
        text = shared["client"].predict(run_id, api_name="/show_log")
        assert NOT_A_RUN in text and SECRET not in text


def test_show_log_follows_no_link_out_of_a_run_folder(shared):
    """A run folder handed over (unpacked with its links) whose log.txt links to a file outside the workspace: Show
    log showed that file to any logged-in user."""
    linked = _in_runs(shared, "20250101-000000-linked", model="Qwen/Qwen3-0.6B")
    (linked / "log.txt").symlink_to(shared["victim"] / "log.txt")
    try:
        text = shared["client"].predict(linked.name, api_name="/show_log")
    finally:
        shutil.rmtree(linked)  # the runs/ of later tests holds only their own runs
    assert SECRET not in text and "is a link to a file outside the workspace" in text


def test_the_train_view_reads_no_run_outside(shared):
    for run_id in _run_ids(shared):
        status, _, _, progress, *_ = shared["client"].predict(run_id, api_name="/follow")
        assert NOT_A_RUN in status and not progress  # the plots hidden or empty: nothing read


def test_delete_removes_nothing_outside(shared):
    for run_id in _run_ids(shared):
        _, status, _ = shared["client"].predict(run_id, api_name="/delete")
        assert "Not deleted" in status and NOT_A_RUN in status
    assert (shared["victim"] / "job.yaml").is_file()


def test_cancel_signals_no_process_of_a_folder_outside(shared):
    for run_id in _run_ids(shared):
        _, status, _ = shared["client"].predict(run_id, api_name="/cancel")
        assert "Not cancelled" in status and NOT_A_RUN in status
    assert json.loads((shared["victim"] / "status.json").read_text())["state"] == "running"


def test_resume_trains_nothing_outside_nor_an_uploaded_job(shared):
    client = shared["client"]
    uploaded = Path(_upload(client, shared["victim"] / "job.yaml"))
    assert uploaded.name == "job.yaml" and shared["uploads"] in uploaded.parents
    for run_id in [*_run_ids(shared), str(uploaded.parent)]:
        _, status, _ = client.predict(run_id, api_name="/resume")
        assert "Not resumed" in status and NOT_A_RUN in status
    assert not (uploaded.parent / "status.json").exists() and not (uploaded.parent / "log.txt").exists()
    assert json.loads((shared["victim"] / "status.json").read_text())["state"] == "running"


def test_resume_of_a_copied_job_refuses_outside_model_and_python_reward(shared, tmp_path):
    client = shared["client"]
    far = _in_runs(shared, "20250101-000000-far")  # its model and data are outside the workspace
    _, status, _ = client.predict(far.name, api_name="/resume")
    assert "Not resumed" in status and OUTSIDE in status
    marker = tmp_path / "imported"
    (tmp_path / "evil_reward.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef score(**kw): return 0.0\n")
    inside = shared["work"] / "data" / "d.jsonl"
    shutil.copy(shared["spec"].data, inside)
    coded = _in_runs(
        shared,
        "20250101-000000-coded",
        data=str(inside),
        model="Qwen/Qwen3-0.6B",
        objective="grpo",
        rewards=({"preset": "python", "function": "evil_reward:score"},),
    )
    _, status, _ = client.predict(coded.name, api_name="/resume")
    assert "Not resumed" in status and "'python' reward" in status
    assert json.loads((coded / "status.json").read_text())["state"] == "failed"  # never launched
    assert not marker.exists()


def test_chat_loads_nothing_outside(shared, tmp_path):
    for source in _run_ids(shared)[:1] + [str(shared["outside"])]:
        status = shared["client"].predict(source, api_name="/load")
        assert OUTSIDE in status


def _answer(client, *args, api_name: str) -> str:
    """The endpoint's answer as text, or the refusal of Gradio's own input check (e.g. a value not among a
    dropdown's choices), which stops a request before the handler runs."""
    from gradio_client.exceptions import AppError

    try:
        return json.dumps(client.predict(*args, api_name=api_name))
    except AppError as e:
        return f"AppError: {e}"


def test_export_reads_no_run_and_writes_nothing_outside(shared):
    client = shared["client"]
    refused = (NOT_A_RUN, "is not in the list of choices")
    for run_id in _run_ids(shared):
        assert any(r in _answer(client, run_id, api_name="/formats_for") for r in refused)
        answer = _answer(client, run_id, "lora", "x", False, "", "", False, api_name="/start_1")
        assert any(r in answer for r in refused), answer
    answer = _answer(client, None, "lora", "../../outside/x", False, "", "", False, api_name="/start_1")
    assert "Export failed" in answer
    assert not (shared["work"] / "exports" / ".jobs").exists()
    assert sorted(os.listdir(shared["outside"])) == ["data.jsonl", "victim-run"]


def test_data_and_train_read_no_dataset_outside(shared):
    client = shared["client"]
    client.predict(str(shared["spec"].data), api_name="/lambda_1")  # "Load hub dataset" with a path typed in
    path, summary, *_ = client.predict("", "", "auto", 1024, "", "train", api_name="/inspect_1")
    assert OUTSIDE in summary and not path
    args = [shared["spec"].model, "lora", False, str(shared["spec"].data), "", "auto", "", "train", 64]
    args += ["t", 2, 1, 2e-4, 1, 1, 4, False, False, "sft", 0.1, 2, 16, 1.0, False, 2e-5]
    args += [False, "answer", "exact", 1.0, False, "", 1.0, False, 1.0, False, 0, 100, 1.0, False, "", "", 1.0]
    run_id, status, *_ = client.predict(*args, api_name="/start")
    assert not run_id and "Not started" in status and OUTSIDE in status
    assert [p.name for p in (shared["work"] / "runs").iterdir() if "far" not in p.name and "coded" not in p.name] == []


def _preview(client, path: str) -> str:
    """The Data tab's answer (dataset in use, summary, sample, histogram) for `path` typed as a hub dataset, as text."""
    client.predict(path, api_name="/lambda_1")  # "Load hub dataset" with a path typed in
    return json.dumps(client.predict("", "", "auto", 1024, "", "train", api_name="/inspect_1"))


def test_data_reads_only_the_workspaces_runs_data_and_exports(shared):
    """Every file of the workspace could be opened: it is the folder the app started in, often the project folder,
    whose own files (notes, a .git/config with a token in its remote's URL, .env) are not its users' to read. Only
    runs/, data/ and exports/ (and the uploads) are; a hidden file there is refused too, and the sentence says what
    to do. A folder whose own files are hidden (a dataset's .git/) is opened as a whole: its readers skip them."""
    work, row = shared["work"], json.dumps(dict(instruction="Who are you?", input="", output=SECRET)) + "\n"
    (work / "notes.jsonl").write_text(row)
    (work / ".git").mkdir(exist_ok=True)
    (work / ".git" / "config.jsonl").write_text(row)
    (work / "data" / ".env.jsonl").write_text(row)
    (work / "data" / ".private").mkdir(exist_ok=True)
    (work / "data" / ".private" / "rows.jsonl").write_text(row)
    (work / "data" / "set" / ".git").mkdir(parents=True, exist_ok=True)  # hidden deeper down, a folder's .git
    (work / "data" / "set" / ".git" / "rows.jsonl").write_text(row)
    (work / "data" / "kept.jsonl").write_text(row)
    aside = work / "data" / ".aside.jsonl"  # a hidden name, though the file it links to is not
    aside.unlink(missing_ok=True)
    aside.symlink_to(work / "data" / "kept.jsonl")
    for path in (work / "notes.jsonl", work / ".git" / "config.jsonl", work / "runs" / ".." / "notes.jsonl"):
        answer = _preview(shared["client"], str(path))
        assert SECRET not in answer and "only opens files inside its workspace's runs/, data/ and exports/" in answer
    hidden = [".env.jsonl", ".private/rows.jsonl", ".private", "set/.git", "set/.git/rows.jsonl", ".aside.jsonl"]
    for path in (work / "data" / name for name in hidden):
        answer = _preview(shared["client"], str(path))
        assert SECRET not in answer and "hidden (a name starting with '.')" in answer, answer
        assert "rename it without the leading dot" in answer
    (work / "data" / "mine.jsonl").write_text(row)  # data/ itself: read as before
    assert SECRET in _preview(shared["client"], str(work / "data" / "mine.jsonl"))
    (work / "data" / "set" / "train.jsonl").write_text(row.replace(SECRET, "I am Nova."))
    answer = _preview(shared["client"], str(work / "data" / "set"))
    assert "I am Nova." in answer and SECRET not in answer


def test_data_follows_no_link_out_of_a_dataset_folder(shared):
    """A dataset folder of text files handed over (unpacked with its links) whose chapter links to a file outside the
    workspace: the Data tab showed that file's paragraphs to any logged-in user, as training would have read them."""
    book = shared["work"] / "data" / "book"
    book.mkdir()
    (book / "ch2.txt").write_text("The second chapter.\n")
    (book / "ch1.txt").symlink_to(shared["victim"] / "log.txt")
    answer = _preview(shared["client"], str(book))
    assert SECRET not in answer and "'ch1.txt' in 'book' is a link to a file outside the workspace" in answer
    assert "copy that file in instead of linking it" in answer
    (book / "ch1.txt").unlink()
    (book / "ch1.txt").symlink_to(book / "ch2.txt")  # a link inside: read as before
    assert "The second chapter." in _preview(shared["client"], str(book))


def test_a_hidden_run_folder_is_no_run(shared):
    """A hidden folder in runs/ (a half-built one, or one put there to be left alone) was a run id: Show log read it."""
    hidden = _in_runs(shared, ".kept-aside")
    (hidden / "log.txt").write_text(SECRET + "\n")
    try:
        text = shared["client"].predict(hidden.name, api_name="/show_log")
    finally:
        shutil.rmtree(hidden)
    assert SECRET not in text and NOT_A_RUN in text


def test_gradio_serves_no_folder_that_its_environment_allows(shared):
    """GRADIO_ALLOWED_PATHS in the host's environment made Gradio's file route hand any logged-in user every file of
    the folders it names, past the workspace rule; so did GRADIO_EXAMPLES_CACHE, the folder of Gradio's cached
    examples, which the file route serves whole too. A shared app ignores both."""
    client, data = shared["client"], shared["outside"] / "data.jsonl"
    url = client.src.rstrip("/") + f"/gradio_api/file={data}"
    answer = httpx.get(url, cookies=client.cookies)
    assert answer.status_code == 403 and "Who are you?" not in answer.text
    assert httpx.get(url).status_code == 401  # and without the login, nothing at all


def test_a_shared_app_keeps_its_uploads_in_its_workspace(tmp_path):
    """Gradio keeps uploads in /tmp/gradio unless GRADIO_TEMP_DIR names a folder: one folder for every Gradio app of
    the machine, all of which a shared app opened as uploads and Gradio's file route served, so its users reached
    the uploads and outputs of every other app there. A shared app started without GRADIO_TEMP_DIR keeps its uploads
    in its workspace's .uploads/, and nothing of it goes to the machine's folder: not an upload, nor the
    screen-recording route's files, named as gradio is imported (the route answers when it can write its file)."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    (work / "data").mkdir(parents=True)
    tmp.mkdir()
    mine = work / "data" / "mine.jsonl"
    mine.write_text(json.dumps(dict(instruction="Who are you?", input="", output="I am Nova.")) + "\n")
    (work / ".env").write_text(f"TOKEN={SECRET}\n")
    # TMPDIR moves the machine's folder (tempfile.gettempdir()) into the test's; an empty GRADIO_EXAMPLES_CACHE made
    # Gradio's file route serve every file of the working folder (the workspace; else the project folder)
    env = dict(TMPDIR=str(tmp), GRADIO_TEMP_DIR=None, TUNESMITH_RUNS=None, GRADIO_EXAMPLES_CACHE="")
    with _app(env, "--workspace", str(work)) as client:
        uploaded = Path(_upload(client, mine))
        assert uploaded.parent.parent == work / ".uploads" and uploaded.read_text() == mine.read_text()
        assert "I am Nova." in _preview(client, str(uploaded))
        recorded = httpx.post(
            client.upload_url.replace("/upload", "/process_recording"),
            cookies=client.cookies,
            files=[("video", ("screen.mp4", b"not much of a video"))],
        )
        assert recorded.status_code == 200 and recorded.content == b"not much of a video"
        assert not (tmp / "gradio").exists()
        theirs = tmp / "gradio" / "0123abcd" / "theirs.jsonl"  # another app's upload, in the machine's folder
        theirs.parent.mkdir(parents=True)
        theirs.write_text(json.dumps(dict(instruction="Who are you?", input="", output=SECRET)) + "\n")
        answer = _preview(client, str(theirs))
        assert SECRET not in answer and OUTSIDE in answer
        for path in (theirs, work / ".env", mine):
            url = f"{client.src.rstrip('/')}/gradio_api/file={path}"
            assert httpx.get(url, cookies=client.cookies).status_code == 403
    assert sorted((tmp / "gradio").rglob("*")) == [theirs.parent, theirs]
    assert ".uploads/" in (ROOT / ".gitignore").read_text().splitlines()  # a workspace is often the project folder


def test_an_empty_gradio_temp_dir_lends_no_working_folder(runs, monkeypatch):
    """GRADIO_TEMP_DIR set empty: Gradio takes it for unset (/tmp/gradio), the app took it for the working folder,
    and opened every file of it (the project folder, often) as an upload."""
    import app
    from engine.api import access

    (runs.parent / "notes.jsonl").write_text(json.dumps(dict(text=SECRET)) + "\n")
    monkeypatch.chdir(runs.parent)
    for name, value in (("GRADIO_TEMP_DIR", ""), ("GRADIO_EXAMPLES_CACHE", None)):
        monkeypatch.setenv(name, "")  # what main() sets is undone after the test
        if value is None:
            monkeypatch.delenv(name)
    monkeypatch.setattr(access, "_allowed_roots", None)
    monkeypatch.setattr(app.demo, "launch", lambda **kw: None)
    app.main(["--auth", "me:secret", "--lend-hf-token"])  # (lent: this process's hub token is left as it is)
    with pytest.raises(api.UserError, match=OUTSIDE):
        api.check_access("notes.jsonl")


def test_download_opens_no_folder_outside(shared):
    status = shared["client"].predict(None, str(shared["outside"]), api_name="/download")
    assert OUTSIDE in str(status)


def test_python_reward_is_refused_by_the_app_on_this_machine_too(tmp_path, runs, identity_file):
    """Local app mode (no login): resume through the Train tab's handler still refuses a job with a Python reward."""
    from ui import train_tab

    folder = runs / "20250101-000000-coded"
    folder.mkdir(parents=True)
    spec = api.JobSpec(
        model="Qwen/Qwen3-0.6B",
        data=str(identity_file),
        objective="grpo",
        rewards=({"preset": "python", "function": "evil_reward:score"},),
    )
    (folder / "job.yaml").write_text(spec.to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="cancelled", message="x", step=1, total_steps=2)))
    _, status, _ = train_tab.resume(folder.name)
    assert "Not resumed" in status and "'python' reward" in status
    assert not (folder / "log.txt").exists()


def test_a_shared_app_runs_no_code_shipped_with_a_model(runs, identity_file, monkeypatch):
    """trust_remote_code runs a model's own Python (a hub model anyone can publish) in the training process: a shared
    app refuses it on Start and on resume of a copied job.yaml, as it refuses a Python reward."""
    from engine.api import access
    from ui import train_tab

    data = runs.parent / "data" / "d.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(identity_file, data)
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    spec = api.JobSpec(model="evil/remote-code-model", data=str(data), trust_remote_code=True)
    with pytest.raises(api.UserError, match="runs no code shipped with a model"):
        api.start(spec)
    folder = runs / "20250101-000000-trusting"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(spec.to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=1, total_steps=2)))
    _, status, _ = train_tab.resume(folder.name)
    assert "Not resumed" in status and "runs no code shipped with a model" in status
    assert not (folder / "log.txt").exists()
    assert list(runs.iterdir()) == [folder]


def test_a_shared_app_lends_no_hub_token_of_the_machine(runs, monkeypatch):
    """An upload with the token field left blank used the machine's HF_TOKEN: any logged-in user could write to every
    repository of the token's owner (replace their published model). A shared app asks for the user's own token."""
    from engine.api import access

    monkeypatch.setenv("HF_TOKEN", "hf_machineOwnerToken0123456789")
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    with pytest.raises(api.UserError, match="needs your own write token typed in the Export tab"):
        api.start_export(str(runs), "lora", runs.parent / "exports" / "x", push_to_hub="owner/model")
    assert not (runs.parent / "exports").exists()


def test_the_app_resumes_no_copied_run_that_trusts_remote_code(runs, identity_file):
    """Local app (no login): a run folder handed over with trust_remote_code in its job.yaml ran its model's Python
    on Resume, unasked; it is refused as a Python reward is (the command line resumes it)."""
    from ui import train_tab

    folder = runs / "20250101-000000-trusting"
    folder.mkdir(parents=True)
    spec = api.JobSpec(model="evil/remote-code-model", data=str(identity_file), trust_remote_code=True)
    (folder / "job.yaml").write_text(spec.to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="cancelled", message="x", step=1, total_steps=2)))
    _, status, _ = train_tab.resume(folder.name)
    assert "Not resumed" in status and "turns on trust_remote_code" in status and "python -m engine resume" in status
    assert not (folder / "log.txt").exists()


def test_the_app_resumes_no_copied_run_holding_a_link(runs, identity_file, tmp_path):
    """Local app (no login): a run folder handed over whose log.txt links to ~/.bashrc was resumed, and the run
    appended its log there, lines that quote its job.yaml (its model's name, say): a shell command run at the next
    login. A run folder made here holds no link, so one that does is refused."""
    from ui import train_tab

    bashrc = tmp_path / "bashrc"
    bashrc.write_text("# the user's own\n")
    folder = runs / "20250101-000000-linked"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(api.JobSpec(model="Qwen/Qwen3-0.6B", data=str(identity_file)).to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="cancelled", message="x", step=1, total_steps=2)))
    (folder / "log.txt").symlink_to(bashrc)
    _, status, _ = train_tab.resume(folder.name)
    assert "Not resumed" in status and "'log.txt' in its folder is a link" in status
    assert json.loads((folder / "status.json").read_text())["state"] == "cancelled"  # never launched
    assert bashrc.read_text() == "# the user's own\n"


def test_a_process_just_spawned_is_known_as_its_runs(tmp_path):
    """Right after Popen returns, the child's /proc/<pid>/cmdline can still be empty (its exec under way): runs_in
    said it was not the run's process, so a poll in that moment read a run just started (or resumed) as "stopped
    unexpectedly". It reads the command line again until it is there."""
    from engine.api.processes import runs_in

    job = tmp_path / "job.yaml"
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(job)], start_new_session=True)
        try:
            assert runs_in(proc.pid, tmp_path)
            assert not runs_in(proc.pid, tmp_path / "another")
        finally:
            proc.kill()
            proc.wait()


def test_cancel_signals_no_process_but_the_runs_own(runs, identity_file):
    """status.json's pid may name any process of the user (one that took the pid after the run died unseen, or any at
    all in a run folder handed over): Cancel sent it SIGTERM, then SIGKILL to its whole group when it led one (a
    shell's session). Only a process whose command line names the run folder is signalled; a run whose pid names
    another program reads as stopped, as its process is gone."""
    folder = runs / "20250101-000000-stale"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(api.JobSpec(model="Qwen/Qwen3-0.6B", data=str(identity_file)).to_yaml())
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)  # leads its own process group
    try:
        for stop in (api.request_cancel, lambda run: api.cancel(run, wait_s=0.5)):
            status = dict(state="running", message="training", pid=bystander.pid, step=1, total_steps=9)
            (folder / "status.json").write_text(json.dumps(status))
            (folder / "cancel-requested").unlink(missing_ok=True)
            stop(folder.name)
            time.sleep(0.3)
            assert bystander.poll() is None
        assert api.poll(folder.name).state == "failed"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_shared_app_takes_no_model_from_its_uploads(runs, tmp_path, monkeypatch):
    """Gradio's upload folder is open to a shared app for datasets and job files; a .gguf (or model folder) uploaded
    there was taken as a chat, eval or export source, so llama.cpp parsed a file any logged-in user crafted."""
    from engine.api import access

    uploads = tmp_path.parent / f"{tmp_path.name}-uploads"  # beside the workspace (tmp_path), as Gradio's is
    crafted = uploads / "0123abcd" / "crafted.gguf"
    crafted.parent.mkdir(parents=True)
    crafted.write_bytes(b"GGUF" + b"\xff" * 60)
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files([uploads])
    api.check_access(str(crafted))  # an upload is still a file the app may read (a dataset)
    for call in (api.Chat, api.sampling_defaults, api.gguf_support, lambda s: api.evaluate([s], data="x.jsonl")):
        with pytest.raises(api.UserError, match=OUTSIDE):
            call(str(crafted))
    with pytest.raises(api.UserError, match=OUTSIDE):
        api.start_export(str(crafted), "gguf-f16", runs.parent / "exports" / "x")
    with pytest.raises(api.UserError, match=OUTSIDE):
        api.Chat(str(crafted.parent))


def test_a_shared_app_evaluates_on_no_held_out_rows_outside(runs, identity_file, monkeypatch):
    """A run trained before the app was shared may name a dataset outside the workspace; evaluating it on its
    held-out rows showed those rows (prompts and reference answers) to any logged-in user."""
    from engine.api import access

    outside = runs.parent.parent / f"{runs.parent.name}-private.jsonl"  # beside the workspace (tmp_path)
    shutil.copy(identity_file, outside)
    folder = runs / "20250101-000000-before-sharing"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    spec = api.JobSpec(model="Qwen/Qwen3-0.6B", data=str(outside), eval_fraction=0.5)
    (folder / "job.yaml").write_text(spec.to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="done", message="x", step=2, total_steps=2)))
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    with pytest.raises(api.UserError, match=OUTSIDE):
        api.evaluate([folder.name])


def test_a_shared_app_trains_no_model_folder_linking_out(runs, tiny_llama, identity_file, monkeypatch):
    """A model folder in data/ (handed over, unpacked with its links) whose tokenizer and config link to files
    outside the workspace: Start trained it, reading them, and the Data tab rendered with them; only a chat source
    was checked for links."""
    from engine.api import access

    data = runs.parent / "data"
    model = data / "my-model"
    shutil.copytree(tiny_llama, model)
    for name in ("tokenizer.json", "config.json"):
        (model / name).unlink()
        (model / name).symlink_to(tiny_llama / name)
    shutil.copy(identity_file, data / "d.jsonl")
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    spec = api.JobSpec(model=str(model), data=str(data / "d.jsonl"), max_steps=1, device="cpu")
    with pytest.raises(api.UserError, match="in 'my-model' is a link to a file outside the workspace"):
        api.start(spec)
    with pytest.raises(api.ModelError, match="in 'my-model' is a link to a file outside the workspace"):
        api.inspect_data(str(data / "d.jsonl"), model=str(model))
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_copied_jobs_relative_paths_are_checked_as_its_processes_read_them(runs, monkeypatch):
    """Runs and exports work in the project folder and read a job.yaml's relative paths from there, while a shared app
    checked them from its own working folder (its workspace, with --workspace): a run folder handed over naming its
    data `README.md` was resumed on the project's README, and one naming its base model by a path of the project
    folder was exported with it."""
    from engine.api import access
    from ui import train_tab

    monkeypatch.chdir(runs.parent)  # the app's working folder is its workspace, not the project folder
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    folder = runs / "20250101-000000-handed-over"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    (folder / "job.yaml").write_text(api.JobSpec(model="Qwen/Qwen3-0.6B", data="README.md").to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=1, total_steps=2)))
    _, status, _ = train_tab.resume(folder.name)
    assert "Not resumed" in status and OUTSIDE in status, status
    assert not (folder / "log.txt").exists()
    (folder / "job.yaml").write_text(api.JobSpec(model="tests", data="x.jsonl").to_yaml())
    with pytest.raises(api.UserError, match=OUTSIDE):
        api.start_export(str(folder), "lora", runs.parent / "exports" / "x")
    assert not (runs.parent / "exports").exists()


def test_gradio_run_history_lends_no_hub_token_and_keeps_no_inputs(shared):
    """Gradio's run history, on by default, answered without a login and called the hub with the machine's token for
    a request that looked local (from 127.0.0.1 to 127.0.0.1, as every one a reverse proxy on this machine forwards):
    the owner's buckets listed, any of them read (a 502 here, the hub being offline in tests). It also keeps every
    call's inputs, the Export tab's token among them. The app turns it off: its routes are gone."""
    url = shared["client"].src.rstrip("/") + "/gradio_api/run-history"
    assert httpx.get(f"{url}/buckets").status_code == 404
    assert httpx.get(f"{url}/records", params=dict(bucket="owner/private")).status_code == 404
    assert httpx.post(f"{url}/connect", json=dict(bucket_id="owner/new")).status_code == 404


def test_a_shared_app_loads_no_adapter_linked_from_outside(runs, tmp_path, monkeypatch):
    """A run folder handed over whose adapter/ (or tokenizer/) is a link to a folder outside the workspace: Chat,
    Evaluate and Export loaded it (any model or file of this machine, exported for download), as the base model
    outside is not."""
    from engine.api import access

    outside = tmp_path.parent / f"{tmp_path.name}-private-adapter"  # beside the workspace (tmp_path)
    outside.mkdir()
    (outside / "adapter_model.safetensors").write_bytes(b"")
    folder = runs / "20250101-000000-linked"
    folder.mkdir(parents=True)
    (folder / "adapter").symlink_to(outside)
    (folder / "job.yaml").write_text(api.JobSpec(model="Qwen/Qwen3-0.6B", data="x.jsonl").to_yaml())
    (folder / "status.json").write_text(json.dumps(dict(state="done", message="x", step=2, total_steps=2)))
    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    for call in (api.Chat, api.gguf_support, lambda s: api.evaluate([s], data="x.jsonl")):
        with pytest.raises(api.UserError, match="outside the workspace"):
            call(str(folder))
    with pytest.raises(api.UserError, match="outside the workspace"):
        api.start_export(str(folder), "lora", runs.parent / "exports" / "x")
    assert not (runs.parent / "exports").exists()
