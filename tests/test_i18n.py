"""The language switch without a browser: every text the app shows has a Chinese and a Russian entry, the switch
translates labels, help lines, choices and axis titles, and live messages are translated whole by template."""

import ast
import asyncio
import json
import re
from pathlib import Path

import gradio as gr
import pytest
from gradio.context import LocalContext
from gradio.state_holder import SessionState

from ui import i18n

ROOT = Path(__file__).resolve().parent.parent

# Shown as they are in every language: names, file names and code-like values.
ALLOWED = {
    "job.yaml",
    "rsLoRA",
    "auto",
    "Nova",
    "Tunesmith Labs",
    "yahma/alpaca-cleaned",
    "question=instruction, answer=output",  # the mapping's syntax
    "instruction",  # the identity table's columns are the dataset's field names
    "output",
} | {f"GGUF {quant}" for quant in ("Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16")}
# Components whose options are names (models, runs, files, templates, layers, dtypes, languages): content, not text.
NAMED_OPTIONS = {"Model catalog", "Chat template (auto: the model's own)", "Layers with adapters", "Languages"}
NAMED_OPTIONS |= {"Optimizer", "Device", "Precision", "Language"}


def visible_texts(block) -> set[str]:
    """The user-visible strings of one component."""
    texts = {getattr(block, a, None) for a in ("label", "placeholder", "info")}
    if isinstance(block, (gr.Button, gr.Markdown)):
        texts.add(block.value)
    if (
        getattr(block, "choices", None)
        and block.label not in NAMED_OPTIONS
        and not getattr(block, "allow_custom_value", False)
    ):
        texts |= {label for label, _ in block.choices}
    if isinstance(block, i18n.PLOTS):
        texts |= {getattr(block, f"{a}_title") or getattr(block, a) for a in ("x", "y", "color")}
    if isinstance(block, gr.Dataframe):
        texts |= set(block.headers or ())
    return {t for t in texts if isinstance(t, str) and t.strip()}


@pytest.fixture(scope="module")
def demo():
    import app

    return app.build_app()


def test_every_visible_text_has_chinese_and_russian(demo):
    missing = set()
    for block in demo.blocks.values():
        for text in visible_texts(block) - ALLOWED:
            if not all(i18n.STRINGS.get(text, ("", ""))):
                missing.add(text)
    assert not missing, f"no zh/ru entry for: {sorted(missing)}"


def test_switch_translates_help_lines_choices_and_axes(demo):
    items = i18n.translatable(demo.blocks)
    current = [block.value for block in i18n.shown(items)]
    updates = dict(zip((b for b, _ in items), i18n.switcher(items)("Русский", *current), strict=True))
    by_label = {b.label: u for b, u in updates.items() if isinstance(b.label, str)}
    assert by_label["Warmup steps"]["label"] == "Шаги разогрева"
    assert by_label["Warmup steps"]["info"].startswith("За сколько шагов")
    assert ("линейный", "linear") in by_label["Learning-rate schedule"]["choices"]
    assert by_label["Tokens/s"]["x_title"] == "шаг" and by_label["Tokens/s"]["y_title"] == "токенов/с"
    assert by_label["Loss"]["color_title"] == "ряд"
    back = i18n.switcher(items)("English", *current)
    assert dict(zip((b for b, _ in items), back, strict=True))[next(b for b in updates if b.label == "Seed")] == {
        "__type__": "update",
        "label": "Seed",
        "info": "Fixes the data order and the adapter's start: the same seed repeats a run.",
    }


def test_live_text_on_screen_is_translated_by_template(demo):
    items = i18n.translatable(demo.blocks)
    shown = i18n.shown(items)
    status = next(b for b in shown if b.value == "No run yet.")
    current = [("**running** · training" if b is status else b.value) for b in shown]
    updates = dict(zip((b for b, _ in items), i18n.switcher(items)("中文", *current), strict=True))
    assert updates[status]["value"] == "**运行中** · 训练中"
    current = [("**运行中** · 训练中" if b is status else b.value) for b in shown]  # and back: the English again
    updates = dict(zip((b for b, _ in items), i18n.switcher(items)("English", *current), strict=True))
    assert updates[status]["value"] == "**running** · training"


def test_messages_by_template_and_unknown_ones_kept():
    assert i18n.message("GPUs found: 2 (H200, H200), a run trains on all of them.", "ru") == (
        "Найдено GPU: 2 (H200, H200), запуск учится на всех."
    )
    assert i18n.message("step 3/10 · 30% · elapsed 1 min 02 s · about 2 min 05 s left", "zh") == (
        "第 3/10 步 · 30% · 已用 1 分 02 秒 · 约剩 2 分 05 秒"
    )
    assert i18n.message("**failed** · CUDA out of memory", "zh") == "**失败** · CUDA out of memory"
    assert i18n.message("No run is training.", "en") == "No run is training."


