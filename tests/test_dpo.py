"""DPO and ORPO on a tiny random-weight model through TRL's real trainers: the chosen reply gains on the rejected one,
the reference is the base model with the adapter switched off, cancel checkpoints and resume finishes the run."""

import json
import shutil

import pytest
import torch
from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS, REJECTED

from engine import api
from engine.core.errors import Cancelled
from engine.core.runlog import RunLog, read_metrics
from engine.training.dispatch import train


def spec_for(model, data, **kw):
    base = dict(
        model=str(model),
        data=str(data),
        objective="dpo",
        max_steps=6,
        learning_rate=5e-3,
        batch_size=2,
        max_seq_length=128,
        lora_r=8,
        lora_alpha=8,
        device="cpu",
        seed=0,
    )
    return api.JobSpec(**{**base, **kw})


def run_here(spec, run_dir, should_stop=lambda: False, resume=False):
    """Train in this process (the run subprocess does the same call), quicker than starting one per test."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.yaml").write_text(spec.to_yaml())
    train(spec, run_dir, RunLog(run_dir), resume, should_stop, print)
    return read_metrics(run_dir)


def margin(model, tok, prompt: str, both: bool = False):
    """log p(chosen) - log p(rejected) of the replies, summed over their tokens, under `model` (with `both`, the two
    log-probabilities)."""

    def logp(reply):
        msgs = [{"role": "user", "content": prompt}]
        head = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        whole = tok.apply_chat_template(msgs + [{"role": "assistant", "content": reply}], tokenize=False)
        ids = tok(whole, return_tensors="pt", add_special_tokens=False).input_ids
        n_head = len(tok(head, add_special_tokens=False).input_ids)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        return float(picked[n_head - 1 :].sum())

    if both:
        return logp(IDENTITY_ANSWER), logp(REJECTED)
    return logp(IDENTITY_ANSWER) - logp(REJECTED)


def test_dpo_raises_the_chosen_over_rejected_margin(tiny_llama, pairs_file, runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ui import train_tab

    run_dir = runs / "dpo"
    metrics = run_here(spec_for(tiny_llama, pairs_file), run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    # step 1 is measured before any update: the policy equals the reference, so the reference is the base model
    assert metrics[0]["margin"] == 0.0 and metrics[0]["chosen_reward"] == 0.0
    assert metrics[-1]["margin"] > 1.0 and metrics[-1]["accuracy"] == 1.0
    assert all(m["tokens_per_s"] > 0 and m["lr"] > 0 for m in metrics)
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    assert not (run_dir / "trainer").exists()
    text, *_ = train_tab.follow("dpo")
    assert f"margin {metrics[-1]['margin']:.3f}" in text
    plot = train_tab.follow("dpo")[6]
    assert plot["visible"] and list(plot["value"]["value"]) == [m["margin"] for m in metrics]

    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), adapter)
    with model.disable_adapter():
        before = margin(model, tok, "Who made you?")
    assert margin(model, tok, "Who made you?") > before + 5


def test_orpo_raises_the_margin_without_a_reference(tiny_llama, pairs_file, tmp_path):
    metrics = run_here(spec_for(tiny_llama, pairs_file, objective="orpo", max_steps=6, learning_rate=1e-2), tmp_path)
    assert metrics[-1]["margin"] > metrics[0]["margin"] + 0.1
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_dpo_cancel_saves_a_checkpoint_and_resume_finishes(tiny_llama, pairs_file, tmp_path):
    spec = spec_for(tiny_llama, pairs_file, max_steps=4)
    polls = iter(range(100))
    with pytest.raises(Cancelled):
        # polled once while reading the pairs, once before training, then after each step
        run_here(spec, tmp_path, should_stop=lambda: next(polls) >= 3)
    assert [c.name for c in (tmp_path / "checkpoints").iterdir()] == ["step-000002"]
    assert not (tmp_path / "adapter").exists()
    metrics = run_here(spec, tmp_path, resume=True)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_dpo_resumed_mid_epoch_continues_with_the_same_pairs(tiny_llama, tmp_path):
    """Pairs of many lengths, 2 a step (5 steps an epoch): a run cancelled after step 3 and resumed trains steps 4-8
    on the same pairs in the same order as an uninterrupted run (each step's token count and loss), across the
    epoch's end too; a resume used to start a fresh shuffle, so some pairs came twice in the epoch and others never."""
    words = "the quick brown fox jumps over the lazy dog and runs far away".split()
    rows = [
        dict(prompt=" ".join(words[: 1 + i]), chosen=" ".join(words[i:]), rejected=" ".join(words[: 1 + (7 * i) % 12]))
        for i in range(10)
    ]
    data = tmp_path / "lengths.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = spec_for(tiny_llama, data, max_steps=8, save_every=3)
    full = run_here(spec, tmp_path / "full")
    polls = iter(range(100))
    with pytest.raises(Cancelled):  # polled once while reading, once before training, then after each step
        run_here(spec, tmp_path / "cut", should_stop=lambda: next(polls) >= 4)
    resumed = run_here(spec, tmp_path / "cut", resume=True)
    assert [m["step"] for m in resumed] == list(range(1, 9))
    tokens = [m["tokens"] for m in full]
    assert len(set(tokens)) > 4  # the steps' pairs differ, so the token counts tell them apart
    assert [m["tokens"] for m in resumed] == tokens
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in full], rel=1e-4)
    assert [m["epoch"] for m in resumed] == [m["epoch"] for m in full] == pytest.approx([0.2 * s for s in range(1, 9)])


