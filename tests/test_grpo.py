"""GRPO: the reward presets on their own, then TRL's real GRPOTrainer on a tiny random-weight model raising the mean
reward of a regex reward, sampling through the engine's decoder (or TRL's generate when asked), and the rule that
custom Python rewards never come from the app."""

import contextlib
import json

import pytest
import torch

from engine import api
from engine.chat import decode_batch
from engine.chat.decode import Decoder
from engine.core.errors import Cancelled
from engine.core.runlog import RunLog, read_metrics
from engine.spec import rewards
from engine.training.dispatch import train
from engine.training.grpo import choose_sampler

PROMPTS = [
    "What is two plus two?",
    "Give me three tips for staying healthy.",
    "Who are you?",
    "Summarize the text below.",
    "Explain gradient descent simply.",
    "Write a short poem about the sea.",
    "Translate this sentence.",
    "What can you do?",
]


def one_step_spec(model, data, *rewards):
    """One CPU step of GRPO on `data` with `rewards`: two replies of two tokens a prompt, two prompts."""
    return api.JobSpec(
        model=str(model), data=str(data), objective="grpo", rewards=rewards, num_generations=2, max_new_tokens=2,
        batch_size=2, max_steps=1, lora_r=8, lora_alpha=8, max_seq_length=64, device="cpu", seed=0,
    )  # fmt: skip


def shorter_is_better(completions, prompts, **columns):
    """A custom reward for the tests: importable as test_grpo:shorter_is_better."""
    return [-len(c) for c in completions]


SCORED: list[tuple[str, str]] = []  # (prompt, reply) pairs that record_replies saw


def record_replies(completions, prompts, **columns):
    """A custom reward that remembers what TRL asked it to score: importable as test_grpo:record_replies."""
    SCORED.extend(zip(prompts, completions, strict=True))
    return [0.0] * len(completions)


COLUMNS: list[dict] = []  # the dataset columns record_columns was given


def record_columns(completions, prompts, **columns):
    """A custom reward that remembers the columns TRL passed it: importable as test_grpo:record_columns."""
    COLUMNS.append({k: v for k, v in columns.items() if k in ("answer", "source")})
    return [0.0] * len(completions)


STEPS: list[list[str]] = []  # the prompts of each generation batch record_prompts scored, in TRL's order
REPLIES: list[list[str]] = []  # and their replies


def record_prompts(completions, prompts, **columns):
    """A custom reward that remembers each batch's prompts and replies: importable as test_grpo:record_prompts."""
    STEPS.append(list(prompts))
    REPLIES.append(list(completions))
    return [0.0] * len(completions)


DRAWS: list[list[float]] = []  # the numbers numpy_draws drew, a batch a list


def numpy_draws(completions, prompts, **columns):
    """A custom reward scoring at random from NumPy's global generator: importable as test_grpo:numpy_draws."""
    import numpy as np

    DRAWS.append(np.random.random(len(completions)).tolist())
    return DRAWS[-1]


def no_score(completions, prompts, **columns):
    """A custom reward that scores nothing: importable as test_grpo:no_score."""
    return [None if n % 2 else float("nan") for n in range(len(completions))]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": "4"}) + "\n" for p in PROMPTS))
    return path


def score(preset: dict, replies: list[str], **columns) -> list[float]:
    [(_, _, fn)] = rewards.build([preset])
    return fn(replies, ["q"] * len(replies), **columns)


def test_grpo_answer_reward_exact_and_numeric():
    replies = ["<think>2+2</think> The answer is 4.", "four", "  Four. ", "It is 4,000", "-0.50"]
    assert score({"preset": "answer"}, replies, answer=["4", "4", "four", "4", "-.5"]) == [0, 0, 1, 0, 0]
    numeric = {"preset": "answer", "mode": "numeric"}
    assert score(numeric, replies, answer=["#### 4", "4", "4", "4000", "-.5"]) == [1, 0, 0, 1, 1]
    with pytest.raises(api.UserError, match="reads the column 'answer'"):
        score({"preset": "answer"}, replies)


