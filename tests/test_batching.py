"""Padding-free micro-batches (engine.data.batching): one row per micro-batch, shapes from a few buckets, and the same
loss and LoRA gradients as the right-padded rows, on the fast path (FastAttention + kernels.varlen_attention, in
Triton's interpreter here) and on plain transformers (whose sdpa mask detects the restarting position ids)."""

import itertools
import json
import math
import random
import re

import pytest
import torch
from helpers import log_of, tiny_spec, wait_for
from test_patching_parity import tiny_model, with_lora

from engine import api
from engine.data.batching import (
    EAGER_STEP_COST,
    GRAPH_SHAPE_COST,
    MAX_BUCKETS,
    SMALL_STEP,
    Collator,
    bucket,
    buckets,
    join,
    label_tokens,
    most_tokens,
    padded,
    padding_free,
    plan_buckets,
    segment_slots,
)
from engine.data.tokenizing import Example, pack
from engine.patching import patch_model
from engine.patching.modules import packed_gradient
from engine.training.steps import batches_for_epoch, even_out, micro_batches_of_run, rows_of_run

VOCAB = 96


def examples_for(lengths, seed=0):
    """Random examples: the first 3 tokens of each are a prompt (no loss)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=gen).tolist()
        out.append(Example(ids, [-100] * min(3, n) + ids[3:]))
    return out


def free_batch(examples, batch_size=None):
    batch_size = batch_size or len(examples)
    return padding_free(examples, 0, "cpu", segment_slots(examples, batch_size), most_tokens(examples, batch_size) + 40)


def test_padding_free_row_layout():
    a, b = examples_for([5, 3])
    batch = padding_free([a, b], 0, "cpu", slots=6, cap=100)
    assert batch["input_ids"].shape == (1, 64)  # 8 tokens, padded to the first bucket
    assert batch["input_ids"][0, :8].tolist() == a.input_ids + b.input_ids
    assert (batch["input_ids"][0, 8:] == 0).all()
    assert batch["labels"][0, :8].tolist() == [-100, *a.labels[1:], -100, *b.labels[1:]]
    assert (batch["labels"][0, 8:] == -100).all()
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, *range(56)]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 8, 64, 64, 64]  # the padding segment, then empty ones
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    with pytest.raises(ValueError, match="cu_seqlens"):
        padding_free([a, b], 0, "cpu", slots=3, cap=100)


def test_packed_sequences_keep_their_segments():
    packed = pack(examples_for([4, 6, 5]), max_len=12)
    assert [e.segments for e in packed] == [(4, 6), (5,)]
    batch = padding_free(packed, 0, "cpu", segment_slots(packed, 2), most_tokens(packed, 2))
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 10, 15, 15]
    assert batch["position_ids"][0].tolist() == [*range(4), *range(6), *range(5)]


def test_buckets_bound_the_shapes_of_an_epoch():
    """An epoch of random lengths (8 to 1,500 tokens, 8 examples a micro-batch) lands in a few shapes, each at most
    25% padding past 512 tokens, and cu_seqlens keeps one length throughout."""
    rng = random.Random(0)
    examples = [Example([1] * n, [1] * n) for n in (rng.randint(8, 1500) for _ in range(2000))]
    order = list(range(len(examples)))
    rng.shuffle(order)
    cap, slots = most_tokens(examples, 8), segment_slots(examples, 8)
    shapes, widths = set(), set()
    for start in range(0, len(order), 8):
        chunk = [examples[i] for i in order[start : start + 8]]
        batch = padding_free(chunk, 0, "cpu", slots, cap)
        tokens = sum(len(e.input_ids) for e in chunk)
        width = batch["input_ids"].shape[1]
        assert tokens <= width <= max(512, 1.25 * tokens + 128)
        shapes.add((tuple(batch["input_ids"].shape), tuple(batch["cu_seq_lens_q"].shape)))
        widths.add(width)
    # 8 multiples of 64, then ~1.25x steps to the cap: logarithmic in the longest micro-batch (11,980 tokens here)
    assert len(shapes) == len(widths) <= len(buckets(cap)) <= 8 + math.ceil(math.log(cap / 512, 1.25)) + 1
    assert buckets(cap)[-1] == cap and bucket(cap, cap) == cap
    assert bucket(1, cap) == 64 and bucket(513, cap) == 640


def test_collator_logs_each_bucket_once_and_pads_rows_for_the_plain_path():
    examples = examples_for([30, 40, 50, 300, 20, 10])
    logs = []
    make = Collator(examples, 2, 0, "cpu", varlen=True, log=logs.append)
    widths = [make([examples[i] for i in pair])["input_ids"].shape for pair in ([0, 1], [4, 5], [2, 3], [0, 1])]
    assert widths == [(1, 128), (1, 64), (1, 350), (1, 128)]  # 350: the most two examples hold
    assert [line for line in logs if "first micro-batch" in line] == [
        "batches: first micro-batch of 128 tokens (bucket 1)",
        "batches: first micro-batch of 64 tokens (bucket 2)",
        "batches: first micro-batch of 350 tokens (bucket 3)",
    ]
    plain = Collator(examples, 2, 0, "cpu", varlen=False, log=logs.append)
    assert plain(examples[:2])["input_ids"].shape == (2, 40) and "attention_mask" in plain(examples[:2])


def run_cost(counts, sizes, shape_cost, once_cost=None):
    """Padded tokens of a run with these bucket sizes plus shape_cost per size, or once_cost (default shape_cost) per
    size that one count lands in (None: a count has no bucket)."""
    if max(counts) > max(sizes):
        return None
    landed = [next(s for s in sorted(sizes) if s >= c) for c in counts]
    once_cost = shape_cost if once_cost is None else once_cost
    return sum(landed) + sum(once_cost if landed.count(s) == 1 else shape_cost for s in set(landed))


@pytest.mark.parametrize("seed", range(8))
def test_planned_buckets_cost_least(seed):
    """plan_buckets' choice costs no more than any other set of at most 4 multiples of 64 that covers the run,
    found by trying every one; a size that one micro-batch lands in may cost less (it runs eagerly, uncaptured)."""
    rng = random.Random(seed)
    counts = [rng.choice([rng.randint(1, 400), rng.randint(300, 700)]) for _ in range(rng.randint(1, 60))]
    shape_cost = rng.choice([0, 100, 2_000, GRAPH_SHAPE_COST])
    once_cost = rng.choice([None, shape_cost // 5]) if seed < 6 else EAGER_STEP_COST
    sizes = plan_buckets(counts, shape_cost, most=4, once_cost=once_cost)
    assert len(sizes) <= 4 and sizes == sorted(set(sizes)) and all(s % SMALL_STEP == 0 for s in sizes)
    assert max(sizes) >= max(counts)
    candidates = sorted({-(-c // SMALL_STEP) * SMALL_STEP for c in counts})
    tried = [
        run_cost(counts, chosen, shape_cost, once_cost)
        for k in range(1, 5)
        for chosen in itertools.combinations(candidates, k)
        if run_cost(counts, chosen, shape_cost) is not None
    ]
    assert run_cost(counts, sizes, shape_cost, once_cost) == min(tried)


def test_a_long_example_gets_a_size_of_its_own_that_runs_eagerly():
    """An Alpaca-like run whose micro-batches are evened out to ~2,250 tokens but one holds a 2,048-token example
    (2,474 in all): that one's size used to set every micro-batch's (2,496, 9.5% padding); costed as the one eager
    step it is, it gets its own and the rest take 2,304. The Collator says which size runs eagerly, and only where
    the layers are captured."""
    lengths = [2048, 60, 60, 60, 60, 60, 60, 66] + [282, 282, 282, 282, 282, 282, 282, 281] * 49
    examples = examples_for(lengths, 0)
    run = [list(range(i, i + 8)) for i in range(0, len(lengths), 8)]
    logs = []
    make = Collator(examples, 8, 0, "cpu", True, logs.append, run, GRAPH_SHAPE_COST, MAX_BUCKETS, EAGER_STEP_COST)
    assert make.sizes == [2304, 2496] and make.once == {2496}
    assert "2496 for one micro-batch, run eagerly" in logs[0] and "2.1% padding" in logs[0]
    captured_alike = Collator(examples, 8, 0, "cpu", True, lambda line: None, run, GRAPH_SHAPE_COST)
    assert captured_alike.sizes == [2496] and captured_alike.once == set()
    assert Collator(examples, 8, 0, "cpu", True, lambda line: None, run, 0).once == set()  # no graphs: no eager size
    assert {make([examples[i] for i in micro])["input_ids"].shape[1] for micro in run} == {2304, 2496}
    assert make.rows(run[0]) == [run[0]] and make.split_to == 0  # not asked to split: the eager step stays


def test_the_one_long_micro_batch_runs_as_rows_of_the_captured_size():
    """The same run with `split` (the training loop on one GPU): its one 2,474-token micro-batch runs as two rows
    that the 2,304-token graphs take (4,608 padded tokens against 2,496 + EAGER_STEP_COST for an eager step), its
    examples in order; the other micro-batches stay whole, and 2,496 is no size of the run. Not where the rows would
    cost more than the eager step, nor where an example is longer than the captured size."""
    lengths = [2048, 60, 60, 60, 60, 60, 60, 66] + [282, 282, 282, 282, 282, 282, 282, 281] * 49
    examples = examples_for(lengths, 0)
    run = [list(range(i, i + 8)) for i in range(0, len(lengths), 8)]
    logs = []
    args = (examples, 8, 0, "cpu", True, logs.append, run, GRAPH_SHAPE_COST, MAX_BUCKETS)
    make = Collator(*args, EAGER_STEP_COST, split=True)
    assert make.sizes == [2304] and make.once == set() and make.split_to == 2304
    assert "the 1 micro-batch(s) over 2304 tokens as 2 rows of up to 2304 instead of an eager step" in logs[0]
    assert "2.1% padding" not in logs[0] and "(2304 tokens;" in logs[0]
    parts = make.rows(run[0])
    assert len(parts) == 2 and sum(parts, []) == run[0] and all(sum(lengths[i] for i in p) <= 2304 for p in parts)
    assert all(make.rows(micro) == [micro] for micro in run[1:])
    assert {make([examples[i] for i in part])["input_ids"].shape[1] for part in parts} == {2304}
    assert Collator(*args, 100, split=True).split_to == 0  # an eager step costs ~100 tokens' time: kept
    longest = examples_for([2400] + [10] * 7 + lengths[8:], 0)  # an example no row of 2,304 holds
    assert Collator(longest, *args[1:], EAGER_STEP_COST, split=True).split_to == 0


def test_a_micro_batch_split_into_rows_computes_its_gradient():
    """fp32, the fast path: a micro-batch as the rows Collator.rows makes of it, each row's loss weighed by its share
    of the label tokens (as the training loop weighs a step's rows), gives its loss and every LoRA gradient."""
    model = with_lora(tiny_model("qwen3", vocab=VOCAB, use_cache=False))
    patch_model(model.get_base_model(), log=lambda m: None)
    lengths = [40, 9, 4, 17, 3, 12, 30, 5]
    examples = examples_for(lengths, seed=2)
    micro = list(range(8))
    make = Collator(examples, 8, 0, "cpu", True, lambda line: None)
    make.split_to = 72  # what Collator._split sets where a size of its own would run eagerly
    parts = make.rows(micro)
    assert len(parts) == 2 and sum(parts, []) == micro
    total = sum(label_tokens(e) for e in examples)

    def step(rows):
        model.zero_grad(set_to_none=True)
        loss = 0
        for row in rows:
            part = model(**make([examples[i] for i in row])).loss * sum(label_tokens(examples[i]) for i in row)
            (part / total).backward()
            loss += part.detach() / total
        return loss, {n: packed_gradient(p).clone() for n, p in model.named_parameters() if "lora_" in n}

    loss_whole, grads_whole = step([micro])
    loss_rows, grads_rows = step(parts)
    torch.testing.assert_close(loss_rows, loss_whole, rtol=1e-6, atol=1e-6)
    assert grads_whole
    for name, grad in grads_whole.items():
        torch.testing.assert_close(grads_rows[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_step_joins_its_micro_batches_in_order_up_to_the_cap():
    """Micro-batches stay whole and in order, in as few rows as the cap allows, cut where the largest row is
    smallest; one over the cap is a row of its own. With two ranks each joins its own (every other) micro-batches of
    each step."""
    lengths = [50, 60, 70, 80, 300, 10, 20, 30]
    micro = [[0, 1], [2, 3], [4], [5, 6], [7]]  # 110, 150, 300, 30, 30 tokens
    assert join(micro, lengths, 260) == [[0, 1, 2, 3], [4], [5, 6, 7]]
    assert join(micro, lengths, 1000) == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert join(micro, lengths, 100) == [[0, 1], [2, 3], [4], [5, 6, 7]]
    assert join([], lengths, 100) == []
    run = [[0], [1], [2], [3], [4], [5], [6], [7]]  # 2 steps of grad_accum 2 on 2 ranks
    assert rows_of_run(run, 2, 2, lengths, 1000) == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert rows_of_run(run, 4, 1, lengths, 200) == [[0, 1], [2, 3], [4], [5, 6, 7]]  # 110 + 150, not 180 + 80
    assert join([[i] for i in range(8)], [100] * 8, 700) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_step_joined_into_one_row_computes_its_micro_batches_gradient(arch):
    """fp32, the fast path: a step of 4 micro-batches of 2, each micro-batch's loss weighed by its share of the
    step's label tokens, gives the loss and every LoRA gradient of the 4 joined into one padding-free row, and of all
    8 examples in one padded batch (the step's loss is the mean over its label tokens, as transformers' Trainer
    takes it; a mean of the micro-batches' means would weigh a short example's tokens more)."""
    base = tiny_model(arch, vocab=VOCAB, use_cache=False)
    patch_model(base, log=lambda m: None)
    model = with_lora(base)
    examples = examples_for([9, 4, 17, 3, 12, 30, 5, 21], seed=1)
    micro = [[0, 1], [2, 3], [4, 5], [6, 7]]
    total = sum(label_tokens(e) for e in examples)
    assert total == sum(len(e.input_ids) - 3 for e in examples)  # the first 3 tokens are the prompt

    def step(batches, shares):
        model.zero_grad(set_to_none=True)
        loss = 0
        for inputs, share in zip(batches, shares, strict=True):
            part = model(**inputs).loss * share
            part.backward()
            loss += part.detach()
        return loss, {n: packed_gradient(p).clone() for n, p in model.named_parameters() if "lora_" in n}

    parts = [[examples[i] for i in m] for m in micro]
    shares = [sum(label_tokens(e) for e in part) / total for part in parts]
    loss_micro, grads_micro = step([free_batch(part, 2) for part in parts], shares)
    (row,) = join(micro, [len(e.input_ids) for e in examples], 2 * 64)  # batch_size x max_seq_length
    loss_row, grads_row = step([free_batch([examples[i] for i in row], 8)], [1.0])
    loss_padded, grads_padded = step([padded(examples, 0, "cpu")], [1.0])
    for loss in (loss_row, loss_padded):
        torch.testing.assert_close(loss_micro, loss, rtol=1e-6, atol=1e-6)
    assert grads_micro.keys() == grads_row.keys() == grads_padded.keys() and grads_micro
    for name, grad in grads_micro.items():
        torch.testing.assert_close(grads_row[name], grad, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(grads_padded[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    mean_of_means = step([free_batch(part, 2) for part in parts], [0.25] * 4)[0]
    assert abs(float(mean_of_means) - float(loss_micro)) > 1e-4  # the weighing is not a no-op on these lengths


def identity_like(n=100, seed=0):
    """An identity-tuning file: n short examples of 60-140 tokens."""
    rng = random.Random(seed)
    return examples_for([rng.randint(60, 140) for _ in range(n)], seed)


def test_a_graph_captured_run_plans_few_buckets_and_a_plain_one_little_padding():
    """Three epochs of an identity-style file in micro-batches of 8: where each shape costs a CUDA graph capture
    the run gets one or two buckets; where shapes are free it gets up to 8 and less padding than the fixed sizes."""
    examples = identity_like()
    run = micro_batches_of_run(len(examples), 8, 0, 3 * math.ceil(len(examples) / 8))
    counts = [sum(len(examples[i].input_ids) for i in micro) for micro in run]
    captured, free = plan_buckets(counts, GRAPH_SHAPE_COST), plan_buckets(counts, 0)
    fixed = buckets(most_tokens(examples, 8))
    assert len(captured) <= 2 < len(free) <= 8
    assert run_cost(counts, free, 0) < run_cost(counts, fixed, 0)
    assert run_cost(counts, captured, GRAPH_SHAPE_COST) < run_cost(counts, free, GRAPH_SHAPE_COST)
    assert run_cost(counts, captured, GRAPH_SHAPE_COST) < run_cost(counts, fixed, GRAPH_SHAPE_COST)


def alpaca_like(n, seed):
    """Token counts of an Alpaca-like file: log-normal prompts and answers (medians 40 and 230 tokens), as
    ../shared/bench/e2e_bench.py makes its `alpaca` data."""
    rng = random.Random(seed)
    return [
        25 + int(rng.lognormvariate(math.log(40), 0.6)) + int(rng.lognormvariate(math.log(230), 0.8)) for _ in range(n)
    ]


def padding_share(lengths, batches):
    counts = [sum(lengths[i] for i in micro) for micro in batches]
    return 1 - sum(counts) / run_cost(counts, plan_buckets(counts, GRAPH_SHAPE_COST), 0)


@pytest.mark.parametrize("kind", ["identity", "alpaca"])
@pytest.mark.parametrize("n", [400, 403])
def test_evened_micro_batches_are_the_shuffle_with_little_padding(kind, n):
    """Three epochs in micro-batches of 8: evened out by tokens, every example is still in exactly one micro-batch
    an epoch, the micro-batches keep their sizes (a short last one stays last, as it was), the same call gives the
    same batches (a resume, another rank), examples meet the same partners in the next epoch no more often than
    with a plain shuffle, and the planned buckets pad far less: under 7% where a plain shuffle pads over 14%."""
    lengths = [len(e.input_ids) for e in identity_like(n)] if kind == "identity" else alpaca_like(n, 0)
    plain = [batches_for_epoch(n, 8, 5, epoch) for epoch in range(3)]
    even = [batches_for_epoch(n, 8, 5, epoch, lengths) for epoch in range(3)]
    for shuffled, evened in zip(plain, even, strict=True):
        assert sorted(sum(evened, [])) == list(range(n))
        assert [len(micro) for micro in evened] == [len(micro) for micro in shuffled]
        assert n % 8 == 0 or evened[-1] == shuffled[-1]
    assert even == [batches_for_epoch(n, 8, 5, epoch, lengths) for epoch in range(3)]
    assert max(padding_share(lengths, evened) for evened in even) < 0.07
    assert min(padding_share(lengths, shuffled) for shuffled in plain) > 0.14
    met_again = [len(pairs(a) & pairs(b)) / len(pairs(b)) for a, b in itertools.pairwise(even)]
    met_again_plain = [len(pairs(a) & pairs(b)) / len(pairs(b)) for a, b in itertools.pairwise(plain)]
    assert max(met_again) < 2 * max(met_again_plain) + 0.01


@pytest.mark.parametrize("n", [400, 403])
def test_joined_steps_are_evened_out_and_the_micro_batches_keep_their_sizes(n):
    """Micro-batches of 2, 4 to a step (joined into one row each, engine.training.sft): three epochs of 101 or 102
    micro-batches, whose steps do not start at every epoch's start. Every example is in one micro-batch an epoch, the
    micro-batches keep the shuffle's sizes, the same call gives the same batches, the steps' token counts are within
    a few tokens of each other (more than 4x closer than steps of micro-batches evened out alone), and the run's
    steps (the rows) pad under 6% where the plain shuffle's pad over 9%."""
    lengths = [len(e.input_ids) for e in identity_like(n)]
    per_epoch = math.ceil(n / 2)
    plain = [batches_for_epoch(n, 2, 5, epoch) for epoch in range(3)]
    even = [batches_for_epoch(n, 2, 5, epoch, lengths, per_step=4) for epoch in range(3)]
    for shuffled, evened in zip(plain, even, strict=True):
        assert sorted(sum(evened, [])) == list(range(n))
        assert [len(micro) for micro in evened] == [len(micro) for micro in shuffled]
    assert even == [batches_for_epoch(n, 2, 5, epoch, lengths, per_step=4) for epoch in range(3)]
    assert micro_batches_of_run(n, 2, 5, 3 * per_epoch, lengths, per_step=4) == sum(even, [])

    def steps(run):  # each step's examples, one row: the run's micro-batches 4 at a time
        return [sum(run[k : k + 4], []) for k in range(0, len(run), 4)]

    def spread(run):  # of the tokens of the first epoch's whole steps
        tokens = [sum(lengths[i] for i in step) for step in steps(run[: per_epoch // 4 * 4])]
        return max(tokens) - min(tokens)

    apart = batches_for_epoch(n, 2, 5, 0, lengths)  # the micro-batches evened out alone
    assert spread(even[0]) <= 4 and spread(apart) > 4 * spread(even[0]) and spread(plain[0]) > 100
    assert padding_share(lengths, steps(sum(even, []))) < 0.06 < 0.09 < padding_share(lengths, steps(sum(plain, [])))


def pairs(batches):
    return {frozenset(pair) for micro in batches for pair in itertools.combinations(micro, 2)}


def test_even_out_swaps_toward_the_mean_and_stops():
    """Micro-batches of 100 + 10 + 5 and 60 + 50 + 40 tokens (115 and 150): the one swap that brings them closer is
    10 for 40 (145 and 120); after it none does, so it stops. Single examples are never swapped past each other."""
    lengths = [100, 10, 5, 60, 50, 40]
    assert even_out([[0, 1, 2], [3, 4, 5]], lengths) == [[0, 5, 2], [3, 4, 1]]
    assert even_out([[0], [1]], lengths) == [[0], [1]]  # 100 and 10 swapped would be 10 and 100
    assert even_out([[0, 1, 2]], lengths) == [[0, 1, 2]]


def test_collator_uses_the_run_plan_and_resume_gets_the_same_shapes():
    """A Collator given the run's micro-batches pads each to the planned sizes, logs them with the padding share, and
    a second Collator (a resumed run) makes the same rows for the same micro-batches."""
    examples = identity_like(60, seed=1)
    run = micro_batches_of_run(len(examples), 8, 3, 2 * math.ceil(len(examples) / 8))
    assert run[:8] != run[8:16] and sorted(sum(run[:8], [])) == list(range(60))  # epoch 2: another shuffle
    logs = []
    make = Collator(examples, 8, 0, "cpu", varlen=True, log=logs.append, run=run, shape_cost=GRAPH_SHAPE_COST)
    planned = plan_buckets([sum(len(examples[i].input_ids) for i in micro) for micro in run], GRAPH_SHAPE_COST)
    assert make.sizes == planned and f"({', '.join(map(str, planned))} tokens;" in logs[0]
    widths = {make([examples[i] for i in micro])["input_ids"].shape[1] for micro in run}
    assert widths <= set(planned)
    again = Collator(examples, 8, 0, "cpu", varlen=True, log=lambda line: None, run=run, shape_cost=GRAPH_SHAPE_COST)
    for micro in run[9:12]:
        first, second = make([examples[i] for i in micro]), again([examples[i] for i in micro])
        assert all(torch.equal(first[k], second[k]) for k in ("input_ids", "labels", "position_ids", "cu_seq_lens_q"))


@pytest.mark.parametrize(
    "arch, patched",
    [("llama", False), ("qwen3", False), ("llama", True), ("qwen3", True), ("gemma2", True), ("gemma3", True)],
)
def test_padding_free_step_equals_padded_step(arch, patched):
    """fp32: the same examples in the same order give the padded step's loss and every LoRA gradient, and each
    example's loss alone, weighted by its tokens, sums to the row's loss."""
    base = tiny_model(arch, vocab=VOCAB, use_cache=False)  # as a training run loads it
    if arch == "gemma2":
        base.set_attn_implementation("eager")  # SDPA has no soft cap: the padded rows' reference needs eager
    if patched:
        patch_model(base, log=lambda m: None)
        assert base.varlen_attention
    model = with_lora(base)
    examples = examples_for([9, 4, 17, 1, 12])

    def step(inputs):
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        grads = {n: packed_gradient(p).clone() for n, p in model.named_parameters() if "lora_" in n}
        return loss.detach(), grads

    loss_padded, grads_padded = step(padded(examples, 0, "cpu"))
    loss_free, grads_free = step(free_batch(examples))
    torch.testing.assert_close(loss_free, loss_padded, rtol=1e-6, atol=1e-6)
    assert grads_free.keys() == grads_padded.keys() and grads_free
    for name, grad in grads_free.items():
        torch.testing.assert_close(grad, grads_padded[name], rtol=1e-5, atol=1e-6, msg=name)

    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss for e in examples]
    counts = [sum(t != -100 for t in e.labels[1:]) for e in examples]
    weighted = sum(loss * n for loss, n in zip(alone, counts, strict=True) if n) / sum(counts)
    torch.testing.assert_close(loss_free, weighted, rtol=1e-6, atol=1e-6)


def test_cu_seqlens_from_positions():
    from engine.patching.modules import cu_seqlens_from_positions

    positions = torch.tensor([0, 1, 2, 0, 0, 1, 0, 1, 2, 3])
    assert cu_seqlens_from_positions(positions).tolist() == [0, 3, 4, 6, 10, 10, 10, 10, 10, 10, 10]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_trl_padding_free_batch_takes_the_varlen_path(arch):
    """The notebook API's SFTTrainer with padding_free=True hands position ids and no mask: the patched model derives
    cu_seqlens from them (FastAttention is called with them) and gives the padded batch's loss and gradients."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from engine.patching.modules import FastAttention

    base = tiny_model(arch, vocab=VOCAB, use_cache=False)
    patch_model(base, log=lambda m: None)
    model = with_lora(base)
    rows = [{"input_ids": e.input_ids} for e in examples_for([9, 4, 17, 1, 12])]
    seen = []
    attention = next(m for m in model.modules() if isinstance(m, FastAttention))
    attention.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("cu_seq_lens_q")), with_kwargs=True)

    def step(padding_free):
        model.zero_grad(set_to_none=True)
        inputs = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(rows)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), [packed_gradient(p).clone() for n, p in model.named_parameters() if "lora_" in n]

    loss_padded, grads_padded = step(False)
    loss_free, grads_free = step(True)
    assert seen[0] is None and seen[1].tolist()[:6] == [0, 9, 13, 30, 31, 43]
    torch.testing.assert_close(loss_free, loss_padded, rtol=1e-6, atol=1e-6)
    for free, want in zip(grads_free, grads_padded, strict=True):
        torch.testing.assert_close(free, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_padding_free_matches_padded_in_bf16_on_the_gpu():
    """bf16 at a realistic width (1024 hidden, 16 query heads over 8 KV heads, 8 examples of 40-400 tokens), with the
    app's packed adapters and CUDA graphs: two micro-batches of one bucket, padding-free (eagerly, then captured, then
    replayed with the other batch's cu_seqlens) against their right-padded rows, within bf16 noise."""
    from engine.patching import graphs
    from engine.patching.modules import pack_adapters

    size = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16)
    base = tiny_model("qwen3", vocab=4096, use_cache=False, num_key_value_heads=8, head_dim=64, **size).cuda()
    patch_model(base, log=lambda m: None)
    assert graphs.install(base, log=print)
    model = with_lora(base)
    pack_adapters(model, log=lambda m: None)
    rng = random.Random(0)
    batches = [examples_for([rng.randint(40, 400) for _ in range(8)], seed=s) for s in (1, 2)]
    cap = 8 * 400

    def step(inputs, dtype=torch.bfloat16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs).loss
        loss.backward()
        grads = torch.cat([packed_gradient(p).flatten() for n, p in model.named_parameters() if "lora_" in n])
        return loss.detach().float(), grads.float()

    def error(got, want):
        return float((got[1] - want[1]).norm() / want[1].norm()), abs(float(got[0] - want[0]))

    exact = [step(padded(b, 0, "cuda"), torch.float32) for b in batches]
    noise = [error(step(padded(b, 0, "cuda")), want) for b, want in zip(batches, exact, strict=True)]
    free = [padding_free(b, 0, "cuda", 10, cap) for b in batches]
    assert free[0]["input_ids"].shape == free[1]["input_ids"].shape  # one bucket: the graphs serve both
    for index in (0, 1, 0, 1):  # eager, captured, replayed, replayed
        grads, loss = error(step(free[index]), exact[index])
        # bf16 noise: the padded rows' own distance from the fp32 step, with a margin for other rounding orders
        assert grads <= 2 * noise[index][0] + 1e-3, (index, grads, noise[index])
        assert loss <= 2 * noise[index][1] + 1e-2, (index, loss, noise[index])


def test_a_padding_free_run_evens_out_its_micro_batches(tiny_qwen3, runs, tmp_path, monkeypatch):
    """A LoRA run through the fast path on the CPU (the kernels in Triton's interpreter), 16 examples of 2 to 40
    words in micro-batches of 4, one epoch: each step's real token count is within a few tokens of the others', and
    the log gives the planned padding and the shuffle's (here at no price per shape, no CUDA graphs: each of the
    shuffle's 4 micro-batches gets a bucket of its own, so only the GPU path's single bucket pads less)."""
    monkeypatch.setenv("TUNESMITH_KERNELS_ON_CPU", "1")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and runs far away".split()
    rows = [
        {"instruction": "say", "input": "", "output": " ".join(rng.choices(words, k=n))} for n in range(2, 42, 40 // 16)
    ]
    data = tmp_path / "lengths.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    status = wait_for(
        api.start(tiny_spec(tiny_qwen3, data, max_steps=4, batch_size=4, save_every=0, max_seq_length=128))
    )
    text = log_of(status)
    assert status.state == "done", text
    shuffled = float(
        re.search(r"evened out by tokens \(swaps between them\); as shuffled they would pad ([\d.]+)%", text)[1]
    )
    evened = float(re.search(r"planned for the run's 4 micro-batches \(\d+ tokens; ([\d.]+)% padding;", text)[1])
    tokens = [m["tokens"] for m in status.metrics]
    assert len(tokens) == 4 and max(tokens) - min(tokens) <= 8, tokens  # the examples' answers differ by 39 words
    assert 0 <= evened < 100 and 0 <= shuffled < 100


def test_a_run_joins_each_steps_micro_batches(tiny_qwen3, runs, tmp_path, monkeypatch):
    """A LoRA run through the fast path on the CPU with batch_size 2 and grad_accum 4 (a small card's preset): each
    step's 4 micro-batches join into fewer padding-free rows of up to 2 x 128 tokens (the log says so and plans the
    buckets for the rows), and the steps train."""
    monkeypatch.setenv("TUNESMITH_KERNELS_ON_CPU", "1")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and runs far away".split()
    rows = [{"instruction": "say", "input": "", "output": " ".join(rng.choices(words, k=n))} for n in range(2, 18)]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tiny_spec(tiny_qwen3, data, max_steps=2, batch_size=2, grad_accum=4, save_every=0, max_seq_length=128)
    status = wait_for(api.start(spec))
    text = log_of(status)
    assert status.state == "done", text
    # rows of up to 2 x 128 tokens, or of the run's largest row, which its memory plan was made for
    cap = int(
        re.search(r"each step's 4 micro-batches of 2 examples join into padding-free rows of up to (\d+)", text)[1]
    )
    planned_for = re.search(r"plan: made for the data's largest micro-batch, (\d+) tokens", text)
    assert cap == (int(planned_for[1]) if planned_for else 256) <= 256, text
    joined = int(re.search(r"the run's first 8 micro-batches make (\d+) rows", text)[1])
    assert 2 <= joined < 8 and f"planned for the run's {joined} rows" in text  # ~45 tokens an example here
    assert [m["step"] for m in status.metrics if "loss" in m] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in status.metrics if "loss" in m)
    # the checkpoint says how the epoch's micro-batches were evened out (in steps of 4), so a resume that does not
    # join (TUNESMITH_JOIN=0, another number of GPUs) makes the same ones for the rest of the epoch
    state = json.loads((status.run_dir / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state == {"step": 2, "epoch": 0, "micro_in_epoch": 8, "evened_by": 4}
