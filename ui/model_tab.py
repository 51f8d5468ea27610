"""Model tab: pick a catalog model, a hub id or a local folder, and the training method; download a hub model ahead
of training with its progress shown."""

import gradio as gr

from engine import api
from ui import i18n

METHODS = [
    ("QLoRA: 4-bit base, least memory", "qlora"),
    ("LoRA: 16-bit base, a little faster", "lora"),
    ("Full fine-tuning: all weights, most memory", "full"),
]


def catalog_choices() -> list[tuple[str, str]]:
    return [(f"{m['name']}  ({m['params_b']}B, {m['licence']})", m["id"]) for m in api.catalog()]


def chosen_model(catalog_id: str | None, custom: str) -> str:
    """The custom hub id or folder wins over the catalog pick. A trailing slash is dropped: a folder is the same
    without it, and a hub id ('Qwen/Qwen3-4B/', copied from a path) is one only without it."""
    return (custom or "").strip().rstrip("/\\").strip() or (catalog_id or "")


def run_estimate(model: str, method: str, objective: str = "sft", train_embeddings: bool = False) -> tuple[int, dict]:
    """(GPUs, api.estimate) of the run the Model and Train forms ask for, planned as the run plans it: per GPU of
    the GPUs it trains on (every visible one; one for DPO, ORPO and GRPO), with continued pretraining's trained
    embeddings where the objective and the box ask for them, and the objective's own plan (only SFT and continued
    pretraining free gradients in the backward). The fit badge and the Train tab's preset both show this one
    estimate."""
    gpus = api.run_gpus(objective, found=len(api.gpus_found()))
    embeddings = counts_embeddings(objective, train_embeddings)
    return gpus, api.estimate(model, method, gpus=gpus, train_embeddings=embeddings, objective=objective)


def counts_embeddings(objective: str, train_embeddings: bool) -> bool:
    """Whether the run trains the embeddings: the box is only read for continued pretraining."""
    return objective == "pretrain" and bool(train_embeddings)


def fit_badge(model: str, method: str, objective: str = "sft", train_embeddings: bool = False) -> str:
    """One line: will this run fit the detected GPU (or the CPU), with the figures of the plan the run will make."""
    try:
        gpus, est = run_estimate(model, method, objective, train_embeddings)
    except api.UserError as e:
        return f"Memory estimate unavailable: {e}"
    shape = f"{est['seq']} tokens × {est['batch']}"
    # the Train form's box changes the figures (their copies, gradients and optimizer states): the line says so
    counted = " with trained embeddings" if counts_embeddings(objective, train_embeddings) else ""
    if est["vram_budget_gib"] is None:
        if not est["fits"]:
            return f"⚠ Will not fit this machine{counted}: {est['reason']}"
        return (
            f"No GPU detected: training runs on the CPU (slow); about {est['peak_ram_gib']:.1f} GiB of RAM at "
            f"{shape}{counted}."
        )
    tier = f", {est['tier_gb']} GB preset" if est["tier_gb"] else ""
    where = f"this GPU ({est['vram_budget_gib']:.0f} GiB{tier})"
    if gpus > 1:  # the figures are per GPU: full fine-tuning is sharded over them, LoRA holds the same on each
        where = f"each of the {gpus} GPUs ({est['vram_budget_gib']:.0f} GiB{tier})"
    if not est["fits"]:
        return f"⚠ Will not fit {where}{counted}: {est['reason']}"  # the reason says what to change
    offload = est["preset"]["offload"]
    if offload != "none":
        held = f"{counted} and" if counted else " with"  # one "with": "with trained embeddings and activations in"
        return (
            f"✅ Fits {where}{held} {offload} in host RAM (slower): about {est['peak_vram_gib']:.1f} GiB on the GPU "
            f"and {est['peak_ram_gib']:.0f} GiB of RAM at {shape}."
        )
    return f"✅ Fits {where}{counted}: about {est['peak_vram_gib']:.1f} GiB peak at {shape}."


