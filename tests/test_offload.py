"""engine.memory.offload: the planner's choices and the ring's schedule (CPU), and training with every offload mode
giving the gradients of training without it (GPU)."""

import dataclasses
import json

import pytest
import torch
from tiny import ARCHS

from engine.core.errors import UserError
from engine.memory.checkpointing import SLACK
from engine.memory.estimate import FRAGMENTATION, Arch, estimate, layer_weight_bytes
from engine.memory.offload import RING_SLOTS, Plan, plan, spread
from engine.memory.weights import Ring

LLAMA8B = Arch(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256, tied=False)
QWEN3_4B = Arch(hidden=2560, intermediate=9728, layers=36, heads=32, kv_heads=8, head_dim=128, vocab=151936, tied=True)
QWEN3_14B = Arch(
    hidden=5120, intermediate=17408, layers=40, heads=40, kv_heads=8, head_dim=128, vocab=151936, tied=False
)


def test_offload_plan_recomputes_nothing_and_offloads_nothing_on_a_big_card():
    p = plan(LLAMA8B, "qlora", 2048, 2, 140.0)
    assert (p.checkpointed, p.offload_activations, p.streamed, p.host_embedding) == (0, False, (), False)
    assert not p.active
    # the room left over, after every bucket's CUDA graphs (engine.patching.graphs.install), keeps every layer's 4-bit
    # weights also in 16 bits: no dequantization per step
    assert p.dense_layers == 32 and "16-bit copies of 32 layers" in p.describe() and p.shapes == 8
    graphed = dict(layer_graphs=True, graph_shapes=8)
    lean = estimate(LLAMA8B, "qlora", 2048, 2, fused_loss=True, checkpointed_layers=0, **graphed)
    per_layer = layer_weight_bytes(LLAMA8B, "lora") / 2**30
    assert p.peak_vram_gib == pytest.approx(lean.peak_vram_gib + 32 * per_layer * (1 + FRAGMENTATION), abs=0.02)
    some = plan(LLAMA8B, "qlora", 2048, 2, 40.0)  # half of what is left over, not all of it
    assert 0 < some.dense_layers < 32 and some.peak_vram_gib * SLACK <= 40.0 and some.shapes == 1
    lean = estimate(LLAMA8B, "qlora", 2048, 2, fused_loss=True, checkpointed_layers=0, **graphed | {"graph_shapes": 1})
    left = 40.0 / SLACK - lean.peak_vram_gib
    assert (some.peak_vram_gib - lean.peak_vram_gib) <= left / 2 * (1 + FRAGMENTATION) + 0.01
    assert plan(LLAMA8B, "lora", 2048, 2, 80.0).dense_layers == 0  # 16-bit weights need no copy
    assert plan(LLAMA8B, "qlora", 2048, 2, 12.0).dense_layers == 0  # no copies while anything recomputes
    p = plan(LLAMA8B, "qlora", 2048, 2, None)  # no GPU: everything recomputes, nothing moves
    assert p.checkpointed == 32 and not p.active


def test_offload_plan_offloads_activations_and_embedding_before_recomputing_more():
    p = plan(LLAMA8B, "qlora", 2048, 2, 12.0)
    assert p.offload_activations and p.host_embedding and not p.streamed
    assert 0 < p.checkpointed < 32  # what the offloads freed goes to layers that need not recompute
    assert p.peak_vram_gib * SLACK <= 12.0
    tight = plan(LLAMA8B, "qlora", 2048, 2, 7.0)
    assert tight.checkpointed == 32 and tight.offload_activations and not tight.streamed
    assert plan(QWEN3_4B, "lora", 2048, 2, 9.0).host_embedding is False  # tied: the head needs the table on the GPU


def test_offload_plan_streams_the_fewest_layers_that_make_it_fit():
    six, four = plan(QWEN3_14B, "qlora", 2048, 1, 6.0), plan(QWEN3_14B, "qlora", 2048, 1, 4.0)
    assert 0 < len(six.streamed) < len(four.streamed) <= 40
    for p, budget in ((six, 6.0), (four, 4.0)):
        assert p.checkpointed == 40 and p.offload_activations and p.ring_slots in (RING_SLOTS, 2)
        assert p.peak_vram_gib * SLACK <= budget
        fewer = estimate(
            QWEN3_14B,
            "qlora",
            2048,
            1,
            fused_loss=True,
            checkpointed_layers=40,
            **{**p.estimate_kw(), "streamed_layers": len(p.streamed) - 1},
        )
        assert fewer.peak_vram_gib * SLACK > budget  # one layer fewer would not fit
    assert six.streamed == spread(len(six.streamed), 40)
    assert six.peak_ram_gib > estimate(QWEN3_14B, "qlora", 2048, 1).peak_ram_gib  # the pinned copies count


