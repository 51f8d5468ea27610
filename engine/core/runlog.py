"""A run folder's record: status.json (state), metrics.jsonl (one line per step), log.txt (for humans).

Layout of runs/<id>/:
  job.yaml          the JobSpec the run was started with
  status.json       {"state", "message", "step", "total_steps", "pid", "updated", "notes", "idle_s"}; written
                    atomically (idle_s: the seconds a resumed run lay stopped between its attempts)
  metrics.jsonl     one JSON line per optimizer step, with eval_loss on validation steps (and "event" lines: resume)
  log.txt           human log, tracebacks included
  checkpoints/      step-000050/ ... complete checkpoints only (built under a temporary name)
  adapter/          the final LoRA adapter with tokenizer (model/ for full fine-tuning)
  best/step-NNNNNN/ with a validation set: the weights of the lowest eval_loss so far, with tokenizer and best.json
"""

import json
import time
from pathlib import Path

from engine.core.disk import is_disk_full, overwrite_in_place
from engine.core.files import append_jsonl, read_jsonl, write_json

TERMINAL = ("done", "failed", "cancelled")


class RunLog:
    def __init__(self, run_dir: str | Path, log=None):
        """`log`: where each step's line goes (log.txt, through engine.run's log), if anywhere."""
        self.dir = Path(run_dir)
        self.log = log
        self.state = dict(state="starting", message="", step=0, total_steps=0)

    def resuming(self) -> None:
        """Keep status.json's idle_s, which the resume that started this process wrote (engine.api.runs._launch)."""
        try:
            idle = json.loads((self.dir / "status.json").read_text()).get("idle_s")
        except (OSError, ValueError, AttributeError):
            return  # no readable status: nothing known to leave out
        if isinstance(idle, (int, float)):
            self.state["idle_s"] = idle

    def set(self, **fields) -> None:
        """Update status.json atomically; on a full disk, where the atomic write's temporary copy finds no room, the
        file is overwritten in place (compact, so it fits the space it holds), so a run never stays "running"."""
        self._write(fields, durable=True)

    def progress(self, step: int) -> None:
        """A training step's count in status.json: replaced atomically like `set` but not forced to the disk (no
        fsync), as it is written once a step: on the development machine's disk a write with the fsync took 0.5-7.3
        ms and one without 0.3-1.9 ms (runs of 200 writes, the machine shared with other work), against 40-103 ms
        steps on the H200. After a power cut the file holds its last version or, on some filesystems, nothing:
        either way the run reads as stopped and resume continues from its last checkpoint."""
        self._write(dict(step=step), durable=False)

    def _write(self, fields: dict, durable: bool) -> None:
        import os

        # a rank of a multi-GPU run names its supervisor (engine.training.launch), the process cancel signals
        pid = int(os.environ.get("TUNESMITH_RUN_PID") or os.getpid())
        self.state.update(fields, pid=pid, updated=time.time())
        try:
            write_json(self.dir / "status.json", self.state, durable)
        except OSError as e:
            if not is_disk_full(e):
                raise
            overwrite_in_place(self.dir / "status.json", json.dumps(self.state, separators=(",", ":")))

    def note(self, text: str) -> None:
        """Keep a sentence the user should see beside the run's state (status.json's "notes", which later states
        keep), e.g. that examples were cut to max_seq_length."""
        notes = self.state.setdefault("notes", [])
        if text not in notes:
            notes.append(text)
            self.set()

    def loading(self, log):
        """A reporter for a long pass over the data: each text goes to the status (state "loading") and the log."""

        def report(text: str) -> None:
            self.set(state="loading", message=text)
            log(text)

        return report

    def metric(self, **record) -> None:
        """Append a step's record (or an event) to metrics.jsonl; a step also gets one line in the log."""
        append_jsonl(self.dir / "metrics.jsonl", dict(record, time=round(time.time(), 3)))
        if self.log is not None and "loss" in record and "event" not in record:
            self.log(step_line(record))


def step_line(record: dict) -> str:
    """A step's line for the log: 'step 5/60: loss 2.3456, lr 2.00e-04, 1,234 tokens/s, memory 0.52 GB'."""
    parts = [f"loss {record['loss']:.4f}"]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:,.0f} tokens/s")
    if "memory_gb" in record:
        parts.append(f"memory {record['memory_gb']:.2f} GB")
    return f"step {record['step']}/{record.get('total_steps', '?')}: " + ", ".join(parts)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Step records in order; after a resume, the resumed steps replace the ones past the checkpoint."""
    by_step = {}
    for rec in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        if not isinstance(rec.get("step"), int):
            continue  # not a record this engine wrote
        if "event" in rec:
            if rec["event"] == "resume":
                by_step = {s: r for s, r in by_step.items() if s <= rec["step"]}
            continue
        by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]
