"""Full fine-tuning: every weight trains (with bitsandbytes' paged 8-bit AdamW, unpaged on a CPU), the exported
model/ folder loads back in plain transformers, and a GPU picks the paged optimizer by itself."""

import pytest
import torch
from conftest import IDENTITY_QUESTIONS

from engine import api
from engine.core.runlog import RunLog, read_metrics
from engine.training.dispatch import train
from engine.training.steps import make_optimizer


def test_full_changes_every_weight_and_the_export_loads(tiny_llama, identity_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(identity_file),
        method="full",
        optimizer="paged_adamw_8bit",
        max_steps=4,
        learning_rate=1e-3,
        batch_size=2,
        device="cpu",
        seed=0,
    )
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, print)
    assert len(read_metrics(tmp_path)) == 4
    before = load_file(tiny_llama / "model.safetensors")
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert set(after) == set(before)
    unchanged = [name for name in before if torch.equal(before[name].float(), after[name].float())]
    assert unchanged == []

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": IDENTITY_QUESTIONS[0]}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_cancelled_full_fine_tune_chats_and_exports_from_its_checkpoint(tiny_llama, identity_file, tmp_path):
    """Its checkpoint is the whole model beside the optimizer's state: chat and export took it for a LoRA adapter
    ("has no adapter_model.safetensors") and the merge read optimizer.safetensors as weights."""
    import shutil

    from safetensors.torch import load_file

    spec = api.JobSpec(model=str(tiny_llama), data=str(identity_file), method="full", max_steps=2, device="cpu", seed=0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text(spec.to_yaml())
    train(spec, run, RunLog(run), False, lambda: False, print)
    shutil.rmtree(run / "model")  # as a run cancelled after its checkpoint
    (ckpt,) = (run / "checkpoints").iterdir()
    assert (ckpt / "optimizer.safetensors").is_file()

    assert api.Chat(str(run)).reply([{"role": "user", "content": IDENTITY_QUESTIONS[0]}], max_new_tokens=3)
    res = api.export(str(run), "merged16", tmp_path / "merged", log=print)
    merged, trained = load_file(res.path / "model.safetensors"), load_file(ckpt / "model.safetensors")
    assert set(merged) == set(trained)
    assert all(torch.equal(merged[k], trained[k].to(merged[k].dtype)) for k in trained)


@pytest.mark.parametrize(
    "method, device, chosen",
    [("full", "cuda", "PagedAdamW8bit"), ("lora", "cuda", "AdamW8bit"), ("full", "cpu", "AdamW")],
)
def test_full_auto_optimizer_is_paged_8bit_on_a_gpu(method, device, chosen):
    spec = api.JobSpec(model="m", data="d", method=method)
    opt = make_optimizer(spec, [torch.nn.Parameter(torch.zeros(8))], device, print)
    assert type(opt).__name__ == chosen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_adamw_8bit_without_its_syncs_updates_exactly_as_bitsandbytes():
    import bitsandbytes as bnb

    from engine.training.steps import adamw_8bit

    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 4096), (4096, 16), (16, 14336), (1024, 16), (300,)]  # LoRA A/B shapes, and one odd size
    start = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    finals = []
    for kind in (bnb.optim.AdamW8bit, adamw_8bit()):
        params = [torch.nn.Parameter(t.clone().cuda()) for t in start]
        opt = kind(params, lr=1e-2, weight_decay=0.01)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.cuda()
            opt.step()
            opt.zero_grad(set_to_none=True)
        finals.append([p.detach().cpu() for p in params])
    assert not torch.equal(finals[1][0], start[0])  # it trained
    for ours, theirs in zip(finals[1], finals[0], strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_on_the_gpu_trains_every_weight_with_paged_adamw_8bit(tiny_llama, identity_file, tmp_path):
    from safetensors.torch import load_file

    lines = []
    spec = api.JobSpec(
        model=str(tiny_llama), data=str(identity_file), method="full", max_steps=4, learning_rate=1e-2, seed=0
    )
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, lines.append)
    assert "device cuda" in "\n".join(lines) and "optimizer: paged_adamw_8bit" in "\n".join(lines)
    before, after = load_file(tiny_llama / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert [name for name in before if torch.equal(before[name].float(), after[name].float())] == []


# engine.memory.grad_release: the weights updated in the backward, for budgets where even paged optimizer states do not
# fit


def _tiny_causal_lm(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_full_released_gradients_update_as_a_step_after_the_backward(tiny_llama):
    from engine.memory.grad_release import StepInBackward

    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))

    def adamw(groups):
        return torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01, foreach=False)

    plain, released = _tiny_causal_lm(tiny_llama), _tiny_causal_lm(tiny_llama)
    opt = adamw(list(plain.parameters()))
    stepper = StepInBackward(list(released.parameters()), adamw, 1e-3, None)
    norms = []
    for _ in range(3):
        plain(input_ids=ids, labels=ids).loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(plain.parameters(), float("inf"))))
        opt.step()
        opt.zero_grad(set_to_none=True)
        released(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is None for p in released.parameters())  # each freed in the backward, after its update
        stepper.step()
        assert stepper.take_grad_norm() == pytest.approx(norms[-1], rel=1e-5)  # the whole model's norm
    for (name, a), b in zip(plain.named_parameters(), released.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(released.lm_head.weight, _tiny_causal_lm(tiny_llama).lm_head.weight)

    # a checkpoint's state dict resumes every weight's optimizer where it was
    resumed = _tiny_causal_lm(tiny_llama)
    again = StepInBackward(list(resumed.parameters()), adamw, 1e-3, None)
    again.load_state_dict(stepper.state_dict())
    for p, q in zip(released.parameters(), resumed.parameters(), strict=True):
        theirs, ours = stepper.inner[p].state[p], again.inner[q].state[q]
        assert set(ours) == {"step", "exp_avg", "exp_avg_sq"} and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_full_released_gradients_clip_each_weight_to_the_max_norm(tiny_llama):
    from engine.memory.grad_release import StepInBackward

    model = _tiny_causal_lm(tiny_llama)
    seen = {}

    def record(groups):
        class Record(torch.optim.SGD):
            def step(self, closure=None):
                p = self.param_groups[0]["params"][0]
                seen[p] = float(p.grad.norm())

        return Record(groups, lr=0.0)

    StepInBackward(list(model.parameters()), record, 0.0, 1e-3)
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(seen) == len(list(model.parameters()))
    assert max(seen.values()) <= 1e-3 * (1 + 1e-4) and min(seen.values()) > 0


def test_full_training_loop_with_released_gradients_equals_the_plain_loop(
    tiny_llama, identity_file, tmp_path, monkeypatch
):
    """engine.training.sft under a plan that releases gradients (forced here; the planner picks it only on a GPU
    budget): the same weights as the plain loop when nothing is clipped, the whole model's gradient norm in the
    metrics."""
    import dataclasses

    from safetensors.torch import load_file

    from engine.models import loading

    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(identity_file),
        method="full",
        optimizer="paged_adamw_8bit",
        max_steps=3,
        learning_rate=1e-3,
        batch_size=2,
        max_grad_norm=0,
        device="cpu",
        seed=0,
    )
    plain_memory = loading.plan_memory

    def released_memory(spec, cfg, placement, tokens=None):
        return dataclasses.replace(plain_memory(spec, cfg, placement, tokens), grads_released=True)

    out = {}
    for name, memory in (("plain", plain_memory), ("released", released_memory)):
        monkeypatch.setattr(loading, "plan_memory", memory)
        (tmp_path / name).mkdir()
        lines = []
        train(spec, tmp_path / name, RunLog(tmp_path / name), False, lambda: False, lines.append)
        log = "\n".join(lines)
        assert ("updated in the backward" in log) == (name == "released"), log
        out[name] = (load_file(tmp_path / name / "model" / "model.safetensors"), read_metrics(tmp_path / name))
    (plain, plain_metrics), (released, released_metrics) = out["plain"], out["released"]
    for key in plain:
        torch.testing.assert_close(released[key].float(), plain[key].float(), rtol=1e-4, atol=1e-6, msg=key)
    for a, b in zip(plain_metrics, released_metrics, strict=True):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4) and b["grad_norm"] > 0


