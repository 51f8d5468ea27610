"""Mixture-of-experts models under the offload manager: the estimate of Qwen3-30B-A3B's full-depth QLoRA plan on an
8 GiB budget against a count by hand, and a tiny Qwen3-MoE whose NF4 experts load layer by layer and stream from host
RAM through GPU slots training exactly as the same model with every weight resident (on the CPU the slots are CPU
memory and the copies plain ones; the GPU test in test_offload.py covers the side stream)."""

import dataclasses
import json

import pytest
import torch
from test_memory import QWEN3_30B_A3B, json_folder_for
from test_offload import three_sgd_steps
from test_patching_parity import batch, lora_state

from engine.core.hardware import Placement
from engine.memory.estimate import FRAGMENTATION, GIB, NF4_BYTES, Arch
from engine.memory.offload import Plan, plan
from engine.patching import moe
from kernels import dispatch

ATTENTION = 48 * (2048 * 4096 * 2 + 2048 * 512 * 2)  # q, o [2048 x 4096]; k, v [2048 x 512]; 48 layers
EXPERTS = 48 * 128 * 3 * 2048 * 768  # 128 experts a layer: gate and up [768 x 2048], down [2048 x 768]
EMBEDDINGS = 2 * 151936 * 2048  # input embedding and the untied head
OTHER = 97 * 2048 + 48 * 128 * 2048 + 48 * 2 * 128  # norms (2 a layer, 1 final), routers, q/k norms
ADAPTERS = 48 * 16 * (2 * (2048 + 4096) + 2 * (2048 + 512)) + 48 * 128 * 16 * ((1536 + 2048) + (2048 + 768))


