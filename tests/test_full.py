"""Full fine-tuning: every weight trains (with bitsandbytes' paged 8-bit AdamW, unpaged on a CPU), the exported
model/ folder loads back in plain transformers, and a GPU picks the paged optimizer by itself."""

import pytest
import torch
from conftest import IDENTITY_QUESTIONS

from engine import api
from engine.runlog import RunLog, read_metrics
from engine.train import make_optimizer, train


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

    from engine.train import adamw_8bit

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
