"""Model tab: pick a catalog model, a hub id or a local folder, and the training method."""

import gradio as gr

from engine import api

METHODS = [
    ("QLoRA: 4-bit base, least memory", "qlora"),
    ("LoRA: 16-bit base, a little faster", "lora"),
    ("Full fine-tuning: all weights, most memory", "full"),
]


def catalog_choices() -> list[tuple[str, str]]:
    return [(f"{m['name']}  ({m['params_b']}B, {m['licence']})", m["id"]) for m in api.catalog()]


def chosen_model(catalog_id: str | None, custom: str) -> str:
    """The custom hub id or folder wins over the catalog pick."""
    return (custom or "").strip() or (catalog_id or "")


def fit_badge(model: str, method: str) -> str:
    """One line: will this run fit the detected GPU (or the CPU), with the estimate's numbers."""
    try:
        est = api.estimate(model, method)
    except api.UserError as e:
        return f"Memory estimate unavailable: {e}"
    if est["tier_gb"] is None:
        return (
            f"No GPU detected: training runs on the CPU (slow); about {est['peak_vram_gb']:.1f} GB of RAM at "
            f"{est['seq']} tokens × {est['batch']}."
        )
    where = f"this GPU ({est['vram_budget_gib']:.0f} GiB, {est['tier_gb']} GB preset)"
    if est["fits"]:
        return f"✅ Fits {where}: about {est['peak_vram_gb']:.1f} GB peak at {est['seq']} tokens × {est['batch']}."
    reason = (est["preset"] or {}).get("reason", f"about {est['peak_vram_gb']:.1f} GB at {est['seq']} tokens")
    return f"⚠ Will not fit {where}: {reason}. Try QLoRA or a smaller model."


def describe(catalog_id, custom, method) -> str:
    model = chosen_model(catalog_id, custom)
    if not model:
        return "Pick a model from the list or type a hub id / local folder."
    return f"**Model:** `{model}` · **method:** {method}\n\n{fit_badge(model, method)}"


def build() -> dict:
    with gr.Tab("Model"):
        catalog = gr.Dropdown(catalog_choices(), label="Model catalog", value=None)
        custom = gr.Textbox(label="…or a hub id or local folder", placeholder="Qwen/Qwen3-0.6B or /path/to/model")
        method = gr.Radio(METHODS, value="qlora", label="Method")
        trust = gr.Checkbox(
            False, label="Trust remote code (runs Python shipped with the model: only for models you trust)"
        )
        summary = gr.Markdown(describe(None, "", "qlora"))
        chosen = gr.Textbox(visible=False)
    for comp in (catalog, custom, method):
        comp.change(describe, [catalog, custom, method], summary)
        comp.change(chosen_model, [catalog, custom], chosen)
    return dict(catalog=catalog, custom=custom, method=method, trust=trust, summary=summary, custom_or_catalog=chosen)
