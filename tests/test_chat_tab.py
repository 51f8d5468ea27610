"""The Chat tab's handling of what the user typed (issue 25, item 9), without a model: nothing typed is lost."""

SAMPLING = [0.0, 1.0, 0, 0.0, 1.0, 16]  # temperature, top_p, top_k, min_p, repetition_penalty, max new tokens


def test_send_with_no_run_picked_keeps_the_question_and_says_what_to_pick():
    from ui import chat_tab

    history, box, note = list(chat_tab.respond("", "Who are you?", [], "", *SAMPLING))[-1]
    assert history == [] and box == "Who are you?"
    assert note.startswith("**Cannot load:** Pick a finished run or a GGUF file in 'Run, GGUF file or model'")


def test_a_source_that_cannot_load_keeps_the_question(tmp_path):
    from ui import chat_tab

    shown = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    history, box, note = list(chat_tab.respond(str(tmp_path / "missing"), "Who are you?", shown, "", *SAMPLING))[-1]
    assert history == shown and box == "Who are you?" and note.startswith("**Cannot load:**")


def test_an_empty_message_is_not_sent():
    from ui import chat_tab

    shown = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    for empty in ("", "  \n"):
        history, box, note = list(chat_tab.respond("any-run", empty, shown, "", *SAMPLING))[-1]
        assert history == shown and box == empty and note == "Type a message first."


def test_a_run_still_training_is_named_as_such(runs, tiny_llama, identity_file):
    """ "Chat with this run" (Train tab) on the run that is training, then Send: the Chat tab said "Model folder
    '<run id>' does not exist", as if the run were gone. It says the run is still training."""
    from helpers import training_run

    from ui import chat_tab, i18n

    with training_run(runs, tiny_llama, identity_file) as folder:
        history, box, note = list(chat_tab.respond(folder.name, "Who are you?", [], "", *SAMPLING))[-1]
        assert history == [] and box == "Who are you?"
        assert note == (
            f"**Cannot load:** Run `{folder.name}` is still training: chat with it once it has finished, or cancel "
            "it (a cancelled run answers from its last checkpoint)."
        )
        *_, said = list(chat_tab.compare(folder.name, "Who are you?", "", *SAMPLING))[-1]
        assert "is still training" in said
        zh = i18n.message(note, "zh")
        assert zh.startswith(f"**无法加载：** 运行 `{folder.name}` 仍在训练"), zh


def test_a_run_starts_its_chat_with_the_system_prompt_it_trained_with(runs, tiny_llama, identity_file):
    """A run trained with a system prompt (on every example) was chatted with an empty System prompt box, so the tuned
    model answered without the turn it learned after; the box now takes the run's own prompt when the run is picked
    (cleared for a run trained without one), and is left alone for a model folder."""
    from helpers import tiny_spec

    from ui import chat_tab

    picked = {}
    for name, system in (("nova", "You are Nova."), ("plain", "")):
        folder = runs / f"20260101-000000-{name}"
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"")  # located, never loaded here
        (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file, system_prompt=system).to_yaml())
        (folder / "status.json").write_text('{"state": "done", "message": "", "step": 1, "total_steps": 1}')
        picked[name] = chat_tab.defaults(folder.name)
    assert picked["nova"][: len(chat_tab.SAMPLING)] == picked["plain"][: len(chat_tab.SAMPLING)]
    assert picked["nova"][-1] == "You are Nova." and picked["plain"][-1] == ""
    assert len(chat_tab.defaults(str(tiny_llama))) == len(chat_tab.SAMPLING) + 1
    assert chat_tab.defaults(str(tiny_llama))[-1] == chat_tab.gr.skip()


