"""An export as a background job: `python -m engine.export_job JOB_DIR` (started by engine.api.start_export).

JOB_DIR holds export.json ({"source", "format", "out"}); the job writes status.json, log.txt (its stdout) and, when
done, result.json. SIGTERM cancels: the export's temporary folder is removed on the way out (engine.files.new_folder),
so a cancelled export leaves nothing that looks finished.
"""

import errno
import json
import signal
import sys
import time
import traceback
from pathlib import Path


class Cancelled(BaseException):
    """Raised in the main thread by SIGTERM; a BaseException so no `except Exception` swallows it."""


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def _raise_cancelled(signum, frame):
    raise Cancelled()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _raise_cancelled)
    job_dir = Path(argv[0])
    from engine.errors import UserError
    from engine.files import write_json
    from engine.runlog import RunLog

    status = RunLog(job_dir)
    try:
        spec = json.loads((job_dir / "export.json").read_text())
        status.set(state="running", message=f"exporting {spec['format']} to {spec['out']}")
        from engine.export import export

        res = export(spec["source"], spec["format"], Path(spec["out"]), log)
        write_json(
            job_dir / "result.json",
            dict(path=str(res.path), format=res.format, files=res.files, seconds=res.seconds, checks=res.checks),
        )
        status.set(state="done", message=f"Exported {res.format} to {res.path}.")
        return 0
    except Cancelled:
        status.set(state="cancelled", message="Export cancelled; nothing was written.")
        log("cancelled")
        return 0
    except BaseException as exc:  # every failure is a state and a sentence; the traceback goes to the log
        traceback.print_exc(file=sys.stdout)
        if isinstance(exc, UserError):
            message = str(exc)
        elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            message = "The disk filled up during the export; free some space and export again. Nothing was written."
        elif isinstance(exc, MemoryError):
            message = "Ran out of RAM during the export; close other programs and export again."
        else:
            message = f"The export stopped with an error ({type(exc).__name__}: {str(exc)[:200]}); see its log."
        status.set(state="failed", message=message)
        return 2 if isinstance(exc, UserError) else 1


if __name__ == "__main__":
    sys.exit(main())
