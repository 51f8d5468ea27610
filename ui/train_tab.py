"""Train tab: the objective and its settings, the GPU's preset, Start and Cancel, a live view polled from the run
folder (with the objective's own metric: DPO/ORPO's chosen-rejected margin, GRPO's reward), and the run history."""

import functools
import inspect
import threading

import gradio as gr
import pandas as pd

from engine import api
from ui import i18n, train_live, train_settings
from ui.chat_tab import TAB_ELEM, chat_choices, unload
from ui.data_tab import parse_mapping
from ui.eval_tab import validation_lines, with_validation
from ui.model_tab import run_estimate

# No data is None, never an empty frame: Gradio 6.31's LinePlot that starts from an empty frame never draws the
# lines it is given later (tests/browser checks the drawn plot).
EMPTY_PLOT = None
OBJECTIVES = [
    ("Chat fine-tuning (SFT): learn from example conversations", "sft"),
    ("Continued pretraining: raw text, every token", "pretrain"),
    ("DPO: prefer the chosen reply over the rejected one", "dpo"),
    ("ORPO: like DPO, in one pass with no reference model", "orpo"),
    ("GRPO: sample replies, learn from rewards", "grpo"),
]


def make_spec(
    model,
    method,
    trust,
    data,
    mapping,
    template,
    data_config,
    data_split,
    seq,
    name,
    steps,
    epochs,
    lr,
    batch,
    accum,
    rank,
    packing,
    checkpointing,
    objective="sft",
    beta=0.1,
    generations=4,
    new_tokens=256,
    temperature=1.0,
    train_embeddings=False,
    embedding_lr=2e-5,
    *reward_values,
) -> api.JobSpec:
    """The JobSpec for the values on the Model, Data and Train tabs (in the order `build` wires them); the reward
    settings come last, in `rewards_from`'s order."""
    require_model_and_data(model, data)
    return api.JobSpec(
        model=model,
        data=data,
        name=name or "run",
        method=method,
        trust_remote_code=bool(trust),
        column_map=parse_mapping(mapping),
        chat_template=template,
        data_config=data_config or "",
        data_split=data_split or "train",
        max_seq_length=int(seq),
        max_steps=int(steps),
        epochs=float(epochs),
        learning_rate=float(lr),
        batch_size=int(batch),
        grad_accum=int(accum),
        lora_r=int(rank),
        lora_alpha=int(rank),
        packing=bool(packing),
        gradient_checkpointing=bool(checkpointing),
        objective=objective,
        dpo_beta=float(beta),
        num_generations=int(generations),
        max_new_tokens=int(new_tokens),
        temperature=float(temperature),
        rewards=rewards_from(*reward_values) if objective == "grpo" else (),
        train_embeddings=bool(train_embeddings),
        embedding_learning_rate=float(embedding_lr),
    )


def require_model_and_data(model, data) -> None:
    if not model:
        raise api.UserError("Pick a model in the Model tab first.")
    if not data:
        raise api.UserError("Choose a dataset in the Data tab first.")


def rewards_from(
    use_answer=False,
    answer_field="answer",
    answer_mode="exact",
    answer_weight=1.0,
    use_regex=False,
    pattern="",
    regex_weight=1.0,
    use_format=False,
    format_weight=1.0,
    use_length=False,
    min_chars=0,
    max_chars=1000,
    length_weight=1.0,
    use_character=False,
    name="",
    maker="",
    character_weight=1.0,
) -> tuple[dict, ...]:
    """The ticked reward presets with their settings. There is no way to name a Python reward function here: those
    run code, so they come only from the CLI or the Python API. A ticked reward's number box left blank (cleared to
    type another) is a sentence naming it, not a TypeError."""

    def number(value, reward: str, box: str, kind=float):
        if value is None or value == "":
            raise api.UserError(f"The {box} of the reward '{reward}' is empty; enter a number.")
        return kind(value)

    said = {  # the checkboxes' labels, which the page translates
        "answer": "Answer matches the dataset column",
        "regex": "Reply matches a regular expression",
        "format": "A reasoning block, then an answer (<think>…</think>)",
        "length": "Length within bounds (characters)",
        "character": "Stays in character: names itself, never another assistant",
    }
    ticked = [
        (use_answer, "answer", lambda: dict(field=answer_field, mode=answer_mode), answer_weight),
        (use_regex, "regex", lambda: dict(pattern=pattern), regex_weight),
        (use_format, "format", dict, format_weight),
        (
            use_length,
            "length",
            lambda: dict(
                min_chars=number(min_chars, said["length"], "Min", int),
                max_chars=number(max_chars, said["length"], "Max", int),
            ),
            length_weight,
        ),
        (use_character, "character", lambda: dict(name=name or "", maker=maker or ""), character_weight),
    ]
    return tuple(
        {"preset": preset, **settings(), "weight": number(weight, said[preset], "Weight")}
        for used, preset, settings, weight in ticked
        if used
    )


