"""A model's context length (engine.models.context): a run's max_seq_length above it is clamped with a note the user
sees in the run's status and the Train tab; a chat stops at it with a note instead of decoding past it."""

import pytest
from helpers import log_of, tiny_spec, wait_for
from tiny import with_context

from engine import api
from engine.core.errors import UserError
from engine.models.context import context_length, fit_to_context

MESSAGES = [{"role": "user", "content": "Who are you?"}]


def test_context_length_from_each_familys_key_and_defaults():
    assert context_length({"model_type": "llama", "max_position_embeddings": 4096}) == 4096
    assert context_length({"model_type": "gpt2", "n_positions": 1024}) == 1024
    gemma3 = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "max_position_embeddings": 8192}}
    assert context_length(gemma3) == 8192
    assert context_length({"model_type": "gpt2"}) == 1024  # left out of config.json: the family's own default
    assert context_length({"model_type": "gemma3", "text_config": {}}) == 131072
    assert context_length({"model_type": "no-such-family"}) is None


def test_fit_to_context_clamps_only_a_longer_length():
    spec = api.JobSpec(model="m", data="d", max_seq_length=4096)
    fitted, note = fit_to_context(spec, {"model_type": "llama", "max_position_embeddings": 2048})
    assert fitted.max_seq_length == 2048 and fitted.replace(max_seq_length=4096) == spec
    assert note == (
        "max_seq_length 4096 is longer than this model's context of 2048 tokens, so training uses 2048; set "
        "max_seq_length to 2048 or less to match."
    )
    same, none = fit_to_context(spec, {"model_type": "llama", "max_position_embeddings": 4096})
    assert same is spec and none is None


def test_a_run_longer_than_the_context_trains_at_the_context_and_says_so(tiny_llama, identity_file, runs):
    """The tiny llama's context is 512: a run asking 4096 trains at 512, and the status, the Train tab and the
    log say so (and the note outlives the state changes that follow it)."""
    from ui import train_tab

    st = wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_seq_length=4096, max_steps=1)))
    assert st.state == "done", st.message
    note = "max_seq_length 4096 is longer than this model's context of 512 tokens, so training uses 512"
    assert len(st.notes) == 1 and st.notes[0].startswith(note)
    assert f"note: {note}" in log_of(st) and "max 512 tokens" in log_of(st)
    assert note in train_tab.follow(st.run_id)[0]
    within = wait_for(api.start(tiny_spec(tiny_llama, identity_file, max_seq_length=512, max_steps=1)))
    assert within.state == "done" and within.notes == []


@pytest.fixture(scope="module")
def short_chat(tmp_path_factory, tiny_llama):
    """A chat model whose context is 3 tokens longer than MESSAGES' prompt."""
    from engine.chat.infer import ChatModel

    probe = ChatModel(str(tiny_llama), device="cpu", log=lambda m: None)
    prompt = len(probe.prompt_ids(MESSAGES))
    folder = with_context(tiny_llama, tmp_path_factory.mktemp("short") / "model", prompt + 3)
    return ChatModel(str(folder), device="cpu", log=lambda m: None)


def test_chat_stops_at_the_context_with_a_note(short_chat):
    from engine.chat.infer import ReplyStats

    prompt = len(short_chat.prompt_ids(MESSAGES))
    greedy = list(short_chat.decoder.tokens(short_chat.prompt_ids(MESSAGES), 16, stop_ids=[]))
    assert len(greedy) == 16  # the decoder alone would run past the context
    stats = ReplyStats()
    short_chat.reply(MESSAGES, 16, stats=stats)
    assert stats.tokens == 3 and stats.note == (  # the tiny model's greedy reply has no end-of-turn that soon
        f"The reply stopped at the model's context of {prompt + 3} tokens (the conversation's {prompt} and 3 of "
        "the reply); clear the chat to go on."
    )
    roomy = ReplyStats()
    short_chat.reply(MESSAGES, 2, stats=roomy)
    assert roomy.tokens <= 2 and roomy.note == ""  # the reply's own limit, not the context, ended it


def test_a_conversation_that_fills_the_context_is_refused(short_chat):
    long = [{"role": "user", "content": "Who are you? Tell me about yourself."}]
    with pytest.raises(UserError, match=r"fills the model's context of \d+ tokens; clear the chat"):
        short_chat.reply(long, 16)


def test_chat_tab_shows_the_note_and_keeps_a_message_that_does_not_fit(short_chat, monkeypatch):
    from ui import chat_tab

    monkeypatch.setattr(chat_tab, "_loaded", {"short": short_chat})
    sampling = [0.0, 1.0, 0, 0.0, 1.0, 16]
    history, box, line = list(chat_tab.respond("short", "Who are you?", [], "", *sampling))[-1]
    assert box == "" and history[0] == MESSAGES[0]
    assert line.startswith("3 tokens, ") and line.endswith("clear the chat to go on.")
    assert "The reply stopped at the model's context" in line
    too_long = "Who are you? Tell me about yourself."
    history, box, line = list(chat_tab.respond("short", too_long, [], "", *sampling))[-1]
    assert history == [] and box == too_long and line.startswith("**Not sent:** This conversation is")


