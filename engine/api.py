"""The one surface the UI and the CLI call. Plain values in and out; heavy libraries load only when needed.

Training:  start(spec) -> RunHandle; poll(handle) -> RunStatus; cancel(handle); resume(run); list_runs().
Data:      inspect_data(path); identity_dataset(...); save_jsonl(rows, path).
Chat:      Chat(source).reply(messages) / .stream(messages, stats=ReplyStats()) / .compare(messages);
           sampling_defaults(source).
Export:    export(source, fmt, out) -> ExportResult; start_export(source, fmt, out, push_to_hub, token) -> ExportJob.
Models:    start_download(model) / poll_download(model) -> DownloadStatus.
Machine:   doctor(); catalog().
"""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.hardware import vram_budget_gib
from engine.infer import ReplyStats
from engine.jobspec import JobSpec, read_job
from engine.runlog import TERMINAL, read_metrics

__all__ = [
    "JobSpec",
    "UserError",
    "RunHandle",
    "RunStatus",
    "start",
    "resume",
    "poll",
    "cancel",
    "list_runs",
    "runs_dir",
    "workspace",
    "safe_name",
    "inspect_data",
    "check_data",
    "identity_dataset",
    "save_jsonl",
    "Chat",
    "ReplyStats",
    "sampling_defaults",
    "start_download",
    "poll_download",
    "DownloadStatus",
    "export",
    "EXPORT_FORMATS",
    "doctor",
    "catalog",
    "find_run",
    "estimate",
    "model_arch",
    "vram_budget_gib",
    "delete_run",
    "run_log",
    "gpu_stats",
    "gguf_support",
    "exported_gguf_files",
    "restrict_files",
    "check_access",
    "tidy_workspace",
    "start_export",
    "poll_export",
    "cancel_export",
    "ExportJob",
    "ExportStatus",
]

ROOT = Path(__file__).resolve().parent.parent
_allowed_roots: list[Path] | None = None  # set by restrict_files(): the folders a shared app may read
_children: dict[int, subprocess.Popen] = {}  # runs this process started, so their exit is reaped
LOW_DISK_BYTES = 64 * 2**20  # below this, a run that died without a word is said to have probably filled the disk
_downloads: dict = {}  # hub id -> engine.hub.Download started by this process (one per model, shared by sessions)


def runs_dir() -> Path:
    """Where run folders live: $TUNESMITH_RUNS, or ./runs."""
    return Path(os.environ.get("TUNESMITH_RUNS", "runs")).resolve()


def workspace() -> Path:
    """The folder the app reads and writes: runs/, data/ and exports/ (the parent of runs_dir())."""
    return runs_dir().parent


def safe_name(name: str, what: str = "name") -> str:
    """A file or folder name typed by a user: no path separators, no '..', not empty."""
    name = name.strip()
    if not name or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        raise UserError(
            f"The {what} '{name}' is not allowed: use letters, digits, '-', '_' and '.', with no path "
            "separators and not starting with a dot."
        )
    return name


@dataclass(frozen=True)
class RunHandle:
    run_id: str
    run_dir: Path
    pid: int


@dataclass
class RunStatus:
    run_id: str
    run_dir: Path
    state: str  # starting, loading, running, done, failed, cancelled
    message: str
    step: int
    total_steps: int
    name: str = ""
    model: str = ""
    metrics: list[dict] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """No process works on it: done, failed, cancelled, or damaged (its files cannot be read)."""
        return self.state in TERMINAL or self.state == "damaged"

    @property
    def loss(self) -> float | None:
        return self.metrics[-1]["loss"] if self.metrics else None

    @property
    def eta_s(self) -> float | None:
        return self.metrics[-1]["eta_s"] if self.metrics else None


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:40]
    return slug or "run"


