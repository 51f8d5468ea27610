"""Chat tab: talk to a finished run (its adapter over the base model) or any model, streamed, with the reply's
tokens/s, sampling sliders set to the model family's defaults, and the base and fine-tuned models side by side."""

import threading

import gradio as gr

from engine import api
from ui import i18n

_loaded: dict[str, object] = {}  # source -> loaded chat model, shared by sessions (weights are read-only)
_loading = threading.Lock()  # one load at a time: sessions asking for the same model at once share one copy
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")  # the sliders, in this order
_STREAMS: dict = {}  # browser session -> a marker object per reply it streams now: Stop is clickable while any
_streams_lock = threading.Lock()  # replies start and end in Gradio's worker threads
TAB_ELEM = "chat-tab"  # Gradio names its tab button "chat-tab-button": "Chat with this run" clicks it (train_tab)
PICK = "Pick a finished run or a GGUF file in 'Run, GGUF file or model' above (or type a model), then send again."


def run_choices() -> list[str]:
    """Finished runs (by id)."""
    return [r.run_id for r in api.list_runs() if r.state in ("done", "cancelled")]


def chat_choices() -> list[str]:
    """What the Chat tab offers: finished runs, then exported GGUF files (by path)."""
    return run_choices() + [str(p) for p in api.exported_gguf_files()]


def _path(source: str) -> str:
    """A run id as its folder; anything else (a model folder, a hub id, a .gguf file) as typed. A run still training
    is refused in words: it has no final weights yet (a typed id of one read as a missing model folder)."""
    run = next((r for r in api.list_runs() if r.run_id == source), None)
    if run is None:
        return source
    if not run.finished:
        raise api.UserError(
            f"Run `{source}` is still training: chat with it once it has finished, or cancel it (a cancelled run "
            "answers from its last checkpoint)."
        )
    return str(run.run_dir)


def _chat(source: str):
    """The loaded chat model of `source`, loaded now if needed (one model in memory at a time)."""
    if not source:
        raise api.UserError(PICK)
    with _loading:
        if source not in _loaded:
            _loaded.clear()
            _loaded[source] = api.Chat(_path(source))
        return _loaded[source]


def unload() -> None:
    """Let go of the chat's model (a reply being written keeps it until it ends), so that an evaluation loading its
    own copy does not hold two in GPU memory; the next message loads it again. Collected now: garbage cycles left by
    its load can still refer to it, and would keep its memory until Python's next full collection."""
    import gc

    with _loading:
        _loaded.clear()
    gc.collect()


def load(source: str) -> str:
    try:
        _chat(source)
    except api.UserError as e:
        return i18n.say(f"**Cannot load:** {e}")
    return i18n.say(f"Loaded `{source}`.")


def sampling_values(source: str) -> list:
    """The sampling sliders for a picked run, model or GGUF file: its family's defaults, or the model's own where
    its generation_config.json sets them (sliders stay as they are when nothing can be read)."""
    try:
        values = api.sampling_defaults(_path(source)) if source else None
    except api.UserError:
        values = None
    return [gr.skip()] * len(SAMPLING) if values is None else [values[k] for k in SAMPLING]


def defaults(source: str) -> list:
    """What picking `source` sets: the sliders, then the System prompt box, which takes a run's own system prompt
    (the turn its examples began with in training; cleared for a run trained without one) and stays as typed for a
    model or a GGUF file."""
    try:
        system = api.system_prompt(_path(source)) if source else None
    except api.UserError:
        system = None
    return [*sampling_values(source), gr.skip() if system is None else system]


