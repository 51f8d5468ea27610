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
from engine.spec.jobspec import JobSpec
from engine.training.dispatch import train
from engine.training.edits import changed_settings, check_and_record, job_record, record_path

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


def hub_rows(answer: str, n: int) -> list[dict]:
    return [{"instruction": f"Question {i}?", "output": answer} for i in range(n)]


def two_commits(cache: Path, tmp_path: Path) -> tuple[str, str]:
    """Hub dataset someone/identity cached at two commits: the first one (3 rows), then a later one (5 rows), which
    datasets reads offline (the latest cached copy)."""
    first, later = "a" * 40, "b" * 40
    cache_hub_copy(cache, "someone/identity", first, hub_rows("Tuney.", 3), tmp_path)
    cache_hub_copy(cache, "someone/identity", later, hub_rows("Other.", 5), tmp_path)
    os.utime(cache / "someone___identity" / "default" / "0.0.0" / first, ns=(0, 0))
    return first, later


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import datasets

    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    assert datasets.config.HF_HUB_OFFLINE  # nothing is downloaded: conftest's HF_HUB_OFFLINE
    return cache


def test_a_resume_reads_the_hub_commit_its_run_started_on(tiny_llama, tmp_path, hub_cache):
    """A hub dataset was compared by its commit, and a resume after its owner pushed new commits was refused (before
    that, it trained on the new rows at the old rows' positions). The run records the commit it reads and a resume
    reads that one again (offline, as here, from the cached copy of that commit), whatever the latest is now."""
    from engine.data.reading import read_rows

    first, _ = two_commits(hub_cache, tmp_path)
    os.utime(hub_cache / "someone___identity" / "default" / "0.0.0" / first)  # the first is the latest, for now
    spec = tiny_spec(tiny_llama, "someone/identity", max_steps=4, save_every=2, keep_checkpoints=5)
    run_dir = tmp_path / "run"
    lines = []
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, lines.append)
    assert json.loads(record_path(run_dir).read_text())["data_revision"] == first
    assert any(line.startswith("data: identity is alpaca, 3 rows") for line in lines)
    shutil.rmtree(run_dir / "adapter")
    shutil.rmtree(run_dir / "checkpoints" / "step-000004")

    os.utime(hub_cache / "someone___identity" / "default" / "0.0.0" / first, ns=(0, 0))  # a later commit is
    assert len(read_rows("someone/identity")) == 5  # what a new run reads
    assert changed_settings(run_dir, spec) == []
    lines = []
    train(spec, run_dir, RunLog(run_dir), True, lambda: False, lines.append)
    assert "resume: from step-000002" in lines
    assert any(line.startswith("data: identity is alpaca, 3 rows") for line in lines)
    assert json.loads(record_path(run_dir).read_text())["data_revision"] == first
    assert read_rows("someone/identity", revision=first) == hub_rows("Tuney.", 3)


def test_a_resume_whose_hub_commit_cannot_be_read_is_refused(tiny_llama, tmp_path, hub_cache):
    """Where the run's commit cannot be read (offline, and no longer in the cache), the resume is refused with a
    sentence saying what to do, and nothing of the run changes; the latest cached copy is not read in its place."""
    from engine.data.reading import read_rows

    first, later = two_commits(hub_cache, tmp_path)
    spec = tiny_spec(tiny_llama, "someone/identity", max_steps=6)
    run_dir = run_with_checkpoint(tmp_path)
    record_path(run_dir).write_text(json.dumps(job_record(spec) | {"data_revision": first}))
    saved = record_path(run_dir).read_text()
    shutil.rmtree(hub_cache / "someone___identity" / "default" / "0.0.0" / first)
    refusal = r"commit aaaaaaaaaaaa of the hub dataset 'someone/identity', .* cannot be read .* start a new run"
    with pytest.raises(UserError, match=refusal):
        changed_settings(run_dir, spec)  # api.resume's check
    with pytest.raises(UserError, match=refusal):
        check_and_record(run_dir, spec, resume=True)
    assert record_path(run_dir).read_text() == saved
    with pytest.raises(UserError, match=r"commit aaaaaaaaaaaa of .*someone/identity.* cannot be read"):
        read_rows("someone/identity", revision=first)
    assert job_record(spec)["data_revision"] == later  # a new run reads the latest