def data_note(objective, data, mapping, config, split, use_answer=False, answer_field="answer") -> str:
    """One line: does the chosen dataset suit the objective (and hold the column the answer reward reads)?"""
    if not data:
        return ""
    rewards = ({"preset": "answer", "field": answer_field},) if objective == "grpo" and use_answer else ()
    try:
        fmt = api.check_data(data, objective, parse_mapping(mapping), config or "", split or "train", rewards)
    except api.UserError as e:
        return i18n.say(f"⚠ {e}")
    return i18n.say(f"✅ The dataset ({fmt}) suits this objective.")


def show_settings(objective: str):
    """Visibility of the DPO/ORPO, GRPO and pretraining settings."""
    return (
        gr.update(visible=objective in ("dpo", "orpo")),
        gr.update(visible=objective == "grpo"),
        gr.update(visible=objective == "pretrain"),
    )


def apply_preset(model: str, method: str, loaded: dict | None = None, objective="sft", train_embeddings=False):
    """(note, seq, batch, accum, rank, lr, checkpointing) from the preset for this GPU; on CPU the method's usual
    learning rate and the other fields unchanged. The plan counts continued pretraining's trained embeddings where the
    form's `objective` and `train_embeddings` ask for them, as the run's own plan does.

    `loaded`: what a loaded job.yaml set (train_settings.kept_settings). For its model and method its own values are
    given back, not the preset's: Gradio fires the change events of the model and method that the load filled in, in
    an order of its own, and those values would otherwise be replaced."""
    keep = [gr.update()] * 6
    if loaded and (model, method) == (loaded["model"], loaded["method"]):  # before any estimate: whatever it says
        return i18n.say("The loaded job's settings are kept."), *loaded["values"]
    if not model:
        return i18n.say("Pick a model to see the preset for this GPU."), *keep
    try:
        gpus, est = run_estimate(model, method, objective, train_embeddings)  # the fit badge's estimate
    except api.UserError as e:
        return i18n.say(f"No preset: {e}"), *keep
    p = est["preset"]
    if p is None:  # no preset; the method's usual learning rate still comes, as a preset's would
        keep[4] = api.USUAL_LR[method]
        return i18n.say("No GPU detected: the CPU trains with the settings below (slowly)."), *keep
    if p.get("fits") is False:
        where = f"The {est['tier_gb']} GB preset says this" if est["tier_gb"] else "This"
        return i18n.say(f"⚠ {where} does not fit: {p['reason']}"), *keep
    offload = ""
    if p["offload"] != "none":  # fits by keeping something in host RAM (engine.memory.offload plans it)
        offload = f", {p['offload']} kept in host RAM (slower)"
    # a card under the smallest tier (a 4 GB one) has no tier: its preset is made from the run's plan alone
    tier = (
        f"{est['tier_gb']} GB tier" if est["tier_gb"] else f"{est['vram_budget_gib']:.1f} GiB, below the smallest tier"
    )
    note = (
        f"Preset for this GPU ({tier}): {p['max_seq_length']} tokens × {p['batch_size']}, "
        f"accumulation {p['grad_accum']}, rank {p['lora_r']}, checkpointing "
        f"{'on' if p['gradient_checkpointing'] else 'off'}{offload}; the run's plan peaks at "
        f"{est['peak_vram_gib']:.1f} GiB."
    )
    if gpus > 1:
        note += f" The run trains on {gpus} GPUs, one process each: these settings are per GPU."
    return (
        i18n.say(note),
        p["max_seq_length"],
        p["batch_size"],
        p["grad_accum"],
        p["lora_r"],
        p["learning_rate"],
        p["gradient_checkpointing"],
    )


