"""A training run's memory plan made for its data (engine.training.sft.plan_tokens): the most tokens, padding included,
any of its micro-steps computes, where that is fewer than batch_size x max_seq_length; never a micro-batch larger than
the plan; the plan for an Alpaca-like bound keeps what the worst case could not; and a CPU run through the fast path
that plans so."""

import json
import random
import re
from pathlib import Path

import pytest
from helpers import log_of, tiny_spec, wait_for

from engine import api
from engine.core.errors import UserError
from engine.core.hardware import Placement
from engine.data.batching import (
    EAGER_STEP_COST,
    GRAPH_SHAPE_COST,
    MAX_BUCKETS,
    SMALL_STEP,
    Collator,
    step_tokens,
)
from engine.data.tokenizing import Example
from engine.memory.checkpointing import SLACK
from engine.memory.estimate import Arch, estimate
from engine.memory.verdict import estimate_kw, plan_for, smallest_budget
from engine.models.loading import expects_varlen
from engine.spec.jobspec import JobSpec
from engine.training.sft import kept_to_plan, plan_tokens
from engine.training.steps import micro_batches_of_run, rows_of_run

QWEN3_4B = dict(
    model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
)  # fmt: skip


def _examples(lengths):
    return [Example(list(range(n)), list(range(n))) for n in lengths]


def _job(**kw) -> JobSpec:
    return JobSpec(**{"model": "tiny", "data": "-", "method": "qlora", "max_seq_length": 1024, "batch_size": 2, **kw})


def test_step_tokens_is_the_largest_micro_step_with_its_padding():
    examples = _examples([10, 300, 50, 700, 200])
    assert step_tokens(examples, 2, varlen=True) == 1024  # 700 + 300, up to a multiple of SMALL_STEP
    assert step_tokens(examples, 2, varlen=True, joined=2) == 1280  # a row of two micro-batches: 700+300+200+50
    assert step_tokens(examples, 2, varlen=False) == 1408  # two rows of 700
    assert step_tokens([], 2, varlen=True) == 0


def test_the_plan_tokens_of_joined_and_separate_micro_batches(monkeypatch):
    monkeypatch.delenv("TUNESMITH_JOIN", raising=False)
    monkeypatch.delenv("TUNESMITH_PLAN_FOR_DATA", raising=False)
    examples = _examples([10, 300, 50, 700, 200])
    # the run's own micro-batches, evened out by tokens: (700, 10), (50, 200), (300): 710, up to 768; of 2 x 1,024.
    # Full fine-tuning, whose weights may update in the backward where nothing can be cut, holds any micro-batch of
    # the data padding-free or padded (should the model take padded ones after all): two rows of 700, 1,408; its
    # validation passes' too (two rows of 900)
    assert plan_tokens(_job(), examples, None, varlen=True) == 768
    assert plan_tokens(_job(method="full"), examples, None, varlen=True) == 1408
    assert plan_tokens(_job(method="full"), examples, _examples([900, 800]), varlen=True) == 1856
    assert plan_tokens(_job(), examples, None, varlen=False) == 1408
    assert plan_tokens(_job(grad_accum=2), examples, None, varlen=True) == 1280  # the step's two joined
    assert plan_tokens(_job(grad_accum=2), examples, None, varlen=False) == 1408  # right-padded rows never join
    monkeypatch.setenv("TUNESMITH_JOIN", "0")
    assert plan_tokens(_job(grad_accum=2), examples, None, varlen=True) == 768
    monkeypatch.delenv("TUNESMITH_JOIN")
    # the validation passes' micro-batches count too
    assert plan_tokens(_job(), examples, _examples([900, 800]), varlen=True) == 1728
    # not fewer than batch_size x max_seq_length: the plan without the data
    assert plan_tokens(_job(max_seq_length=384), examples, None, varlen=True) is None  # 768 of 2 x 384
    # a step of 8 micro-batches (the 5 examples, then 3 again) joined into rows of at most 2 x 600: their largest
    assert plan_tokens(_job(grad_accum=8, max_seq_length=600), examples, None, varlen=True) == 1024
    assert plan_tokens(_job(grad_accum=8, max_seq_length=600, method="full"), examples, None, varlen=True) is None
    monkeypatch.setenv("TUNESMITH_PLAN_FOR_DATA", "0")
    assert plan_tokens(_job(), examples, None, varlen=True) is None


