"""Resume after editing job.yaml: what the check costs (the data file's hash, taken again only where the file may have
changed) and that every way a run resumes makes it. test_runs.py holds the edits a resume takes and refuses."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import tiny_spec

from engine.core.errors import UserError
from engine.core.runlog import RunLog
from engine.training.dispatch import train
from engine.training.edits import changed_settings, check_and_record, record_path

SIZE = 64 << 20  # a data file whose hash reads 64 MiB (sparse: it takes no disk)
MINUTE_NS = 60 * 10**9


def bytes_read() -> int:
    """The bytes this process has read through read() and its kin (Linux's /proc/self/io `rchar`), page cache
    included: a file hashed again counts its whole size, whether or not it is on the disk."""
    io = Path("/proc/self/io")
    if not io.is_file():
        pytest.skip("needs Linux's /proc/self/io")
    return next(int(line.split()[1]) for line in io.read_text().splitlines() if line.startswith("rchar:"))


def big_file(path: Path, mtime_ns: int | None) -> Path:
    path.write_bytes(b'{"text": "a row"}\n')
    with open(path, "r+b") as f:
        f.truncate(SIZE)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def run_with_checkpoint(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-000002").mkdir(parents=True)
    return run_dir


def test_a_resume_takes_the_data_files_recorded_hash_while_its_size_and_time_are_unchanged(tiny_llama, tmp_path):
    """A resume hashed the whole data file in api.resume and again in the training process (seconds each for a file
    of gigabytes). The record keeps the file's size and modification time beside its hash: while they are unchanged
    neither check reads the file; an edit that changed its size is caught though its time was put back."""
    old = time.time_ns() - MINUTE_NS
    data = big_file(tmp_path / "data.jsonl", old)
    spec = tiny_spec(tiny_llama, data, max_steps=6)
    run_dir = run_with_checkpoint(tmp_path)
    before = bytes_read()
    check_and_record(run_dir, spec, resume=False)  # the run's start hashes it
    assert bytes_read() - before >= SIZE
    before = bytes_read()
    assert changed_settings(run_dir, spec) == []  # api.resume's check
    check_and_record(run_dir, spec, resume=True)  # the training process's
    assert bytes_read() - before < SIZE // 16

    with open(data, "ab") as f:  # a row added, the time set back to the recorded one
        f.write(b'{"text": "another row"}\n')
    os.utime(data, ns=(old, old))
    assert changed_settings(run_dir, spec) == ["data (its content)"]
    with pytest.raises(UserError, match=r"\(data \(its content\)\)"):
        check_and_record(run_dir, spec, resume=True)

    # an edit of the same size moves the time: hashed, and caught
    big_file(data, old)
    check_and_record(run_dir, spec, resume=False)
    with open(data, "r+b") as f:
        f.write(b'{"text": "A row"}\n')
    assert changed_settings(run_dir, spec) == ["data (its content)"]


def test_a_record_without_the_files_size_and_time_hashes_it(tiny_llama, tmp_path):
    """A record written before the size and time were kept, or of a file modified just before it was hashed (which
    may change again within the filesystem's timestamp resolution, its time unmoved): the check hashes the file."""
    data = big_file(tmp_path / "data.jsonl", time.time_ns() - MINUTE_NS)
    spec = tiny_spec(tiny_llama, data, max_steps=6)
    run_dir = run_with_checkpoint(tmp_path)
    check_and_record(run_dir, spec, resume=False)
    record = json.loads(record_path(run_dir).read_text())
    del record["data_file"]
    record_path(run_dir).write_text(json.dumps(record))
    before = bytes_read()
    assert changed_settings(run_dir, spec) == []
    assert bytes_read() - before >= SIZE

    fresh = big_file(tmp_path / "fresh.jsonl", None)  # written just now
    stamp = fresh.stat().st_mtime_ns
    check_and_record(run_dir, spec.replace(data=str(fresh)), resume=False)
    with open(fresh, "r+b") as f:  # changed again within the same tick of the clock: same size, same time
        f.write(b'{"text": "A row"}\n')
    os.utime(fresh, ns=(stamp, stamp))
    assert changed_settings(run_dir, spec.replace(data=str(fresh))) == ["data (its content)"]


def test_a_run_trained_through_dispatch_train_refuses_edits_on_resume(tiny_llama, identity_file, tmp_path):
    """engine.training.dispatch.train, the training process's entry, recorded no job and checked
    none: only engine.run's main did, so a run trained through it resumed with any edit, its data position computed
    from the step in the new batch layout. It records the job and refuses such edits; an honoured edit resumes."""
    spec = tiny_spec(tiny_llama, identity_file, max_steps=4, save_every=2, keep_checkpoints=5)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, lambda m: None)
    assert record_path(run_dir).is_file()
    shutil.rmtree(run_dir / "adapter")
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")
    with pytest.raises(UserError, match=r"edited .*\(batch_size\)"):
        train(spec.replace(batch_size=3), run_dir, RunLog(run_dir), True, lambda: False, lambda m: None)
    lines = []
    train(spec.replace(learning_rate=1e-3), run_dir, RunLog(run_dir), True, lambda: False, lines.append)
    assert "resume: from step-000002" in lines and (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def cache_hub_copy(cache: Path, repo: str, revision: str, rows: list[dict], tmp_path: Path) -> None:
    """Put a prepared copy of hub dataset `repo` at commit `revision` into the datasets cache `cache`, where a download
    would have: datasets' json builder writes it under <owner>___<name>/default/0.0.0/<revision> (a hub copy's folder
    has no data-files suffix on its configuration's name, which one made from local files has)."""
    from datasets.packaged_modules.json.json import Json

    rows_file = tmp_path / f"{revision}.jsonl"
    rows_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    owner, name = repo.split("/")
    Json(
        cache_dir=str(cache), dataset_name=name, repo_id=repo, hash=revision, data_files=str(rows_file)
    ).download_and_prepare()
    folder = cache / f"{owner}___{name}"
    for made in folder.glob("default-*/0.0.0/*"):
        (folder / "default" / "0.0.0").mkdir(parents=True, exist_ok=True)
        made.rename(folder / "default" / "0.0.0" / made.name)


def test_a_hub_dataset_with_new_commits_is_refused_on_resume(tiny_llama, tmp_path, monkeypatch):
    """A hub dataset was compared by its name alone: a resume after the dataset's owner pushed new commits trained on
    the new rows at the old rows' positions. The record keeps the commit the run read (offline, as here, the cached
    copy's), and a resume that would read another one is refused with a sentence."""
    import datasets

    from engine.data.reading import read_rows

    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    assert datasets.config.HF_HUB_OFFLINE  # nothing is downloaded: conftest's HF_HUB_OFFLINE
    first, later = "a" * 40, "b" * 40
    cache_hub_copy(cache, "someone/identity", first, [{"instruction": "Who are you?", "output": "Tuney."}], tmp_path)
    spec = tiny_spec(tiny_llama, "someone/identity", max_steps=6)
    run_dir = run_with_checkpoint(tmp_path)
    check_and_record(run_dir, spec, resume=False)
    assert json.loads(record_path(run_dir).read_text())["data_revision"] == first
    assert changed_settings(run_dir, spec) == []

    cache_hub_copy(cache, "someone/identity", later, [{"instruction": "Who are you?", "output": "Other."}], tmp_path)
    stale = cache / "someone___identity" / "default" / "0.0.0" / first
    os.utime(stale, ns=(0, 0))  # datasets reads the latest copy offline
    assert read_rows("someone/identity") == [{"instruction": "Who are you?", "output": "Other."}]  # what it would read
    assert changed_settings(run_dir, spec) == ["data (its revision on the hub)"]
    with pytest.raises(UserError, match=r"hub dataset 'someone/identity' has new commits .* start a new run"):
        check_and_record(run_dir, spec, resume=True)
    with pytest.raises(UserError, match=r"edited .*\(batch_size, data \(its revision on the hub\)\)"):
        check_and_record(run_dir, spec.replace(batch_size=3), resume=True)
