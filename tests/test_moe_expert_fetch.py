"""Active-only expert fetch (engine.memory.expert_fetch): tiny Qwen3-MoE, gpt-oss and Mixtral models of three layers
and 16 experts (2 a token), every layer streamed through two slots, train exactly as the same model with every
weight resident, over micro-batches whose router picks few experts (only those are copied), more than half of them
after a prediction of few (all of them, after the router), and many tokens (the whole layer, prefetched); the expert
bytes copied per step follow. On the CPU the slots are CPU memory and the copies plain ones."""

import pytest
import torch
from test_moe_offload import _prepared, _saying, _three_layers
from test_patching_parity import lora_state

from engine.memory.expert_fetch import ACTIVE_SHARE, expected_share
from kernels import dispatch

EXPERTS, PER_TOKEN = 16, 2
# (rows, tokens) of the micro-batches: 3 tokens are expected to pick 23% of the experts, 5 tokens 49% (both wait
# for the router; 5 tokens' 10 picks may be more than half of 16: then all come), 2 x 12 tokens 96% (prefetched)
SHAPES = [(1, 3), (2, 12), (1, 5), (1, 2), (1, 5)]


def _many_experts(folder, arch: str):
    """A tiny `arch` model of three layers with 16 experts, 2 a token."""
    return _three_layers(folder, arch, EXPERTS)


def _micro_batches(shapes, vocab: int = 96) -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    batches = []
    for rows, tokens in shapes:
        ids = torch.randint(3, vocab, (rows, tokens), generator=gen)
        labels = ids.clone()
        labels[:, 0] = -100
        batches.append(dict(input_ids=ids, labels=labels))
    return batches


def _train(model, stream=None, shapes=SHAPES):
    """(losses, LoRA gradients, expert bytes copied) of one SGD step per micro-batch of `shapes`."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses, grads, copied = [], [], []
    for inputs in _micro_batches(shapes):
        before = stream.experts.bytes if stream is not None else 0
        with dispatch.force("triton"):
            loss = model(**inputs).loss
            loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in lora_state(model).items()})
        copied.append(stream.experts.bytes - before if stream is not None else 0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, grads, copied


def _expert_bytes(stream, layer: int) -> int:
    """One layer's streamed expert tensors, whole."""
    part = stream.experts.layers[layer]
    return sum(stream.weights[layer][pos][2].nbytes for pos in part.positions)


@pytest.mark.parametrize(
    "arch, method",
    [("qwen3_moe", "qlora"), ("gpt_oss", "qlora"), ("mixtral", "qlora"), ("qwen3_moe", "lora")],
)
def test_active_only_fetch_trains_as_the_resident_model(arch, method, tmp_path):
    """Micro-batches of 2 to 24 tokens (SHAPES): the same losses and LoRA gradients as the resident model, every kind
    of fetch seen, and the few-token steps copying a fraction of the experts' bytes."""
    folder = _many_experts(tmp_path / "model", arch)
    plain, _ = _prepared(folder, (), method)
    streamed, stream = _prepared(folder, (0, 1, 2), method)
    assert stream.experts.layers.keys() == {0, 1, 2} and stream.experts.share == ACTIVE_SHARE
    assert expected_share(5, PER_TOKEN, EXPERTS) <= ACTIVE_SHARE < expected_share(6, PER_TOKEN, EXPERTS)

    losses, grads, copied = _train(streamed, stream)
    plain_losses, plain_grads, _ = _train(plain)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-5, atol=1e-7)
    for step, ref in enumerate(plain_grads):
        assert grads[step].keys() == ref.keys() and any("experts" in name for name in ref)
        for name, value in ref.items():
            torch.testing.assert_close(grads[step][name], value, rtol=1e-5, atol=1e-7, msg=_saying(name))

    counts = stream.experts.counts
    assert counts["active"] > 0, counts  # few picked: only those copied
    assert counts["whole"] > 0, counts  # more than half picked after a prediction of few: all of them
    assert counts["prefetched"] > 0, counts  # many tokens: the ring prefetched whole layers
    whole = sum(_expert_bytes(stream, i) for i in range(3))
    # a step uses each layer twice (forward, backward): 3 and 2 tokens pick at most 6 and 4 of 16 experts
    assert 0 < copied[0] <= 2 * whole * 6 / 16 and 0 < copied[3] <= 2 * whole * 4 / 16
    assert copied[1] > max(copied[0], copied[3]) and max(copied) <= 2 * whole


