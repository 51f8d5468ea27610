"""The Train view's handlers without a browser (issue 25): settings checked in the words on the screen, the job file
round trip, the remaining time, the history's times, and a cancel that answers at once."""

import inspect
import math
import re
import time

from helpers import log_of, wait_for

from engine import api
from ui import train_live, train_settings, train_tab

LABELS = {"learning_rate": "Learning rate", "batch_size": "Batch size", "max_steps": "Steps", "epochs": "Epochs"}


def form(model, data, lr=1e-3, batch=2, steps=5, **advanced):
    """The Start button's values: make_spec's, then every Advanced field (defaults, or as given)."""
    basic = [model, "lora", False, str(data), "", "auto", "", "train", 256, "ui", steps, 1, lr, batch, 1, 8, False]
    adv = {key: train_settings._field(key).value for key in train_settings.ADVANCED} | advanced
    return [*basic, False, "sft", 0.1, 4, 256, 1.0, False, 2e-5, *([None] * 17), *adv.values()]


def start(values, warned=""):
    run_id, status, _, notice, warned = train_settings.starter(train_tab.start)(*values, warned)
    return run_id, status, notice, warned


def test_settings_are_checked_in_the_words_on_the_screen():
    def said(values):
        try:
            api.check_settings(values, LABELS)
        except api.UserError as e:
            return str(e)
        raise AssertionError(f"{values} was accepted")

    assert said({"learning_rate": -1.0}) == "Learning rate must be a positive number; you entered -1."
    assert said({"batch_size": 0}) == "Batch size must be a whole number from 1 to 65,536; you entered 0."
    assert said({"max_steps": -3}) == "Steps must be a whole number, 0 or more; you entered -3."
    assert said({"batch_size": None}) == "Batch size is empty; enter a number."
    assert said({"max_steps": 0, "epochs": 0}) == "Steps and Epochs are both 0: set one of them above 0."
    assert api.check_settings({"learning_rate": 2e-4}, LABELS) == []
    (warning,) = api.check_settings({"learning_rate": 50.0}, LABELS)
    assert warning.startswith("Learning rate 50 is far above the usual range for lora (at most 0.01)")
    assert api.check_settings({"learning_rate": 5e-3}, LABELS, "full")  # full fine-tuning: lower still


def test_start_refuses_bad_settings_and_a_missing_model_before_a_run_folder(runs, tiny_llama, identity_file):
    _, status, notice, _ = start(form(str(tiny_llama), identity_file, lr=-1))
    assert notice == status == "**Not started:** Learning rate must be a positive number; you entered -1."
    _, status, _, _ = start(form(str(tiny_llama), identity_file, batch=0))
    assert "Batch size must be a whole number from 1" in status and "batch_size" not in status
    _, status, _, _ = start(form(str(tiny_llama), identity_file, lora_dropout=1.5))
    assert status == "**Not started:** LoRA dropout must be at least 0 and below 1; you entered 1.5."

    values = form("no-such-folder/model", identity_file, lr=50)
    _, status, notice, warned = start(values)
    assert status.startswith("**Check:** Learning rate 50 is far above") and notice == status and warned
    assert status.endswith("Press Start again to train anyway.")
    _, status, _, _ = start(values, warned)  # pressed again: the warning was seen; the model is checked next
    assert status.startswith("**Not started:** Could not read the config of 'no-such-folder/model'"), status
    assert not runs.exists() or not list(runs.iterdir())


def test_job_file_round_trip_and_command(tiny_llama, identity_file):
    values = form(str(tiny_llama), identity_file, warmup_steps=7, lr_schedule="cosine", lora_dropout=0.05, seed=11)
    values[train_tab.MAKE_SPEC_ARGS.index("objective")] = "dpo"
    path, text, command, notice = train_settings.saver(train_tab.make_spec)(*values)
    assert notice == "" and "python -m engine train job.yaml" in command
    spec = api.read_job(path)
    assert (spec.warmup_steps, spec.lr_schedule, spec.lora_dropout, spec.seed) == (7, "cosine", 0.05, 11)
    assert spec.objective == "dpo" and spec.lora_alpha == spec.lora_r == 8  # alpha 0 in the form: the rank
    assert text == spec.to_yaml()

    loaded = train_settings.load(path)
    fields = dict(zip(train_settings.LOADED, loaded, strict=False))
    assert fields["model"] == str(tiny_llama) and fields["objective"] == "dpo" and fields["learning_rate"] == 1e-3
    advanced = dict(zip(train_settings.ADVANCED, loaded[len(train_settings.LOADED) :], strict=False))
    assert advanced["warmup_steps"] == 7 and advanced["lr_schedule"] == "cosine"
    assert loaded[-1].startswith("Loaded the settings of job.yaml")
    assert train_settings.load("")[-1] == "**Not loaded:** Choose a job.yaml file to load."