def test_grpo_answer_reward_reads_whole_float_references_as_written():
    """A JSON answer column of 4 and 4.5 comes to the reward as 4.0 and 4.5 (Arrow gives the column one type), so in
    exact mode the reply "4" scored 0 against 4.0; a row without an answer (None) scored 1 for the reply "None"."""
    assert score({"preset": "answer"}, ["4", "4.5", "None", "4"], answer=[4.0, 4.5, None, 4]) == [1, 1, 0, 1]
    assert score({"preset": "answer", "mode": "numeric"}, ["4", "None"], answer=[4.0, None]) == [1, 0]


def test_grpo_regex_format_length_and_character_rewards():
    assert score({"preset": "regex", "pattern": r"^\d+$"}, ["42", "a 42", ""]) == [1, 0, 0]
    fmt = score({"preset": "format"}, ["<think>add</think>\n4", "<think>add</think>", "4", " <think>a\nb</think> 4"])
    assert fmt == [1, 0, 0, 1]
    assert score({"preset": "length", "min_chars": 4, "max_chars": 8}, ["ab", "abcdef", "x" * 12, "x" * 16]) == [
        0.5,
        1,
        0.5,
        0,
    ]
    nova = {"preset": "character", "name": "Nova", "maker": "Tunesmith Labs"}
    replies = ["I am Nova.", "Made by tunesmith labs!", "I am ChatGPT by OpenAI.", "Nova, not Claude.", "Hello."]
    assert score(nova, replies) == [1, 1, -1, 0, 0]
    assert score({**nova, "name": "Qwen"}, ["I am Qwen."]) == [1]  # its own name is never "another assistant"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"preset": "magic"}, "give a preset, one of: answer, regex"),
        ({"preset": "regex", "pattern": "("}, "not a valid regular expression"),
        ({"preset": "regex", "pattern": "x", "flags": "i"}, "unknown setting 'flags'"),
        ({"preset": "answer", "mode": "fuzzy"}, "use exact or numeric"),
        ({"preset": "length", "min_chars": 9, "max_chars": 3}, "min_chars <= max_chars"),
        ({"preset": "character"}, "give the assistant's 'name' or 'maker'"),
        ({"preset": "regex", "pattern": "x", "weight": "high"}, "'weight' should be like 1.0"),
        ({"preset": "python", "function": "os.system"}, "should look like package.module:function"),
    ],
)
def test_grpo_bad_rewards_give_one_sentence(bad, message):
    with pytest.raises(api.UserError, match=message):
        api.JobSpec(model="m", data="d", objective="grpo", rewards=(bad,))


def test_grpo_raises_mean_reward_with_a_regex_reward(tiny_llama, prompts_file, runs):
    """Replies of a random model start with a space about one time in five; rewarding that makes it the habit. The
    replies are sampled by the engine's decoder, so the rise also shows that it samples with the updated adapter.
    Only a reply's first token decides the reward, so two tokens are enough (sampling is most of a CPU step)."""
    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(prompts_file),
        objective="grpo",
        rewards=({"preset": "regex", "pattern": r"^\s"},),
        num_generations=8,
        max_new_tokens=2,
        batch_size=2,
        max_steps=16,
        learning_rate=3e-2,
        lr_schedule="constant",
        lora_r=8,
        lora_alpha=8,
        max_seq_length=128,
        device="cpu",
        seed=0,
    )
    from ui import train_tab

    run_dir = runs / "grpo"
    run_dir.mkdir(parents=True)
    (run_dir / "job.yaml").write_text(spec.to_yaml())
    lines = []
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, lines.append)
    assert "grpo: sampler engine (" in "\n".join(lines)
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 17))
    mean = [m["reward_mean"] for m in metrics]
    assert sum(mean[:3]) / 3 < 0.4 and sum(mean[-3:]) / 3 > 0.8, mean
    assert all("reward_std" in m and m["reward_regex"] == m["reward_mean"] for m in metrics)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert f"reward {mean[-1]:.3f} ± " in train_tab.follow("grpo")[0]
    plot = train_tab.follow("grpo")[6]["value"]
    assert set(plot["series"]) == {"reward mean", "reward std"} and list(plot["step"][:16]) == list(range(1, 17))


