"""GGUF export of gpt-oss with real llama.cpp on the CPU: a tiny random-weight gpt_oss whose attention biases, sinks,
router bias and expert biases are all non-zero, exported in 16 bits and Q8_0, loaded by llama.cpp and compared with
transformers on the same weights (greedy reference, teacher-forced logits); the split of the fused, transposed experts
is checked tensor by tensor; a sliding/full layer pattern llama.cpp would not follow is refused."""

import json
import shutil

import numpy as np
import pytest
import torch

from engine import api
from engine.export import gguf as gguf_export

NEAR_LOSSLESS = ("gguf-f16", "gguf-bf16", "gguf-q8_0")
MATRIX_TYPE = {"gguf-f16": "F16", "gguf-bf16": "BF16", "gguf-q8_0": "Q8_0"}
# llama.cpp's YaRN rounds the correction range to whole dimensions (floor/ceil) while gpt-oss's config says
# truncate: false, which moves this model's f16 logits by up to 0.15 (0.023 with truncate: true, as for the other
# architectures); the greedy check's CLEAR_MARGIN (0.5) is what decides a conversion bug.
F16_LOGIT_TOL = 0.3


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """The tiny gpt_oss saved with every bias and sink non-zero (transformers initializes the biases to zero, so a
    dropped or misplaced bias would otherwise go unnoticed) and its gate/up projections scaled up."""
    from tiny import make_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gpt-oss")
    src = make_model("gpt_oss", root / "random")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            if name.endswith("gate_up_proj"):
                p.mul_(3)  # pre-activations past the SwiGLU's clamp (7.0), so the limit is compared too
    folder = root / "tiny-gpt-oss"
    model.to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return folder


def test_gpt_oss_exports_to_gguf_and_answers_like_transformers(gpt_oss, tmp_path):
    import gguf

    sizes = {}
    for fmt in NEAR_LOSSLESS:
        res = api.export(str(gpt_oss), fmt, tmp_path / fmt, log=quiet)
        (gguf_file,) = res.path.glob("*.gguf")
        sizes[fmt] = gguf_file.stat().st_size
        # The chat prompt is longer than the sliding window (8): both attention kinds are exercised.
        assert res.checks["tokenizer_match"] and res.checks["tokens_compared"] == 16, res.checks
        assert res.checks["clear_disagreements"] == 0, res.checks
        if fmt == "gguf-f16":
            assert res.checks["max_logit_diff"] < F16_LOGIT_TOL, res.checks
        reader = gguf.GGUFReader(gguf_file)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "gpt-oss"
        for f32 in (
            "blk.0.attn_sinks.weight",
            "blk.0.attn_q.bias",
            "blk.1.ffn_gate_exps.bias",
            "blk.1.ffn_down_exps.bias",
        ):
            assert types[f32] == "F32", (f32, types[f32])
        for matrix in ("blk.0.attn_q.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"):
            assert types[matrix] == MATRIX_TYPE[fmt], (matrix, types[matrix])

        field = {
            k.removeprefix("gpt-oss."): f.parts[-1][0] for k, f in reader.fields.items() if k.startswith("gpt-oss.")
        }
        assert field["expert_count"] == 4 and field["expert_used_count"] == 2
        assert field["expert_feed_forward_length"] == 32 and field["attention.sliding_window"] == 8
        assert field["rope.scaling.factor"] == 32 and field["rope.scaling.original_context_length"] == 4096
        assert field["rope.scaling.yarn_beta_fast"] == 32 and field["rope.scaling.yarn_beta_slow"] == 1
        chat = api.Chat(str(gguf_file), device="cpu")
        try:
            assert isinstance(chat.reply([{"role": "user", "content": "Who are you?"}], max_new_tokens=8), str)
        finally:
            chat.close()
    assert sizes["gguf-q8_0"] < sizes["gguf-f16"]


def test_fused_experts_are_split_and_transposed_as_llama_cpp_reads_them(gpt_oss, tmp_path):
    """ffn_gate_exps / ffn_up_exps hold gate_up_proj's even / odd columns, each expert as [I, H] (ggml ne H, I, E);
    ffn_down_exps holds down_proj [E, I, H] as [E, H, I]; the biases split the same way; sinks as they are."""
    import gguf
    from safetensors.torch import load_file

    out = tmp_path / "tiny.gguf"
    gguf_export.convert(gpt_oss, out, "F16", log=quiet)
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    w = {k: v.float() for k, v in load_file(gpt_oss / "model.safetensors").items()}
    layer = "model.layers.1."
    gate_up, gate_up_b = w[layer + "mlp.experts.gate_up_proj"], w[layer + "mlp.experts.gate_up_proj_bias"]
    expected = {
        "blk.1.ffn_gate_exps.weight": gate_up[..., ::2].transpose(1, 2),
        "blk.1.ffn_up_exps.weight": gate_up[..., 1::2].transpose(1, 2),
        "blk.1.ffn_down_exps.weight": w[layer + "mlp.experts.down_proj"].transpose(1, 2),
        "blk.1.ffn_gate_exps.bias": gate_up_b[..., ::2],
        "blk.1.ffn_up_exps.bias": gate_up_b[..., 1::2],
        "blk.1.ffn_down_exps.bias": w[layer + "mlp.experts.down_proj_bias"],
        "blk.1.ffn_gate_inp.bias": w[layer + "mlp.router.bias"],
        "blk.1.attn_sinks.weight": w[layer + "self_attn.sinks"],
        "blk.1.attn_k.bias": w[layer + "self_attn.k_proj.bias"],
    }
    for name, want in expected.items():
        # bf16 -> f16 is exact but for the few values below f16's normal range (1e-6 covers those)
        np.testing.assert_allclose(tensors[name].astype(np.float32), want.numpy(), rtol=0, atol=1e-6, err_msg=name)
        assert np.abs(tensors[name]).max() > 0, name


def test_a_layer_pattern_llama_cpp_would_not_follow_is_refused(gpt_oss, tmp_path):
    folder = tmp_path / "full-first"
    shutil.copytree(gpt_oss, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, layer_types=["full_attention", "sliding_attention"])))
    ok, why = gguf_export.supported(folder)
    assert not ok and "sliding-window attention on even layers" in why
    assert gguf_export.supported(gpt_oss) == (True, "supported")
