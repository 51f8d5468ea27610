"""The Model tab and the Train tab's preset as a user meets them: typed model ids, the fit badge beside the preset,
models the hub will not hand over without a token."""

import httpx
import pytest

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


def hub_refuses(status: int, error: str):
    """A stand-in for huggingface_hub's download functions that fails as the hub does without a token: 401 for a
    private or missing repository, 403 for a gated one whose licence was not accepted."""
    from huggingface_hub import errors

    def download(repo_id, *args, **kwargs):
        response = httpx.Response(status, request=httpx.Request("GET", f"https://huggingface.co/{repo_id}"))
        raise getattr(errors, error)(f"{status} Client Error", response=response)

    return download


@pytest.mark.parametrize(
    "status, error, said",
    [
        (403, "GatedRepoError", r"'meta-llama/Llama-3.2-1B' is gated: accept its licence on huggingface.co/.*hf auth"),
        (401, "RepositoryNotFoundError", r"No model 'meta-llama/Llama-3.2-1B' .*private.*hf auth login"),
    ],
)
def test_a_gated_or_private_model_without_a_token_is_one_clear_sentence(tmp_path, monkeypatch, status, error, said):
    """Typed on the Model tab (not in the catalog, not cached): the badge, the Train tab's preset, Start and the
    Download button say to accept the licence / log in, not 'check the name and the connection'."""
    import huggingface_hub

    from ui import model_tab, train_tab

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # not downloaded before
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_refuses(status, error))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub_refuses(status, error))
    model = "meta-llama/Llama-3.2-1B"
    assert model not in [m["id"] for m in api.catalog()]
    with pytest.raises(api.UserError, match=said):
        api.model_arch(model)
    assert "hf auth login" in model_tab.fit_badge(model, "qlora")
    assert "hf auth login" in train_tab.apply_preset(model, "qlora")[0]
    from engine.models.loading import resolve_model

    with pytest.raises(api.UserError, match=said):  # what the Download button and the run say
        resolve_model(model, log=lambda m: None)


@pytest.mark.parametrize(
    "status, error, kind", [(403, "GatedRepoError", "is gated"), (401, "RepositoryNotFoundError", "")]
)
def test_a_shared_app_lending_no_token_says_what_the_host_can_do(tmp_path, monkeypatch, status, error, kind):
    """A shared app sends no token of its machine (engine.core.hub_token): 'log in with hf auth login' would send its
    user to the host's terminal. The sentence says what the host can do instead: lend the token, or the folder."""
    import huggingface_hub

    from engine.core import hub_token
    from engine.models.loading import resolve_model
    from ui import model_tab

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv(hub_token.WITHHELD_ENV, "1")  # as withhold() leaves it in the app and the runs it starts
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_refuses(status, error))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub_refuses(status, error))
    said = (
        rf"'meta-llama/Llama-3.2-1B' {kind or 'is not on the hub or is private'}, and this shared app downloads "
        r"without this machine's Hugging Face token: the host can lend .* --lend-hf-token \(or "
        r"TUNESMITH_LEND_HF_TOKEN=1\), or put the model's folder in the workspace\.$"
    )
    with pytest.raises(api.UserError, match=said):
        api.model_arch("meta-llama/Llama-3.2-1B")
    with pytest.raises(api.UserError, match=said):  # what the Download button and the run say
        resolve_model("meta-llama/Llama-3.2-1B", log=lambda m: None)
    assert "--lend-hf-token" in model_tab.fit_badge("meta-llama/Llama-3.2-1B", "qlora")