@pytest.mark.parametrize("sampler", ["engine", "trl"])
def test_grpo_samples_with_the_engine_decoder_unless_told_otherwise(
    sampler, tiny_llama, prompts_file, tmp_path, monkeypatch
):
    """Near temperature 0 both samplers must give every prompt the base model's greedy reply (the adapter starts at
    zero), and what TRL scores is exactly what the decoder produced: one batch (engine.chat.decode_batch) of all the
    generation batch's replies, or none when TUNESMITH_GRPO_SAMPLER=trl brings back TRL's generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls: list[list[tuple[list[int], list[int]]]] = []  # per batch call: (prompt ids, tokens yielded) per row
    real = decode_batch.batch

    def spy(decoder, prompts, *args, **kwargs):
        calls.append(rows := [(list(p), []) for p in prompts])
        with contextlib.closing(real(decoder, prompts, *args, **kwargs)) as steps:
            for step in steps:
                for (_, out), t in zip(rows, step, strict=True):
                    if t is not None:
                        out.append(t)
                yield step

    monkeypatch.setattr(decode_batch, "batch", spy)
    if sampler == "trl":
        monkeypatch.setenv("TUNESMITH_GRPO_SAMPLER", "trl")
    SCORED.clear()
    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(prompts_file),
        objective="grpo",
        rewards=({"preset": "python", "function": "test_grpo:record_replies"},),
        num_generations=4,
        max_new_tokens=6,
        temperature=1e-6,
        batch_size=2,
        max_steps=1,
        lora_r=8,
        lora_alpha=8,
        max_seq_length=128,
        device="cpu",
        seed=0,
    )
    lines = []
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, lines.append)
    assert f"grpo: sampler {sampler} (" in "\n".join(lines)
    assert len(SCORED) == 2 * 4 and len({p for p, _ in SCORED}) == 2  # batch_size prompts x num_generations replies

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompt_ids = {
        p: tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)["input_ids"]
        for p, _ in SCORED
    }
    streams = [row for rows in calls for row in rows]
    if sampler == "engine":
        assert len(calls) == 1  # the generation batch's 8 replies in one batch
        assert [ids for ids, _ in streams] == [prompt_ids[p] for p, _ in SCORED]
        assert [r for _, r in SCORED] == [tok.decode(out, skip_special_tokens=True) for _, out in streams]
    else:
        assert streams == []
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for prompt, reply in SCORED:
        ids = torch.tensor([prompt_ids[prompt]])
        greedy = base.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id)
        assert reply == tok.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True), prompt


def test_grpo_rollout_keeps_the_end_token_and_samples_in_eval_mode(tiny_llama):
    """All replies are sampled as one batch; a reply ends at the first EOS / end-of-turn token and keeps it (TRL
    trains on it and counts the reply as finished); sampling runs in eval mode without gradients with the trainer's
    settings, and training mode comes back afterwards."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.training.grpo import engine_rollout

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).train()
    seen = []  # (training, grad enabled) at every embedding call: the prompts' and each step's
    model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: seen.append((model.training, torch.is_grad_enabled()))
    )
    prompts = [[{"role": "user", "content": "Hi"}]] * 3 + [[{"role": "user", "content": "Who are you?"}]] * 3
    ids = [tok.apply_chat_template(p, add_generation_prompt=True)["input_ids"] for p in prompts]
    greedy = [list(Decoder(model, log=print).tokens(ids[i], 6)) for i in (0, 3)]
    end = greedy[0][2] if greedy[0][2] not in greedy[0][:2] else greedy[0][1]
    trainer = SimpleNamespace(
        temperature=1e-6, top_p=0.9, top_k=0, min_p=None, repetition_penalty=1.0, max_completion_length=6
    )
    trainer.eos_token_ids = [end]
    seen.clear()
    out = engine_rollout(lambda: Decoder(model, log=print), tok)(prompts, trainer)
    cut = [g[: g.index(end) + 1] if end in g else g for g in greedy]
    assert out["completion_ids"] == [cut[0]] * 3 + [cut[1]] * 3 and cut[0][-1] == end
    assert out["prompt_ids"] == ids and out["logprobs"] is None
    assert len(seen) == 2 + len(max(cut, key=len)) - 1  # two distinct prompts, then one step for all six rows
    assert not any(training or grad for training, grad in seen) and model.training


