"""Exports: in this process or as a background job (cancellable, with a log and an optional hub upload), GGUF support of
a source, and the GGUF files already exported.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from engine.api.access import allowed_roots, check_access, check_source, workspace
from engine.api.processes import alive, exit_code, mark_cancelled, runs_in, slug, spawn, stop
from engine.core.errors import UserError
from engine.core.runlog import TERMINAL

EXPORT_FORMATS = (
    "lora",
    "merged16",
    "gguf-f16",
    "gguf-bf16",
    "gguf-q8_0",
    "gguf-q4_k_m",
    "gguf-q5_k_m",
    "gguf-q6_k",
    "gguf-mxfp4",
)


def export(source: str, fmt: str, out: str | Path, log=print):
    """Export a run (or a model) as `fmt` into the new folder `out`, verified before it is called done (in this
    process; the app uses start_export)."""
    from engine.export.merge import export as _export

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
    """Export in the background (python -m engine.export.job): cancellable, with a log, never leaving a folder that
    looks finished. The job's own folder is exports/.jobs/<id>/.

    With `push_to_hub` ("user/name") the finished export is then uploaded there (created `private` if new), with
    `token` or else HF_TOKEN; the token reaches the job through its environment only, never a file or the log. A
    shared app (restrict_files) needs `token`: the machine's HF_TOKEN would let any of its users write to every
    repository of the token's owner.
    """
    if push_to_hub and not token and allowed_roots() is not None:
        raise UserError(
            "This app is shared, so an upload needs your own write token typed in the Export tab: the machine's "
            "HF_TOKEN is not lent to the app's users."
        )
    check_source(str(source))
    out = Path(out)
    check_access(str(out.resolve()))
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"Unknown export format '{fmt}'; use one of: {', '.join(EXPORT_FORMATS)}.")
    if out.exists():
        raise UserError(f"'{out}' already exists; choose another folder name (nothing is ever overwritten).")
    jobs = workspace() / "exports" / ".jobs"
    if _being_exported(out.resolve(), jobs):
        raise UserError(
            f"'{out}' is being exported already; wait for that export, or cancel it, or choose another name."
        )
    if push_to_hub:
        from engine.models.hub import check_target

        token = check_target(push_to_hub, token)
    jobs.mkdir(parents=True, exist_ok=True)
    job_dir = jobs / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(out.name)}"
    while True:
        try:
            job_dir.mkdir()
            break
        except FileExistsError:
            job_dir = job_dir.with_name(job_dir.name + "-1")
    from engine.core.files import write_json

    if Path(source).exists():  # the job starts in the project folder: a relative path would name something else
        source = Path(source).absolute()
    spec = dict(source=str(source), format=fmt, out=str(out.resolve()), push_to_hub=push_to_hub, private=private)
    write_json(job_dir / "export.json", spec)
    pid = spawn("engine.export.job", [str(job_dir)], job_dir, dict(HF_TOKEN=token) if push_to_hub else None)
    return ExportJob(job_dir.name, job_dir, pid, out.resolve())


def _being_exported(out: Path, jobs: Path) -> bool:
    """Whether an export job under `jobs` still running writes to `out` (two would do the same work side by side, and
    the one finishing second fail)."""
    return any(job.out == out for job in running_exports(jobs))


def running_exports(jobs: Path | None = None) -> list[ExportJob]:
    """The export jobs still running, newest first: a page opened (or reloaded) while one runs follows it and can
    cancel it, as the page that started it could."""
    import json

    jobs = jobs or workspace() / "exports" / ".jobs"
    found = []
    for job_dir in sorted(jobs.iterdir(), reverse=True) if jobs.is_dir() else []:
        try:
            spec = json.loads((job_dir / "export.json").read_text())
            st = json.loads((job_dir / "status.json").read_text())
        except (OSError, ValueError):  # a job folder being made, or damaged
            continue
        pid = st.get("pid")
        if st.get("state") not in TERMINAL and _working(job_dir, pid):
            found.append(ExportJob(job_dir.name, job_dir, pid, Path(spec.get("out", ""))))
    return found


def _working(job_dir: Path, pid: int | None) -> bool:
    """Whether `pid` (status.json's) is the export job of `job_dir` still at work. A pid can name another program by
    now (ids are reused, from 1 again after a restart): an export whose process is gone read as exporting for good,
    and its folder name refused. The job's command line names its folder (engine.api.processes.runs_in), as a
    run's names its job.yaml; an empty one is a job just started (its exec under way)."""
    return bool(pid) and alive(pid) and runs_in(pid, job_dir, unknown=True)


def poll_export(job: ExportJob) -> ExportStatus:
    import json

    st = json.loads((job.job_dir / "status.json").read_text())
    if st["state"] not in TERMINAL and not _working(job.job_dir, st.get("pid")):
        message = "The export process stopped unexpectedly; see its log."
        killed = "killed (SIGKILL), most often by the system when RAM runs out"
        if exit_code(st["pid"]) == -9 and (job.job_dir / "result.json").is_file():  # preparing its download or upload
            message = f"The export itself is complete in {job.out}; preparing its download or upload was {killed}."
        elif exit_code(st["pid"]) == -9:
            message = f"The export process was {killed}: close other programs and export again. Nothing was written."
        st.update(state="failed", message=message)
    result_file = job.job_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    log = "\n".join((job.job_dir / "log.txt").read_text(errors="replace").splitlines()[-40:])
    return ExportStatus(job.job_id, st["state"], st.get("message", ""), log, result)


def cancel_export(job: ExportJob, wait_s: float = 30.0) -> ExportStatus:
    """Stop an export; whatever it had written under a temporary name is removed."""
    import glob
    import shutil

    if not poll_export(job).finished and stop(job.job_dir, wait_s):
        # left only when it had to be killed; named with its builder's pid (engine.core.files.new_folder), so another
        # export's (one named like "<name>.v2") is left alone
        for partial in job.out.parent.glob(f".{glob.escape(job.out.name)}.{job.pid}-*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        mark_cancelled(job.job_dir, "Export cancelled; nothing was written.")
    return poll_export(job)


def gguf_support(source: str) -> tuple[bool, str]:
    """(can this run or model be exported to GGUF, the reason when not), for the Export tab's format choice."""
    from engine.chat.infer import locate
    from engine.export import gguf
    from engine.models.loading import resolve_model

    check_source(source)
    base, _, tok_dir = locate(source)
    return gguf.supported(resolve_model(base), tok_dir)


def formats_refused(source: str) -> set[str]:
    """The export formats that a run (or model) GGUF can export to still refuses for its model: gguf-mxfp4 where it
    has no mixture-of-experts layers. The Export tab leaves them out instead of offering a job that would fail."""
    from engine.chat.infer import locate
    from engine.export import gguf
    from engine.models.loading import resolve_model

    check_source(source)
    model_dir = resolve_model(locate(source)[0])
    refused = set()
    for fmt in EXPORT_FORMATS:
        try:
            gguf.check_format(model_dir, fmt)
        except UserError:
            refused.add(fmt)
    return refused


def exported_gguf_files() -> list[Path]:
    """GGUF files of finished exports under the workspace's exports/ folder, newest first."""
    folder = workspace() / "exports"
    files = folder.glob("*/*.gguf") if folder.is_dir() else []
    # a hidden folder is an export still being built (or left by a killed one), a hidden file its intermediate
    finished = [p for p in files if not p.name.startswith(".") and not p.parent.name.startswith(".")]
    return sorted(finished, key=lambda p: p.stat().st_mtime, reverse=True)
