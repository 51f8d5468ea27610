"""engine.memory: continued pretraining's trained embed_tokens / lm_head copies (train_embeddings) counted as the run
holds them: fp32 master weights under fp16 (the T4's path), the base's 16 bits otherwise, one copy for a tied head,
each with its gradient and optimizer states (issue 24: every parameter counted)."""

import pytest
import torch

from engine.core.errors import UserError
from engine.memory.estimate import GIB, Arch, trained_embedding_bytes
from engine.memory.verdict import parts, plan_for
from engine.spec.jobspec import JobSpec


def held_by_the_run(folder, spec, dtype) -> int:
    """Bytes the run's trained embedding copies hold after one optimizer step: the model loaded in `dtype`, LoRA and
    the embedding copies added (fp16: lifted to fp32 master weights) and AdamW made by the run's own functions; each
    parameter counted once (a tied head is the embedding's), with its gradient and its optimizer states."""
    from transformers import AutoModelForCausalLM

    from engine.models.loading import add_lora
    from engine.training import pretrain
    from engine.training.steps import make_optimizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = pretrain.add_embedding_training(add_lora(model, spec, log=lambda m: None), log=lambda m: None)
    opt = make_optimizer(spec, pretrain.param_groups(model, spec), "cpu", lambda m: None)
    ids = torch.arange(2, 18).reshape(2, 8)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.float16):  # the run's fp16 path
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    trained = [p for name, p in model.named_parameters() if p.requires_grad and pretrain.is_embedding(name)]
    assert trained
    states = sum(t.nbytes for p in trained for k, t in opt.state[p].items() if k != "step")
    return sum(p.nbytes + p.grad.nbytes for p in trained) + states


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_the_plan_counts_the_trained_embeddings_the_run_holds(arch, dtype, request):
    """The plan's figure for the trained embeddings is the bytes the run's copies, their gradients and AdamW's states
    take on a tiny Llama (untied: embed_tokens and lm_head) and Qwen3 (tied: one copy), in fp16 (fp32 master weights)
    and bf16. The estimate counted none of them before."""
    import json

    folder = request.getfixturevalue(f"tiny_{arch}")
    arch_ = Arch.from_config(json.loads((folder / "config.json").read_text()))
    spec = JobSpec(
        model=str(folder), data="-", objective="pretrain", train_embeddings=True, optimizer="adamw", lora_r=8
    )
    plan = plan_for(arch_, spec, None, None, dtype, on_gpu=False)
    planned = trained_embedding_bytes(arch_, plan.trained_embeddings, "adamw")
    torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    assert planned == held_by_the_run(folder, spec, torch_dtype)
    assert plan.trained_embeddings == (4 if dtype == "fp16" else 2)


def test_the_estimate_adds_the_trained_embeddings_to_its_peak():
    """Llama-3.1-8B's shape, QLoRA continued pretraining in fp16 (a T4's dtype) on an 80 GiB budget: the plan's parts
    carry the embeddings' term (fp32 copies of both tables, 8-bit states: 10 bytes a value, 9.8 GiB), and its peak is
    that much (and the allocator's share of it) over the same run's without them; none where train_embeddings is off."""
    from test_memory import LLAMA_31_8B

    arch = Arch.from_config(LLAMA_31_8B)
    spec = JobSpec(model="m", data="-", method="qlora", objective="pretrain", max_seq_length=512, batch_size=1)
    without = plan_for(arch, spec, 80, None, "fp16")
    trained = plan_for(arch, spec.replace(train_embeddings=True), 80, None, "fp16")
    term = parts(arch, spec.replace(train_embeddings=True), trained)["embeddings"]
    assert term == round(2 * 128256 * 4096 * (4 + 4 + 2) / GIB, 3) == 9.785
    assert parts(arch, spec, without)["embeddings"] == 0
    assert trained.peak_vram_gib == pytest.approx(without.peak_vram_gib + term * 1.04, abs=0.3)


