"""engine.models.hub's upload target check: where the token comes from, and the sentence when there is none."""

import pytest

from engine.core.errors import UserError
from engine.models.hub import check_target


def test_check_target_uses_the_token_a_login_stored(tmp_path, monkeypatch):
    from huggingface_hub import constants

    stored = tmp_path / "token"
    stored.write_text("hf_stored_login\n")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))  # where `hf auth login` writes it
    assert check_target("me/model") == "hf_stored_login"
    assert check_target("me/model", token="hf_typed") == "hf_typed"  # the Export tab's field wins
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert check_target("me/model") == "hf_env"


def test_check_target_without_any_token_says_to_log_in(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UserError, match="hf auth login") as info:
        check_target("me/model")
    assert "HF_TOKEN" in str(info.value) and "Export tab" in str(info.value)


def test_a_hub_id_typed_with_a_space_says_ids_have_none():
    """'Qwen/Qwen3 4B' (the model's name as its page titles it) got "Model folder ... does not exist; give an existing
    folder or a hub id", which does not say what is wrong with it; the sentence now says hub ids have no spaces and
    which id was likely meant. The same for a dataset."""
    from engine import api
    from engine.data.reading import source_rows
    from engine.models.loading import resolve_model

    said = "No folder 'Qwen/Qwen3 4B' here, and hub ids have no spaces: did you mean 'Qwen/Qwen3-4B'?"
    for call in (api.model_arch, resolve_model):
        with pytest.raises(UserError) as e:
            call("Qwen/Qwen3 4B")
        assert str(e.value) == said
    with pytest.raises(UserError, match="^No folder 'tatsu-lab/alpaca cleaned' here, and hub ids have no spaces"):
        source_rows("tatsu-lab/alpaca cleaned")
    with pytest.raises(UserError, match="^Dataset file 'data/my file.jsonl' does not exist"):
        source_rows("data/my file.jsonl")  # a file name, not a hub id
    from ui import i18n

    assert i18n.message(said, "zh") == "这里没有文件夹 'Qwen/Qwen3 4B'，且 Hub ID 不含空格：是否想填 'Qwen/Qwen3-4B'？"