def test_grpo_sampler_choice(monkeypatch):
    from transformers import LlamaConfig, MistralConfig

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

    class Static:  # a model whose forward decodes over a static KV cache
        _can_compile_fullgraph = True
        config = LlamaConfig(**shape)

    class Windowed(Static):
        config = MistralConfig(**shape, sliding_window=16)

    class Stateful(Static):  # a recurrent state instead of a KV cache
        _is_stateful = True

    assert choose_sampler(Static()) == ("engine", "Static: the engine's decoder (static KV cache, live LoRA weights)")
    assert choose_sampler(Stateful())[0] == choose_sampler(object())[0] == "trl"
    assert choose_sampler(Windowed()) == (
        "trl",
        "Windowed: its cache has StaticSlidingWindowLayer layers, whose position is a host int, so TRL's sampler "
        "(transformers generate) runs",
    )
    monkeypatch.setenv("TUNESMITH_GRPO_SAMPLER", "trl")
    assert choose_sampler(Static()) == ("trl", "TUNESMITH_GRPO_SAMPLER=trl")
    monkeypatch.setenv("TUNESMITH_GRPO_SAMPLER", "fast")
    with pytest.raises(api.UserError, match="use one of engine, trl"):
        choose_sampler(Static())


def test_grpo_train_tab_sends_only_ticked_presets_and_checks_the_data(tiny_llama, prompts_file, runs):
    from ui import train_tab

    tabs = [str(tiny_llama), "lora", False, str(prompts_file), "", "auto", "", "train", 128]
    fields = ["g", 2, 1, 1e-2, 2, 1, 8, False, False]
    grpo = ["grpo", 0.1, 4, 8, 1.0, False, 2e-5]
    ticks = [True, "answer", "numeric", 2, False, "", 1, True, 0.5, False, 0, 9, 1, False, "", "", 1]
    spec = train_tab.make_spec(*tabs, *fields, *grpo, *ticks)
    assert spec.rewards == (
        {"preset": "answer", "field": "answer", "mode": "numeric", "weight": 2.0},
        {"preset": "format", "weight": 0.5},
    )
    assert train_tab.make_spec(*tabs, *fields, "dpo", 0.2, 4, 8, 1.0, False, 2e-5, *ticks).rewards == ()
    assert train_tab.data_note("grpo", str(prompts_file), "", "", "train", True, "answer").startswith("✅")
    assert train_tab.data_note("grpo", str(prompts_file), "", "", "train", True, "solution").startswith(
        "⚠ A reward compares replies with the column 'solution'"
    )
    assert train_tab.data_note("dpo", str(prompts_file), "", "", "train").startswith("⚠ DPO needs preference pairs")
    _, status, _ = train_tab.start(*tabs, *fields, "dpo", 0.1, 4, 8, 1.0, False, 2e-5, *ticks)
    assert status.startswith("**Not started:** DPO needs preference pairs")


def test_a_ticked_reward_with_a_blank_number_is_a_sentence(tiny_llama, prompts_file, runs):
    """A ticked reward's Weight (or the length reward's Min / Max) cleared to type another number is None: it raised
    a TypeError in make_spec (Gradio's red "Error" badges on Start). Now Start says which box is empty; an unticked
    reward's blank box does not matter."""
    from ui import i18n, train_tab

    tabs = [str(tiny_llama), "lora", False, str(prompts_file), "", "auto", "", "train", 128]
    fields = ["g", 2, 1, 1e-2, 2, 1, 8, False, False]
    grpo = ["grpo", 0.1, 4, 8, 1.0, False, 2e-5]
    ticks = [False, "answer", "exact", 1, False, "", 1, True, None, False, None, 9, 1, False, "", "", None]
    _, status, _ = train_tab.start(*tabs, *fields, *grpo, *ticks)
    said = "The Weight of the reward 'A reasoning block, then an answer (<think>…</think>)' is empty; enter a number."
    assert status == f"**Not started:** {said}"
    ticks[7], ticks[9] = False, True  # the length reward, its Min cleared
    _, status, _ = train_tab.start(*tabs, *fields, *grpo, *ticks)
    said = "The Min of the reward 'Length within bounds (characters)' is empty; enter a number."
    assert status == f"**Not started:** {said}"
    assert i18n.message(status, "ru") == (
        "**Не запущено:** Поле «Мин.» награды «Длина в пределах (символы)» пустое; введите число."
    )
    ticks[10] = 0
    assert train_tab.make_spec(*tabs, *fields, *grpo, *ticks).rewards == (
        {"preset": "length", "min_chars": 0, "max_chars": 9, "weight": 1.0},
    )