def preset_for_objective(model: str, method: str, loaded: dict | None, objective: str, train_embeddings: bool):
    """apply_preset for a new objective, only where the plan can change with it: while the embeddings box is ticked
    (to or from continued pretraining), with several GPUs (a DPO, ORPO or GRPO run trains on one of them), or for a
    full fine-tune whose plan frees gradients in the backward, which only SFT and continued pretraining do.
    Otherwise the settings typed in the form are kept."""
    if not train_embeddings and len(api.gpus_found()) <= 1 and not _plan_follows_objective(model, method, objective):
        return (gr.update(),) * 7
    return apply_preset(model, method, loaded, objective, train_embeddings)


def _plan_follows_objective(model: str, method: str, objective: str) -> bool:
    """Whether a one-GPU run's plan (or refusal) for `objective` differs from the other kind of objective's (SFT and
    continued pretraining, which may free gradients in the backward, against DPO, ORPO and GRPO, which do not): only
    full fine-tuning's can."""
    if method != "full" or not model:
        return False
    other = "dpo" if objective in ("sft", "pretrain") else "sft"
    try:
        this, that = (run_estimate(model, method, o)[1] for o in (objective, other))
    except api.UserError:  # apply_preset says why, whichever objective
        return False
    return (this["plan"], this.get("reason")) != (that["plan"], that.get("reason"))  # the preset's note shows both


# the app runs up to four handlers at once (app.py's queue): a double-click on Start, or Start and Resume in two tabs,
# each found no run training and each started one; one at a time, the second finds the first's run
_LAUNCHING = threading.Lock()


def one_launch_at_a_time(handler):
    @functools.wraps(handler)
    def launch(*args, **kwargs):
        with _LAUNCHING:
            return handler(*args, **kwargs)

    return launch


@one_launch_at_a_time
def start(*args, advanced=None, confirmed=False):
    """Start a run; returns (run id, status line, timer). `advanced`: the Advanced section's values
    (ui.train_settings). Settings are checked first, in the words on the screen; a value allowed but far outside
    the usual range (a learning rate of 50) stops the start with a warning unless `confirmed`."""
    try:
        busy = [r.run_id for r in api.list_runs() if not r.finished]
        if busy:  # follow it: the Run box and the updates stay on the run that is training
            note = f"**Not started:** Run `{busy[0]}` is still training; cancel it or wait for it to finish."
            return busy[0], i18n.say(note), gr.Timer(active=True)
        basic = dict(zip(MAKE_SPEC_ARGS, args, strict=False))
        require_model_and_data(basic.get("model"), basic.get("data"))
        warnings = train_settings.check(basic, advanced or {})
        spec = make_spec(*args)
        spec = train_settings.apply(spec, advanced) if advanced else spec
        if warnings and not confirmed:
            return (
                "",
                i18n.say("**Check:** " + " ".join(warnings) + " Press Start again to train anyway."),
                gr.Timer(active=False),
            )
        api.model_arch(spec.model)  # what the Model tab found: a model that is not there stops here, not in a run
        api.check_data(spec.data, spec.objective, spec.column_map, spec.data_config, spec.data_split, spec.rewards)
        unload()  # the Chat tab's model: the run loads its own in another process, and needs the GPU memory
        handle = api.start(spec)
    except api.UserError as e:
        return "", i18n.say(f"**Not started:** {e}"), gr.Timer(active=False)
    return handle.run_id, i18n.say(f"Started run `{handle.run_id}`…"), gr.Timer(active=True)


MAKE_SPEC_ARGS = [p.name for p in inspect.signature(make_spec).parameters.values() if p.kind != p.VAR_POSITIONAL]


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected (as TensorBoard draws it)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def follow(run_id: str):
    """Everything the Train view shows of a run, from one read of it: (status markdown, loss plot data, timer,
    progress bar, tokens/s plot data, memory plot data, objective plot, Cancel button). Read once: the status line
    and the progress bar, each from a read of its own, differed by a step while the run moved on between the reads.

    Cancel is clickable exactly while the timer runs, both from this read: whatever enables it also keeps the timer
    ticking, so a later tick disables it once the run has ended, whichever handler's answer arrived last."""
    hidden = gr.update(value=EMPTY_PLOT, visible=False)
    idle = gr.Button(interactive=False)
    if not run_id:
        return i18n.say("No run yet."), EMPTY_PLOT, gr.Timer(active=False), "", None, None, hidden, idle
    try:
        st = api.poll(run_id)
    except api.UserError as e:
        return i18n.say(str(e)), EMPTY_PLOT, gr.Timer(active=False), "", None, None, hidden, idle
    training = gr.Button(interactive=not st.finished)
    return (*status_view(st), *train_live.live_parts(st), objective_plot(st.metrics), training)


