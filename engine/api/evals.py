"""Evaluation and run comparison: score the base model, runs and GGUF files on the same questions (saved in the run's
eval/ folder), read saved results back, and compare two or more runs (settings, loss curves, eval scores)."""

import json
import time
from pathlib import Path

from engine.api.access import check_access, check_source, workspace
from engine.api.chat import check_not_gone
from engine.api.processes import slug
from engine.api.runs import find_run, poll
from engine.core.errors import UserError


def evaluate(
    sources: list[str],
    data: str = "",
    base: bool = True,
    regex: str = "",
    rewards: tuple = (),
    identity: tuple[str, str] | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    device: str = "auto",
    save: bool = True,
    log=print,
    should_stop=None,
    seen_rows: bool = False,
) -> dict:
    """Evaluate runs (by id or folder), model folders, hub ids and .gguf files on the questions of `data`, or, without
    it, on the first run's validation set (its held-out rows or eval_data file). `seen_rows`: where that run has no
    validation set, its training rows instead (results' "seen_in_training": scores of what it learned, not of how
    it answers new questions), rather than the refusal.

    Returns {"cases", "scorers", "models": [{name, source, loss, perplexity, tokens, scores, left_out}], "rows":
    [{row, prompt, reference, replies, scores, loss}], "data", "held_out", "seen_in_training", "identity", "notes",
    "saved"}; "notes": sentences on a scoring pattern too slow on some reply, which scored 0 there.
    `base` adds the first run's base model (its adapter off; loaded on its own when no source has an adapter: a full
    fine-tune). Scorers:
    exact, contains, `regex`, the reward presets in `rewards` (as a job lists them), and the identity check with
    `identity` (name, maker), or the one found in an identity dataset's answers. `should_stop`: a callable asked
    between questions; True ends the evaluation with a UserError and saves nothing.
    """
    from engine.data.heldout import eval_spec
    from engine.export import evaluate as ev
    from engine.export import scoring
    from engine.spec.jobspec import JobSpec, read_job
    from engine.training.edits import pinned, read_record

    if not sources:
        raise UserError("Pick a model, a run or a GGUF file to evaluate.")
    sources = [_resolve(str(s)) for s in sources]
    runs = [Path(s) for s in sources if (Path(s) / "job.yaml").is_file()]
    # a hub dataset's rows at the commit the run trained on (its record's), not at the latest: a later commit's
    # held-out rows are other rows, possibly some it trained on; a commit that cannot be read is refused in words
    job = pinned(read_job(runs[0] / "job.yaml"), read_record(runs[0])) if runs else None
    if data:
        check_access(data)
        spec = JobSpec(
            model=job.model if job else sources[0], data=data, system_prompt=job.system_prompt if job else ""
        )
        part = "train"  # every row of the file
    elif job is not None and eval_spec(job) is not None:
        spec, part = eval_spec(job), "eval"
        check_access(spec.data)  # a run made before the app was shared may have trained on a file outside
    elif job is not None and seen_rows:
        spec, part = job, "seen"  # every row was trained on: there is no held-out part
        check_access(spec.data)
    else:
        raise UserError(_no_questions(runs[0].name if runs else None, seen_rows))
    cases = ev.read_cases(spec, "train" if part == "seen" else part, ev.LIMIT if limit is None else limit)
    who = tuple(identity) if identity else scoring.detect_identity([c.reference for c in cases])
    notes = []  # a scoring pattern too slow on a reply: said in the results, and logged

    def note(sentence: str) -> None:
        notes.append(sentence)
        log(f"note: {sentence}")

    scorers = scoring.build(regex, tuple(rewards), who, note)
    base_model = job.model if base and job is not None and not any(_has_adapter(s) for s in sources) else None
    if base_model:
        check_source(base_model)  # as a LoRA run's base is, through its run
    new_tokens = max_new_tokens or ev.MAX_NEW_TOKENS
    results = ev.evaluate(
        sources, cases, scorers, base, new_tokens, device, log, base_model=base_model, should_stop=should_stop
    )
    results.update(
        data=str(spec.data),
        held_out=part == "eval",
        seen_in_training=part == "seen",
        identity=dict(name=who[0], maker=who[1]) if who else None,
        notes=notes,
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    if save:
        where = runs[0] / "eval" if runs else workspace() / "evals"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = where / f"{stamp}-{slug(ev.label_of(sources[-1]))}"
        n = 0
        while folder.exists():
            n += 1
            folder = where / f"{stamp}-{slug(ev.label_of(sources[-1]))}-{n}"
        results["saved"] = ev.save(results, folder)
    return results


def _no_questions(run: str | None, seen_rows: bool) -> str:
    """The refusal of an evaluation with no questions, saying what to do where it is read: the Evaluate tab (it passes
    seen_rows, so any run will do), or the command line and Python (a run that held none out needs seen_rows)."""
    if seen_rows:
        return (
            "Give the questions to evaluate on (a questions file), or add a run: its held-out rows are used, else the "
            "questions it trained on."
        )
    if run is None:
        return (
            "Give the questions to evaluate on (--data FILE on the command line, data= in Python), or add a run that "
            "held some out for validation (eval_fraction or eval_data)."
        )
    return (
        f"Run '{run}' held no rows out for validation, so it has no unseen questions: give some (--data FILE on the "
        "command line, data= in Python), or evaluate it on the questions it trained on (--seen-rows, seen_rows=True "
        "in Python, as the app's Evaluate tab does), which shows what it learned rather than how it answers new "
        "questions."
    )


def _has_adapter(source: str) -> bool:
    """Whether a resolved source loads with a LoRA adapter, whose base is then that adapter switched off."""
    from engine.chat.infer import locate

    return not source.lower().endswith(".gguf") and locate(source)[1] is not None


def _resolve(source: str) -> str:
    """A run id becomes its folder (refused while the run trains); anything else (a folder, a hub id, a .gguf file) is
    kept, access-checked."""
    check_source(source)
    if source.lower().endswith(".gguf"):
        return source
    try:
        folder = find_run(source)
    except UserError:
        check_not_gone(source)
        return source
    if not poll(source).finished:  # its newest checkpoint would load beside the training process, on the same GPU
        raise UserError(
            f"Run `{folder.name}` is still training: evaluate it once it has finished, or cancel it (a cancelled run "
            "answers from its last checkpoint)."
        )
    return str(folder)


def eval_results(run) -> list[dict]:
    """A run's saved evaluations (results.json of its eval/ folders), newest first."""
    folder = find_run(run) / "eval"
    out = []
    for f in sorted(folder.glob("*/results.json"), reverse=True) if folder.is_dir() else []:
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue  # a damaged file is skipped, not fatal to the list
    return out


def compare_runs(runs: list) -> dict:
    """Two or more runs side by side: the settings that differ ({key: [value per run]}), each run's loss and
    validation loss per step, and the model scores of each run's latest evaluation."""
    import dataclasses

    from engine.spec.jobspec import read_job

    if len(runs) < 2:
        raise UserError("Pick two or more runs to compare.")
    folders = [find_run(r) for r in runs]
    specs = [dataclasses.asdict(read_job(f / "job.yaml")) for f in folders]
    diff = {k: [s[k] for s in specs] for k in specs[0] if len({json.dumps(s[k], sort_keys=True) for s in specs}) > 1}
    curves, scores = [], {}
    for f in folders:
        for m in poll(f).metrics:
            curves.append(dict(run=f.name, step=m["step"], loss=m["loss"], eval_loss=m.get("eval_loss")))
        latest = eval_results(f)
        scores[f.name] = latest[0]["models"] if latest else []
    return dict(runs=[f.name for f in folders], settings=diff, curves=curves, scores=scores)
