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