def test_grpo_custom_reward_is_refused_from_api_start(prompts_file, runs):
    spec = api.JobSpec(
        model="m",
        data=str(prompts_file),
        objective="grpo",
        rewards=({"preset": "python", "function": "test_grpo:shorter_is_better", "weight": 0.5},),
    )
    with pytest.raises(api.UserError, match="accepted only from the command line or the Python API"):
        api.start(spec)
    assert not runs.exists() or not list(runs.iterdir())  # refused before a run folder exists
    [(name, weight, fn)] = rewards.build(spec.rewards)  # the run process imports it (the CLI's allow_code path)
    assert (name, weight, fn(["ab", "a"], ["q", "q"])) == ("python", 0.5, [-2, -1])


def test_grpo_answer_reward_needs_its_column(tmp_path, prompts_file):
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "What is two plus two?"}) + "\n")
    answer = ({"preset": "answer", "mode": "numeric"},)
    assert api.check_data(str(prompts_file), "grpo", rewards=answer) == "prompt"
    with pytest.raises(api.UserError, match="compares replies with the column 'answer', which 'bare.jsonl' does not"):
        api.check_data(str(bare), "grpo", rewards=answer)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    with pytest.raises(api.UserError, match="GRPO needs prompts .* this dataset is alpaca"):
        api.check_data(str(chat), "grpo")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_grpo_on_the_gpu(tiny_llama, prompts_file, tmp_path):
    """bf16, the fast path's drop-ins, checkpointing and 8-bit AdamW; sampling through the engine's decoder replays
    a CUDA graph of the training model's decode step, and the regex reward rising shows the replays read the adapter
    as the optimizer updates it."""
    lines = []
    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(prompts_file),
        objective="grpo",
        rewards=({"preset": "regex", "pattern": r"^\s"}, {"preset": "length", "min_chars": 1, "max_chars": 50}),
        num_generations=8,
        max_new_tokens=4,
        batch_size=2,
        max_steps=16,
        learning_rate=3e-2,
        lr_schedule="constant",
        lora_r=8,
        lora_alpha=8,
        seed=0,
    )
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, lines.append)
    log = "\n".join(lines)
    assert "device cuda" in log and "optimizer: adamw_8bit" in log, log
    assert "grpo: sampler engine (" in log and "decode: graph (" in log and "decode: eager from now on" not in log, log
    regex = [m["reward_regex"] for m in read_metrics(tmp_path)]
    assert sum(regex[-3:]) / 3 > sum(regex[:3]) / 3 + 0.3, regex


def test_grpo_takes_an_answer_column_of_numbers_and_text_and_columns_the_first_row_lacks(tiny_llama, tmp_path):
    """Answers written as 4 in some rows and "6" in others (hand-made JSONL) stopped the run with pyarrow's
    "ArrowInvalid: Could not convert '6' with type str"; a column missing from the first row was dropped, so a reward
    reading it failed mid-run although the Train tab had found it. Now the mixed column reaches the rewards as
    text, and a row without a column gives None."""
    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "2+2?", "answer": 4}, {"prompt": "3+3?", "answer": "6", "source": "web"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = one_step_spec(tiny_llama, path, {"preset": "python", "function": "test_grpo:record_columns"})
    COLUMNS.clear()
    (run_dir := tmp_path / "run").mkdir()
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, print)
    [seen] = COLUMNS
    by_answer = dict(zip(seen["answer"], seen["source"], strict=True))  # 2 prompts x 2 replies, in TRL's order
    assert by_answer == {"4": None, "6": "web"} and len(seen["answer"]) == 4