def test_save_as_job_yaml_checks_the_settings_as_start_does(tiny_llama, identity_file):
    """Save as job.yaml with a box left blank (Steps cleared to type another number) raised a TypeError: four red
    "Error" badges over the Train tab. It says what Start says; a value Start only warns about is saved."""
    save = train_settings.saver(train_tab.make_spec)
    values = form(str(tiny_llama), identity_file)
    values[train_tab.MAKE_SPEC_ARGS.index("steps")] = None
    assert save(*values) == (None, "", "", "**Not saved:** Steps is empty; enter a number.")
    assert save(*form(str(tiny_llama), identity_file, batch=0))[-1].startswith("**Not saved:** Batch size must be")
    assert save(*form(str(tiny_llama), identity_file, lora_dropout=None))[-1] == (
        "**Not saved:** LoRA dropout is empty; enter a number."
    )
    path, _, _, notice = save(*form(str(tiny_llama), identity_file, lr=50))
    assert notice == "" and api.read_job(path).learning_rate == 50


def test_a_loaded_job_file_never_ticks_trust_remote_code(tiny_llama, identity_file, tmp_path):
    """A job.yaml handed over ticked 'Trust remote code' on the Model tab, unsaid: Start then ran the model's Python."""
    path = tmp_path / "job.yaml"
    path.write_text(api.JobSpec(model="someone/custom-code", data=str(identity_file), trust_remote_code=True).to_yaml())
    loaded = train_settings.load(str(path))
    assert dict(zip(train_settings.LOADED, loaded, strict=False))["trust_remote_code"] is False
    assert "asks for 'Trust remote code'" in loaded[-1] and "left unticked" in loaded[-1]


def test_remaining_time_is_smoothed_and_durations_read_well():
    metrics = [{"step": s, "time": 1000.0 + s} for s in range(1, 41)]
    assert train_live.remaining_s(metrics, 100) == 60.0
    metrics.append({"step": 41, "time": 1000.0 + 40 + 30})  # a checkpoint pause of 30 s
    assert train_live.remaining_s(metrics, 100) == 59.0  # the median step time is unmoved
    assert [train_live.duration(s) for s in (45, 200, 7500)] == ["45 s", "3 min 20 s", "2 h 05 min"]


def test_cancel_answers_at_once_then_the_run_ends_cancelled(tiny_llama, identity_file, runs):
    spec = api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=100000, gradient_checkpointing=False)
    handle = api.start(spec)
    wait_for(handle, until=lambda st: st.step >= 1)
    t0 = time.time()
    run_id, status, timer = train_live.cancel_now("")  # nothing picked: the active run
    assert time.time() - t0 < 2 and run_id == handle.run_id and timer.active
    assert status == "**cancelling** · saving a checkpoint, then stopping…"
    assert api.poll(handle).state in ("cancelling", "cancelled")
    train_live.finish_cancel(run_id)
    st = api.poll(handle)
    assert st.state == "cancelled" and list((st.run_dir / "checkpoints").glob("step-*")), log_of(st)
    steps = re.findall(r"step \d+/100000: loss \d+\.\d{4}, lr \S+, [\d,]+ tokens/s, memory \d+\.\d\d GB", log_of(st))
    assert len(steps) == st.step  # one line per step
    (row,) = train_live.history_rows()
    assert row[:2] == [run_id, "cancelled"] and row[5][:4].isdigit() and row[6].endswith("s")


