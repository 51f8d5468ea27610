"""Mixture-of-experts plans against what the run holds (issue 29 under issue 24's rule: the estimate equals the run):
the experts' storage decided once, by the plan, for a GPU run with checkpointing on or off; streaming slots sized by
the largest streamed layer of a model that mixes dense and MoE layers; a trained router's copy, gradient and optimizer
states; the load-balancing loss added to the fused loss, so the plan's chunked logits are the run's."""

import dataclasses
import json

import pytest
import torch
from test_memory import QWEN3_30B_A3B
from test_moe_offload import ATTENTION, EMBEDDINGS, EXPERTS, OTHER

from engine.core.hardware import Placement
from engine.memory.estimate import GIB, NF4_BYTES, Arch
from engine.models import loading
from engine.spec.jobspec import JobSpec


def _job(**kw) -> JobSpec:
    return JobSpec(**{"model": "tiny", "data": "-", "max_seq_length": 1024, "batch_size": 1, **kw})


def test_a_gpu_run_without_checkpointing_plans_the_nf4_experts_it_loads(monkeypatch, tmp_path):
    """Checkpointing off leaves the plan no VRAM budget; on a GPU the fast path still stores the experts NF4, and the
    plan counts them so. The run loads them by the plan's `experts_nf4`, not a rule of its own."""
    from engine.memory.verdict import parts

    monkeypatch.setenv("TUNESMITH_RAM_GIB", "512")
    job = _job(method="qlora", gradient_checkpointing=False)
    gpu = loading.plan_memory(job, QWEN3_30B_A3B, Placement("cuda", "bf16", "test"))
    cpu = loading.plan_memory(job, QWEN3_30B_A3B, Placement("cpu", "fp32", "test"))
    assert gpu.budget_gib is None and gpu.experts_nf4 and not cpu.experts_nf4
    assert gpu.checkpointed == cpu.checkpointed == 0  # no layer recomputes: each keeps its activations
    arch = Arch.from_config(QWEN3_30B_A3B)
    # attention and experts NF4; embeddings, head, norms and routers 16-bit
    assert parts(arch, job, gpu)["weights"] == pytest.approx(
        ((ATTENTION + EXPERTS) * NF4_BYTES + (EMBEDDINGS + OTHER) * 2) / GIB, abs=1e-3
    )
    # every layer's activations at 1024 tokens: tokens x (h 1.3 + attention 12 + MLP 8 per unit of width, and the
    # grouped path's 2 bf16 rows of hidden per routed row: 4 x top-8 x 2048)
    layer = 1024 * (1.3 * 2048 + 12.0 * (32 + 8) * 128 + 8.0 * 8 * 768 + 4 * 8 * 2048)
    # and the 16-bit copies of its expert factors its grouped products save (PEFT's cast, made contiguous for
    # CUTLASS): 128 experts x rank 16 x (gate_up's 2048 + 2 x 768 and down's 768 + 2048)
    layer += 128 * 16 * (2048 + 2 * 768 + 768 + 2048) * 2
    assert parts(arch, job, gpu)["activations"] == pytest.approx(48 * layer / GIB, abs=1e-3)
    # on the CPU (plain transformers + PEFT) the experts stay 16-bit
    assert parts(arch, job, cpu)["weights"] == pytest.approx(
        (ATTENTION * NF4_BYTES + (EXPERTS + EMBEDDINGS + OTHER) * 2) / GIB, abs=1e-3
    )

    # the run: a tiny qwen3_moe loaded by load_planned with the plan a GPU gets stores every expert NF4
    from tiny import make_model

    folder = make_model("qwen3_moe", tmp_path / "model")
    cfg = json.loads((folder / "config.json").read_text())
    tiny_job = dataclasses.replace(job, model=str(folder))
    planned = loading.plan_memory(tiny_job, cfg, Placement("cuda", "bf16", "test"))
    assert planned.experts_nf4
    monkeypatch.setattr(loading, "plan_memory", lambda spec, cfg, placement, tokens=None: planned)
    model, memory = loading.load_planned(tiny_job, folder, cfg, Placement("cpu", "fp32", "test"), log=lambda m: None)
    packed = [m._buffers[n] for m in model.modules() for n in ("gate_up_proj_nf4", "down_proj_nf4") if n in m._buffers]
    assert len(packed) == 2 * 2 and memory is planned
    assert sum(b.numel() for b in packed) == Arch.from_config(cfg).expert_weight_params * 0.5