def status_view(st):
    """(status markdown, loss plot data, timer) of a run's status `st`."""
    lines = [f"**{st.state}** · step {st.step}/{st.total_steps or '?'} · {st.message}"]
    lines += [f"ⓘ {note}" for note in st.notes]  # what the run changed or left out (engine.core.runlog.RunLog.note)
    if st.metrics:
        m = st.metrics[-1]
        lines.append(
            f"loss {m['loss']:.4f} · lr {m['lr']:.2e} · grad norm {m['grad_norm']:.3f} · "
            f"{m['tokens_per_s']:.0f} tokens/s · memory {m['memory_gb']:.2f} GB"  # time left: the progress bar
        )
        if "margin" in m:
            lines.append(
                f"margin {m['margin']:.3f} (chosen {m.get('chosen_reward', 0):.3f}, rejected "
                f"{m.get('rejected_reward', 0):.3f}) · pairs ranked right {m.get('accuracy', 0):.0%}"
            )
        if "reward_mean" in m:
            lines.append(
                f"reward {m['reward_mean']:.3f} ± {m.get('reward_std', 0):.3f} · "
                f"reply length {m.get('reply_length', 0):.0f} tokens"
            )
    if st.metrics and "peak_memory_gb_per_gpu" in st.metrics[-1]:  # a run on several GPUs: each one's memory
        each = " · ".join(f"{gb:.2f}" for gb in st.metrics[-1]["peak_memory_gb_per_gpu"])
        lines.append(f"{len(st.metrics[-1]['peak_memory_gb_per_gpu'])} GPUs, peak memory per GPU: {each} GB")
    lines += validation_lines(st.metrics)  # the validation loss and best step, where the run has a validation set
    gpu = api.gpu_stats()
    if gpu:
        lines.append(f"GPU: {gpu['used_gb']:.1f} / {gpu['total_gb']:.1f} GB in use, {gpu['util_pct']}% busy")
    if st.state == "failed":
        lines.append("The full log is under *Log* below.")
    steps = [m["step"] for m in st.metrics]
    losses = [m["loss"] for m in st.metrics]
    if not st.metrics:
        return i18n.say("\n\n".join(lines)), EMPTY_PLOT, gr.Timer(active=not st.finished)
    frame = pd.DataFrame(
        {
            "step": steps * 2,
            "loss": losses + smoothed(losses),
            "series": ["raw"] * len(steps) + ["smoothed"] * len(steps),
        }
    )
    frame = with_validation(frame, st.metrics)  # the validation loss, where the run has a validation set
    frame["series"] = frame["series"].map(i18n.say)  # the legend in the page's language
    return i18n.say("\n\n".join(lines)), train_live.step_plot(frame), gr.Timer(active=not st.finished)


def objective_plot(metrics: list[dict]):
    """The objective's own metric per step: DPO/ORPO's chosen-rejected margin, GRPO's reward mean and spread.
    Hidden for SFT and pretraining runs, which have only the loss."""
    if metrics and "reward_mean" in metrics[-1]:
        series = {"reward mean": "reward_mean", "reward std": "reward_std"}
    elif metrics and "margin" in metrics[-1]:
        series = {"margin (chosen − rejected)": "margin"}
    else:
        return gr.update(value=EMPTY_PLOT, visible=False)
    # a step without the value is left out: drawn at 0 it would read as a real margin or reward of 0
    points = [
        (m["step"], m[key], i18n.say(name)) for name, key in series.items() for m in metrics if m.get(key) is not None
    ]
    frame = pd.DataFrame(points, columns=["step", "value", "series"])
    return train_live.step_plot(frame, visible=True)