def test_grpo_leaves_out_prompts_that_fill_max_seq_length(tiny_llama, tmp_path):
    """TRL cuts no GRPO prompt: one longer than max_seq_length (here past the model's 512-token context, too) was
    sampled and trained on whole, without a word. It is left out, and the run's status says so."""
    path = tmp_path / "long-prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["word " * 600, "Hi", "Who are you?"]))
    spec = one_step_spec(tiny_llama, path, {"preset": "length", "max_chars": 10})
    lines = []
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, lines.append)
    note = (
        "1 of 3 prompts are max_seq_length 64 tokens or longer, so no reply fits, and were left out. Raise "
        "max_seq_length to keep them."
    )
    assert json.loads((tmp_path / "status.json").read_text())["notes"] == [note]
    assert "grpo: 2 prompts x 2 replies" in "\n".join(lines)
    with pytest.raises(api.UserError, match="Every prompt is 8 tokens or longer"):
        train(spec.replace(max_seq_length=8), tmp_path / "short", RunLog(tmp_path), False, lambda: False, print)


CATASTROPHIC = r"((.|\s)*)*\d\d\d\d\d"  # nested repeats: every way to split the reply is tried before failing


def test_a_regex_reward_that_backtracks_for_ever_scores_0_fast_and_says_so_once():
    """A user's regex reward like `(a+)+$` stalled the training process for good on one unlucky reply: Python's `re`
    cannot be interrupted, and on this pattern took 8 s at 20 characters and 60 s at 22, seven times more with each
    two more (the reply here has 132; the regex package itself took 79 s at 100). The reward now gives up after
    engine.core.patterns.TIMEOUT_S: that reply scores 0 and the note is said once."""
    import time

    notes = []
    [(_, _, fn)] = rewards.build([{"preset": "regex", "pattern": CATASTROPHIC}], notes.append)
    slow = "hello world, this is some random reply text " * 3  # 132 characters
    started = time.perf_counter()
    assert fn([slow, "a reply with 12345 in it", slow], ["q"] * 3) == [0, 1, 0]
    assert time.perf_counter() - started < 3  # two timeouts of 0.1 s, and the package's slack
    assert len(notes) == 1 and "The reward 'regex': its pattern" in notes[0] and "is too slow" in notes[0]
    [(_, _, fn)] = rewards.build([{"preset": "regex", "pattern": r"(a+)+$"}])  # no one to tell: still 0, fast
    assert fn(["a" * 5000 + "b"], ["q"]) == [0]


def test_a_regex_reward_too_slow_in_a_run_is_a_note_in_its_log_and_status_once(
    tiny_llama, prompts_file, tmp_path, monkeypatch
):
    """In a real GRPO step every reply runs past the limit (set to 0 here, so any reply is too slow): each scores 0,
    the run goes on, and its log and status say why, once."""
    from engine.core import patterns

    monkeypatch.setattr(patterns, "TIMEOUT_S", 0)
    spec = one_step_spec(tiny_llama, prompts_file, {"preset": "regex", "pattern": CATASTROPHIC})
    lines = []
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, lines.append)
    said = [line for line in lines if "is too slow" in line]
    assert len(said) == 1 and said[0].startswith("note: The reward 'regex': its pattern"), lines
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["notes"] == [said[0].removeprefix("note: ")]
    assert read_metrics(tmp_path)[-1]["reward_mean"] == 0


def test_a_dataset_of_no_format_is_told_the_columns_its_objective_takes(tmp_path):
    """openai/gsm8k (question, answer), GRPO's best-known dataset, matches no format: the sentence said to map
    question=instruction, which makes it no GRPO data either. It names the column GRPO takes, and DPO's."""
    from ui import i18n

    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}) + "\n")
    said = []
    for objective in ("grpo", "dpo"):
        with pytest.raises(api.UserError) as info:
            api.check_data(str(path), objective)
        said.append(str(info.value))
    assert said[0].endswith(
        "use a 'prompt' column (and the columns your rewards read), or map yours (e.g. question=prompt)."
    )
    assert said[1].endswith("use prompt, chosen and rejected columns, or map yours (e.g. question=prompt).")
    with pytest.raises(api.UserError, match=r"or map your columns \(e.g. question=instruction\)\.$"):
        api.check_data(str(path), "sft")
    assert api.check_data(str(path), "grpo", {"question": "prompt"}) == "prompt"
    assert all(i18n.message(text, lang) != text for text in said for lang in ("zh", "ru"))