def test_a_typed_id_or_folder_with_a_trailing_slash_is_the_same_model(tiny_llama):
    """'Qwen/Qwen3-4B/' (copied from a path or typed with a slash) was 'Model folder ... does not exist' on the
    badge, the preset and Start; a folder with a slash worked. Both now name the model without it."""
    from ui import model_tab, train_tab

    assert model_tab.chosen_model("Qwen/Qwen3-0.6B", " Qwen/Qwen3-4B/ ") == "Qwen/Qwen3-4B"
    assert model_tab.chosen_model(None, f"{tiny_llama}/") == str(tiny_llama)
    assert model_tab.chosen_model("Qwen/Qwen3-0.6B", " / ") == "Qwen/Qwen3-0.6B"  # nothing typed but a slash
    badge = model_tab.describe(None, "Qwen/Qwen3-4B/", "qlora")
    assert "`Qwen/Qwen3-4B`" in badge and "does not exist" not in badge, badge
    assert "does not exist" not in train_tab.apply_preset(model_tab.chosen_model(None, "Qwen/Qwen3-4B/"), "qlora")[0]


def test_preset_on_a_card_below_the_smallest_tier_names_no_tier(monkeypatch):
    """A 4 GB card (GTX 1650) is under the 6 GB tier: the preset is made from the plan alone, and its note said
    'Preset for this GPU (None GB tier)'."""
    from ui import i18n, train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "3.5")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "16")
    note, seq, batch, accum, rank, lr, ckpt = train_tab.apply_preset("Qwen/Qwen3-0.6B", "full")
    assert "None" not in note and note.startswith("Preset for this GPU (3.5 GiB, below the smallest tier)"), note
    assert lr == 2e-5 and batch >= 1  # full fine-tuning's rate, with no tier to take it from
    for lang in ("zh", "ru"):
        assert "below" not in i18n.message(note, lang) and "tier" not in i18n.message(note, lang)
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "14.6")  # a tier's note is translated as before
    note = train_tab.apply_preset("Qwen/Qwen3-4B", "qlora")[0]
    assert note.startswith("Preset for this GPU (16 GB tier)"), note
    assert i18n.message(note, "ru").startswith("Пресет для этой GPU (уровень 16 ГБ)")


def test_an_existing_folder_that_is_not_a_model_is_not_said_not_to_exist(tmp_path, monkeypatch):
    """The folder one level above the model, typed on the Model tab: the badge said 'Model folder ... does not exist',
    and a relative one shaped like a hub id ('models/qwen') was looked up on the hub (retrying for half a minute
    offline). Both now say what the run says: the folder has no config.json."""
    import huggingface_hub

    from ui import model_tab

    def no_hub(*args, **kwargs):
        raise AssertionError("a local folder was looked up on the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "qwen").mkdir(parents=True)
    for typed in (str(tmp_path / "models"), "models", "models/qwen"):
        badge = model_tab.fit_badge(typed, "lora")
        assert "has no config.json, so it is not a transformers model folder" in badge, badge
        with pytest.raises(api.UserError, match="has no config.json"):
            api.model_arch(typed)


def test_the_preset_counts_the_trained_embeddings_the_job_asks_for(monkeypatch):
    """Continued pretraining with trained embeddings: the Train tab's preset planned without their copies (the run's
    plan counts them), so its note named a smaller peak than the run's. It names the estimate's with them; the same
    form without them, or another objective with the box still ticked, names the plain one."""
    from ui import train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"])
    with_ = api.estimate("Qwen/Qwen3-4B", "qlora", train_embeddings=True)["peak_vram_gib"]
    without = api.estimate("Qwen/Qwen3-4B", "qlora")["peak_vram_gib"]
    assert with_ != without  # its own preset, planned with the copies
    note = train_tab.apply_preset("Qwen/Qwen3-4B", "qlora", None, "pretrain", True)[0]
    assert note.endswith(f"peaks at {with_:.1f} GiB."), note
    for objective, ticked in (("pretrain", False), ("sft", True)):
        note = train_tab.apply_preset("Qwen/Qwen3-4B", "qlora", None, objective, ticked)[0]
        assert note.endswith(f"peaks at {without:.1f} GiB."), note


@pytest.mark.parametrize("vram", ["23", None])  # a GPU's line, and the CPU's
def test_the_fit_badge_says_when_it_counts_the_trained_embeddings(monkeypatch, vram):
    """The badge's figure changed when the Train tab's embeddings box was ticked (continued pretraining) but its words
    did not: the same line named two peaks. It says when they are counted, in every language the page speaks."""
    from ui import i18n, model_tab

    if vram:
        monkeypatch.setenv("TUNESMITH_VRAM_GIB", vram)
    else:
        monkeypatch.delenv("TUNESMITH_VRAM_GIB", raising=False)
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] if vram else [])
    badge = model_tab.fit_badge("Qwen/Qwen3-1.7B", "qlora", "pretrain", True)
    assert "with trained embeddings" in badge, badge
    assert "训练嵌入层时" in i18n.message(badge, "zh"), i18n.message(badge, "zh")
    assert "с обучаемыми эмбеддингами" in i18n.message(badge, "ru"), i18n.message(badge, "ru")
    assert "with trained embeddings" not in i18n.message(badge, "zh") + i18n.message(badge, "ru")
    for objective, ticked in (("pretrain", False), ("sft", True)):  # not counted: not said
        assert "embeddings" not in model_tab.fit_badge("Qwen/Qwen3-1.7B", "qlora", objective, ticked)


