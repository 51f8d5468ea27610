"""Continued pretraining on raw text: every token is learned, long texts are cut rather than truncated, and training
lowers the loss on the text, with the embeddings and lm_head trained at their own learning rate."""

import math

import pytest
import torch
from tiny import CORPUS

from engine import api
from engine.core.runlog import RunLog, read_metrics
from engine.core.statefile import load_state
from engine.training.dispatch import train
from engine.training.pretrain import load_text_examples


@pytest.fixture
def text_file(tmp_path):
    """A plain-text file: one raw-text row per paragraph."""
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(line for line in CORPUS.splitlines() if line.strip()) + "\n")
    return path


def test_pretrain_learns_every_token_and_cuts_long_texts(tiny_llama, text_file):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    spec = api.JobSpec(model=str(tiny_llama), data=str(text_file), objective="pretrain", max_seq_length=16)
    pieces = load_text_examples(spec, tok, print)
    assert all(p.labels == p.input_ids and 1 < len(p.input_ids) <= 16 for p in pieces)
    first = tok(CORPUS.splitlines()[0])["input_ids"] + [tok.eos_token_id]
    k = -(-len(first) // 16)
    assert k > 1 and sum((p.input_ids for p in pieces[:k]), []) == first  # cut into pieces, nothing dropped
    packed = load_text_examples(spec.replace(packing=True, max_seq_length=64), tok, print)
    assert len(packed) < len(load_text_examples(spec.replace(max_seq_length=64), tok, print))


def test_pretrain_lowers_loss_with_embeddings_at_their_own_rate(tiny_llama, text_file, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = api.JobSpec(
        model=str(tiny_llama),
        data=str(text_file),
        objective="pretrain",
        train_embeddings=True,
        learning_rate=1e-2,
        embedding_learning_rate=1e-3,
        max_steps=30,
        batch_size=4,
        max_seq_length=64,
        device="cpu",
        seed=0,
    )
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, print)
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert len(losses) == 30 and sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    [ckpt] = (tmp_path / "checkpoints").iterdir()
    groups = load_state(ckpt, "optimizer")["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-2, 1e-3]

    adapter = tmp_path / "adapter"
    keys = load_file(adapter / "adapter_model.safetensors").keys()
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)
    texts = [torch.tensor([p.input_ids]) for p in load_text_examples(spec, AutoTokenizer.from_pretrained(adapter))]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), adapter)
    with torch.no_grad():
        after = sum(float(model(input_ids=ids, labels=ids).loss) for ids in texts)
        with model.disable_adapter():
            before = sum(float(model(input_ids=ids, labels=ids).loss) for ids in texts)
    assert after < 0.5 * before, (before, after)


def train_tied(model, text_file, tmp_path, steps: int):
    """A CPU pretraining run of `model` (tied head) with its embeddings trained; returns its folder."""
    spec = api.JobSpec(
        model=str(model),
        data=str(text_file),
        objective="pretrain",
        train_embeddings=True,
        learning_rate=1e-2,
        max_steps=steps,
        batch_size=4,
        max_seq_length=64,
        device="cpu",
        seed=0,
    )
    run = tmp_path / "run"
    run.mkdir()
    train(spec, run, RunLog(run), False, lambda: False, print)
    return run


