"""A full disk, a torn metrics line, a damaged run folder and half-built folders of killed processes lose nothing and
break nothing. The disks are real: small tmpfs mounts (root only, as in CI), filled at the moment that matters."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import log_of, resume_after_cut, tiny_spec, wait_for

from engine import api
from engine.core.files import append_jsonl, read_jsonl
from engine.core.runlog import RunLog, read_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, inodes=None) -> a fresh tmpfs of that size (and inode count) under tmp_path, unmounted after."""
    mounted = []

    def mount(size: str, inodes: int | None = None) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to its last byte with one file; returns it (unlink it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (2**20, 2**12, 1):
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError as e:
                assert e.errno == 28  # ENOSPC
    finally:
        os.close(fd)
    return filler


def killed_builder(dest: Path, kill: bool = True):
    """A process that starts building `dest` with engine.core.files.new_folder; killed with SIGKILL mid-build when
    `kill` (as the OOM killer or a power cut would), it leaves its .partial folder. Returns (process, that folder)."""
    code = (
        "import time\nfrom engine.core.files import new_folder\n"
        f"with new_folder({str(dest)!r}) as t:\n    (t / 'half').write_bytes(b'x')\n    print(t, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    partial = Path(proc.stdout.readline().strip())
    assert partial.is_dir() and partial.name.endswith(".partial")
    if kill:
        proc.kill()
        proc.wait()
    return proc, partial


def test_training_that_fills_the_disk_says_so_keeps_its_checkpoint_and_resumes(
    small_disk, tiny_llama, identity_file, monkeypatch
):
    disk = small_disk("32m")
    monkeypatch.setenv("TUNESMITH_RUNS", str(disk / "runs"))
    handle = api.start(tiny_spec(tiny_llama, identity_file))
    wait_for(handle, until=lambda st: st.step >= 3)  # step-000002 is complete
    filler = fill(disk)
    st = wait_for(handle)
    assert st.state == "failed", log_of(st)
    kept = sorted(p.name for p in (st.run_dir / "checkpoints").iterdir())
    assert kept and all(k.startswith("step-") for k in kept)  # nothing half-written
    assert st.message.startswith("The disk is full: ") and f"({kept[-1]}) is kept" in st.message, st.message
    assert "Free some space" in st.message
    lines = (st.run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") and json.loads(line) for line in lines)  # no torn line

    filler.unlink()
    _, stale = killed_builder(st.run_dir / "checkpoints" / "step-000039")
    again = wait_for(api.resume(handle.run_id))
    assert again.state == "done", log_of(again)
    assert [m["step"] for m in again.metrics] == list(range(1, 41))
    assert not stale.exists()  # the killed builder's folder went at the resume's start
    assert [r.state for r in api.list_runs()] == ["done"]


def test_status_is_written_on_a_disk_too_full_for_its_temporary_copy(small_disk):
    disk = small_disk("1m")
    log = RunLog(disk)
    log.set(state="running", message="training", step=3)
    fill(disk)
    with pytest.raises(OSError):
        (disk / "probe").write_text("x")
    (disk / "probe").unlink()
    log.set(state="failed", message="The disk is full: " + "a long sentence " * 20)
    st = json.loads((disk / "status.json").read_text())
    assert st["state"] == "failed" and st["message"].startswith("The disk is full: ")
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "status.json"]  # no temporary file left


def test_a_run_that_died_silently_on_a_full_disk_is_failed_with_the_likely_cause(small_disk, monkeypatch):
    disk = small_disk("1m")
    monkeypatch.setenv("TUNESMITH_RUNS", str(disk / "runs"))
    folder = disk / "runs" / "20250101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text("model: m\ndata: d.jsonl\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / "status.json").write_text(json.dumps(dict(state="running", message="training", pid=gone.pid, step=5)))
    fill(disk)
    st = api.poll(folder.name)
    assert st.state == "failed" and "The disk may be full" in st.message and "exit code" not in st.message


def test_a_line_that_does_not_fit_is_cut_back_off(small_disk):
    disk = small_disk("1m")
    path = disk / "metrics.jsonl"
    record = dict(step=1, loss=1.0, note="x" * 200)
    while not path.exists() or path.stat().st_size < 3900:
        append_jsonl(path, record)
    fill(disk)
    before = path.read_bytes()
    with pytest.raises(OSError) as err:
        for _ in range(40):  # the next line that needs a new page of the tmpfs fails
            append_jsonl(path, record)
            before = path.read_bytes()
    assert err.value.errno == 28
    assert path.read_bytes() == before  # whole lines only
    assert len(read_jsonl(path)) == before.count(b"\n")


def test_a_torn_last_line_is_skipped_and_resume_continues_after_it(tiny_llama, identity_file, tmp_path):
    from engine.training.dispatch import train

    spec = tiny_spec(tiny_llama, identity_file, max_steps=4, save_every=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text(spec.to_yaml())
    train(spec, run, RunLog(run), False, lambda: False, print)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:2]) + lines[2][:25])  # died mid-line after step 2's checkpoint
    assert [m["step"] for m in read_metrics(run)] == [1, 2]
    for name in ("adapter", "checkpoints/step-000004"):
        shutil.rmtree(run / name)
    train(spec, run, RunLog(run), True, lambda: False, print)
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4]
    text = metrics.read_text()
    assert lines[2][:25] + "\n" in text  # the torn piece stays a line of its own, skipped by readers


