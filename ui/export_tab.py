"""Export tab: write a run as a LoRA adapter, a merged 16-bit model, or a GGUF file (with an Ollama Modelfile) into
the workspace's exports/ folder, as a background job with a log and a Cancel button; offer it as a browser download
with its size (a folder zipped, a GGUF file with its Modelfile), and optionally push it to the Hugging Face hub (the
token typed here, or HF_TOKEN; it is never shown or written anywhere)."""

import re

import gradio as gr

from engine import api
from ui import i18n
from ui.chat_tab import run_choices

FORMATS = [
    ("LoRA adapter (small; needs the base model)", "lora"),
    ("Merged 16-bit safetensors (standalone)", "merged16"),
    ("GGUF Q4_K_M (Ollama / llama.cpp, smallest)", "gguf-q4_k_m"),
    ("GGUF Q5_K_M", "gguf-q5_k_m"),
    ("GGUF Q6_K", "gguf-q6_k"),
    ("GGUF Q8_0", "gguf-q8_0"),
    ("GGUF MXFP4 experts, rest Q8_0 (mixture-of-experts models)", "gguf-mxfp4"),
    ("GGUF F16", "gguf-f16"),
    ("GGUF BF16", "gguf-bf16"),
]


def formats_for(run_id: str):
    """The format choices for a run: GGUF options are removed, with the reason, where its model cannot be exported."""
    if not run_id:
        return gr.Radio(choices=FORMATS), ""
    try:
        ok, why = api.gguf_support(str(api.find_run(run_id)))
        full = api.read_job(api.find_run(run_id) / "job.yaml").method == "full"  # no adapter to export
    except api.UserError as e:
        ok, why, full = False, str(e), False
    kept = [f for f in FORMATS if not (full and f[1] == "lora")]
    picked = {"value": "merged16"} if full else {}
    if ok:
        refused = api.formats_refused(str(api.find_run(run_id)))  # e.g. MXFP4 experts for a model without experts
        return gr.Radio(choices=[f for f in kept if f[1] not in refused], **picked), ""
    choices = [f for f in kept if not f[1].startswith("gguf")]
    return gr.Radio(choices=choices, value=choices[0][1]), i18n.say(f"GGUF: {why}")


KIND = {"lora": "lora", "merged16": "merged"}  # a GGUF folder is named after its quantization ("nova-q4_k_m")