def test_dpo_reading_a_large_file_reports_progress_and_cancels(tiny_llama, tmp_path):
    """A preference file is read with "reading: N of M rows" in the status and log, and a stop asked for while it is
    read ends the run there, before any training (engine.spec.objectives.read_rows)."""
    path = tmp_path / "pairs.jsonl"
    row = json.dumps(dict(prompt="Who are you?", chosen=IDENTITY_ANSWER, rejected=REJECTED)) + "\n"
    path.write_text(row * 3000)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runlog, lines = RunLog(run_dir), []

    def reading():
        return [line for line in lines if line.startswith("reading:")]

    with pytest.raises(Cancelled):
        train(spec_for(tiny_llama, path), run_dir, runlog, False, lambda: bool(reading()), lines.append)
    assert reading() == ["reading: 0 of 3,000 rows"]
    assert runlog.state == {**runlog.state, "state": "loading", "message": "reading: 0 of 3,000 rows"}
    assert not (run_dir / "checkpoints").exists()


def test_dpo_refuses_chat_data_with_a_sentence(identity_file, pairs_file):
    with pytest.raises(api.UserError) as info:
        api.check_data(str(identity_file), "dpo")
    assert str(info.value) == (
        "DPO needs preference pairs (prompt, chosen and rejected columns); this dataset is alpaca. "
        "It suits Chat fine-tuning (SFT)."
    )
    assert api.check_data(str(pairs_file), "orpo") == "preference"
    with pytest.raises(api.UserError, match="Chat fine-tuning .SFT. needs chat examples"):
        api.check_data(str(pairs_file), "sft")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("objective, method", [("dpo", "lora"), ("dpo", "qlora"), ("orpo", "lora")])