def test_a_resumed_runs_time_leaves_out_the_hours_it_lay_cancelled(tiny_llama, identity_file, runs):
    """A run cancelled, left for an hour and resumed showed "elapsed 1 h 00 min" in its progress bar and history, the
    time it lay cancelled counted as training; only the time its processes worked is counted."""
    import json
    import os

    spec = api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=100000, gradient_checkpointing=False)
    handle = api.start(spec)
    wait_for(handle, until=lambda st: st.step >= 1)
    st = api.cancel(handle)
    assert st.state == "cancelled", log_of(st)
    hour_ago = time.time() - 3600  # the run as if started and cancelled an hour ago
    status = json.loads((st.run_dir / "status.json").read_text())
    shifted = hour_ago + status["updated"] - st.started
    (st.run_dir / "status.json").write_text(json.dumps(dict(status, updated=shifted)))
    os.utime(st.run_dir / "job.yaml", (hour_ago, hour_ago))
    resumed = api.resume(st.run_dir)
    wait_for(resumed, until=lambda now: now.state == "running" and now.step > st.step)
    done = api.cancel(resumed)
    assert done.state == "cancelled", log_of(done)
    assert train_live.elapsed_s(done) < 600, train_live.elapsed_s(done)
    (row,) = train_live.history_rows()
    assert "h" not in row[6], row


def test_language_switch_keeps_text_a_handler_wrote():
    import gradio as gr

    from ui import i18n

    with gr.Blocks() as demo:
        gr.Markdown("No run yet.")
        gr.Markdown("Pick a model to see the preset for this GPU.")
    items = i18n.translatable(demo.blocks)
    switch = i18n.switcher(items)
    live, default = switch("中文", "**done** · step 3/3", "Pick a model to see the preset for this GPU.")
    assert live["value"] == "**完成** · 第 3/3 步" and default["value"] == "选择模型以查看此 GPU 的预设。"
    assert switch("English", "还没有运行。", "**done**")[0]["value"] == "No run yet."


def test_resume_refuses_while_another_run_trains(tiny_llama, identity_file, runs):
    """Start refuses while a run trains (one GPU, one run); Resume of another run in the history did not, and the two
    trained side by side on the GPU whose memory plan each had made for itself alone."""
    spec = api.JobSpec(model=str(tiny_llama), data=str(identity_file), max_steps=100000, gradient_checkpointing=False)
    old = wait_for(api.start(spec.replace(name="old", max_steps=1)))
    (old.run_dir / "status.json").write_text('{"state": "cancelled", "message": "x", "step": 0, "total_steps": 1}')
    busy = api.start(spec)
    try:
        run_id, status, timer = train_tab.resume(old.run_id)
        assert status == f"**Not resumed:** Run `{busy.run_id}` is still training; cancel it or wait for it to finish."
        assert run_id == busy.run_id and timer.active  # the view follows the run that trains
        assert api.poll(old.run_dir).state == "cancelled"
    finally:
        api.cancel(busy)
        api.cancel(old.run_dir)