def model_and_train_tabs():
    """The Model and Train tabs, wired to each other as app.py wires them; returns (the Blocks, the Model tab's
    components, the Train tab's)."""
    import gradio as gr

    from ui import model_tab, train_tab

    with gr.Blocks() as demo:
        model = model_tab.build()
        data = [gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox("train"), gr.Number(256)]
        train = train_tab.build([model["custom_or_catalog"], model["method"], model["trust"]], data)
        model_tab.wire_train(model, train)
    return demo, model, train


def test_the_fit_badge_plans_with_the_train_forms_objective_and_embeddings(monkeypatch):
    """The badge (Model tab, built before the Train tab) planned without continued pretraining's trained embeddings
    while the Train tab's preset, and the run, counted their copies: the two named different peaks. The badge now
    follows the Train form's objective and box, re-made when either changes, and names the preset's peak."""
    from test_train_view import run_handlers

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    with_ = api.estimate("Qwen/Qwen3-4B", "qlora", train_embeddings=True)["peak_vram_gib"]
    without = api.estimate("Qwen/Qwen3-4B", "qlora")["peak_vram_gib"]
    assert f"{with_:.1f}" != f"{without:.1f}"
    demo, model, train = model_and_train_tabs()
    form = {
        model["custom"]: "Qwen/Qwen3-4B",
        model["custom_or_catalog"]: "Qwen/Qwen3-4B",
        model["method"]: "qlora",
        train["loaded_job"]: None,
        train["objective"]: "pretrain",
        train["train_embeddings"]: True,
    }
    summary, note = model["summary"]._id, train["preset_note"]._id
    shown = run_handlers(demo, train["train_embeddings"], "change", form)
    assert f"about {with_:.1f} GiB" in shown[summary], shown[summary]
    assert shown[note].endswith(f"peaks at {with_:.1f} GiB."), shown[note]
    shown = run_handlers(demo, model["custom"], "change", form)  # the model typed after the box was ticked
    assert f"about {with_:.1f} GiB" in shown[summary], shown[summary]
    shown = run_handlers(demo, train["objective"], "change", form | {train["objective"]: "sft"})
    assert f"about {without:.1f} GiB" in shown[summary], shown[summary]


