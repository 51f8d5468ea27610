"""The Train tab's settings beyond the everyday ones: the Advanced section (every other JobSpec setting, each with a
line on what it does and costs), the check of the values in the words the user sees, and the job file: save the
settings as job.yaml, load one back, and show the equivalent command line.

Defaults come from engine.api.JobSpec, so the app and a hand-written job.yaml mean the same thing by a blank setting.
"""

import dataclasses
import inspect
import tempfile
from pathlib import Path

import gradio as gr

from engine import api
from ui import i18n
from ui.model_tab import chosen_model

DEFAULTS = {f.name: f.default for f in dataclasses.fields(api.JobSpec)}
# key: (label, help line, kind, choices). The order is the layout's and the Start button's input order.
ADVANCED = {
    "warmup_steps": ("Warmup steps", "Steps over which the learning rate rises to its peak; steadies the start.", int),
    "lr_schedule": ("Learning-rate schedule", "How the learning rate falls after warmup: to 0, or constant.", str),
    "weight_decay": ("Weight decay", "Pulls weights towards 0 each step; 0 (the default) suits LoRA.", float),
    "max_grad_norm": ("Gradient clipping", "Largest gradient norm a step may use; 0 turns clipping off.", float),
    "optimizer": ("Optimizer", "auto: 8-bit AdamW on a GPU (1/4 the state memory), AdamW on the CPU.", str),
    "lora_alpha": ("LoRA alpha (0: same as the rank)", "Scales the adapter's effect (alpha / rank).", int),
    "lora_dropout": ("LoRA dropout", "Share of adapter inputs dropped while training; against overfitting.", float),
    "use_rslora": ("rsLoRA", "Scale by alpha / √rank: steadier at high ranks.", bool),
    "target_modules": ("Layers with adapters", "More layers learn more, for a little more memory and time.", list),
    "seed": ("Seed", "Fixes the data order and the adapter's start: the same seed repeats a run.", int),
    "save_every": ("Checkpoint every N steps (0: at the end only)", "Each checkpoint pauses training to write.", int),
    "save_every_minutes": ("Checkpoint every N minutes (0: off)", "A time-based save, so a crash loses little.", float),
    "keep_checkpoints": ("Checkpoints kept", "Older ones are deleted; each takes the adapter's size on disk.", int),
    "train_on_inputs": ("Learn the prompts too", "Off: loss on the replies only, what chat models need.", bool),
    "system_prompt": ("System prompt", "Added as a system turn to every example that has none.", str),
    "fast_path": ("Fast kernels", "Tunesmith's kernels for Llama, Mistral, Qwen and Gemma; off: plain PyTorch.", bool),
    "device": ("Device", "auto: the GPU when there is one.", str),
    "dtype": ("Precision", "auto: bf16 where the GPU has it, fp16 otherwise, fp32 on the CPU.", str),
    "grpo_beta": ("GRPO: KL penalty", "Pull towards the base model; 0 skips the reference pass (faster).", float),
    "eval_fraction": ("Held out for validation (0-1)", "Share of rows kept out to measure a validation loss.", float),
    "eval_steps": ("Validation every N steps (0: ~10 times)", "Each pass runs the held-out rows once.", int),
    "gpus": ("GPUs (0: every visible one)", "Several GPUs train data-parallel, one process each.", int),
    "lora_experts": ("Adapters on experts (MoE)", "Mixture-of-experts models: train the experts too.", bool),
}
CHOICES = api.SETTING_CHOICES  # lr_schedule, optimizer, device, dtype
# The labels of the settings the Train tab shows outside the Advanced section (make_spec's argument names), for
# messages in the words on the screen.
BASIC = {
    "seq": ("max_seq_length", "Max sequence length"),
    "steps": ("max_steps", "Steps"),
    "epochs": ("epochs", "Epochs"),
    "lr": ("learning_rate", "Learning rate"),
    "batch": ("batch_size", "Batch size"),
    "accum": ("grad_accum", "Gradient accumulation"),
    "rank": ("lora_r", "LoRA rank"),
    "beta": ("dpo_beta", "Beta"),
    "generations": ("num_generations", "Replies per prompt"),
    "new_tokens": ("max_new_tokens", "Longest reply (tokens)"),
    "temperature": ("temperature", "Sampling temperature"),
    "embedding_lr": ("embedding_learning_rate", "Their learning rate (embeddings)"),
}