def test_offload_plan_replays_cuda_graphs_where_their_memory_costs_no_extra_streaming():
    """The checkpointed layers of a capped LoRA/QLoRA run replay CUDA graphs, with the graphs' pool in the estimate;
    not when the pool would push weights to host RAM that the plan without graphs keeps on the GPU, nor when it
    cannot fit at all, nor for full fine-tuning."""
    six = plan(QWEN3_14B, "qlora", 2048, 1, 6.0)  # streams either way
    assert six.graphs and six.streamed and "CUDA graphs" in six.describe() and six.as_dict()["cuda_graphs"]
    plain = estimate(QWEN3_14B, "qlora", 2048, 1, fused_loss=True, **{**six.estimate_kw(), "graphs": False})
    graphed = estimate(QWEN3_14B, "qlora", 2048, 1, fused_loss=True, **six.estimate_kw())
    assert graphed.peak_vram_gib > plain.peak_vram_gib and graphed.parts_gib["graphs"] > 0
    assert plan(QWEN3_4B, "lora", 2048, 2, 8.6).graphs
    assert plan(LLAMA8B, "qlora", 2048, 2, 7.8).graphs  # fits without streaming, graphs included
    assert not plan(LLAMA8B, "qlora", 2048, 2, 7.4).graphs  # their pool fits only with streamed layers
    long = plan(LLAMA8B, "qlora", 8192, 1, 7.8)  # graphs' pool at 8192 tokens would need streamed layers
    assert not long.graphs and not long.streamed
    assert not plan(QWEN3_14B, "qlora", 2048, 1, 4.0).graphs  # every layer streamed, and still no room for a pool
    assert not plan(QWEN3_4B, "full", 512, 1, 30.0).graphs
    assert not plan(LLAMA8B, "qlora", 2048, 2, 80.0).graphs  # nothing recomputes


def test_offload_plan_keeps_dequantized_gate_and_up_weights_where_the_attention_outputs_are_kept():
    """With the attention outputs kept, a QLoRA plan also has the recompute keep gate and up's dequantized weights
    for its backward (two (intermediate x hidden) bf16 tensors, in the estimate) where that fits too; the attention
    outputs come first (more time saved per GiB). Not for LoRA (nothing to dequantize) nor where weights stream."""
    both = plan(LLAMA8B, "qlora", 2048, 2, 8.6)
    assert both.keep_attention and both.keep_dequantized and "gate/up" in both.describe()
    assert both.as_dict()["dequantized_weights_kept"]
    without = estimate(LLAMA8B, "qlora", 2048, 2, fused_loss=True, **{**both.estimate_kw(), "keep_dequantized": False})
    with_ = estimate(LLAMA8B, "qlora", 2048, 2, fused_loss=True, **both.estimate_kw())
    two = 2 * LLAMA8B.intermediate * LLAMA8B.hidden * 2 / 2**30
    assert with_.parts_gib["dequant"] == pytest.approx(without.parts_gib["dequant"] + two, abs=1e-3)
    attention_only = plan(LLAMA8B, "qlora", 2048, 2, 8.2)
    assert attention_only.keep_attention and not attention_only.keep_dequantized
    assert not plan(LLAMA8B, "lora", 2048, 2, 24.0).keep_dequantized
    assert not plan(QWEN3_14B, "qlora", 2048, 1, 6.0).keep_dequantized  # streams


