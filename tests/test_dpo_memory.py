"""The memory plan of a DPO, ORPO or GRPO run counts what the run holds (issue 24): DPO's full fine-tuning holds a
second, frozen copy of the model as its reference (and GRPO's with a KL term), and TRL's trainers run a pair's chosen
and rejected replies as two rows of one forward."""

import json

import pytest
import torch
from test_dpo import run_here, spec_for

from engine import api
from engine.core.hardware import Placement
from engine.memory.estimate import GIB, Arch
from engine.memory.verdict import plan_for
from engine.training.preference import _full_reference


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """Wide enough that a copy of its weights shows in a plan's parts (GiB to three decimals): 0.14 GiB in bf16."""
    from tiny import make_model

    path = tmp_path_factory.mktemp("models") / "wide"
    return make_model("llama", path, hidden_size=2048, intermediate_size=4096, num_attention_heads=16)


def test_a_dpo_full_fine_tune_plans_the_reference_model_its_run_loads(wide_llama):
    model = wide_llama
    spec = spec_for(model, "-", method="full")
    reference = _full_reference(spec, Placement("cpu", "bf16", "test"), print)  # what the run builds, in 16 bits
    held = sum(p.numel() * p.element_size() for p in reference.parameters())

    def plan(objective, method="full"):
        return api.estimate(str(model), method, seq=64, batch=1, vram_gib=80, ram_gib=64, objective=objective)

    dpo, sft = plan("dpo"), plan("sft")
    assert dpo["peak_parts_gib"]["reference"] == round(held / GIB, 3) > 0.1
    # the run's own plan (engine.models.loading.plan_memory asks plan_for) is the estimate's
    arch = Arch.from_config(json.loads((model / "config.json").read_text()))
    assert plan_for(arch, spec.replace(max_seq_length=64, batch_size=1), 80, 64).peak_vram_gib == dpo["peak_vram_gib"]
    assert dpo["peak_vram_gib"] == pytest.approx(sft["peak_vram_gib"] + held / GIB, abs=0.03)
    # with LoRA the reference is the base model with its adapter switched off: no second copy
    assert _full_reference(spec.replace(method="lora"), Placement("cpu", "bf16", "test"), print) is None
    assert "reference" not in plan("dpo", "lora")["peak_parts_gib"]
    assert "reference" not in plan("orpo")["peak_parts_gib"]


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_a_preference_plan_counts_the_sequences_its_forward_computes(tiny_llama, pairs_file, tmp_path, objective):
    rows = []

    def seen(module, args, out):  # the token ids of each forward that keeps activations for a backward
        if isinstance(module, torch.nn.Embedding) and torch.is_grad_enabled() and args:
            rows.append(args[0].shape[0])

    spec = spec_for(tiny_llama, pairs_file, objective=objective, max_steps=1, batch_size=2)
    hook = torch.nn.modules.module.register_module_forward_hook(seen)
    try:
        run_here(spec, tmp_path / "run")
    finally:
        hook.remove()
    assert rows and max(rows) == 4  # TRL's trainers: a batch of 2 pairs is 4 sequences (chosen, then rejected)
    per_example = max(rows) // spec.batch_size

    def plan(objective, batch):  # many tokens, so that the activations and the loss show in GiB to three decimals
        return api.estimate(str(tiny_llama), "lora", seq=512, batch=batch, vram_gib=80, ram_gib=64, objective=objective)

    pairs, sequences = plan(objective, 64), plan("sft", 64 * per_example)
    assert pairs["peak_parts_gib"] == sequences["peak_parts_gib"]
    assert pairs["peak_parts_gib"]["activations"] > plan("sft", 64)["peak_parts_gib"]["activations"]


def test_a_grpo_full_fine_tune_with_a_kl_term_plans_the_reference_model_trl_loads(wide_llama, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from engine.memory.verdict import verdict

    spec = api.JobSpec(model=str(wide_llama), data="-", objective="grpo", rewards=({"preset": "format"},),
                       method="full", grpo_beta=0.1, max_seq_length=64, batch_size=1)  # fmt: skip
    # the GRPOConfig engine.training.grpo gives TRL for a full fine-tune in bf16 (model_init_kwargs: the run's dtype)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        beta=spec.grpo_beta,
        per_device_train_batch_size=2,
        num_generations=2,
        model_init_kwargs=dict(dtype=torch.bfloat16),
        report_to=[],
        use_cpu=True,
    )
    model = AutoModelForCausalLM.from_pretrained(wide_llama, dtype=torch.bfloat16)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_list([{"prompt": "Who are you?"}] * 2),
                          processing_class=AutoTokenizer.from_pretrained(wide_llama))  # fmt: skip
    held = sum(p.numel() * p.element_size() for p in trainer.ref_model.parameters())
    arch = Arch.from_config(json.loads((wide_llama / "config.json").read_text()))
    assert verdict(arch, spec, 80, 64).parts_gib["reference"] == round(held / GIB, 3) > 0.1
    assert "reference" not in verdict(arch, spec.replace(grpo_beta=0.0), 80, 64).parts_gib  # TRL loads none
    assert "reference" not in verdict(arch, spec.replace(method="lora"), 80, 64).parts_gib  # the adapter switched off


def test_a_grpo_plan_counts_the_replies_its_loss_forward_computes(tiny_llama, tmp_path):
    from test_grpo import PROMPTS, one_step_spec

    from engine.core.runlog import RunLog
    from engine.memory.verdict import forward_shape, verdict
    from engine.training.dispatch import train

    shapes = []

    def seen(module, args, out):  # the token ids of each forward that keeps activations for a backward
        if isinstance(module, torch.nn.Embedding) and torch.is_grad_enabled() and args:
            shapes.append(tuple(args[0].shape))

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    spec = one_step_spec(tiny_llama, data, {"preset": "length", "max_chars": 10})
    hook = torch.nn.modules.module.register_module_forward_hook(seen)
    try:
        train(spec, tmp_path / "run", RunLog(tmp_path / "run"), False, lambda: False, print)
    finally:
        hook.remove()
    rows, length = max(shapes)
    # one forward of 2 prompts x 2 replies, each a prompt (under max_seq_length) and its reply (up to max_new_tokens)
    assert rows == spec.batch_size * spec.num_generations == 4 and length > spec.max_new_tokens
    assert forward_shape(spec) == (spec.max_seq_length + spec.max_new_tokens, rows)

    arch = Arch.from_config(json.loads((tiny_llama / "config.json").read_text()))
    grpo = spec.replace(method="lora", max_seq_length=256, max_new_tokens=256, batch_size=16, num_generations=4)
    sft = grpo.replace(objective="sft", rewards=(), max_seq_length=512, batch_size=64)
    planned = verdict(arch, grpo, 80, 64).parts_gib
    assert planned == verdict(arch, sft, 80, 64).parts_gib
    assert (
        planned["activations"]
        > verdict(arch, sft.replace(max_seq_length=256, batch_size=16), 80, 64).parts_gib["activations"]
    )