def describe(catalog_id, custom, method, objective="sft", train_embeddings=False) -> str:
    model = chosen_model(catalog_id, custom)
    if not model:
        return i18n.say("Pick a model from the list or type a hub id / local folder.")
    badge = fit_badge(model, method, objective, train_embeddings)
    return i18n.say(f"**Model:** `{model}` · **method:** {method}\n\n{badge}\n\n{gpus_line(objective)}")


def gpus_line(objective: str = "sft") -> str:
    """The GPUs found, which a run of `objective` trains on: all of them, one process each, unless the job's `gpus`
    says fewer; the first of them for DPO, ORPO and GRPO (api.run_gpus)."""
    found = api.gpus_found()
    if not found:
        return "GPUs found: none."
    names = ", ".join(f"{n} x {name}" for name, n in _counted(found))
    if len(found) == 1:
        return f"GPUs found: 1 ({names})."
    if api.run_gpus(objective, len(found)) == 1:  # engine.training.launch uses the first visible one
        return f"GPUs found: {len(found)} ({names}), a {objective.upper()} run trains on the first of them."
    return f"GPUs found: {len(found)} ({names}), a run trains on all of them."


def _counted(names: list[str]) -> list[tuple[str, int]]:
    return [(name, names.count(name)) for name in dict.fromkeys(names)]


def progress(st) -> str:
    """One line for a download's state, in the page's language: bytes so far of the total, or the engine's sentence
    when it ended."""
    return i18n.say(_progress(st))


def _progress(st) -> str:
    if st.state == "failed":
        return f"**Download failed:** {st.message}"
    if st.state == "done":
        return st.message
    done = st.done_bytes / 1e6
    if st.total_bytes:
        share = 100 * st.done_bytes / st.total_bytes
        return f"Downloading `{st.model}`: {done:,.1f} of {st.total_bytes / 1e6:,.1f} MB ({share:.0f}%)"
    return f"Downloading `{st.model}`: {done:,.1f} MB so far"


def download(catalog_id, custom):
    """Start fetching the chosen model; returns (progress line, the model being downloaded, timer)."""
    model = chosen_model(catalog_id, custom)
    if not model:
        return i18n.say("Pick a model from the list or type a hub id / local folder."), "", gr.Timer(active=False)
    try:
        st = api.start_download(model)
    except api.UserError as e:
        return i18n.say(f"**Download failed:** {e}"), "", gr.Timer(active=False)
    return progress(st), st.model, gr.Timer(active=not st.finished)


def download_view(model: str):
    """(progress line, timer) of the download under way."""
    if not model:
        return "", gr.Timer(active=False)
    st = api.poll_download(model)
    return progress(st), gr.Timer(active=not st.finished)


def build() -> dict:
    with gr.Tab("Model"):
        catalog = gr.Dropdown(catalog_choices(), label="Model catalog", value=None)
        custom = gr.Textbox(label="…or a hub id or local folder", placeholder="Qwen/Qwen3-0.6B or /path/to/model")
        method = gr.Radio(METHODS, value="qlora", label="Method")
        trust = gr.Checkbox(
            False, label="Trust remote code (runs Python shipped with the model: only for models you trust)"
        )
        summary = gr.Markdown(describe(None, "", "qlora"))
        with gr.Row():
            fetch = gr.Button("Download", scale=0)
            fetched = gr.Markdown()
        chosen = gr.Textbox(visible=False)
        downloading = gr.State("")
        timer = gr.Timer(1.0, active=False)
    fetch.click(download, [catalog, custom], [fetched, downloading, timer])
    timer.tick(download_view, downloading, [fetched, timer])
    for comp in (catalog, custom, method):
        comp.change(chosen_model, [catalog, custom], chosen)
    return dict(
        catalog=catalog,
        custom=custom,
        method=method,
        trust=trust,
        summary=summary,
        download=fetch,
        download_progress=fetched,
        custom_or_catalog=chosen,
    )


def wire_train(model: dict, train: dict) -> None:
    """The fit badge plans with the Train tab's objective and embeddings box (built after this tab), as its preset and
    the run do, and is made again when they change."""
    inputs = [model["catalog"], model["custom"], model["method"], train["objective"], train["train_embeddings"]]
    for comp in inputs:
        comp.change(describe, inputs, model["summary"])
