"""engine.memory: full fine-tuning's optimizer states planned as the run's optimizer holds them (issue 24). torch's
AdamW makes its two states in the weight's own dtype (bf16 on one GPU: 4 bytes a weight; fp32 shards under fp16's
FSDP2 mixed precision: 8); bitsandbytes' 8-bit AdamW two bytes whatever the weight's dtype."""

import pytest
import torch
from test_memory import LLAMA_31_8B

from engine.memory.estimate import GIB, Arch
from engine.memory.verdict import parts, plan_for
from engine.spec.jobspec import JobSpec


def quiet(_msg):
    pass


def held_state_bytes_a_weight(folder, dtype) -> float:
    """Optimizer-state bytes a trained weight holds after one step of a full fine-tune of the model at `folder` in
    `dtype`, set up by the run's own prepare_for_training and make_optimizer (optimizer: adamw), on the CPU."""
    from transformers import AutoModelForCausalLM

    from engine.models.loading import prepare_for_training
    from engine.training.steps import make_optimizer

    spec = JobSpec(model=str(folder), data="-", method="full", optimizer="adamw")
    model = prepare_for_training(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), spec, quiet)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(spec, trained, "cpu", quiet)
    ids = torch.arange(2, 18).reshape(2, 8)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    states = sum(t.nbytes for state in opt.state.values() for k, t in state.items() if k != "step")
    return states / sum(p.numel() for p in trained)


def test_full_fine_tuning_with_torch_adamw_plans_the_states_a_bf16_run_holds(tiny_llama):
    """A bf16 full fine-tune with optimizer adamw (torch's AdamW, make_optimizer): a tiny Llama's states are 4 bytes
    a weight after one step, two bf16 values. The plan of Llama-3.1-8B's shape on one GPU in bf16 (a budget with room
    for all of it) counts each trained weight's bf16 gradient, the estimate's 2 more bytes (kept until a calibration
    separates them, bench/README.md "Full fine-tuning under a budget") and those states. It counted fp32 AdamW's 8
    before: 4 bytes a weight (30 GiB) over."""
    per_weight = held_state_bytes_a_weight(tiny_llama, torch.bfloat16)
    assert per_weight == 4
    arch = Arch.from_config(LLAMA_31_8B)
    spec = JobSpec(model="m", data="-", method="full", optimizer="adamw", max_seq_length=512)
    plan = plan_for(arch, spec, 300, None, "bf16")
    assert not (plan.grads_released or plan.optimizer_in_host)
    assert parts(arch, spec, plan)["trainable"] == pytest.approx(arch.params * (2 + 2 + per_weight) / GIB, abs=1e-3)


def test_full_fine_tunings_fp32_weights_hold_fp32_states(tiny_llama):
    """Where the trained weights are fp32 (an fp32 CPU run; FSDP2's fp32 shards under fp16), torch's AdamW holds 8
    bytes a weight: the figure the estimate keeps for sharded fp16 runs (master_fp32)."""
    from engine.memory.estimate import estimate

    assert held_state_bytes_a_weight(tiny_llama, torch.float32) == 8
    arch = Arch.from_config(LLAMA_31_8B)
    one = estimate(arch, "full", 512, 1, optimizer="adamw", shards=2, master_fp32=True).parts_gib["trainable"]
    bf16 = estimate(arch, "full", 512, 1, optimizer="adamw", shards=2).parts_gib["trainable"]
    # per GPU: half of each weight's fp32 gradient (2 bytes more than bf16's) and 4 bytes more of states
    assert one - bf16 == pytest.approx(arch.params * (2 + 4) / 2 / GIB, abs=2e-3)


def test_a_cpu_full_fine_tune_plans_the_same_ram_with_adamw_as_with_auto():
    """On the CPU both `auto` and `adamw` make torch's AdamW (engine.training.steps.make_optimizer), whose fp32 states
    the CPU's RAM figure counts (the 218M Qwen3 measured in tests/test_memory.py). `adamw` planned more before: the
    GPU estimate's fp32 AdamW states, which the CPU's fp32 doubled (12 bytes a weight over; 6.77 GiB against 4.33
    here)."""
    config = dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=64, vocab_size=65536,
                  tie_word_embeddings=True)  # fmt: skip
    spec = JobSpec(model="m", data="-", method="full", max_seq_length=256, batch_size=1)
    for dtype in ("fp32", "bf16"):
        auto = plan_for(Arch.from_config(config), spec, None, 64, dtype).peak_ram_gib
        assert plan_for(Arch.from_config(config), spec.replace(optimizer="adamw"), None, 64, dtype).peak_ram_gib == auto
