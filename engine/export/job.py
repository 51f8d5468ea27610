"""An export as a background job: `python -m engine.export.job JOB_DIR` (started by engine.api.start_export).

JOB_DIR holds export.json ({"source", "format", "out", "push_to_hub", "private"}); the job writes status.json, log.txt
(its stdout) and, when the export is done, result.json (with its checks as a sentence and the files to download: a
folder export is zipped into JOB_DIR). With push_to_hub the finished export is then uploaded with the
token in HF_TOKEN (the job's environment: it is in no file); a failed upload fails the job with the upload's sentence,
and the verified export stays. SIGTERM cancels, at the export's next log line: the export's temporary folder is
removed on the way out (engine.core.files.new_folder), so a cancelled export leaves nothing that looks finished.
"""

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path


class Cancelled(BaseException):
    """Raised by `step` once SIGTERM came; a BaseException so no `except Exception` swallows it."""


_cancel = {"asked": False}


def log(msg: str) -> None:
    try:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)
    except OSError:  # the log on a full disk: the line is lost, the job's status must still be written
        pass


def _honour_cancel() -> None:
    if _cancel["asked"]:
        raise Cancelled()


def step(msg: str) -> None:
    """The export's log: each line is also where a cancel is honoured (engine.api.cancel_export kills a job that has
    not stopped 30 s after its SIGTERM)."""
    _honour_cancel()
    log(msg)


def _ask_cancel(signum, frame):
    # Only noted. Raised here, Cancelled landed wherever the main thread was, often in a library that does not pass
    # it on: in llama-cpp-python's log callback ctypes printed it and went on (the export finished, "Exported"); in
    # an import (numpy's, started by safetensors' Rust code; accelerate's) it left a half-imported module, and the
    # export failed with an ImportError; under a Rust extension the process aborted ("Rust cannot catch foreign
    # exceptions").
    _cancel["asked"] = True


def _scrub(text: str) -> str:
    """`text` without the hub token (engine.models.hub keeps it out of its errors; this also covers any other error)."""
    token = os.environ.get("HF_TOKEN")
    return text.replace(token, "***") if token else text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _ask_cancel)
    # no progress bars (transformers' "Loading weights", the hub's downloads): in a log file they are lines of
    # block characters and carriage returns
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    job_dir = Path(argv[0])
    from engine.core.disk import is_disk_full
    from engine.core.errors import UserError
    from engine.core.files import write_json
    from engine.core.runlog import RunLog

    status = RunLog(job_dir)
    spec: dict = {}
    try:
        spec = json.loads((job_dir / "export.json").read_text())
        status.set(state="running", message=f"exporting {spec['format']} to {spec['out']}")
        from engine.export import report
        from engine.export.merge import export

        _honour_cancel()  # one during the imports above (seconds; a minute on a busy machine)
        res = export(spec["source"], spec["format"], Path(spec["out"]), step)
        result = dict(path=str(res.path), format=res.format, files=res.files, seconds=res.seconds, checks=res.checks)
        result["summary"] = report.summary(res.format, res.checks)
        write_json(job_dir / "result.json", result)
        _honour_cancel()
        status.set(state="running", message="preparing the download")
        result["downloads"] = report.downloads(res.path, res.format, job_dir, step)
        write_json(job_dir / "result.json", result)
        message = f"Exported {res.format} to {res.path}."
        if spec.get("push_to_hub"):
            from engine.models.hub import push

            _honour_cancel()
            status.set(state="running", message=f"uploading to {spec['push_to_hub']}")
            result["url"] = push(res.path, spec["push_to_hub"], private=bool(spec.get("private")), log=step)
            write_json(job_dir / "result.json", result)
            message += f" Uploaded to {result['url']}."
        _honour_cancel()
        status.set(state="done", message=message)
        return 0
    except Cancelled:
        # cancelled during the zip or the upload, or once the export was renamed into place: it is complete (a
        # folder there is this job's: start_export refuses an existing one, and one another job is writing)
        if (job_dir / "result.json").is_file() or (spec.get("out") and Path(spec["out"]).is_dir()):
            message = f"Cancelled; the export itself is complete in {spec['out']}."
        else:
            message = "Export cancelled; nothing was written."
        status.set(state="cancelled", message=message)
        log("cancelled")
        return 0
    except BaseException as exc:  # every failure is a state and a sentence; the traceback goes to the log
        log(_scrub(traceback.format_exc()))
        if isinstance(exc, UserError):
            message = str(exc)
        elif (job_dir / "result.json").is_file():  # preparing its download or its upload failed, not the export
            cause = "the disk filled up" if is_disk_full(exc) else f"{type(exc).__name__}: {str(exc)[:200]}"
            message = f"The export itself is complete in {spec['out']}; preparing its download or upload failed "
            message += f"({cause}); see its log."
        elif is_disk_full(exc):
            message = "The disk filled up during the export; free some space and export again. Nothing was written."
        elif isinstance(exc, MemoryError):
            message = "Ran out of RAM during the export; close other programs and export again."
        else:
            message = f"The export stopped with an error ({type(exc).__name__}: {str(exc)[:200]}); see its log."
        status.set(state="failed", message=_scrub(message))
        return 2 if isinstance(exc, UserError) else 1


if __name__ == "__main__":
    sys.exit(main())