def test_dpo_and_orpo_on_the_gpu(tiny_llama, pairs_file, tmp_path, objective, method):
    """bf16, the fast path's drop-ins, checkpointing and 8-bit AdamW under TRL's trainers; QLoRA's reference is the
    4-bit base with the adapter off."""
    lines = []
    spec = spec_for(tiny_llama, pairs_file, objective=objective, method=method, device="auto", learning_rate=1e-2)
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, lines.append)
    metrics = read_metrics(tmp_path)
    log = "\n".join(lines)
    assert "device cuda" in log and "optimizer: adamw_8bit" in log, log
    assert metrics[-1]["margin"] > metrics[0]["margin"] + 0.1 and metrics[-1]["memory_gb"] > 0
    if objective == "dpo":
        assert metrics[0]["margin"] == 0.0


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_pairs_longer_than_max_seq_length_are_a_note_of_the_run(tiny_llama, runs, tmp_path, objective, capsys):
    """TRL cuts a pair past max_seq_length without a word: the run says how many it cut, and leaves out (for DPO
    and ORPO alike) the pair whose prompt alone fills max_seq_length, in its status and on the Train tab."""
    from ui import train_tab

    path = tmp_path / "long-pairs.jsonl"
    rows = [
        dict(prompt="Who are you?", chosen=IDENTITY_ANSWER, rejected=REJECTED),  # 33 tokens at most
        dict(prompt="Who are you?", chosen=IDENTITY_ANSWER * 5, rejected=REJECTED),  # its chosen reply is cut
        dict(prompt="word " * 100, chosen=IDENTITY_ANSWER, rejected=REJECTED),  # its prompt alone fills 48
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = runs / objective
    run_here(spec_for(tiny_llama, path, objective=objective, max_seq_length=48, max_steps=1), run_dir)
    note = (
        "2 of 3 preference pairs were longer than max_seq_length 48 and were cut to their first 48 tokens; 1 of them "
        "kept none of their reply and were left out. Raise max_seq_length to keep them whole."
    )
    assert json.loads((run_dir / "status.json").read_text())["notes"] == [note]
    assert note in train_tab.follow(objective)[0]
    assert f"{objective}: 2 pairs" in capsys.readouterr().out  # the third left out before TRL sees it


def test_pairs_whose_prompts_all_fill_max_seq_length_are_refused_with_a_sentence(tiny_llama):
    from transformers import AutoTokenizer

    from engine.training.preference import fit_pairs, to_pair

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    pairs = [to_pair(dict(prompt="word " * 100, chosen=IDENTITY_ANSWER, rejected=REJECTED), 1, "p.jsonl")]
    with pytest.raises(api.UserError, match="Every prompt is 48 tokens or longer, .* raise max_seq_length"):
        fit_pairs(pairs, tok, 48, "p.jsonl", lambda m: None)
    assert fit_pairs(pairs, tok, 4096, "p.jsonl", print) == pairs  # nothing cut: nothing said


def test_a_cancel_during_the_last_step_ends_done_with_the_adapter(tiny_llama, pairs_file, tmp_path):
    """Cancel pressed while the last step trains: the SFT loop has nothing left to stop and ends done; a DPO run
    saved its last checkpoint, then ended "cancelled" at step 2/2 without its adapter, to be resumed for nothing."""
    spec = spec_for(tiny_llama, pairs_file, max_steps=2)
    polls = iter(range(100))
    # polled once while reading the pairs, once before training, then after each step: true after the last one
    metrics = run_here(spec, tmp_path, should_stop=lambda: next(polls) >= 3)
    assert [m["step"] for m in metrics] == [1, 2]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_a_resume_at_the_last_step_writes_the_adapter_and_ends_done(tiny_llama, pairs_file, tmp_path, objective):
    """A run killed between its last checkpoint and its final folder: the resume has no step left to train (TRL is
    given max_steps 0) and must still finish as the SFT loop does, the adapter made from that checkpoint."""
    from safetensors.torch import load_file

    spec = spec_for(tiny_llama, pairs_file, max_steps=2, objective=objective)
    run_here(spec, tmp_path)
    ckpt = tmp_path / "checkpoints" / "step-000002"
    shutil.rmtree(tmp_path / "adapter")
    metrics = run_here(spec, tmp_path, resume=True)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    final = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    saved = load_file(ckpt / "adapter_model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)


ULTRAFEEDBACK_ROW = dict(  # HuggingFaceH4/ultrafeedback_binarized's columns, as its rows come from the hub
    prompt="What is two plus two?",
    prompt_id="f00d",
    chosen=[{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}],
    rejected=[{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Five."}],
    messages=[{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}],
    score_chosen=9.0,
    score_rejected=2.0,
)


def test_ultrafeedback_rows_are_preference_pairs_for_dpo_and_chat_for_sft(tmp_path):
    """UltraFeedback's rows carry the chosen conversation a second time as 'messages', which made them chatml: DPO
    and ORPO refused the best-known preference dataset as "this dataset is chatml". SFT still reads its messages."""
    path = tmp_path / "ultrafeedback.jsonl"
    path.write_text(json.dumps(ULTRAFEEDBACK_ROW) + "\n")
    assert api.check_data(str(path), "dpo") == api.check_data(str(path), "orpo") == "preference"
    assert api.check_data(str(path), "sft") == "chatml"


def test_the_data_tab_names_the_format_the_chosen_objective_reads(tmp_path, capsys):
    """The Data tab called UltraFeedback's rows "chatml" (their 'messages' column) while the Train tab's DPO check
    took them as preference pairs, and a DPO run trained on their chosen and rejected: the tab says the format the
    objective picked on the Train tab reads, as that check does; the app passes it the Train tab's choice."""
    import gradio as gr

    import app
    from ui import data_tab

    path = tmp_path / "ultrafeedback.jsonl"
    path.write_text(json.dumps(ULTRAFEEDBACK_ROW) + "\n")
    shown = {o: data_tab.inspect(str(path), "", "", "auto", 1024, "", "train", 1, o) for o in ("dpo", "orpo", "sft")}
    for objective, (_, summary, _, _) in shown.items():
        assert summary.startswith(f"**Format:** {api.check_data(str(path), objective)} ·"), summary
    assert '"chosen"' in shown["dpo"][2][0][0]  # a preference row is shown as stored; SFT's, as the chat it reads
    assert shown["sft"][2][0][0].startswith("<|im_start|>user\nWhat is two plus two?")
    assert api.inspect_data(str(path))["format"] == "chatml"  # no objective named: the plain reading, as before
    with pytest.raises(api.UserError, match="Unknown objective 'rlhf'"):
        api.inspect_data(str(path), objective="rlhf")
    from engine.__main__ import main

    assert main(["data", "inspect", str(path), "--objective", "dpo"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "preference"  # the command line says it as the tab does
    # the app hands the Data tab the Train tab's objective (a Radio built after it): on every re-read of the data,
    # and as it changes
    radio = next(b for b in app.demo.blocks.values() if getattr(b, "label", None) == "Objective")
    reads = [d for d in app.demo.fns.values() if d.fn is data_tab.inspect]
    copy = next(
        d
        for d in app.demo.fns.values()
        if (radio._id, "change") in d.targets and len(d.outputs) == 1 and isinstance(d.outputs[0], gr.State)
    )
    assert reads and all({radio._id, copy.outputs[0]._id} & {i._id for i in d.inputs} for d in reads)
    assert any(d.trigger_after == copy._id for d in reads)


def test_a_prompt_column_beside_whole_conversations_is_not_said_twice():
    """UltraFeedback's 'prompt' is a copy of the first user turn of its chosen and rejected conversations: the pair
    was the prompt as a user turn, then replies that began with the same user turn again, so DPO compared the
    question asked twice. The conversations' shared turns are the prompt, as they are without a prompt column."""
    from engine.training.preference import to_pair

    user = [{"role": "user", "content": "What is two plus two?"}]
    expected = dict(
        prompt=user,
        chosen=[{"role": "assistant", "content": "Four."}],
        rejected=[{"role": "assistant", "content": "Five."}],
    )
    assert to_pair(ULTRAFEEDBACK_ROW, 1, "uf.jsonl") == expected
    bare = {k: ULTRAFEEDBACK_ROW[k] for k in ("chosen", "rejected")}  # trl-lib/ultrafeedback_binarized
    assert to_pair(bare, 1, "uf.jsonl") == expected
    assert to_pair({**bare, "prompt": user}, 1, "uf.jsonl") == expected


def test_a_prompt_column_beside_one_whole_conversation_is_said_once():
    """A row whose chosen is a whole conversation (the prompt's turns, then the reply) and whose rejected is the reply
    alone, or the other way round, with a prompt column: the pair was the prompt, then a chosen that asked the same
    question again, and a rejected that did not, so the pair differed in the question too. The conversation's turns
    before its reply are the prompt, once, as where both are whole conversations."""
    from engine.training.preference import to_pair

    user = [{"role": "user", "content": "What is two plus two?"}]
    four, five = [{"role": "assistant", "content": "Four."}], [{"role": "assistant", "content": "Five."}]
    expected = dict(prompt=user, chosen=four, rejected=five)
    for prompt in ("What is two plus two?", user):
        assert to_pair(dict(prompt=prompt, chosen=user + four, rejected="Five."), 1, "p.jsonl") == expected
        assert to_pair(dict(prompt=prompt, chosen=four, rejected=user + five), 1, "p.jsonl") == expected
    system = [{"role": "system", "content": "Answer in words."}]  # the conversation's own turns: its system one too
    row = dict(prompt="What is two plus two?", chosen=system + user + four, rejected=five)
    assert to_pair(row, 1, "p.jsonl") == dict(prompt=system + user, chosen=four, rejected=five)
    with pytest.raises(api.UserError, match="row 3: 'chosen' ends with a 'user' turn; it should end with the reply"):
        to_pair(dict(prompt="Hi", chosen=four + user, rejected="Five."), 3, "p.jsonl")


def test_pairs_without_a_prompt_are_refused_before_the_run_starts(tiny_llama, tmp_path, runs):
    """Intel/orca_dpo_pairs names its prompt 'question': the first rows passed the check, so the run started, loaded
    the model and only then failed on "has no 'prompt'". Now Start says it at once and makes no run folder; a prompt
    of ShareGPT turns is a sentence too, where it was a KeyError after the model had loaded."""
    from engine.training.preference import to_pair

    path = tmp_path / "orca.jsonl"
    path.write_text(json.dumps(dict(system="", question="Who are you?", chosen=IDENTITY_ANSWER, rejected=REJECTED)))
    with pytest.raises(api.UserError, match=r"row 1 has no 'prompt'; .* map one \(e.g. question=prompt\)") as info:
        api.start(spec_for(tiny_llama, path))
    from ui import i18n

    assert all(i18n.message(str(info.value), lang) != str(info.value) for lang in ("zh", "ru"))  # Start's sentence
    sharegpt = tmp_path / "sharegpt-prompt.jsonl"
    sharegpt.write_text(json.dumps(dict(prompt=[{"from": "human", "value": "Hi"}], chosen="Hello.", rejected="Bye.")))
    with pytest.raises(api.UserError, match="turn 1 of 'prompt' needs 'role' and 'content'"):
        api.start(spec_for(tiny_llama, sharegpt))
    replies = [{"role": "assistant", "content": "Hello."}]  # replies alone: no turn before them is a prompt
    with pytest.raises(api.UserError, match="row 1 has no 'prompt'"):
        to_pair(dict(chosen=replies, rejected=replies), 1, "replies.jsonl")
    assert not runs.exists() or not list(runs.iterdir())
    from engine.training.preflight import check_job

    check_job(spec_for(tiny_llama, path, column_map={"question": "prompt"}))  # mapped, it passes


def test_anthropic_hh_transcripts_are_read_as_conversations(tiny_llama, tmp_path):
    """Anthropic/hh-rlhf's rows are two transcripts as text, "\\n\\nHuman: ...\\n\\nAssistant: ...", alike but for the
    last reply: they were refused ("has no 'prompt' ... map one"), with no column to map. Their turns are read as a
    conversation, whose shared turns are the prompt."""
    from engine.training.preference import to_pair
    from engine.training.preflight import check_job

    shared = "\n\nHuman: Name a fruit.\n\nAssistant: An apple.\n\nHuman: Another one?\n\nAssistant:"
    row = dict(chosen=shared + " A pear.", rejected=shared + " No.")
    assert to_pair(row, 1, "hh.jsonl") == dict(
        prompt=[
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "Another one?"},
        ],
        chosen=[{"role": "assistant", "content": "A pear."}],
        rejected=[{"role": "assistant", "content": "No."}],
    )
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(dict(chosen=shared, rejected=shared + " No.")) + "\n")
    with pytest.raises(api.UserError, match="row 2: turn 4 of 'chosen' has an empty 'content'"):
        check_job(spec_for(tiny_llama, path))


def test_pairs_whose_chosen_and_rejected_are_the_same_are_left_out(tiny_llama, tmp_path, capsys):
    """A pair of two equal replies teaches no preference (its loss is log 2 with no gradient) and counted as ranked
    wrong, holding "pairs ranked right" below 100% with no word why. It is left out, and the run's status says so."""
    path = tmp_path / "ties.jsonl"
    rows = [dict(prompt=q, chosen=IDENTITY_ANSWER, rejected=REJECTED) for q in IDENTITY_QUESTIONS[:3]]
    rows += [dict(prompt="Who are you?", chosen=IDENTITY_ANSWER, rejected=IDENTITY_ANSWER)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_here(spec_for(tiny_llama, path, max_steps=1), tmp_path)
    note = (
        "1 of 4 preference pairs have the same chosen and rejected reply, which teaches no preference, and were "
        "left out."
    )
    assert json.loads((tmp_path / "status.json").read_text())["notes"] == [note]
    assert "dpo: 3 pairs" in capsys.readouterr().out
    from engine.training.preference import without_ties

    tie = dict(
        prompt=[], chosen=[{"role": "assistant", "content": "a"}], rejected=[{"role": "assistant", "content": "a"}]
    )
    with pytest.raises(api.UserError, match="Every pair's chosen and rejected replies are the same"):
        without_ties([tie], print)


def test_dpo_loss_matches_a_hand_computation(tiny_llama, tmp_path):
    """Step 2's logged rewards and loss, recomputed by hand from the step-1 adapter: reward = beta x (log p under the
    policy - log p under the base, the adapter off) of each reply, loss = -log sigmoid(chosen - rejected). One pair
    repeated, so every batch holds it."""
    import math

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "one-pair.jsonl"
    path.write_text((json.dumps(dict(prompt="Who are you?", chosen=IDENTITY_ANSWER, rejected=REJECTED)) + "\n") * 4)
    spec = spec_for(tiny_llama, path, max_steps=2, save_every=1, keep_checkpoints=2, dpo_beta=0.1)
    step2 = run_here(spec, tmp_path / "run")[1]
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "checkpoints" / "step-000001")
    with model.disable_adapter():
        before = margin(model, tok, "Who are you?", both=True)
    after = margin(model, tok, "Who are you?", both=True)
    chosen, rejected = (0.1 * (a - b) for a, b in zip(after, before, strict=True))
    loss = math.log1p(math.exp(-(chosen - rejected)))
    got = (step2["chosen_reward"], step2["rejected_reward"], step2["margin"], step2["loss"])
    # float32 sums of ~15 log-probabilities computed in two orders, and the metrics' rounding to 6 decimals
    torch.testing.assert_close(got, (chosen, rejected, chosen - rejected, loss), atol=1e-4, rtol=0)


def test_content_parts_in_preference_conversations_are_their_text():
    """OpenAI-style content parts ([{"type": "text", "text": ...}]) passed the row check, as for chat data, but went
    to the chat template as they were, so DPO trained on "[{'type': 'text', ...}]" written out; an exported empty
    system turn went too. The turns are read as chat data reads them."""
    from engine.training.preference import to_pair

    def parts(text):
        return [{"type": "text", "text": text}]

    opening = [{"role": "system", "content": ""}, {"role": "user", "content": parts("Hi")}]
    row = dict(
        chosen=opening + [{"role": "assistant", "content": parts("Hello.")}],
        rejected=opening + [{"role": "assistant", "content": parts("Bye.")}],
        prompt=float("nan"),  # pandas' empty cell
    )
    assert to_pair(row, 1, "parts.jsonl") == dict(
        prompt=[{"role": "user", "content": "Hi"}],
        chosen=[{"role": "assistant", "content": "Hello."}],
        rejected=[{"role": "assistant", "content": "Bye."}],
    )


def test_llamafactory_sharegpt_pairs_are_read_as_the_conversation_and_one_reply_each(tiny_llama, tmp_path):
    """LLaMA-Factory's ShareGPT DPO rows ('conversations' turns, 'chosen' and 'rejected' one {from, value} turn each)
    were refused: "field 'chosen' should be text, not dict". The conversation is the prompt."""
    from engine.training.preference import to_pair
    from engine.training.preflight import check_job

    row = dict(
        conversations=[
            {"from": "human", "value": "Name a fruit."},
            {"from": "gpt", "value": "An apple."},
            {"from": "human", "value": "Another one?"},
        ],
        chosen={"from": "gpt", "value": "A pear."},
        rejected={"from": "gpt", "value": "No."},
    )
    assert to_pair(row, 1, "lf.jsonl") == dict(
        prompt=[
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "Another one?"},
        ],
        chosen=[{"role": "assistant", "content": "A pear."}],
        rejected=[{"role": "assistant", "content": "No."}],
    )
    path = tmp_path / "lf.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert api.inspect_data(str(path))["format"] == "preference"  # the Data tab's auto, not ShareGPT chat
    with pytest.raises(api.UserError, match="this dataset is preference. It suits DPO or ORPO"):
        api.check_data(str(path), "sft")
    wrong = {**row, "rejected": {"from": "human", "value": "No."}}
    path.write_text(json.dumps(row) + "\n" + json.dumps(wrong) + "\n")
    assert api.check_data(str(path), "dpo") == "preference"
    with pytest.raises(api.UserError, match="row 2: 'rejected' should be the assistant's reply, not a 'user' turn"):
        check_job(spec_for(tiny_llama, path))


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_pairs_start_with_the_one_bos_sft_gives_them(tmp_path, monkeypatch, objective):
    """TRL tokenizes conversations through apply_chat_template, which adds no BOS: a base model whose tokenizer adds
    one (Llama 3, Gemma) given ChatML was trained by DPO on prompts without the BOS that SFT, the chat and llama.cpp
    put first. The ids TRL trains on are render()'s, one BOS first, and the run's tokenizer keeps its own template.
    (ORPO puts the BOS first itself, and is checked alongside so that it stays so.)"""
    from tiny import make_llama3

    from engine.data.templates import TEMPLATES
    from engine.data.tokenizing import render
    from engine.training.trl_run import TrlRun

    path, tok = make_llama3(tmp_path / "base", "chatml")
    data = tmp_path / "pair.jsonl"
    data.write_text(json.dumps(dict(prompt="Who are you?", chosen=IDENTITY_ANSWER, rejected=REJECTED)) + "\n")
    trainers = []
    monkeypatch.setattr(TrlRun, "train", lambda run, trainer: trainers.append(trainer))  # made, not trained
    spec = spec_for(path, data, objective=objective, max_steps=1)
    (tmp_path / "run").mkdir()
    train(spec, tmp_path / "run", RunLog(tmp_path / "run"), False, lambda: False, print)
    row = trainers[0].train_dataset[0]
    prompt = [{"role": "user", "content": "Who are you?"}]
    want = tok(render(tok, prompt, True), add_special_tokens=False).input_ids
    whole = tok(render(tok, [*prompt, {"role": "assistant", "content": IDENTITY_ANSWER}]), add_special_tokens=False)
    assert want[0] == tok.bos_token_id != want[1]
    if objective == "dpo":
        assert (row["prompt_ids"], row["prompt_ids"] + row["chosen_ids"]) == (want, whole.input_ids)
    else:  # ORPO adds the tokenizer's EOS after the template's end of turn
        assert row["prompt_input_ids"] == want
        assert row["chosen_input_ids"][: len(whole.input_ids)] == whole.input_ids
    assert trainers[0].processing_class.chat_template == TEMPLATES["chatml"]


@pytest.mark.parametrize("adds_bos", [True, False])
def test_orpo_pairs_start_with_a_bos_only_where_sft_puts_one(tmp_path, monkeypatch, adds_bos):
    """TRL's ORPO put the tokenizer's BOS first whenever it has one, so a tokenizer that names a BOS but adds none to
    text (Qwen-style: bos_token set, add_bos_token false) trained ORPO on a BOS that SFT never gives the model. ORPO's
    prompt ids are SFT's (render() and tokenize, engine.data.tokenizing.leading_bos) for both kinds of tokenizer."""
    from tiny import make_llama3

    from engine.data.tokenizing import leading_bos, render
    from engine.training.trl_run import TrlRun

    path, tok = make_llama3(tmp_path / "base", "chatml", adds_bos=adds_bos)
    assert tok.bos_token_id is not None and bool(leading_bos(tok)) == adds_bos
    data = tmp_path / "pair.jsonl"
    data.write_text(json.dumps(dict(prompt="Who are you?", chosen=IDENTITY_ANSWER, rejected=REJECTED)) + "\n")
    trainers = []
    monkeypatch.setattr(TrlRun, "train", lambda run, trainer: trainers.append(trainer))  # made, not trained
    (tmp_path / "run").mkdir()
    train(spec_for(path, data, objective="orpo", max_steps=1), tmp_path / "run", RunLog(tmp_path / "run"), False,
          lambda: False, print)  # fmt: skip
    row = trainers[0].train_dataset[0]
    prompt = [{"role": "user", "content": "Who are you?"}]
    want = tok(render(tok, prompt, True), add_special_tokens=False).input_ids
    whole = tok(render(tok, [*prompt, {"role": "assistant", "content": IDENTITY_ANSWER}]), add_special_tokens=False)
    assert (want[0] == tok.bos_token_id) == adds_bos
    assert row["prompt_input_ids"] == want
    assert row["chosen_input_ids"][: len(whole.input_ids)] == whole.input_ids  # then the tokenizer's EOS
    assert row["rejected_input_ids"][: len(want)] == want
    assert trainers[0].processing_class.bos_token_id == tok.bos_token_id  # the run's tokenizer keeps its BOS