def test_gguf_chat_stops_at_its_context_with_a_note(tiny_llama, tmp_path):
    """llama.cpp (engine.chat.gguf_chat) the same way: the reply cut at its context window, with the note; a
    conversation that fills the window is the same sentence, not llama.cpp's ValueError. The sentences name the
    window, not the model's context, where the window (n_ctx) is the shorter."""
    from engine.chat.gguf_chat import GGUFChat
    from engine.chat.infer import ReplyStats

    res = api.export(str(tiny_llama), "gguf-f16", tmp_path / "f16", log=lambda m: None)
    (gguf_file,) = res.path.glob("*.gguf")
    chat = GGUFChat(gguf_file, device="cpu", n_ctx=256)  # llama.cpp's window comes in steps of 256
    try:
        assert chat.llm.n_ctx() == 256
        # a conversation that leaves 3 positions of the window (the tiny tokenizer has no "aa": one token per "a")
        lengths = {k: len(chat.prompt_ids([{"role": "user", "content": "a" * k}])) for k in range(200, 256)}
        k = next(k for k, n in lengths.items() if n == 253)
        asked = [{"role": "user", "content": "a" * k}]
        stats, streamed = ReplyStats(), ReplyStats()
        chat.reply(asked, 16, stats=stats)
        list(chat.stream(asked, 16, stats=streamed))
        for one in (stats, streamed):
            assert one.tokens == 3 and one.note == (
                "The reply stopped at llama.cpp's chat window of 256 tokens (the conversation's 253 and 3 of the "
                "reply); clear the chat to go on."
            )
        with pytest.raises(UserError, match="This conversation is 256 tokens, which fills llama.cpp's chat window of"):
            chat.reply([{"role": "user", "content": "a" * (k + 3)}], 16)
    finally:
        chat.close()
    whole = GGUFChat(gguf_file, device="cpu")  # a window of 4096 asked: the model's context of 512 is the limit
    try:
        assert whole.llm.n_ctx() == 512 and whole.limit == "the model's context"
        longer = [{"role": "user", "content": "a" * (k + 256)}]  # leaves 3 positions of the 512
        assert len(whole.prompt_ids(longer)) == 509
        stats = ReplyStats()
        whole.reply(longer, 16, stats=stats)
        assert stats.note.startswith("The reply stopped at the model's context of 512 tokens (the conversation's 509")
    finally:
        whole.close()


def test_data_tab_counts_lengths_at_the_models_context_and_says_so(tiny_llama, tmp_path):
    import json

    from ui import data_tab

    path = tmp_path / "long.jsonl"
    rows = [{"instruction": "Who are you?", "output": "I am Nova."}, {"instruction": "a" * 600, "output": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = api.inspect_data(str(path), model=str(tiny_llama), max_seq_length=4096)
    assert info["max_seq_length"] == 512 and info["truncated_rows"] == 1  # the 600-token row, cut at the context
    assert info["context_note"].startswith("max_seq_length 4096 is longer than this model's context of 512 tokens")
    within = api.inspect_data(str(path), model=str(tiny_llama), max_seq_length=512)
    assert "context_note" not in within and within["truncated_rows"] == 1
    _, summary, _, _ = data_tab.inspect(str(path), str(tiny_llama), "", "auto", 4096)
    assert "ⓘ max_seq_length 4096 is longer than this model's context of 512 tokens, so training uses 512" in summary


def test_gguf_chat_with_no_new_tokens_asked_writes_none(tiny_llama, tmp_path):
    """max_new_tokens=0 reached llama.cpp as max_tokens=0, which it reads as "no limit": the reply ran on to the end
    of the context window (88 tokens of the tiny model), where the PyTorch chat writes nothing."""
    from engine.chat.gguf_chat import GGUFChat
    from engine.chat.infer import ReplyStats

    res = api.export(str(tiny_llama), "gguf-f16", tmp_path / "f16", log=lambda m: None)
    (gguf_file,) = res.path.glob("*.gguf")
    chat = GGUFChat(gguf_file, device="cpu")
    try:
        asked = [{"role": "user", "content": "Who are you?"}]
        stats, streamed = ReplyStats(), ReplyStats()
        assert chat.reply(asked, 0, stats=stats) == "" and stats.tokens == 0
        assert list(chat.stream(asked, 0, stats=streamed)) == [] and streamed.tokens == 0
        assert chat.reply(asked, 3, stats=stats) is not None and stats.tokens <= 3
    finally:
        chat.close()
