"""The CUDA graphs of several padding-free shapes in the memory plan (engine.memory.estimate.graph_shape_bytes,
engine.memory.offload.held_shapes), and a budgeted run holding and planning no more shapes than its plan counts
(engine.patching.graphs, engine.data.batching.Collator). CPU: the capture itself needs a GPU, so `install`'s buffers
are counted by hand from torch.cuda.make_graphed_callables, and CheckpointGraphs' static set is made and measured."""

import math

import pytest
import torch
from test_batching import identity_like

from engine.data.batching import MAX_BUCKETS, Collator
from engine.memory.checkpointing import SLACK
from engine.memory.estimate import GIB, Arch, estimate, graph_shape_bytes, layer_activation_bytes
from engine.memory.offload import plan
from engine.patching.graphs import Captures, CheckpointGraphs
from engine.training.steps import micro_batches_of_run

LLAMA8B = Arch(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256, tied=False)
QWEN3_4B = Arch(hidden=2560, intermediate=9728, layers=36, heads=32, kv_heads=8, head_dim=128, vocab=151936, tied=True)


def figure(arch, method, seq, batch, p):
    """The estimate a plan's figures come from (engine.memory.verdict.parts: the estimate with the plan's choices)."""
    return estimate(arch, method, seq, batch, checkpointed_layers=p.checkpointed, fused_loss=True, **p.estimate_kw())


