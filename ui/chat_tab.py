"""Chat tab: talk to a finished run (its adapter over the base model) or any model, streamed."""

import gradio as gr

from engine import api

_loaded: dict[str, object] = {}  # source -> loaded chat model, shared by sessions (weights are read-only)


def run_choices() -> list[str]:
    """Finished runs (by id)."""
    return [r.run_id for r in api.list_runs() if r.state in ("done", "cancelled")]


def chat_choices() -> list[str]:
    """What the Chat tab offers: finished runs, then exported GGUF files (by path)."""
    return run_choices() + [str(p) for p in api.exported_gguf_files()]


def load(source: str) -> str:
    if not source:
        return "Pick a run or type a model."
    try:
        path = str(api.runs_dir() / source) if source in run_choices() else source
        _loaded.clear()  # one model in memory at a time
        _loaded[source] = api.Chat(path)
    except api.UserError as e:
        return f"**Cannot load:** {e}"
    return f"Loaded `{source}`."


def respond(source: str, message: str, history: list[dict], system: str, temperature: float, max_new: float):
    """Stream the reply into the chat history (a list of {"role", "content"})."""
    history = list(history or [])
    if source not in _loaded:
        status = load(source)
        if source not in _loaded:
            yield history + [{"role": "assistant", "content": status}], ""
            return
    msgs = (
        ([{"role": "system", "content": system}] if system.strip() else [])
        + history
        + [{"role": "user", "content": message}]
    )
    history.append({"role": "user", "content": message})
    for text in _loaded[source].stream(msgs, max_new_tokens=int(max_new), temperature=float(temperature)):
        yield history + [{"role": "assistant", "content": text}], ""


def build() -> dict:
    with gr.Tab("Chat"):
        with gr.Row():
            source = gr.Dropdown(chat_choices(), label="Run, GGUF file or model", allow_custom_value=True)
            refresh = gr.Button("Refresh runs")
            load_btn = gr.Button("Load")
        loaded = gr.Markdown()
        system = gr.Textbox(label="System prompt", value="")
        with gr.Row():
            temperature = gr.Slider(0, 1.5, 0, step=0.05, label="Temperature (0: greedy)")
            max_new = gr.Slider(16, 2048, 256, step=16, label="Max new tokens")
        chatbot = gr.Chatbot(label="Chat", height=360)
        message = gr.Textbox(label="Message", placeholder="Who are you?")
        send = gr.Button("Send", variant="primary")
    refresh.click(lambda: gr.Dropdown(choices=chat_choices()), None, source)
    load_btn.click(load, source, loaded)
    for trigger in (send.click, message.submit):
        trigger(respond, [source, message, chatbot, system, temperature, max_new], [chatbot, message])
    return dict(source=source, load=load_btn, loaded=loaded, system=system, chatbot=chatbot, message=message, send=send)