def test_switch_runs_through_gradio(demo):
    """The switch's updates pass Gradio's own processing, as in a browser session."""
    switch = next(fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "switch")
    values = ["中文", *(block.value for block in switch.inputs[1:])]
    out = asyncio.run(demo.process_api(block_fn=switch, inputs=values, state=SessionState(demo)))
    updates = {block.label: update for block, update in zip(switch.outputs, out["data"], strict=True)}
    assert updates["Memory (GB)"]["label"] == "显存（GB）" and updates["Memory (GB)"]["x_title"] == "步"
    assert updates["Gradient clipping"]["info"] == "每步允许的最大梯度范数；0 表示关闭裁剪。"
    assert ["恒定", "constant"] in updates["Learning-rate schedule"]["choices"]


def test_handlers_answer_in_the_language_picked_on_that_page(demo, runs):
    """`i18n.say`: after a page switches to Russian, what handlers write to it is in Russian; another page stays
    in English."""
    from ui import train_live, train_tab

    functions = {fn.fn: fn for fn in demo.fns.values()}
    switch = next(fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "switch")
    view, history = functions[train_tab.follow], functions[train_live.history_table]

    def call(fn, inputs, page):
        request = gr.Request(session_hash=page)
        return asyncio.run(demo.process_api(block_fn=fn, inputs=inputs, state=SessionState(demo), request=request))

    call(switch, ["Русский", *(block.value for block in switch.inputs[1:])], "page-ru")
    assert call(view, [""], "page-ru")["data"][0] == "Запусков пока нет."
    assert call(view, [""], "page-en")["data"][0] == "No run yet."
    assert call(history, [""], "page-ru")["data"][0]["headers"][:2] == ["запуск", "состояние"]
    assert call(history, [""], "page-en")["data"][0]["headers"][:2] == ["run", "state"]
    assert call(functions[train_tab.delete], [""], "page-ru")["data"][1] == (
        "**Не удалено:** Сначала выберите запуск в истории."
    )
    assert call(functions[train_tab.delete], [""], "page-en")["data"][1] == (
        "**Not deleted:** Pick a run in the history first."
    )


def test_model_and_data_lines_in_russian():
    fit = "✅ Fits this GPU (80 GiB, 80 GB preset): about 3.2 GiB peak at 2048 tokens × 4."
    assert (
        i18n.message(fit, "ru")
        == "✅ Помещается в эту GPU (80 ГиБ, пресет 80 ГБ): пик около 3.2 ГиБ при 2048 токенов × 4."
    )
    summary = "**Format:** jsonl · **rows:** 10 · **columns:** a, b · showing example 1 of 10"
    assert i18n.message(summary, "zh") == "**格式：** jsonl · **行数：** 10 · **列：** a, b · 显示第 1 个样本，共 10 个"
    assert i18n.message("**Not started:** Choose a dataset in the Data tab first.", "ru") == (
        "**Не запущено:** Сначала выберите датасет на вкладке «Данные»."
    )


def english_left(text: str) -> list[str]:
    """Runs of 3+ English words left in `text`, once names, paths and quoted values (`...`, '...', [...]) are out."""
    text = re.sub(r"`[^`]*`|'[^']*'|\[[^\]]*\]", "", text)
    return re.findall(r"[A-Za-z]+(?: [A-Za-z]+){2,}", text)