def test_the_estimate_command_plans_trained_embeddings_on_a_t4(capsys):
    """`python -m engine estimate --train-embeddings` on Kaggle's T4s (fp16) plans what a job with train_embeddings
    holds: Qwen3-0.6B's one trained copy (tied) of its 151936 x 1024 table in fp32, with its gradient and 8-bit
    states, 1.45 GiB, which the same estimate without the flag leaves out (the command had no way to say it)."""
    import json

    from engine.__main__ import main
    from engine.api.models import model_arch

    argv = ["estimate", "--model", "Qwen/Qwen3-0.6B", "--method", "lora", "--seq", "512", "--machine", "kaggle-2xt4"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--train-embeddings"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["dtype"] == "fp16" and plain["peak_parts_gib"]["embeddings"] == 0
    arch = model_arch("Qwen/Qwen3-0.6B")  # tied: one trained copy, fp32, with its gradient and 8-bit states
    term = trained["peak_parts_gib"]["embeddings"]
    assert term == round(trained_embedding_bytes(arch, 4) / GIB, 3) == round(arch.vocab * arch.hidden * 10 / GIB, 3)
    assert trained["peak_vram_gib"] > plain["peak_vram_gib"] + term


def test_a_cpu_runs_planned_optimizer_states_are_the_ones_its_auto_optimizer_holds(tiny_llama):
    """`optimizer: auto` on the CPU makes torch's AdamW (engine.training.steps.make_optimizer): the plan counts its
    states (two fp32 values per adapter weight, two per trained embedding value), the bytes the run's optimizer holds
    after one step of continued pretraining with trained embeddings in fp32 (the CPU's dtype). The plan counted
    8-bit states before, a quarter of the adapters'."""
    import json

    from transformers import AutoModelForCausalLM

    from engine.memory.estimate import OPTIMIZER_BYTES
    from engine.memory.verdict import estimate_kw
    from engine.models.loading import add_lora
    from engine.training import pretrain
    from engine.training.steps import make_optimizer

    arch = Arch.from_config(json.loads((tiny_llama / "config.json").read_text()))
    spec = JobSpec(model=str(tiny_llama), data="-", objective="pretrain", train_embeddings=True, lora_r=8)
    assert spec.optimizer == "auto"
    plan = plan_for(arch, spec, None, None, "fp32", on_gpu=False)
    kw = estimate_kw(spec, on_gpu=False)
    adapters = arch.lora_params(spec.lora_r, spec.target_modules, spec.lora_experts) * OPTIMIZER_BYTES[kw["optimizer"]]
    planned = adapters + trained_embedding_bytes(arch, plan.trained_embeddings, kw["optimizer"], states=True)

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = pretrain.add_embedding_training(add_lora(model, spec, log=lambda m: None), log=lambda m: None)
    opt = make_optimizer(spec, pretrain.param_groups(model, spec), "cpu", lambda m: None)
    ids = torch.arange(2, 18).reshape(2, 8)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    held = sum(t.nbytes for state in opt.state.values() for k, t in state.items() if k != "step")
    assert planned == held


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_the_notebook_apis_plan_counts_the_embeddings_get_peft_model_trains(arch, dtype, request):
    """The notebook API plans in from_pretrained, before get_peft_model says that embed_tokens and lm_head are trained
    (Unsloth's continued-pretraining notebooks list them in target_modules). The model's plan afterwards counts the
    bytes its copies, their gradients and AdamW's states hold after one step (fp16: fp32 master weights; the CPU's
    fp32; bf16), with torch's AdamW, which both the plan (optimizer auto on the CPU) and transformers' Trainer
    (adamw_torch) make here. Before, the plan stayed from_pretrained's and counted none of them."""
    import json

    from engine.memory.verdict import estimate_kw
    from engine.training import pretrain
    from tunesmith import FastLanguageModel

    folder = request.getfixturevalue(f"tiny_{arch}")
    arch_ = Arch.from_config(json.loads((folder / "config.json").read_text()))
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model, _ = FastLanguageModel.from_pretrained(str(folder), max_seq_length=64, load_in_4bit=False, dtype=torch_dtype)
    targets = ["q_proj", "v_proj", "embed_tokens", "lm_head"]
    model = FastLanguageModel.get_peft_model(model, r=8, target_modules=targets)
    spec, plan = model.tunesmith_spec, model.memory_plan
    planned = trained_embedding_bytes(arch_, plan.trained_embeddings, estimate_kw(spec, on_gpu=False)["optimizer"])

    trained = [p for name, p in model.named_parameters() if p.requires_grad and pretrain.is_embedding(name)]
    opt = torch.optim.AdamW(trained, lr=1e-4)
    ids = torch.arange(2, 18).reshape(2, 8)
    with torch.autocast("cpu", dtype=torch_dtype, enabled=dtype == "fp16"):  # accelerate's fp16 path on a GPU
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    states = sum(t.nbytes for p in trained for k, t in opt.state[p].items() if k != "step")
    assert planned == sum(p.nbytes + p.grad.nbytes for p in trained) + states
    assert plan.trained_embeddings == (2 if dtype == "bf16" else 4)


def test_a_notebook_plan_that_streams_other_layers_once_the_embeddings_train_is_refused(tiny_llama, monkeypatch):
    """get_peft_model makes the plan again for the embeddings it trains; which layers stream from host RAM was fixed
    when from_pretrained loaded the weights. Llama-3.1-8B's shape, 16-bit LoRA on a GPU planned at 24 GiB: nothing
    streams with or without the embeddings, and the plan made again counts them; at 14 GiB the layers streamed
    differ once the embeddings (6 GiB more) are counted, and the call is refused with what to change. (The plans are
    carried by a tiny model loaded on the CPU, which the plan made again leaves where it is.)"""
    from test_memory import LLAMA_31_8B
    from transformers import AutoModelForCausalLM

    from engine.core.hardware import Placement
    from engine.models.loading import plan_memory
    from tunesmith.memory_plan import with_embeddings

    monkeypatch.setenv("TUNESMITH_RAM_GIB", "512")
    gpu = Placement("cuda", "bf16", "test")
    spec = JobSpec(model="m", data="-", method="lora", max_seq_length=512, lora_r=8)
    trained = spec.replace(train_embeddings=True)
    for budget, streams_as_loaded in (("24", True), ("14", False)):
        monkeypatch.setenv("TUNESMITH_VRAM_GIB", budget)
        loaded = plan_memory(spec, LLAMA_31_8B, gpu)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        model.memory_plan, model.tunesmith_planned = loaded, (LLAMA_31_8B, gpu)
        if streams_as_loaded:
            plan = with_embeddings(model, trained, "get_peft_model")
            assert model.memory_plan is plan and plan.trained_embeddings == 2 and not plan.streamed
            assert loaded.host_embedding and not plan.host_embedding  # a trained input embedding stays on the GPU
            assert plan.peak_vram_gib > loaded.peak_vram_gib
            assert with_embeddings(model, spec, "get_peft_model") is plan  # no embeddings trained: the model's plan
            continue
        with pytest.raises(UserError, match=r"get_peft_model: with embed_tokens and lm_head trained.*streams \d+"):
            with_embeddings(model, trained, "get_peft_model")
        assert model.memory_plan is loaded