def test_the_fallback_copies_every_expert_and_the_switch_turns_the_rule_off(tmp_path, monkeypatch):
    """Most experts picked after a prediction of few: the layer gets all of them, in their stored layout; an
    adapters-off pass (DPO's reference model) computes with the picks alone; TUNESMITH_ACTIVE_EXPERTS=0 keeps the
    whole-layer fetch (the same losses, more bytes copied), and the run log says which mode."""
    folder = _many_experts(tmp_path / "model", "qwen3_moe")
    streamed, stream = _prepared(folder, (0, 1, 2))
    fetch = stream.experts
    stream.use(0, "f", tokens=1)  # a one-token micro-batch: the experts wait for the router
    experts = fetch.layers[0].experts
    host = {name: h for module, name, h in stream.weights[0] if module is experts}
    assert fetch.deferring and experts.gate_up_proj_nf4.numel() == 0
    fetch.fetch(0, torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]))  # half of them: only those
    assert experts.active_experts.key == tuple(range(8)) and experts.gate_up_proj_nf4.numel() == 0
    packed, _, shape = experts.active_experts.stored["gate_up_proj"]  # experts 0-7: the first half of the bytes
    assert shape == (8, 64, 64) and torch.equal(packed, host["gate_up_proj_nf4"].reshape(-1)[: 8 * 64 * 64 // 2])
    fetch.fetch(0, torch.arange(EXPERTS).reshape(-1, 2)[:5])  # 10 of 16: all of them, where the layer keeps them
    assert experts.active_experts is None and torch.equal(experts.gate_up_proj_nf4, host["gate_up_proj_nf4"])
    assert dict(fetch.counts) == {"active": 1, "whole": 1}

    plain, _ = _prepared(folder, ())
    ids = torch.tensor([[5, 9, 17]])
    with torch.no_grad(), streamed.disable_adapter(), plain.disable_adapter(), dispatch.force("triton"):
        streamed.eval(), plain.eval()  # DPO's reference pass: the grouped path without adapters, picks alone
        torch.testing.assert_close(streamed(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    assert fetch.counts["active"] > 1 and fetch.counts["whole"] == 1

    logs = []
    _prepared(folder, (0, 1, 2), log=logs.append)
    assert any("only the experts their router picks in micro-batches of up to 5 tokens (2 of 16" in m for m in logs)
    monkeypatch.setenv("TUNESMITH_ACTIVE_EXPERTS", "0")
    logs.clear()
    model, off = _prepared(folder, (0, 1, 2), log=logs.append)
    assert "offload: streamed mixture-of-experts layers fetch the whole layer (TUNESMITH_ACTIVE_EXPERTS=0)" in logs
    few = [(1, 3), (1, 2)]
    losses_off, _, copied_off = _train(model, off, few)
    assert set(off.experts.counts) == {"prefetched"}
    monkeypatch.delenv("TUNESMITH_ACTIVE_EXPERTS")
    losses, _, copied = _train(*_prepared(folder, (0, 1, 2)), few)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses_off), rtol=1e-5, atol=1e-7)
    for step in range(len(few)):  # 3 and 2 tokens: at most 6 and 4 of the 16 experts, copied alone
        assert copied[step] < copied_off[step] / 2, (step, copied, copied_off)


def test_experts_run_through_peft_wrappers_get_every_expert(tmp_path):
    """16-bit experts whose adapters PEFT's wrappers must run themselves (dropout: FastMoEBlock does not take their
    factors) read the whole stack: their layer gets all of its experts whatever the router picked."""
    from peft.tuners.lora.layer import ParamWrapper

    folder = _many_experts(tmp_path / "model", "qwen3_moe")
    nets = [_prepared(folder, streamed, "lora") for streamed in ((0, 1, 2), ())]
    for net, _ in nets:
        for module in net.modules():
            if isinstance(module, ParamWrapper):
                module.lora_dropout["default"] = torch.nn.Dropout(0.1)  # eval: the identity, as a wrapper's own
        net.eval()
    (streamed, stream), (plain, _) = nets
    with torch.no_grad(), dispatch.force("triton"):
        ids = torch.tensor([[5, 9, 17]])
        torch.testing.assert_close(streamed(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    assert stream.experts.counts["whole"] == 3 and stream.experts.counts["active"] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_active_only_fetch_on_the_gpu_trains_as_the_resident_model(method, tmp_path, monkeypatch):
    """The app's own loading on the GPU, every layer streamed, a 3-token micro-batch (the picked experts alone, copied
    on the side stream after the router) against the resident model: the same losses and LoRA gradients over three
    bf16 steps. Each check says what it saw first."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from test_moe_offload import assert_trains_alike, gpu_runs

    folder = _many_experts(tmp_path / "model", "qwen3_moe")
    ids = torch.randint(3, 96, (1, 3), generator=torch.Generator().manual_seed(0)).cuda()
    net, log, streamed, resident = gpu_runs(folder, method, ids, monkeypatch)
    fetch = net.offload_stream.experts
    assert "fetch only the experts their router picks" in log, f"the streamed run's log:\n{log}"
    assert fetch.counts["active"] > 0, f"fetches {dict(fetch.counts)}; the streamed run's log:\n{log}"
    assert_trains_alike(streamed, resident, net.offload_stream)