def test_a_reply_can_be_stopped_and_the_next_one_sent(tiny_llama, monkeypatch):
    """The Chat tab had no way to stop a reply (a long one at 2,048 new tokens, on a slow card), though its busy
    sentence says "wait for it to finish (or stop it)". A Stop button now cancels the chat's and the compare's
    streams; a stream stopped mid-reply hands the model back at once for the next message."""
    import gradio as gr

    from ui import chat_tab

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")  # transformers' forward: the Triton interpreter is slow
    with gr.Blocks() as demo:
        parts = chat_tab.build()
    fns = list(demo.fns.values())
    replies = {fn._id for fn in fns if fn.fn in (chat_tab.respond_stoppable, chat_tab.compare_stoppable)}
    assert len(replies) == 4  # Send, Enter in the message box, Compare, Enter in the prompt box
    assert "stop" in parts and any(set(fn.cancels) >= replies for fn in fns)

    chat_tab._loaded.clear()
    greedy = [0.0, 1.0, 0, 0.0, 1.0]
    writing = chat_tab.respond_stoppable(str(tiny_llama), "Who are you?", [], "", *greedy, 64)
    next(writing)  # Stop enabled
    history, box, _, _ = next(writing)
    assert history[-1]["role"] == "assistant" and box == ""
    writing.close()  # what Gradio's cancel leaves of the stream: it is dropped mid-reply
    history, box, note = list(chat_tab.respond(str(tiny_llama), "Hi", [], "", *greedy, 4))[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] and box == "", note
    chat_tab._loaded.clear()


def test_a_deleted_run_is_named_as_gone(runs, tmp_path):
    """A run deleted on the Train tab stays picked in the Chat and Evaluate tabs (their boxes take typed values);
    Send then said "Model folder '<run id>' does not exist; give an existing folder or a hub id", as if the run id
    had been a model typed wrong. It says the run is no longer in the runs folder."""
    from ui import chat_tab, eval_tab

    gone = "20260101-000000-nova"
    *_, note = list(chat_tab.respond(gone, "Who are you?", [], "", *SAMPLING))[-1]
    said = f"Run `{gone}` is no longer in the runs folder ({runs}): it was deleted or moved; pick another run."
    assert note == f"**Cannot load:** {said}"
    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "Who are you?", "output": "Nova."}\n')
    text, _, _ = eval_tab.run_evaluation([gone], [], True, str(data), "", "", "", 5, 4)
    assert text == f"**Evaluation failed:** {said}"
    assert chat_tab.load(gone) == f"**Cannot load:** {said}"
    assert "Model folder" in chat_tab.load(str(tmp_path / "missing"))  # a model folder typed wrong still reads as one


def test_two_sessions_sending_at_once_load_the_model_once(runs, monkeypatch):
    """Two browser tabs (or two users of a shared app) sending to a model not yet loaded each loaded their own copy
    (twice the GPU memory, and the slower of the two replaced the other in the cache). The second now waits for the
    first's load and chats with the same copy."""
    import threading
    import time

    from ui import chat_tab

    loads = []

    def slow_load(source):
        loads.append(source)
        time.sleep(0.5)  # reading the weights
        return object()

    monkeypatch.setattr(chat_tab.api, "Chat", slow_load)
    monkeypatch.setattr(chat_tab, "_loaded", {})
    got = []
    sessions = [threading.Thread(target=lambda: got.append(chat_tab._chat("some/model"))) for _ in range(2)]
    for s in sessions:
        s.start()
    for s in sessions:
        s.join()
    assert loads == ["some/model"] and got[0] is got[1]


def test_a_gguf_exported_from_a_run_starts_its_chat_with_the_runs_system_prompt(tiny_llama, runs, tmp_path):
    """The export writes the run's system prompt into the Ollama Modelfile beside the GGUF (SYSTEM), so Ollama chats
    as the run trained; the Chat tab chatted with that GGUF without it. Picking the GGUF now fills the System prompt
    box from its Modelfile; a GGUF with no Modelfile of ours beside it leaves the box as typed."""
    from engine import api
    from ui import chat_tab

    res = api.export(str(tiny_llama), "gguf-f16", tmp_path / "f16", log=lambda m: None)
    (gguf_file,) = res.path.glob("*.gguf")
    modelfile = res.path / "Modelfile"
    assert chat_tab.defaults(str(gguf_file))[-1] == ""  # exported with no system prompt
    # as the export writes it for a run trained with one (engine.export.ollama.modelfile)
    system = 'SYSTEM """You are Nova.\nBe brief."""\n\n'
    modelfile.write_text(modelfile.read_text().replace("\nPARAMETER stop", f"\n{system}PARAMETER stop", 1))
    assert chat_tab.defaults(str(gguf_file))[-1] == "You are Nova.\nBe brief."
    modelfile.unlink()
    assert chat_tab.defaults(str(gguf_file))[-1] == chat_tab.gr.skip()


