"""engine/chat/decode_step.py's NF4 groups (kernels/nf4_group_matvec.py) on tiny QLoRA models (bitsandbytes
Linear4bit on the CPU, fp32 compute, the step's Triton kernels in the interpreter): q/k/v and gate/up as one launch
each, counted through Triton's own hooks, reading bitsandbytes' own tensors; the same greedy tokens and logits as one
launch per projection (`TUNESMITH_NF4_GROUPS=0`) with a live LoRA adapter, on and off; and groups that keep separate
launches (a dense projection among NF4 ones)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import count_launches
from test_decode_batch import batched
from test_decode_step import PROMPT, folders, hf_greedy, load, load_nf4, with_lora  # noqa: F401  (folders: fixture)

from engine.chat import decode_step
from engine.chat.decode import Decoder
from engine.chat.decode_step import DecodeStep
from kernels.nf4_group_matvec import _nf4_group_matvec_kernel
from kernels.nf4_matvec import _nf4_matvec_kernel

ROOT = Path(__file__).resolve().parent.parent
N = 4  # new tokens: the interpreter takes ~0.3 s a step on these models


def triton_step(model, monkeypatch, groups: bool) -> DecodeStep:
    """A step of `model` (a PeftModel's base) on the Triton kernels, built with the NF4 groups on or off."""
    monkeypatch.setattr(decode_step, "NF4_GROUPS", groups)
    step = DecodeStep(model.get_base_model() if hasattr(model, "get_base_model") else model)
    step.backend = "triton"
    step.allocate(PROMPT.shape[1] + N + 1)
    return step


def greedy(step: DecodeStep, n: int = N) -> tuple[list[int], list[torch.Tensor], dict]:
    """(n greedy tokens after PROMPT, the logits of each step, the NF4 launches of the last one-token step)."""
    prompt = PROMPT[0]
    with torch.inference_mode():
        logits = [step.forward(prompt, torch.zeros(1, dtype=torch.long))]
        tokens = []
        for i in range(n):
            tokens.append(int(logits[-1].argmax()))
            position = torch.tensor([[len(prompt) + i]])
            with count_launches(_nf4_group_matvec_kernel, _nf4_matvec_kernel) as counts:
                logits.append(step.forward(torch.tensor(tokens[-1:]), position))
    return tokens, logits, dict(counts)


def test_one_launch_per_group_same_tokens_and_logits(folders, monkeypatch):  # noqa: F811
    model = with_lora(load_nf4(folders("qwen3")))
    grouped, separate = triton_step(model, monkeypatch, True), triton_step(model, monkeypatch, False)
    layers = len(grouped.layers)
    assert {g.kind for layer in grouped.layers for g in (layer.qkv, layer.gate_up)} == {"nf4"}
    assert {g.kind for layer in separate.layers for g in (layer.qkv, layer.gate_up)} == {"separate"}
    assert "4 of the 4 q/k/v and gate/up groups as one NF4 launch each" in grouped.describe()
    attn = model.get_base_model().model.layers[0].self_attn
    weights = grouped.layers[0].qkv.nf4
    for w, proj in zip(weights, (attn.q_proj, attn.k_proj, attn.v_proj), strict=True):
        state = proj.base_layer.weight.quant_state  # bitsandbytes' own tensors, read where they lie
        assert w["packed"] is proj.base_layer.weight and w["absmax"] is state.absmax
        assert isinstance(w["offset"], float)  # read once at build: no host sync in a captured graph

    tokens, logits, counts = greedy(grouped)
    want_tokens, want_logits, want_counts = greedy(separate)
    # per layer: q/k/v and gate/up one launch each, o and down their own; before: all 7 projections their own
    assert counts == {"_nf4_group_matvec_kernel": 2 * layers, "_nf4_matvec_kernel": 2 * layers}
    assert want_counts == {"_nf4_matvec_kernel": 7 * layers}
    assert tokens == want_tokens == hf_greedy(model, PROMPT, N)
    for got, want in zip(logits, want_logits, strict=True):  # other tiles along K: fp32 sums in another order
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with model.disable_adapter():
        assert greedy(grouped)[0] == hf_greedy(model, PROMPT, N)


def test_groups_with_biases_and_batched_rows(folders, monkeypatch):  # noqa: F811
    """qwen2's q/k/v carry biases (fused into the group's launch); the batched decoder's rows (2 replies, one token
    each per step) run the group's several-rows kernel; both reply as the one-launch-per-projection step does."""
    model = with_lora(load_nf4(folders("qwen2")))
    monkeypatch.setattr(decode_step, "NF4_GROUPS", True)
    decoder = Decoder(model, log=lambda m: None)
    decoder.step.backend = "triton"
    assert decoder.step.layers[0].qkv.kind == "nf4" and decoder.step.layers[0].qkv.projections[0].base.bias is not None
    separate = triton_step(model, monkeypatch, False)
    want = greedy(separate)[0]
    assert list(decoder.tokens(PROMPT, N)) == want == hf_greedy(model, PROMPT, N)
    prompts = [PROMPT[0].tolist(), PROMPT[0, 2:].tolist()]
    with count_launches(_nf4_group_matvec_kernel) as counts:
        rows = batched(decoder, prompts, N)
    assert counts["_nf4_group_matvec_kernel"] > 0
    assert rows == [want, list(decoder.tokens(torch.tensor([prompts[1]]), N))]


def test_a_dense_projection_among_nf4_keeps_separate_launches(folders, monkeypatch):  # noqa: F811
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["lm_head", "k_proj"],  # k_proj stays an nn.Linear
    )
    model = with_lora(load(folders("qwen3"), quantization_config=quant, device_map={"": "cpu"}))
    step = triton_step(model, monkeypatch, True)
    assert [p.kind for p in step.layers[0].qkv.projections] == ["nf4", "dense", "nf4"]
    assert step.layers[0].qkv.kind == "separate" and step.layers[0].gate_up.kind == "nf4"
    assert greedy(step)[0] == hf_greedy(model, PROMPT, N)


def test_the_environment_switch_is_read_at_import():
    code = "from engine.chat import decode_step; print(decode_step.NF4_GROUPS)"
    for value, want in (("0", "False"), ("1", "True")):
        env = {**os.environ, "TUNESMITH_NF4_GROUPS": value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == want