def test_resume_with_no_run_picked_trains_nothing_in_the_working_folder(tiny_llama, identity_file, runs, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """An empty Run box is the run id "", a path to the working folder: started where a job.yaml lies (the README's
    `python -m engine train job.yaml`), Resume with no run picked ran that job with the project folder as its run
    folder (status, log, checkpoints written there), and the API's delete_run("") would have deleted the folder."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "job.yaml").write_text(api.JobSpec(model=str(tiny_llama), data=str(identity_file)).to_yaml())
    monkeypatch.chdir(work)
    run_id, status, timer = train_tab.resume("")
    assert status.startswith("**Not resumed:** ") and not timer.active, status
    assert sorted(p.name for p in work.iterdir()) == ["job.yaml"]
    for call in (api.poll, api.delete_run, api.resume):
        try:
            call("")
        except api.UserError:
            continue
        raise AssertionError(f"{call.__name__}('') took the working folder for a run")
    assert (work / "job.yaml").is_file()


def test_start_pressed_twice_at_once_starts_one_run(tiny_llama, identity_file, runs):
    """A double-click on Start (or Start in two tabs): the app runs up to four handlers at once, each found no run
    training, and each started one, so two runs trained side by side on the GPU each had planned for alone."""
    import threading

    values = form(str(tiny_llama), identity_file, steps=100000)
    said = []
    presses = [threading.Thread(target=lambda: said.append(start(values)[1])) for _ in range(2)]
    for t in presses:
        t.start()
    for t in presses:
        t.join()
    try:
        assert len(api.list_runs()) == 1, said
        assert sorted(s.split("`")[0] for s in said) == ["**Not started:** Run ", "Started run "], said
    finally:
        for run in api.list_runs():
            api.cancel(run.run_dir)


def test_a_large_number_out_of_range_is_shown_as_typed():
    """'you entered 2e+06' for a Max sequence length of 2000000, '5e+09' for a seed of 5000000000: the sentence shows
    the number the user typed, not a rounded exponent."""
    labels = {"max_seq_length": "Max sequence length", "seed": "Seed", "lora_dropout": "LoRA dropout"}
    for values, shown in (
        ({"max_seq_length": 2_000_000}, "you entered 2,000,000."),
        ({"seed": 5_000_000_123}, "you entered 5,000,000,123."),
        ({"max_seq_length": 1234567.0}, "you entered 1,234,567."),  # a gr.Number's float
        ({"lora_dropout": 1.25}, "you entered 1.25."),
    ):
        try:
            api.check_settings(values, labels)
        except api.UserError as e:
            assert str(e).endswith(shown), str(e)
        else:
            raise AssertionError(f"{values} was accepted")


def test_history_shows_a_loss_of_zero_and_leaves_only_a_missing_loss_blank(monkeypatch, tmp_path):
    """GRPO's loss is often exactly 0.0: the run history shows it as a number; a run with no step yet shows none."""
    runs = [
        api.RunStatus("grpo", tmp_path, "done", "", 4, 4, metrics=[{"step": 4, "loss": 0.0}], started=time.time()),
        api.RunStatus("new", tmp_path, "starting", "", 0, 4, started=time.time()),
    ]
    monkeypatch.setattr(api, "list_runs", lambda: runs)
    assert [row[4] for row in train_tab.history()] == ["0.0000", ""]
    assert [row[4] for row in train_live.history_rows()] == ["0.0000", ""]


def test_objective_plot_leaves_out_a_missing_point_rather_than_drawing_it_at_zero():
    metrics = [{"step": 1, "loss": 0.0}, {"step": 2, "loss": 0.0, "reward_mean": 0.5, "reward_std": 0.1}]
    frame = train_tab.objective_plot(metrics)["value"]
    assert list(zip(frame["step"], frame["value"], frame["series"], strict=True)) == [
        (2, 0.5, "reward mean"),
        (2, 0.1, "reward std"),
    ]


def train_view(monkeypatch, tmp_path, states=("running",)):
    """The Train tab on its own, with `api.poll` answering a run that moves one step further at each read (its state
    taken from `states` in turn, the last one kept); returns (the Blocks, the tab's components)."""
    import gradio as gr

    reads = []

    def poll(run):
        reads.append(run)
        state = states[min(len(reads), len(states)) - 1]
        metrics = [
            {"step": s, "loss": 1.0, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 9.0, "memory_gb": 0.5}
            for s in range(1, len(reads) + 1)
        ]
        return api.RunStatus(run, tmp_path, state, "", len(reads), 100, metrics=metrics, started=time.time())

    monkeypatch.setattr(api, "poll", poll)
    monkeypatch.setattr(api, "gpu_stats", lambda: None)
    with gr.Blocks() as demo:
        model = [gr.Textbox(), gr.Textbox("lora"), gr.Checkbox()]
        data = [gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox("train"), gr.Number(256)]
        tab = train_tab.build(model, data)
    return demo, tab


def run_handlers(demo, trigger, event: str, values: dict) -> dict:
    """Run the functions wired to `trigger`'s `event`, in wiring order, on the components' `values` (by component);
    returns what each component was last given (by component id)."""
    values = {block._id: value for block, value in values.items()}
    shown = {}
    for fn in demo.fns.values():
        if (trigger._id, event) in fn.targets:
            out = fn.fn(*(values.get(block._id, "") for block in fn.inputs))
            out = out if isinstance(out, tuple | list) else (out,)
            shown |= {block._id: value for block, value in zip(fn.outputs, out, strict=True)}
    return shown


def test_the_status_line_and_the_progress_bar_show_the_same_step(monkeypatch, tmp_path):
    """Each handler of the Train view's timer read the run on its own: the status line said step 1 and the progress
    bar step 2 of a run that moved on between the reads. One read now feeds both."""
    demo, tab = train_view(monkeypatch, tmp_path)
    shown = run_handlers(demo, tab["timer"], "tick", {tab["run_id"]: "r", tab["notice"]: ""})
    status = re.search(r"step (\d+)/100", shown[tab["status"]._id])[1]
    progress = re.search(r"step (\d+)/100", shown[tab["progress"]._id])[1]
    assert status == progress


def tick_spacing(start: float, stop: float, count: int) -> float:
    """The distance between the axis ticks Vega draws on [start, stop] when it asks for `count` of them (d3-array's
    tickIncrement: 1, 2 or 5 times a power of ten)."""
    import math

    step = (stop - start) / count
    power = math.floor(math.log10(step))
    error = step / 10**power
    factor = 10 if error >= math.sqrt(50) else 5 if error >= math.sqrt(10) else 2 if error >= math.sqrt(2) else 1
    return factor * 10**power


def test_the_step_axes_tick_whole_steps_early_in_a_run(monkeypatch, tmp_path):
    """Two steps into a run the loss plot's step axis read 1, 1.5, 2: each plot over steps now gets an x range of
    whole steps wide enough that Vega's ticks are whole steps at any width up to 2,800 pixels (70 ticks asked)."""
    demo, tab = train_view(monkeypatch, tmp_path)
    shown = run_handlers(demo, tab["timer"], "tick", {tab["run_id"]: "r", tab["notice"]: ""})
    metrics = [{"step": s, "loss": 1.0, "margin": 0.5} for s in (1, 2)]
    for name, plot in [*((k, shown[tab[k]._id]) for k in ("plot", "speed_plot", "memory_plot"))] + [
        ("method_plot", train_tab.objective_plot(metrics))
    ]:
        assert isinstance(plot, dict) and plot.get("x_lim"), f"{name}: {plot!r}"
        low, high = plot["x_lim"]
        assert low == 1 and int(high) == high, name
        for width in range(200, 2801, 40):
            spacing = tick_spacing(low, high, math.ceil(width / 40))
            assert spacing >= 1 and spacing == int(spacing), (name, width, spacing)


def test_cancel_is_clickable_only_while_the_run_in_view_trains(monkeypatch, tmp_path):
    """Cancel was always clickable, with nothing to cancel. It now starts disabled (a page opens with no run in
    view), and each tick enables it exactly while the run trains, with the timer on, from the same read: a tick
    that sees the run ended disables it and stops the timer."""
    demo, tab = train_view(monkeypatch, tmp_path, states=("running", "done"))
    assert tab["cancel"].interactive is False
    cancel, timer = tab["cancel"]._id, tab["timer"]._id
    for training in (True, False):  # a tick while it trains, then one after it has ended
        shown = run_handlers(demo, tab["timer"], "tick", {tab["run_id"]: "r", tab["notice"]: ""})
        assert shown[cancel].interactive is training and shown[timer].active is training
    assert train_tab.follow("")[-1].interactive is False  # no run in view
    # a reloaded page finds the run training (watch), and the tick after it enables Cancel
    monkeypatch.setattr(train_live, "active_run", lambda: "r")
    monkeypatch.setattr(train_live, "history_table", lambda selected="": None)
    run_id, _, _, timer_on = train_live.watch("", "")
    assert run_id == "r" and timer_on.active


def grpo_job(path, model, rewards):
    """A GRPO job.yaml at `path` with `rewards`, and the reward boxes `load` fills from it, in rewards_from's order."""
    path.write_text(api.JobSpec(model=model, data="prompts.jsonl", objective="grpo", rewards=rewards).to_yaml())
    loaded = train_settings.load(str(path))
    start = len(train_settings.LOADED) + len(train_settings.ADVANCED)
    return loaded, loaded[start : start + len(inspect.signature(train_tab.rewards_from).parameters)]


def test_a_loaded_grpo_job_ticks_its_rewards_with_their_settings(tmp_path):
    """Load job.yaml of a GRPO run left every reward unticked ("tick them again"), so Start refused the loaded job
    for having no reward, or trained with the rewards ticked before. The job's rewards are ticked with their settings
    and weights, the others unticked: Start sends the job's rewards. One the boxes cannot show (a second regex, a
    Python function) is named in the notice."""
    answer = {"preset": "answer", "field": "solution", "mode": "numeric", "weight": 2.0}
    regex = {"preset": "regex", "pattern": "^[0-9]+$", "weight": 0.5}
    loaded, boxes = grpo_job(tmp_path / "job.yaml", "m", (answer, {"preset": "length", "max_chars": 300}, regex))
    assert dict(zip(train_settings.LOADED, loaded, strict=False))["objective"] == "grpo"
    length = {"preset": "length", "min_chars": 0, "max_chars": 300, "weight": 1.0}
    assert train_tab.rewards_from(*boxes) == (answer, regex, length)  # the tab's order
    assert dict(zip(train_settings.REWARD_ARGS, boxes, strict=True))["use_character"] is False
    assert "reward" not in loaded[-1]

    twice = (
        {"preset": "regex", "pattern": "a"},
        {"preset": "regex", "pattern": "b"},
        {"preset": "python", "function": "m:f"},
    )
    loaded, boxes = grpo_job(tmp_path / "job.yaml", "m", twice)
    assert train_tab.rewards_from(*boxes) == ({"preset": "regex", "pattern": "a", "weight": 1.0},)
    assert "Its GRPO rewards 2 (regex) and 3 (python) are not shown here" in loaded[-1]

    loaded, boxes = grpo_job(
        tmp_path / "job.yaml", "m", ({"preset": "format", "open_tag": "<reason>", "close_tag": "</reason>"},)
    )
    assert train_tab.rewards_from(*boxes) == () and "reward 1 (format) is not shown here" in loaded[-1]


def test_the_reward_boxes_a_job_fills_are_the_train_tabs():
    assert list(train_settings.REWARD_ARGS) == list(inspect.signature(train_tab.rewards_from).parameters)


def test_layers_with_adapters_follow_the_models_architecture(tiny_llama, identity_file, runs, tmp_path):
    """'Layers with adapters' offered Llama's names for every model, so a GPT-NeoX (Pythia) or Falcon model could take
    LoRA only through a job file's target_modules: the tab's Start was refused ('LoRA has nowhere to go'), and phi or
    StarCoder2 got adapters on attention only. The choices now follow the picked model's layers (api.adapter_layers,
    from the estimate's families); a Llama keeps its names and defaults; a loaded job keeps its own ticks."""
    import json

    import torch
    from tiny import make_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    llama = list(api.JobSpec(model="m", data="d").target_modules)
    assert train_settings._field("target_modules").choices == [(n, n) for n in llama]  # before a model is picked
    shown = train_settings.layer_choices(str(tiny_llama))
    assert shown.choices == [(n, n) for n in llama] and shown.value == llama
    assert train_settings.layer_choices(str(tiny_llama), None, ["q_proj", "v_proj"]).value == ["q_proj", "v_proj"]
    assert (
        train_settings.layer_choices("").value == llama and train_settings.layer_choices("no/such-model").value == llama
    )

    def family(model_type, **config):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(dict(model_type=model_type, vocab_size=256, **config)))
        return str(folder)

    small = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
    expected = {
        family("falcon", **small): ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        family("phi", intermediate_size=128, **small): ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
        family("starcoder2", intermediate_size=128, **small): [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "c_fc",
            "c_proj",
        ],
    }
    for model, names in expected.items():
        shown = train_settings.layer_choices(model, None, llama)  # Llama's ticks are not this model's: its own
        assert shown.choices == [(n, n) for n in names] and shown.value == names, model
    jamba = family(
        "jamba", intermediate_size=128, num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, **small
    )
    names, ticked = api.adapter_layers(jamba)  # the Mamba projections offered, Llama's seven ticked
    assert list(names) == [*llama, "in_proj", "x_proj", "dt_proj", "out_proj"] and list(ticked) == llama

    tok = make_tokenizer()
    config = AutoConfig.for_model("gpt_neox", vocab_size=len(tok), intermediate_size=128, **small)
    config.update(dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None))
    neox = tmp_path / "neox"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(neox)
    tok.save_pretrained(neox)
    layers = train_settings.layer_choices(str(neox)).value
    assert layers == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    run_id, status, notice, _ = start(form(str(neox), identity_file, steps=1, target_modules=layers))
    assert run_id and notice == "", status
    st = wait_for(run_id)
    assert st.state == "done", st.message
    adapter = json.loads((st.run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(layers)

    job = tmp_path / "job.yaml"
    job.write_text(f"model: {neox}\ndata: {identity_file}\ntarget_modules: [query_key_value]\n")
    loaded = train_settings.load(str(job))
    boxes = loaded[len(train_settings.LOADED) : len(train_settings.LOADED) + len(train_settings.ADVANCED)]
    box = dict(zip(train_settings.ADVANCED, boxes, strict=True))["target_modules"]
    assert box.value == ["query_key_value"] and ("dense", "dense") in box.choices
    kept = loaded[-2]  # the model's change event after the load keeps the job's ticks
    assert train_settings.layer_choices(kept["model"], kept, layers).value == ["query_key_value"]