def test_a_run_start_asks_the_hub_for_its_dataset_once(tiny_llama, tmp_path, hub_cache, monkeypatch):
    """The record's commit cost a resolution of the dataset on the hub (a request) beside the one reading it makes: the
    reading takes the recorded commit, whose resolution the record has made already."""
    import datasets

    two_commits(hub_cache, tmp_path)
    real, calls = datasets.load_dataset_builder, []
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda *a, **k: calls.append(a) or real(*a, **k))
    spec = tiny_spec(tiny_llama, "someone/identity", max_steps=1)
    run_dir = tmp_path / "run"
    lines = []
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, lines.append)
    assert any(line.startswith("data: identity is alpaca, 5 rows") for line in lines)
    assert calls == [("someone/identity", None)]


def test_a_data_revision_in_job_yaml_is_a_commit():
    with pytest.raises(UserError, match=r"'data_revision' is 'main'; give a commit .*40 hex digits"):
        JobSpec.from_yaml("model: m\ndata: someone/identity\ndata_revision: main\n")
    assert JobSpec.from_yaml(f"model: m\ndata: d\neval_data_revision: {'c' * 40}\n").eval_data_revision == "c" * 40


def dataset_folder(folder: Path, mtime_ns: int) -> Path:
    folder.mkdir()
    for name in ("part-1.jsonl", "part-2.jsonl"):
        (folder / name).write_text(json.dumps({"instruction": name, "output": "Tuney."}) + "\n")
        os.utime(folder / name, ns=(mtime_ns, mtime_ns))
    return folder


def test_an_edited_dataset_folder_is_refused_on_resume(tiny_llama, tmp_path):
    """A dataset folder (its files read as one dataset) was compared by its name alone: a resume after a file of it
    was edited, added or removed trained on other rows at each step. Its files are hashed as one data file is, and
    their sizes and modification times kept, so a resume of an untouched folder reads none of them."""
    old = time.time_ns() - MINUTE_NS
    folder = dataset_folder(tmp_path / "identity", old)
    big_file(folder / "part-3.jsonl", old)
    spec = tiny_spec(tiny_llama, folder, max_steps=6)
    run_dir = run_with_checkpoint(tmp_path)
    check_and_record(run_dir, spec, resume=False)
    before = bytes_read()
    assert changed_settings(run_dir, spec) == []
    check_and_record(run_dir, spec, resume=True)
    assert bytes_read() - before < SIZE // 16

    shutil.copytree(folder, tmp_path / "moved")  # the same files elsewhere: the same data
    assert changed_settings(run_dir, spec.replace(data=str(tmp_path / "moved"))) == []
    with open(folder / "part-1.jsonl", "a") as f:
        f.write(json.dumps({"instruction": "Who?", "output": "Other."}) + "\n")
    assert changed_settings(run_dir, spec) == ["data (its content)"]
    with pytest.raises(UserError, match=r"\(data \(its content\)\)"):
        check_and_record(run_dir, spec, resume=True)
    shutil.copy(tmp_path / "moved" / "part-1.jsonl", folder)  # put back
    assert changed_settings(run_dir, spec) == []
    (folder / "part-4.jsonl").write_text((folder / "part-1.jsonl").read_text())  # a file added
    assert changed_settings(run_dir, spec) == ["data (its content)"]
    (folder / "part-4.jsonl").unlink()
    (folder / "part-2.jsonl").rename(tmp_path / "part-2.jsonl")  # a file removed
    assert changed_settings(run_dir, spec) == ["data (its content)"]
    (tmp_path / "part-2.jsonl").rename(folder / "part-2.jsonl")
    (folder / ".notes.jsonl").write_text("not data\n")  # hidden files are no part of a dataset (datasets skips them)
    assert changed_settings(run_dir, spec) == []
