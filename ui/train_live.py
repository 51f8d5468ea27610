"""The Train view's live parts: which run it follows (the active one, whatever happened to the page), the progress
bar with elapsed and remaining time, the tokens/s and memory charts, an immediate Cancel, and the run history with
start times, durations, the selected row highlighted and a question before a run is deleted.

Everything is read from the run folders (engine.api), so a reload, a second tab or a run started from the command
line shows the same thing.
"""

import html
import statistics
import time

import gradio as gr
import pandas as pd

from engine import api
from ui import i18n

HISTORY_HEADERS = ["run", "state", "step", "model", "loss", "started", "duration"]
ETA_WINDOW = 50  # recent steps whose median duration gives the remaining time: a checkpoint pause does not jolt it
SELECTED_STYLE = "background-color: #fde68a; font-weight: 600"
STEP_SPAN = 50  # the narrowest step range a plot shows (step_plot)


def active_run() -> str:
    """The id of the newest run that a process is still working on, or ""."""
    return next((r.run_id for r in api.list_runs() if not r.finished), "")


def latest_run() -> str:
    """The run the view shows on a fresh page: the active one, else the newest."""
    runs = api.list_runs()
    return next((r.run_id for r in runs if not r.finished), runs[0].run_id if runs else "")


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def elapsed_s(st) -> float:
    """Seconds the run has been worked on: since its folder was made, up to now or, for a finished run, to its end,
    less the time it lay cancelled or failed before a resume."""
    end = st.updated if st.finished and st.updated else time.time()
    return max(0.0, end - st.started - st.idle_s) if st.started else 0.0


def remaining_s(metrics: list[dict], total: int) -> float | None:
    """Seconds left: the median time between the last ETA_WINDOW steps times the steps to go. A median, because one
    slow step (a checkpoint, the first step's compilation) would move a mean for many polls."""
    if not metrics or not total:
        return None
    left = total - metrics[-1]["step"]
    recent = metrics[-ETA_WINDOW:]
    gaps = [
        (b["time"] - a["time"]) / (b["step"] - a["step"])
        for a, b in zip(recent, recent[1:], strict=False)
        if b["step"] > a["step"] and "time" in a and "time" in b
    ]
    if gaps:
        return statistics.median(gaps) * left
    return metrics[-1].get("eta_s")


def progress_html(st) -> str:
    """A progress bar with the step count, the elapsed time and the time left."""
    total = st.total_steps or 0
    share = min(1.0, st.step / total) if total else 0.0
    parts = [f"step {st.step}/{total or '?'}", f"{share:.0%}", f"elapsed {duration(elapsed_s(st))}"]
    left = None if st.finished else remaining_s(st.metrics, total)
    if left is not None:
        parts.append(f"about {duration(left)} left")
    return (
        f'<div class="ts-progress"><progress max="100" value="{share * 100:.1f}" style="width:100%;height:14px">'
        f"</progress><div>{html.escape(i18n.say(' · '.join(parts)))}</div></div>"
    )


def step_plot(frame, **more):
    """A LinePlot update over steps whose axis ticks are whole steps. Vega-Lite puts about one tick per 40 pixels
    (ceil(width / 40)) at 1, 2 or 5 times a power of ten apart, so a range of a few steps got ticks at 1.5, 2.5...;
    the x range is at least STEP_SPAN steps wide, which keeps the tick spacing at 1 or more up to a 2,800 pixel wide
    plot (a full-screen one). Past STEP_SPAN steps the range is the run's own. `more`: other properties to set."""
    if frame is None or frame.empty:
        return gr.update(value=frame, **more) if more else frame
    first, last = int(frame["step"].min()), int(frame["step"].max())
    return gr.update(value=frame, x_lim=[first, max(last, first + STEP_SPAN)], **more)


def series_frame(metrics: list[dict], key: str):
    """(step, value) of one metric for a LinePlot; None (not an empty frame) when there is nothing yet."""
    rows = [(m["step"], m[key]) for m in metrics if key in m]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["step", key])