def test_the_preset_follows_the_objective_while_the_embeddings_box_is_ticked(monkeypatch):
    """Continued pretraining with the embeddings box ticked, then another objective: the preset stayed the one planned
    with the embeddings' copies (only the box's change re-applied it), while the run plans without them. A change of
    objective re-applies it while the box is ticked; with it unticked the plan cannot change, and the form's values
    are left as the user set them."""
    from test_train_view import run_handlers

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    with_ = api.estimate("Qwen/Qwen3-4B", "qlora", train_embeddings=True)["peak_vram_gib"]
    without = api.estimate("Qwen/Qwen3-4B", "qlora")["peak_vram_gib"]
    demo, model, train = model_and_train_tabs()
    form = {
        model["custom_or_catalog"]: "Qwen/Qwen3-4B",
        model["method"]: "qlora",
        train["loaded_job"]: None,
        train["train_embeddings"]: True,
    }
    note, batch = train["preset_note"]._id, train["batch"]._id
    shown = run_handlers(demo, train["objective"], "change", form | {train["objective"]: "sft"})
    assert shown[note].endswith(f"peaks at {without:.1f} GiB."), shown[note]
    shown = run_handlers(demo, train["objective"], "change", form | {train["objective"]: "pretrain"})
    assert shown[note].endswith(f"peaks at {with_:.1f} GiB."), shown[note]
    shown = run_handlers(demo, train["objective"], "change", form | {train["train_embeddings"]: False})
    assert shown[batch] == {"__type__": "update"}, shown[batch]  # unticked: the batch typed in is kept


@pytest.mark.parametrize("objective", ["dpo", "grpo"])
def test_badge_and_preset_plan_for_the_one_gpu_a_preference_or_grpo_run_trains_on(monkeypatch, objective):
    """DPO, ORPO and GRPO train on one GPU (engine.training.launch) however many are visible, but the badge and the
    preset planned per GPU of all of them: on two 24 GB cards a 4B full fine-tune was planned sharded (FSDP2), a run
    that is never made. They plan the one card's run, which (freeing no gradient in the backward, as SFT may) needs
    more than the card has."""
    from engine.training.launch import plan_launch
    from ui import model_tab, train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] * 2)
    model, method = "Qwen/Qwen3-4B", "full"
    rewards = ({"preset": "regex", "pattern": "x"},) if objective == "grpo" else ()
    spec = api.JobSpec(model=model, data="-", method=method, objective=objective, rewards=rewards)
    runs_on = plan_launch(spec, found=len(api.gpus_found())).processes
    gpus, est = model_tab.run_estimate(model, method, objective)
    assert gpus == runs_on == est["gpus"] == 1
    assert est == api.estimate(model, method, gpus=1, objective=objective)
    sharded = api.estimate(model, method, gpus=2)
    assert not est["fits"] and "on each GPU" not in est["reason"] and "on each GPU" in sharded["reason"]
    badge = model_tab.fit_badge(model, method, objective)
    note = train_tab.apply_preset(model, method, None, objective)[0]
    assert badge.startswith("⚠ Will not fit this GPU") and "each of" not in badge, badge
    assert f"at least {est['min_vram_gib']:.1f} GiB" in badge and "2 GPUs" not in note, note


def test_a_new_objective_plans_the_preset_again_where_it_changes_the_gpus(monkeypatch):
    """The badge follows the Train tab's objective; the preset did only while the embeddings box was ticked. On two
    GPUs choosing DPO (one GPU) left the preset planned per GPU of both beside a badge planned for one."""
    from ui import train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "23")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] * 2)
    model, method = "Qwen/Qwen3-4B", "full"
    assert train_tab.preset_for_objective(model, method, None, "dpo", False) == train_tab.apply_preset(
        model, method, None, "dpo"
    )
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"])  # one GPU: typed settings are kept
    kept = train_tab.preset_for_objective(model, "lora", None, "dpo", False)  # (full's plan can follow the objective)
    assert all(u == {"__type__": "update"} for u in kept), kept


