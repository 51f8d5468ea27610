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
    import json
    import subprocess
    import sys

    from helpers import tiny_spec

    from ui import chat_tab, i18n

    folder = runs / "20260101-000000-t"
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text(tiny_spec(tiny_llama, identity_file).to_yaml())
    # a process as the app sees a run's: its command line names the run's job.yaml
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(folder / "job.yaml")])
    try:
        status = dict(state="running", message="training", step=3, total_steps=40, pid=run.pid)
        (folder / "status.json").write_text(json.dumps(status))
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
    finally:
        run.kill()
        run.wait()