def test_checkpointed_plan_counts_every_held_shapes_static_set():
    """llama8b QLoRA, 2 x 2048 tokens, 8 GiB: every layer recomputes through CheckpointGraphs, which hold one static
    set per shape (x, dy, out; cos, sin, the fp32 RoPE tables; two sets of q/k/v/o outputs) beside one shared pool;
    the plan counts as many shapes as its budget holds, each at the largest micro-batch."""
    p = plan(LLAMA8B, "qlora", 2048, 2, 8.0)
    assert p.graphs and p.checkpointed == 32 and not p.layer_graphs and 1 < p.shapes < MAX_BUCKETS
    e = figure(LLAMA8B, "qlora", 2048, 2, p)
    assert e.peak_vram_gib == p.peak_vram_gib
    t, h, d = 4096, 4096, 128
    q_k_v_o = (32 + 2 * 8) * 128 + h  # the four projections' output widths
    per_shape = 3 * t * h * 2 + 2 * t * d * 2 + 2 * t * (d // 2) * 4 + t * 8
    per_shape += 2 * t * q_k_v_o * 2 if p.keep_attention else 0
    first = 3 * t * h * 2 + (2 * t * q_k_v_o * 2 if p.keep_attention else 0)  # in parts "graphs", "attention_kept"
    assert e.parts_gib["graph_shapes"] == pytest.approx((p.shapes * per_shape - first) / GIB, abs=1e-3)
    more = estimate(LLAMA8B, "qlora", 2048, 2, checkpointed_layers=32, fused_loss=True,
                    **{**p.estimate_kw(), "graph_shapes": p.shapes + 1})  # fmt: skip
    assert more.peak_vram_gib > 8.0 / SLACK  # the most shapes that fit
    roomy = plan(LLAMA8B, "qlora", 2048, 2, 10.0)  # more room: more shapes before fewer recomputes
    assert roomy.graphs and roomy.shapes > p.shapes


def test_plan_that_recomputes_nothing_counts_every_layers_graphs_per_shape_and_the_pool_beside_an_eager_step():
    """Nothing recomputes: `install` captures every layer's forward and backward per shape. make_graphed_callables
    keeps per layer the sample inputs (hidden, cos, sin), the output's gradient buffer, and in the pool the output and
    the hidden state's gradient, and the adapters' fp32 gradients. With more than one shape, a new shape's first step
    runs eagerly beside the pool, which keeps a captured step's activations."""
    t, h, d = 4096, 4096, 128
    adapters = LLAMA8B.lora_params(16)
    per_shape = 32 * (4 * t * h * 2 + 2 * t * d * 2) + adapters * 4
    assert graph_shape_bytes(LLAMA8B, t, 0, False, adapters) == per_shape
    big = plan(LLAMA8B, "qlora", 2048, 2, 140.0)  # the H200
    assert big.layer_graphs and big.checkpointed == 0 and big.shapes == MAX_BUCKETS
    e = figure(LLAMA8B, "qlora", 2048, 2, big)
    assert e.peak_vram_gib == big.peak_vram_gib and e.peak_vram_gib * SLACK <= 140.0
    assert e.parts_gib["graph_shapes"] == pytest.approx(8 * per_shape / GIB, abs=1e-3)
    assert (
        e.parts_gib["graph_pool"]
        == e.parts_gib["activations"]
        == round(32 * layer_activation_bytes(LLAMA8B, t) / GIB, 3)
    )
    one = plan(QWEN3_4B, "lora", 2048, 2, 40.0)  # room for one shape's graphs, not a second beside the pool
    assert one.layer_graphs and one.checkpointed == 0 and one.shapes == 1
    e = figure(QWEN3_4B, "lora", 2048, 2, one)
    assert "graph_pool" not in e.parts_gib and e.peak_vram_gib == one.peak_vram_gib
    per_shape = 36 * (4 * t * 2560 * 2 + 2 * t * d * 2) + QWEN3_4B.lora_params(16) * 4
    assert e.parts_gib["graph_shapes"] == pytest.approx(per_shape / GIB, abs=1e-3)


def test_plans_without_graphs_keep_every_bucket():
    """No GPU, or a budgeted plan whose graphs are off: nothing held, so the run plans up to MAX_BUCKETS buckets and
    the figure counts none."""
    assert plan(LLAMA8B, "qlora", 2048, 2, None).shapes == MAX_BUCKETS
    p = plan(LLAMA8B, "qlora", 2048, 2, 6.8)
    assert not p.graphs and not p.layer_graphs and p.shapes == MAX_BUCKETS
    assert "graph_shapes" not in figure(LLAMA8B, "qlora", 2048, 2, p).parts_gib


def test_checkpoint_graphs_static_set_is_what_the_estimate_counts_and_at_most_the_plans_shapes_are_held():
    """CheckpointGraphs' static set for a shape, made on the CPU, holds the bytes graph_shape_bytes counts (cu_seqlens
    aside); with `most` sets, switching among more shapes keeps that many, the least recently used dropped."""
    arch = Arch(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=100, tied=True)
    graphs = CheckpointGraphs([], log=lambda line: None, most=2)

    def switch(tokens):
        hidden = torch.zeros(1, tokens, 64, dtype=torch.bfloat16)
        cos = torch.zeros(1, tokens, 16, dtype=torch.bfloat16)
        graphs._switch(("shape", tokens), hidden, cos, cos.clone(), torch.zeros(5, dtype=torch.int32))

    switch(96)
    held = sum(t.nbytes for name, t in graphs.static.items() if name != "cu") + sum(t.nbytes for t in graphs.tables)
    assert held == graph_shape_bytes(arch, 96, 1, False, 0)
    for tokens in (128, 192, 96):
        switch(tokens)
        assert len(graphs.sets) + 1 <= 2
    assert list(graphs.sets) == [("shape", 192)]
    single = CheckpointGraphs([], log=lambda line: None, most=1)
    graphs = single
    switch(64), switch(128)
    assert not single.sets and single.key == ("shape", 128)


def test_a_budgeted_run_plans_and_holds_no_more_shapes_than_its_plan():
    """engine.training.sft gives the Collator the plan's shapes as plan_buckets' `most`, and engine.models.loading and
    engine.memory.install give them to the graphs: the buckets planned and the graph sets held stay within them."""
    p = plan(LLAMA8B, "qlora", 2048, 2, 7.8)
    assert p.graphs and p.shapes == 2
    examples = identity_like(400, seed=2)
    run = micro_batches_of_run(len(examples), 8, 0, 4 * math.ceil(len(examples) / 8))
    free = Collator(examples, 8, 0, "cpu", varlen=True, log=lambda line: None, run=run)  # shapes cost nothing here
    capped = Collator(examples, 8, 0, "cpu", True, lambda line: None, run, 0, p.shapes)
    assert len(capped.sizes) <= p.shapes < len(free.sizes)
    assert capped.sizes[-1] == free.sizes[-1]  # every micro-batch still has a bucket
    widths = {capped([examples[i] for i in micro])["input_ids"].shape[1] for micro in run}
    assert widths <= set(capped.sizes)
    held = Captures(p.shapes)
    for key in [("a",), ("b",), ("c",), ("a",)]:
        if held.before_step(key) or held.before_step(key):
            held.graphs[key] = ["graphs"]
        assert len(held.graphs) <= p.shapes
    single = Captures(1)
    assert single.before_step(("a",))
    single.graphs[("a",)] = ["graphs"]
    assert [single.before_step(("b",)), single.before_step(("b",))] == [False, True] and not single.graphs