def test_one_damaged_run_folder_breaks_neither_the_history_nor_the_app(runs, identity_file):
    from ui import chat_tab, train_tab

    def run_folder(name: str, status: str) -> Path:
        folder = runs / name
        folder.mkdir(parents=True)
        (folder / "job.yaml").write_text(f"model: m\ndata: {identity_file}\n")
        (folder / "status.json").write_text(status)
        return folder

    run_folder("20250101-000001-good", json.dumps(dict(state="done", message="Training finished.", step=2)))
    run_folder("20250101-000002-list-status", "[1, 2]")
    run_folder("20250101-000003-binary-metrics", json.dumps(dict(state="failed", message="x")))
    (runs / "20250101-000003-binary-metrics" / "metrics.jsonl").write_bytes(b'\xff\xfe{"step": 1\n[]\n"x"\n')
    bad_yaml = run_folder("20250101-000004-bad-yaml", json.dumps(dict(state="failed", message="x")))
    (bad_yaml / "job.yaml").write_bytes(b"\xff\xfe\x00 not utf-8")
    states = {r.run_id: r.state for r in api.list_runs()}
    assert states == {
        "20250101-000004-bad-yaml": "damaged",
        "20250101-000003-binary-metrics": "failed",
        "20250101-000002-list-status": "damaged",
        "20250101-000001-good": "done",
    }
    damaged = api.poll("20250101-000002-list-status")
    assert damaged.message.startswith("This run folder is damaged (") and damaged.finished
    assert [row[:2] for row in train_tab.history()][-1] == ["20250101-000001-good", "done"]
    assert chat_tab.run_choices() == ["20250101-000001-good"]
    assert "Pick a model" in train_tab.start(*[None] * 42)[1]  # a damaged run does not count as one training
    _, message, _ = train_tab.resume("20250101-000002-list-status")
    assert "cannot be resumed" in message
    api.delete_run("20250101-000002-list-status")
    assert not (runs / "20250101-000002-list-status").exists()