def test_offload_plan_keeps_attention_outputs_for_the_recompute_where_nothing_streams():
    """Where the activation offload alone fits, a fast-path LoRA/QLoRA plan also keeps each checkpointed layer's
    q/k/v/o outputs in host RAM (the recompute skips those products), counted in both estimates; not when it would
    not fit without streaming (the plan then goes without it), not with streamed weights (the link carries those),
    not for full fine-tuning nor off the fast path."""
    kept = plan(LLAMA8B, "qlora", 2048, 2, 8.2)
    assert kept.keep_attention and not kept.streamed and "q/k/v/o" in kept.describe()
    assert kept.as_dict()["attention_outputs_kept"]
    without = estimate(LLAMA8B, "qlora", 2048, 2, fused_loss=True, **{**kept.estimate_kw(), "keep_attention": False})
    with_ = estimate(LLAMA8B, "qlora", 2048, 2, fused_loss=True, **kept.estimate_kw())
    per_layer = 4096 * (LLAMA8B.attention_width + LLAMA8B.hidden) * 2 / 2**30
    assert with_.parts_gib["attention_kept"] == pytest.approx(4 * per_layer, abs=1e-3)
    assert with_.peak_ram_gib == pytest.approx(without.peak_ram_gib + 32 * per_layer, abs=0.02)
    assert not plan(LLAMA8B, "qlora", 2048, 2, 8.2, host_ram_gib=18.0).keep_attention  # host RAM holds 17.0, not 19.5
    tight = plan(LLAMA8B, "qlora", 2048, 2, 7.8)  # fits only without them: still no streaming
    assert not tight.keep_attention and not tight.streamed and tight.checkpointed == 32
    assert not plan(QWEN3_14B, "qlora", 2048, 1, 6.0).keep_attention  # streams
    assert not plan(LLAMA8B, "qlora", 2048, 2, 16.0, fused_loss=False).keep_attention  # recomputes 28 layers
    assert not plan(QWEN3_4B, "full", 512, 1, 30.0).keep_attention
    assert not plan(LLAMA8B, "qlora", 2048, 2, 80.0).keep_attention  # nothing recomputes


def test_offload_plan_tiles_the_mlp_for_long_sequences():
    p = plan(LLAMA8B, "qlora", 65536, 1, 16.0)  # Unsloth's limit under this cap is 32768 tokens
    assert p.mlp_tile == 8192 and not p.streamed and p.peak_vram_gib * SLACK <= 16.0
    assert plan(LLAMA8B, "qlora", 8192, 1, 16.0).mlp_tile is None  # short: whole-sequence MLP


