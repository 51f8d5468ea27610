"""Pre-quantized bitsandbytes 4-bit checkpoints ("...-bnb-4bit"): QLoRA from the notebook API and the CLI/app, and
merged-16-bit and GGUF exports that dequantize the base, pass the export checks and name the 16-bit original.

The checkpoint is made here: a tiny random Qwen3 quantized with bitsandbytes on the CPU and saved, its config naming
a hub id as the model it came from (as Unsloth's checkpoints do).
"""

import json
import shutil

import pytest
import torch
from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS
from helpers import log_of, tiny_spec, wait_for

from engine import api
from tunesmith import FastLanguageModel, UserError

ORIGINAL = "Qwen/Qwen3-4B-Instruct-2507"


@pytest.fixture(scope="module")
def bnb_4bit(tiny_qwen3, tmp_path_factory):
    from tiny import make_bnb_4bit

    return make_bnb_4bit(tiny_qwen3, tmp_path_factory.mktemp("models") / "tiny-qwen3-bnb-4bit", ORIGINAL)


def trained(model, tok, folder, steps=8):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    texts = [f"{q} {IDENTITY_ANSWER}{tok.eos_token}" for q in IDENTITY_QUESTIONS]
    args = SFTConfig(output_dir=str(folder), max_steps=steps, learning_rate=5e-3, report_to="none", bf16=False,
                     save_strategy="no", gradient_checkpointing=False)  # fmt: skip
    SFTTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_dict({"text": texts}), args=args).train()
    return model


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def test_notebook_qlora_and_exports(bnb_4bit, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = FastLanguageModel.from_pretrained(str(bnb_4bit), max_seq_length=64, load_in_4bit=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.compute_dtype == torch.float32  # the CPU's dtype
    model = trained(FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16), tok, tmp_path / "train")
    ids = tok(IDENTITY_QUESTIONS[0], return_tensors="pt")["input_ids"]
    model.eval()
    trained_logits = logits(model, ids)

    merged = model.save_pretrained_merged(tmp_path / "merged", tok, save_method="merged_16bit")
    assert merged.checks["original_model"] == ORIGINAL and merged.checks["max_logit_diff_fp32"] < 1e-3
    cfg = json.loads((merged.path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["_name_or_path"] == ORIGINAL and cfg["dtype"] == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    # the merged bf16 weights against the trained 4-bit model: bf16 rounding of each weight, nothing more
    torch.testing.assert_close(logits(plain, ids), trained_logits, atol=0.05 * trained_logits.abs().max(), rtol=0)

    gguf = model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="f16")
    assert gguf.checks["original_model"] == ORIGINAL and any(f.endswith(".gguf") for f in gguf.files)
    assert gguf.checks["greedy_match"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf", "merged", "train"]  # hidden copies removed


def test_what_cannot_train_from_a_4bit_checkpoint_is_refused(bnb_4bit, tiny_qwen3, identity_file, runs, tmp_path):
    for kwargs in (dict(load_in_4bit=False), dict(full_finetuning=True, load_in_4bit=False)):
        with pytest.raises(UserError, match=f"stored in 4-bit.*QLoRA.*16-bit original '{ORIGINAL}'"):
            FastLanguageModel.from_pretrained(str(bnb_4bit), max_seq_length=64, **kwargs)
    eight = tmp_path / "tiny-qwen3-8bit"
    shutil.copytree(tiny_qwen3, eight)
    cfg = json.loads((eight / "config.json").read_text())
    quant = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (eight / "config.json").write_text(json.dumps({**cfg, "quantization_config": quant}))
    with pytest.raises(UserError, match="stored quantized \\(bnb-8bit\\).*16-bit original"):
        FastLanguageModel.from_pretrained(str(eight), max_seq_length=64)
    with pytest.raises(UserError, match="trains only as QLoRA"):  # the CLI and the app: before any run folder
        api.start(tiny_spec(bnb_4bit, identity_file, method="lora"))
    assert not runs.exists() or not any(runs.iterdir())


def test_cli_qlora_run_and_exports(bnb_4bit, identity_file, runs, tmp_path):
    st = wait_for(api.start(tiny_spec(bnb_4bit, identity_file, method="qlora", max_steps=4, save_every=4)))
    assert st.state == "done", log_of(st)
    merged = api.export(str(st.run_dir), "merged16", tmp_path / "merged")
    assert merged.checks["original_model"] == ORIGINAL and merged.checks["max_logit_diff_fp32"] < 1e-3
    gguf = api.export(str(st.run_dir), "gguf-q8_0", tmp_path / "gguf")
    assert any(f.endswith(".gguf") for f in gguf.files) and "original_model" in gguf.checks


def test_a_dequantized_copy_left_by_a_killed_export_goes_at_the_next_export(bnb_4bit, tmp_path):
    """An export of a 4-bit model killed while it dequantized the base (out of memory, or a Cancel that had to kill)
    left the hidden 16-bit copy (.<model>.<random>.dequantized, the size of the 16-bit model) beside the exports for
    good: nothing knew to remove it. It is now named as every half-built folder, so the next export there removes it."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import time\nfrom pathlib import Path\nfrom engine.export import dequantize\nfrom engine import api\n"
        "def slow(path, dest, *a):\n    print('dequantizing', flush=True)\n    time.sleep(600)\n"
        "dequantize.dequantize = slow\n"
        f"api.export({str(bnb_4bit)!r}, 'merged16', Path({str(tmp_path / 'merged')!r}), log=lambda m: None)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "dequantizing"
    finally:
        proc.kill()
        proc.wait()
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    api.export(str(bnb_4bit), "merged16", tmp_path / "merged", log=lambda m: None)
    assert not left.exists() and [p.name for p in tmp_path.iterdir()] == ["merged"]
