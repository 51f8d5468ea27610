"""What a finished export hands the user (issue 25, items 3, 10 and 13): the LoRA export checked by loading it with
PEFT, its model card filled from the run, the GGUF file named after the export folder, the checks as a sentence,
downloads (a folder zipped) with their sizes, a log without progress bars, and no <defunct> process left behind."""

import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from helpers import tiny_spec, wait_for


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama):
    """A finished 4-step LoRA run of the tiny Llama on the identity rows."""
    from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS

    from engine import api

    folder = tmp_path_factory.mktemp("trained")
    data = folder / "identity.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": q, "output": IDENTITY_ANSWER}) + "\n" for q in IDENTITY_QUESTIONS)
    )
    st = wait_for(api.start(tiny_spec(tiny_llama, data, max_steps=4, name="nova"), runs=folder / "runs"))
    assert st.state == "done", (st.run_dir / "log.txt").read_text()[-2000:]
    return st


def quiet(_msg):
    pass


def test_lora_export_is_checked_with_peft_and_has_a_model_card(trained, tmp_path):
    from engine import api
    from engine.export.report import summary

    res = api.export(str(trained.run_dir), "lora", tmp_path / "nova-lora", log=quiet)
    assert res.checks["lora_weights_loaded"] == "28 of 28", res.checks  # 2 decoder layers x 7 linear layers x (A, B)
    assert res.checks["max_logit_diff_vs_run"] == 0 and res.checks["adapter_effect"] > 0, res.checks
    assert summary("lora", res.checks).startswith("PEFT loads it onto the base model (28 of 28 LoRA weights)")

    card = (res.path / "README.md").read_text()
    assert "More Information Needed" not in card
    last = trained.metrics[-1]
    assert "| Base model | `tiny-llama` (a local folder) |" in card
    assert "| Data | `identity.jsonl` |" in card and "| Steps | 4 of 4 |" in card
    assert f"| Final training loss | {last['loss']:.4f} |" in card
    assert "| Adapter | LoRA, rank 4, alpha 4, on down_proj, gate_proj" in card
    assert str(trained.run_dir.parent) not in card  # no local path of the user's machine


def test_lora_export_of_a_checkpoint_has_the_runs_tokenizer_and_the_checkpoints_steps(trained, tmp_path):
    """A cancelled run exports its last checkpoint: the export used to lack the tokenizer and the chat template the
    run trained with, and its card gave the steps and loss of the latest step logged, not of the checkpoint."""
    import shutil

    from engine import api

    run = tmp_path / trained.run_dir.name
    shutil.copytree(trained.run_dir, run)
    shutil.rmtree(run / "adapter")  # as a run cancelled after step 2 and its checkpoint, then trained on to step 4
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(trained.run_dir / "checkpoints" / "step-000004", run / "checkpoints" / "step-000002")
    res = api.export(str(run), "lora", tmp_path / "nova-lora", log=quiet)
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(res.files), res.files
    assert (res.path / "chat_template.jinja").read_text() == (run / "tokenizer" / "chat_template.jinja").read_text()
    card = (res.path / "README.md").read_text()
    assert "| Steps | 2 of 4 |" in card and f"| Final training loss | {trained.metrics[1]['loss']:.4f} |" in card

    # the best weights by validation loss (best/step-N, as engine.training.validation keeps them) are described too
    shutil.copytree(run / "checkpoints" / "step-000002", run / "best" / "step-000003")
    res = api.export(str(run / "best" / "step-000003"), "lora", tmp_path / "nova-best", log=quiet)
    card = (res.path / "README.md").read_text()
    assert f"# {run.name}" in card and "| Data | `identity.jsonl` |" in card and "| Steps | 3 of 4 |" in card


def test_gguf_is_named_after_the_export_folder_and_its_checks_read_as_a_sentence(trained, tmp_path):
    from engine import api
    from engine.export.report import summary

    res = api.export(str(trained.run_dir), "gguf-f16", tmp_path / "nova-gguf", log=quiet)
    assert res.files == ["Modelfile", "nova-gguf-f16.gguf"]
    assert "FROM ./nova-gguf-f16.gguf" in (res.path / "Modelfile").read_text()
    text = summary("gguf-f16", res.checks)
    assert text.startswith("Matches the adapter model: max logit difference "), text
    assert "; llama.cpp matches the PyTorch model: tokenizer identical, greedy text identical (16 tokens)" in text
    assert "{" not in text and "_" not in text  # a sentence, not a dict of field names


