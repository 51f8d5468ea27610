"""engine.memory.verdict: one verdict for the estimate, the presets and the run; every parameter of MoE and dense
configs counted; configs found offline; budgets below the plannable minimum refused with the minimum; an out-of-memory
error mid-run leaving a resumable checkpoint (issue 24)."""

import json
import shutil

import pytest
import torch
from helpers import failing_forward

from engine import api
from engine.core.errors import UserError
from engine.memory.checkpointing import SLACK
from engine.memory.estimate import Arch
from engine.memory.offload import plan
from engine.memory.verdict import plan_for, smallest_budget, verdict
from engine.spec.jobspec import JobSpec

# Published configs (the numbers that size the model), written out here: nothing is downloaded.
QWEN3_30B_A3B = dict(
    model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
    num_key_value_heads=4, head_dim=128, vocab_size=151936, moe_intermediate_size=768, num_experts=128,
    num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, tie_word_embeddings=False,
)  # fmt: skip
MIXTRAL_8X7B = dict(
    model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False,
)  # fmt: skip
GPT_OSS_20B = dict(
    model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
    num_key_value_heads=8, head_dim=64, vocab_size=201088, num_local_experts=32, num_experts_per_tok=4,
    attention_bias=True, tie_word_embeddings=False,
)  # fmt: skip
QWEN3_4B = dict(
    model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
)  # fmt: skip
LLAMA_31_8B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
)  # fmt: skip