@pytest.mark.parametrize("varlen", [True, False], ids=["padding-free", "padded"])
@pytest.mark.parametrize("grad_accum", [1, 4])
def test_no_micro_step_is_larger_than_the_plan(varlen, grad_accum, monkeypatch):
    """Over several epochs (steps across an epoch's end included), every micro-batch or joined row the run makes, as
    the Collator pads it, holds at most the tokens the plan was made for, which are never above batch_size x
    max_seq_length."""
    monkeypatch.delenv("TUNESMITH_JOIN", raising=False)
    monkeypatch.delenv("TUNESMITH_PLAN_FOR_DATA", raising=False)
    rng = random.Random(0)
    for trial in range(6):
        max_seq = rng.choice([256, 512, 1000])
        lengths = [min(max_seq, int(rng.lognormvariate(4.5, 0.8)) + 2) for _ in range(rng.randint(30, 90))]
        examples = _examples(lengths)
        spec = _job(max_seq_length=max_seq, batch_size=rng.choice([1, 2, 3, 8]), grad_accum=grad_accum)
        tokens = plan_tokens(spec, examples, None, varlen)
        worst = spec.batch_size * spec.max_seq_length
        assert tokens is None or tokens < worst
        limit = tokens or worst
        joins = varlen and grad_accum > 1
        cap = limit if joins else 0
        per_step = grad_accum if joins else 1
        count = 3 * len(examples) // spec.batch_size + 1
        lens = lengths if varlen else None
        run = micro_batches_of_run(len(examples), spec.batch_size, trial, count, lens, per_step)
        rows = rows_of_run(run, grad_accum, 1, lengths, cap) if joins else run
        joined = grad_accum if joins else 1
        planned = rows[: len(rows) // 2] if varlen else None
        make = Collator(examples, spec.batch_size, 0, "cpu", varlen, lambda m: None, planned, GRAPH_SHAPE_COST,
                        MAX_BUCKETS, EAGER_STEP_COST, joined, cap, True)  # fmt: skip
        if tokens is not None:  # as engine.training.sft keeps them to the plan
            kept_to_plan(make, None, spec, (examples, ()), tokens, varlen, False, lambda m: None)
        # this trial's seed is not the spec's: its micro-batches are not the ones planned, and the second half of
        # them are past the Collator's planned sizes; cut to fit where over the plan, the same examples in order
        for row in rows:
            parts = make.rows(row)
            assert sum(parts, []) == row
            for part in parts:
                numel = make([examples[i] for i in part])["input_ids"].numel()
                assert numel <= limit, (trial, tokens, numel)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_right_padded_micro_batches_over_a_padding_free_plan_run_as_parts_within_it(batch_size):
    """A plan made for padding-free micro-batches, and a model that turned out to take right-padded ones
    (engine.models.loading.expects_varlen guessed wrong): each micro-batch whose padded size would be over the plan
    runs as parts, its examples in order, each padded within the plan; the others run whole; the log says so once."""
    rng = random.Random(batch_size)
    examples = _examples([700] + [rng.randint(5, 100) for _ in range(39)])  # one long example among short ones
    spec = _job(batch_size=batch_size)
    tokens = plan_tokens(spec, examples, None, varlen=True)
    lines = []
    make = Collator(examples, batch_size, 0, "cpu", False, lines.append)
    kept_to_plan(make, None, spec, (examples, ()), tokens, False, False, lines.append)
    assert make.padded_to == tokens and "runs as parts" in lines[-1]
    split = 0
    for micro in micro_batches_of_run(len(examples), batch_size, 0, 3 * len(examples) // batch_size):
        parts = make.rows(micro)
        assert sum(parts, []) == micro
        assert all(make([examples[i] for i in part])["input_ids"].numel() <= tokens for part in parts)
        whole = make([examples[i] for i in micro])["input_ids"].numel() <= tokens
        assert (len(parts) == 1) == whole  # a micro-batch within the plan runs whole
        split += len(parts) > 1
    assert split  # these lengths make some micro-batches too large for the plan
    unsplit = Collator(examples, batch_size, 0, "cpu", False, lines.append)
    plain = plan_tokens(spec, examples, None, varlen=False) or 10**9
    kept_to_plan(unsplit, None, spec, (examples, ()), plain, False, False, lines.append)
    assert unsplit.padded_to == 0  # a plan for right-padded micro-batches holds them
    with pytest.raises(UserError, match="TUNESMITH_PLAN_FOR_DATA=0"):  # weights updated in each part's backward
        kept_to_plan(
            Collator(examples, batch_size, 0, "cpu", False, print),
            None,
            spec,
            (examples, ()),
            tokens,
            False,
            True,
            print,
        )


def test_validation_batches_over_the_plan_run_in_parts_with_the_same_loss(tiny_qwen3):
    """The validation set's right-padded micro-batches over the plan (its one long example among short ones) are
    split as the training ones are, and the validation loss, a mean over predicted tokens, is the same as whole."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.training.validation import Validator

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    vocab = model.config.vocab_size
    rng = random.Random(1)
    valid = [Example([rng.randrange(3, vocab) for _ in range(n)], [rng.randrange(3, vocab) for _ in range(n)])
             for n in [90] + [rng.randint(4, 20) for _ in range(7)]]  # fmt: skip
    train = _examples([20] * 16)
    spec = _job(batch_size=4, eval_steps=1)
    whole = Validator(spec, valid, 4, Path("/nonexistent"), 0, "cpu", False, lambda m: None)
    split = Validator(spec, valid, 4, Path("/nonexistent"), 0, "cpu", False, lambda m: None)
    make = Collator(train, 4, 0, "cpu", False, lambda m: None)
    lines = []
    kept_to_plan(make, split, spec, (train, valid), 128, False, False, lines.append)
    assert split.collate.padded_to == 128 and "runs as parts" in lines[-1]  # 4 x 90 tokens padded: over 128
    assert len(split.collate.rows([0, 1, 2, 3])) > 1
    off = torch.autocast("cpu", enabled=False)
    assert abs(split.loss(model, off) - whole.loss(model, off)) < 1e-5


def test_the_plan_for_alpaca_like_data_keeps_16_bit_copies_the_worst_case_cannot():
    """qwen3_4b QLoRA at batch 8 x 2048 on the H100's 78.6 GiB: the worst case (16,384 tokens) recomputes layers and
    keeps no 16-bit copies of the NF4 weights; the Alpaca-like run's largest micro-batch (2,304 tokens) recomputes
    none and keeps every layer's. The plan for a bound is the plan of a micro-batch of that many tokens, and one for
    batch_size x max_seq_length or more is the worst case's."""
    arch = Arch.from_config(QWEN3_4B)
    spec = _job(max_seq_length=2048, batch_size=8)
    worst = plan_for(arch, spec, 78.6, None)
    data = plan_for(arch, spec, 78.6, None, tokens=2304)
    assert worst.checkpointed > 0 and worst.dense_layers == 0 and worst.graph_tokens == 16384
    assert data.checkpointed == 0 and data.dense_layers == 36 and data.graph_tokens == 2304
    assert data.peak_vram_gib * SLACK <= 78.6
    assert data == plan_for(arch, spec.replace(max_seq_length=2304, batch_size=1), 78.6, None)
    assert plan_for(arch, spec, 78.6, None, tokens=16384) == worst == plan_for(arch, spec, 78.6, None, tokens=20000)


def test_a_small_budget_fits_or_refuses_the_data_plan_as_its_estimate_says():
    """On a small budget the plan for the data's bound fits exactly where a micro-batch of that many tokens does
    (the smallest budget for it, and 0.1 GiB under it refused), with the estimate's own peak; the worst case needs
    more there."""
    arch = Arch.from_config(QWEN3_4B)
    spec = _job(max_seq_length=2048, batch_size=8)
    least = smallest_budget(arch, spec.replace(max_seq_length=2304, batch_size=1))
    assert least < smallest_budget(arch, spec)
    fitting = plan_for(arch, spec, least, None, tokens=2304)
    assert fitting.peak_vram_gib * SLACK <= least
    kw = dict(fitting.estimate_kw(), **estimate_kw(spec))
    e = estimate(arch, "qlora", 2304, 1, checkpointed_layers=fitting.checkpointed, fused_loss=True, **kw)
    assert e.peak_vram_gib == pytest.approx(fitting.peak_vram_gib, abs=0.01)
    with pytest.raises(UserError, match="over the"):
        plan_for(arch, spec, least - 0.1, None, tokens=2304)
    with pytest.raises(UserError, match="over the"):
        plan_for(arch, spec, least, None)


def test_expects_varlen_guesses_what_the_patched_model_takes(tiny_qwen3, monkeypatch):
    """The guess made before the weights load (engine.models.loading.expects_varlen) and the patched model's
    takes_varlen agree for a tiny Qwen3; a model type without a fast path, attention dropout, the fast path off or a
    CPU without the kernels guess right-padded."""
    from transformers import AutoModelForCausalLM

    from engine.patching import patch_model
    from engine.patching.modules import takes_varlen

    gpu = Placement("cuda", "bf16", "test")
    job = _job()
    assert expects_varlen(job, QWEN3_4B, gpu)
    assert not expects_varlen(job, dict(QWEN3_4B, attention_dropout=0.1), gpu)
    assert not expects_varlen(job, dict(QWEN3_4B, model_type="gemma3"), gpu)  # a multimodal wrapper's own type
    assert not expects_varlen(job.replace(fast_path=False), QWEN3_4B, gpu)
    monkeypatch.delenv("TUNESMITH_KERNELS_ON_CPU", raising=False)
    cpu = Placement("cpu", "fp32", "test")
    assert not expects_varlen(job, QWEN3_4B, cpu)
    monkeypatch.setenv("TUNESMITH_KERNELS_ON_CPU", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # kernels_on_cpu reads both (conftest sets it without a GPU only)
    cfg = json.loads((tiny_qwen3 / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    patch_model(model, lambda m: None)
    assert expects_varlen(job, cfg, cpu) and takes_varlen(model)


def test_a_run_plans_for_its_data_and_joins_rows_within_it(tiny_qwen3, runs, tmp_path, monkeypatch):
    """A LoRA run through the fast path on the CPU (no GPU budget there: the plan's shape is all it changes) with
    batch_size 2, grad_accum 4 and max_seq_length 512: the plan is made for the data's largest joined row, far under
    2 x 512, from the training and held-out examples loaded before the weights; the rows join within it, their
    planned sizes hold at most that many tokens, and the run trains."""
    monkeypatch.setenv("TUNESMITH_KERNELS_ON_CPU", "1")
    monkeypatch.delenv("TUNESMITH_PLAN_FOR_DATA", raising=False)
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and runs far away".split()
    rows = [{"instruction": "say", "input": "", "output": " ".join(rng.choices(words, k=n))} for n in range(2, 22)]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tiny_spec(
        tiny_qwen3, data, max_steps=2, batch_size=2, grad_accum=4, save_every=0, max_seq_length=512, eval_fraction=0.2
    )
    status = wait_for(api.start(spec))
    text = log_of(status)
    assert status.state == "done", text
    said = re.search(r"plan: made for the data's largest micro-batch, (\d+) tokens with its padding \(batch_size x "
                     r"max_seq_length would be 1024\)", text)  # fmt: skip
    assert said, text
    tokens = int(said[1])
    assert 0 < tokens < 1024 and tokens % SMALL_STEP == 0
    lines = text.splitlines()
    where = {key: next(k for k, line in enumerate(lines) if key in line) for key in ("validation data", "plan: made")}
    assert where["validation data"] < where["plan: made"] < next(k for k, x in enumerate(lines) if "parameters:" in x)
    assert f"join into padding-free rows of up to {tokens} tokens (the largest row planned for this data" in text
    sizes = re.search(r"rounded up to one of \d+ sizes planned for the run's \d+ rows \(([\d, ]+) tokens", text)
    assert sizes and max(int(s) for s in sizes[1].split(", ")) <= tokens, text
    assert [m["step"] for m in status.metrics if "loss" in m] == [1, 2]
