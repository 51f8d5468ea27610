"""Presets, catalog and the memory estimator."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.api import catalog, estimate, model_arch
from engine.core.errors import UserError
from engine.memory.estimate import Arch
from engine.memory.estimate import estimate as raw_estimate
from engine.memory.offload import plan as offload_plan
from engine.models import presets

ROOT = Path(__file__).resolve().parent.parent
TIER_FILES = sorted((ROOT / "presets").rglob("tier-*.yaml"))


def test_every_tier_has_a_file_and_every_file_validates():
    assert [p.name for p in TIER_FILES] == [presets.tier_file(t).name for t in presets.TIERS]
    for path in TIER_FILES:
        table = presets.load_tier(path)
        assert set(table) == set(presets.CLASSES)
        assert yaml.safe_load(path.read_text())["vram_gb"] == int(path.stem[5:7])


@pytest.mark.parametrize("path", TIER_FILES, ids=lambda p: p.name)
def test_each_preset_fits_its_tier_and_says_why_not(path):
    tier = yaml.safe_load(path.read_text())["vram_gb"]
    for cls, methods in presets.load_tier(path).items():
        arch = model_arch(presets.REFERENCE[cls])
        for method, p in methods.items():
            if isinstance(p, presets.NoFit):
                assert "needs about" in p.reason
                assert not raw_estimate(arch, method, 512, 1).fits(tier * presets.USABLE)
                with pytest.raises(UserError):  # not even with the offload manager
                    offload_plan(arch, method, 512, 1, tier * presets.USABLE, presets.OFFLOAD_RAM_GIB)
                continue
            if p.offload != "none":  # fits only by keeping something in host RAM: the run's own planner agrees
                plan = offload_plan(
                    arch, method, p.max_seq_length, p.batch_size, tier * presets.USABLE, presets.OFFLOAD_RAM_GIB
                )
                kind = "weights" if plan.streamed else "optimizer" if plan.optimizer_in_host else "activations"
                assert kind == p.offload and plan.peak_ram_gib <= presets.OFFLOAD_RAM_GIB, (path.name, cls, method)
                continue
            est = raw_estimate(
                arch,
                method,
                p.max_seq_length,
                p.batch_size,
                p.lora_r,
                checkpointing=p.gradient_checkpointing,
                optimizer=p.optimizer,
            )
            assert est.fits(tier * presets.USABLE), (path.name, cls, method)


def test_bigger_cards_never_get_worse_presets():
    """A bigger card never needs more offloading (weights, then optimizer or activations, then none) and, at the same
    offloading, never gets fewer tokens per micro-step."""
    rank = {"weights": 0, "optimizer": 1, "activations": 1, "none": 2}
    for cls in presets.CLASSES:
        for method in presets.METHODS:
            keys = []
            for f in TIER_FILES:
                p = presets.load_tier(f)[cls][method]
                fits = not isinstance(p, presets.NoFit)
                keys.append((rank[p.offload], p.max_seq_length * p.batch_size) if fits else (-1, 0))
            assert keys == sorted(keys), (cls, method, keys)


def test_unknown_and_mistyped_keys_fail(tmp_path):
    doc = yaml.safe_load(presets.tier_file(24).read_text())
    doc["presets"]["0.5b"]["lora"]["batch_sise"] = 2
    bad = tmp_path / "tier-24gb.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="0.5b/lora: unknown key 'batch_sise'"):
        presets.load_tier(bad)
    doc["presets"]["0.5b"]["lora"].pop("batch_sise")
    doc["presets"]["0.5b"]["lora"]["batch_size"] = "two"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="'batch_size' should be int"):
        presets.load_tier(bad)
    doc["presets"]["0.5b"]["lora"]["batch_size"] = True
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="'batch_size' should be int"):
        presets.load_tier(bad)


def test_estimate_grows_with_sequence_batch_and_rank():
    arch = model_arch("Qwen/Qwen3-4B")
    for method in presets.METHODS:
        base = raw_estimate(arch, method, 1024, 1, 16).peak_vram_gib
        assert raw_estimate(arch, method, 2048, 1, 16).peak_vram_gib > base
        assert raw_estimate(arch, method, 1024, 2, 16).peak_vram_gib > base
        if method != "full":
            assert raw_estimate(arch, method, 1024, 1, 64).peak_vram_gib > base
        assert raw_estimate(arch, method, 1024, 1, 16, checkpointing=False).peak_vram_gib > base
    assert raw_estimate(arch, "qlora", 1024, 1).peak_vram_gib < raw_estimate(arch, "lora", 1024, 1).peak_vram_gib


def test_catalog_entries_are_complete_and_sizes_agree():
    for m in catalog():
        assert {"name", "id", "id_4bit", "params_b", "family", "template", "licence", "arch"} <= set(m), m["name"]
        assert Arch(*m["arch"]).params / 1e9 == pytest.approx(m["params_b"], rel=0.03), m["name"]


@pytest.mark.parametrize("arch_name", ["llama", "qwen3"])
def test_parameter_count_from_config_matches_the_real_model(arch_name, tmp_path):
    import torch
    from tiny import make_model
    from transformers import AutoModelForCausalLM

    path = make_model(arch_name, tmp_path / arch_name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    real = sum(p.numel() for p in model.parameters())
    counted = model_arch(str(path)).params
    assert counted == real  # Qwen3's per-head q/k norms included


@pytest.mark.parametrize(
    "gib, tier", [(5.8, 6), (7.6, 8), (11.7, 12), (14.6, 16), (23.6, 24), (47.5, 48), (79.1, 80), (139.8, 80)]
)
def test_tier_from_card_memory(gib, tier):
    assert presets.pick_tier(gib) == tier


def test_too_small_a_card_says_so():
    with pytest.raises(UserError, match="at least a 6 GB card"):
        presets.pick_tier(3.9)


def test_estimate_cli_json():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "estimate", "--model", "Qwen/Qwen3-4B", "--method", "qlora", "--vram", "14.6"]
        + ["--ram", "64"],  # a machine with 64 GiB of RAM free, whatever this one has
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["tier_gb"] == 16 and info["fits"] is True
    assert info["peak_vram_gib"] == info["plan"]["peak_vram_gib"] > 0 and info["peak_ram_gib"] > 0
    assert info["preset"]["max_seq_length"] == info["seq"] and info["plan"]["gradient_checkpointing"] in (True, False)
    too_big = estimate("Qwen/Qwen3-32B", "lora", vram_gib=8.0)
    assert too_big["fits"] is False and too_big["preset"]["fits"] is False


def test_estimate_of_a_local_model_folder(tiny_llama):
    info = estimate(str(tiny_llama), "lora", seq=128, batch=1, vram_gib=8)
    assert info["params_b"] < 0.001 and info["fits"] is True


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_a_run_with_the_presets_settings_makes_the_estimates_plan(method, tmp_path, monkeypatch):
    """The Train tab's preset, applied, gives the run the plan the estimate showed, also where that plan recomputes no
    layer: a preset that turned checkpointing off there gave the run no budget to plan with (no 16-bit copies of the
    NF4 weights, graphs of 8 shapes unchecked) and another peak. The config is Qwen3-0.6B's."""
    from engine.core.hardware import Placement
    from engine.models.loading import plan_memory
    from engine.spec.jobspec import JobSpec

    config = dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                  tie_word_embeddings=True, max_position_embeddings=40960)  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "24")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    e = estimate(str(tmp_path), method, vram_gib=24, ram_gib=64)
    assert e["plan"]["checkpointed_layers"] == 0
    p = e["preset"]
    spec = JobSpec(model=str(tmp_path), data="-", method=method, max_seq_length=p["max_seq_length"],
                   batch_size=p["batch_size"], grad_accum=p["grad_accum"], lora_r=p["lora_r"],
                   lora_alpha=p["lora_alpha"], gradient_checkpointing=p["gradient_checkpointing"])  # fmt: skip
    run = plan_memory(spec, config, Placement("cuda", "bf16", "planned for a GPU"))
    assert run.as_dict() == e["plan"] and run.peak_vram_gib == e["peak_vram_gib"]
