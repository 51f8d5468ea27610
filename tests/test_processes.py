"""engine.api.processes.spawn with real child processes: the status a child writes is its own."""

import json
import time

from engine.api import processes

# a child that writes its first status at once, as an export job does ("running"), keeping the fields spawn passed
PROBE = """import sys
from engine.core.runlog import RunLog

status = RunLog(sys.argv[1])
status.resuming()
status.set(state="done", message="the child's own")
"""


def test_the_parents_starting_status_never_overwrites_the_childs(tmp_path, monkeypatch):
    """spawn wrote status.json ("starting", with the child's pid) after Popen returned. On a loaded machine the child
    wrote its own first status before that, which was then overwritten: an export read "starting" until its next
    write (in one trial "running" showed only after the export had finished). Here the parent's write waits for the
    child's (up to 4 s, as a loaded machine can make it), so the old order fails every time."""
    from engine.core import files

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "status_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(probe))
    folder = tmp_path / "job"
    folder.mkdir()
    write_json = files.write_json

    def parent_late(path, obj, *args, **kwargs):
        deadline = time.time() + 4
        while not path.exists() and time.time() < deadline:  # the child's own status, if it may write one first
            time.sleep(0.02)
        write_json(path, obj, *args, **kwargs)

    monkeypatch.setattr(files, "write_json", parent_late)
    pid = processes.spawn("status_probe", [str(folder)], folder, status=dict(idle_s=12.5))
    assert processes._children[pid].wait(timeout=120) == 0, (folder / "log.txt").read_text()
    st = json.loads((folder / "status.json").read_text())
    assert (st["state"], st["message"], st["pid"]) == ("done", "the child's own", pid)
    assert st["idle_s"] == 12.5  # the field spawn wrote, read by the child (a resumed run's RunLog.resuming)