GPU_FP16 = ("needs bf16", "单块 GPU 上的全量微调需要 bf16", "Полному дообучению на одной GPU нужен bf16")
CPU_FP16 = ("cannot train fp16 weights", "全量微调无法训练 fp16 权重", "Полное дообучение не может обучать веса в fp16")


@pytest.mark.parametrize(
    "method, device, dtype, refused",
    [("full", "cuda", "fp16", GPU_FP16), ("full", "cuda", "bf16", None), ("full", "cpu", "fp16", CPU_FP16),
     ("full", "cpu", "fp32", None), ("full", "meta", "fp32", None), ("lora", "cuda", "fp16", None),
     ("qlora", "cuda", "fp16", None), ("lora", "cpu", "fp16", None)],
)  # fmt: skip
def test_full_fine_tuning_in_fp16_in_one_process_is_refused_before_loading(method, device, dtype, refused, tmp_path):
    """fp16 weights cannot be trained by torch's loss scaler (it will not unscale fp16 gradients) and AdamW: the run
    says so before it resolves the model (a path that does not exist shows nothing was loaded first), on the CPU too
    (an fp16 run computes there as on a T4; it trained fp16 weights unscaled, and its loss was NaN from the second
    step). A sharded run loads fp32 master shards into host RAM (rank 0, "cpu") or builds them empty ("meta"), so it is
    not refused; LoRA and QLoRA train fp32 adapters on fp16 bases."""
    from engine.core.errors import UserError
    from engine.core.hardware import Placement
    from engine.models.loading import full_fp16_refusal, load_for_training
    from ui.i18n import message

    spec = api.JobSpec(model=str(tmp_path / "no-such-model"), data="unused.jsonl", method=method)
    placement = Placement(device, dtype, "as the test asks")
    if refused is None:
        assert full_fp16_refusal(spec, placement) is None
        return
    english, chinese, russian = refused
    with pytest.raises(UserError, match=english) as err:
        load_for_training(spec, placement)
    assert "LoRA" in str(err.value)
    assert message(str(err.value), "zh").startswith(chinese)
    assert message(str(err.value), "ru").startswith(russian)