def _text(content) -> str:
    """A chat message's text: Gradio 6 hands the Chatbot's history back with content as a list of parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _messages(system: str, history: list[dict], message: str) -> list[dict]:
    turns = [{"role": m["role"], "content": _text(m["content"])} for m in history]
    return (
        ([{"role": "system", "content": system}] if system.strip() else [])
        + turns
        + [{"role": "user", "content": message}]
    )


def _sampling(temperature, top_p, top_k, min_p, repetition_penalty, max_new) -> dict:
    return dict(
        max_new_tokens=int(max_new),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        min_p=float(min_p),
        repetition_penalty=float(repetition_penalty),
    )


def speed(stats) -> str:
    line = f"{stats.tokens} tokens, {stats.tokens_per_s:.1f} tok/s"
    return f"{line} · {stats.note}" if stats.note else line  # the model's context cut the reply


def respond(
    source: str,
    message: str,
    history: list[dict],
    system: str,
    temperature: float,
    top_p: float,
    top_k: float,
    min_p: float,
    repetition_penalty: float,
    max_new: float,
):
    """Stream the reply into the chat history (a list of {"role", "content"}); yields (history, cleared message box,
    "N tokens, X tok/s"). An empty message is not sent; with no run picked, or one that cannot load, the typed
    message stays in its box and the line under the chat says what to do."""
    history = list(history or [])
    if not (message or "").strip():
        yield history, message, i18n.say("Type a message first.")
        return
    try:
        chat = _chat(source)
    except api.UserError as e:
        yield history, message, i18n.say(f"**Cannot load:** {e}")
        return
    msgs = _messages(system, history, message)
    history.append({"role": "user", "content": message})
    stats, text = api.ReplyStats(), ""
    sampling = _sampling(temperature, top_p, top_k, min_p, repetition_penalty, max_new)
    try:
        for text in chat.stream(msgs, stats=stats, **sampling):
            yield history + [{"role": "assistant", "content": text}], "", i18n.say(speed(stats))
    except api.UserError as e:  # the conversation fills the model's context, or another reply is being written
        yield history[:-1], message, i18n.say(f"**Not sent:** {e}")
        return
    yield (
        history + [{"role": "assistant", "content": text}],
        "",
        i18n.say(speed(stats)),
    )  # the time of the last step included


def compare(
    source: str,
    prompt: str,
    system: str,
    temperature: float,
    top_p: float,
    top_k: float,
    min_p: float,
    repetition_penalty: float,
    max_new: float,
):
    """Stream the base model's and the fine-tuned model's replies to the same prompt, from one loaded copy of the
    weights (the adapter switched off for the base); yields (base chat, fine-tuned chat, speeds). An empty prompt is
    not sent."""
    if not (prompt or "").strip():
        yield [], [], i18n.say("Type a prompt first.")
        return
    asked = [{"role": "user", "content": prompt}]
    stats = (api.ReplyStats(), api.ReplyStats())  # (fine-tuned, base)
    sampling = _sampling(temperature, top_p, top_k, min_p, repetition_penalty, max_new)
    shown = (("Base", stats[1]), ("Fine-tuned", stats[0]))  # in the order of the panels: base left, fine-tuned right
    try:
        tuned = base = ""
        for tuned, base in _chat(source).compare(_messages(system, [], prompt), stats=stats, **sampling):
            speeds = [f"{name}: {speed(s)}" for name, s in shown if s.tokens]
            yield (
                asked + [{"role": "assistant", "content": base}],
                asked + [{"role": "assistant", "content": tuned}],
                i18n.say(" · ".join(speeds)),
            )
        speeds = [f"{name}: {speed(s)}" for name, s in shown if s.tokens]  # with a note of a reply the context cut
        yield (
            asked + [{"role": "assistant", "content": base}],
            asked + [{"role": "assistant", "content": tuned}],
            i18n.say(" · ".join(speeds)),
        )
    except api.UserError as e:
        yield [], [], i18n.say(f"**Cannot compare:** {e}")


def _streaming(request, stream):
    """`stream`'s outputs with the Stop button's state added: clickable from the first yield, and at the end only
    while another reply of this session still streams (Send and Compare can run at once; one refused at once must
    not disable the Stop of the other). A stream that raises still sets Stop first; one cancelled by Stop is
    disabled by Stop itself (`stopped`)."""
    session, mine = getattr(request, "session_hash", None), object()
    with _streams_lock:
        _STREAMS.setdefault(session, set()).add(mine)
    error = None
    try:
        yield gr.skip(), gr.skip(), gr.skip(), gr.Button(interactive=True)
        for out in stream:
            yield *out, gr.skip()
    except Exception as e:  # noqa: BLE001 (raised again below, once Stop is set)
        error = e
    finally:
        stream.close()  # cancelled by Stop: the reply lets go of the model now, not when collected
        with _streams_lock:
            left = _STREAMS.get(session, set())
            left.discard(mine)
            if not left:
                _STREAMS.pop(session, None)
            streaming = session in _STREAMS
    yield gr.skip(), gr.skip(), gr.skip(), gr.Button(interactive=streaming)
    if error is not None:
        raise error


def respond_stoppable(
    source,
    message,
    history,
    system,
    temperature,
    top_p,
    top_k,
    min_p,
    repetition_penalty,
    max_new,
    request: gr.Request = None,
):
    """respond, wired with the Stop button as a fourth output (_streaming)."""
    sampling = (temperature, top_p, top_k, min_p, repetition_penalty, max_new)
    yield from _streaming(request, respond(source, message, history, system, *sampling))


def compare_stoppable(
    source, prompt, system, temperature, top_p, top_k, min_p, repetition_penalty, max_new, request: gr.Request = None
):
    """compare, wired with the Stop button as a fourth output (_streaming)."""
    sampling = (temperature, top_p, top_k, min_p, repetition_penalty, max_new)
    yield from _streaming(request, compare(source, prompt, system, *sampling))


def stopped(request: gr.Request = None):
    """Stop: this session's replies are cancelled (their streams closed, so they set Stop no more); Stop is disabled."""
    with _streams_lock:
        _STREAMS.pop(getattr(request, "session_hash", None), None)
    return gr.Button(interactive=False)