def free_name(run_id: str, fmt: str) -> str:
    """The folder an export goes to when the box is left blank: the run's name and the format's ("nova-lora",
    "nova-q4_k_m"), the first one free under exports/. One fixed default made a first run's second export (the GGUF,
    then the adapter) fail with 'already exists'."""
    named = re.fullmatch(r"\d{8}-\d{6}-(.+)", run_id)  # a run id is its start time and its name
    stem = f"{named[1] if named else run_id}-{KIND.get(fmt, fmt.removeprefix('gguf-'))}"
    exports, name, n = api.workspace() / "exports", stem, 1
    while (exports / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def suggest_name(run_id: str, fmt: str):
    """The folder box's placeholder: the name a blank box exports to. Only the placeholder changes: an answer that
    set the box's value arrived after a name typed quickly after the pick, and replaced it."""
    return gr.Textbox(placeholder=free_name(run_id, fmt) if run_id and fmt else "")


def best_for(run_id: str):
    """The "best weights" checkbox: shown, unticked, where the run kept its best weights by validation loss."""
    try:
        best = api.best_checkpoint(run_id) if run_id else None
    except api.UserError:
        best = None
    label = f"Export the best weights by validation loss ({best.name}) instead of the last" if best else ""
    return gr.Checkbox(value=False, visible=best is not None, label=i18n.say(label))


def start(
    run_id: str,
    fmt: str,
    name: str,
    push: bool = False,
    repo: str = "",
    token: str = "",
    private: bool = False,
    best: bool = False,
):
    """Start the export job (and the upload after it when `push`) of the run's last weights, or of its best by
    validation loss when `best`; returns (job, status markdown, log, timer, Cancel button: clickable while the job
    runs, as the timer then ticks, and `view` disables it when the job has ended)."""
    try:
        if not run_id:
            raise api.UserError("Pick a run to export.")
        if push and not repo.strip():
            raise api.UserError("Type the hub repository to push to, as user/name.")
        name = (name or "").strip() or free_name(run_id, fmt)
        out = api.workspace() / "exports" / api.safe_name(name, "export name")
        hub = dict(push_to_hub=repo.strip(), token=(token or "").strip(), private=bool(private)) if push else {}
        source = api.best_checkpoint(run_id) if best else api.find_run(run_id)
        if source is None:
            raise api.UserError("This run kept no best weights (it had no validation set); untick 'best'.")
        job = api.start_export(str(source), fmt, out, **hub)
    except api.UserError as e:
        return None, i18n.say(f"**Export failed:** {e}"), "", gr.Timer(active=False), gr.Button(interactive=False)
    return job, i18n.say(f"Exporting **{fmt}** to `{job.out}`…"), "", gr.Timer(active=True), gr.Button(interactive=True)


def offer(result: dict | None):
    """The export's files as a download component (hidden until there are some). They are served where they lie
    (set_static_paths, these files only): Gradio would otherwise copy a model of many GB into its cache first."""
    files = [d["path"] for d in (result or {}).get("downloads", [])]
    if files:
        gr.set_static_paths(files)
    return gr.File(value=files or None, visible=bool(files))


def done_text(r: dict) -> str:
    """What a finished export says: where it is, its checks as a sentence, and its downloads with their sizes."""
    text = f"Exported **{r['format']}** to `{r['path']}` in {r['seconds']} s. {r.get('summary', '')}"
    if r.get("downloads"):
        files = ", ".join(f"**{d['name']}** ({d['size']})" for d in r["downloads"])
        text += f"\n\nDownload below: {files}."
    if r.get("url"):
        text += f"\n\nUploaded to {r['url']}."
    return text


def view(job):
    """(status markdown, log, timer, downloads, Cancel button) of the export job: Cancel is clickable while the timer
    ticks, both from one read of the job."""
    if job is None:
        return "", "", gr.Timer(active=False), offer(None), gr.Button(interactive=False)
    st = api.poll_export(job)
    if st.state == "done":
        text = done_text(st.result)
    elif st.state == "failed" and st.result:  # the export is complete; its download (zip) or its upload failed
        what = "Upload failed" if "downloads" in st.result else "Exported; its download could not be prepared"
        text = f"**{what}:** {st.message}"
    elif st.state in ("failed", "cancelled"):
        text = f"**Export {st.state}:** {st.message}"
    else:
        text = f"Exporting… {st.message}"
    running = not st.finished
    return (
        i18n.say(text),
        st.log,
        gr.Timer(active=running),
        offer(None if running else st.result),
        gr.Button(interactive=running),
    )


def follow():
    """On page load: the export still running (started before a reload, or in another tab) is this page's job again,
    with its progress, its log and Cancel, as on the page that started it. Returns (job, *view's outputs)."""
    running = api.running_exports()
    if not running:
        return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
    return running[0], *view(running[0])


def cancel(job) -> str:
    if job is None:
        return i18n.say("No export to cancel.")
    st = api.cancel_export(job)
    return i18n.say(f"**Export {st.state}:** {st.message}")


def build() -> dict:
    with gr.Tab("Export") as tab:
        with gr.Row():
            run = gr.Dropdown(run_choices(), value=None, label="Run")  # a pick sets its formats (see chat_tab)
            refresh = gr.Button("Refresh runs")
        best = gr.Checkbox(False, visible=False)
        fmt = gr.Radio(FORMATS, value="lora", label="Format")
        why = gr.Markdown()
        name = gr.Textbox(label="Folder name (under exports/)", info="Blank: the name shown in grey.")
        push = gr.Checkbox(False, label="Push to the Hugging Face hub")
        with gr.Row(visible=False) as hub_row:
            repo = gr.Textbox(label="Hub repository (user/name)")
            token = gr.Textbox(label="Hugging Face token (blank: HF_TOKEN or your `hf auth login`)", type="password")
            private = gr.Checkbox(True, label="Create it private")
        with gr.Row():
            go = gr.Button("Export", variant="primary")
            stop = gr.Button("Cancel export", variant="stop", interactive=False)  # while an export runs (view)
        result = gr.Markdown()
        downloads = gr.File(label="Download", file_count="multiple", interactive=False, visible=False)
        with gr.Accordion("Export log", open=False):
            log = gr.Textbox(lines=10, interactive=False, label="Export log lines", show_label=False)
        job = gr.State(None)
        timer = gr.Timer(1.0, active=False)
    for shown in (refresh.click, tab.select):  # runs finished since the page loaded appear without a Refresh
        shown(lambda: gr.Dropdown(choices=run_choices()), None, run)
    run.change(formats_for, run, [fmt, why])
    run.change(best_for, run, best)
    for picked in (run.change, fmt.change):  # the name shown follows the run and the format
        picked(suggest_name, [run, fmt], name)
    push.change(lambda on: gr.Row(visible=on), push, hub_row)
    go.click(start, [run, fmt, name, push, repo, token, private, best], [job, result, log, timer, stop]).then(
        lambda: offer(None), None, downloads
    )
    timer.tick(view, job, [result, log, timer, downloads, stop])
    gr.on(None, follow, None, [job, result, log, timer, downloads, stop])  # on page load
    stop.click(cancel, job, result)
    return dict(
        run=run,
        best=best,
        fmt=fmt,
        why=why,
        name=name,
        push=push,
        repo=repo,
        token=token,
        private=private,
        go=go,
        stop=stop,
        result=result,
        downloads=downloads,
        log=log,
        timer=timer,
    )