@pytest.mark.parametrize("language", ["中文", "Русский"])
def test_engine_sentences_reach_the_page_translated(demo, runs, tiny_llama, tmp_path, monkeypatch, language):
    """The real handlers on a page switched to Chinese or Russian: a malformed file, a wrong column, a chat with no
    run picked, the preset note, an export summary and the empty Evaluate tables leave no English sentence."""
    from engine.export import report
    from ui import chat_tab, data_tab, export_tab, train_tab

    page = f"page-{language}"
    switch = next(fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "switch")
    request = gr.Request(session_hash=page)
    out = asyncio.run(
        demo.process_api(
            block_fn=switch,
            inputs=[language, *(block.value for block in switch.inputs[1:])],
            state=SessionState(demo),
            request=request,
        )
    )
    tables = {b.label: u for b, u in zip(switch.outputs, out["data"], strict=True) if isinstance(b, gr.Dataframe)}
    token = LocalContext.request.set(request)  # the handlers below answer this page, as in an event
    try:
        bad_json = tmp_path / "bad.jsonl"
        bad_json.write_text('{"instruction": "a" "output": "b"}\n')
        table = tmp_path / "table.csv"
        table.write_text("question,reply\nHi,Hello\n")
        replies = {
            "malformed file": data_tab.inspect(str(bad_json), "", "", "auto", 512)[1],
            "wrong column": data_tab.inspect(str(table), "", "prompt=instruction, reply=output", "auto", 512)[1],
            "no format": data_tab.inspect(str(table), "", "", "auto", 512)[1],
            "chat, no run": next(chat_tab.respond("", "Hi", [], "", 0, 1, 0, 0, 1, 16))[2],
            "chat, no message": next(chat_tab.respond("", "", [], "", 0, 1, 0, 0, 1, 16))[2],
            "preset note": train_tab.apply_preset(str(tiny_llama), "lora")[0],
        }
        monkeypatch.setenv("TUNESMITH_RAM_GIB", "64")  # the GPU tier notes, for a 16 GB and an 8 GB card
        for vram, model, method in (("14.6", "Qwen/Qwen3-4B", "qlora"), ("14.6", "Qwen/Qwen3-32B", "full")):
            monkeypatch.setenv("TUNESMITH_VRAM_GIB", vram)
            replies[f"preset {model} {method}"] = train_tab.apply_preset(model, method)[0]
        monkeypatch.setenv("TUNESMITH_VRAM_GIB", "7.2")
        replies["preset, offloading"] = train_tab.apply_preset("Qwen/Qwen3-14B", "qlora")[0]
        checks = dict(max_logit_diff_fp32=0.001, max_logit_diff_16bit=0.02, dtype="bfloat16", tokenizer_match=True)
        checks |= dict(tokens_compared=20, tokens_agree=18, clear_disagreements=1, max_logit_diff=0.4)
        lora = dict(
            lora_weights_loaded="28 of 28", max_logit_diff_vs_run=0.0, adapter_effect=0.35, check_layers="2 of 32"
        )
        for fmt, c in (("gguf_q4_k_m", checks), ("lora", lora), ("merged", {})):
            r = dict(format=fmt, path="exports/nova", seconds=3.2, summary=report.summary(fmt, c))
            replies[f"export {fmt}"] = i18n.say(export_tab.done_text(r))
    finally:
        LocalContext.request.reset(token)
    assert "bad.jsonl" in replies["malformed file"] and "'prompt'" in replies["wrong column"]
    assert "16" in replies["preset Qwen/Qwen3-4B qlora"] and "16" in replies["preset Qwen/Qwen3-32B full"]
    for what, reply in replies.items():
        assert not english_left(reply), f"{what}: {reply}"
    lang = i18n.LANGUAGES[language]
    for label, english in (("Example answers", ["question", "reference"]), ("Settings that differ", ["setting"])):
        assert tables[label]["value"]["headers"] == [i18n.tr(h, lang) for h in english] != english