def history() -> list[list]:
    return [
        [r.run_id, r.state, f"{r.step}/{r.total_steps}", r.model, f"{r.loss:.4f}" if r.loss is not None else ""]
        for r in api.list_runs()
    ]


@one_launch_at_a_time
def resume(run_id: str):
    try:
        busy = [r.run_id for r in api.list_runs() if not r.finished and r.run_id != run_id]
        if busy:  # one run at a time, as Start has it: the view follows the one training
            note = f"**Not resumed:** Run `{busy[0]}` is still training; cancel it or wait for it to finish."
            return busy[0], i18n.say(note), gr.Timer(active=True)
        unload()  # as Start does
        handle = api.resume(run_id)
    except api.UserError as e:
        return run_id, i18n.say(f"**Not resumed:** {e}"), gr.Timer(active=False)
    return handle.run_id, i18n.say(f"Resumed run `{handle.run_id}`…"), gr.Timer(active=True)


def delete(run_id: str):
    """Delete the run; returns (run id box, status, history table)."""
    try:
        if not run_id:
            raise api.UserError("Pick a run in the history first.")
        unload()  # the Chat tab's model, which may be this run's: it would go on answering from a deleted run
        api.delete_run(run_id)
    except api.UserError as e:
        return run_id, i18n.say(f"**Not deleted:** {e}"), history()
    return "", i18n.say(f"Deleted run `{run_id}`."), history()


def pick(table: pd.DataFrame, evt: gr.SelectData) -> str:
    """The run id of the history row the user clicked."""
    return str(table.iloc[evt.index[0], 0])


def show_log(run_id: str) -> str:
    try:
        return api.run_log(run_id) if run_id else ""
    except api.UserError as e:
        return str(e)