def build_advanced() -> dict:
    """The Advanced section's extra fields (inside the caller's accordion), keyed by JobSpec setting."""
    fields = {}
    keys = list(ADVANCED)
    for row in range(0, len(keys), 4):
        with gr.Row():
            for key in keys[row : row + 4]:
                fields[key] = _field(key)
    return fields


def _field(key: str):
    label, info, kind = ADVANCED[key]
    value = 0 if key == "lora_alpha" else DEFAULTS[key]  # 0: follow the rank, as the rank's label says
    if key in CHOICES:
        return gr.Dropdown(list(CHOICES[key]), value=value, label=label, info=info)
    if kind is list:
        return gr.CheckboxGroup(list(value), value=list(value), label=label, info=info)
    if kind is bool:
        return gr.Checkbox(value, label=label, info=info)
    if kind is str:
        return gr.Textbox(value, label=label, info=info)
    return gr.Number(value, label=label, info=info, precision=0 if kind is int else None)


def build_job_file() -> dict:
    """The "Job file and command line" section: save the settings as job.yaml, load one, see the command."""
    with gr.Accordion("Job file and command line", open=False):
        with gr.Row():
            save = gr.Button("Save as job.yaml")
            load = gr.UploadButton("Load job.yaml", file_types=[".yaml", ".yml"], type="filepath")
        download = gr.File(label="job.yaml", interactive=False)
        command = gr.Markdown("")
        text = gr.Code(label="job.yaml", language="yaml", interactive=False)
    return dict(save=save, load=load, download=download, command=command, text=text)


def advanced_values(spec) -> dict:
    """The Advanced section's settings of `spec`, as the fields show them (its layers with adapters among the choices
    of its model's layers)."""
    values = {key: getattr(spec, key) for key in ADVANCED}
    values["target_modules"] = layer_choices(chosen_model(None, spec.model), kept_settings(spec))
    return values


def layer_choices(model: str, loaded: dict | None = None, ticked=None):
    """'Layers with adapters' for the picked model: its own layers' names (Falcon's query_key_value, phi's fc1, ...;
    Llama's for the families that use them, and wherever the model cannot be read: api.adapter_layers), ticked as
    the engine's default ticks them. Kept: the ticks of a loaded job.yaml for its model (the model's change event
    comes after the load, as for apply_preset), and `ticked`, the ones shown, where all are the new model's too."""
    names, default = api.adapter_layers(model)
    if loaded and model == loaded["model"] and "target_modules" in loaded:
        kept = list(loaded["target_modules"])
        return gr.CheckboxGroup(choices=[*names, *(t for t in kept if t not in names)], value=kept)
    if ticked and set(ticked) <= set(names):
        return gr.CheckboxGroup(choices=list(names), value=list(ticked))
    return gr.CheckboxGroup(choices=list(names), value=list(default))


def apply(spec, advanced: dict):
    """`spec` with the Advanced section's values (a blank LoRA alpha, or 0, means the rank)."""
    changes = {key: value for key, value in advanced.items() if key in ADVANCED}
    changes["target_modules"] = tuple(changes.get("target_modules") or ())
    if not changes["target_modules"]:
        raise api.UserError(f"{ADVANCED['target_modules'][0]}: tick at least one layer.")
    if not changes.get("lora_alpha"):
        changes["lora_alpha"] = spec.lora_r
    for key, (_, _, kind) in ADVANCED.items():
        if kind in (int, float) and key in changes:
            changes[key] = kind(changes[key])
    return spec.replace(**changes)


def check(basic: dict, advanced: dict) -> list[str]:
    """Check make_spec's named values and the Advanced section's in the words on the screen (a UserError for a value
    that cannot work); returns warnings for values allowed but far outside the usual range."""
    values, labels = labelled(basic, advanced)
    return api.check_settings(values, labels, basic.get("method") or "lora")


def labelled(basic: dict, advanced: dict) -> tuple[dict, dict]:
    """(values, labels) keyed by JobSpec setting, from make_spec's named values and the Advanced section's."""
    values, labels = {}, {}
    for name, value in basic.items():
        if name in BASIC:
            key, label = BASIC[name]
            values[key], labels[key] = value, label
    for key, value in advanced.items():
        if ADVANCED[key][2] in (int, float) and not (key == "lora_alpha" and not value):
            values[key], labels[key] = value, ADVANCED[key][0]
    return values, labels