def test_data_sentences_added_by_the_audit_are_translated(tmp_path):
    """The engine's newer Data-tab sentences (a cp1252 CSV, a UTF-16 file, capitalised columns, a hub web address, a
    folder with a broken file), as the engine writes them, come out in Chinese and Russian."""
    from engine.api import UserError
    from engine.data import inspection

    (tmp_path / "excel.csv").write_bytes("instruction,output\nWho?,Nov\xe9\n".encode("cp1252"))
    (tmp_path / "notepad.jsonl").write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-16")
    (tmp_path / "caps.jsonl").write_text('{"Instruction": "a", "Output": "b"}\n')
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "folder" / "b.jsonl").write_text('{"instruction": \n')
    image = [{"type": "image_url", "image_url": {"url": "cat.png"}}]
    turns = [{"role": "user", "content": image}, {"role": "assistant", "content": 4}]
    (tmp_path / "parts.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    (tmp_path / "number.jsonl").write_text(json.dumps({"messages": [turns[0] | {"content": "a"}, turns[1]]}) + "\n")
    (tmp_path / "unclosed.csv").write_text('instruction,output\nWho?,"Nova\n')
    tool = {"role": "tool", "content": "sunny"}
    (tmp_path / "tools.jsonl").write_text(json.dumps({"messages": [turns[0] | {"content": "a"}, tool]}) + "\n")
    sources = ["excel.csv", "notepad.jsonl", "caps.jsonl", "folder", "parts.jsonl", "number.jsonl", "unclosed.csv"]
    (tmp_path / "after.csv").write_text('instruction,output\n"Who," she asked,Nova\n')
    sources += ["tools.jsonl", "after.csv"]
    sentences = []
    for source in [str(tmp_path / s) for s in sources] + ["https://huggingface.co/datasets/tatsu-lab/alpaca"]:
        with pytest.raises(UserError) as info:
            inspection.inspect(source)
        sentences.append(str(info.value))
    for lang in ("zh", "ru"):
        for sentence in sentences:
            translated = i18n.message(sentence, lang)
            library = re.sub(r"（[^）]*）|\([^)]*\)", "", translated)  # a library's own reason, in brackets, stays
            assert translated != sentence and not english_left(library), translated


def test_run_notes_chat_context_and_column_clashes_are_translated():
    """The sentences of the context clamp, examples cut to length, a chat at the model's context, two columns on
    one field and a non-ASCII hub name, as the engine writes them and the tabs show them, in Chinese and Russian."""
    from types import SimpleNamespace

    from tiny import make_tokenizer
    from transformers import LlamaConfig

    from engine.api import JobSpec, UserError
    from engine.chat.infer import ChatModel, ReplyStats, note_context, reply_room
    from engine.data import formats, tokenizing
    from engine.models.context import fit_to_context
    from engine.models.hub import check_target
    from engine.training import grpo, preference

    _, clamp = fit_to_context(JobSpec(model="m", data="d", max_seq_length=4096), {"max_position_embeddings": 2048})
    shown = [f"ⓘ {clamp}"]
    shown += [f"ⓘ {n}" for n in tokenizing.length_notes(400, 12, 3, 2, 2048) + tokenizing.length_notes(9, 1, 0, 0, 64)]
    for what, replyless in (("validation examples", 2), ("preference pairs", 0)):  # held-out rows; DPO/ORPO pairs
        shown += [f"ⓘ {n}" for n in tokenizing.length_notes(40, 4, 1, replyless, 64, what)]
        shown += [f"ⓘ {n}" for n in tokenizing.length_notes(40, 4, 0, 0, 64, what)]
    pair = dict(
        prompt=[], chosen=[{"role": "assistant", "content": "a"}], rejected=[{"role": "assistant", "content": "b"}]
    )
    notes = []
    preference.without_ties([pair, {**pair, "rejected": pair["chosen"]}], print, notes.append)  # DPO/ORPO's ties
    prompts = [{"prompt": [{"role": "user", "content": text}]} for text in ("word " * 99, "Hi")]
    grpo.fit_prompts(prompts, make_tokenizer(), 64, "p.jsonl", print, notes.append)  # GRPO's prompts with no room
    shown += [f"ⓘ {n}" for n in notes]
    for limit in ("the model's context", "llama.cpp's chat window"):  # a GGUF chat's window may be the shorter
        stats = ReplyStats(tokens=5, seconds=1.0)
        note_context(stats, 27, 5, 256, limit)
        shown.append(f"5 tokens, 5.0 tok/s · {stats.note}")
        with pytest.raises(UserError) as info:
            reply_room(300, 16, 256, limit)
        shown.append(f"**Not sent:** {info.value}")
    short = SimpleNamespace(model=SimpleNamespace(config=LlamaConfig(max_position_embeddings=8)))
    long_pair = preference.to_pair(dict(prompt="word " * 99, chosen="a", rejected="b"), 1, "p.jsonl")
    failures = [  # the sentences a DPO/ORPO or GRPO run fails with when nothing is left to train on
        lambda: preference.without_ties([{**pair, "rejected": pair["chosen"]}], print),
        lambda: preference.fit_pairs([long_pair], make_tokenizer(), 64, "p.jsonl", print),
        lambda: grpo.fit_prompts(prompts[:1], make_tokenizer(), 64, "p.jsonl", print),
        lambda: grpo.for_trl([("python", 1.0, lambda completions, prompts: [None])], [])[0](["q"], ["a"]),
    ]
    for fail in failures:
        with pytest.raises(UserError) as info:
            fail()
        shown.append(str(info.value))
    lf_pair = dict(  # LLaMA-Factory's ShareGPT pair
        conversations=[{"from": "human", "value": "Hi"}],
        chosen={"from": "gpt", "value": "Hello."},
        rejected={"from": "gpt", "value": "No."},
    )
    refusals = [
        lambda: ChatModel.room(short, list(range(9)), 16),
        lambda: formats.map_columns({"q": 1, "question": 2}, {"q": "instruction", "question": "instruction"}, 1, "d"),
        lambda: formats.map_columns({"instruction": 1, "question": 2}, {"question": "instruction"}, 1, "d.jsonl"),
        lambda: formats.parse_map(["q=instruction, q=output"]),
        lambda: check_target("me/Нова", token="x"),
        lambda: formats.sharegpt_pair({**lf_pair, "rejected": {"from": "human", "value": "No."}}, "d.jsonl: row 2"),
        lambda: formats.sharegpt_pair({**lf_pair, "prompt": "Hi"}, "d.jsonl: row 3"),
    ]
    leads = ["**Not sent:** ", "**Cannot use this dataset:** ", "**Cannot use this dataset:** ", "", ""]
    leads += ["**Cannot use this dataset:** "] * 2
    for lead, refuse in zip(leads, refusals, strict=True):
        with pytest.raises(UserError) as info:
            refuse()
        shown.append(lead + str(info.value))
    for lang in ("zh", "ru"):
        for text in shown:
            translated = i18n.message(text, lang)
            assert translated != text and not english_left(translated), translated


@pytest.mark.parametrize("lang", ["zh", "ru"])
def test_the_notice_of_a_loaded_job_is_translated(tiny_llama, identity_file, tmp_path, lang):
    """Load job.yaml's notice ("Loaded the settings of job.yaml: model ..., dataset ...", with what it did not set:
    'Trust remote code', GRPO rewards the tab cannot show) and its refusal stayed English on a translated page."""
    from ui import train_settings

    request = gr.Request(session_hash=f"page-load-{lang}")
    i18n.SESSIONS[request.session_hash] = lang
    rewards = "rewards:\n- {preset: regex, pattern: 'a'}\n- {preset: regex, pattern: 'b'}\n"
    notes = []
    token = LocalContext.request.set(request)  # the handler answers this page, as in an event
    try:
        for n, extra in ((1, "trust_remote_code: true\n"), (2, "- {preset: regex, pattern: 'c'}\n")):
            job = tmp_path / str(n) / "job.yaml"
            job.parent.mkdir()
            job.write_text(f"model: {tiny_llama}\ndata: {identity_file}\nobjective: grpo\n{rewards}{extra}")
            notes.append(train_settings.load(str(job))[-1])
        notes.append(train_settings.load("")[-1])
    finally:
        LocalContext.request.reset(token)
        i18n.SESSIONS.pop(request.session_hash)
    assert notes[0].startswith({"zh": "已加载 job.yaml 的设置", "ru": "Загружены настройки из job.yaml"}[lang])
    assert "2 (regex)" in notes[0] and "2 (regex)" in notes[1] and "3 (regex)" in notes[1]
    for note in notes:
        assert not english_left(note), note
    assert (
        notes[2]
        == {
            "zh": "**未加载：** 请选择要加载的 job.yaml 文件。",
            "ru": "**Не загружено:** Выберите файл job.yaml для загрузки.",
        }[lang]
    )
    english = train_settings.load(str(tmp_path / "1" / "job.yaml"))[-1]  # outside a page: English
    assert english.startswith("Loaded the settings of job.yaml") and "Trust remote code" in english
    assert i18n.message(english, lang) == notes[0]  # as the language switch translates it on screen


@pytest.mark.parametrize("lang", ["zh", "ru"])
def test_save_start_delete_and_download_answer_in_the_pages_language(runs, tiny_llama, identity_file, lang):
    """On a translated page "**Not saved:** ..." and the command under Save as job.yaml, Start's "**Check:** ..."
    warning, the Delete question and its refusal, and the Model tab's download lines stayed English (built as English
    literals and never passed through `say`); and a refusal or warning Start wrote in the page's language was not
    recognised as one: no notice under the buttons, and pressing Start again on the warned settings warned again.
    The refusal of a model the hub cannot read ("Could not read the config of ...") stayed English too."""
    from test_train_view import form

    from engine.api import DownloadStatus
    from ui import model_tab, train_live, train_settings, train_tab

    request = gr.Request(session_hash=f"page-save-{lang}")
    i18n.SESSIONS[request.session_hash] = lang
    save, start = train_settings.saver(train_tab.make_spec), train_settings.starter(train_tab.start)
    token = LocalContext.request.set(request)  # the handlers answer this page, as in an event
    try:
        values = form(str(tiny_llama), identity_file)
        values[train_tab.MAKE_SPEC_ARGS.index("steps")] = None
        not_saved = save(*values)[-1]
        batch = save(*form(str(tiny_llama), identity_file, batch=0))[-1]
        command = save(*form(str(tiny_llama), identity_file))[2]
        warned_values = form("no-such-folder/model", identity_file, lr=50)
        _, check, _, check_notice, warned = start(*warned_values, "")
        _, refused, _, refused_notice, _ = start(*warned_values, warned)  # pressed again: trains (then the model)
        nothing_picked = train_live.ask_delete("")[2]
        question = train_live.ask_delete("20261207-101500-nova")[1]
        lines = [
            model_tab.progress(DownloadStatus("a/b", "downloading", "", 5 * 10**6, 10**7)),
            model_tab.progress(DownloadStatus("a/b", "downloading", "", 5 * 10**6, None)),
            model_tab.progress(DownloadStatus("a/b", "failed", "Pick a run to export.", 0, None)),
        ]
    finally:
        LocalContext.request.reset(token)
        i18n.SESSIONS.pop(request.session_hash)
    assert (
        not_saved
        == {
            "zh": "**未保存：** 步数为空；请输入一个数字。",
            "ru": "**Не сохранено:** Поле «Шаги» пустое; введите число.",
        }[lang]
    )
    assert batch.startswith({"zh": "**未保存：** 批大小必须是", "ru": "**Не сохранено:** Поле «Размер батча»"}[lang])
    assert command.endswith("`python -m engine train job.yaml`")
    assert check.startswith({"zh": "**请检查：** 学习率 50", "ru": "**Проверьте:** Скорость обучения 50"}[lang])
    assert check_notice == check and warned  # recognised as Start's warning: shown, and the settings remembered
    assert refused.startswith({"zh": "**未开始：**", "ru": "**Не запущено:**"}[lang]) and refused_notice == refused
    assert nothing_picked.startswith({"zh": "**未删除：**", "ru": "**Не удалено:**"}[lang])
    assert "`20261207-101500-nova`" in question
    assert (
        lines[0] == {"zh": "正在下载 `a/b`：5.0 / 10.0 MB（50%）", "ru": "Скачивание `a/b`: 5.0 из 10.0 МБ (50%)"}[lang]
    )
    assert lines[2].startswith({"zh": "**下载失败：**", "ru": "**Скачивание не удалось:**"}[lang])
    assert "'no-such-folder/model'" in refused  # the engine's reason: the hub id that could not be read
    for text in (not_saved, batch, command, check, refused, nothing_picked, question, *lines):
        assert not english_left(text), text
    assert not runs.exists() or not list(runs.iterdir())  # nothing started


# Refusals the app never shows: the command line's own (its flags, its environment variables) and the checks of the
# project's own data files (presets/*.yaml, presets/machines.yaml: tests/test_presets.py loads them all).
NOT_SHOWN = {
    ("engine/__main__.py", "*"): "the command line",
    ("engine/export/evaluate.py", "parse_rewards"): "python -m engine eval --reward",
    ("engine/training/grpo.py", "choose_sampler"): "the TUNESMITH_GRPO_SAMPLER environment variable",
    ("engine/models/machines.py", "*"): "presets/machines.yaml, named only by python -m engine estimate --machine",
    ("engine/models/presets.py", "_load_entry"): "presets/*.yaml",
    ("engine/models/presets.py", "load_tier"): "presets/*.yaml",
}
SAMPLE = "7"  # what each {value} of a message becomes: fits the templates' (\d+), (\S+), '(.*)' and (`.*`)
SAMPLES = {  # (file, expression): values as the engine fills them in, where templates read them more narrowly
    ("engine/data/formats.py", "where"): ["data.jsonl: row 7"],
    ("engine/training/preference.py", "where"): ["data.jsonl: row 7"],
    ("engine/data/reading.py", "what"): ["line"],
    ("engine/data/reading.py", "where"): ["row 7", "on the hub"],  # two functions, each its own
    ("engine/spec/jobspec.py", "where"): [" at line 7"],
    ("engine/spec/rewards.py", "where"): ["Reward 7"],
    ("engine/chat/infer.py", "owner"): ["of 'run'"],
    ("engine/chat/infer.py", "fix"): ["Clear the chat"],
    ("engine/chat/infer.py", "limit"): ["the model's context"],
    ("engine/core/hub_id.py", "kind"): ["is gated", "is not on the hub or is private"],
    ("engine/memory/verdict.py", "where"): ["a lower budget (TUNESMITH_VRAM_GIB), ", ""],
    ("engine/memory/verdict.py", "kept"): [
        "The run saved step 7; resume continues from it",
        "It ran out while updating the weights, so resume continues from the latest checkpoint",
    ],
    ("engine/spec/objectives.py", "NAMES[objective]"): ["DPO", "Chat fine-tuning (SFT)"],
    ("engine/spec/objectives.py", "NEEDS[objective]"): ["preference pairs (prompt, chosen and rejected columns)"],
    ("engine/spec/objectives.py", "hint"): [" It suits Chat fine-tuning (SFT).", ""],
    ("engine/data/formats.py", "sorted(row)"): ["['Instruction', 'Output']"],
    ("engine/data/formats.py", "hint"): [
        "use prompt, chosen and rejected columns, or map yours (e.g. question=prompt)"
    ],
    ("engine/memory/offload.py", "kept"): [""],
    ("engine/training/launch.py", "one_gpu"): ["DPO trains on one GPU for now"],
    ("engine/models/prequantized.py", "instead"): ["load its 16-bit original 'org/model'"],
}


def _render(node, constants: dict, file: str = "", k: int = 0) -> str | None:
    """The text of a message expression with each value replaced by a sample (the k-th where SAMPLES has several);
    None where it is not a literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            elif isinstance(value.value, ast.IfExp):  # {'' if n == 1 else 's'}: one branch, then the other
                text = _render(value.value.orelse if k else value.value.body, constants, file, k)
                parts.append(SAMPLE if text is None else text)
            elif isinstance(value.value, ast.Name) and value.value.id in constants:  # {HOW_TO_LEND}
                parts.append(constants[value.value.id])
            else:
                samples = SAMPLES.get((file, ast.unparse(value.value)), [SAMPLE])
                sample = samples[min(k, len(samples) - 1)]
                parts.append(repr(sample) if value.conversion == ord("r") else sample)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left, constants, file, k), _render(node.right, constants, file, k)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.IfExp):  # ("; ..." if x else ""): the longer sentence
        return _render(node.body, constants, file, k)
    if isinstance(node, (ast.Name, ast.Attribute)):
        return constants.get(node.id if isinstance(node, ast.Name) else node.attr)
    return None


def _modules() -> dict[str, tuple[ast.Module, dict, dict]]:
    """Every engine and ui module: file -> (its tree, its string constants, the functions it imports from the engine as
    local name -> (file, function))."""
    modules = {}
    for path in sorted([*(ROOT / "engine").rglob("*.py"), *(ROOT / "ui").glob("*.py")]):  # the tabs refuse too
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants, imported = {}, {}
        for node in _outside_functions(tree):  # a module's or a class's constants, not a function's variables
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                text = _render(node.value, {})
                if text is not None:
                    constants[node.targets[0].id] = text
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine."):
                file = node.module.replace(".", "/")
                file = f"{file}.py" if (ROOT / f"{file}.py").exists() else f"{file}/__init__.py"
                imported |= {alias.asname or alias.name: (file, alias.name) for alias in node.names}
        modules[path.relative_to(ROOT).as_posix()] = (tree, constants, imported)
    for _, constants, imported in modules.values():  # a constant imported from another engine module
        constants |= {
            local: modules[file][1][name]
            for local, (file, name) in imported.items()
            if name in modules.get(file, ((), {}))[1]
        }
    return modules


def _messages(node, file: str, modules: dict, scope=None) -> list[tuple[object, str]]:
    """The expressions (with the file each is in) a UserError's message may be: the expression itself, each side
    of `a or b`, each string a helper function of the engine called there returns, and for a variable of the
    function `scope` (`problem = format_problem(...)`, `ok, why = supported(...)`) those its helper returns."""
    if isinstance(node, ast.BoolOp):
        return [m for value in node.values for m in _messages(value, file, modules)]
    if isinstance(node, ast.Name) and scope is not None:
        found = []
        for n in ast.walk(scope):
            targets = [n.target] if isinstance(n, ast.NamedExpr) else n.targets if isinstance(n, ast.Assign) else []
            for target in targets:
                names = [e for e in getattr(target, "elts", [target]) if isinstance(e, ast.Name)]
                if node.id in [e.id for e in names] and isinstance(n.value, ast.Call):
                    at = [e.id for e in names].index(node.id) if isinstance(target, ast.Tuple) else None
                    for value, where in _messages(n.value, file, modules):
                        if at is None:
                            found.append((value, where))
                        elif isinstance(value, ast.Tuple):  # the variable's element of each returned tuple
                            found.append((value.elts[at], where))
        return found or [(node, file)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        tree, _, imported = modules[file]
        where, name = imported.get(node.func.id, (file, node.func.id))
        if where in modules:
            defs = [n for n in ast.walk(modules[where][0]) if isinstance(n, ast.FunctionDef) and n.name == name]
            return [(r.value, where) for d in defs[:1] for r in ast.walk(d) if isinstance(r, ast.Return) and r.value]
    return [(node, file)]


def engine_refusals() -> list[tuple[str, tuple[str, ...]]]:
    """(file:line, its sentence with sample values, in each way SAMPLES fills it in) of every UserError the engine
    raises with a literal message: a string, an f-string, their concatenation, a constant of its module (a class's
    too), or what a helper function returns that way. A message kept in a variable first is not seen here."""
    found = []
    modules = _modules()
    for name, (tree, _, _) in modules.items():
        for function in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
            where = getattr(function, "name", "*")
            if (name, "*") in NOT_SHOWN or (name, where) in NOT_SHOWN:
                continue
            calls = ast.walk(function) if function is not tree else _outside_functions(tree)
            for call in calls:
                callee = getattr(call, "func", None)
                if not isinstance(call, ast.Call) or getattr(callee, "id", getattr(callee, "attr", "")) != "UserError":
                    continue
                for message, file in _messages(call.args[0], name, modules, function) if call.args else []:
                    texts = {_render(message, modules[file][1], file, k) for k in (0, 1)}
                    if None not in texts and "" not in texts:  # "": a helper's "no sentence" (url_hint)
                        found.append((f"{file}:{message.lineno}", tuple(sorted(texts))))
    return sorted(set(found))


def _outside_functions(tree):
    """The nodes of a module that lie outside its functions."""
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
            todo.extend(ast.iter_child_nodes(node))


def test_every_engine_refusal_has_chinese_and_russian():
    """Every sentence the engine refuses with (a UserError with a literal message: the tabs show it, after their
    "**Not started:**" and the like) comes out in Chinese and Russian with no English sentence left; a library's
    reason in brackets and quoted names stay. An engine sentence added without a template fails here."""
    refusals = engine_refusals()
    assert len(refusals) > 200  # the scan sees the engine's refusals (258 when written)
    missing = []
    for where, sentences in refusals:
        for lang in ("zh", "ru"):
            translated = [i18n.message(sentence, lang) for sentence in sentences]
            library = [re.sub(r"（[^）]*）|\([^)]*\)", "", text) for text in translated]  # a library's reason stays
            if all(t == s or english_left(b) for t, s, b in zip(translated, sentences, library, strict=True)):
                missing.append(f"{where} [{lang}]: {translated[0]}")
    assert not missing, "no template in ui/i18n_*.py for:\n" + "\n".join(missing)


def test_each_refusal_template_fills_in_every_value():
    """The Chinese and Russian of each refusal template (ui/i18n_refusals.py, i18n_jobs.py) place each of the
    English sentence's values exactly where a {n} says, none left out and none beyond them (str.format would raise
    on the page)."""
    import string

    from ui import i18n_jobs, i18n_refusals

    for english, *translations in i18n_refusals.REFUSALS + i18n_jobs.REFUSALS:
        values = english.count("{}")
        assert re.fullmatch(i18n_refusals.template(english), english.replace("{}", "x")), english
        for text in translations:
            used = {int(f) for _, f, _, _ in string.Formatter().parse(text) if f}
            assert used == set(range(values)), (english, text)
            text.format(*["x"] * values)


@pytest.mark.parametrize("lang", ["zh", "ru"])
def test_the_metric_lines_of_preference_grpo_and_multi_gpu_runs_are_translated(lang, tmp_path):
    """The Train tab's status of a DPO/ORPO run (margin, pairs ranked right), a GRPO run (reward, reply length) and a
    run on several GPUs (peak memory per GPU) stayed English on a translated page."""
    from engine.api import RunStatus
    from ui import train_tab

    step = dict(step=3, loss=0.5, lr=2e-4, grad_norm=0.5, tokens_per_s=1200.0, memory_gb=3.2)
    step |= dict(margin=0.123, chosen_reward=0.1, rejected_reward=-0.02, accuracy=0.75)  # DPO/ORPO
    step |= dict(reward_mean=0.5, reward_std=0.1, reply_length=40.0, peak_memory_gb_per_gpu=[3.0, 3.1])
    st = RunStatus("r", tmp_path, "running", "training", 3, 10, metrics=[step])
    request = gr.Request(session_hash=f"page-metrics-{lang}")
    i18n.SESSIONS[request.session_hash] = lang
    token = LocalContext.request.set(request)  # the handler answers this page, as in an event
    try:
        status = train_tab.status_view(st)[0]
    finally:
        LocalContext.request.reset(token)
        i18n.SESSIONS.pop(request.session_hash)
    assert "0.123" in status and "75%" in status and "40" in status and "3.00 · 3.10" in status
    assert not english_left(status), status


@pytest.mark.parametrize("lang", ["zh", "ru"])
def test_the_train_tabs_data_check_answers_in_the_pages_language(lang, identity_file, tmp_path):
    """The line under the objective ("⚠ DPO needs preference pairs ...; this dataset is alpaca. It suits Chat
    fine-tuning (SFT).", "✅ The dataset (alpaca) suits this objective.") was never passed through `say`, and the
    engine's sentence had no template: English on a translated page."""
    from ui import train_tab

    request = gr.Request(session_hash=f"page-data-note-{lang}")
    i18n.SESSIONS[request.session_hash] = lang
    token = LocalContext.request.set(request)  # the handler answers this page, as in an event
    try:
        notes = [train_tab.data_note(objective, str(identity_file), "", "", "train") for objective in ("dpo", "sft")]
    finally:
        LocalContext.request.reset(token)
        i18n.SESSIONS.pop(request.session_hash)
    assert notes[0].startswith("⚠ ") and notes[1].startswith("✅ ") and "alpaca" in notes[0], notes
    for note in notes:
        assert not english_left(note), note