def test_the_estimate_plans_the_objectives_own_run(monkeypatch, tmp_path):
    """Only SFT and continued pretraining free each gradient in the backward where the budget needs it
    (engine.memory.grad_release), but the estimate planned every objective as SFT: a 1B full fine-tune on 7 GiB fits
    an SFT run so, while a DPO, ORPO or GRPO run's own plan (engine.models.loading.plan_memory, before it loads
    anything) refuses it, and the badge and the preset said it fits. Where DPO fits, the plan is its run's."""
    from test_memory import LLAMA_32_1B, json_folder_for

    from engine.core.hardware import Placement
    from engine.models.loading import plan_memory
    from ui import model_tab, train_tab

    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "7")
    monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4070"])
    folder = json_folder_for(LLAMA_32_1B, tmp_path / "llama")

    def run_plan(objective, est):
        rewards = ({"preset": "regex", "pattern": "x"},) if objective == "grpo" else ()
        spec = api.JobSpec(model=folder, data="-", method="full", objective=objective, rewards=rewards,
                           max_seq_length=est["seq"], batch_size=est["batch"])  # fmt: skip
        return plan_memory(spec, LLAMA_32_1B, Placement("cuda", est["dtype"], "planned for a GPU"))

    _, sft = model_tab.run_estimate(folder, "full", "sft")
    assert sft["fits"] and sft["plan"]["grads_released"] and sft["plan"] == run_plan("sft", sft).as_dict()
    for objective in ("dpo", "orpo", "grpo"):
        _, est = model_tab.run_estimate(folder, "full", objective)
        with pytest.raises(api.UserError) as refused:
            run_plan(objective, est)
        assert not est["fits"] and est["reason"] == str(refused.value), (est, refused.value)
        assert est["min_vram_gib"] == refused.value.need > sft["peak_vram_gib"]
    badge = model_tab.fit_badge(folder, "full", "dpo")
    note = train_tab.apply_preset(folder, "full", None, "dpo")[0]
    assert badge.startswith("⚠ Will not fit") and note.startswith("⚠ The 6 GB preset says this does not fit"), note
    # on one GPU a new objective plans the preset again where the plan changes with it: full fine-tuning's
    assert train_tab.preset_for_objective(folder, "full", None, "dpo", False)[0] == note
    assert train_tab.preset_for_objective(folder, "full", None, "sft", False) == train_tab.apply_preset(folder, "full")
    kept = train_tab.preset_for_objective(folder, "lora", None, "dpo", False)
    assert all(u == {"__type__": "update"} for u in kept), kept
    with pytest.raises(api.UserError, match="Trained embeddings are continued pretraining's; plan dpo without them"):
        api.estimate(folder, "full", objective="dpo", train_embeddings=True)
    monkeypatch.setenv("TUNESMITH_VRAM_GIB", "11")
    _, dpo = model_tab.run_estimate(folder, "full", "dpo")
    assert dpo["fits"] and dpo["plan"] == run_plan("dpo", dpo).as_dict()
    # beside the weights it trains, DPO's full fine-tuning holds a frozen copy as its reference (issue 24)
    assert dpo["peak_parts_gib"]["reference"] == dpo["peak_parts_gib"]["weights"] > 2


def test_the_gpus_line_names_the_gpus_a_run_of_the_objective_trains_on(monkeypatch):
    """The Model tab said "a run trains on all of them" beside a DPO badge planned for one GPU (a DPO, ORPO or GRPO
    run takes the first visible one, engine.training.launch)."""
    from ui import i18n, model_tab

    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"] * 2)
    found = "GPUs found: 2 (2 x NVIDIA GeForce RTX 4090)"
    assert model_tab.gpus_line() == model_tab.gpus_line("pretrain") == f"{found}, a run trains on all of them."
    line = model_tab.gpus_line("dpo")
    assert line == f"{found}, a DPO run trains on the first of them."
    assert line in model_tab.describe(None, "Qwen/Qwen3-4B", "qlora", "dpo")
    assert i18n.message(line, "zh") == "找到 2 块 GPU（2 x NVIDIA GeForce RTX 4090），DPO 运行只用第一块。"
    assert (
        i18n.message(line, "ru") == "Найдено GPU: 2 (2 x NVIDIA GeForce RTX 4090), запуск DPO учится только на первой."
    )
    monkeypatch.setattr(api, "gpus_found", lambda: ["NVIDIA GeForce RTX 4090"])
    assert model_tab.gpus_line("grpo") == "GPUs found: 1 (1 x NVIDIA GeForce RTX 4090)."