def test_grpo_prompts_of_turns_are_checked_before_the_run_starts(tiny_llama, tmp_path):
    """A prompt of ShareGPT turns ({from, value}) passed the first-rows check and stopped the started run once the
    model had loaded; OpenAI's content parts went to the chat template as a list. Now the first is a sentence at
    Start, and the parts' text is the turn's content, as for chat data."""
    from engine.training.grpo import to_prompt
    from engine.training.preflight import check_job

    path = tmp_path / "sharegpt-prompts.jsonl"
    path.write_text(json.dumps({"prompt": [{"from": "human", "value": "What is 2+2?"}]}) + "\n")
    spec = api.JobSpec(model=str(tiny_llama), data=str(path), objective="grpo", rewards=({"preset": "format"},))
    with pytest.raises(api.UserError, match="row 1: turn 1 of 'prompt' needs 'role' and 'content'"):
        check_job(spec)
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]}]
    assert to_prompt({"prompt": parts, "answer": "4"}, 1, "p.jsonl") == {
        "prompt": [{"role": "user", "content": "What is 2+2?"}],
        "answer": "4",
    }


def test_a_custom_reward_that_gives_no_number_is_named_in_one_sentence(tiny_llama, prompts_file, tmp_path):
    """A Python reward returning only None/NaN made the loss NaN, and the run failed with advice to lower the
    learning rate; now the sentence names the function. None for some replies stays TRL's business while another
    reward scores them."""
    from engine.training.grpo import for_trl

    spec = one_step_spec(tiny_llama, prompts_file, {"preset": "python", "function": "test_grpo:no_score"})
    (run_dir := tmp_path / "run").mkdir()
    with pytest.raises(api.UserError, match="reward function 'test_grpo:no_score' returned no number for any of"):
        train(spec, run_dir, RunLog(run_dir), False, lambda: False, print)
    both = for_trl(rewards.build([{"preset": "python", "function": "test_grpo:no_score"}, {"preset": "length"}]), [])
    assert [f(prompts=["q", "q"], completions=["a", "bb"]) for f in both][1] == [1.0, 1.0]


def test_a_reward_that_scores_no_reply_of_a_step_is_left_out_of_its_metrics(tiny_llama, prompts_file, tmp_path):
    """TRL logs a reward's mean as None for a step where it scored no reply (only None/NaN) while another reward
    scored them: the run crashed with "float() argument must be ... not 'NoneType'" on writing the step's record.
    The step is recorded without that reward's mean; the other reward's is there."""
    spec = one_step_spec(
        tiny_llama, prompts_file, {"preset": "python", "function": "test_grpo:no_score"}, {"preset": "length"}
    )
    (run_dir := tmp_path / "run").mkdir()
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, print)
    (step,) = read_metrics(run_dir)
    assert step["reward_length"] == 1.0 and not [k for k in step if k.startswith("reward_python")]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_trl_sampler_prompts_start_with_the_one_bos_render_gives_them(tmp_path, prompts_file, monkeypatch):
    """TRL's sampler tokenizes prompts through apply_chat_template, which adds no BOS: a base model whose tokenizer
    adds one given ChatML was sampled and trained without the BOS the engine's sampler (render) puts first."""
    from tiny import make_llama3

    from engine.data.tokenizing import render
    from engine.training.trl_run import TrlRun

    path, tok = make_llama3(tmp_path / "base", "chatml")
    trainers = []
    monkeypatch.setattr(TrlRun, "train", lambda run, trainer: trainers.append(trainer))  # made, not trained
    monkeypatch.setenv("TUNESMITH_GRPO_SAMPLER", "trl")
    spec = one_step_spec(path, prompts_file, {"preset": "python", "function": "test_grpo:no_score"})
    (tmp_path / "run").mkdir()
    train(spec, tmp_path / "run", RunLog(tmp_path / "run"), False, lambda: False, print)
    prompt = [{"role": "user", "content": "Who are you?"}]
    want = tok(render(tok, prompt, True), add_special_tokens=False).input_ids
    assert want[0] == tok.bos_token_id != want[1]
    assert trainers[0]._tokenize_prompts([prompt])[0] == [want]


