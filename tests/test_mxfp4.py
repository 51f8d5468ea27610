"""gpt-oss checkpoints stored in MXFP4 (as openai/gpt-oss-20b): a tiny random gpt_oss written in that form by the
quantizer in tests/tiny.py (make_mxfp4), beside its twin, the same model in bf16 with the experts' MXFP4 values. The
dequantizer against a direct reference; LoRA and QLoRA runs through the CLI's engine from the MXFP4 folder start at
the twin's loss; the merged export loads in transformers and equals the twin's; the GGUF export answers in llama.cpp
as the merged model does in transformers; the estimate counts the twin's weights."""

import json

import pytest
import torch
from conftest import IDENTITY_ANSWER, IDENTITY_QUESTIONS
from helpers import log_of, tiny_spec, wait_for
from test_gguf_gpt_oss import F16_LOGIT_TOL, gpt_oss  # noqa: F401  (gpt_oss is a fixture)
from tiny import E2M1_MAGNITUDES

from engine import api
from engine.models import mxfp4


@pytest.fixture(scope="module")
def folders(gpt_oss, tmp_path_factory):  # noqa: F811
    """(MXFP4 folder, its bf16 twin), from the GGUF test's tiny gpt_oss (every bias and sink non-zero)."""
    from tiny import make_mxfp4

    root = tmp_path_factory.mktemp("mxfp4")
    return make_mxfp4(gpt_oss, root / "tiny-gpt-oss-mxfp4", root / "tiny-gpt-oss-twin")


def test_dequantize_matches_a_value_by_value_reference():
    """Every code (both signs, both nibbles) and scales from 2**-20 to 2**20, decoded one value at a time."""
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (2, 3, 2, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(107, 148, (2, 3, 2), dtype=torch.uint8, generator=gen)
    table = [*E2M1_MAGNITUDES, *(-m for m in E2M1_MAGNITUDES)]
    want = torch.empty(2, 64, 3, dtype=torch.float64)
    for e in range(2):
        for row in range(3):
            for g in range(2):
                for k in range(16):
                    byte, scale = int(blocks[e, row, g, k]), 2.0 ** (int(scales[e, row, g]) - 127)
                    want[e, g * 32 + 2 * k, row] = table[byte & 0x0F] * scale
                    want[e, g * 32 + 2 * k + 1, row] = table[byte >> 4] * scale
    for dtype in (torch.float32, torch.bfloat16):
        got = mxfp4.dequantize(blocks, scales, dtype)
        assert got.dtype == dtype and got.shape == (2, 64, 3)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=0)


def test_the_checkpoint_reads_and_loads_as_its_twin(folders):
    """The export's reader and the training loader (transformers' MXFP4 dequantization, experts cast to the run's
    dtype) both give the twin's weights; the estimate and the export's weight count count them all."""
    from safetensors.torch import load_file

    from engine.core.hardware import Placement
    from engine.export.probe import param_count
    from engine.memory.estimate import Arch
    from engine.models.loading import load_model, read_config

    packed, twin = folders
    want = load_file(twin / "model.safetensors")
    entries = mxfp4.tensors(packed)
    assert sorted(e[0] for e in entries) == sorted(want)
    assert sum(name.endswith("_proj") and len(shape) == 3 for name, _, shape, _ in entries) == 4
    for name, f, shape, _ in entries:
        t = mxfp4.read(name, f, torch.bfloat16)
        assert t.shape == shape and torch.equal(t, want[name]), name
    model = load_model(packed, Placement("cpu", "fp32", "test"))
    assert "quantization_config" not in model.config.to_dict()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, want[name].float()), name
    n = sum(p.numel() for p in model.parameters())
    assert param_count(packed) == param_count(twin) == n
    assert Arch.from_config(read_config(packed)) == Arch.from_config(read_config(twin))
    assert Arch.from_config(read_config(packed)).params == n


def test_mxfp4_trains_with_any_method_and_only_for_gpt_oss(folders):
    from engine.core.errors import UserError
    from engine.models.loading import read_config
    from engine.models.prequantized import check_trainable

    cfg = read_config(folders[0])
    assert not any(check_trainable("m", cfg, method) for method in ("lora", "qlora", "full"))  # not stored 4-bit
    with pytest.raises(UserError, match="stored quantized \\(mxfp4\\), which Tunesmith cannot train from"):
        check_trainable("m", dict(cfg, model_type="llama"), "lora")  # transformers dequantizes gpt-oss's experts only


def test_the_layer_by_layer_loader_reads_a_layers_experts_when_filled(folders):
    """QLoRA's loader (and weight streaming's): every weight but the experts read at once, each layer's experts
    dequantized when load_streamed reaches the layer; filled, the model is the twin."""
    from safetensors.torch import load_file

    from engine.core.hardware import Placement
    from engine.models.loading import mxfp4_host_model

    packed, twin = folders
    want = load_file(twin / "model.safetensors")
    model, fill = mxfp4_host_model(packed, Placement("cpu", "fp32", "test"))
    layers = model.model.layers
    assert layers[0].mlp.experts.gate_up_proj.is_meta and not layers[0].self_attn.q_proj.weight.is_meta
    fill(layers[0])
    assert not layers[0].mlp.experts.down_proj.is_meta and layers[1].mlp.experts.down_proj.is_meta
    fill(layers[1])
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, want[name].float()), name
    assert model.config._name_or_path == str(packed) and "quantization_config" not in model.config.to_dict()


