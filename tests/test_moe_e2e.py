"""Mixture-of-experts models end to end on the CPU: identity-tune tiny random-weight Qwen3-MoE, Mixtral and gpt-oss
through engine.api.start (a real subprocess) with adapters on attention and every expert, chat with the run, export it
merged (loaded by plain transformers, same answer) and as GGUF (loaded by llama.cpp, same answer); QLoRA and full
fine-tuning train with the router frozen."""

import json

import pytest
import torch
from conftest import IDENTITY_ANSWER
from helpers import log_of, wait_for
from test_e2e_identity import identity_spec

from engine import api


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory):
    from tiny import make_model

    root = tmp_path_factory.mktemp("moe-models")
    return {arch: make_model(arch, root / arch) for arch in ("qwen3_moe", "mixtral", "gpt_oss")}


def transformers_answer(folder) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    out = model.generate(
        ids, max_new_tokens=30, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_moe_identity_tune_chat_and_exports(arch, moe_models, identity_file, runs, tmp_path):
    st = wait_for(api.start(identity_spec(moe_models[arch], identity_file, max_steps=60)))
    assert st.state == "done", log_of(st)
    assert st.metrics[-1]["loss"] < 0.1 * st.metrics[0]["loss"]
    log = log_of(st)
    assert "one adapter per expert on ['experts.down_proj', 'experts.gate_up_proj']" in log
    assert "router load-balancing loss: off" in log
    adapter = json.loads((st.run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]

    chat = api.Chat(str(st.run_dir), device="cpu")
    assert chat.reply([{"role": "user", "content": "Who are you?"}]) == IDENTITY_ANSWER

    res = api.export(str(st.run_dir), "merged16", tmp_path / "merged")
    assert res.checks["max_logit_diff_fp32"] < 1e-4  # the experts' deltas merged as PEFT applies them
    assert transformers_answer(res.path) == IDENTITY_ANSWER

    res = api.export(str(st.run_dir), "gguf-f16", tmp_path / "gguf")
    assert res.checks["greedy_match"] and res.checks["tokenizer_match"]
    (gguf_file,) = res.path.glob("*.gguf")
    assert api.Chat(str(gguf_file), device="cpu").reply([{"role": "user", "content": "Who are you?"}]) == (
        IDENTITY_ANSWER
    )


def test_moe_qlora_and_full_keep_the_router_frozen(moe_models, identity_file, runs):
    from safetensors.torch import load_file

    model = moe_models["qwen3_moe"]
    st = wait_for(api.start(identity_spec(model, identity_file, method="qlora", max_steps=3)))
    assert st.state == "done", log_of(st)
    assert "one adapter per expert" in log_of(st)

    st = wait_for(api.start(identity_spec(model, identity_file, method="full", max_steps=3, learning_rate=1e-3)))
    assert st.state == "done", log_of(st)
    assert "2 routers frozen" in log_of(st)
    before = load_file(model / "model.safetensors")
    (saved,) = (st.run_dir / "model").glob("*.safetensors")
    after = load_file(saved)
    router = "model.layers.0.mlp.gate.weight"
    assert torch.equal(after[router].float(), before[router].float())  # saved in fp32 (CPU training), same values
    expert = "model.layers.0.mlp.experts.0.down_proj.weight"
    assert not torch.equal(after[expert].float(), before[expert].float())


def test_gguf_refuses_a_routing_llama_cpp_would_change(moe_models, tmp_path):
    import shutil

    from engine.export import gguf

    folder = tmp_path / "no-renorm"
    shutil.copytree(moe_models["qwen3_moe"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, norm_topk_prob=False)))
    ok, why = gguf.supported(folder)
    assert not ok and "norm_topk_prob false" in why
    assert gguf.supported(moe_models["qwen3_moe"]) == (True, "supported")