def test_offload_tiled_mlp_gives_the_untiled_losses_and_gradients():
    """Tiles of 5 tokens over 2 x 12 (an uneven last tile): the same loss and LoRA gradients, fp32 on the CPU."""
    from test_patching_parity import batch, lora_state, tiny_model, with_lora

    from engine.patching import patch_model
    from engine.patching.modules import FastMLP

    results = []
    for tile in (None, 5):
        model = tiny_model("llama")
        patch_model(model, log=lambda m: None)
        model = with_lora(model).train()
        for module in model.modules():
            if isinstance(module, FastMLP):
                module.tile = tile
        loss = model(**batch(96)).loss
        loss.backward()
        results.append((loss.detach(), {k: v.grad for k, v in lora_state(model).items()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, msg=name)


def test_offload_plan_is_part_of_the_estimate_command(tmp_path, capsys):
    """python -m engine estimate names the checkpointing, offload and streaming a run would use on the budget."""
    from engine.__main__ import main

    config = dict(ARCHS["qwen3"], hidden_size=5120, intermediate_size=17408, num_hidden_layers=40,
                  num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                  tie_word_embeddings=False)  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    main(["estimate", "--model", str(tmp_path), "--seq", "2048", "--batch", "1", "--vram", "6", "--ram", "64"])
    out = json.loads(capsys.readouterr().out)
    p = out["plan"]
    assert p["weight_streaming"] and p["activation_offload"] and p["host_embedding"] and p["checkpointed_layers"] == 40
    assert 0 < p["streamed_layers"] < 40 and p["peak_vram_gib"] * SLACK <= 6.0
    # one verdict: the plan fits, and the top-level figures are the plan's
    assert out["fits"] is True and (out["peak_vram_gib"], out["peak_ram_gib"]) == (
        p["peak_vram_gib"],
        p["peak_ram_gib"],
    )
    assert sum(out["peak_parts_gib"].values()) == pytest.approx(out["peak_vram_gib"], abs=0.01)


def test_offload_plan_refuses_what_cannot_fit_with_the_reason():
    with pytest.raises(UserError, match="even with every layer's weights in host RAM, over the 2.0 GiB budget"):
        plan(QWEN3_14B, "qlora", 2048, 1, 2.0)
    with pytest.raises(UserError, match="GiB of host RAM .* and 8.0 GiB is free"):
        plan(QWEN3_14B, "qlora", 2048, 1, 6.0, host_ram_gib=8.0)
    with pytest.raises(UserError, match="Full fine-tuning"):
        plan(LLAMA8B, "full", 2048, 1, 24.0)


def test_offload_plan_pages_full_fine_tuning_optimizer_states_to_host_ram():
    """Full fine-tuning streams nothing (its weights train); under a tight budget the paged 8-bit AdamW's states are
    planned in host RAM, and without a paged optimizer the same run is refused."""
    qwen3_1_7b = Arch(hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128, vocab=151936,
                      tied=True)  # fmt: skip
    p = plan(qwen3_1_7b, "full", 1024, 1, 12.0)
    assert p.optimizer_in_host and p.offload_activations and not p.streamed and p.peak_vram_gib * SLACK <= 12.0
    resident = estimate(qwen3_1_7b, "full", 1024, 1, fused_loss=True, **{**p.estimate_kw(), "optimizer_in_host": False},
                        checkpointed_layers=28)  # fmt: skip
    assert resident.peak_vram_gib * SLACK > 12.0 and p.peak_ram_gib > resident.peak_ram_gib
    with pytest.raises(UserError, match="activations in host RAM"):
        plan(qwen3_1_7b, "full", 1024, 1, 12.0, paged_optimizer=False)
    # tighter still: each weight updated in the backward, so no gradient buffer, where the run allows it
    with pytest.raises(UserError, match="Full fine-tuning"):
        plan(qwen3_1_7b, "full", 1024, 1, 10.0)
    released = plan(qwen3_1_7b, "full", 1024, 1, 10.0, release_gradients=True)
    assert released.grads_released and released.optimizer_in_host and released.peak_vram_gib * SLACK <= 10.0
    assert "updated in the backward" in released.describe() and released.as_dict()["grads_released"]
    assert not plan(qwen3_1_7b, "full", 1024, 1, 12.0, release_gradients=True).grads_released  # only when needed
    with pytest.raises(UserError, match="each gradient freed in the backward"):
        plan(qwen3_1_7b, "full", 1024, 1, 6.0, release_gradients=True)
    grads = estimate(qwen3_1_7b, "full", 1024, 1).parts_gib["trainable"]
    freed = estimate(qwen3_1_7b, "full", 1024, 1, grads_released=True).parts_gib["trainable"]
    largest = qwen3_1_7b.vocab * qwen3_1_7b.hidden  # the embedding's gradient, the largest, still exists
    assert grads - freed == pytest.approx((qwen3_1_7b.params - largest) * 2 / 2**30, abs=2e-3)


def test_offload_estimate_counts_what_leaves_the_gpu():
    base = estimate(QWEN3_14B, "qlora", 2048, 1, fused_loss=True)
    streamed = estimate(QWEN3_14B, "qlora", 2048, 1, fused_loss=True, streamed_layers=10, ring_slots=3)
    per_layer = layer_weight_bytes(QWEN3_14B, "qlora") / 2**30
    assert streamed.parts_gib["weights"] == pytest.approx(base.parts_gib["weights"] - 7 * per_layer, abs=2e-3)
    hosted = estimate(QWEN3_14B, "qlora", 2048, 1, fused_loss=True, host_embedding=True)
    table = QWEN3_14B.vocab * QWEN3_14B.hidden * 2 / 2**30
    assert hosted.parts_gib["weights"] == pytest.approx(base.parts_gib["weights"] - table, abs=2e-3)
    offloaded = estimate(QWEN3_14B, "qlora", 2048, 1, fused_loss=True, offload_activations=True)
    kept = 38 * 2048 * QWEN3_14B.hidden * 2 / 2**30  # 40 checkpointed inputs, 2 of them on the GPU
    assert offloaded.parts_gib["activations"] == pytest.approx(base.parts_gib["activations"] - kept, abs=2e-3)


def test_offload_ring_schedule_loads_each_layer_before_use_and_prefetches_ahead():
    streamed = [1, 4, 6, 9]
    ring = Ring(streamed, slots=3)
    uses = [(i, "f") for i in streamed] + [(i, "b") for i in reversed(streamed)]
    loads_per_use = []
    for _ in range(3):  # three training steps
        for layer, phase in uses:
            loads = ring.use(layer, phase)
            assert layer in ring.held  # resident when it runs
            loads_per_use.append(len(loads))
            position = uses.index((layer, phase))
            ahead = []
            for other, _ in uses[position:] + uses[:position]:
                if other not in ahead:
                    ahead.append(other)
            assert set(ahead[:3]) == set(ring.held)  # the layer in use and the next two distinct ones
    # a cold start loads the first layer and two ahead; then each step copies only the layer that did not fit the
    # ring, once each way: the turn (9 forward, then 9 backward) and the wrap (1 backward, then 1 forward) reuse slots
    assert loads_per_use == [3, 1, 0, 0, 0, 1, 0, 0] + [0, 1, 0, 0, 0, 1, 0, 0] * 2


def test_offload_ring_never_evicts_the_layer_in_use():
    ring = Ring([0, 1, 2, 3, 4], slots=2)
    for layer, phase in [(0, "f"), (1, "f"), (2, "f"), (3, "f"), (4, "f"), (4, "b"), (3, "b"), (0, "f")]:
        ring.use(layer, phase)
        assert layer in ring.held


def test_offload_run_that_cannot_fit_fails_before_loading_the_model(tmp_path, monkeypatch):
    """The plan comes before the weights: a folder with a 14B config and a weight file holding none of its tensors
    is refused with the planner's sentence (loading it would fail differently)."""
    from safetensors.torch import save_file
    from tiny import make_tokenizer

    from engine.core.hardware import Placement
    from engine.models.loading import load_for_training
    from engine.spec.jobspec import JobSpec

    spec = dict(ARCHS["qwen3"])
    config = dict(
        spec,
        hidden_size=5120,
        intermediate_size=17408,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=False,
        architectures=["Qwen3ForCausalLM"],
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"unrelated": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    make_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "2")
    job = JobSpec(model=str(tmp_path), data="-", method="qlora", max_seq_length=2048, batch_size=1)
    with pytest.raises(UserError, match="over the 2.0 GiB budget"):
        load_for_training(job, Placement("cuda", "bf16", "test"), log=lambda m: None)


@pytest.mark.parametrize(
    "arch,skips,tiles,keep",
    [
        ("llama", True, 1, False),
        ("llama", True, 1, True),
        ("qwen3", True, 1, True),
        ("gemma2", False, 1, True),
        ("llama", True, 3, False),
    ],
)
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
def test_offload_checkpoint_recompute_skips_the_down_product_with_the_same_gradients(
    arch, skips, tiles, keep, pack, monkeypatch
):
    """Every layer through engine.memory.offload's checkpoint function (CPU: no store, no stream) trains exactly like
    the plain model, and its recompute pass skips the down projection's products where the MLP output feeds the residual
    sum as it is (not Gemma 2's post-feedforward norm, whose backward reads that output), also in each tile of a
    tiled MLP (whose own recompute in the backward then computes them). With `keep_attention` the first forward keeps
    the q, k, v and o projections' outputs and the recompute takes them back instead of computing them."""
    import copy

    from test_patching_parity import assert_same_training, batch, packed, tiny_model, with_lora

    from engine.memory.activations import Checkpoint
    from engine.patching import modules, patch_model

    base = tiny_model(arch)
    fast_base = copy.deepcopy(base)
    patch_model(fast_base, log=lambda m: None)
    plain, fast = with_lora(base), with_lora(fast_base)
    if pack:
        fast = packed(fast)
    fast.train()
    fast.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fast.enable_input_require_grads()
    layers = fast.base_model.model.model.layers
    for index, layer in enumerate(layers):
        layer._gradient_checkpointing_func = Checkpoint(
            index, None, None, lambda: len(layers) - 1, keep_attention=keep, keep_dequantized=keep
        )
        if tiles > 1:
            layer.mlp.tile = 8  # 24 tokens: three tiles
    calls = []
    fused = modules.lora_linear_group

    def spy(x, projections, packed=None, output_unused=False, given=None, out=None, keep_dequantized=False):
        calls.append(("unused" if output_unused else "given" if given is not None else "computed", len(projections)))
        kept.append(keep_dequantized)
        return fused(x, projections, packed, output_unused, given, out, keep_dequantized)

    kept = []

    monkeypatch.setattr(modules, "lora_linear_group", spy)
    assert_same_training(plain, fast, batch(base.config.vocab_size), rtol=1e-4, atol=1e-5)
    # 3 steps x layers x (4 fused ops in the forward + 4 in the recompute, the MLP's two per tile, plus the tiles'
    # own recompute), one a tile of which skips its products
    assert len(calls) == 3 * len(layers) * (8 + 4 * (tiles - 1) + (2 * tiles if tiles > 1 else 0))
    assert sum(kind == "unused" for kind, _ in calls) == (3 * len(layers) * tiles if skips else 0)
    # the recompute's q/k/v op and o op take back what the forward kept
    assert [n for kind, n in calls if kind == "given"] == ([3, 1] * 3 * len(layers) if keep else [])
    # and its untiled gate/up op keeps its dequantized weights for the backward when asked (Plan.keep_dequantized)
    assert sum(kept) == (3 * len(layers) if keep and tiles == 1 else 0)


def test_offload_host_embedding_gathers_the_rows_of_each_batch():
    """The input embedding kept in host RAM (CPU here: the module runs on the host) gives the table's rows for
    batches of changing shapes; a table whose module scales its rows (Gemma's) goes through the module itself. On the
    GPU machine the GPU gathers from the pinned table (the host_embedding case of
    test_offload_gradients_equal_those_without_offload, and tests/kernels/test_embedding.py)."""
    from engine.memory.host_embedding import host_embedding

    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 8)
    hosted = host_embedding(table, "cpu")
    for shape in [(2, 6), (1, 12), (3, 5), (2, 6)]:
        ids = torch.randint(0, 50, shape)
        with torch.enable_grad():
            out = hosted(ids)
        assert out.shape == (*shape, 8) and out.requires_grad
        assert torch.equal(out.detach(), table.weight.detach()[ids])

    class Scaled(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 3.0

    scaled = Scaled(50, 8)
    ids = torch.randint(0, 50, (2, 4))
    assert torch.equal(host_embedding(scaled, "cpu")(ids), scaled.weight.detach()[ids] * 3.0)


def test_offload_host_embedding_falls_back_to_the_host_gather_when_the_gpu_cannot_read_host_memory(monkeypatch):
    """Where the kernel cannot read the pinned table (Triton refuses the pointer on a GPU or driver without unified
    addressing), the first step switches to the host lookup for good and still gives the table's rows."""
    import kernels.embedding
    from engine.memory.host_embedding import host_embedding

    def refused(table, ids):
        raise ValueError("Pointer argument (at 0) cannot be accessed from Triton (cpu tensor?)")

    monkeypatch.setattr(kernels.embedding, "gather_rows", refused)
    table = torch.nn.Embedding(50, 8)
    hosted = host_embedding(table, "cpu")
    hosted.gpu_gather = True  # as on CUDA
    ids = torch.randint(0, 50, (2, 6))
    assert torch.equal(hosted(ids).detach(), table.weight.detach()[ids])
    assert not hosted.gpu_gather


# GPU: every offload mode trains to the gradients of the same model without offload.

WIDTH = dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=4, head_dim=64)


def _forced(plan_: Plan | None):
    # None: nothing offloaded and no 16-bit copies of 4-bit weights
    def plan_memory(spec, cfg, placement, tokens=None):
        return plan_ or dataclasses.replace(plan(Arch.from_config(cfg), spec.method, 64, 2, 80.0), dense_layers=0)

    return plan_memory


@pytest.mark.gpu
@pytest.mark.parametrize(
    "mode,method",
    [
        ("activations", "lora"),
        ("activations", "qlora"),  # the recompute also keeps gate and up's dequantized weights (keep_dequantized)
        ("host_embedding", "lora"),
        ("stream", "lora"),
        ("stream", "qlora"),
        ("dense", "qlora"),
    ],
)
def test_offload_gradients_equal_those_without_offload(mode, method, tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from test_patching_parity import tiny_model
    from tiny import make_tokenizer

    from engine.core.hardware import Placement
    from engine.models import loading
    from engine.spec.jobspec import JobSpec

    model = tiny_model("llama", vocab=32000, dtype=torch.bfloat16, initializer_range=0.02, num_hidden_layers=4, **WIDTH)
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    placement = Placement("cuda", "bf16", "test")
    job = JobSpec(
        model=str(tmp_path), data="-", method=method, max_seq_length=64, batch_size=2, lora_r=8, lora_alpha=16
    )
    dense = mode == "dense"  # two of four layers multiply by 16-bit copies of their NF4 weights
    forced = Plan(
        budget_gib=1.0,
        checkpointed=0 if dense else 4,
        offload_activations=not dense,
        streamed=(0, 1, 3) if mode == "stream" else (),  # three layers through two slots: copies every step
        ring_slots=2 if mode == "stream" else 0,
        host_embedding=mode == "host_embedding",
        loss_chunk=64,
        mlp_tile=None,
        optimizer_in_host=False,
        peak_vram_gib=0.5,
        peak_ram_gib=1.0,
        layers=4,
        dense_layers=2 if dense else 0,
        graphs=not dense,
        keep_attention=mode in ("activations", "host_embedding"),
        keep_dequantized=mode == "activations" and method == "qlora",
    )
    ids = torch.randint(3, 32000, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()

    def run(plan_):
        monkeypatch.setattr(loading, "plan_memory", _forced(plan_))
        if plan_ is not None and plan_.checkpointed:  # a budget this small recomputes every layer
            monkeypatch.setenv("TUNESMITH_VRAM_GIB", "0.05")
        torch.manual_seed(5)
        net, _ = loading.load_for_training(job, placement, log=lambda m: None)
        return (net, *three_sgd_steps(net, ids))

    _, plain_losses, plain_grads = run(None)
    net, losses, grads = run(forced)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-3, atol=0)
    for step in range(3):
        for name, ref in plain_grads[step].items():
            torch.testing.assert_close(grads[step][name], ref, rtol=2e-2, atol=1e-5, msg=name)
    stream = getattr(net, "offload_stream", None)
    if mode == "stream":
        copy_ms, stall_ms, moved_gb = stream.step_summary()  # the last step's, not yet ticked away
        assert moved_gb > 0 and copy_ms > 0
    else:
        assert stream is None
    if mode == "host_embedding":
        assert net.get_input_embeddings().weight.device.type == "cpu"
    copies = [m for m in net.modules() if getattr(m, "dense_weight", None) is not None]
    assert len(copies) == (14 if dense else 0)  # q, k, v, o, gate, up, down in layers 0 and 1
    if not dense:  # steps 2 and 3 replayed CUDA graphs of every layer's two passes (a streamed layer: per slot)
        layers = net.base_model.model.model.layers
        assert all(layer.gradient_checkpointing for layer in layers)
        graphs = layers[0]._gradient_checkpointing_func.graphs
        assert graphs.enabled
        assert {(i, phase) for i, phase, _ in graphs.graphs} == {(i, p) for i in range(4) for p in "fb"}
        assert ("kept" in graphs.static) == forced.keep_attention  # the q/k/v/o outputs went through the graphs


def three_sgd_steps(net, ids):
    """(losses, packed LoRA gradients) of three bf16 SGD steps of `net` on `ids` on the GPU, its adapters first set to
    the same nonzero values whatever the loading drew, so two loadings of one model can be compared."""
    from test_patching_parity import lora_state

    from engine.patching.modules import packed_gradient

    gen = torch.Generator().manual_seed(1)
    for p in lora_state(net).values():
        p.data.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    losses, grads = [], []
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({k: packed_gradient(v).detach().clone() for k, v in lora_state(net).items()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


@pytest.mark.parametrize("arg, value", [("--batch", "0"), ("--vram", "-3"), ("--gpus", "0"), ("--ram", "0")])
def test_estimate_refuses_a_figure_that_is_not_above_0(capsys, arg, value):
    """--batch 0 was taken as "the preset's" and --vram -3 planned for a card of -3 GiB."""
    from engine.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["estimate", "--model", "Qwen/Qwen3-0.6B", arg, value])
    assert info.value.code == 2
    assert f"argument {arg}: must be above 0, not {value}" in capsys.readouterr().err