def start(spec: JobSpec, runs: Path | None = None, *, allow_code: bool = False) -> RunHandle:
    """Check the model and the dataset's first rows, write the spec to a new run folder and start
    `python -m engine.run` on it in the background.

    A job whose rewards include a `python` one (a module:function path) runs that code in the training process, so
    it is refused unless `allow_code` is True: the CLI and Python callers may pass it, the app never does.
    """
    _check_job(spec, allow_code)
    from engine.preflight import check_job

    check_job(spec)  # a bad model folder or bad first rows: one sentence now, no run folder
    runs = Path(runs) if runs else runs_dir()
    runs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        run_id = f"{stamp}-{_slug(spec.name)}" + (f"-{n}" if n else "")
        try:
            (runs / run_id).mkdir()
            break
        except FileExistsError:
            continue
    run_dir = runs / run_id
    from engine.files import write_text

    write_text(run_dir / "job.yaml", spec.to_yaml())
    return _launch(run_dir, resume=False)


def _check_job(spec: JobSpec, allow_code: bool) -> None:
    """Refuse a job the caller may not run: a model or dataset outside a shared app's workspace, or a `python`
    reward (a module:function path, which runs that code in the training process) unless `allow_code`."""
    from engine.rewards import runs_code

    check_access(spec.model)
    check_access(spec.data)
    if runs_code(spec.rewards) and not allow_code:
        raise UserError(
            "This job has a 'python' reward, which runs your own code: that is accepted only from the command line "
            "or the Python API (engine.api.start(spec, allow_code=True)), never from the app."
        )


def resume(run: "str | Path | RunHandle", *, allow_code: bool = False) -> RunHandle:
    """Continue a cancelled or failed run from its latest checkpoint, in the same folder.

    Its job.yaml is checked as start() checks a new job: the folder may have been copied from elsewhere, so a
    `python` reward needs `allow_code` (the command line passes it, the app never does)."""
    status = poll(run)
    if status.state == "damaged":
        raise UserError(f"Run {status.run_id} cannot be resumed: {status.message}")
    if not status.finished:
        raise UserError(f"Run {status.run_id} is still {status.state}; cancel it before resuming.")
    if status.state == "done":
        raise UserError(f"Run {status.run_id} already finished; start a new run to train further.")
    _check_job(JobSpec.from_yaml((status.run_dir / "job.yaml").read_text()), allow_code)
    return _launch(status.run_dir, resume=True)


def _spawn(module: str, args: list[str], folder: Path, secrets: dict | None = None) -> int:
    """Start `python -m module args` in the background with its output appended to folder/log.txt, and mark the
    folder's status.json "starting" with its pid. `secrets` go to the child's environment only, never to a file."""
    env = dict(
        os.environ,
        **(secrets or {}),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
    )
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    from engine.files import write_json

    write_json(
        folder / "status.json",
        dict(state="starting", message="starting", step=0, total_steps=0, pid=proc.pid, updated=time.time()),
    )
    return proc.pid


def _launch(run_dir: Path, resume: bool) -> RunHandle:
    pid = _spawn("engine.run", [str(run_dir / "job.yaml")] + (["--resume"] if resume else []), run_dir)
    return RunHandle(run_dir.name, run_dir, pid)


def find_run(run: "str | Path | RunHandle") -> Path:
    """A run folder from a handle, a path, or a run id under runs_dir(). A shared app (restrict_files) takes run
    ids only: the name of a folder directly under runs_dir(), not a link."""
    if isinstance(run, RunHandle):
        return run.run_dir
    if _allowed_roots is not None:
        return _shared_run(str(run))
    path = Path(run)
    if (path / "job.yaml").is_file():
        return path
    if (runs_dir() / str(run) / "job.yaml").is_file():
        return runs_dir() / str(run)
    raise UserError(f"No run '{run}': give a run folder (with job.yaml) or a run id from the run list.")