def by_hand(c: dict) -> int:
    """The parameter count written out from a config's numbers: embeddings (x2 untied), per layer attention
    (q, k, v, o, with biases and sinks where the family has them, Qwen3's per-head q/k norms) and two norms, the MLP
    (dense: gate, up, down; MoE: every expert's gate, up and down and the router), and the final norm."""
    h, n, v = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    d = c.get("head_dim", h // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    attention = h * q + 2 * h * kv + q * h
    if c.get("attention_bias"):
        attention += q + 2 * kv + h
    if c["model_type"] == "gpt_oss":
        attention += c["num_attention_heads"]  # one sink per head
    if c["model_type"].startswith("qwen3"):
        attention += 2 * d
    experts = c.get("num_experts") or c.get("num_local_experts")
    if experts:
        width = c.get("moe_intermediate_size") or c["intermediate_size"]
        mlp = experts * 3 * h * width + experts * h  # the experts and the router
        if c["model_type"] == "gpt_oss":
            mlp += experts * (2 * width + h) + experts  # the experts' biases and the router's
    else:
        mlp = 3 * h * c["intermediate_size"]
    embeddings = v * h * (1 if c["tie_word_embeddings"] else 2)
    return embeddings + n * (attention + mlp + 2 * h) + h


def on_meta(c: dict) -> int:
    """Parameters of the real transformers model of this config, built on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    c = dict(c)
    config = AutoConfig.for_model(c.pop("model_type"), **c)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [QWEN3_30B_A3B, MIXTRAL_8X7B, GPT_OSS_20B, QWEN3_4B, LLAMA_31_8B],
    ids=["qwen3-30b-a3b", "mixtral-8x7b", "gpt-oss-20b", "qwen3-4b", "llama-3.1-8b"],
)
def test_every_parameter_is_counted(config):
    arch = Arch.from_config(config)
    assert arch.params == by_hand(config) == on_meta(config)


# Published configs as their config.json files write them, which leave out what equals the family's defaults
# (transformers fills those in when it loads the model): gemma-3-4b-it's text_config has no vocab_size.
GEMMA3_4B = dict(
    model_type="gemma3", mm_tokens_per_image=256,
    text_config=dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=1024),
    vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, image_size=896, intermediate_size=4304,
                       num_attention_heads=16, num_hidden_layers=27, patch_size=14, vision_use_head=False),
)  # fmt: skip
GEMMA2_2B = dict(
    model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, vocab_size=256000,
)  # fmt: skip
PHI3_MINI = dict(
    model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False,
)  # fmt: skip
MISTRAL_NEMO = dict(
    model_type="mistral", hidden_size=5120, intermediate_size=14336, num_hidden_layers=40, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=131072, tie_word_embeddings=False,
)  # fmt: skip
LLAMA_32_1B = dict(
    model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
)  # fmt: skip

# DeepSeek-style MoE: routed experts (n_routed_experts) beside always-on shared ones, the first layers dense, and
# multi-head latent attention (low-rank q and kv projections with their own norms)
DEEPSEEK_V2_LITE = dict(
    model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
    num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2,
    num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400, tie_word_embeddings=False,
)  # fmt: skip
DEEPSEEK_V3 = dict(
    model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1,
    num_experts_per_tok=8, first_k_dense_replace=3, kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280, tie_word_embeddings=False, n_group=8, topk_group=4,
)  # fmt: skip


@pytest.mark.parametrize(
    "config, billions",
    [
        (GEMMA3_4B, 4.30),
        (GEMMA2_2B, 2.61),
        (PHI3_MINI, 3.82),
        (MISTRAL_NEMO, 12.25),
        (LLAMA_32_1B, 1.24),  # tied: one 128256 x 2048 table
        ({k: v for k, v in LLAMA_32_1B.items() if k != "tie_word_embeddings"}, 1.50),  # llama's default: untied
        (DEEPSEEK_V2_LITE, 15.71),
        (DEEPSEEK_V3, 671.03),  # without the multi-token prediction layer, which transformers does not build
    ],
    ids=["gemma-3-4b-it", "gemma-2-2b", "phi-3-mini", "mistral-nemo", "llama-3.2-1b", "llama-without-tie-key"]
    + ["deepseek-v2-lite", "deepseek-v3"],
)
def test_every_parameter_of_published_configs_is_counted(config, billions):
    """Against the model transformers builds from the same config.json, and the published size."""
    arch = Arch.from_config(config)
    assert arch.params == on_meta(config)
    assert arch.params / 1e9 == pytest.approx(billions, abs=0.01)


def test_a_vision_tower_the_run_does_not_load_is_not_counted():
    """transformers' causal-LM class for Llama 3.2 Vision (mllama) is the text model alone: the run loads no vision
    tower, so none is counted (it was: 0.64B more than the run holds)."""
    mllama = dict(
        model_type="mllama",
        text_config=dict(model_type="mllama_text_model", hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38], tie_word_embeddings=False),
        vision_config=dict(model_type="mllama_vision_model", hidden_size=1280, intermediate_size=5120,
                           num_hidden_layers=32, num_global_layers=8, num_attention_heads=16, image_size=560,
                           patch_size=14, max_num_tiles=4, vision_output_dim=7680),
    )  # fmt: skip
    # within 35K: the cross-attention layers' q/k norms and gates and the 8 extra embedding rows are not counted
    assert Arch.from_config(mllama).params == pytest.approx(on_meta(mllama), abs=35_000)
    assert Arch.from_config(GEMMA3_4B).params > Arch.from_config(GEMMA3_4B, with_vision=False).params  # loaded


def test_a_config_the_plan_cannot_read_is_a_sentence(tmp_path):
    """GPT-2 names its width n_embd: the estimate (and the run's plan) ended in KeyError 'hidden_size'."""
    folder = json_folder_for(dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=1000), tmp_path)
    with pytest.raises(UserError, match=r"its config.json \(gpt2\) has no 'hidden_size'"):
        api.estimate(folder, "lora", seq=128, batch=1, vram_gib=8, ram_gib=64)


def test_deepseek_experts_shared_experts_and_latent_attention_are_where_the_model_has_them():
    arch = Arch.from_config(DEEPSEEK_V2_LITE)
    assert (arch.experts, arch.moe_layers, arch.shared_intermediate) == (64, 26, 2 * 1408)
    assert not arch.layer_is_moe(0) and arch.layer_is_moe(1)  # first_k_dense_replace=1
    # LoRA's target names that exist: q_proj and o_proj of the attention (no k_proj or v_proj), the dense and the
    # shared experts' MLPs, and one rank-r pair per routed expert
    attention = 27 * 16 * ((2048 + 16 * 192) + (16 * 128 + 2048))
    dense = 1 * 16 * 3 * (2048 + 10944)
    shared = 26 * 16 * 3 * (2048 + 2816)
    experts = 26 * 64 * 16 * ((2 * 1408 + 2048) + (2048 + 1408))
    assert arch.lora_params(16) == attention + dense + shared + experts


def test_moe_sizes_count_all_experts_and_adapters_only_where_they_go():
    moe = Arch.from_config(QWEN3_30B_A3B)
    assert 30.0e9 < moe.params < 31.0e9  # all 128 experts, not the 3B a token uses
    # bitsandbytes quantizes nn.Linear layers only; transformers keeps each layer's experts as fused 3-D tensors
    attention = 48 * (2048 * 4096 * 2 + 2048 * 512 * 2)
    assert moe.linear_params == attention and moe.expert_params == 48 * 128 * 3 * 2048 * 768
    adapters = 48 * 16 * ((2048 + 4096) * 2 + (2048 + 512) * 2)  # q, k, v, o
    assert moe.lora_params(16, experts=False) == adapters
    # one rank-16 pair per expert on gate_up [1536 x 2048] and down [2048 x 768]
    assert moe.lora_params(16) == adapters + 48 * 128 * 16 * ((1536 + 2048) + (2048 + 768))
    sparse_config = dict(QWEN3_30B_A3B, decoder_sparse_step=2, mlp_only_layers=[1])
    sparse = Arch.from_config(sparse_config)
    assert sparse.moe_layers == 23 and sparse.params == on_meta(sparse_config)  # layers 1, 3, .., 47 less layer 1
    e = api.estimate(json_folder_for(QWEN3_30B_A3B), "qlora", seq=2048, batch=1, vram_gib=6.0, ram_gib=512)
    assert (
        e["params_b"] > 30 and e["fits"] is False and e["min_vram_gib"] > 6.0
    )  # the per-expert adapters alone: 4.8 GiB


def json_folder_for(config: dict, folder=None) -> str:
    import tempfile
    from pathlib import Path

    path = Path(folder or tempfile.mkdtemp())
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_vision_tower_of_a_multimodal_config_is_counted():
    vision = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, patch_size=14, image_size=56)  # fmt: skip
    text = dict(model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1000)  # fmt: skip
    config = dict(model_type="gemma3", text_config=text, vision_config=vision, mm_tokens_per_image=16)
    assert Arch.from_config(config).params == on_meta(config)
    assert Arch.from_config(config, with_vision=False).params < Arch.from_config(config).params