def test_checks_of_a_gguf_too_large_for_the_greedy_check_read_as_a_sentence():
    """A model whose fp32 copy does not fit in RAM is compared with llama.cpp by its tokenizer only; its checks read
    "llama.cpp matches the PyTorch model's tokenizer identical (greedy text not compared ...)"."""
    from engine.export.report import summary

    checks = dict(tokenizer_match=True, tokens_compared=0, max_logit_diff_fp32=0.001, max_logit_diff_16bit=0.01)
    assert summary("gguf-q4_k_m", dict(checks, dtype="bfloat16", merge_check_layers="2 of 32")) == (
        "Matches the adapter model: max logit difference 0.001 in fp32, 0.01 once saved in bfloat16 (checked on its "
        "first 2 of 32 layers); llama.cpp tokenizes the chat prompt exactly as the PyTorch model does (its "
        "answers are not compared: the model is too large for the check's fp32 copy in RAM)."
    )


def test_export_job_offers_zipped_downloads_writes_no_progress_bars_and_is_reaped(trained, runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine import api

    job = api.start_export(str(trained.run_dir), "lora", runs.parent / "exports" / "nova")
    deadline = time.time() + 300
    while not (st := api.poll_export(job)).finished:
        assert time.time() < deadline, st.log
        time.sleep(0.2)
    assert st.state == "done", st.log
    (zipped,) = st.result["downloads"]
    assert zipped["name"] == "nova.zip" and zipped["bytes"] == Path(zipped["path"]).stat().st_size
    assert zipped["size"].endswith("KiB")
    assert st.result["summary"].startswith("PEFT loads it onto the base model")
    with zipfile.ZipFile(zipped["path"]) as z:
        assert sorted(z.namelist()) == sorted(f"nova/{f}" for f in st.result["files"])
        z.extractall(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(trained.model)
    PeftModel.from_pretrained(base, tmp_path / "nova")  # the unzipped folder is a working adapter

    log = (job.job_dir / "log.txt").read_text()
    assert "export: lora written to" in log
    assert "\r" not in log and "█" not in log and "it/s]" not in log, log

    # The job's process is gone: not left <defunct> until something happens to poll it.
    deadline = time.time() + 20
    while os.path.exists(f"/proc/{job.pid}") and time.time() < deadline:
        time.sleep(0.2)
    state = (
        Path(f"/proc/{job.pid}/stat").read_text().split(")")[-1].split()[0]
        if os.path.exists(f"/proc/{job.pid}")
        else None
    )
    assert state is None, f"the export process {job.pid} is still there, in state {state}"


def test_export_job_takes_a_run_path_relative_to_where_it_is_called(trained, monkeypatch, tmp_path):
    """The export job starts in the project folder: a relative run path used to name a folder there ("has no LoRA
    adapter to export")."""
    from engine import api

    monkeypatch.chdir(trained.run_dir.parent)
    job = api.start_export(trained.run_dir.name, "lora", tmp_path / "nova")
    deadline = time.time() + 300
    while not (st := api.poll_export(job)).finished:
        assert time.time() < deadline, st.log
        time.sleep(0.2)
    assert st.state == "done", st.log


def test_a_full_disk_after_the_export_is_complete_does_not_say_nothing_was_written(trained, monkeypatch, tmp_path):
    """The disk filling up while the download's zip is written (after the export was renamed into place) failed the
    job with 'export again. Nothing was written.': the export was there, complete, and exporting again to its folder
    is refused."""
    import errno
    import signal

    from engine import api
    from engine.export import job, report

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "_zip", full)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the job's SIGTERM handler, not pytest's process's
    job_dir, out = tmp_path / "job", tmp_path / "nova"
    job_dir.mkdir()
    (job_dir / "export.json").write_text(json.dumps(dict(source=str(trained.run_dir), format="lora", out=str(out))))
    assert job.main([str(job_dir)]) == 1
    st = json.loads((job_dir / "status.json").read_text())
    assert st["state"] == "failed" and (out / "adapter_model.safetensors").is_file()
    assert "Nothing was written" not in st["message"] and f"export itself is complete in {out};" in st["message"]

    # The Export tab headed it "Upload failed:", for an export that had no upload.
    from ui import export_tab

    (job_dir / "log.txt").write_text("")
    text = export_tab.view(api.ExportJob(job_dir.name, job_dir, 0, out))[0]
    assert text.startswith("**Exported; its download could not be prepared:** The export itself is complete"), text


def test_finished_training_process_is_reaped(tiny_llama, identity_file, runs):
    from engine import api

    handle = api.start(tiny_spec(tiny_llama, identity_file, max_steps=1))
    deadline = time.time() + 300
    while json.loads((handle.run_dir / "status.json").read_text())["state"] != "done":  # no poll(): it would reap
        assert time.time() < deadline
        time.sleep(0.2)
    deadline = time.time() + 30
    while os.path.exists(f"/proc/{handle.pid}") and time.time() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{handle.pid}"), f"the run's process {handle.pid} was left <defunct>"


def test_sizes_read_as_people_read_them():
    from engine.export.report import size_text

    assert [size_text(n) for n in (812, 4300, 5 * 2**20, 3 * 2**30 + 2**29)] == [
        "812 bytes",
        "4.2 KiB",
        "5.0 MiB",
        "3.5 GiB",
    ]


def test_gguf_files_offered_to_chat_are_finished_ones_only(runs):
    """The Chat and Eval tabs listed the .gguf files of an export still being built (its hidden .partial folder,
    with the 16-bit intermediate and the half-quantized file): picking one loaded a half-written file."""
    from engine import api
    from engine.core.files import new_folder

    exports = runs.parent / "exports"
    with new_folder(exports / "done") as tmp:
        (tmp / "done-q8_0.gguf").write_bytes(b"GGUF")
    with new_folder(exports / "building") as tmp:
        (tmp / ".bf16.gguf").write_bytes(b"GGUF")
        (tmp / "building-q4_k_m.gguf").write_bytes(b"GG")
        assert api.exported_gguf_files() == [exports / "done" / "done-q8_0.gguf"]


def test_modelfile_of_a_run_trained_with_a_system_prompt_gives_it(tiny_llama, identity_file, tmp_path):
    """A run trained with a system prompt (the Train tab's "System prompt": a system turn on every example) exported a
    Modelfile without it, so Ollama prompted the model without the system turn it always saw in training."""
    from engine import api

    system = 'You are Nova, a "helpful" assistant.'
    spec = tiny_spec(tiny_llama, identity_file, max_steps=2, name="sys", system_prompt=system)
    st = wait_for(api.start(spec, runs=tmp_path / "runs"))
    assert st.state == "done", (st.run_dir / "log.txt").read_text()[-2000:]
    res = api.export(str(st.run_dir), "gguf-f16", tmp_path / "nova", log=quiet)
    assert f'SYSTEM """{system}"""' in (res.path / "Modelfile").read_text().splitlines()


def test_a_run_still_training_exports_its_latest_checkpoint(tiny_llama, identity_file, runs, tmp_path):
    """An export of a run still training failed part way ("FileNotFoundError: ... checkpoints/step-000024/
    adapter_config.json"): the run deleted the checkpoint being exported once newer ones were saved
    (keep_checkpoints), which on a real model happens within a long GGUF export."""
    from engine import api

    spec = tiny_spec(tiny_llama, identity_file, max_steps=100_000, save_every=2, keep_checkpoints=1, name="going")
    handle = api.start(spec)
    wait_for(handle, until=lambda st: st.step >= 4)
    try:
        for fmt in ("lora", "merged16", "gguf-q8_0"):
            res = api.export(str(handle.run_dir), fmt, tmp_path / fmt, log=quiet)
            assert res.path.is_dir() and not list(tmp_path.glob(".*")), fmt
        card = (tmp_path / "lora" / "README.md").read_text()
        assert "# " + handle.run_dir.name in card and "| Steps | " in card  # the run's model card, as before
        assert api.poll(handle).state == "running"
    finally:
        api.cancel(handle.run_dir)


def test_a_second_export_to_a_folder_being_exported_is_refused(trained, runs):
    """Export pressed twice with one name started two jobs doing the same work side by side (two merges of the model
    in RAM at once); whichever finished second failed with "already exists", which the tab showed when it was the
    job it followed."""
    from engine import api

    out = runs.parent / "exports" / "twice"
    job = api.start_export(str(trained.run_dir), "gguf-q8_0", out)
    with pytest.raises(api.UserError, match="is being exported already"):
        api.start_export(str(trained.run_dir), "gguf-q8_0", out)
    deadline = time.time() + 300
    while not (st := api.poll_export(job)).finished:
        assert time.time() < deadline, st.log
        time.sleep(0.2)
    assert st.state == "done", st.log
    assert len(list((runs.parent / "exports" / ".jobs").iterdir())) == 1


def test_cancelling_an_export_leaves_another_exports_folder_alone(trained, runs):
    """An export killed by Cancel (it did not stop within wait_s) had its half-built folder removed by the pattern
    .<name>.*.partial, which also matches the one another export named <name>.v2 is building at the same time."""
    from engine import api
    from engine.core.files import new_folder

    exports = runs.parent / "exports"
    with new_folder(exports / "nova.v2") as other:
        job = api.start_export(str(trained.run_dir), "gguf-q8_0", exports / "nova")
        st = api.cancel_export(job, wait_s=0)
        assert st.state == "cancelled" and other.is_dir()
        (other / "done").write_text("x")
    assert (exports / "nova.v2" / "done").is_file()


def test_a_lora_export_of_a_mistyped_run_says_it_does_not_exist(tmp_path):
    """`python -m engine export nvoa --format lora` said "'nvoa' has no LoRA adapter to export (a full fine-tune
    exports as merged16)", of a run or folder that does not exist; the other formats said so."""
    from engine import api

    for fmt in ("lora", "merged16"):
        with pytest.raises(api.UserError, match="Model folder 'nvoa' does not exist"):
            api.export("nvoa", fmt, tmp_path / "out", log=quiet)


def test_a_cancel_just_after_the_export_is_in_place_does_not_say_nothing_was_written(trained, monkeypatch, tmp_path):
    """Cancel (SIGTERM) arriving after the finished export was renamed into place but before the job recorded it said
    "Export cancelled; nothing was written.", beside a complete export whose name a new export is then refused."""
    import signal

    from engine.export import job, merge

    real = merge.export

    def export_then_cancelled(*a, **k):
        real(*a, **k)
        raise job.Cancelled()

    monkeypatch.setattr(merge, "export", export_then_cancelled)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the job's SIGTERM handler, not pytest's process's
    job_dir, out = tmp_path / "job", tmp_path / "nova"
    job_dir.mkdir()
    (job_dir / "export.json").write_text(json.dumps(dict(source=str(trained.run_dir), format="lora", out=str(out))))
    assert job.main([str(job_dir)]) == 0
    st = json.loads((job_dir / "status.json").read_text())
    assert (out / "adapter_model.safetensors").is_file()
    assert st["state"] == "cancelled" and st["message"] == f"Cancelled; the export itself is complete in {out}."


def test_an_export_killed_by_the_system_says_the_likely_cause(trained, runs):
    """An export the system killed (SIGKILL: the kernel's out-of-memory killer, merging a model too large for the
    RAM) said only "The export process stopped unexpectedly; see its log."; it now says what most often causes it
    and what to do, as a killed training run does."""
    import signal

    from engine import api

    job = api.start_export(str(trained.run_dir), "gguf-q8_0", runs.parent / "exports" / "killed")
    os.kill(job.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while not (st := api.poll_export(job)).finished:
        assert time.time() < deadline
        time.sleep(0.1)
    assert st.state == "failed" and "most often by the system when RAM runs out" in st.message, st.message


def test_a_checkpoint_exported_under_a_file_is_a_sentence(trained, tmp_path):
    """A checkpoint's export (held in a hidden folder beside the export for its time) into a folder under a file."""
    from engine import api

    (tmp_path / "file").write_text("x")
    ckpt = sorted((trained.run_dir / "checkpoints").glob("step-*"))[-1]
    with pytest.raises(api.UserError, match="is a file, not a folder; pick another folder"):
        api.export(str(ckpt), "lora", tmp_path / "file" / "nova", log=quiet)


def test_a_large_folder_export_is_offered_file_by_file_without_a_zip_copy(tmp_path, monkeypatch):
    """Every folder export was zipped for download into the export job's folder and the zip kept: a merged 8B model
    took 16 GB twice. A folder over ZIP_LIMIT is offered file by file, and nothing is copied."""
    from engine.export import report

    export, dest = tmp_path / "nova-merged", tmp_path / "job"
    export.mkdir()
    dest.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"\0" * 5000)
    said = []
    small = report.downloads(export, "merged16", dest, said.append)
    assert [d["name"] for d in small] == ["nova-merged.zip"]
    (dest / "nova-merged.zip").unlink()
    monkeypatch.setattr(report, "ZIP_LIMIT", 4096)
    large = report.downloads(export, "merged16", dest, said.append)
    assert [d["name"] for d in large] == ["config.json", "model.safetensors"] and list(dest.iterdir()) == []
    assert said[-1] == "export: 4.9 KiB, over 4.0 KiB: offering its files one by one, not a zip copy"


def test_an_export_whose_process_id_now_names_another_program_reads_as_stopped(trained, runs):
    """After a restart (process ids start over) an export's status.json still said "running" with the pid of its
    dead process; when another program had that pid by then, the export read as running for good: its Cancel stayed,
    and a new export to its folder name was refused as "being exported already". As runs do, an export whose pid
    names a process that is not its job (its command line names no job folder) reads as stopped."""
    import subprocess

    from engine import api

    exports = runs.parent / "exports"
    job_dir = exports / ".jobs" / "20260101-000000-nova"
    job_dir.mkdir(parents=True)
    out = (exports / "nova").resolve()
    spec = dict(source=str(trained.run_dir), format="lora", out=str(out), push_to_hub="", private=False)
    (job_dir / "export.json").write_text(json.dumps(spec))
    (job_dir / "log.txt").write_text("")
    other = subprocess.Popen(["sleep", "60"])  # not an export: its command line names no job folder
    try:
        (job_dir / "status.json").write_text(json.dumps(dict(state="running", message="exporting", pid=other.pid)))
        st = api.poll_export(api.ExportJob(job_dir.name, job_dir, other.pid, out))
        assert st.state == "failed" and "stopped unexpectedly" in st.message, st.message
        job = api.start_export(str(trained.run_dir), "lora", out)  # not refused as being exported already
        deadline = time.time() + 300
        while not (st := api.poll_export(job)).finished:
            assert time.time() < deadline, st.log
            time.sleep(0.2)
        assert st.state == "done", st.log
        assert other.poll() is None  # the other program was left alone
    finally:
        other.kill()
        other.wait()


# The export job started with llama.cpp's log lines sent to a callback that presses Cancel (SIGTERM to the job) at the
# first one, as a user's Cancel lands while llama.cpp quantizes or loads the GGUF to check it.
CANCEL_WHILE_LLAMA_CPP_WORKS = """
import ctypes, os, signal, sys

import llama_cpp

from engine.export import job

pressed = []


@llama_cpp.llama_log_callback
def cancel_pressed(level, text, user_data):
    if not pressed:
        pressed.append(text)
        os.kill(os.getpid(), signal.SIGTERM)


llama_cpp.llama_log_set(cancel_pressed, ctypes.c_void_p(0))
code = job.main(sys.argv[1:])
assert pressed, "llama.cpp logged nothing"
sys.exit(code)
"""


def test_a_cancel_while_llama_cpp_works_cancels_the_export(trained, tmp_path):
    """Cancel pressed while llama.cpp quantized the GGUF (or loaded it for the checks) was lost: the job raised its
    Cancelled from the SIGTERM handler wherever the main thread was, here in llama-cpp-python's log callback, where
    ctypes prints the exception and goes on. The export then finished and the Export tab said "Exported" (the browser
    test that cancels a followed export timed out under load, waiting for "Export cancelled")."""
    import subprocess
    import sys

    from engine.api.processes import ROOT

    job_dir, out = tmp_path / "job", tmp_path / "nova"
    job_dir.mkdir()
    spec = dict(source=str(trained.run_dir), format="gguf-q4_k_m", out=str(out))
    (job_dir / "export.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-c", CANCEL_WHILE_LLAMA_CPP_WORKS, str(job_dir)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    st = json.loads((job_dir / "status.json").read_text())
    assert st["state"] == "cancelled", (st, done.stdout[-3000:] + done.stderr[-3000:])
    assert st["message"] == "Export cancelled; nothing was written."
    assert not out.exists() and not list(tmp_path.glob(".nova*"))