def _shared_run(run_id: str) -> Path:
    """The folder of `run_id` under runs_dir(), refusing anything that could name a folder elsewhere."""
    runs = runs_dir()
    folder = runs / run_id
    plain = run_id not in ("", ".", "..") and "/" not in run_id and "\\" not in run_id and "\0" not in run_id
    if not (plain and folder.is_dir() and not folder.is_symlink() and (folder / "job.yaml").is_file()):
        raise UserError(
            f"'{run_id[:80]}' is not a run of this app; pick one from the run history (a run id is the name of a "
            "folder in runs/)."
        )
    return folder


def _alive(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def poll(run: "str | Path | RunHandle") -> RunStatus:
    """The run's state, progress and metrics. A process that died without saying so is reported failed; a folder
    whose files cannot be read is reported "damaged" rather than raising."""
    return _poll_dir(find_run(run))


def _poll_dir(run_dir: Path) -> RunStatus:
    try:
        return _read_status(run_dir)
    except Exception as e:  # one bad folder must not break the run history or the app's start
        why = str(e)[:200] if isinstance(e, UserError) else f"{type(e).__name__}: {str(e)[:120]}"
        message = f"This run folder is damaged ({why}); delete it, or fix its files by hand."
        return RunStatus(run_dir.name, run_dir, "damaged", message, 0, 0, "?", "?", [])


def _read_status(run_dir: Path) -> RunStatus:
    import json

    try:
        st = json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        st = dict(state="failed", message="This run has no status; it never started.", step=0, total_steps=0)
    if st["state"] not in TERMINAL and st.get("pid") and not _alive(st["pid"]):
        code = _children[st["pid"]].returncode if st["pid"] in _children else None
        st["state"] = "failed"
        st["message"] = (
            "The training process stopped unexpectedly"
            + (f" (exit code {code})" if code is not None else "")
            + f"; see log.txt.{_low_disk_note(run_dir)} Resume continues from the last checkpoint."
        )
    spec = read_job(run_dir / "job.yaml")  # unreadable or invalid: the folder is damaged (_poll_dir)
    return RunStatus(
        run_dir.name,
        run_dir,
        st["state"],
        st.get("message", ""),
        st.get("step", 0),
        st.get("total_steps", 0),
        spec.name,
        spec.model,
        read_metrics(run_dir),
    )


def _low_disk_note(folder: Path) -> str:
    """A sentence when the disk holding `folder` is nearly full: the likely reason a process died without a word
    (with a full disk it could not even write its status)."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free >= LOW_DISK_BYTES:
        return ""
    return f" The disk may be full (only {free / 2**20:.0f} MiB free there): free some space first."


def _stop(folder: Path, wait_s: float) -> bool:
    """SIGTERM the process of a run or export folder, SIGKILL it after `wait_s`. True when it left no final state
    (killed, or stopped before it could install its handler), so the caller records the cancellation itself."""
    import json

    pid = json.loads((folder / "status.json").read_text()).get("pid")
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + wait_s
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
    return json.loads((folder / "status.json").read_text())["state"] not in TERMINAL


def _mark_cancelled(folder: Path, message: str, **fields) -> None:
    from engine.files import write_json

    write_json(folder / "status.json", dict(state="cancelled", message=message, updated=time.time(), **fields))


def cancel(run: "str | Path | RunHandle", wait_s: float = 60.0) -> RunStatus:
    """Ask the run to stop (it checkpoints first); after `wait_s` without stopping, it is killed."""
    status = poll(run)
    if not status.finished and _stop(status.run_dir, wait_s):
        _mark_cancelled(
            status.run_dir,
            "Cancelled before it could save a checkpoint; resume continues from the last checkpoint, if any.",
            step=status.step,
            total_steps=status.total_steps,
        )
    return _poll_dir(status.run_dir)


def list_runs(runs: Path | None = None) -> list[RunStatus]:
    """Every run folder, newest first."""
    runs = Path(runs) if runs else runs_dir()
    if not runs.is_dir():
        return []
    folders = [d for d in sorted(runs.iterdir(), reverse=True) if not (_allowed_roots and d.is_symlink())]
    return [_poll_dir(d) for d in folders if (d / "job.yaml").is_file()]


def inspect_data(
    path: str,
    fmt: str = "auto",
    model: str | None = None,
    column_map: dict | None = None,
    max_seq_length: int = 1024,
    template: str = "auto",
    config: str = "",
    split: str = "train",
) -> dict:
    """Format, row count, columns and a rendered sample; with `model`, rendered by its chat template (or `template`)
    with the trained tokens marked, a token-length histogram and the rows `max_seq_length` would truncate."""
    from engine import data

    check_access(path)
    check_access(model or "")
    tokenizer = None
    if model:
        from engine.loading import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(model))
    return data.inspect(path, fmt, tokenizer, column_map, max_seq_length, config, split, template)


def check_data(
    path: str,
    objective: str,
    column_map: dict | None = None,
    config: str = "",
    split: str = "train",
    rewards: tuple = (),
) -> str:
    """The dataset's format when it suits `objective` (sft, pretrain, dpo, orpo, grpo), from its first rows; else a
    UserError saying what the objective needs, or which column a reward reads that the dataset lacks."""
    from engine.objectives import check_data as _check_data
    from engine.rewards import needed_columns

    check_access(path)
    return _check_data(path, objective, column_map, config, split, needed_columns(rewards))


def identity_dataset(name: str, maker: str, description: str = "", languages=("en",)) -> list[dict]:
    from engine.identity import identity_rows

    return identity_rows(name, maker, description, languages)


def save_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Save rows as JSONL at a new path (never overwriting)."""
    import json

    from engine.files import write_text

    path = Path(path)
    if path.exists():
        raise UserError(f"'{path}' already exists; choose another file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def Chat(source: str, device: str = "auto"):
    """A loaded chat model: a run (its adapter over its base model), a merged model folder, a hub id, or a .gguf
    file (through llama.cpp, with the chat template embedded in the file)."""
    _check_source(str(source))
    if str(source).lower().endswith(".gguf"):
        from engine.gguf_chat import GGUFChat

        return GGUFChat(source, device)
    from engine.infer import ChatModel

    return ChatModel(source, device)


def sampling_defaults(source: str) -> dict:
    """The sampling settings to start a chat with (temperature, top_p, top_k, min_p, repetition_penalty): the model's
    generation_config.json where it sets them, else its family's (Qwen3, Llama 3, Gemma, ...). Reads only local files:
    a run, a model folder, a .gguf file, or a hub id (from the cache, or by its catalog family)."""
    _check_source(str(source))
    if str(source).lower().endswith(".gguf"):
        from engine.gguf_chat import file_sampling

        return file_sampling(source)
    from engine.infer import source_sampling

    families = {i: m["family"] for m in catalog() for i in (m["id"], m.get("id_4bit")) if i}
    return source_sampling(str(source), families)


@dataclass
class DownloadStatus:
    model: str
    state: str  # downloading, done, failed
    message: str
    done_bytes: int
    total_bytes: int | None  # None while (or when) the hub's file list is unknown
    folder: Path | None = None

    @property
    def finished(self) -> bool:
        return self.state != "downloading"


def start_download(model: str) -> DownloadStatus:
    """Fetch a hub model into the local cache on a background thread (as training and chat would); a local folder
    needs nothing. Poll it with poll_download(model); a second call while it runs joins the same download."""
    from engine.loading import HUB_ID

    model = model.strip()
    check_access(model)
    path = Path(os.path.expanduser(model))
    if path.is_dir() or not HUB_ID.match(model):
        from engine.loading import resolve_model

        folder = resolve_model(model)  # a folder is checked, a bad name raises its sentence
        return DownloadStatus(model, "done", f"'{model}' is a local folder; nothing to download.", 0, 0, folder)
    if model not in _downloads or _downloads[model].state == "failed":
        from engine.hub import Download

        _downloads[model] = Download(model)
    return poll_download(model)


def poll_download(model: str) -> DownloadStatus:
    """The progress of start_download(model): bytes in its cache folder so far, of the total the hub lists."""
    if model not in _downloads:
        raise UserError(f"No download of '{model}' was started.")
    d = _downloads[model]
    done, total = d.progress()
    return DownloadStatus(model, d.state, d.message, done, total, d.folder)


EXPORT_FORMATS = ("lora", "merged16", "gguf-f16", "gguf-bf16", "gguf-q8_0", "gguf-q4_k_m", "gguf-q5_k_m", "gguf-q6_k")


def export(source: str, fmt: str, out: str | Path, log=print):
    """Export a run (or a model) as `fmt` into the new folder `out`, verified before it is called done (in this
    process; the app uses start_export)."""
    from engine.export import export as _export

    return _export(source, fmt, Path(out), log)


@dataclass(frozen=True)
class ExportJob:
    job_id: str
    job_dir: Path
    pid: int
    out: Path


@dataclass
class ExportStatus:
    job_id: str
    state: str  # starting, running, done, failed, cancelled
    message: str
    log: str  # the end of the job's log
    result: dict | None  # path, format, files, seconds, checks once done

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


def start_export(
    source: str, fmt: str, out: str | Path, push_to_hub: str = "", token: str = "", private: bool = False
) -> ExportJob:
    """Export in the background (python -m engine.export_job): cancellable, with a log, never leaving a folder that
    looks finished. The job's own folder is exports/.jobs/<id>/.

    With `push_to_hub` ("user/name") the finished export is then uploaded there (created `private` if new), with
    `token` or else HF_TOKEN; the token reaches the job through its environment only, never a file or the log.
    """
    _check_source(str(source))
    out = Path(out)
    check_access(str(out.resolve()))
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"Unknown export format '{fmt}'; use one of: {', '.join(EXPORT_FORMATS)}.")
    if out.exists():
        raise UserError(f"'{out}' already exists; choose another folder name (nothing is ever overwritten).")
    if push_to_hub:
        from engine.hub import check_target

        token = check_target(push_to_hub, token)
    jobs = workspace() / "exports" / ".jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job_dir = jobs / f"{time.strftime('%Y%m%d-%H%M%S')}-{_slug(out.name)}"
    while True:
        try:
            job_dir.mkdir()
            break
        except FileExistsError:
            job_dir = job_dir.with_name(job_dir.name + "-1")
    from engine.files import write_json

    spec = dict(source=str(source), format=fmt, out=str(out.resolve()), push_to_hub=push_to_hub, private=private)
    write_json(job_dir / "export.json", spec)
    pid = _spawn("engine.export_job", [str(job_dir)], job_dir, dict(HF_TOKEN=token) if push_to_hub else None)
    return ExportJob(job_dir.name, job_dir, pid, out.resolve())


def poll_export(job: ExportJob) -> ExportStatus:
    import json

    st = json.loads((job.job_dir / "status.json").read_text())
    if st["state"] not in TERMINAL and not _alive(st["pid"]):
        st.update(state="failed", message="The export process stopped unexpectedly; see its log.")
    result_file = job.job_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    log = "\n".join((job.job_dir / "log.txt").read_text(errors="replace").splitlines()[-40:])
    return ExportStatus(job.job_id, st["state"], st.get("message", ""), log, result)


def cancel_export(job: ExportJob, wait_s: float = 30.0) -> ExportStatus:
    """Stop an export; whatever it had written under a temporary name is removed."""
    import shutil

    if not poll_export(job).finished and _stop(job.job_dir, wait_s):
        for partial in job.out.parent.glob(f".{job.out.name}.*.partial"):  # left only when it had to be killed
            shutil.rmtree(partial, ignore_errors=True)
        _mark_cancelled(job.job_dir, "Export cancelled; nothing was written.")
    return poll_export(job)


def doctor() -> dict:
    from engine.hardware import doctor as _doctor

    return _doctor()


def catalog() -> list[dict]:
    """The curated model list (presets/models.yaml)."""
    import yaml

    return yaml.safe_load((ROOT / "presets" / "models.yaml").read_text())["models"]


def model_arch(model: str):
    """Architecture numbers of a model, from its config.json: in a local folder, else in the local hub cache, else
    (for a catalog model) the catalog's numbers, else downloaded from the hub (the config alone)."""
    import json

    from engine.estimate import Arch

    check_access(model)
    path = Path(os.path.expanduser(model))
    if (path / "config.json").is_file():
        return Arch.from_config(json.loads((path / "config.json").read_text()))
    from engine.loading import HUB_ID

    listed = next((m for m in catalog() if model in (m["id"], m.get("id_4bit"), m["name"])), None)
    hub_id = HUB_ID.match(model) and not model.startswith((".", "/", "~"))
    cached = _cached_config(model) if hub_id else None
    if cached is not None:
        return Arch.from_config(json.loads(cached.read_text()))
    if listed is not None:
        return Arch(*listed["arch"])
    if not hub_id:
        raise UserError(f"Model folder '{model}' does not exist; give an existing folder or a hub id.")
    from huggingface_hub import hf_hub_download

    try:
        cfg = hf_hub_download(model, "config.json")
    except Exception as e:  # offline, missing, gated: the same advice
        raise UserError(
            f"Could not read the config of '{model}' from the hub ({type(e).__name__}), and it is not in the local "
            "cache; check the name and the connection, or give a local folder."
        ) from None
    return Arch.from_config(json.loads(Path(cfg).read_text()))


def _cached_config(model: str) -> Path | None:
    """config.json of hub id `model` in the local hub cache (HF_HUB_CACHE), with no network: the main revision's, else
    the newest snapshot's."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    found = try_to_load_from_cache(model, "config.json", cache_dir=cache)
    if isinstance(found, str):
        return Path(found)
    snapshots = Path(cache) / f"models--{model.replace('/', '--')}" / "snapshots"
    configs = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    return configs[-1] if configs else None


def estimate(
    model: str,
    method: str = "qlora",
    seq: int | None = None,
    batch: int | None = None,
    rank: int = 16,
    vram_gib: float | None = None,
    ram_gib: float | None = None,
) -> dict:
    """Whether training `model` fits this machine (or a card of `vram_gib` and `ram_gib` free host RAM): the plan a
    run of these settings would make (engine.memory.plan_for, the run's own computation), its peak VRAM and host RAM,
    and the preset for those settings. Settings left as None come from the preset of the GPU's tier.

    `fits` is True exactly when that plan exists within the VRAM budget and the free RAM. `peak_parts_gib` splits
    the peak VRAM figure; `min_vram_gib` (when the budget is too small) is the smallest budget a plan exists for."""
    from engine import memory, presets
    from engine.offload import host_ram_gib

    if method not in ("qlora", "lora", "full"):
        raise UserError(f"Unknown method '{method}'; use qlora, lora or full.")
    arch = model_arch(model)
    budget = vram_gib if vram_gib is not None else memory.run_budget_gib()
    ram = ram_gib if ram_gib is not None else host_ram_gib()
    tier = presets.tier_for(budget) if budget else None
    tier_preset = presets.preset_for(tier, arch.params, method) if tier else None
    base = tier_preset if isinstance(tier_preset, presets.Preset) else None
    seq = seq or (base.max_seq_length if base else 1024)
    batch = batch or (base.batch_size if base else 1)
    # one micro-batch per step, as a preset for a run that needs its gradients released sets (engine.grad_release)
    spec = JobSpec(model=model, data="-", method=method, max_seq_length=seq, batch_size=batch, lora_r=rank,
                   lora_alpha=base.lora_alpha if base else rank)  # fmt: skip
    v = memory.verdict(arch, spec, budget, ram, "bf16" if vram_gib is not None else memory.run_dtype())
    out = dict(
        model=model,
        method=method,
        params_b=round(arch.params / 1e9, 2),
        seq=seq,
        batch=batch,
        rank=rank,
        vram_budget_gib=round(budget, 2) if budget else None,
        free_ram_gib=round(ram, 1),
        tier_gb=tier,
        fits=v.fits,
        peak_vram_gib=v.peak_vram_gib,
        peak_ram_gib=v.peak_ram_gib,
        peak_parts_gib=v.parts_gib,
        plan=v.plan.as_dict() if v.plan else None,
    )
    if not v.fits:
        out["reason"] = v.reason
    if v.min_budget_gib is not None:
        out["min_vram_gib"] = v.min_budget_gib
    if not budget:
        out["preset"] = None
    elif v.fits:
        out["preset"] = dataclasses.asdict(presets.from_plan(v.plan, base, spec))
    else:
        out["preset"] = dict(fits=False, reason=v.reason)
    return out


def delete_run(run: "str | Path | RunHandle") -> None:
    """Delete a finished run's folder (a running one must be cancelled first)."""
    import shutil

    status = poll(run)
    if not status.finished:
        raise UserError(f"Run {status.run_id} is still {status.state}; cancel it before deleting it.")
    shutil.rmtree(status.run_dir)


def run_log(run: "str | Path | RunHandle", lines: int = 200) -> str:
    """The last `lines` lines of a run's log.txt."""
    path = find_run(run) / "log.txt"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def gpu_stats() -> dict | None:
    """Live GPU memory and utilisation through NVML (nvidia-ml-py), or None without an NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return dict(used_gb=round(mem.used / 1e9, 2), total_gb=round(mem.total / 1e9, 2), util_pct=util.gpu)
    except Exception:  # no driver, no GPU, or NVML missing: the view simply shows no GPU line
        return None


def gguf_support(source: str) -> tuple[bool, str]:
    """(can this run or model be exported to GGUF, the reason when not), for the Export tab's format choice."""
    from engine import gguf
    from engine.infer import locate
    from engine.loading import resolve_model

    _check_source(source)
    base, _, tok_dir = locate(source)
    return gguf.supported(resolve_model(base), tok_dir)


def exported_gguf_files() -> list[Path]:
    """GGUF files under the workspace's exports/ folder, newest first."""
    folder = workspace() / "exports"
    files = folder.glob("*/*.gguf") if folder.is_dir() else []
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def restrict_files(roots: list) -> None:
    """From now on, refuse local paths outside `roots` (the app calls this when it is reachable from elsewhere)."""
    global _allowed_roots
    _allowed_roots = [Path(r).resolve() for r in roots]


def _check_source(source: str) -> None:
    """check_access for a chat or export source and, in a shared app, for the base model that a run's job.yaml or an
    adapter's config names (a folder handed over could name any path there)."""
    check_access(source)
    if _allowed_roots is None or source.lower().endswith(".gguf"):
        return
    from engine.infer import locate

    check_access(locate(source)[0])


def tidy_workspace() -> list[Path]:
    """Remove the half-built folders (`.partial`) that dead processes left in the workspace's runs, checkpoints and
    exports (the app calls this at start); folders a live run or export is building are kept."""
    from engine.disk import remove_stale_partials

    runs = runs_dir()
    folders = [runs, workspace() / "exports", workspace() / "data"]
    if runs.is_dir():
        for run in runs.iterdir():
            if run.is_dir() and not run.is_symlink():
                folders += [run, run / "checkpoints"]
    return remove_stale_partials(*folders, legacy=True)


def check_access(value: str) -> None:
    """Raise a UserError for a local path outside the allowed folders; hub ids and unrestricted apps pass."""
    if _allowed_roots is None or not value:
        return
    path = Path(os.path.expanduser(value))
    if not path.exists() and not value.startswith((".", "/", "~")):
        return  # a hub id, not a local path
    real = path.resolve()
    if not any(real == root or root in real.parents for root in _allowed_roots):
        raise UserError(
            f"This app is shared, so it only opens files inside its workspace ({workspace()}); upload the file instead."
        )
