"""A LoRA adapter (adapter_config.json and weights, no config.json) given as the model, in a folder or as a hub
repository in the local cache (offline): the notebook API loads its base with the adapter on it, as Unsloth does; chat
uses it on its base; the estimate, the Model tab's fit badge and a run refuse it before loading, naming the base."""

import json

import pytest
import torch
from helpers import tiny_spec

from engine import api
from engine.core.errors import UserError
from engine.models.adapter_source import is_adapter


@pytest.fixture
def adapter(tiny_qwen3, tmp_path):
    """A saved adapter of the tiny Qwen3 (its B matrices random, so it changes the logits) and its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    folder = tmp_path / "my-adapter"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_qwen3).save_pretrained(folder)
    assert is_adapter(folder)
    return folder


def _in_hub_cache(folder, repo_id, cache, monkeypatch):
    """Put `folder` into the hub cache `cache` as the main revision of `repo_id`, as a download leaves it."""
    from huggingface_hub import constants

    from engine.models.hub import cache_folder

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo, commit = cache_folder(repo_id), "1" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in folder.iterdir():
        (repo / "snapshots" / commit / f.name).write_bytes(f.read_bytes())


def test_estimate_badge_and_run_refuse_an_adapter_folder_naming_its_base(adapter, tiny_qwen3, runs, identity_file):
    from ui import i18n, model_tab

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    said = f"'{adapter}' is a LoRA adapter, not a model: pick its base model '{base}' to train or estimate"
    for method in ("qlora", "lora", "full"):
        with pytest.raises(UserError, match=f"^{said}"):
            api.estimate(str(adapter), method, vram_gib=8, ram_gib=64)
        assert model_tab.fit_badge(str(adapter), method).startswith(f"Memory estimate unavailable: {said}")
    for lang, named in (("zh", f"基座模型「{base}」"), ("ru", f"базовую модель «{base}»")):  # the page's language
        assert named in i18n.message(model_tab.fit_badge(str(adapter), "qlora"), lang)
    with pytest.raises(UserError, match=f"^{said}"):
        api.start(tiny_spec(str(adapter), str(identity_file)), runs)
    assert not runs.exists() or not any(runs.iterdir())  # refused before a run folder was made
    assert api.estimate(base, "lora", vram_gib=8, ram_gib=64)["fits"]  # the model it names estimates


def test_a_hub_adapter_in_the_cache_loads_on_its_base_in_a_notebook_and_is_refused_by_the_estimate(
    adapter, tmp_path, monkeypatch
):
    from engine.chat.infer import locate
    from tunesmith import FastLanguageModel

    _in_hub_cache(adapter, "someone/tiny-adapter", tmp_path / "hub", monkeypatch)
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    with pytest.raises(UserError, match=f"^'someone/tiny-adapter' is a LoRA adapter, not a model: .*'{base}'"):
        api.estimate("someone/tiny-adapter", "qlora", vram_gib=8, ram_gib=64)
    assert locate("someone/tiny-adapter")[0] == base  # chat (and export) use it on its base

    hub, _ = FastLanguageModel.from_pretrained("someone/tiny-adapter", max_seq_length=64, load_in_4bit=False)
    local, tok = FastLanguageModel.from_pretrained(str(adapter), max_seq_length=64, load_in_4bit=False)
    plain, _ = FastLanguageModel.from_pretrained(base, max_seq_length=64, load_in_4bit=False)
    assert hub.peft_config["default"].r == 4
    ids = tok(["Who are you? I am Nova."], return_tensors="pt")["input_ids"]
    hub.eval(), local.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(hub(ids).logits, local(ids).logits)
        assert not torch.allclose(hub(ids).logits, plain(ids).logits)  # the adapter is on, not the base alone
