"""The Data tab blames the right thing (issue 25, item 7): a model that cannot be used (outside a shared app's
workspace, or a hub model while offline) is named as the model's problem, and the dataset stays in use."""

import pytest


@pytest.fixture
def dataset(runs, identity_file):
    """The identity rows inside the workspace's data/ folder."""
    path = runs.parent / "data" / "identity.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(identity_file.read_text())
    return path


def test_a_model_outside_a_shared_workspace_is_not_a_dataset_error(dataset, tiny_llama, monkeypatch):
    from engine import api
    from engine.api import access
    from ui import data_tab

    monkeypatch.setattr(access, "_allowed_roots", None)
    api.restrict_files()
    used, summary, sample, _ = data_tab.inspect(str(dataset), str(tiny_llama), "", "auto", 1024)
    assert used == str(dataset) and "**Format:** alpaca" in summary and sample
    assert f"**Cannot use the model `{tiny_llama}`** (Model tab): This app is shared" in summary, summary
    assert "put the model folder inside it, or pick a hub model." in summary
    assert "Cannot use this dataset" not in summary and "upload the file" not in summary


def test_an_offline_hub_model_is_not_a_dataset_error(dataset, monkeypatch):
    from ui import data_tab

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    used, summary, _, _ = data_tab.inspect(str(dataset), "someone/not-in-the-cache", "", "auto", 1024)
    assert used == str(dataset) and "Cannot use this dataset" not in summary, summary
    assert "**Cannot use the model `someone/not-in-the-cache`** (Model tab): Could not download" in summary


def test_a_broken_dataset_is_still_a_dataset_error(runs, tmp_path, tiny_llama):
    from ui import data_tab

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": oops}\n')
    used, summary, _, _ = data_tab.inspect(str(bad), str(tiny_llama), "", "auto", 1024)
    assert used == "" and summary.startswith("**Cannot use this dataset:** bad.jsonl: row 1 is not valid JSON")


def test_a_gated_hub_dataset_in_a_shared_app_lending_no_token_says_what_the_host_can_do(runs, monkeypatch):
    """datasets refuses a gated or private dataset without a token as one it cannot find; in a shared app that sends
    no token of its machine (engine.core.hub_token) the sentence says how its host lends it."""
    import datasets

    from engine import api
    from engine.core import hub_token

    def refuse(path, *args, **kwargs):  # what datasets raises for a gated dataset without a token
        raise datasets.exceptions.DatasetNotFoundError(
            f"Dataset '{path}' is a gated dataset on the Hub. You must be authenticated to access it."
        )

    monkeypatch.setattr(datasets, "load_dataset_builder", refuse)
    with pytest.raises(api.UserError, match="check the name, the connection"):
        api.inspect_data("meta-llama/gated-data")
    monkeypatch.setenv(hub_token.WITHHELD_ENV, "1")
    with pytest.raises(api.UserError, match=r"if it is gated or private, this shared app .*--lend-hf-token"):
        api.inspect_data("meta-llama/gated-data")