def test_qwen3_30b_a3b_qlora_full_depth_fits_8_gib_with_the_host_ram_it_states(capsys):
    """`python -m engine estimate --model Qwen/Qwen3-30B-A3B --method qlora --vram 8`: the 8 GB tier's 1024 tokens,
    every layer's NF4 weights (attention and experts) streamed through two slots, the adapters' 8-bit states paged
    to host RAM. Each part of the peak by hand from the architecture's numbers."""
    from engine.__main__ import main

    folder = json_folder_for(QWEN3_30B_A3B)
    assert main(["estimate", "--model", folder, "--method", "qlora", "--vram", "8", "--ram", "96"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["fits"] is True and (e["seq"], e["batch"]) == (1024, 1)
    chosen = e["plan"]
    assert chosen["streamed_layers"] == 48 and chosen["checkpointed_layers"] == 48 and chosen["optimizer_in_host"]
    assert chosen["host_embedding"] and not chosen["cuda_graphs"] and chosen["activation_offload"]
    assert ATTENTION + EXPERTS + EMBEDDINGS + OTHER == Arch.from_config(QWEN3_30B_A3B).params

    tokens, per_layer = 1024, (ATTENTION + EXPERTS) / 48 * 0.5  # one layer's packed 4-bit bytes
    parts = dict(
        # NF4 attention and experts (their scales stay), less what streams, plus 2 slots; the head in 16 bits (the
        # input embedding is in host RAM), norms, routers
        weights=(ATTENTION + EXPERTS) * NF4_BYTES - 48 * per_layer + 2 * per_layer + (EMBEDDINGS / 2 + OTHER) * 2,
        trainable=ADAPTERS * (4 + 4),  # fp32 adapters and their gradients; the 8-bit states are in host RAM
        # two offloaded layer inputs on the GPU, one layer rebuilt: tokens x (h 1.3 + attention 12 + MLP 8 per unit,
        # and the grouped path's gathered rows and expert outputs, 2 bf16 rows of hidden per routed row), and the
        # 16-bit copies of its expert factors that its grouped products save
        activations=2 * tokens * 2048 * 2
        + tokens * (1.3 * 2048 + 12.0 * (32 + 8) * 128 + 8.0 * 8 * 768 + 4 * 8 * 2048)
        + 128 * 16 * (2048 + 2 * 768 + 768 + 2048) * 2,
        loss=1024 * 151936 * 2 + tokens * 2048 * 4,  # one 1024-token chunk of bf16 logits, fp32 dh
        # the largest attention weight in 16 bits, one chunk of 10 experts' gate_up (6 MiB each in 16 bits), and in
        # each of the 2 slots the fp32 scales of the 64 experts a layer fetches alone at most (engine.memory.
        # expert_fetch: one a block of 64 weights)
        dequant=2048 * 4096 * 2 + 10 * 1536 * 2048 * 2 + 2 * 64 * 3 * 2048 * 768 // 64 * 4,
        fixed=0.05 * GIB,
    )
    parts["fragmentation"] = FRAGMENTATION * sum(parts.values())
    for name, value in parts.items():
        assert e["peak_parts_gib"][name] == pytest.approx(value / GIB, abs=1e-3), name
    assert e["peak_vram_gib"] == pytest.approx(sum(parts.values()) / GIB, abs=0.01)
    assert e["peak_vram_gib"] * 1.05 <= 8.0  # with the estimate's own margin (ESTIMATE_SLACK)
    # host RAM: the 16-bit checkpoint while it loads, 1 GiB, and what is pinned: every layer's packed weights, the
    # adapters' 8-bit states, the 48 checkpointed inputs
    pinned = 48 * per_layer + ADAPTERS * 2 + 48 * tokens * 2048 * 2
    ram = 1.0 + (Arch.from_config(QWEN3_30B_A3B).params * 2 + pinned) / GIB
    assert e["peak_ram_gib"] == pytest.approx(ram, abs=0.01)
    assert 70 < e["peak_ram_gib"] < 75  # 73.2 GiB

    # less host RAM than that: the same plan, refused with its figure
    assert main(["estimate", "--model", folder, "--method", "qlora", "--vram", "8", "--ram", "64"]) == 0
    short = json.loads(capsys.readouterr().out)
    assert short["fits"] is False and f"{ram:.1f} GiB of host RAM" in short["reason"]


def test_qwen3_30b_a3b_experts_count_16_bit_off_the_fast_path():
    """Without the fast path (no GPU: the plain transformers + PEFT path) the experts stay 16-bit, as the run holds
    them; frozen experts carry no adapters."""
    from engine.memory.estimate import estimate

    arch = Arch.from_config(QWEN3_30B_A3B)
    fast = estimate(arch, "qlora", 1024, 1, fused_loss=True)
    plain = estimate(arch, "qlora", 1024, 1, fused_loss=False)
    assert plain.parts_gib["weights"] - fast.parts_gib["weights"] == pytest.approx(
        EXPERTS * (2 - NF4_BYTES) / GIB, abs=1e-3
    )
    frozen = estimate(arch, "qlora", 1024, 1, fused_loss=True, lora_experts=False)
    assert fast.parts_gib["trainable"] - frozen.parts_gib["trainable"] == pytest.approx(
        48 * 128 * 16 * (3584 + 2816) * 10 / GIB, abs=1e-3
    )


def test_adapter_states_page_to_host_ram_only_when_streaming_every_layer_is_not_enough():
    from engine.core.errors import UserError

    arch = Arch.from_config(QWEN3_30B_A3B)
    roomy = plan(arch, "qlora", 1024, 1, 12.0)
    assert 0 < len(roomy.streamed) < 48 and not roomy.optimizer_in_host
    tight = plan(arch, "qlora", 1024, 1, 8.0)
    assert len(tight.streamed) == 48 and tight.optimizer_in_host
    assert "paged optimizer states in host RAM" in tight.describe()
    with pytest.raises(UserError, match="even with every layer's weights in host RAM"):  # the job fixed its optimizer
        plan(arch, "qlora", 1024, 1, 8.0, paged_optimizer=False)


def _streaming_plan(folder, streamed: tuple[int, ...], method: str = "qlora") -> Plan:
    """`method`'s plain plan (every layer checkpointed, nothing offloaded) with `streamed` layers through two slots.
    Its `experts_nf4` (a QLoRA plan's, for the fast path) is what the run loads the experts by."""
    arch = Arch.from_config(json.loads((folder / "config.json").read_text()))
    return dataclasses.replace(plan(arch, method, 12, 2, None), streamed=streamed, ring_slots=2)


def _prepared(folder, streamed: tuple[int, ...], method: str = "qlora", log=lambda m: None):
    """As engine.models.loading prepares a (Q)LoRA run's MoE layers on the fast path: loaded layer by layer (for
    QLoRA with the experts quantized to NF4 on the way; LoRA keeps them 16-bit), the streamed layers' weights left in
    host RAM, the grouped expert path, adapters on attention and every expert, checkpointing, and the plan
    installed (`log`: the offload manager's run log)."""
    from engine.memory.install import install
    from engine.memory.weights import load_streamed
    from engine.models.loading import add_lora
    from engine.spec.jobspec import JobSpec

    plan_ = _streaming_plan(folder, streamed, method)
    nf4 = plan_.experts_nf4
    assert nf4 == (method == "qlora")
    logs = []
    model = load_streamed(folder, Placement("cpu", "fp32", "test"), False, plan_, log=logs.append, nf4_experts=nf4)
    assert ("loading: the experts' fused weights stored NF4 as each layer reached the GPU" in logs) == nf4
    assert moe.install(model, log=lambda m: None) == 3
    assert sum(isinstance(m, moe.FastMoEBlock) for m in model.modules()) == 3, "a MoE block kept transformers' path"
    torch.manual_seed(1)
    model = add_lora(model, JobSpec(model="tiny", data="rows.jsonl", lora_r=4, lora_alpha=8), log=lambda m: None)
    if nf4:  # prepare_for_training quantizes QLoRA's experts only; these were as they loaded
        assert moe.quantize_experts(model, log=lambda m: None) == 0
    gen = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B: every adapter gradient is live from the first step
            p.data = torch.randn(p.shape, generator=gen) * 0.1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    stream = install(model, plan_, torch.device("cpu"), log=log) if streamed else None
    return model, stream


def _train(model, steps: int = 3):
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses, grads = [], []
    inputs = batch(96)
    for _ in range(steps):
        with dispatch.force("triton"):
            loss = model(**inputs).loss
            loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in lora_state(model).items()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads


def _saying(where: str):
    """assert_close's `msg` that puts `where` before its own account of the mismatch (a string would replace it)."""
    return lambda account: f"{where}: {account}"


def _three_layers(folder, arch: str = "qwen3_moe", experts: int | None = None):
    """A tiny MoE model of three layers (with `experts` experts a layer, else the tiny model's): three streamed
    through two slots are copied at every use."""
    from tiny import ARCHS, make_model

    spec = dict(ARCHS[arch], num_hidden_layers=3)
    if experts:
        spec["num_experts" if arch == "qwen3_moe" else "num_local_experts"] = experts
    if "layer_types" in spec:  # gpt-oss alternates sliding and full attention
        spec["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    ARCHS[f"{arch}_3l"] = spec
    try:
        return make_model(f"{arch}_3l", folder)
    finally:
        del ARCHS[f"{arch}_3l"]


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])  # gpt-oss: experts stored transposed, with biases
def test_tiny_moe_trains_with_its_nf4_experts_streamed(arch, tmp_path):
    folder = _three_layers(tmp_path / "model", arch)
    plain, _ = _prepared(folder, ())
    streamed, stream = _prepared(folder, (0, 1, 2))  # three layers through two slots: copies at every use

    experts = streamed.base_model.model.model.layers[1].mlp.experts.base_layer.base_layer
    assert experts.gate_up_proj_nf4.numel() == 0  # in host RAM until the layer runs
    host = {name: h for module, name, h in stream.weights[1] if module is experts}
    assert host["gate_up_proj_nf4"].dtype == torch.uint8 and host["gate_up_proj_nf4"].numel() == 4 * 64 * 64 // 2
    assert host["down_proj_nf4"].numel() == 4 * 64 * 32 // 2
    assert {name for _, name, _ in stream.weights[1]} == {"weight", "gate_up_proj_nf4", "down_proj_nf4"}
    assert len(stream.weights[1]) == 4 + 2  # q, k, v, o and the two expert tensors
    # what the estimate counts: a layer's packed experts (layer_weight_bytes' expert part) and every adapter
    arch = Arch.from_config(json.loads((folder / "config.json").read_text()))
    assert sum(h.numel() for h in host.values()) == arch.expert_weight_params / 3 * 0.5
    assert sum(p.numel() for p in lora_state(streamed).values()) == arch.lora_params(4)

    _trains_the_same(streamed, plain, stream)
    # the last backward ran layers 2, 1, 0 through two slots: layer 2's weights went back to being host-only
    last = streamed.base_model.model.model.layers[2].mlp.experts.base_layer.base_layer
    assert last.gate_up_proj_nf4.numel() == 0 and experts.gate_up_proj_nf4.numel() == 4 * 64 * 64 // 2


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_tiny_moe_trains_with_its_16_bit_experts_streamed(arch, tmp_path):
    """LoRA keeps the experts 16-bit, so their 3-D parameters themselves stream. In host RAM each leaves on the
    device a placeholder of its shape that holds one element (PEFT's target_parameters, the adapter targets and the
    grouped path's router lookup read that shape: an empty one left the experts without adapters or the grouped
    path), and the grouped path refuses to compute with it."""
    folder = _three_layers(tmp_path / "model", arch)
    plain, _ = _prepared(folder, (), "lora")
    streamed, stream = _prepared(folder, (0, 1, 2), "lora")

    experts = streamed.base_model.model.model.layers[1].mlp.experts.base_layer.base_layer
    host = {name: h for module, name, h in stream.weights[1] if module is experts}
    assert {name for _, name, _ in stream.weights[1]} == {"weight", "gate_up_proj", "down_proj"}
    assert len(stream.weights[1]) == 4 + 2  # q, k, v, o and the two expert tensors
    assert experts.gate_up_proj.shape == host["gate_up_proj"].shape and experts.gate_up_proj.stride() == (0, 0, 0)
    arch_ = Arch.from_config(json.loads((folder / "config.json").read_text()))
    assert sum(h.numel() for h in host.values()) == arch_.expert_weight_params / 3
    assert sum(p.numel() for p in lora_state(streamed).values()) == arch_.lora_params(4)
    x = torch.zeros(2, arch_.hidden)
    with pytest.raises(RuntimeError, match="gate_up_proj is not on the device"):
        moe.experts_forward(experts, x, torch.zeros(2, 2, dtype=torch.int64), torch.ones(2, 2))

    _trains_the_same(streamed, plain, stream)
    # the last backward ran layers 2, 1, 0 through two slots: layer 2's experts went back to being host-only
    last = streamed.base_model.model.model.layers[2].mlp.experts.base_layer.base_layer
    assert last.gate_up_proj.stride() == (0, 0, 0) and torch.equal(experts.gate_up_proj, host["gate_up_proj"])


def _trains_the_same(streamed, plain, stream):
    """Three SGD steps of the streamed model and of the resident one give the same losses and adapter gradients."""
    losses, grads = _train(streamed)
    plain_losses, plain_grads = _train(plain)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-6, atol=0)
    assert losses[-1] < losses[0]
    for step in range(3):
        assert grads[step].keys() == plain_grads[step].keys()
        assert any("experts" in name for name in grads[step])
        for name, ref in plain_grads[step].items():
            torch.testing.assert_close(grads[step][name], ref, rtol=1e-5, atol=1e-7, msg=_saying(name))
    assert stream.steps == 3


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_moe_streamed_run_trains_as_the_resident_one_on_the_gpu(method, tmp_path, monkeypatch):
    """The app's own loading (engine.models.loading.load_for_training) on the GPU, with the method's plan streaming
    all three layers (NF4 or 16-bit experts, through the side stream) against one that streams none: the same losses
    and LoRA gradients over three steps. GPU runs are rare: each check says what it saw (how the experts loaded,
    which tensors stream, which adapters exist) before the numbers are compared."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    folder = _three_layers(tmp_path / "model")
    ids = torch.randint(3, 96, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    net, log, streamed, resident = gpu_runs(folder, method, ids, monkeypatch)
    nf4 = "experts' fused weights stored NF4" in log
    assert nf4 == (method == "qlora"), f"{method}: experts stored NF4 is {nf4}; the streamed run's log:\n{log}"
    names = {name for _, name, _ in net.offload_stream.weights[0]}
    wanted = {"gate_up_proj_nf4", "down_proj_nf4"} if method == "qlora" else {"gate_up_proj", "down_proj"}
    assert names >= wanted, f"layer 0 streams {sorted(names)}; wanted among them {sorted(wanted)}"
    assert_trains_alike(streamed, resident, net.offload_stream)


@pytest.mark.gpu
def test_moe_16_bit_expert_copies_train_as_the_nf4_experts_on_the_gpu(tmp_path, monkeypatch):
    """A plan with room keeps 16-bit copies of NF4 experts (engine.memory.weights.keep_dense, Plan.dense_experts),
    which the grouped path then multiplies by: three QLoRA steps give the losses and LoRA gradients of the same
    model dequantizing its experts every pass."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from test_offload import _forced

    from engine.models import loading
    from engine.spec.jobspec import JobSpec

    folder = _three_layers(tmp_path / "model")
    ids = torch.randint(3, 96, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    job = JobSpec(model=str(folder), data="-", method="qlora", max_seq_length=64, batch_size=2, lora_r=8, lora_alpha=16)
    roomy = plan(Arch.from_config(json.loads((folder / "config.json").read_text())), "qlora", 64, 2, 80.0)
    runs = []
    for dense in (0, 3):
        forced = dataclasses.replace(roomy, dense_layers=3, dense_experts=dense)
        monkeypatch.setattr(loading, "plan_memory", _forced(forced))
        net, _ = loading.load_for_training(job, Placement("cuda", "bf16", "test"), log=lambda m: None)
        copies = sum(len(getattr(m, "dense_experts", {})) for m in net.modules())
        assert copies == 2 * dense, f"{copies} 16-bit expert copies with dense_experts={dense}; wanted {2 * dense}"
        runs.append(three_sgd_steps(net, ids))
        del net
    assert_trains_alike(runs[1], runs[0], None)


def gpu_runs(folder, method: str, ids, monkeypatch):
    """The app's own loading (engine.models.loading.load_for_training) of the tiny MoE model `folder` on the GPU for
    `method`, resident and with every layer's weights streamed, each trained three bf16 SGD steps on `ids`: (the
    streamed net, its log, its (losses, gradients), the resident run's)."""
    from test_offload import _forced

    from engine.models import loading
    from engine.spec.jobspec import JobSpec

    rows = ids.shape[0]
    job = JobSpec(
        model=str(folder), data="-", method=method, max_seq_length=64, batch_size=rows, lora_r=8, lora_alpha=16
    )

    def run(plan_):
        monkeypatch.setattr(loading, "plan_memory", _forced(plan_))
        monkeypatch.setenv("TUNESMITH_VRAM_GIB", "0.05")  # every layer recomputes in both runs
        logs = []
        net, _ = loading.load_for_training(job, Placement("cuda", "bf16", "test"), log=logs.append)
        log = "\n".join(logs)
        blocks = sum(isinstance(m, moe.FastMoEBlock) for m in net.modules())
        assert blocks == 3, f"{blocks} of 3 MoE blocks on the grouped path (streamed: {bool(plan_)}); log:\n{log}"
        return net, three_sgd_steps(net, ids), log

    streaming = dataclasses.replace(_streaming_plan(folder, (0, 1, 2), method), offload_activations=True)
    _, resident, _ = run(None)
    net, streamed, log = run(streaming)
    return net, log, streamed, resident


def assert_trains_alike(streamed, resident, stream):
    """Two (losses, gradients) of three bf16 steps agree (losses within 1e-3, gradients 2e-2), and `stream`'s side
    stream (unless None) copied in the last step. GPU runs are rare: each check says what it saw."""
    (losses, grads), (plain_losses, plain_grads) = streamed, resident
    for step in range(3):
        one_run_only = sorted(grads[step].keys() ^ plain_grads[step].keys())
        assert not one_run_only, f"step {step}: adapters in one run only: {one_run_only}"
    torch.testing.assert_close(
        torch.tensor(losses),
        torch.tensor(plain_losses),
        rtol=1e-3,
        atol=0,
        msg=_saying(f"losses streamed {losses}, resident {plain_losses}"),
    )
    for step in range(3):
        for name, ref in plain_grads[step].items():
            torch.testing.assert_close(
                grads[step][name], ref, rtol=2e-2, atol=1e-5, msg=_saying(f"step {step}, gradient of {name}")
            )
    if stream is not None:
        copy_ms, _, moved_gb = stream.step_summary()
        assert moved_gb > 0 and copy_ms > 0, f"the last step's side stream copied {moved_gb} GB in {copy_ms} ms"
