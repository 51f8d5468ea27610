"""Export tab: write a run as a LoRA adapter, a merged 16-bit model, or a GGUF file (with an Ollama Modelfile) into
the workspace's exports/ folder."""

import gradio as gr

from engine import api
from ui.chat_tab import run_choices

FORMATS = [
    ("LoRA adapter (small; needs the base model)", "lora"),
    ("Merged 16-bit safetensors (standalone)", "merged16"),
    ("GGUF Q4_K_M (Ollama / llama.cpp, smallest)", "gguf-q4_k_m"),
    ("GGUF Q5_K_M", "gguf-q5_k_m"),
    ("GGUF Q6_K", "gguf-q6_k"),
    ("GGUF Q8_0", "gguf-q8_0"),
    ("GGUF F16", "gguf-f16"),
    ("GGUF BF16", "gguf-bf16"),
]


def formats_for(run_id: str):
    """The format choices for a run: GGUF options are removed, with the reason, where its model cannot be exported."""
    if not run_id:
        return gr.Radio(choices=FORMATS), ""
    try:
        ok, why = api.gguf_support(str(api.runs_dir() / run_id))
    except api.UserError as e:
        ok, why = False, str(e)
    if ok:
        return gr.Radio(choices=FORMATS), ""
    return gr.Radio(choices=[f for f in FORMATS if not f[1].startswith("gguf")], value="lora"), f"GGUF: {why}"


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
        why = gr.Markdown()
        name = gr.Textbox("my-model", label="Folder name (under exports/)")
        go = gr.Button("Export", variant="primary")
        result = gr.Markdown()
    refresh.click(lambda: gr.Dropdown(choices=run_choices()), None, run)
    run.change(formats_for, run, [fmt, why])
    go.click(do_export, [run, fmt, name], result)
    return dict(run=run, fmt=fmt, why=why, name=name, go=go, result=result)
