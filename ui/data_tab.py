"""Data tab: upload a dataset or generate an identity dataset; see its format and a rendered sample."""

import time

import gradio as gr

from engine import api

LANGS = [("English", "en"), ("中文", "zh"), ("Русский", "ru")]


def inspect_file(path: str | None) -> tuple[str, str, str]:
    """(dataset path, summary markdown, rendered sample) for an uploaded file."""
    if not path:
        return "", "No dataset yet: upload a file or generate an identity dataset.", ""
    try:
        info = api.inspect_data(path)
    except api.UserError as e:
        return "", f"**Cannot use this file:** {e}", ""
    return (
        path,
        f"**Format:** {info['format']} · **rows:** {info['rows']} · **columns:** {', '.join(info['columns'])}",
        info["sample"],
    )


def generate_identity(name: str, maker: str, description: str, languages: list[str]) -> tuple[str, str, str]:
    """Generate the identity dataset, save it under the workspace's data/ folder and inspect it."""
    try:
        rows = api.identity_dataset(name, maker, description, languages or ["en"])
        fname = api.safe_name(
            f"identity-{name.strip().replace(' ', '_')}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl", "dataset name"
        )
        path = api.save_jsonl(rows, api.workspace() / "data" / fname)
    except api.UserError as e:
        return "", f"**Cannot generate:** {e}", ""
    return inspect_file(str(path))


def build() -> dict:
    with gr.Tab("Data"):
        upload = gr.File(
            label="Dataset file (JSON or JSONL: Alpaca, ShareGPT or ChatML messages)",
            file_types=[".json", ".jsonl"],
            type="filepath",
        )
        with gr.Accordion("Identity dataset: teach the model its name and maker", open=True):
            with gr.Row():
                name = gr.Textbox(label="Name", placeholder="Nova")
                maker = gr.Textbox(label="Maker", placeholder="Tunesmith Labs")
            description = gr.Textbox(label="Description (optional)")
            languages = gr.CheckboxGroup(LANGS, value=["en"], label="Languages")
            generate = gr.Button("Generate identity dataset")
        path = gr.Textbox(label="Dataset in use", interactive=False)
        summary = gr.Markdown("No dataset yet: upload a file or generate an identity dataset.")
        sample = gr.Textbox(label="First example, as the model sees it", lines=8, interactive=False)
    upload.change(inspect_file, upload, [path, summary, sample])
    generate.click(generate_identity, [name, maker, description, languages], [path, summary, sample])
    return dict(
        upload=upload,
        name=name,
        maker=maker,
        description=description,
        languages=languages,
        generate=generate,
        path=path,
        summary=summary,
        sample=sample,
    )