def test_estimate_is_the_plan_and_honours_seq_and_batch():
    """The issue's examples: one verdict whose figures are the plan's, with the preset for the asked settings."""
    for seq in (8192, 32768):
        e = api.estimate("Qwen/Qwen3-4B", "qlora", seq=seq, batch=1, vram_gib=16, ram_gib=64)
        assert e["fits"] is True and e["peak_vram_gib"] == e["plan"]["peak_vram_gib"] <= 16 / SLACK
        assert e["peak_ram_gib"] == e["plan"]["peak_ram_gib"]
        assert sum(e["peak_parts_gib"].values()) == pytest.approx(e["peak_vram_gib"], abs=0.01)
        assert (e["preset"]["max_seq_length"], e["preset"]["batch_size"]) == (seq, 1)
    full = api.estimate("Qwen/Qwen3-4B", "full", seq=512, batch=1, vram_gib=20, ram_gib=64)
    assert full["fits"] is True and full["plan"]["grads_released"] and full["preset"]["grad_accum"] == 1
    big = api.estimate("Qwen/Qwen3-32B", "qlora", seq=2048, batch=1, vram_gib=24, ram_gib=32)
    assert big["fits"] is False and big["plan"] is not None and big["peak_ram_gib"] > 32
    assert f"needs about {big['peak_ram_gib']:.1f} GiB of host RAM" in big["reason"]
    assert big["preset"]["fits"] is False


def test_the_run_plans_with_the_same_computation(tmp_path, monkeypatch):
    """engine.models.loading.plan_memory (the run, before it loads anything) and the estimate give the same plan for the
    same settings and budget."""
    from engine.core.hardware import Placement
    from engine.models.loading import plan_memory

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "7.0")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    folder = json_folder_for(LLAMA_31_8B, tmp_path / "llama")
    spec = JobSpec(model=folder, data="-", method="qlora", max_seq_length=2048, batch_size=2)
    run = plan_memory(spec, LLAMA_31_8B, Placement("cuda", "bf16", "planned for a GPU"))
    e = api.estimate(folder, "qlora", seq=2048, batch=2)
    assert run.budget_gib == 7.0 and run.offload_activations and e["fits"] and e["plan"] == run.as_dict()
    assert e["peak_vram_gib"] == run.peak_vram_gib and e["preset"]["offload"] != "none"