def build(model_inputs: list, data_inputs: list) -> dict:
    """`model_inputs`: model, method, trust; `data_inputs`: dataset, mapping, template, config, split, max length
    (the max length is also set from the preset)."""
    with gr.Tab("Train"):
        preset_note = gr.Markdown("Pick a model to see the preset for this GPU.")
        objective = gr.Radio(OBJECTIVES, value="sft", label="Objective")
        objective_note = gr.Markdown("")
        with gr.Column(visible=False) as preference_box:
            beta = gr.Number(0.1, label="Beta (DPO: pull towards the base model; ORPO: weight of the preference term)")
        with gr.Column(visible=False) as grpo_box:
            with gr.Row():
                generations = gr.Number(4, label="Replies per prompt", precision=0)
                new_tokens = gr.Number(256, label="Longest reply (tokens)", precision=0)
                temperature = gr.Number(1.0, label="Sampling temperature")
            gr.Markdown("Rewards: tick the ones to use; the weights set how much each counts.")
            with gr.Row():
                use_answer = gr.Checkbox(False, label="Answer matches the dataset column")
                answer_field = gr.Textbox("answer", label="Column")
                answer_mode = gr.Radio(["exact", "numeric"], value="exact", label="Compare")
                answer_weight = gr.Number(1.0, label="Weight")
            with gr.Row():
                use_regex = gr.Checkbox(False, label="Reply matches a regular expression")
                pattern = gr.Textbox("", label="Pattern")
                regex_weight = gr.Number(1.0, label="Weight")
            with gr.Row():
                use_format = gr.Checkbox(False, label="A reasoning block, then an answer (<think>…</think>)")
                format_weight = gr.Number(1.0, label="Weight")
            with gr.Row():
                use_length = gr.Checkbox(False, label="Length within bounds (characters)")
                min_chars = gr.Number(0, label="Min", precision=0)
                max_chars = gr.Number(1000, label="Max", precision=0)
                length_weight = gr.Number(1.0, label="Weight")
            with gr.Row():
                use_character = gr.Checkbox(False, label="Stays in character: names itself, never another assistant")
                character_name = gr.Textbox("", label="Name")
                character_maker = gr.Textbox("", label="Maker")
                character_weight = gr.Number(1.0, label="Weight")
        with gr.Column(visible=False) as pretrain_box:
            with gr.Row():
                train_embeddings = gr.Checkbox(
                    False, label="Also train the embeddings and output layer (new vocabulary or language; large)"
                )
                embedding_lr = gr.Number(2e-5, label="Their learning rate")
        name = gr.Textbox("my-run", label="Run name", info="The run folder is runs/<date>-<time>-<name>.")
        with gr.Row():
            steps = gr.Number(60, label="Steps (0: use epochs)", precision=0, info="Optimizer steps to train.")
            epochs = gr.Number(1, label="Epochs", info="Passes over the data, when Steps is 0.")
            lr = gr.Number(
                2e-4, label="Learning rate", info="Peak step size: 1e-4 to 5e-4 for LoRA; too high ruins it."
            )
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                batch = gr.Number(
                    2, label="Batch size", precision=0, info="Examples per micro-step; memory grows with it."
                )
                accum = gr.Number(
                    4, label="Gradient accumulation", precision=0, info="Micro-steps per step; no memory."
                )
                rank = gr.Number(
                    16, label="LoRA rank (alpha = rank)", precision=0, info="Adapter capacity; more: slower."
                )
            with gr.Row():
                checkpointing = gr.Checkbox(
                    True,
                    label="Gradient checkpointing (less memory, slower)",
                    info="Recomputes layers in the backward.",
                )
                packing = gr.Checkbox(
                    False,
                    label="Pack short examples (faster; the max length is on the Data tab)",
                    info="Fills each row with several short examples: fewer padded tokens.",
                )
            advanced = train_settings.build_advanced()
        job = train_settings.build_job_file()
        with gr.Row():
            start_btn = gr.Button("Start training", variant="primary")
            # clickable while the run in view trains (follow): a page opens with none, or finds one in 2 s (watch)
            cancel_btn = gr.Button("Cancel", variant="stop", interactive=False)
        notice = gr.Markdown("")
        run_id = gr.Textbox(label="Run", interactive=False)
        status = gr.Markdown("No run yet.")
        progress = gr.HTML("")
        with gr.Row():
            plot = gr.LinePlot(EMPTY_PLOT, x="step", y="loss", color="series", label="Loss")
            speed_plot = gr.LinePlot(EMPTY_PLOT, x="step", y="tokens_per_s", label="Tokens/s", y_title="tokens/s")
            # from 0: a flat line scaled to its own width read 0.5210, 0.5215, ... GB
            memory_plot = gr.LinePlot(
                EMPTY_PLOT, x="step", y="memory_gb", label="Memory (GB)", y_title="GB", y_lim=[0, None]
            )
        method_plot = gr.LinePlot(EMPTY_PLOT, x="step", y="value", color="series", label="Method metric", visible=False)
        timer = gr.Timer(1.0, active=False)
        watch_timer = gr.Timer(2.0)  # follows a run started elsewhere or before a reload; refreshes the history
        seen_active = gr.State("")
        with gr.Accordion("Log", open=False):
            log_btn = gr.Button("Show log")
            log = gr.Textbox(label="log.txt (last 200 lines)", lines=12, interactive=False)
        with gr.Accordion("Run history", open=False):
            table = gr.Dataframe(headers=train_live.HISTORY_HEADERS, value=train_live.history_table, interactive=False)
            with gr.Row():
                refresh = gr.Button("Refresh")
                resume_btn = gr.Button("Resume")
                chat_btn = gr.Button("Chat with this run")
                delete_btn = gr.Button("Delete", variant="stop")
            with gr.Row(visible=False) as confirm_box:
                confirm_text = gr.Markdown()
                confirm_btn = gr.Button("Yes, delete it", variant="stop", scale=0)
                keep_btn = gr.Button("Keep it", scale=0)
    model, method = model_inputs[0], model_inputs[1]
    loaded_job = gr.State(None)  # what a loaded job.yaml set (train_settings.kept_settings): apply_preset keeps it
    preset_outputs = [preset_note, data_inputs[-1], batch, accum, rank, lr, checkpointing]
    preset_inputs = [model, method, loaded_job, objective, train_embeddings]
    for trigger in (model.change, method.change, train_embeddings.change):
        trigger(apply_preset, preset_inputs, preset_outputs)
    objective.change(preset_for_objective, preset_inputs, preset_outputs)
    layers = advanced["target_modules"]  # the picked model's own layer names (Falcon, GPT-NeoX, phi, ...)
    model.change(train_settings.layer_choices, [model, loaded_job, layers], layers)
    reward_inputs = [
        use_answer,
        answer_field,
        answer_mode,
        answer_weight,
        use_regex,
        pattern,
        regex_weight,
        use_format,
        format_weight,
        use_length,
        min_chars,
        max_chars,
        length_weight,
        use_character,
        character_name,
        character_maker,
        character_weight,
    ]
    objective_inputs = [objective, beta, generations, new_tokens, temperature, train_embeddings, embedding_lr]
    inputs = model_inputs + data_inputs + [name, steps, epochs, lr, batch, accum, rank, packing, checkpointing]
    warned = gr.State("")
    form = inputs + objective_inputs + reward_inputs + list(advanced.values())
    outputs = [run_id, status, timer, notice, warned]
    start_btn.click(train_settings.starter(start), form + [warned], outputs, api_name="start")
    job["save"].click(train_settings.saver(make_spec), form, [job["download"], job["text"], job["command"], notice])
    objective.change(show_settings, objective, [preference_box, grpo_box, pretrain_box])
    note_inputs = [objective, *data_inputs[:2], *data_inputs[3:5], use_answer, answer_field]
    for trigger in (objective.change, data_inputs[0].change, use_answer.change):
        trigger(data_note, note_inputs, objective_note)
    shown = [status, plot, timer, progress, speed_plot, memory_plot, method_plot, cancel_btn]  # what `follow` fills
    timer.tick(follow, run_id, shown)
    timer.tick(train_live.notice_after, [run_id, notice], notice, show_progress="hidden")
    watch_timer.tick(train_live.watch, [run_id, seen_active], [run_id, table, seen_active, timer])
    # once the run has stopped, the view (and Cancel) as it ended, even where a tick had turned the timer off
    cancel_btn.click(train_live.cancel_now, run_id, [run_id, status, timer], api_name="cancel").then(
        train_live.finish_cancel, run_id, None
    ).then(follow, run_id, shown)
    log_btn.click(show_log, run_id, log)
    refresh.click(train_live.history_table, run_id, table)
    # the progress bar and plots too: no timer ticks for a finished run, so they kept the run shown before
    table.select(pick, table, run_id).then(follow, run_id, shown)
    run_id.change(train_live.history_table, run_id, table)
    resume_btn.click(resume, run_id, [run_id, status, timer])
    delete_btn.click(train_live.ask_delete, run_id, [confirm_box, confirm_text, status])
    confirm_btn.click(delete, run_id, [run_id, status, table]).then(
        lambda: gr.update(visible=False), None, confirm_box
    ).then(train_live.history_table, run_id, table)
    keep_btn.click(lambda: gr.update(visible=False), None, confirm_box)
    return dict(
        beta=beta,
        generations=generations,
        new_tokens=new_tokens,
        temperature=temperature,
        train_embeddings=train_embeddings,
        embedding_lr=embedding_lr,
        advanced=advanced,
        rewards=reward_inputs,  # in rewards_from's order
        load_job=job["load"],
        loaded_job=loaded_job,
        notice=notice,
        progress=progress,
        preset_note=preset_note,
        objective=objective,
        objective_note=objective_note,
        name=name,
        steps=steps,
        epochs=epochs,
        lr=lr,
        batch=batch,
        accum=accum,
        rank=rank,
        checkpointing=checkpointing,
        packing=packing,
        start=start_btn,
        cancel=cancel_btn,
        run_id=run_id,
        status=status,
        plot=plot,
        speed_plot=speed_plot,
        memory_plot=memory_plot,
        method_plot=method_plot,
        timer=timer,
        log=log,
        table=table,
        chat_btn=chat_btn,
    )


def wire_chat(train: dict, chat_source) -> None:
    """ "Chat with this run" picks the run in the Chat tab (built after this one) and opens that tab: left on the
    Train tab, the user saw nothing happen. The tab is opened in the page (a gr.Tabs around the tabs, to select one
    from Python, relabelled the Chat tab's button in Gradio 6.31)."""
    picked = lambda r: gr.Dropdown(choices=chat_choices(), value=r)  # noqa: E731 (the whole list, as the tab shows)
    # the tab opens once the run is picked: its own refresh as it opens would otherwise race the pick
    train["chat_btn"].click(picked, train["run_id"], chat_source).then(
        None, js=f"() => {{ document.getElementById('{TAB_ELEM}-button')?.click(); }}"
    )