def test_pretrain_tied_head_with_embeddings_merges(tiny_qwen3, text_file, tmp_path):
    """Qwen3 ties lm_head to the embeddings; PEFT saves the trained head beside the embedding it equals, and the merged
    export (whose base stores only the embedding) gives the adapter model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = train_tied(tiny_qwen3, text_file, tmp_path, steps=3)
    merged = tmp_path / "merged"
    api.export(str(run / "adapter"), "merged16", merged, log=lambda m: None)
    ids = torch.tensor([[5, 9, 13, 21, 34]])
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32)
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, run / "adapter")(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.05)  # the merged weights are stored in 16 bits


def test_pretrain_tied_head_with_embeddings_exports_as_lora(tiny_qwen3, text_file, tmp_path):
    """The LoRA export of a tied model's trained embedding: PEFT puts it back as both embedding and head, still tied,
    and answers as the trained model does (the adapter's config carries the tie: PEFT saves none of modules_to_tie)."""
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = train_tied(tiny_qwen3, text_file, tmp_path, steps=2)
    out = tmp_path / "lora"
    api.export(str(run / "adapter"), "lora", out, log=lambda m: None)

    # the trained model built by hand: the trained embedding in the base (its head is the same tensor), then the LoRA
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    [embed] = [v for k, v in weights.items() if "embed_tokens" in k]
    trained = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32)
    assert not torch.equal(trained.get_input_embeddings().weight, embed)  # training moved it
    trained.get_input_embeddings().weight.data.copy_(embed)
    lora = LoraConfig.from_pretrained(run / "adapter")
    lora.modules_to_save, lora.ensure_weight_tying = None, False
    trained = get_peft_model(trained, lora)
    set_peft_model_state_dict(trained, {k: v for k, v in weights.items() if "lora_" in k})

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    assert torch.equal(model.get_input_embeddings().weight, embed)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = torch.tensor([[5, 9, 13, 21, 34]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, trained(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_pretrain_in_fp16_trains_fp32_embeddings_beside_fp16_weights(arch, text_file, tmp_path, request):
    """The T4's path (fp16 under autocast, torch's loss scaler) on the CPU, with the embeddings trained (Qwen3: one
    copy, the head tied to it): every trainable weight is fp32 and every frozen one fp16, the loss stays finite and
    the used rows of the embedding move. Before, the copies were fp16: the loss scaler refused them ("Attempting to
    unscale FP16 gradients"), and unscaled (the CPU ran without one) AdamW made NaN of every row no token used. The
    adapter and its lora and merged exports load and answer as the trained model does."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = request.getfixturevalue(f"tiny_{arch}")
    spec = api.JobSpec(
        model=str(model_dir),
        data=str(text_file),
        objective="pretrain",
        train_embeddings=True,
        learning_rate=1e-2,
        embedding_learning_rate=1e-2,
        max_steps=4,
        batch_size=4,
        max_seq_length=64,
        device="cpu",
        dtype="fp16",
        seed=0,
    )
    models = []

    def keep(module, args):  # the run's model, as its first training forward sees it
        if module.training and type(module).__name__.endswith("ForCausalLM") and not models:
            models.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(keep)
    try:
        train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, print)
    finally:
        handle.remove()
    floating = [(n, p) for n, p in models[0].named_parameters() if p.is_floating_point()]
    assert {p.dtype for _, p in floating if p.requires_grad} == {torch.float32}
    assert {p.dtype for _, p in floating if not p.requires_grad} == {torch.float16}
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses

    adapter = tmp_path / "adapter"
    weights = load_file(adapter / "adapter_model.safetensors")
    [embed] = [v for k, v in weights.items() if "embed_tokens" in k]
    assert all(torch.isfinite(v).all() for v in weights.values())
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    frozen = base.get_input_embeddings().weight.detach().clone()
    # the rows of the tokens read move (each piece's last one predicts nothing); untied, no other row does (a tied
    # head's gradient reaches every row)
    pieces = load_text_examples(spec, AutoTokenizer.from_pretrained(adapter))
    used = sorted({i for p in pieces for i in p.input_ids[:-1]})
    moved = (embed.float() - frozen).abs().amax(1) > 1e-3
    assert moved[used].all()
    assert arch == "qwen3" or moved.sum() == len(used)

    ids = torch.tensor([used[:8]])
    trained = PeftModel.from_pretrained(base, adapter)
    assert torch.equal(trained.get_input_embeddings().weight, embed.float())
    if arch == "qwen3":
        assert trained.get_output_embeddings().weight is trained.get_input_embeddings().weight
    api.export(str(adapter), "lora", tmp_path / "lora", log=lambda m: None)
    lora = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = PeftModel.from_pretrained(lora, tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=ids).logits, trained(input_ids=ids).logits)
    # the merged export holds the adapter model's merged weights in its 16-bit dtype
    api.export(str(adapter), "merged16", tmp_path / "merged", log=lambda m: None)
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    want = trained.merge_and_unload().state_dict()
    assert all(torch.equal(v, want[k].to(v.dtype)) for k, v in merged.items())


def test_pretrain_refuses_chat_data(identity_file):
    with pytest.raises(api.UserError, match="Continued pretraining needs raw text .* this dataset is alpaca"):
        api.check_data(str(identity_file), "pretrain")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pretrain_on_the_gpu_with_a_tied_head(tiny_qwen3, text_file, tmp_path):
    """Qwen3 ties lm_head to the embeddings: one trained copy serves both."""
    spec = api.JobSpec(
        model=str(tiny_qwen3),
        data=str(text_file),
        objective="pretrain",
        train_embeddings=True,
        learning_rate=1e-2,
        embedding_learning_rate=1e-3,
        max_steps=20,
        batch_size=4,
        max_seq_length=64,
        seed=0,
    )
    train(spec, tmp_path, RunLog(tmp_path), False, lambda: False, print)
    losses = [m["loss"] for m in read_metrics(tmp_path)]
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