def test_picking_a_cut_off_gguf_file_is_a_sentence_not_a_traceback(tiny_llama, tmp_path):
    """A .gguf file cut off in its header (a copy or download that stopped) raised IndexError from the sliders'
    handler the moment it was picked, an error box where Send says the file is not readable."""
    from engine import api
    from ui import chat_tab

    res = api.export(str(tiny_llama), "gguf-f16", tmp_path / "f16", log=lambda m: None)
    (whole,) = res.path.glob("*.gguf")
    for size in (200, 1000, 3000):
        cut = tmp_path / f"cut-{size}.gguf"
        cut.write_bytes(whole.read_bytes()[:size])
        assert chat_tab.sampling_values(str(cut)) == [chat_tab.gr.skip()] * len(chat_tab.SAMPLING), size
        *_, note = list(chat_tab.respond(str(cut), "Who are you?", [], "", *SAMPLING))[-1]
        assert note == f"**Cannot load:** '{cut.name}' is not a readable GGUF model file.", size


def test_compare_with_no_prompt_asks_for_one():
    """Compare with the prompt box empty had both models answer an empty question (both models' time, on a slow card,
    for nothing), where Send says to type a message first."""
    from ui import chat_tab

    for empty in ("", "  \n"):
        base, tuned, note = list(chat_tab.compare("any-run", empty, "", *SAMPLING))[-1]
        assert base == [] and tuned == [] and note == "Type a prompt first."


# Gemma 2's own chat template (google/gemma-2-2b-it), which a GGUF export of a Gemma 2 run carries
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def test_a_gguf_template_refusing_a_system_prompt_is_a_sentence(tmp_path):
    """A GGUF whose chat template refuses a system turn (Gemma 2's raises 'System role not supported'), sent a
    message with the System prompt box filled, raised jinja's TemplateError at the Chat tab, an error box; the same
    run chatted through PyTorch says a sentence. The GGUF chat now says one too, and keeps the message."""
    from tiny import make_model

    from engine import api
    from ui import chat_tab

    model = make_model("llama", tmp_path / "gemma2-template", chat_template=GEMMA2)
    res = api.export(str(model), "gguf-f16", tmp_path / "f16", log=lambda m: None)
    (gguf_file,) = res.path.glob("*.gguf")
    chat_tab._loaded.clear()
    try:
        shown = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        history, box, note = list(chat_tab.respond(str(gguf_file), "Who are you?", shown, "Be brief.", *SAMPLING))[-1]
        assert history == shown and box == "Who are you?"
        assert note == (
            f"**Not sent:** The chat template in '{gguf_file.name}' cannot render this conversation (system, user, "
            "assistant, user): System role not supported. Leave the System prompt empty if the model takes none."
        )
        history, box, note = list(chat_tab.respond(str(gguf_file), "Who are you?", shown, "", *SAMPLING))[-1]
        assert len(history) == 4 and box == "", note  # without the system prompt it answers
    finally:
        chat_tab._loaded.clear()


def test_a_template_refusing_a_system_prompt_says_what_to_do_in_the_chat(tmp_path, monkeypatch):
    """The same through PyTorch (a Gemma 2 run) said "Check the turn order or pick another chat template", the Data
    tab's advice, which the Chat tab offers no way to follow; it says to leave the System prompt empty, as the GGUF
    chat does."""
    from tiny import make_model

    from ui import chat_tab

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    model = make_model("llama", tmp_path / "gemma2-template", chat_template=GEMMA2)
    chat_tab._loaded.clear()
    try:
        history, box, note = list(chat_tab.respond(str(model), "Who are you?", [], "Be brief.", *SAMPLING))[-1]
        assert history == [] and box == "Who are you?"
        assert note == (
            "**Not sent:** The chat template of 'gemma2-template' cannot render this conversation (system, user): "
            "System role not supported. Leave the System prompt empty if the model takes none."
        )
    finally:
        chat_tab._loaded.clear()