def build() -> dict:
    with gr.Tab("Chat", elem_id=TAB_ELEM) as tab:
        with gr.Row():
            # nothing picked at first (Gradio would pick the first choice): a pick fills the run's system prompt and
            # sliders, which a run shown picked when the page loads would go without
            source = gr.Dropdown(chat_choices(), value=None, label="Run, GGUF file or model", allow_custom_value=True)
            refresh = gr.Button("Refresh runs")
            load_btn = gr.Button("Load")
        loaded = gr.Markdown()
        system = gr.Textbox(label="System prompt", value="")
        with gr.Row():
            temperature = gr.Slider(0, 1.5, 0, step=0.05, label="Temperature (0: greedy)")
            top_p = gr.Slider(0.05, 1, 1, step=0.05, label="Top-p")
            top_k = gr.Slider(0, 200, 0, step=1, label="Top-k (0: off)")
        with gr.Row():
            min_p = gr.Slider(0, 0.5, 0, step=0.01, label="Min-p")
            repetition_penalty = gr.Slider(1, 2, 1, step=0.05, label="Repetition penalty")
            max_new = gr.Slider(16, 2048, 256, step=16, label="Max new tokens")
        chatbot = gr.Chatbot(label="Chat", height=360)
        speed_md = gr.Markdown()
        message = gr.Textbox(label="Message", placeholder="Who are you?")
        with gr.Row():
            send = gr.Button("Send", variant="primary")
            stop = gr.Button("Stop", variant="stop", scale=0, interactive=False)  # while a reply streams
        with gr.Accordion("Base vs fine-tuned (same prompt)", open=False):
            with gr.Row():
                base_bot = gr.Chatbot(label="Base model (adapter off)", height=300)
                tuned_bot = gr.Chatbot(label="Fine-tuned", height=300)
            compare_speed = gr.Markdown()
            prompt = gr.Textbox(label="Prompt for both models")
            compare_btn = gr.Button("Compare")
    sliders = [temperature, top_p, top_k, min_p, repetition_penalty]
    for shown in (refresh.click, tab.select):  # runs finished since the page loaded appear without a Refresh
        shown(lambda: gr.Dropdown(choices=chat_choices()), None, source)
    source.change(defaults, source, [*sliders, system])
    load_btn.click(load, source, loaded).then(sampling_values, source, sliders)  # a hub model's own config is read now
    replies = [
        trigger(
            respond_stoppable, [source, message, chatbot, system, *sliders, max_new], [chatbot, message, speed_md, stop]
        )
        for trigger in (send.click, message.submit)
    ]
    replies += [
        trigger(
            compare_stoppable, [source, prompt, system, *sliders, max_new], [base_bot, tuned_bot, compare_speed, stop]
        )
        for trigger in (compare_btn.click, prompt.submit)
    ]
    # the streams stop where they are (the reply so far stays shown); closing a stream hands the model back at once
    stop.click(stopped, None, stop, cancels=replies)
    return dict(
        source=source,
        load=load_btn,
        loaded=loaded,
        system=system,
        sliders=sliders,
        chatbot=chatbot,
        speed=speed_md,
        message=message,
        send=send,
        stop=stop,
        base_bot=base_bot,
        tuned_bot=tuned_bot,
        prompt=prompt,
        compare=compare_btn,
    )