def test_the_estimate_plans_the_length_the_run_trains_at(tmp_path):
    """A max_seq_length above the model's context is cut to it by the run (engine.models.context.fit_to_context):
    the estimate, its plan and its preset are those of the context's length, and say so."""
    folder = json_folder_for(dict(LLAMA_31_8B, max_position_embeddings=8192), tmp_path / "llama")
    e = api.estimate(folder, "qlora", seq=100_000, batch=1, vram_gib=24, ram_gib=64)
    at_context = api.estimate(folder, "qlora", seq=8192, batch=1, vram_gib=24, ram_gib=64)
    assert e["seq"] == 8192 and e["plan"] == at_context["plan"] and e["preset"] == at_context["preset"]
    assert "longer than this model's context of 8192 tokens" in e["note"] and "note" not in at_context


def test_a_batch_or_length_of_0_is_refused_not_replaced():
    with pytest.raises(UserError, match="batch_size"):
        api.estimate("Qwen/Qwen3-4B", "qlora", seq=1024, batch=0, vram_gib=24, ram_gib=64)
    with pytest.raises(UserError, match="max_seq_length"):
        api.estimate("Qwen/Qwen3-4B", "qlora", seq=0, batch=1, vram_gib=24, ram_gib=64)


@pytest.mark.parametrize("seq, batch, measured", [(1024, 2, 4.67), (512, 1, 2.16)])
def test_a_cpu_run_counts_its_training_step_in_host_ram(seq, batch, measured):
    """On a machine without a GPU the training step is in host RAM, in fp32: the peak RSS of these LoRA runs of a
    218M-parameter Qwen3 (python -m engine.run on the CPU under /usr/bin/time) was 4.67 and 2.16 GiB, where the plan
    said 1.41 (the checkpoint while it loads, as on a GPU). The figure is within 6% above them, and a machine with less
    free RAM is told so."""
    config = dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=64, vocab_size=65536,
                  tie_word_embeddings=True)  # fmt: skip
    arch = Arch.from_config(config)
    spec = JobSpec(model="m", data="-", method="lora", max_seq_length=seq, batch_size=batch, lora_r=16, lora_alpha=16)
    planned = plan_for(arch, spec, None, 64, "fp32").peak_ram_gib
    assert measured <= planned <= measured * 1.06
    v = verdict(arch, spec, None, measured - 0.5, "fp32")
    assert not v.fits and v.peak_ram_gib == planned and "and the training step on the CPU" in v.reason


def test_a_cpu_full_fine_tune_counts_its_optimizer_step_in_host_ram():
    """Fully fine-tuning the same 218M Qwen3 on the CPU at 1 x 256 tokens (python -m engine.run under /usr/bin/time,
    fp32 AdamW: the default on a CPU) peaked at 4,521,428 KiB RSS, in the optimizer step, where the plan said 4.26 GiB
    (the training step's figure): the plan, and the fit badge's RAM figure on a machine without a GPU, count the
    step's temporaries and hold it within 6% above."""
    config = dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=64, vocab_size=65536,
                  tie_word_embeddings=True)  # fmt: skip
    measured = 4_521_428 / 2**20
    spec = JobSpec(model="m", data="-", method="full", max_seq_length=256, batch_size=1)
    planned = plan_for(Arch.from_config(config), spec, None, 64, "fp32").peak_ram_gib
    assert measured <= planned <= measured * 1.06


