"""Evaluate tab: the base model, runs and exported GGUF files on the same questions, side by side (loss, perplexity,
scores of the generated answers, the identity check, example rows; saved in the run's eval/ folder), and a comparison
of two or more runs (the settings that differ, the loss curves on one plot, their latest eval scores). Also the
validation series the Train tab's loss plot adds (`with_validation`)."""

import contextlib
import re
import threading

import gradio as gr
import pandas as pd

from engine import api
from ui import i18n, train_live
from ui.chat_tab import run_choices, unload

EXAMPLES = 5  # example rows shown under the table
# a run trained without a validation set is evaluated on its training questions (engine.api.evaluate's seen_rows)
SEEN_NOTE = (
    "The run held no rows out for validation, so these are questions it was trained on: the scores show what it "
    "learned, not how it answers new questions. For that, type a questions file, or train with 'Held out for "
    "validation (0-1)' above 0 (Train tab, Advanced)."
)


class _Evaluation:
    """One evaluation, running in a worker thread of the page that started it: its Stop event, the engine's latest
    log line (one per question answered), and its outputs once it has answered. Any page opened (or reloaded) while
    it runs follows it. The outputs are kept in English and translated for each page that shows them (`_shown`): a
    page reloaded in another language shows them in its own."""

    def __init__(self):
        self.stop = threading.Event()
        self.line = ""
        self.outputs = None  # ([(separator, English sentence)] of the summary, score table, example rows)

    def log(self, line: str) -> None:
        print(line, flush=True)  # as the engine's default log
        self.line = line


_EVALS: dict = {}  # browser session that pressed Evaluate -> its _Evaluation (the last few finished ones kept)
KEPT = 4  # finished evaluations kept for the pages that follow them


def _session(request) -> str | None:
    return getattr(request, "session_hash", None)


def stop_evaluation(key: str = "", request: gr.Request = None):
    """Stop: the evaluation this page follows (`key`: one found on load), or else the one this session started, ends
    before its next question (one reply may still finish)."""
    evaluation = _EVALS.get(key or _session(request))
    if evaluation is not None:
        evaluation.stop.set()


def follow(key: str = ""):
    """The page's view of an evaluation: on load (no `key`) the newest one running, started before a reload or in
    another tab; then, at each tick, the one found. Returns (key, summary, score table, example rows, Stop, timer)."""
    if not key:
        running = [k for k, e in _EVALS.items() if e.outputs is None]
        if not running:
            return "", gr.update(), gr.update(), gr.update(), gr.update(), gr.Timer(active=False)
        key = running[-1]
    evaluation = _EVALS.get(key)
    if evaluation is None:  # forgotten meanwhile (KEPT newer ones finished)
        return "", gr.update(), gr.update(), gr.update(), gr.Button(interactive=False), gr.Timer(active=False)
    if evaluation.outputs is not None:
        return "", *_shown(evaluation.outputs), gr.Button(interactive=False), gr.Timer(active=False)
    return key, _progress(evaluation), gr.update(), gr.update(), gr.Button(interactive=True), gr.Timer(active=True)


# The engine's progress lines (engine.export.evaluate), said as the tab's sentences so that `i18n.say` translates
# them; any other line logged meanwhile (the model loading) is shown as the log line it is, in code quotes.
PROGRESS = (
    (re.compile(r"evaluate: (.+): answered (\d+) of (\d+)"), "`{0}`: answered {1} of {2} question{s}"),
    (
        re.compile(r"evaluate: (.+): the loss of the (\d+) reference answers"),
        "`{0}`: measuring the loss on the {1} reference answer{s}",
    ),
    (re.compile(r"evaluate: (.+) on (\d+) cases"), "`{0}`: answering {1} question{s}"),
)


def _progress(evaluation) -> str:
    line = evaluation.line
    for pattern, sentence in PROGRESS:
        if m := pattern.fullmatch(line):
            plural = "" if m.groups()[-1] == "1" else "s"  # the last number is the count
            return i18n.say("Evaluating… " + sentence.format(*m.groups(), s=plural))
    return i18n.say("Evaluating…") + (f" `{line}`" if line else "")