@pytest.fixture(scope="module")
def lora_runs(folders, tmp_path_factory):
    """A LoRA run from the MXFP4 folder and one from its twin, through engine.api.start (the CLI's path)."""
    root = tmp_path_factory.mktemp("runs")
    data = root / "identity.jsonl"
    rows = [{"instruction": q, "output": IDENTITY_ANSWER} for q in IDENTITY_QUESTIONS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESMITH_RUNS", str(root / "runs"))
        kw = dict(max_steps=30, save_every=30, learning_rate=1e-2, lr_schedule="constant", lora_r=16, lora_alpha=32)
        return [wait_for(api.start(tiny_spec(folder, data, **kw))) for folder in folders]


def test_lora_from_mxfp4_trains_as_from_its_twin(lora_runs):
    """Same weights, same seed: the same loss at every step and the same adapter, bit for bit."""
    from safetensors.torch import load_file

    packed, twin = lora_runs
    assert packed.state == "done" and twin.state == "done", log_of(packed)
    assert [m["loss"] for m in packed.metrics] == [m["loss"] for m in twin.metrics]
    assert packed.metrics[-1]["loss"] < 0.01 * packed.metrics[0]["loss"]
    adapters = [load_file(st.run_dir / "adapter" / "adapter_model.safetensors") for st in lora_runs]
    assert adapters[0].keys() == adapters[1].keys() and any("experts" in k for k in adapters[0])
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert "MXFP4 experts are dequantized to fp32" in log_of(packed)
    chat = api.Chat(str(packed.run_dir), device="cpu")  # the engine's chat loads the MXFP4 base too
    assert chat.reply([{"role": "user", "content": "Who are you?"}]) == IDENTITY_ANSWER


def test_merged_export_loads_in_transformers_and_equals_the_twins(lora_runs, tmp_path):
    from safetensors.torch import load_file
    from test_moe_e2e import transformers_answer

    packed, twin = (api.export(str(st.run_dir), "merged16", tmp_path / st.run_dir.name) for st in lora_runs)
    assert packed.checks["max_logit_diff_fp32"] < 1e-4, packed.checks
    cfg = json.loads((packed.path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "bfloat16"
    merged, want = (load_file(res.path / "model.safetensors") for res in (packed, twin))
    assert merged.keys() == want.keys() and not any(k.endswith(mxfp4.PACKED) for k in merged)
    for name, t in want.items():
        assert torch.equal(merged[name], t), name
    assert transformers_answer(packed.path) == IDENTITY_ANSWER


def test_gguf_export_answers_in_llama_cpp_as_the_merged_model(lora_runs, tmp_path):
    res = api.export(str(lora_runs[0].run_dir), "gguf-f16", tmp_path / "gguf")
    # as tests/test_gguf_gpt_oss.py: llama.cpp's YaRN moves gpt-oss's f16 logits a little (F16_LOGIT_TOL), so a near
    # tie may go the other way; a clear greedy step may not
    assert res.checks["tokenizer_match"] and res.checks["tokens_compared"] == 16, res.checks
    assert res.checks["clear_disagreements"] == 0 and res.checks["max_logit_diff"] < F16_LOGIT_TOL, res.checks
    (gguf_file,) = res.path.glob("*.gguf")
    chat = api.Chat(str(gguf_file), device="cpu")
    try:
        assert chat.reply([{"role": "user", "content": "Who are you?"}]) == IDENTITY_ANSWER
    finally:
        chat.close()


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_qlora_and_full_from_mxfp4_start_as_from_its_twin(method, folders, identity_file, runs):
    losses = []
    for folder in folders:
        st = wait_for(api.start(tiny_spec(folder, identity_file, method=method, max_steps=2, save_every=2)))
        assert st.state == "done", log_of(st)
        losses.append([m["loss"] for m in st.metrics])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gpu_runs_from_mxfp4_start_as_from_its_twin(method, folders, identity_file, runs):
    """On the GPU: both load layer by layer (engine.models.mxfp4 dequantizes each layer's experts), LoRA's experts in
    the run's 16-bit dtype, QLoRA's NF4 on the fast path; each run starts at its twin's loss (bf16: the same weights,
    so only the GPU's order of sums may differ)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    losses = []
    for folder in folders:
        st = wait_for(api.start(tiny_spec(folder, identity_file, method=method, max_steps=3, device="auto")))
        assert st.state == "done" and "dtype bf16" in log_of(st), log_of(st)
        losses.append([m["loss"] for m in st.metrics])
    assert losses[0] == pytest.approx(losses[1], rel=1e-3, abs=0)