def job_file(spec) -> tuple[str, str, str]:
    """(path of a job.yaml to download, its text, the command that runs it)."""
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-job-"))
    path = folder / "job.yaml"
    text = spec.to_yaml()
    path.write_text(text, encoding="utf-8")
    return str(path), text, "python -m engine train job.yaml"


def read_job_file(path: str):
    """The JobSpec of an uploaded job.yaml (a sentence for a file that is not one)."""
    if not path:
        raise api.UserError("Choose a job.yaml file to load.")
    return api.read_job(path)


def starter(start):
    """The Start button's handler around train_tab.start: its inputs are start's, then the Advanced section's (in
    ADVANCED's order), then the settings warned about last (a State). It returns start's outputs, the notice under
    the buttons (why nothing started, which the view's updates do not overwrite) and the warned settings: pressing
    Start again on the same settings trains anyway."""
    n = len(ADVANCED)

    def run(*values):
        *args, warned = values
        basic, advanced = args[:-n], dict(zip(ADVANCED, args[-n:], strict=True))
        settings = repr(args)
        run_id, status, timer = start(*basic, advanced=advanced, confirmed=settings == warned)
        english = i18n.english(status)  # the status is in the page's language: "**Не запущено:**" is a refusal too
        note = status if english.startswith(("**Not started", "**Check")) else ""
        return run_id, status, timer, note, settings if english.startswith("**Check") else ""

    return run


def saver(make_spec):
    """The "Save as job.yaml" handler: the same inputs as `starter` but the State. Returns (file to download,
    job.yaml text, command line, notice)."""
    n = len(ADVANCED)
    names = [p.name for p in inspect.signature(make_spec).parameters.values() if p.kind != p.VAR_POSITIONAL]

    def save(*args):
        basic, advanced = args[:-n], dict(zip(ADVANCED, args[-n:], strict=True))
        try:
            check(dict(zip(names, basic, strict=False)), advanced)  # a blank box: Start's sentence, not a TypeError
            spec = apply(make_spec(*basic), advanced)
        except api.UserError as e:
            return None, "", "", i18n.say(f"**Not saved:** {e}")
        path, text, command = job_file(spec)
        return path, text, i18n.say(f"Run it from a terminal in the app's folder: `{command}`"), ""

    return save


def load(path: str):
    """The values of an uploaded job.yaml for every field it sets (see `wire_load` for the order), then a notice."""
    try:
        spec = read_job_file(path)
    except api.UserError as e:
        return (
            *[gr.update()] * (len(LOADED) + len(ADVANCED) + len(REWARD_ARGS)),
            gr.update(),
            i18n.say(f"**Not loaded:** {e}"),
        )
    values = [getattr(spec, key) for key in LOADED]
    values[LOADED.index("column_map")] = ", ".join(f"{k}={v}" for k, v in spec.column_map.items())
    values[LOADED.index("trust_remote_code")] = False  # a file handed over must not tick it: the user does
    advanced = advanced_values(spec)
    note = f"Loaded the settings of {Path(path).name}: model `{spec.model}`, dataset `{spec.data}`."
    if spec.trust_remote_code:
        note += (
            " It asks for 'Trust remote code', which runs Python shipped with the model: that box is left unticked; "
            "tick it on the Model tab only if you trust this model."
        )
    rewards, unshown = reward_values(spec.rewards)
    if unshown:
        named = [f"{n} ({preset})" for n, preset in unshown]
        which = " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
        s, are, it = ("s", "are", "them") if len(named) > 1 else ("", "is", "it")
        note += (
            f" Its GRPO reward{s} {which} {are} not shown here (the tab has one of each preset, with its usual "
            f"settings): run the file from the command line to train with {it}."
        )
    return *values, *[advanced[key] for key in ADVANCED], *rewards, kept_settings(spec), i18n.say(note)