def test_configs_are_found_offline_in_a_folder_and_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = json_folder_for(MIXTRAL_8X7B, tmp_path / "mixtral")
    assert api.estimate(folder, "qlora", seq=1024, batch=1, vram_gib=48, ram_gib=512)["params_b"] == pytest.approx(
        by_hand(MIXTRAL_8X7B) / 1e9, abs=0.01
    )
    cache = tmp_path / "hub"
    snapshot = cache / "models--someorg--moe-model" / "snapshots" / "0123abcd"
    json_folder_for(QWEN3_30B_A3B, snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    e = api.estimate("someorg/moe-model", "lora", seq=1024, batch=1, vram_gib=80, ram_gib=512)
    assert e["params_b"] == pytest.approx(by_hand(QWEN3_30B_A3B) / 1e9, abs=0.01)
    with pytest.raises(UserError, match="not in the local cache"):
        api.estimate("someorg/not-there", "lora", vram_gib=80)


SWEEPS = [  # the GPU sweep's configurations (bench/budget_sweep.py): arch, method, seq, batch, budgets
    (Arch.from_config(LLAMA_31_8B), "qlora", 2048, 2, [round(5.6 + 0.2 * i, 1) for i in range(13)]),
    (Arch.from_config(QWEN3_4B), "lora", 2048, 2, [round(6.0 + 0.5 * i, 1) for i in range(9)]),
    (Arch.from_config(dict(QWEN3_4B, hidden_size=5120, intermediate_size=17408, num_hidden_layers=40,
                           num_attention_heads=40, tie_word_embeddings=False)),
     "qlora", 2048, 1, [round(3.6 + 0.2 * i, 1) for i in range(13)]),
]  # fmt: skip


@pytest.mark.parametrize("arch, method, seq, batch, budgets", SWEEPS, ids=["llama8b", "qwen3_4b", "qwen3_14b"])
def test_planned_peak_is_monotone_in_the_budget_and_within_it(arch, method, seq, batch, budgets):
    spec = JobSpec(model="m", data="-", method=method, max_seq_length=seq, batch_size=batch)
    least = smallest_budget(arch, spec)
    peaks = []
    for budget in budgets:
        if budget < least:
            with pytest.raises(UserError, match=f"needs at least {least:.1f} GiB"):
                plan_for(arch, spec, budget, None)
            v = verdict(arch, spec, budget, None)
            assert not v.fits and v.min_budget_gib == least and v.plan is None
            continue
        p = plan_for(arch, spec, budget, None)
        assert p.peak_vram_gib * SLACK <= budget
        peaks.append(p.peak_vram_gib)
    assert peaks == sorted(peaks) and peaks  # more budget never plans a smaller peak, and some budget is planned
    assert plan(arch, method, seq, batch, least)  # the minimum named is one that plans


@pytest.mark.parametrize(
    "method, seq, batch, gpus, budget",
    [
        ("full", 2048, 1, 1, 24.0),  # its refusal said 34.8 here and 34.6 at 0.5 GiB (a small card's loss chunks)
        ("full", 2048, 1, 1, 0.5),  # smallest_budget said 34.9, and 34.8 plans
        ("full", 2048, 1, 4, 24.0),  # its refusal said 34.7, and that does not plan
        ("qlora", 3000, 3, 1, 2.0),
        ("lora", 4096, 2, 1, 0.5),
    ],
)
def test_a_refusal_names_the_smallest_budget_that_plans(method, seq, batch, gpus, budget):
    """The sentence's figure and min_vram_gib are one number N: a run plans at N GiB and not at N - 0.1."""
    import re

    arch = Arch.from_config(LLAMA_31_8B)
    spec = JobSpec(model="m", data="-", method=method, max_seq_length=seq, batch_size=batch, gpus=gpus)
    with pytest.raises(UserError) as refused:
        plan_for(arch, spec, budget, None)
    least = float(re.search(r"needs at least ([\d.]+) GiB", str(refused.value)).group(1))
    v = verdict(arch, spec, budget, 512)
    assert v.min_budget_gib == least and v.reason == str(refused.value)
    assert plan_for(arch, spec, least, None)
    with pytest.raises(UserError):
        plan_for(arch, spec, round(least - 0.1, 1), None)


def test_an_out_of_memory_error_mid_run_leaves_a_resumable_checkpoint(tiny_llama, identity_file, tmp_path):
    """A real allocation failure in the 4th step's forward (the CPU allocator refusing an impossible size, raised
    from a forward hook torch offers for every module) ends the run with step 3 saved and a sentence on what to
    lower; resuming finishes the run from there."""
    from engine.core.runlog import RunLog, read_metrics
    from engine.training.dispatch import train
    from engine.training.steps import latest_checkpoint

    spec = JobSpec(model=str(tiny_llama), data=str(identity_file), method="lora", max_steps=6, batch_size=2,
                   learning_rate=5e-3, gradient_checkpointing=False, seed=0)  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = []
    said = "Ran out of memory at step 4.*saved step 3.*resume continues from it"

    def impossible():  # more than any machine can allocate: a real failure
        torch.empty(2**62, dtype=torch.uint8)

    with failing_forward(4, impossible), pytest.raises(UserError, match=said):
        train(spec, run_dir, RunLog(run_dir), False, lambda: False, lines.append)
    assert latest_checkpoint(run_dir).name == "step-000003"
    assert any("out of memory during step 4" in line for line in lines)
    # step 3's record waits for step 4's passes to be launched (sft.StepRecords): written as the run ended all the same
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2, 3]
    train(spec, run_dir, RunLog(run_dir), True, lambda: False, lines.append)
    assert "resume: from step-000003" in lines
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_an_out_of_memory_error_in_the_first_step_saves_nothing(tiny_llama, identity_file, tmp_path):
    """Out of memory in a new run's first step saved step-000000, a checkpoint of untrained weights, and said "The
    run saved step 0; resume continues from it". Nothing is saved, and the sentence says to start again smaller."""
    from engine.core.runlog import RunLog
    from engine.training.dispatch import train

    spec = JobSpec(model=str(tiny_llama), data=str(identity_file), method="lora", max_steps=3, batch_size=2,
                   gradient_checkpointing=False, seed=0)  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def impossible():
        torch.empty(2**62, dtype=torch.uint8)

    said = "Ran out of memory in the first step, before anything was trained; start again with a smaller batch size"
    with failing_forward(1, impossible), pytest.raises(UserError, match=said):
        train(spec, run_dir, RunLog(run_dir), False, lambda: False, lambda m: None)
    assert not (run_dir / "checkpoints").exists()


