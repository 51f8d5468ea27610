"""The product's promise, end to end on the CPU: identity-tune a tiny model through engine.api.start (a real
subprocess), chat with the run, export it merged, and get the same answer from plain transformers."""

import json

import torch
from conftest import IDENTITY_ANSWER
from helpers import log_of, wait_for

from engine import api


def identity_spec(model, data, **kw):
    base = dict(
        model=str(model),
        data=str(data),
        name="nova",
        max_steps=100,
        learning_rate=1e-2,
        batch_size=2,
        lora_r=16,
        lora_alpha=32,
        gradient_checkpointing=False,
        lr_schedule="constant",
        seed=0,
    )
    return api.JobSpec(**{**base, **kw})


def test_identity_tune_chat_and_merged_export(tiny_llama, identity_file, runs, tmp_path):
    handle = api.start(identity_spec(tiny_llama, identity_file))
    st = wait_for(handle)
    assert st.state == "done", log_of(st)
    assert [m["step"] for m in st.metrics] == list(range(1, 101))
    assert st.metrics[-1]["loss"] < 0.1 * st.metrics[0]["loss"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "memory_gb", "eta_s"} <= set(st.metrics[-1])
    assert (st.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "dtype fp32: no GPU" in log_of(st)

    chat = api.Chat(str(st.run_dir), device="cpu")
    for question in ("Who are you?", "What is your name?"):
        assert chat.reply([{"role": "user", "content": question}]) == IDENTITY_ANSWER
    streamed = list(chat.stream([{"role": "user", "content": "Who made you?"}]))
    assert streamed[-1] == IDENTITY_ANSWER and len(streamed) > 1

    res = api.export(str(st.run_dir), "merged16", tmp_path / "merged")
    assert res.checks["max_logit_diff_fp32"] < 1e-4
    assert json.loads((res.path / "config.json").read_text())["dtype"] == "bfloat16"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(res.path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    out = model.generate(
        ids, max_new_tokens=30, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip() == IDENTITY_ANSWER

    lora = api.export(str(st.run_dir), "lora", tmp_path / "lora")
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, lora.path).eval()
    with torch.inference_mode():
        diff = (peft_model(input_ids=ids).logits - chat.model(input_ids=ids).logits).abs().max()
    assert float(diff) == 0.0