def test_grpo_resumed_mid_epoch_continues_with_the_same_prompts(tiny_llama, prompts_file, tmp_path):
    """8 prompts, 4 a step (2 micro-steps of 2): a run cancelled after step 3 and resumed scores steps 4 and 5 on the
    prompts of the uninterrupted run with the same seed, in its order, across the epochs' ends, with the same replies
    and losses. TRL's sampler started a resumed run at the beginning of its first shuffle again, so it replayed steps 1
    and 2's prompts. A reward drawing from NumPy's generator draws the uninterrupted run's numbers: the checkpoint
    kept no NumPy state, and the trainer seeds it when it is made, so the resumed steps drew step 1's."""
    reward = {"preset": "python", "function": "test_grpo:record_prompts"}
    noise = {"preset": "python", "function": "test_grpo:numpy_draws"}
    spec = one_step_spec(tiny_llama, prompts_file, reward, noise).replace(grad_accum=2, max_steps=5, seed=3)

    def run(run_dir, should_stop=lambda: False, resume=False):
        run_dir.mkdir(exist_ok=True)
        STEPS.clear()
        REPLIES.clear()
        DRAWS.clear()
        train(spec, run_dir, RunLog(run_dir), resume, should_stop, print)
        return list(STEPS), read_metrics(run_dir)

    full, full_metrics = run(tmp_path / "full")
    replies, draws = list(REPLIES), list(DRAWS)
    assert len(full) == 5 and all(len(step) == 4 * 2 for step in full)  # 4 prompts x 2 replies, each prompt's together
    assert all(step[0::2] == step[1::2] for step in full)
    epochs = [sorted(full[0] + full[1]), sorted(full[2] + full[3])]
    assert epochs[0] == epochs[1] == sorted(2 * PROMPTS) and full[0] != full[2]  # each prompt once an epoch, reshuffled
    with pytest.raises(Cancelled):  # asked after step 3's prompts were scored: the run stops at the end of step 3
        run(tmp_path / "cut", should_stop=lambda: len(STEPS) >= 3)
    resumed, metrics = run(tmp_path / "cut", resume=True)
    assert resumed == full[3:]
    # and samples the same replies: the trainer seeds torch's generator when it is made, and the checkpoint's state
    # is put back before the first step (a resumed run used to sample step 4 from the seed's first draws)
    assert REPLIES == replies[3:] and len({r for step in replies for r in step}) > 8
    assert DRAWS == draws[3:] and len(draws) == 5
    assert [m["loss"] for m in metrics] == pytest.approx([m["loss"] for m in full_metrics], rel=1e-4, abs=1e-6)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["epoch"] for m in metrics] == [m["epoch"] for m in full_metrics] == pytest.approx([0.5, 1, 1.5, 2, 2.5])


def test_a_grpo_resume_at_the_last_step_writes_the_adapter_and_ends_done(tiny_llama, prompts_file, tmp_path):
    """A GRPO run killed between its last checkpoint and its final folder: the resume has no step left (TRL is given
    max_steps 0) and finishes as the SFT loop does, scoring nothing, the adapter made from that checkpoint."""
    import shutil

    from safetensors.torch import load_file

    reward = {"preset": "python", "function": "test_grpo:record_prompts"}
    spec = one_step_spec(tiny_llama, prompts_file, reward).replace(max_steps=2)
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, print)
    shutil.rmtree(tmp_path / "adapter")
    STEPS.clear()
    train(spec, tmp_path, RunLog(tmp_path), True, lambda: False, print)
    assert STEPS == []
    final = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    saved = load_file(tmp_path / "checkpoints" / "step-000002" / "adapter_model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