def test_checkpoints_on_a_time_interval_by_default(tiny_llama, identity_file, tmp_path):
    from engine.core.runlog import RunLog
    from engine.training.dispatch import train

    assert JobSpec(model="m", data="d").save_every_minutes == 10  # on unless the job turns it off
    spec = JobSpec(model=str(tiny_llama), data=str(identity_file), method="lora", max_steps=3, batch_size=2,
                   gradient_checkpointing=False, save_every_minutes=1e-9, keep_checkpoints=5)  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(spec, run_dir, RunLog(run_dir), False, lambda: False, lambda m: None)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == [f"step-{i:06d}" for i in (1, 2, 3)]
    with pytest.raises(UserError, match="save_every_minutes"):
        JobSpec(model="m", data="d", save_every_minutes=-1)


def test_an_out_of_memory_error_in_the_optimizer_step_keeps_the_latest_checkpoint(tiny_llama, identity_file, tmp_path):
    """Weights part-updated when the allocation fails are no step's: nothing is saved, the message names the latest
    checkpoint, and resume continues from it (the failure from a hook torch offers on every optimizer step)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    spec = JobSpec(model=str(tiny_llama), data=str(identity_file), method="lora", max_steps=5, batch_size=2,
                   gradient_checkpointing=False, save_every=2, seed=0)  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    steps = []

    def fail_in_the_fourth_update(optimizer, args, kwargs):
        steps.append(optimizer)
        if len(steps) == 4:
            torch.empty(2**62, dtype=torch.uint8)

    hook = register_optimizer_step_pre_hook(fail_in_the_fourth_update)
    _fails_then_resumes(spec, run_dir, hook, "at step 4.*updating the weights.*latest checkpoint", "step-000002")


def _fails_then_resumes(spec, run_dir, hook, match: str, checkpoint: str) -> None:
    """A run that fails with `match` while `hook` (removed after) makes an allocation fail, leaving `checkpoint` the
    latest; resumed, it continues from that one and finishes."""
    from engine.core.runlog import RunLog
    from engine.training.dispatch import train
    from engine.training.steps import latest_checkpoint

    try:
        with pytest.raises(UserError, match=match):
            train(spec, run_dir, RunLog(run_dir), False, lambda: False, lambda m: None)
    finally:
        hook.remove()
    assert latest_checkpoint(run_dir).name == checkpoint
    lines = []
    train(spec, run_dir, RunLog(run_dir), True, lambda: False, lines.append)
    assert f"resume: from {checkpoint}" in lines and (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_a_micro_batch_longer_than_any_plan_is_named_in_the_log():
    """A micro-batch whose tokens the budget cannot hold even with every layer recomputed (a longer batch than the
    run planned for) gets a log line saying what to lower before it runs."""
    from tiny import ARCHS
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.memory.checkpointing import install

    spec = dict(ARCHS["llama"], vocab_size=64)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    lines = []
    install(model, "lora", 0.01, fused_loss=False, log=lines.append)
    model.train()
    ids = torch.ones(1, 8, dtype=torch.long)
    model(input_ids=ids, labels=ids).loss.backward()
    assert any("8 tokens in one micro-batch need more than the 0.0 GiB budget" in line for line in lines), lines
    assert "lower batch_size or max_seq_length" in lines[-1]


def test_a_resume_keeps_the_fp16_loss_scale(tiny_llama, identity_file, tmp_path, monkeypatch):
    """fp16 training (a T4) scales its loss by what the scaler has learned the gradients hold: a resume that started
    the scale over (65,536) skipped its first updates as overflows while the schedule moved on, so it did not continue
    the run. A CPU scaler that doubles its scale every step stands in for the GPU's (fp32 here: scaling by a power of
    two changes nothing else): after a resume from step 2 it holds the scale of the uninterrupted run."""
    from engine.core.runlog import RunLog
    from engine.training import distributed
    from engine.training.dispatch import train

    made = []

    def scaler(placement, world):
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1))
        return made[-1]

    monkeypatch.setattr(distributed, "grad_scaler", scaler)
    spec = JobSpec(model=str(tiny_llama), data=str(identity_file), method="lora", max_steps=4, batch_size=2,
                   gradient_checkpointing=False, save_every=2, keep_checkpoints=5, seed=0)  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run_dir in (whole, cut):
        run_dir.mkdir()
        train(spec, run_dir, RunLog(run_dir), False, lambda: False, lambda m: None)
    assert made[0].get_scale() == 2.0**14  # doubled at each of the 4 steps
    shutil.rmtree(cut / "adapter")
    for later in ("step-000003", "step-000004"):
        shutil.rmtree(cut / "checkpoints" / later, ignore_errors=True)
    train(spec, cut, RunLog(cut), True, lambda: False, lambda m: None)
    assert made[-1].get_scale() == made[0].get_scale()


def test_an_out_of_memory_error_in_validation_saves_the_step_it_follows(tiny_llama, identity_file, tmp_path):
    """Validation runs after a step's update: an allocation failure in its forward is no partial update, so the run
    saves that completed step and says so (it said the weights were being updated, and resume went back to the
    latest checkpoint, losing the steps since)."""
    from engine.core.runlog import read_metrics

    spec = JobSpec(model=str(tiny_llama), data=str(identity_file), method="lora", max_steps=6, batch_size=2,
                   gradient_checkpointing=False, save_every=0, eval_fraction=0.5, eval_steps=3, seed=0)  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def fail_in_validation(module, args):
        if type(module).__name__ == "LlamaForCausalLM" and not module.training:
            torch.empty(2**62, dtype=torch.uint8)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(fail_in_validation)
    _fails_then_resumes(spec, run_dir, hook, "saved step 3; resume continues from it", "step-000003")
    # step 3's record went with its validation (written after it, with its eval_loss): the curve goes on from there
    assert [m["step"] for m in read_metrics(run_dir) if "loss" in m] == [1, 2, 4, 5, 6]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_steps_record_is_written_when_the_next_step_launches(tmp_path, device):
    """engine.training.sft.StepRecords: a step's record (and status.json's step) is written when the next one is
    held or the loop writes it; a CUDA gradient norm is read back then, from pinned memory, not at the step's end."""
    from engine.core.runlog import RunLog, read_metrics
    from engine.training.sft import StepRecords

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    records = StepRecords(RunLog(tmp_path))
    records.hold(torch.tensor(1.5, device=device), step=1, loss=2.0)
    assert read_metrics(tmp_path) == []
    records.hold(torch.tensor(0.25, device=device), step=2, loss=1.0)
    assert [(m["step"], m["grad_norm"]) for m in read_metrics(tmp_path)] == [(1, 1.5)]
    records.write()
    records.write()  # nothing held: nothing written twice
    assert [(m["step"], m["grad_norm"]) for m in read_metrics(tmp_path)] == [(1, 1.5), (2, 0.25)]
    assert json.loads((tmp_path / "status.json").read_text())["step"] == 2