def test_a_lora_run_refuses_a_plan_that_stores_its_experts_nf4(monkeypatch, tmp_path):
    """A plan records how the experts load (`experts_nf4`, QLoRA's on the fast path); a LoRA run handed a QLoRA plan
    (the GPU streaming test once built its LoRA plan as QLoRA's) would quietly train NF4 experts with the QLoRA
    plan's figures. It refuses, naming the mismatch; its own plan loads them 16-bit."""
    from tiny import make_model

    folder = make_model("qwen3_moe", tmp_path / "model")
    cfg = json.loads((folder / "config.json").read_text())
    gpu = Placement("cuda", "bf16", "test")
    qlora_plan = loading.plan_memory(_job(model=str(folder), method="qlora"), cfg, gpu)
    lora = _job(model=str(folder), method="lora")
    assert qlora_plan.experts_nf4 and not loading.plan_memory(lora, cfg, gpu).experts_nf4
    monkeypatch.setattr(loading, "plan_memory", lambda spec, cfg, placement, tokens=None: qlora_plan)
    with pytest.raises(ValueError, match="a lora run was given a plan that stores the experts NF4"):
        loading.load_planned(lora, folder, cfg, Placement("cpu", "fp32", "test"), log=lambda m: None)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_the_plan_counts_the_loss_the_run_computes(arch, tmp_path, monkeypatch):
    """With the load-balancing loss on, the fast path keeps its chunked loss (the router loss added to it), and the
    plan counts one chunk of logits; gpt-oss has no fast-path family, so its run and its plan have all the logits at
    once."""
    from test_moe_parity import tiny_model

    from engine.memory.estimate import COEF
    from engine.memory.verdict import parts
    from engine.patching import patch_model

    monkeypatch.setenv("TUNESMITH_RAM_GIB", "512")
    model = tiny_model(arch)
    model.config.output_router_logits = True
    fused = "fused cross-entropy loss" in patch_model(model, log=lambda m: None).swapped
    assert fused == (arch != "gpt_oss")
    cfg = model.config.to_dict()
    job = _job(method="qlora", max_seq_length=512, batch_size=2)
    planned = loading.plan_memory(job, cfg, Placement("cuda", "bf16", "test"))
    assert planned.fused_loss == fused
    tokens, vocab, hidden = 1024, cfg["vocab_size"], cfg["hidden_size"]
    # one 1024-token chunk of bf16 logits (the 4096-token chunk of a plan without a budget) and fp32 dh, or
    # transformers' loss over every token's logits
    loss = tokens * vocab * 2 + tokens * hidden * 4 if fused else tokens * vocab * COEF["loss_v"]
    assert parts(Arch.from_config(cfg), job, planned)["loss"] == pytest.approx(loss / GIB, abs=1e-3)


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])  # gpt-oss: the router has a bias
def test_a_trained_router_is_counted_as_the_run_holds_it(arch):
    """train_router: LoRA trains a copy of every router (PEFT's modules_to_save) in the model's dtype, beside the
    frozen original, with its gradient and 8-bit AdamW states; full fine-tuning freezes the routers without it."""
    from test_moe_parity import tiny_model

    from engine.memory.estimate import estimate
    from engine.models.experts import freeze_routers

    model = tiny_model(arch).to(torch.bfloat16)
    tiny = Arch.from_config(model.config.to_dict())
    assert tiny.params == sum(p.numel() for p in model.parameters())
    lora = loading.add_lora(model, _job(train_router=True), log=lambda m: None)
    copies = [p for n, p in lora.named_parameters() if p.requires_grad and "modules_to_save" in n]
    assert {p.dtype for p in copies} == {torch.bfloat16}
    assert sum(p.numel() for p in copies) == tiny.router_params == 2 * 4 * (64 + (arch == "gpt_oss"))
    plain = tiny_model(arch)
    freeze_routers(plain, _job(method="full"), log=lambda m: None)
    assert sum(p.numel() for p in plain.parameters() if p.requires_grad) == tiny.params - tiny.router_params

    big = Arch.from_config(QWEN3_30B_A3B)
    routers = 48 * 128 * 2048
    for method in ("qlora", "full"):
        frozen = estimate(big, method, 1024, 1, fused_loss=True).parts_gib["trainable"]
        trained = estimate(big, method, 1024, 1, fused_loss=True, train_router=True).parts_gib["trainable"]
        # LoRA: the 16-bit copy, its 16-bit gradient, 2 bytes of 8-bit AdamW states; full: a trained weight's 6
        # bytes as the estimate counts every one of them (2 + 2 + the states' 2)
        assert trained - frozen == pytest.approx(routers * (2 + 2 + 2) / GIB, abs=1e-3), method