def live_parts(st):
    """(progress bar, tokens/s plot data, memory plot data) of a run's status `st`."""
    speed, memory = (step_plot(series_frame(st.metrics, key)) for key in ("tokens_per_s", "memory_gb"))
    return progress_html(st), speed, memory


def history_rows() -> list[list]:
    rows = []
    for r in api.list_runs():
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else ""
        rows.append(
            [
                r.run_id,
                r.state,
                f"{r.step}/{r.total_steps}",
                r.model,
                f"{r.loss:.4f}" if r.loss is not None else "",
                started,
                duration(elapsed_s(r)) if r.started else "",
            ]
        )
    return rows


def history_table(selected: str = ""):
    """The run history, newest first, with the selected run's row highlighted."""
    frame = pd.DataFrame(history_rows(), columns=HISTORY_HEADERS)
    frame["state"] = frame["state"].map(i18n.say)
    frame.columns = [i18n.say(header) for header in HISTORY_HEADERS]  # in the page's language; the run id stays first
    if frame.empty:
        return frame
    return frame.style.apply(
        lambda row: [SELECTED_STYLE if row.iloc[0] == selected else ""] * len(row),
        axis=1,
    )


def watch(run_id: str, seen_active: str):
    """Every few seconds: refresh the history, and follow a run that became active since the last look (started in
    another tab, from the command line, or before a reload), or show the latest run on an empty view.
    Returns (run id, history, active run seen, the view's timer)."""
    active = active_run()
    table = history_table(run_id)
    if active and active != seen_active and active != run_id:
        return active, history_table(active), active, gr.Timer(active=True)
    if not run_id:
        latest = latest_run()
        if latest:
            return latest, history_table(latest), active, gr.Timer(active=True)
    return gr.update(), table, active, gr.update()


def notice_after(run_id: str, shown: str = ""):
    """The note under the buttons once the run in view has ended: cleared, for a second Start's "Run X is still
    training; cancel it or wait" is no longer true; kept while it trains. With no note shown (most ticks) the run
    is not read: the timer's other handlers read it already."""
    if not shown:
        return gr.update()
    try:
        ended = not run_id or api.poll(run_id).finished
    except api.UserError:
        ended = True  # deleted or damaged meanwhile: it trains no more
    return "" if ended else gr.update()


def cancel_now(run_id: str):
    """Ask the run (or, with none chosen, the active run) to stop; says so at once. Returns (run id, status, timer).
    The checkpoint is saved by the run at the end of its step; `finish_cancel` waits for that."""
    run_id = run_id or active_run()
    if not run_id:
        return "", i18n.say("No run is training."), gr.Timer(active=False)
    try:
        st = api.request_cancel(run_id)
    except api.UserError as e:
        return run_id, i18n.say(f"**Not cancelled:** {e}"), gr.Timer(active=False)
    if st.finished:
        return run_id, i18n.say(f"**{st.state}** · {st.message} (nothing to cancel)"), gr.Timer(active=False)
    return run_id, i18n.say("**cancelling** · saving a checkpoint, then stopping…"), gr.Timer(active=True)


def finish_cancel(run_id: str) -> None:
    """Wait for the cancelled run to stop; one that does not stop within a minute (or twice its longest step, where
    that is longer) is killed (api.cancel)."""
    try:
        if run_id:
            api.cancel(run_id)
    except api.UserError:
        pass  # deleted or damaged meanwhile: the view says what it is


def ask_delete(run_id: str):
    """The question before deleting. Returns (question box, question, status): with no run picked, the status
    says to pick one and no question is asked."""
    if not run_id:
        return gr.update(visible=False), "", i18n.say("**Not deleted:** Pick a run in the history first.")
    question = f"Delete run `{run_id}` and everything in its folder (checkpoints, adapter, log)? This cannot be undone."
    return gr.update(visible=True), i18n.say(question), gr.update()