def test_starting_or_resuming_a_run_frees_the_chat_tabs_model_first(runs, tiny_llama, identity_file, monkeypatch):
    """Chat, then Start (or Resume) on the Train tab: the Chat tab kept its model in GPU memory while the run loaded
    its own copy in another process, so the run had that much less (on a 24 GB card, an 8B chat model and an 8B
    QLoRA run do not both fit). The chat's model is let go before the run starts; the next message loads it again."""
    import gc
    import weakref

    from engine import api
    from ui import chat_tab, train_tab

    monkeypatch.setenv("TUNESMITH_DECODE_KERNELS", "0")
    held_at_start = []

    def spy(*args, **kw):  # where the run's process would be spawned: stop there, noting whether the chat's model lives
        gc.collect()
        held_at_start.append(chatting() is not None)
        raise api.UserError("stopped by the test")

    monkeypatch.setattr(api, "start", spy)
    monkeypatch.setattr(api, "resume", spy)
    data = [str(identity_file), "", "auto", "", "train", 256]
    chatting = weakref.ref(chat_tab._chat(str(tiny_llama)))
    _, status, _ = train_tab.start(str(tiny_llama), "lora", False, *data, "ui", 5, 1, 1e-2, 2, 1, 16, False, False)
    assert "stopped by the test" in status
    chatting = weakref.ref(chat_tab._chat(str(tiny_llama)))  # the next message loads it again
    _, status, _ = train_tab.resume("some-run")
    assert "stopped by the test" in status and held_at_start == [False, False]
    chat_tab._loaded.clear()


def test_picking_a_folder_with_a_broken_config_keeps_the_sliders(tiny_llama, tmp_path):
    """A typed model folder whose config.json (or generation_config.json) is not valid JSON (a file cut off in a copy,
    or edited by hand) raised JSONDecodeError from the sliders' handler, an error box, as soon as it was picked; the
    sliders now stay as they are, and Send says what is wrong with the file."""
    import shutil

    import gradio as gr
    import pytest

    from engine import api
    from ui import chat_tab

    for name in ("config.json", "generation_config.json"):
        folder = shutil.copytree(tiny_llama, tmp_path / name.split(".")[0])
        (folder / name).write_text('{"model_type": "llama",')
        assert chat_tab.defaults(str(folder))[:5] == [gr.skip()] * 5
        with pytest.raises(api.UserError, match=f"^'{name}' of '{folder}' is not valid JSON"):
            api.sampling_defaults(str(folder))


def test_a_deleted_run_no_longer_answers_in_the_chat(tiny_llama, identity_file, runs):
    """A run deleted in the Train tab's history after the Chat tab had loaded it kept answering there, from weights
    whose folder was gone: deleting it lets go of its loaded copy, so the chat says it cannot load it."""
    from helpers import tiny_spec, wait_for

    from engine import api
    from ui import chat_tab, train_tab

    run = wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_steps=1)))
    assert list(chat_tab.respond(run.run_id, "Who are you?", [], "", *SAMPLING))[-1][2].endswith("tok/s")
    assert train_tab.delete(run.run_id)[1] == f"Deleted run `{run.run_id}`."
    history, box, note = list(chat_tab.respond(run.run_id, "Who are you?", [], "", *SAMPLING))[-1]
    assert history == [] and box == "Who are you?" and note.startswith("**Cannot load:**"), note


def test_stop_is_clickable_only_while_a_reply_streams():
    """Stop was always clickable, with no reply streaming. It starts disabled, is enabled as a reply starts and
    disabled when it ends, but not while another reply of the same page still streams (Compare beside Send); Stop
    itself disables it."""
    import gradio as gr

    from ui import chat_tab

    with gr.Blocks():
        tab = chat_tab.build()
    assert tab["stop"].interactive is False
    page = gr.Request(session_hash="page-chat")
    *_, stop = next(first := chat_tab.respond_stoppable("", "hi", [], "", *SAMPLING, request=page))
    assert stop.interactive is True
    outputs = list(chat_tab.respond_stoppable("", "", [], "", *SAMPLING, request=page))  # another, refused at once
    assert outputs[0][-1].interactive is True and outputs[-1][-1].interactive is True  # the first still streams
    assert list(first)[-1][-1].interactive is False  # the first ends: nothing streams
    next(chat_tab.compare_stoppable("", "hi", "", *SAMPLING, request=page))
    assert chat_tab.stopped(page).interactive is False and "page-chat" not in chat_tab._STREAMS