def _shown(outputs) -> tuple:
    """An evaluation's (summary, score table, example rows) in the language of the page they go to."""
    parts, table, examples = outputs
    summary = "".join(separator + i18n.say(sentence) for separator, sentence in parts)
    return summary, None if table is None else shown(table), None if examples is None else shown(examples)


def with_validation(frame, metrics: list[dict]):
    """The Train tab's loss plot data with the validation loss added as its own series (steps that ran one)."""
    points = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    if frame is None or not points:
        return frame
    extra = pd.DataFrame(
        {"step": [s for s, _ in points], "loss": [v for _, v in points], "series": ["validation"] * len(points)}
    )
    return pd.concat([frame, extra], ignore_index=True)


def validation_lines(metrics: list[dict]) -> list[str]:
    """The Train tab's status line on validation: the latest validation loss and the best one's step (its weights
    are kept in the run's best/ folder, exportable)."""
    evals = [m for m in metrics if m.get("eval_loss") is not None]
    if not evals:
        return []
    best = min(evals, key=lambda m: m["eval_loss"])
    return [
        f"validation loss {evals[-1]['eval_loss']:.4f} · best {best['eval_loss']:.4f} at step {best['step']} "
        "(kept in the run's best/ folder)"
    ]


def score_table(models: list[dict]) -> pd.DataFrame:
    """One line per model: loss, perplexity and every score (a share of the cases, 0 to 1)."""
    rows = []
    for m in models:
        loss = "" if m["loss"] is None else round(m["loss"], 4)
        ppl = "" if m["perplexity"] is None else round(m["perplexity"], 2)
        rows.append(
            {"model": m["name"], "loss": loss, "perplexity": ppl, **{k: round(v, 3) for k, v in m["scores"].items()}}
        )
    return pd.DataFrame(rows)


def example_table(results: dict) -> pd.DataFrame:
    """The first EXAMPLES cases: question, reference and each model's reply."""
    names = [m["name"] for m in results["models"]]
    rows = [
        {"question": r["prompt"], "reference": r["reference"], **{n: r["replies"][n] for n in names}}
        for r in results["rows"][:EXAMPLES]
    ]
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _running(request):
    """The evaluation this session starts, registered for its Stop and for the pages that follow it."""
    finished = [k for k, e in _EVALS.items() if e.outputs is not None]
    for k in finished[:-KEPT]:
        del _EVALS[k]
    session = _session(request)
    _EVALS.pop(session, None)  # re-inserted last: the newest
    evaluation = _EVALS[session] = _Evaluation()
    try:
        yield evaluation
    finally:
        if evaluation.outputs is None:  # it raised: the pages following it stop waiting
            failed = "**Evaluation failed:** The evaluation stopped with an error; see the app's log."
            evaluation.outputs = ([("", failed)], None, None)


def run_evaluation(runs, ggufs, base, data, regex, name, maker, limit, max_new_tokens=128, request: gr.Request = None):
    """(summary markdown, score table, example rows) of an evaluation; errors become the summary."""
    with _running(request) as evaluation:
        evaluation.outputs = _evaluation(evaluation, runs, ggufs, base, data, regex, name, maker, limit, max_new_tokens)
        return _shown(evaluation.outputs)


def evaluating(runs, ggufs, base, data, regex, name, maker, limit, max_new_tokens=128, request: gr.Request = None):
    """The Evaluate button's handler: the evaluation this page follows (its key), run_evaluation's outputs, the Stop
    button and the follow timer. Stop is clickable from the moment it can be heard (first yield) until the
    evaluation has answered (last yield; the `.then` after it also covers an evaluation that raised); meanwhile the
    timer shows its progress, a line per question answered (`follow`), as on a page reloaded meanwhile. The outputs
    are kept for such a page, as this handler's answer goes to the page that pressed Evaluate."""
    with _running(request) as evaluation:
        key = _session(request) or ""
        yield key, _progress(evaluation), gr.skip(), gr.skip(), gr.Button(interactive=True), gr.Timer(active=True)
        evaluation.outputs = _evaluation(evaluation, runs, ggufs, base, data, regex, name, maker, limit, max_new_tokens)
    yield "", *_shown(evaluation.outputs), gr.Button(interactive=False), gr.Timer(active=False)


