"""The Model tab and the Train tab's preset as a user meets them: typed model ids, the fit badge beside the preset,
models the hub will not hand over without a token."""

from engine import api


def test_fit_badge_plans_for_the_gpus_the_run_trains_on(monkeypatch):
    """A run trains on every visible GPU; full fine-tuning over two is sharded (FSDP2) with nothing in host RAM, a
    different plan from one GPU's. The badge said a 4B full fine-tune fits two 24 GB cards (the one-GPU plan, its
    optimizer in host RAM) while the Train tab's preset, planned for both, said it does not."""
    from ui import model_tab, train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] * 2)
    note = train_tab.apply_preset("Qwen/Qwen3-4B", "full")[0]
    badge = model_tab.fit_badge("Qwen/Qwen3-4B", "full")
    assert note.startswith("⚠ The 24 GB preset says this does not fit"), note
    assert badge.startswith("⚠ Will not fit"), badge
    # where both fit, they name the same plan
    note = train_tab.apply_preset("Qwen/Qwen3-1.7B", "full")[0]
    badge = model_tab.fit_badge("Qwen/Qwen3-1.7B", "full")
    assert badge.startswith("✅ Fits") and note.startswith("Preset for this GPU"), (badge, note)
    peak = badge.split("about ")[1].split(" GiB")[0]
    assert f"peaks at {peak} GiB" in note, (badge, note)
    from ui import i18n

    assert "each of" not in i18n.message(badge, "ru") and "each of" not in i18n.message(badge, "zh")
