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
    "start_export",
    "poll_export",
    "cancel_export",
    "ExportJob",
    "ExportStatus",
]

ROOT = Path(__file__).resolve().parent.parent
_allowed_roots: list[Path] | None = None  # set by restrict_files(): the folders a shared app may read
_children: dict[int, subprocess.Popen] = {}  # runs this process started, so their exit is reaped
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
        return self.state in TERMINAL

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
    from engine.rewards import runs_code

    check_access(spec.model)
    check_access(spec.data)
    if runs_code(spec.rewards) and not allow_code:
        raise UserError(
            "This job has a 'python' reward, which runs your own code: that is accepted only from the command line "
            "or the Python API (engine.api.start(spec, allow_code=True)), never from the app."
        )
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


def resume(run: "str | Path | RunHandle") -> RunHandle:
    """Continue a cancelled or failed run from its latest checkpoint, in the same folder."""
    status = poll(run)
    if not status.finished:
        raise UserError(f"Run {status.run_id} is still {status.state}; cancel it before resuming.")
    if status.state == "done":
        raise UserError(f"Run {status.run_id} already finished; start a new run to train further.")
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
    """A run folder from a handle, a path, or a run id under runs_dir()."""
    if isinstance(run, RunHandle):
        return run.run_dir
    path = Path(run)
    if (path / "job.yaml").is_file():
        return path
    if (runs_dir() / str(run) / "job.yaml").is_file():
        return runs_dir() / str(run)
    raise UserError(f"No run '{run}': give a run folder (with job.yaml) or a run id from the run list.")


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
    """The run's state, progress and metrics. A process that died without saying so is reported failed."""
    import json

    run_dir = find_run(run)
    try:
        st = json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        st = dict(state="failed", message="This run has no status; it never started.", step=0, total_steps=0)
    if st["state"] not in TERMINAL and st.get("pid") and not _alive(st["pid"]):
        code = _children[st["pid"]].returncode if st["pid"] in _children else None
        st["state"] = "failed"
        st["message"] = (
            f"The training process stopped unexpectedly (exit code {code}); see log.txt. Resume "
            "continues from the last checkpoint."
        )
    try:
        spec = read_job(run_dir / "job.yaml")
        name, model = spec.name, spec.model
    except UserError:
        name = model = "?"
    return RunStatus(
        run_dir.name,
        run_dir,
        st["state"],
        st.get("message", ""),
        st.get("step", 0),
        st.get("total_steps", 0),
        name,
        model,
        read_metrics(run_dir),
    )


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
    return poll(status.run_dir)


def list_runs(runs: Path | None = None) -> list[RunStatus]:
    """Every run folder, newest first."""
    runs = Path(runs) if runs else runs_dir()
    if not runs.is_dir():
        return []
    return [poll(d) for d in sorted(runs.iterdir(), reverse=True) if (d / "job.yaml").is_file()]


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
    check_access(str(source))
    if str(source).lower().endswith(".gguf"):
        from engine.gguf_chat import GGUFChat

        return GGUFChat(source, device)
    from engine.infer import ChatModel

    return ChatModel(source, device)


def sampling_defaults(source: str) -> dict:
    """The sampling settings to start a chat with (temperature, top_p, top_k, min_p, repetition_penalty): the model's
    generation_config.json where it sets them, else its family's (Qwen3, Llama 3, Gemma, ...). Reads only local files:
    a run, a model folder, a .gguf file, or a hub id (from the cache, or by its catalog family)."""
    check_access(str(source))
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
    check_access(str(source))
    out = Path(out)
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
    """Architecture numbers of a catalog model (no download), a local folder, or a hub id (config.json only)."""
    from engine.estimate import Arch

    for m in catalog():
        if model in (m["id"], m.get("id_4bit"), m["name"]):
            return Arch(*m["arch"])
    import json

    check_access(model)
    path = Path(os.path.expanduser(model))
    if (path / "config.json").is_file():
        return Arch.from_config(json.loads((path / "config.json").read_text()))
    from engine.loading import HUB_ID

    if not HUB_ID.match(model):
        raise UserError(f"Model folder '{model}' does not exist; give an existing folder or a hub id.")
    from huggingface_hub import hf_hub_download

    try:
        cfg = hf_hub_download(model, "config.json")
    except Exception as e:  # offline, missing, gated: the same advice
        raise UserError(
            f"Could not read the config of '{model}' from the hub ({type(e).__name__}); check the name "
            "and the connection."
        ) from None
    return Arch.from_config(json.loads(Path(cfg).read_text()))


def estimate(
    model: str,
    method: str = "qlora",
    seq: int | None = None,
    batch: int | None = None,
    rank: int = 16,
    vram_gib: float | None = None,
) -> dict:
    """Peak VRAM and RAM of training `model`, whether it fits, and the preset and plan for this GPU (or `vram_gib`).

    Settings left as None come from the preset of the tier.
    """
    from engine import presets
    from engine.estimate import estimate as _estimate
    from engine.offload import plan

    if method not in ("qlora", "lora", "full"):
        raise UserError(f"Unknown method '{method}'; use qlora, lora or full.")
    arch = model_arch(model)
    budget = vram_gib if vram_gib is not None else vram_budget_gib()
    tier = presets.pick_tier(budget) if budget else None
    preset = presets.preset_for(tier, arch.params, method) if tier else None
    base = preset if isinstance(preset, presets.Preset) else None
    seq = seq or (base.max_seq_length if base else 1024)
    batch = batch or (base.batch_size if base else 1)
    ckpt = base.gradient_checkpointing if base and seq == base.max_seq_length and batch == base.batch_size else True
    est = _estimate(arch, method, seq, batch, rank, checkpointing=ckpt)
    usable = budget * presets.USABLE if budget else None
    try:  # what a run of these settings would do on this budget (engine.offload), with the fast path's loss
        memory = plan(arch, method, seq, batch, budget, rank=rank).as_dict() if budget else None
    except UserError as e:
        memory = dict(fits=False, reason=str(e))
    return dict(
        model=model,
        method=method,
        params_b=round(arch.params / 1e9, 2),
        seq=seq,
        batch=batch,
        rank=rank,
        vram_budget_gib=round(budget, 2) if budget else None,
        tier_gb=tier,
        peak_vram_gb=est.peak_vram_gib,
        peak_ram_gb=est.peak_ram_gib,
        fits=est.fits(usable) if usable else None,  # without offloading; `plan` says what offloading makes fit
        parts_gib=est.parts_gib,
        plan=memory,
        preset=None
        if preset is None
        else dataclasses.asdict(preset)
        if base
        else dict(fits=False, reason=preset.reason),
    )


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