def _evaluation(evaluation, runs, ggufs, base, data, regex, name, maker, limit, max_new_tokens):
    """The evaluation's outputs in English: the summary as (separator, sentence) parts, each translated whole."""
    try:
        sources = list(runs or []) + list(ggufs or [])
        name, maker = (name or "").strip(), (maker or "").strip()
        identity = (name, maker) if name and maker else None
        if sources:
            unload()  # the Chat tab's copy of the weights: the evaluation loads its own
        res = api.evaluate(
            sources,
            (data or "").strip(),
            bool(base),
            regex=(regex or "").strip(),
            identity=identity,
            limit=int(limit) if limit else None,  # a cleared box: the engine's usual number, not 0 (every row)
            max_new_tokens=int(max_new_tokens or 128),
            should_stop=evaluation.stop.is_set,
            log=evaluation.log,
            seen_rows=True,  # a run without a validation set: its training questions, said so below
        )
    except api.UserError as e:
        if evaluation.stop.is_set():  # the engine's STOPPED, said in the tab's words
            return [("", "**Evaluation stopped:** Nothing was saved.")], None, None
        return [("", f"**Evaluation failed:** {e}")], None, None
    what = "the held-out rows of the run" if res["held_out"] else f"`{res['data']}`"
    if res.get("seen_in_training"):
        what = f"the run's training data ({what})"
    parts = [("", f"{res['cases']} question{'' if res['cases'] == 1 else 's'} from {what}.")]
    if res.get("seen_in_training"):
        parts.append((" ", SEEN_NOTE))
    for m in res["models"]:  # questions past a model's context: it could not answer them
        if m.get("left_out"):
            parts.append(
                (
                    " ",
                    f"`{m['name']}` could not answer {m['left_out']} of the {res['cases']} questions, which are "
                    "longer than its context: they are left out of its scores.",
                )
            )
    parts += [(" ", note) for note in res.get("notes", [])]  # a scoring pattern too slow on some reply: scored 0
    if res["identity"]:
        ident = res["identity"]
        parts.append((" ", f"Identity check: the answer names **{ident['name']}** and **{ident['maker']}**."))
    if res.get("saved"):
        parts.append(("\n\n", f"Saved to `{res['saved']['csv']}` and `results.json` beside it."))
    return parts, score_table(res["models"]), example_table(res)


def compare(runs):
    """(settings diff, loss curves, eval scores, message) of two or more runs."""
    try:
        res = api.compare_runs(list(runs or []))
    except api.UserError as e:
        return None, None, None, i18n.say(f"**Comparison failed:** {e}")
    settings = pd.DataFrame(
        [
            {"setting": k, **{run: str(v) for run, v in zip(res["runs"], values, strict=True)}}
            for k, values in res["settings"].items()
        ]
    )
    points = []
    for c in res["curves"]:
        points.append({"step": c["step"], "loss": c["loss"], "series": f"{c['run']} · train"})
        if c["eval_loss"] is not None:
            points.append({"step": c["step"], "loss": c["eval_loss"], "series": f"{c['run']} · validation"})
    scores = pd.DataFrame(
        [
            {"run": run, **score_table(models).iloc[k].to_dict()}
            for run, models in res["scores"].items()
            for k in range(len(models))
        ]
    )
    note = "" if len(scores) else "No run here has been evaluated yet: evaluate them above to see their scores."
    # whole steps on the step axis, as the Train tab's plots (Vega ticked a run of a few steps at 1, 1.5, 2)
    curves = train_live.step_plot(shown(pd.DataFrame(points), "series")) if points else None
    return shown(settings), curves, shown(scores) if len(scores) else None, i18n.say(note)