def test_half_built_folders_of_dead_processes_go_at_the_next_start(runs, tiny_llama, tmp_path):
    exports = runs.parent / "exports"
    run = runs / "20250101-000000-t"
    (run / "checkpoints").mkdir(parents=True)
    (run / "job.yaml").write_text("model: m\ndata: d.jsonl\n")
    dead = [
        killed_builder(run / "checkpoints" / "step-000004")[1],
        killed_builder(run / "adapter")[1],
        killed_builder(exports / "merged")[1],
    ]
    live_proc, live = killed_builder(exports / "gguf", kill=False)
    old_style, recent_old_style = exports / ".q8.ab12cd_3.partial", exports / ".f16.zz9yx8wv.partial"
    for folder in (old_style, recent_old_style):  # an older version's names carry no owner: only the age tells
        folder.mkdir()
    os.utime(old_style, (0, time.time() - 2 * 24 * 3600))
    dead.append(old_style)
    try:
        assert sorted(api.tidy_workspace()) == sorted(dead)  # what the app does at start
        assert live.is_dir() and not any(p.exists() for p in dead)
        _, dead_export = killed_builder(exports / "lora")
        api.export(str(tiny_llama), "merged16", exports / "tiny-merged", log=lambda m: None)
        assert not dead_export.exists() and live.is_dir()  # an export's start cleans its folder too
    finally:
        live_proc.kill()
        live_proc.wait()
    assert api.tidy_workspace() == [live] and recent_old_style.is_dir()


def test_the_start_removes_nothing_through_a_run_folders_link(runs, tmp_path):
    """A run folder handed over (unpacked with its links) whose checkpoints/ links to a folder elsewhere: the app's
    start removed the old half-built-looking folders there, outside the workspace."""
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"  # beside the workspace (tmp_path)
    old_style = elsewhere / ".q8.ab12cd_3.partial"
    old_style.mkdir(parents=True)
    os.utime(old_style, (0, time.time() - 2 * 24 * 3600))
    run = runs / "20250101-000000-linked"
    run.mkdir(parents=True)
    (run / "job.yaml").write_text("model: m\ndata: d.jsonl\n")
    (run / "checkpoints").symlink_to(elsewhere)
    assert api.tidy_workspace() == [] and old_style.is_dir()


def test_an_export_that_runs_out_of_space_says_so_and_leaves_nothing(small_disk, tiny_llama):
    disk = small_disk("64m", inodes=5)  # room for the bytes, not for every file: it fills up part way
    out = disk / "merged"
    with pytest.raises(api.UserError) as err:
        api.export(str(tiny_llama), "merged16", out, log=lambda m: None)
    assert str(err.value).startswith("The disk is full: writing the merged16 export failed")
    assert f"nothing was written to '{out}'" in str(err.value)
    assert os.listdir(disk) == []


def test_a_resume_removes_a_best_weights_folder_left_half_built(tiny_llama, identity_file, runs):
    """The best weights by validation loss (best/step-NNNNNN: the whole model for full fine-tuning) are built under a
    temporary name like a checkpoint; one left by a killed process stayed on the disk for good."""
    st = wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_steps=4, eval_fraction=0.5, eval_steps=2)))
    assert st.state == "done", log_of(st)
    assert list((st.run_dir / "best").glob("step-*"))
    _, stale = killed_builder(st.run_dir / "best" / "step-000003")
    again = resume_after_cut(st, 2, 4)
    assert again.state == "done", log_of(again)
    assert not stale.exists()


def test_a_run_killed_after_publishing_its_adapter_resumes_to_done(tiny_llama, identity_file, runs):
    """A process killed between renaming its final adapter/ into place and writing "done" reads as failed; its resume
    has nothing left to train and ends done with that adapter as it was (it failed: "'adapter' already exists"). The
    tokenizer files, hard-linked into adapter/, are not written again in place."""
    st = wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_steps=3)))
    assert st.state == "done", log_of(st)
    final = {f.name: f.read_bytes() for f in (st.run_dir / "adapter").iterdir()}
    inodes = {f.name: f.stat().st_ino for f in (st.run_dir / "adapter").iterdir()}
    (st.run_dir / "status.json").write_text(json.dumps(dict(state="failed", message="x", step=3, total_steps=3)))
    again = wait_for(api.resume(st.run_dir))
    assert again.state == "done", log_of(again)
    assert {f.name: f.read_bytes() for f in (st.run_dir / "adapter").iterdir()} == final
    assert {f.name: f.stat().st_ino for f in (st.run_dir / "adapter").iterdir()} == inodes