# The Train tab's boxes of each reward preset it shows: its tick, {setting: box}, its weight; named as
# train_tab.rewards_from's arguments, whose order REWARD_ARGS is (a test holds them to it).
REWARD_BOXES = {
    "answer": ("use_answer", {"field": "answer_field", "mode": "answer_mode"}, "answer_weight"),
    "regex": ("use_regex", {"pattern": "pattern"}, "regex_weight"),
    "format": ("use_format", {}, "format_weight"),
    "length": ("use_length", {"min_chars": "min_chars", "max_chars": "max_chars"}, "length_weight"),
    "character": ("use_character", {"name": "name", "maker": "maker"}, "character_weight"),
}
REWARD_ARGS = tuple(box for tick, boxes, weight in REWARD_BOXES.values() for box in (tick, *boxes.values(), weight))


def reward_values(rewards) -> tuple[list, list[tuple[int, str]]]:
    """The reward boxes (REWARD_ARGS' order) for a job's `rewards`: each preset it uses ticked with its settings and
    weight, the others unticked (their boxes as they are); and (number, preset) of the rewards the boxes cannot
    show: a preset's second entry, a Python function, a setting the tab has no box for (the format's tags)."""
    values = {box: gr.update() for box in REWARD_ARGS} | {tick: False for tick, _, _ in REWARD_BOXES.values()}
    unshown = []
    for n, entry in enumerate(rewards, 1):
        preset = entry.get("preset")
        tick, boxes, weight = REWARD_BOXES.get(preset, (None, {}, None))
        defaults = api.REWARD_PRESETS.get(preset, {})
        full = {**defaults, "weight": 1.0, **entry}
        changed = [k for k, v in defaults.items() if k not in boxes and _listed(full[k]) != _listed(v)]
        if tick is None or values[tick] is True or changed:
            unshown.append((n, preset))
            continue
        values |= {tick: True, weight: full["weight"]} | {box: full[key] for key, box in boxes.items()}
    return list(values.values()), unshown


def _listed(value):
    """A tuple as a list: YAML gives a list where a default is a tuple (the character's other assistants)."""
    return list(value) if isinstance(value, tuple) else value


def kept_settings(spec) -> dict:
    """What a loaded job sets that the GPU's preset would also set (train_tab.apply_preset keeps these for the
    job's model and method): its model as the Model tab passes it on, its method, and the values in the preset's
    order."""
    keys = ("max_seq_length", "batch_size", "grad_accum", "lora_r", "learning_rate", "gradient_checkpointing")
    values = [getattr(spec, k) for k in keys]
    model = chosen_model(None, spec.model)
    return dict(model=model, method=spec.method, values=values, target_modules=list(spec.target_modules))


# The JobSpec settings `load` fills, in the order of wire_load's outputs.
LOADED = (
    "model",
    "method",
    "trust_remote_code",
    "data",
    "column_map",
    "chat_template",
    "data_config",
    "data_split",
    "max_seq_length",
    "name",
    "max_steps",
    "epochs",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "lora_r",
    "packing",
    "gradient_checkpointing",
    "objective",
    "dpo_beta",
    "num_generations",
    "max_new_tokens",
    "temperature",
    "train_embeddings",
    "embedding_learning_rate",
)


def wire_load(train: dict, model: dict, data: dict) -> None:
    """ "Load job.yaml" fills the Model, Data and Train tabs, then the Data tab checks the dataset as on an upload."""
    from ui.data_tab import inspect

    outputs = [model["custom"], model["method"], model["trust"], data["source"], data["mapping"], data["template"]]
    outputs += [data["config"], data["split"], data["max_len"]]
    outputs += [train[k] for k in ("name", "steps", "epochs", "lr", "batch", "accum", "rank", "packing")]
    outputs += [train[k] for k in ("checkpointing", "objective", "beta", "generations", "new_tokens", "temperature")]
    outputs += [train["train_embeddings"], train["embedding_lr"], *train["advanced"].values()]
    outputs += [*train["rewards"], train["loaded_job"]]
    outputs += [train["notice"]]
    data_inputs = [data["source"], model["custom_or_catalog"], data["mapping"], data["template"], data["max_len"]]
    # the job's objective, read from the Train tab's Radio: the Data tab's copy of it may not have followed it yet
    data_inputs += [data["config"], data["split"], data["row"], train["objective"]]
    train["load_job"].upload(load, train["load_job"], outputs).then(
        inspect, data_inputs, [data["path"], data["summary"], data["sample"], data["hist"]]
    )
