"""Edits to a run's job.yaml between a checkpoint and its resume: which ones the resume can honour.

A run's checkpoints hold weights of one shape (model, method, LoRA rank and targets) trained on one batch order
(data, its tokenization, batch layout, seed); a resume computes where it stands in the data from the step alone. So
the training process records the job its checkpoints are made with (trained_job.json, plain JSON), and a resume
compares job.yaml with it: settings outside HONOURED that changed are refused with one sentence, before a process
starts where api.resume can tell. A run whose checkpoints predate the record resumes as before, unchecked.

A local data file or dataset folder is compared by its sha256 (a folder's over its files, their names and sizes).
Hashing gigabytes takes seconds, and a resume checks twice (api.resume, then the training process), so the record
keeps the files' sizes and modification times beside the hash (`<key>_file`) and a check whose files still have them
takes the recorded hash without reading them, as git and make trust a file's stat. An edit that keeps both (the time
set back by hand to the nanosecond) goes unseen.

A hub dataset's rows change with its owner's commits: the record keeps the commit the run reads (`<key>_revision`),
and every process of the run reads that commit (`pinned`), a resume's too, whatever the hub's latest is then.
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import write_json
from engine.data.reading import folder_files, hub_revision, is_hub_dataset

# Settings a resume takes as job.yaml says now: the optimizer's settings and schedule (engine.training.steps
# load_checkpoint), the step count (refused below the checkpoint's there), saving, logging, validation's timing,
# speed switches, and the loss's and sampling's weights. Any other edit changes what the checkpoint holds or the
# data's order and position.
HONOURED = {
    "name",
    "notes",
    "learning_rate",
    "lr_schedule",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "lora_dropout",
    "max_steps",
    "epochs",
    "save_every",
    "save_every_minutes",
    "keep_checkpoints",
    "eval_steps",
    "gradient_checkpointing",
    "fast_path",
    "trust_remote_code",
    "embedding_learning_rate",
    "dpo_beta",
    "max_new_tokens",
    "temperature",
}


SPREAD = "grad_accum x gpus"
DATA = ("data", "eval_data")
# facts of the data; `<key>_revision` is also job.yaml's setting, a commit the record keeps as the one read
DERIVED = {f"{key}_{part}" for key in DATA for part in ("sha256", "file", "revision")}
REVISED = " (its revision on the hub)"
RACY_NS = 2 * 10**9  # FAT keeps modification times to 2 s; ext4 and NTFS much finer


def record_path(run_dir: Path) -> Path:
    return run_dir / "trained_job.json"


def job_record(spec, processes: int | None = None, saved: dict | None = None, resume: bool = False) -> dict:
    """The settings of `spec` a resume cannot honour a change of, with the content hash of local data (an edited
    file changes the rows behind each step) and a hub dataset's commit. `processes`: the ranks the run trains on
    (engine.training.launch plan_launch; None: `gpus`, at least one, as on the CPU). `saved`: the run's record so
    far, whose hash of a file or folder is taken again where its files' paths, sizes and modification times are
    those recorded with it; with `resume`, whose hub commit is the one read (`_hub_commit`)."""
    left_out = HONOURED | DERIVED | {"gpus", "grad_accum"}  # a hub commit asked in job.yaml: the one read, below
    settings = {k: v for k, v in dataclasses.asdict(spec).items() if k not in left_out}
    record = json.loads(json.dumps(settings))  # tuples as lists, as the file reads back
    # a step is batch_size x grad_accum x the GPU count examples: a checkpoint resumes on another count of GPUs with
    # grad_accum changed to keep that product (README, "Several GPUs")
    record[SPREAD] = spec.grad_accum * (processes or max(1, spec.gpus))
    for key in DATA:
        path = Path(getattr(spec, key)).expanduser() if getattr(spec, key) else None
        if path is None or not (path.is_file() or path.is_dir()):
            # a hub dataset's commit: the hub's rows of a name change with its new commits (None: none, a file this
            # process cannot find)
            if path is not None and (revision := _hub_commit(spec, key, saved if resume else None)) is not None:
                record[f"{key}_revision"] = revision
            continue
        seen = _stat(path)
        # a file modified within RACY_NS before its stat may be modified again within the filesystem's timestamp
        # resolution without its time moving (git's "racy clean"): its stat is not kept, so the next check hashes it
        settled = all(time.time_ns() - f["mtime_ns"] > RACY_NS for f in seen.get("files", [seen]))
        if saved and saved.get(f"{key}_file") == seen and saved.get(f"{key}_sha256"):
            record[f"{key}_sha256"] = saved[f"{key}_sha256"]
        else:
            record[f"{key}_sha256"] = _sha256(path, seen)
        if settled:
            record[f"{key}_file"] = seen
    return record


def _hub_commit(spec, key: str, saved: dict | None) -> str | None:
    """The commit of hub dataset `spec.<key>` the run reads: job.yaml's `<key>_revision`, else on a resume the one
    the run recorded (its checkpoints' rows), else the hub's latest. A resume whose recorded commit cannot be read
    now is refused: the latest in its place would put other rows behind each step."""
    source, asked = getattr(spec, key), getattr(spec, f"{key}_revision")
    same = saved and saved.get(key) == source and saved.get("data_config") == spec.data_config
    recorded = saved.get(f"{key}_revision") if same else None
    if not recorded or not is_hub_dataset(source):
        return hub_revision(source, spec.data_config, asked)
    if asked and asked != recorded:
        return asked  # another commit than the checkpoints': an edit, refused as one
    if hub_revision(source, spec.data_config, recorded) != recorded:
        raise UserError(
            f"This run's checkpoints were trained on commit {recorded[:12]} of the hub dataset '{source}', which "
            "cannot be read now (offline, and not in this machine's datasets cache, or gone from the hub): connect "
            "to the network to resume, or start a new run to train on the dataset as it is now. Its checkpoints are "
            "kept as they were."
        )
    return recorded


def pinned(spec, record: dict | None):
    """`spec` reading each hub dataset at the commit `record` (the run's trained_job.json) keeps for it, so every
    process of the run, and each of its resumes, reads the same rows."""
    pins = {}
    for key in DATA:
        if getattr(spec, f"{key}_revision"):
            continue  # job.yaml's own commit: a resume checked it is the recorded one
        if record and record.get(key) == getattr(spec, key) and record.get(f"{key}_revision"):
            pins[f"{key}_revision"] = record[f"{key}_revision"]
    return spec.replace(**pins) if pins else spec


def _stat(path: Path) -> dict:
    """What tells a file's content has not changed since it was hashed: where it is, its size and modification
    time (taken before the hash is, so a write during the hashing changes the time the next check sees); for a
    folder, each of its data files' (reading.folder_files) path within it, size and time."""
    if path.is_dir():
        files = []
        for file in folder_files(path):
            st = file.stat()
            files.append({"name": file.relative_to(path).as_posix(), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return {"path": str(path.resolve()), "files": files}
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256(path: Path, seen: dict) -> str:
    """A file's sha256; a folder's over each of its files (`seen`'s) name, size and bytes, so a file renamed, added or
    removed changes it too."""
    digest = hashlib.sha256()
    for part in seen.get("files", [None]):
        file = path / part["name"] if part is not None else path
        if part is not None:
            digest.update(f"{part['name']}\0{part['size']}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def read_record(run_dir: Path) -> dict | None:
    """The run's record of its job (trained_job.json); None where it has none (or an unreadable one)."""
    try:
        return json.loads(record_path(run_dir).read_text())
    except (OSError, ValueError):
        return None


def changed_settings(run_dir: Path, spec, processes: int | None = None, now: dict | None = None) -> list[str]:
    """The settings of job.yaml (`spec`) that differ from those the run's checkpoints were made with; none where the
    run has no checkpoint or no record of its job (checkpoints from before the record). `now`: job_record(spec,
    processes), where the caller has it."""
    saved = read_record(run_dir)
    if saved is None or not any((run_dir / "checkpoints").glob("step-*")):
        return []
    now = now or job_record(spec, processes, saved, resume=True)
    changed = []
    # a setting one side lacks is new in a later version of the app, or gone from it: no edit of the user's
    for key in sorted(set(saved) & set(now) - DERIVED):
        if saved[key] == now[key]:
            continue
        digest = f"{key}_sha256"
        if key in DATA and saved.get(digest) and saved.get(digest) == now.get(digest):
            continue  # the same file, moved or renamed
        changed.append(key)
    for key in DATA:
        # a file this process cannot find (a relative path from another folder), or a hub dataset it cannot reach, is
        # not said to have changed: the training process compares it again as it reads it
        for fact, told in (("sha256", " (its content)"), ("revision", REVISED)):
            was, now_is = saved.get(f"{key}_{fact}"), now.get(f"{key}_{fact}")
            if saved.get(key) == now.get(key) and was and now_is and was != now_is:
                changed.append(key + told)
    return changed


def check_unchanged(run_dir: Path, spec, processes: int | None = None, now: dict | None = None) -> None:
    """Refuse to resume `run_dir` with job.yaml (`spec`) edited in a setting its checkpoints cannot go on with."""
    changed = changed_settings(run_dir, spec, processes, now)
    if changed:
        raise UserError(
            f"job.yaml was edited since this run's checkpoints were made ({', '.join(changed)}), which a resume cannot "
            "honour; put those settings back to resume it, or start a new run with them"
            + ("; to resume on another number of GPUs, keep grad_accum x gpus as it was" if SPREAD in changed else "")
            + ". Its checkpoints are kept as they were."
        )


def check_and_record(run_dir: Path, spec, resume: bool, processes: int | None = None) -> dict:
    """In the training process, before anything loads: refuse a resume's edits (`check_unchanged`), then record the
    job the checkpoints from now on are made with (made once: the data file's hash is the costly part). Returns the
    record, whose hub commits the run reads (`pinned`)."""
    now = job_record(spec, processes, read_record(run_dir), resume)
    if resume:
        check_unchanged(run_dir, spec, processes, now)
    write_json(record_path(run_dir), now)
    return now