def test_streaming_slots_hold_the_largest_streamed_layer(tmp_path):
    """A Qwen3-MoE with a dense layer between MoE ones (mlp_only_layers): the dense layer's MLP (3 x 64 x 256) is
    larger than the MoE layers' four experts (4 x 3 x 64 x 32), so the ring's slots hold that layer, in WeightStream
    and in the estimate, and the layers that leave the GPU are counted each at its own size."""
    from tiny import ARCHS, make_model

    from engine.memory.estimate import estimate, layer_weight_bytes
    from engine.memory.offload import plan
    from engine.memory.weights import WeightStream, load_streamed

    ARCHS["qwen3_moe_mixed"] = dict(ARCHS["qwen3_moe"], num_hidden_layers=3, mlp_only_layers=[1], intermediate_size=256)
    try:
        folder = make_model("qwen3_moe_mixed", tmp_path / "model")
    finally:
        del ARCHS["qwen3_moe_mixed"]
    arch = Arch.from_config(json.loads((folder / "config.json").read_text()))
    assert (arch.moe_layers, arch.moe_ids) == (2, (0, 2))
    attention = 64 * 64 * 2 + 64 * 32 * 2  # q, o [64 x 64]; k, v [64 x 32]
    moe, dense = (attention + 4 * 3 * 64 * 32) * 2, (attention + 3 * 64 * 256) * 2  # bytes, 16-bit
    assert [layer_weight_bytes(arch, "lora", False, i) for i in range(3)] == [moe, dense, moe]

    streaming = dataclasses.replace(plan(arch, "lora", 12, 2, None), streamed=(0, 1, 2), ring_slots=2)
    model = load_streamed(folder, Placement("cpu", "bf16", "test"), False, streaming, log=lambda m: None)
    model.requires_grad_(False)
    layers = dict(enumerate(model.model.layers))
    stream = WeightStream(layers, torch.device("cpu"), slots=2, log=lambda m: None)
    held = {i: sum(h.numel() * h.element_size() for *_, h in pairs) for i, pairs in stream.weights.items()}
    assert held == {0: moe, 1: dense, 2: moe}
    assert stream.slot_bytes == dense and len(stream.buffers) == 2

    # the estimate, at a size its GiB figures resolve: Qwen3-30B-A3B's numbers with every other layer dense
    # (decoder_sparse_step 2), all 48 layers streamed through three slots, LoRA (16-bit weights)
    big = Arch.from_config(dict(QWEN3_30B_A3B, decoder_sparse_step=2))
    assert big.moe_ids == tuple(range(1, 48, 2))
    attention = 2048 * 4096 * 2 + 2048 * 512 * 2
    moe, dense = (attention + 128 * 3 * 2048 * 768) * 2, (attention + 3 * 2048 * 6144) * 2
    assert (layer_weight_bytes(big, "lora", False, 0), layer_weight_bytes(big, "lora", False, 1)) == (dense, moe)
    resident = estimate(big, "lora", 1024, 1)
    streamed = estimate(big, "lora", 1024, 1, streamed_layers=48, ring_slots=3)
    left = resident.parts_gib["weights"] - streamed.parts_gib["weights"]
    assert left == pytest.approx((24 * moe + 24 * dense - 3 * moe) / GIB, abs=1e-3)
    assert streamed.peak_ram_gib - resident.peak_ram_gib == pytest.approx((24 * moe + 24 * dense) / GIB, abs=0.01)


def test_full_fine_tuning_on_several_gpus_gathers_the_largest_layer():
    """FSDP2 gathers a layer whole (the one computing and the next) and reduce-scatters one layer's gradient: with
    dense layers between the MoE ones, those are as large as a MoE layer, not the average layer."""
    from engine.memory.estimate import estimate

    big = Arch.from_config(dict(QWEN3_30B_A3B, decoder_sparse_step=2))
    moe = (2048 * 4096 * 2 + 2048 * 512 * 2 + 128 * 3 * 2048 * 768) * 2
    sharded = estimate(big, "full", 1024, 1, shards=4, optimizer="adamw").parts_gib
    root = big.embedding_params * 2  # FSDP2's root (embeddings, head) stays gathered whole
    assert sharded["weights"] == pytest.approx((big.params * 2 / 4 + 2 * moe + root) / GIB, abs=1e-3)
    trained = big.params - big.router_params  # the routers stay frozen
    head = big.vocab * big.hidden * 2  # the head's gradient, whole until the root's reduce-scatter
    # bf16 shards: torch's AdamW keeps its two states in bf16 (4 bytes; tests/test_memory_full_states.py)
    assert sharded["trainable"] == pytest.approx((trained * (2 + 2 + 4) / 4 + moe + head) / GIB, abs=1e-3)