def shown(frame: pd.DataFrame, legend: str = "") -> pd.DataFrame:
    """`frame` with its column names (or, for a plot, its `legend` column's values) in the page's language."""
    if legend:
        return frame.assign(**{legend: frame[legend].map(i18n.say)})
    return frame.rename(columns=i18n.say)


def refresh():
    """Fresh run and GGUF choices for both pickers."""
    runs = run_choices()
    return (
        gr.Dropdown(choices=runs),
        gr.Dropdown(choices=[str(p) for p in api.exported_gguf_files()]),
        gr.Dropdown(choices=runs),
    )


def build() -> dict:
    with gr.Tab("Evaluate") as tab:
        gr.Markdown(
            "Did the tune work? Score the base model, your runs and their GGUF exports on the same questions: the "
            "loss of the reference answers, and greedy answers checked against them."
        )
        with gr.Row():
            runs = gr.Dropdown(run_choices(), multiselect=True, label="Runs to evaluate", allow_custom_value=True)
            ggufs = gr.Dropdown(
                [str(p) for p in api.exported_gguf_files()],
                multiselect=True,
                label="GGUF files",
                allow_custom_value=True,
            )
            again = gr.Button("Refresh runs", scale=0)
        with gr.Row():
            base = gr.Checkbox(True, label="Include the base model")
            data = gr.Textbox(label="Questions file (empty: the run's held-out rows, else its training questions)")
            limit = gr.Number(50, label="Questions (at most)", precision=0, minimum=1)
            new_tokens = gr.Number(128, label="Longest answer (tokens)", precision=0, minimum=1)
        with gr.Accordion("Scoring", open=False):
            regex = gr.Textbox(label="Also score: the answer matches this regex")
            with gr.Row():
                name = gr.Textbox(label="Identity name (found in identity data when empty)")
                maker = gr.Textbox(label="Identity maker")
        with gr.Row():
            go = gr.Button("Evaluate", variant="primary")
            stop = gr.Button("Stop", variant="stop", scale=0, interactive=False)  # while an evaluation runs
        summary = gr.Markdown()
        following = gr.State("")  # the evaluation this page found running as it loaded (follow)
        watch = gr.Timer(1.0, active=False)  # ticks while it follows one
        table = gr.Dataframe(
            headers=["model", "loss", "perplexity"],
            label="Scores (loss: lower is better; scores: share of questions)",
            interactive=False,
        )
        examples = gr.Dataframe(
            headers=["question", "reference"], label="Example answers", interactive=False, wrap=True
        )

        gr.Markdown("### Compare runs")
        with gr.Row():
            pick = gr.Dropdown(run_choices(), multiselect=True, label="Runs to compare", allow_custom_value=True)
            compare_btn = gr.Button("Compare", scale=0)
        note = gr.Markdown()
        settings = gr.Dataframe(headers=["setting"], label="Settings that differ", interactive=False)
        curves = gr.LinePlot(None, x="step", y="loss", color="series", label="Loss curves")
        scores = gr.Dataframe(headers=["run", "model"], label="Latest eval scores", interactive=False)

    inputs = [runs, ggufs, base, data, regex, name, maker, limit, new_tokens]
    followed = [following, summary, table, examples, stop, watch]
    go.click(evaluating, inputs, followed).then(lambda: gr.Button(interactive=False), None, stop)
    stop.click(stop_evaluation, following, None)  # the evaluation's own reply says it stopped
    gr.on(None, follow, None, followed)  # on page load: an evaluation running since before a reload
    watch.tick(follow, following, followed)
    for shown in (again.click, tab.select):  # runs and GGUF exports finished since the page loaded, as in Chat
        shown(refresh, None, [runs, ggufs, pick])
    compare_btn.click(compare, pick, [settings, curves, scores, note])
    return dict(
        runs=runs, ggufs=ggufs, stop=stop, table=table, examples=examples, pick=pick, curves=curves, settings=settings
    )
