"""Export tab: write a run as a LoRA adapter or a merged 16-bit model into the workspace's exports/ folder."""

import gradio as gr

from engine import api
from ui.chat_tab import run_choices

FORMATS = [
    ("LoRA adapter (small; needs the base model)", "lora"),
    ("Merged 16-bit safetensors (standalone)", "merged16"),
]


def do_export(run_id: str, fmt: str, name: str) -> str:
    try:
        if not run_id:
            raise api.UserError("Pick a run to export.")
        out = api.workspace() / "exports" / api.safe_name(name, "export name")
        res = api.export(str(api.runs_dir() / run_id), fmt, out, log=lambda m: None)
    except api.UserError as e:
        return f"**Export failed:** {e}"
    checks = ", ".join(f"{k} {v}" for k, v in res.checks.items())
    return f"Exported **{res.format}** to `{res.path}` in {res.seconds} s ({', '.join(res.files)}). {checks}"


def build() -> dict:
    with gr.Tab("Export"):
        with gr.Row():
            run = gr.Dropdown(run_choices(), label="Run")
            refresh = gr.Button("Refresh runs")
        fmt = gr.Radio(FORMATS, value="lora", label="Format")
        name = gr.Textbox("my-model", label="Folder name (under exports/)")
        go = gr.Button("Export", variant="primary")
        result = gr.Markdown()
    refresh.click(lambda: gr.Dropdown(choices=run_choices()), None, run)
    go.click(do_export, [run, fmt, name], result)
    return dict(run=run, fmt=fmt, name=name, go=go, result=result)