def test_a_card_with_room_dequantizes_each_layers_experts_at_once():
    """Qwen3-30B-A3B QLoRA at 1,024 tokens: with room to spare (40 GiB, nothing recomputes) the plan dequantizes each
    layer's NF4 experts as one stack, and counts the stack's scratch (128 experts' gate_up, 16-bit) where a chunk's
    was counted; at 24 GiB, where layers recompute, it keeps the chunks (the run's side: test_moe_parity's NF4
    test)."""
    from engine.core.scratch import experts_per_chunk
    from engine.memory.estimate import estimate
    from engine.memory.offload import plan

    arch = Arch.from_config(QWEN3_30B_A3B)
    roomy, tight = plan(arch, "qlora", 1024, 1, 40, 512), plan(arch, "qlora", 1024, 1, 24, 512)
    assert roomy.checkpointed == 0 and roomy.expert_stack and "experts dequantized at once" in roomy.describe()
    assert tight.checkpointed > 0 and not tight.expert_stack
    per_expert = 2 * 768 * 2048 * 2  # one expert's gate_up, 16-bit
    kw = {**roomy.estimate_kw(), "checkpointed_layers": 0}
    whole, chunked = (
        estimate(arch, "qlora", 1024, 1, **kw),
        estimate(arch, "qlora", 1024, 1, **kw | {"expert_stack": False}),
    )
    assert whole.parts_gib["dequant"] - chunked.parts_gib["dequant"] == pytest.approx(
        (128 - experts_per_chunk(per_expert)) * per_expert / GIB,
        abs=2e-3,  # parts are rounded
    )


def test_a_card_with_room_keeps_16_bit_copies_of_the_nf4_experts():
    """Qwen3-30B-A3B at 12 of its 48 layers (what bench/README.md times), QLoRA at 2 x 2,048 tokens: at 78.5 GiB the
    plan keeps a 16-bit copy of every layer's weights, experts included (1.1 GiB a layer on top of the attention's),
    and then no stack buffer, since no layer dequantizes its experts; at 24 GiB every layer's attention copies (small,
    and each saves launches) come first, then as many layers' experts as fit. At full depth on 78.5 GiB the experts
    of only some layers fit, and every layer keeps its attention copies all the same."""
    from engine.memory.estimate import dense_copy_bytes, estimate
    from engine.memory.offload import plan

    arch = Arch.from_config({**QWEN3_30B_A3B, "num_hidden_layers": 12})
    assert dense_copy_bytes(arch, experts=True) == 128 * 3 * 2048 * 768 * 2
    roomy, tight = plan(arch, "qlora", 2048, 2, 78.5), plan(arch, "qlora", 2048, 2, 24)
    assert (roomy.dense_layers, roomy.dense_experts) == (12, 12) and not roomy.expert_stack
    assert "16-bit copies of 12 layers' 4-bit weights, 12 layers' experts" in roomy.describe()
    assert tight.dense_layers == 12 and 0 < tight.dense_experts < 12 and tight.expert_stack
    deep = plan(Arch.from_config(QWEN3_30B_A3B), "qlora", 2048, 2, 78.5)
    assert deep.dense_layers == 48 and 0 < deep.dense_experts < 48
    kw = {**roomy.estimate_kw(), "checkpointed_layers": 0}
    with_copies, without = (
        estimate(arch, "qlora", 2048, 2, **kw),
        estimate(arch, "qlora", 2048, 2, **kw | {"dense_experts": 0}),
    )
    chunk = 10 * 2 * 768 * 2048 * 2  # without the experts' copies, a chunk's dequantization buffer is back
    assert with_copies.parts_gib["dequant"] - without.parts_gib["dequant"] == pytest.approx(
        (12 * dense_copy_bytes(arch, experts=True) - chunk) / GIB, abs=2e-3
    )


def test_a_roomy_moe_plan_counts_the_layer_graphs_the_run_captures(monkeypatch):
    """MoE layers are captured in CUDA graphs by default where nothing recomputes (engine.patching.moe.capturable), one
    shape's graphs (engine.patching.graphs.install): the plan counts that one shape (every layer's static inputs,
    outputs and gradients and the adapters' fp32 gradients, experts' adapters included) and holds no more shapes."""
    from engine.memory.estimate import graph_shape_bytes
    from engine.memory.verdict import parts

    monkeypatch.setenv("TUNESMITH_RAM_GIB", "512")
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "78")
    config = {**QWEN3_30B_A3B, "num_hidden_layers": 12}  # queue call 22's qwen3_30b_a3b_12l
    job = _job(method="qlora", max_seq_length=2048, batch_size=2)
    plan = loading.plan_memory(job, config, Placement("cuda", "bf16", "test"))
    assert plan.checkpointed == 0 and plan.layer_graphs and plan.shapes == 1
    arch = Arch.from_config(config)
    shape = graph_shape_bytes(arch, 4096, 0, False, arch.lora_params(job.lora_r, job.target_modules))
    held = parts(arch, job, plan)
    assert held["graph_shapes"] == pytest.approx(shape / GIB, abs=1e-3)
    assert sum(held.values()) == pytest.approx(plan.peak_vram_gib, abs=0.01)  # the figure the plan shows: one shape
