"""Data tab: upload a dataset or name a hub dataset, map its columns, pick a chat template, and see exactly what the
model will learn; or generate, edit and save an identity dataset."""

import re
import time

import gradio as gr
import pandas as pd

from engine import api
from ui import i18n

LANGS = [("English", "en"), ("中文", "zh"), ("Русский", "ru")]
TEMPLATES = ["auto", "chatml", "qwen", "llama-3", "mistral", "gemma", "alpaca", "plain"]
# typed as the filled one will be (bin labels as text): a plot first drawn with a numeric x keeps binning it as
# numbers, and its labels then read "NaN to NaN"
EMPTY_HIST = pd.DataFrame({"tokens": pd.Series([], dtype=str), "rows": pd.Series([], dtype=int)})


def parse_mapping(text: str) -> dict:
    """'question=instruction, answer=output' (commas or lines) -> {"question": "instruction", "answer": "output"}."""
    return api.parse_map([(text or "").replace("\n", ",")])


def inspect(
    source: str,
    model: str,
    mapping: str,
    template: str,
    max_len: float,
    config: str = "",
    split: str = "train",
    row: float = 1,
    objective: str = "",
    as_trained: tuple = ("", False),
):
    """(dataset in use, summary, masked sample of row `row`, histogram) for a file or hub dataset, in the format the
    Train tab's `objective` reads it in (UltraFeedback's rows: preference pairs for DPO and ORPO, chat for SFT);
    `as_trained`: the Train tab's (system prompt, learn the prompts too), which change what the run trains on and so
    the sample."""
    if not source:
        note = "No dataset yet: upload a file, name a hub dataset, or generate an identity dataset."
        return "", i18n.say(note), [], EMPTY_HIST
    try:  # a box cleared to type another number is None: the Train tab's sentence, the dataset kept in use
        api.check_settings({"max_seq_length": max_len}, {"max_seq_length": "Max sequence length"}, "lora")
    except api.UserError as e:
        return source, i18n.say(f"**Not previewed:** {e}"), [], EMPTY_HIST
    settings = dict(  # an empty Split box is 'train', as the Train tab's job reads it
        max_seq_length=int(max_len),
        template=template,
        config=config,
        split=split or "train",
        sample_row=int(row or 1),
        objective=objective or "",
    )
    settings.update(system_prompt=as_trained[0] or "", train_on_inputs=bool(as_trained[1]))
    model_note = ""
    try:
        try:
            info = api.inspect_data(source, model=model or None, column_map=parse_mapping(mapping), **settings)
        except api.ModelError as e:  # the dataset may well be fine: show it without the model, and blame the model
            model_note = f"**Cannot use the model `{model}`** (Model tab): {e}"
            info = api.inspect_data(source, model=None, column_map=parse_mapping(mapping), **settings)
    except api.UserError as e:
        return "", i18n.say(f"**Cannot use this dataset:** {e}"), [], EMPTY_HIST
    lines = [
        f"**Format:** {info['format']} · **rows:** {info['rows']} · **columns:** {', '.join(info['columns'])} · "
        f"showing example {info['sample_row']} of {info['rows']}"
    ]
    if "token_lengths" in info:
        t = info["token_lengths"]
        lines.append(
            f"Tokens per example: mean {t['mean']}, max {t['max']} (first {t['rows_counted']} rows); "
            f"{info['truncated_rows']} longer than {info['max_seq_length']}."
        )
        if info.get("context_note"):  # the length asked for is past the model's context: the counts are at it
            lines.append(f"ⓘ {info['context_note']}")
        if info.get("warning"):
            lines.append(f"⚠ {info['warning']}")
        # The plot orders text bins as text ("100-150" before "50-100"), and a sort order sent with the data blanks
        # it (Gradio 6.31): so each label is padded with leading spaces, which sort before digits and do not show.
        width = len(str(t["histogram"][-1]["from"]))
        bins = [f"{b['from']:>{width}}-{b['to']}" for b in t["histogram"]]
        hist = pd.DataFrame({"tokens": bins, "rows": [b["rows"] for b in t["histogram"]]})
        sample = [(text, "trained" if trained else None) for text, trained in info["sample_masked"]]
    else:
        if model_note or not model:
            lines.append(
                model_note or "Pick a model in the Model tab to see the sample as the model sees it, with token counts."
            )
        else:  # raw text, preference pairs, prompts: the model was picked, and has nothing to draw here
            lines.append(
                f"This {info['format']} dataset is shown as stored: the model's view and token counts are drawn for "
                "chat examples."
            )
        hist, sample = EMPTY_HIST, [(info["sample"], None)]
    return source, i18n.say("\n\n".join(lines)), sample, hist


def generate_identity(name: str, maker: str, description: str, languages: list[str]):
    """The identity rows as an editable table (nothing saved yet)."""
    try:
        rows = api.identity_dataset(name, maker, description, languages or ["en"])
    except api.UserError as e:
        return pd.DataFrame({"instruction": [], "output": []}), i18n.say(f"**Cannot generate:** {e}")
    table = pd.DataFrame({"instruction": [r["instruction"] for r in rows], "output": [r["output"] for r in rows]})
    return table, i18n.say(f"{len(rows)} question/answer pairs: edit them below, then save.")


