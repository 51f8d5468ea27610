"""Full fine-tuning sharded by FSDP2 computes through the fast path (engine.patching's kernels and fused loss, swapped
in before fully_shard, with every layer recomputed or none), and trains as one process through the same fast path
does and as plain transformers does. Two gloo processes on the CPU, launched by torchrun as a run on two GPUs is; the
kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest; TUNESMITH_KERNELS_ON_CPU=1 asks for them on
the CPU)."""

import pytest
import torch
from helpers import log_of, tiny_spec, wait_for
from safetensors.torch import load_file

from engine import api

STEPS = 2  # of 2 micro-batches of one example: 1 a process on two (the interpreter takes seconds per micro-batch)


def trained(model, data, gpus: int, fast: bool, recompute: bool, monkeypatch) -> dict:
    """Losses, final weights and log of a full fine-tune of `STEPS` steps of 2 examples, on `gpus` processes, every
    layer recomputed or none (without a GPU budget), through the fast path or plain transformers."""
    monkeypatch.setenv("TUNESMITH_KERNELS_ON_CPU", "1" if fast else "0")
    # one thread, as torchrun gives each rank: the interpreter's many tiny ops run 4x slower on two (measured)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = tiny_spec(
        model,
        data,
        method="full",
        max_steps=STEPS,
        batch_size=1,
        grad_accum=2 // gpus,
        max_seq_length=32,
        gpus=gpus,
        learning_rate=1e-3,
        save_every=0,
        gradient_checkpointing=recompute,
        fast_path=fast,
    )
    status = wait_for(api.start(spec))
    assert status.state == "done", log_of(status)
    return dict(
        loss=[m["loss"] for m in status.metrics],
        weights=load_file(next((status.run_dir / "model").glob("*.safetensors"))),
        log=log_of(status),
    )


def assert_close_training(got: dict, want: dict, atol: float, rtol: float) -> None:
    assert len(got["loss"]) == STEPS
    torch.testing.assert_close(torch.tensor(got["loss"]), torch.tensor(want["loss"]), atol=atol, rtol=rtol)
    assert got["weights"].keys() == want["weights"].keys()
    for name, value in want["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, atol=atol, rtol=rtol, msg=name)


def test_sharded_full_fine_tuning_takes_the_fast_path_and_trains_as_one_process(tiny_qwen3, identity_file, runs,
                                                                                 monkeypatch):  # fmt: skip
    """Qwen3: per-head q/k norms inside the attention, and a head tied to the embedding. Sharded with every layer
    recomputed (each layer gathered again for its recompute, in FSDP2's backward) and with none (the kernels' saved
    weights freed after the forward and gathered again for the backward); one process without recomputing (the
    same values, computed once)."""
    one = trained(tiny_qwen3, identity_file, 1, True, False, monkeypatch)
    assert "patching: fast path for qwen3" in one["log"]
    plain = trained(tiny_qwen3, identity_file, 1, False, False, monkeypatch)
    assert "patching:" not in plain["log"]
    for recompute in (True, False):
        two = trained(tiny_qwen3, identity_file, 2, True, recompute, monkeypatch)
        text = two["log"]
        assert "patching: fast path for qwen3" in text and "fused cross-entropy loss" in text
        assert "each rank computes through the fast path (" in text and "the fused cross-entropy loss)" in text
        assert "without CUDA graphs (FSDP2's collectives)" in text
        assert ("checkpointing: 2 of 2 layers recompute" in text) == recompute
        assert_close_training(two, one, atol=2e-5, rtol=1e-4)  # the same kernels; the sums in another order
        # transformers' ops against the kernels
        assert_close_training(two, plain, atol=1e-4, rtol=1e-4)


def test_a_sharded_plan_counts_the_fused_loss_as_one_gpus_does():
    """On two GPUs the loss is the fast path's chunked cross-entropy, as on one: each GPU's plan counts one chunk of
    logits (reused as their gradient) and the fp32 gradient of the hidden states, not every token's logits; without
    the fast path, every token's."""
    from engine.api.models import model_arch
    from engine.memory.estimate import COEF, GIB
    from engine.memory.verdict import parts, plan_for

    arch = model_arch("Qwen/Qwen3-4B")
    tokens = 4096
    two, one = (api.estimate("Qwen/Qwen3-4B", "full", tokens, 1, vram_gib=80, ram_gib=256, gpus=n) for n in (2, 1))
    chunk = two["plan"]["loss_chunk"]
    fused = (min(tokens, chunk) * arch.vocab * 2 + tokens * arch.hidden * 4) / GIB
    assert two["peak_parts_gib"]["loss"] == pytest.approx(fused, abs=0.001)
    assert one["peak_parts_gib"]["loss"] == two["peak_parts_gib"]["loss"]
    spec = api.JobSpec(model="Qwen/Qwen3-4B", data="-", method="full", max_seq_length=tokens, batch_size=1, gpus=2)
    assert plan_for(arch, spec, 80, 256).fused_loss
    plain = spec.replace(fast_path=False)
    plain_plan = plan_for(arch, plain, 80, 256)
    assert not plain_plan.fused_loss
    every_token = tokens * arch.vocab * COEF["loss_v"] / GIB
    assert parts(arch, plain, plain_plan)["loss"] == pytest.approx(every_token, abs=0.001)
