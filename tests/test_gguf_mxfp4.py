"""The gguf-mxfp4 export (llama.cpp's MXFP4_MOE, as llama.cpp and Ollama ship gpt-oss) with real llama.cpp on the
CPU: tiny random-weight gpt_oss (every bias and sink non-zero) and qwen3_moe exported through the whole pipeline, the
expert tensors read back as MXFP4 and the other matrices as Q8_0, llama.cpp's teacher-forced logits compared with the
same model's F16 GGUF on its greedy answer, the size estimate against the file; a dense model is refused."""

import numpy as np
import pytest
from test_gguf_gpt_oss import gpt_oss  # noqa: F401  (gpt_oss is a fixture)

from engine import api
from engine.export import gguf as gguf_export
from engine.export.probe import param_count

STEPS = 16  # greedy tokens compared, as the export's own check (engine.export.merge.REFERENCE_TOKENS)
# The experts are on the MXFP4 grid (as gpt-oss ships), so they quantize losslessly and the logits move only by the
# Q8_0 of the other matrices (and of the activations llama.cpp multiplies them with): measured 0.88 (gpt_oss) and
# 1.25 (qwen3_moe) against the F16 GGUF, where the gguf-q8_0 export of the same models moves them by 1.20 and 1.17.
# Random off-grid experts move them by 5.5 (4-bit rounding), the size of error this tolerance tells apart.
MXFP4_LOGIT_TOL = 2.0
# The estimate counts the norms, biases and routers as Q8_0 weights; on these tiny models, where they are a large
# share, it comes out 4.4% (gpt_oss) and 1.3% (qwen3_moe) below the tensors' bytes.
ESTIMATE_TOL = 0.1


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def moe_folders(gpt_oss, tmp_path_factory):  # noqa: F811
    """{arch: (folder to export, the same model in bf16 for the F16 GGUF)}, experts on the MXFP4 grid: gpt_oss as
    an MXFP4 checkpoint (as openai/gpt-oss-20b ships) with its bf16 twin, qwen3_moe with its experts rounded to MXFP4
    values (blocks of 32 along the input axis, as llama.cpp's)."""
    from safetensors.torch import load_file, save_file
    from tiny import make_model, make_mxfp4, mxfp4_quantize

    root = tmp_path_factory.mktemp("mxfp4-gguf")
    grid = make_model("qwen3_moe", root / "tiny-qwen3-moe")
    weights = load_file(grid / "model.safetensors")
    for name, w in weights.items():
        if ".experts." in name:  # [out, in] -> [1, in, out], the quantizer's layout
            weights[name] = mxfp4_quantize(w.T.unsqueeze(0))[2][0].T.to(w.dtype).contiguous()
    save_file(weights, grid / "model.safetensors", metadata={"format": "pt"})
    mx, twin = make_mxfp4(gpt_oss, root / "tiny-gpt-oss-mxfp4", root / "tiny-gpt-oss-twin")
    return {"gpt_oss": (mx, twin), "qwen3_moe": (grid, grid)}


def greedy_then_forced(f16_file, quant_file, prompt: list[int]):
    """(f16 logits, quantized logits, f16 margins) at each of f16 llama.cpp's STEPS greedy tokens after `prompt`,
    the quantized model teacher-forced on the same tokens."""
    import llama_cpp

    def load(path):
        return llama_cpp.Llama(str(path), n_ctx=len(prompt) + STEPS + 8, logits_all=True, n_threads=2, verbose=False)

    llm = load(f16_file)
    try:
        llm.eval(prompt)
        gen = []
        for _ in range(STEPS):
            gen.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval(gen[-1:])
        ref = np.array(llm.scores[len(prompt) - 1 : len(prompt) - 1 + STEPS], dtype=np.float32)
    finally:
        llm.close()
    llm = load(quant_file)
    try:
        llm.eval(prompt + gen[:-1])
        got = np.array(llm.scores[len(prompt) - 1 : len(prompt) - 1 + STEPS], dtype=np.float32)
    finally:
        llm.close()
    top2 = np.sort(ref, axis=-1)[:, -2:]
    return ref, got, top2[:, 1] - top2[:, 0]


@pytest.mark.parametrize("arch", ["gpt_oss", "qwen3_moe"])
def test_mxfp4_experts_answer_like_the_f16_gguf(arch, moe_folders, tmp_path):
    import gguf
    from gguf.quants import dequantize
    from transformers import AutoTokenizer

    folder, twin = moe_folders[arch]
    res = api.export(str(folder), "gguf-mxfp4", tmp_path / "mxfp4", log=quiet)
    (mx_file,) = res.path.glob("*.gguf")
    assert res.checks["tokenizer_match"] and res.checks["tokens_compared"] == STEPS, res.checks
    tensors = {t.name: t for t in gguf.GGUFReader(mx_file).tensors}
    types = {name: t.tensor_type.name for name, t in tensors.items()}
    for layer in (0, 1):
        for matrix in ("attn_q", "attn_k", "attn_v", "attn_output"):
            assert types[f"blk.{layer}.{matrix}.weight"] == "Q8_0", types
        # llama.cpp never quantizes the router: it stays in the 16-bit type it was quantized from (the model's bf16)
        assert types[f"blk.{layer}.ffn_gate_inp.weight"] == "BF16"
        assert types[f"blk.{layer}.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == types["output.weight"] == "Q8_0"

    f16_file = tmp_path / "f16.gguf"
    gguf_export.convert(twin, f16_file, "F16", log=quiet)
    f16 = {t.name: t for t in gguf.GGUFReader(f16_file).tensors}
    for layer in (0, 1):
        for proj in ("gate", "up", "down"):
            name = f"blk.{layer}.ffn_{proj}_exps.weight"
            assert types[name] == "MXFP4", types
            # on-grid values survive llama.cpp's MXFP4 quantizer exactly, in the layout the F16 file has them
            values = dequantize(tensors[name].data, tensors[name].tensor_type)
            np.testing.assert_array_equal(values, np.asarray(f16[name].data, dtype=np.float32), err_msg=name)

    tok = AutoTokenizer.from_pretrained(twin)
    messages = [{"role": "user", "content": "Who are you?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    ref, got, margins = greedy_then_forced(f16_file, mx_file, list(prompt))
    assert np.abs(got - ref).max() < MXFP4_LOGIT_TOL, np.abs(got - ref).max()
    clear = margins > gguf_export.CLEAR_MARGIN
    assert (got.argmax(-1) == ref.argmax(-1))[clear].all(), (got.argmax(-1), ref.argmax(-1), margins)

    tensor_bytes = sum(int(t.n_bytes) for t in tensors.values())
    estimate = gguf_export.estimate_bytes(param_count(folder), "gguf-mxfp4", folder) - 2**20  # less the header
    assert abs(estimate - tensor_bytes) < ESTIMATE_TOL * tensor_bytes, (estimate, tensor_bytes)
    assert mx_file.stat().st_size < estimate + 2**20
    assert api.formats_refused(str(folder)) == set()  # the Export tab offers the format for it


def test_a_model_without_experts_is_refused(tiny_qwen3, tmp_path):
    out = tmp_path / "dense-mxfp4"
    with pytest.raises(api.UserError, match="has no experts; pick gguf-q8_0 or gguf-q4_k_m instead"):
        api.export(str(tiny_qwen3), "gguf-mxfp4", out, log=quiet)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert api.formats_refused(str(tiny_qwen3)) == {"gguf-mxfp4"}  # the Export tab leaves it out