def test_a_folder_is_on_the_disk_before_its_name_says_it_is_complete(tmp_path, monkeypatch):
    """A checkpoint, a final adapter or an export is published by renaming its finished temporary folder. Its files
    were written through the page cache (safetensors and save_pretrained do not fsync), so after a power cut the
    published name could hold empty or missing files, and a resume would load that checkpoint as the latest. Every
    file and folder in it must be on the disk before the rename, and the rename itself after it."""
    from engine.core.files import new_folder

    synced, renames = [], []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(src, dst):
        renames.append((str(dst), set(synced)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    dest = tmp_path / "checkpoints" / "step-000004"
    with new_folder(dest) as tmp:
        (tmp / "nested").mkdir()
        with open(tmp / "adapter_model.safetensors", "wb") as f:  # as safetensors writes: no fsync of its own
            f.write(b"\1" * 4096)
        (tmp / "nested" / "config.json").write_text("{}")
        written = [str(tmp / "adapter_model.safetensors"), str(tmp / "nested" / "config.json")]
        folders = [str(tmp), str(tmp / "nested")]
    ((renamed, before),) = renames
    assert renamed == str(dest)
    assert set(written + folders) <= before, sorted(before)
    assert synced[-1] == str(dest.parent)  # the new name itself, after the rename


def test_a_gguf_export_that_runs_out_of_space_at_any_step_says_so_and_leaves_nothing(small_disk, tiny_llama):
    """Filling up at each step in turn (merge, conversion, quantization, Modelfile). When llama.cpp's quantizer found
    no room for its file it said 'llama.cpp could not quantize the model ...; try gguf-f16 or gguf-q8_0' (a full disk
    was told only by its free bytes, and a disk out of inodes has bytes left)."""
    for inodes in range(3, 16):
        disk = small_disk("64m", inodes=inodes)
        try:
            api.export(str(tiny_llama), "gguf-q4_k_m", disk / "out", log=lambda m: None)
        except api.UserError as err:
            assert str(err).startswith("The disk is full: writing the gguf-q4_k_m export failed"), (inodes, err)
            assert os.listdir(disk) == [], inodes
        else:
            assert os.listdir(disk) == ["out"] and inodes > 10  # room for every file at last
            return
    raise AssertionError("the export never fitted")


def test_a_damaged_latest_checkpoint_is_named_with_what_to_do(tiny_llama, identity_file, tmp_path):
    """A checkpoint whose files did not all reach the disk (a power cut under an older version, a disk error) fails
    every resume: "Training stopped with an error (SafetensorError: Error while deserializing header: header too
    small)", with nothing saying which folder is bad or what to do. It is named, and deleting it resumes from the
    one before it."""
    from engine.core.errors import UserError
    from engine.training.dispatch import train

    spec = tiny_spec(tiny_llama, identity_file, max_steps=4, save_every=2, keep_checkpoints=5)
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text(spec.to_yaml())
    train(spec, run, RunLog(run), False, lambda: False, print)
    shutil.rmtree(run / "adapter")
    damaged = run / "checkpoints" / "step-000004"
    for name in ("adapter_model.safetensors", "optimizer.json"):
        (damaged / name).write_bytes(b"")
        with pytest.raises(UserError) as err:
            train(spec, run, RunLog(run), True, lambda: False, print)
        assert "step-000004 cannot be read" in str(err.value) and "delete that folder" in str(err.value), err.value
    shutil.rmtree(damaged)
    lines = []
    train(spec, run, RunLog(run), True, lambda: False, lines.append)
    assert "resume: from step-000002" in lines and (run / "adapter" / "adapter_model.safetensors").is_file()