def test_eight_bit_adamw_ignores_the_overrides_another_trainer_left_in_bitsandbytes():
    """transformers' Trainer registers its embeddings for 32-bit states in bitsandbytes' process-wide manager, which
    keys them by (group, index) once its optimizer steps; the engine's 8-bit AdamW made later in the same process
    (the notebook API, then a run) keeps 8-bit states for its own parameter at that index."""
    import bitsandbytes as bnb

    from engine.training.steps import make_optimizer

    mng = bnb.optim.GlobalOptimManager.get_instance()
    saved = dict(vars(mng))
    try:
        embedding = torch.nn.Embedding(64, 64)
        mng.register_module_override(embedding, "weight", {"optim_bits": 32})
        trainers = bnb.optim.PagedAdamW8bit(embedding.parameters())
        embedding.weight.grad = torch.randn_like(embedding.weight)
        trainers.step()
        assert trainers.state[embedding.weight]["state1"].dtype == torch.float32  # the override is in force there

        weight = torch.nn.Parameter(torch.randn(64, 128))
        for name in ("paged_adamw_8bit", "adamw_8bit"):
            spec = api.JobSpec(model="m", data="d", method="full", optimizer=name, device="cpu")
            opt = make_optimizer(spec, [weight], "cpu", lambda m: None)
            weight.grad = torch.randn_like(weight)
            opt.step()
            assert opt.state[weight]["state1"].dtype == torch.uint8, name
    finally:
        for key in list(vars(mng)):
            delattr(mng, key)
        vars(mng).update(saved)


def test_a_checkpoint_resumes_under_a_plan_that_updates_in_the_backward_and_back(
    tiny_llama, identity_file, tmp_path, monkeypatch
):
    """Out of GPU memory, a run is told to resume under a lower budget (TUNESMITH_VRAM_GIB), where full fine-tuning's
    plan may update each weight in the backward (one optimizer per weight, engine.memory.grad_release), and a higher
    budget goes back to one optimizer: each checkpoint's optimizer state resumes in the other (it failed with
    "KeyError: 'outer'" and the reverse), and the run ends with the uninterrupted run's weights (a resumed run that
    updated in the backward also kept the peak learning rate, whatever its schedule said)."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    from engine.models import loading

    spec = api.JobSpec(model=str(tiny_llama), data=str(identity_file), method="full", optimizer="paged_adamw_8bit",
                       max_steps=6, learning_rate=1e-3, batch_size=2, max_grad_norm=0, device="cpu", seed=0,
                       save_every=1, keep_checkpoints=10)  # fmt: skip
    plain_memory = loading.plan_memory

    def released_memory(spec, cfg, placement, tokens=None):
        return dataclasses.replace(plain_memory(spec, cfg, placement, tokens), grads_released=True)

    def run(folder, memory, resume, cut=None):
        if cut is not None:  # as if the run stopped after step `cut`
            shutil.rmtree(folder / "model")
            for later in (folder / "checkpoints").glob("step-*"):
                if int(later.name[5:]) > cut:
                    shutil.rmtree(later)
        monkeypatch.setattr(loading, "plan_memory", memory)
        lines = []
        train(spec, folder, RunLog(folder), resume, lambda: False, lines.append)
        return load_file(folder / "model" / "model.safetensors"), "\n".join(lines)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    want, _ = run(whole, plain_memory, False)
    run(cut, plain_memory, False)
    _, log = run(cut, released_memory, True, cut=2)  # a lower budget
    assert "resume: from step-000002" in log and "updated in the backward" in log
    got, log = run(cut, plain_memory, True, cut=4)  # and back
    assert "resume: from step-000004" in log and "updated in the backward" not in log
    for key in want:
        torch.testing.assert_close(got[key].float(), want[key].float(), rtol=1e-4, atol=1e-6, msg=key)