def save_identity(table: pd.DataFrame, name: str) -> tuple[str, str]:
    """Save the (edited) identity table as JSONL under the workspace's data/ folder; returns (path, message)."""

    def text(cell) -> str:  # a cell left empty in the table is None or NaN, which str() would save as "nan"
        return "" if cell is None or (isinstance(cell, float) and pd.isna(cell)) else str(cell).strip()

    rows = [
        {"instruction": text(q), "input": "", "output": text(a)}
        for q, a in zip(table["instruction"], table["output"], strict=True)
        if text(q) and text(a)
    ]
    if not rows:
        return "", i18n.say("**Nothing to save:** generate the identity dataset first.")
    try:
        stem = re.sub(r"[^\w-]+", "_", name or "").strip("_") or "identity"  # "AC/DC" is a name, not a path
        fname = api.safe_name(f"identity-{stem}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl", "dataset name")
        path = api.save_jsonl(rows, api.workspace() / "data" / fname)
    except api.UserError as e:
        return "", i18n.say(f"**Cannot save:** {e}")
    return str(path), i18n.say(f"Saved {len(rows)} rows to `{path}`.")


def build(model_input) -> dict:
    with gr.Tab("Data"):
        with gr.Row():
            upload = gr.File(
                label="Dataset file (JSON, JSONL, CSV, TSV, Parquet, TXT)",
                type="filepath",
                file_types=[".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".md"],
            )
            with gr.Column():
                hub = gr.Textbox(label="…or a hub dataset id", placeholder="yahma/alpaca-cleaned")
                with gr.Row():
                    config = gr.Textbox(label="Config", placeholder="(default)")
                    split = gr.Textbox("train", label="Split")
                load_hub = gr.Button("Load hub dataset")
        with gr.Row():
            mapping = gr.Textbox(
                label="Column mapping (when your columns have other names)",
                placeholder="question=instruction, answer=output",
            )
            template = gr.Dropdown(TEMPLATES, value="auto", label="Chat template (auto: the model's own)")
            max_len = gr.Number(1024, label="Max sequence length", precision=0)
        with gr.Accordion("Identity dataset: teach the model its name and maker", open=True):
            with gr.Row():
                name = gr.Textbox(label="Name", placeholder="Nova")
                maker = gr.Textbox(label="Maker", placeholder="Tunesmith Labs")
            description = gr.Textbox(label="Description (optional)")
            languages = gr.CheckboxGroup(LANGS, value=["en"], label="Languages")
            generate = gr.Button("Generate")
            identity_note = gr.Markdown()
            table = gr.Dataframe(
                headers=["instruction", "output"], interactive=True, wrap=True, label="Identity examples (editable)"
            )
            save = gr.Button("Save and use this dataset")
        path = gr.Textbox(label="Dataset in use", interactive=False)
        summary = gr.Markdown("No dataset yet: upload a file, name a hub dataset, or generate an identity dataset.")
        sample = gr.HighlightedText(
            label="The example as the model sees it (highlighted: what it learns)", color_map={"trained": "green"}
        )
        with gr.Row():
            previous = gr.Button("◀ Previous example")
            row = gr.Number(1, label="Example", precision=0, minimum=1)
            following = gr.Button("Next example ▶")
        # y from 0: by default the axis starts at the smallest count, and the bars of that count are not drawn
        hist = gr.BarPlot(EMPTY_HIST, x="tokens", y="rows", label="Tokens per example", y_lim=[0, None])
    source = gr.State("")  # the file or hub id chosen last; `path` is cleared while it cannot be used
    objective = gr.State("sft")  # the Train tab's, built after this tab (wire_objective)
    as_trained = gr.State(("", False))  # the Train tab's settings that change the sample: wire_train
    view = [path, summary, sample, hist]
    inputs = [source, model_input, mapping, template, max_len, config, split, row, objective, as_trained]
    upload.change(lambda f: f or "", upload, source).then(inspect, inputs, view)
    load_hub.click(lambda h: h.strip(), hub, source).then(inspect, inputs, view)
    for setting in (mapping, template, max_len):
        setting.change(inspect, inputs, view)
    generate.click(generate_identity, [name, maker, description, languages], [table, identity_note])
    save.click(save_identity, [table, name], [source, identity_note]).then(inspect, inputs, view)
    # a new model re-renders the dataset, so an error the old model caused does not stay (the last change wins)
    model_input.change(inspect, inputs, view, trigger_mode="always_last")
    previous.click(lambda n: max(1, int(n or 1) - 1), row, row)
    following.click(lambda n: int(n or 1) + 1, row, row)
    row.change(inspect, inputs, view, trigger_mode="always_last")
    return dict(
        source=source,
        objective=objective,
        as_trained=as_trained,
        inputs=inputs,
        view=view,
        upload=upload,
        hub=hub,
        config=config,
        split=split,
        load_hub=load_hub,
        mapping=mapping,
        template=template,
        max_len=max_len,
        name=name,
        maker=maker,
        description=description,
        languages=languages,
        generate=generate,
        table=table,
        save=save,
        path=path,
        summary=summary,
        sample=sample,
        hist=hist,
        row=row,
    )


def wire_train(data: dict, advanced: dict) -> None:
    """The sample follows the Train tab's system prompt and "Learn the prompts too": the preview showed the rows
    without the system turn the run adds and with the prompts unmarked, whatever those boxes said."""
    boxes = [advanced["system_prompt"], advanced["train_on_inputs"]]
    for box in boxes:
        box.change(lambda *v: tuple(v), boxes, data["as_trained"]).then(
            inspect, data["inputs"], data["view"], trigger_mode="always_last"
        )


def wire_objective(data: dict, objective) -> None:
    """The Train tab's objective (a Radio built after this tab) is the one the summary names the format for, and a
    new one re-reads the dataset: DPO reads UltraFeedback's rows as preference pairs, SFT as chat."""
    objective.change(lambda o: o, objective, data["objective"]).then(
        inspect, data["inputs"], data["view"], trigger_mode="always_last"
    )
