"""The interface in English, Chinese and Russian, switchable at any time.

Strings are keyed by their English text: after the layout is built, `translatable` collects every component whose
label, placeholder, help line, text, choices or axis titles appear in STRINGS, and the language switch returns one
update for each. Messages that handlers write stay English in the engine and are translated at the UI boundary:
a handler passes its text through `say`, which translates each whole sentence whose text or template is known
(`message`, templates in i18n_more.MESSAGES) into the language picked on the page the answer goes to; the switch
translates the ones already on screen the same way. Sentences with no template stay in English.
"""

import re

import gradio as gr
import pandas as pd
from gradio.context import LocalContext

from ui import i18n_more

LANGUAGES = {"English": "en", "中文": "zh", "Русский": "ru"}
STRINGS = {  # English: (Chinese, Russian)
    "# Tunesmith\nPick a model, drop in a dataset, press Train, chat with the result, export it.": (
        "# Tunesmith\n选择模型，放入数据集，点击训练，与结果对话，然后导出。",
        "# Tunesmith\nВыберите модель, добавьте датасет, нажмите «Обучить», поговорите с результатом, экспортируйте.",
    ),
    "Language": ("语言", "Язык"),
    "Model": ("模型", "Модель"),
    "Data": ("数据", "Данные"),
    "Train": ("训练", "Обучение"),
    "Chat": ("对话", "Чат"),
    "Export": ("导出", "Экспорт"),
    "Model catalog": ("模型目录", "Каталог моделей"),
    "…or a hub id or local folder": ("…或 Hub ID / 本地文件夹", "…или ID на хабе / локальная папка"),
    "Method": ("方法", "Метод"),
    "QLoRA: 4-bit base, least memory": ("QLoRA：4 位基座，显存最少", "QLoRA: 4-битная база, меньше всего памяти"),
    "LoRA: 16-bit base, a little faster": ("LoRA：16 位基座，稍快", "LoRA: 16-битная база, чуть быстрее"),
    "Full fine-tuning: all weights, most memory": (
        "全量微调：全部权重，显存最多",
        "Полное дообучение: все веса, больше всего памяти",
    ),
    "Trust remote code (runs Python shipped with the model: only for models you trust)": (
        "信任远程代码（运行模型自带的 Python 代码：仅限可信模型）",
        "Доверять удалённому коду (запускает Python из модели: только для доверенных моделей)",
    ),
    "Dataset file (JSON, JSONL, CSV, TSV, Parquet, TXT)": (
        "数据集文件（JSON、JSONL、CSV、TSV、Parquet、TXT）",
        "Файл датасета (JSON, JSONL, CSV, TSV, Parquet, TXT)",
    ),
    "…or a hub dataset id": ("…或 Hub 数据集 ID", "…или ID датасета на хабе"),
    "Config": ("配置", "Конфигурация"),
    "Split": ("划分", "Сплит"),
    "Load hub dataset": ("加载 Hub 数据集", "Загрузить датасет с хаба"),
    "Column mapping (when your columns have other names)": (
        "列映射（列名不同时）",
        "Сопоставление колонок (если названия другие)",
    ),
    "Chat template (auto: the model's own)": (
        "对话模板（auto：模型自带）",
        "Шаблон чата (auto: собственный шаблон модели)",
    ),
    "Max sequence length": ("最大序列长度", "Макс. длина последовательности"),
    "Identity dataset: teach the model its name and maker": (
        "身份数据集：教模型它的名字和开发者",
        "Датасет личности: научите модель её имени и создателю",
    ),
    "Name": ("名字", "Имя"),
    "Maker": ("开发者", "Создатель"),
    "Description (optional)": ("描述（可选）", "Описание (необязательно)"),
    "Languages": ("语言", "Языки"),
    "Generate": ("生成", "Сгенерировать"),
    "Identity examples (editable)": ("身份示例（可编辑）", "Примеры (можно редактировать)"),
    "Save and use this dataset": ("保存并使用此数据集", "Сохранить и использовать"),
    "Dataset in use": ("当前数据集", "Используемый датасет"),
    "No dataset yet: upload a file, name a hub dataset, or generate an identity dataset.": (
        "还没有数据集：上传文件、填写 Hub 数据集，或生成身份数据集。",
        "Датасета пока нет: загрузите файл, укажите датасет с хаба или сгенерируйте датасет личности.",
    ),
    "First example as the model sees it (highlighted: what it learns)": (
        "模型看到的第一个样本（高亮部分：模型学习的内容）",
        "Первый пример глазами модели (выделено то, чему она учится)",
    ),
    "Tokens per example": ("每个样本的 token 数", "Токенов в примере"),
    "Pick a model to see the preset for this GPU.": (
        "选择模型以查看此 GPU 的预设。",
        "Выберите модель, чтобы увидеть пресет для этой видеокарты.",
    ),
    "The loaded job's settings are kept.": (
        "已保留所加载任务的设置。",
        "Настройки загруженного задания сохранены.",
    ),
    "Run name": ("运行名称", "Название запуска"),
    "Steps (0: use epochs)": ("步数（0：按轮数）", "Шаги (0: по эпохам)"),
    "Epochs": ("轮数", "Эпохи"),
    "Learning rate": ("学习率", "Скорость обучения"),
    "Advanced": ("高级", "Дополнительно"),
    "Batch size": ("批大小", "Размер батча"),
    "Gradient accumulation": ("梯度累积", "Накопление градиента"),
    "LoRA rank (alpha = rank)": ("LoRA 秩（alpha = 秩）", "Ранг LoRA (alpha = ранг)"),
    "Gradient checkpointing (less memory, slower)": (
        "梯度检查点（省显存，较慢）",
        "Чекпоинтинг градиентов (меньше памяти, медленнее)",
    ),
    "Pack short examples (faster; the max length is on the Data tab)": (
        "打包短样本（更快；最大长度在数据页）",
        "Упаковывать короткие примеры (быстрее; длина на вкладке «Данные»)",
    ),
    "Objective": ("训练目标", "Цель обучения"),
    "Chat fine-tuning (SFT): learn from example conversations": (
        "对话微调（SFT）：从示例对话中学习",
        "Дообучение на диалогах (SFT): учится на примерах бесед",
    ),
    "Continued pretraining: raw text, every token": (
        "继续预训练：纯文本，每个 token 都学习",
        "Продолженное предобучение: обычный текст, каждый токен",
    ),
    "DPO: prefer the chosen reply over the rejected one": (
        "DPO：偏好选中的回复而非被拒绝的回复",
        "DPO: предпочитать выбранный ответ отклонённому",
    ),
    "ORPO: like DPO, in one pass with no reference model": (
        "ORPO：类似 DPO，一次完成，无需参考模型",
        "ORPO: как DPO, за один проход и без эталонной модели",
    ),
    "GRPO: sample replies, learn from rewards": (
        "GRPO：采样回复，从奖励中学习",
        "GRPO: генерирует ответы и учится на наградах",
    ),
    "Beta (DPO: pull towards the base model; ORPO: weight of the preference term)": (
        "Beta（DPO：向基座模型靠拢的力度；ORPO：偏好项的权重）",
        "Beta (DPO: притяжение к базовой модели; ORPO: вес слагаемого предпочтения)",
    ),
    "Replies per prompt": ("每个提示的回复数", "Ответов на запрос"),
    "Longest reply (tokens)": ("最长回复（token）", "Самый длинный ответ (токены)"),
    "Sampling temperature": ("采样温度", "Температура выборки"),
    "Rewards: tick the ones to use; the weights set how much each counts.": (
        "奖励：勾选要使用的奖励；权重决定各自的分量。",
        "Награды: отметьте нужные; веса задают, сколько значит каждая.",
    ),
    "Answer matches the dataset column": ("答案与数据集中的列一致", "Ответ совпадает с колонкой датасета"),
    "Column": ("列", "Колонка"),
    "Weight": ("权重", "Вес"),
    "Reply matches a regular expression": ("回复匹配正则表达式", "Ответ соответствует регулярному выражению"),
    "Pattern": ("模式", "Шаблон"),
    "A reasoning block, then an answer (<think>…</think>)": (
        "先推理块，再给答案（<think>…</think>）",
        "Сначала блок рассуждений, затем ответ (<think>…</think>)",
    ),
    "Length within bounds (characters)": ("长度在范围内（字符）", "Длина в пределах (символы)"),
    "Min": ("最小", "Мин."),
    "Max": ("最大", "Макс."),
    "Stays in character: names itself, never another assistant": (
        "保持角色：说出自己的名字，绝不自称其他助手",
        "Остаётся в образе: называет себя, а не другого ассистента",
    ),
    "Also train the embeddings and output layer (new vocabulary or language; large)": (
        "同时训练词嵌入和输出层（新词汇或新语言；体积大）",
        "Также обучать эмбеддинги и выходной слой (новая лексика или язык; объёмно)",
    ),
    "Their learning rate": ("它们的学习率", "Их скорость обучения"),
    "Method metric": ("方法指标", "Метрика метода"),
    "Start training": ("开始训练", "Начать обучение"),
    "Cancel": ("取消", "Отменить"),
    "Stop": ("停止", "Остановить"),
    "Run": ("运行", "Запуск"),
    "No run yet.": ("还没有运行。", "Запусков пока нет."),
    "Loss": ("损失", "Потери"),
    "Log": ("日志", "Журнал"),
    "Show log": ("显示日志", "Показать журнал"),
    "log.txt (last 200 lines)": ("log.txt（最后 200 行）", "log.txt (последние 200 строк)"),
    "Run history": ("运行历史", "История запусков"),
    "Refresh": ("刷新", "Обновить"),
    "Resume": ("继续", "Продолжить"),
    "Chat with this run": ("与此运行对话", "Чат с этим запуском"),
    "Delete": ("删除", "Удалить"),
    "Run, GGUF file or model": ("运行、GGUF 文件或模型", "Запуск, GGUF-файл или модель"),
    "Refresh runs": ("刷新运行列表", "Обновить список"),
    "Load": ("加载", "Загрузить"),
    "System prompt": ("系统提示词", "Системный промпт"),
    "Temperature (0: greedy)": ("温度（0：贪心）", "Температура (0: жадный выбор)"),
    "Max new tokens": ("最大新 token 数", "Максимум новых токенов"),
    "Message": ("消息", "Сообщение"),
    "Send": ("发送", "Отправить"),
    "Format": ("格式", "Формат"),
    "LoRA adapter (small; needs the base model)": (
        "LoRA 适配器（小；需要基座模型）",
        "Адаптер LoRA (маленький; нужна базовая модель)",
    ),
    "Merged 16-bit safetensors (standalone)": (
        "合并的 16 位 safetensors（独立）",
        "Объединённые 16-битные safetensors (самостоятельные)",
    ),
    "GGUF Q4_K_M (Ollama / llama.cpp, smallest)": (
        "GGUF Q4_K_M（Ollama / llama.cpp，最小）",
        "GGUF Q4_K_M (Ollama / llama.cpp, самый маленький)",
    ),
    "GGUF MXFP4 experts, rest Q8_0 (mixture-of-experts models)": (
        "GGUF MXFP4 专家层，其余 Q8_0（混合专家模型）",
        "GGUF: эксперты в MXFP4, остальное Q8_0 (модели со смесью экспертов)",
    ),
    "Folder name (under exports/)": ("文件夹名（在 exports/ 下）", "Имя папки (в exports/)"),
    "Blank: the name shown in grey.": ("留空：使用灰色显示的名称。", "Пусто: имя, показанное серым."),
    "Cancel export": ("取消导出", "Отменить экспорт"),
    "Export log": ("导出日志", "Журнал экспорта"),
    "Top-p": ("Top-p", "Top-p"),
    "Top-k (0: off)": ("Top-k（0：关闭）", "Top-k (0: выключено)"),
    "Min-p": ("Min-p", "Min-p"),
    "Repetition penalty": ("重复惩罚", "Штраф за повторы"),
    "Base vs fine-tuned (same prompt)": (
        "基座模型 vs 微调模型（同一提示词）",
        "Базовая модель и дообученная (один промпт)",
    ),
    "Base model (adapter off)": ("基座模型（关闭适配器）", "Базовая (адаптер выкл.)"),
    "Fine-tuned": ("微调后", "Дообученная"),
    "Prompt for both models": ("两个模型共用的提示词", "Промпт для обеих моделей"),
    "Compare": ("对比", "Сравнить"),
    "Push to the Hugging Face hub": ("推送到 Hugging Face Hub", "Загрузить на Hugging Face Hub"),
    "Hub repository (user/name)": ("Hub 仓库（用户/名称）", "Репозиторий на хабе (user/name)"),
    "Hugging Face token (blank: HF_TOKEN or your `hf auth login`)": (
        "Hugging Face 令牌（留空：使用 HF_TOKEN 或 `hf auth login` 保存的登录）",
        "Токен Hugging Face (пусто: HF_TOKEN или ваш `hf auth login`)",
    ),
    "Create it private": ("创建为私有仓库", "Создать приватным"),
    "Download": ("下载", "Скачать"),
    "Evaluate": ("评估", "Оценка"),
    "Runs to evaluate": ("要评估的运行", "Запуски для оценки"),
    "GGUF files": ("GGUF 文件", "Файлы GGUF"),
    "Include the base model": ("包括基座模型", "Включить базовую модель"),
    "Questions file (empty: the run's held-out rows, else its training questions)": (
        "问题文件（留空：使用运行留出的行，没有则用它的训练问题）",
        "Файл с вопросами (пусто: отложенные строки запуска, иначе вопросы из его обучения)",
    ),
    "Questions (at most)": ("问题数（最多）", "Вопросов (не больше)"),
    "Longest answer (tokens)": ("最长回答（token 数）", "Самый длинный ответ (токенов)"),
    "Scoring": ("评分", "Оценивание"),
    "Example answers": ("示例回答", "Примеры ответов"),
    "### Compare runs": ("### 对比运行", "### Сравнение запусков"),
    "Runs to compare": ("要对比的运行", "Запуски для сравнения"),
    "Settings that differ": ("不同的设置", "Различающиеся настройки"),
    "Loss curves": ("损失曲线", "Кривые потерь"),
    "Latest eval scores": ("最新评估得分", "Последние оценки"),
    "◀ Previous example": ("◀ 上一个样本", "◀ Предыдущий пример"),
    "Example": ("样本", "Пример"),
    "Next example ▶": ("下一个样本 ▶", "Следующий пример ▶"),
    "The example as the model sees it (highlighted: what it learns)": (
        "模型看到的样本（高亮部分：模型学习的内容）",
        "Пример глазами модели (выделено то, чему она учится)",
    ),
}
STRINGS.update(i18n_more.STRINGS)
PLOTS = (gr.LinePlot, gr.BarPlot, gr.ScatterPlot)
SESSIONS: dict[str, str] = {}  # page session -> the language picked there (a fresh page starts in English)
ORIGINALS: dict[str, str] = {}  # a translated live text -> its English, so that switching again starts from it


def tr(text: str, lang: str) -> str:
    if lang == "en" or text not in STRINGS:
        return text
    return STRINGS[text][0 if lang == "zh" else 1]


def translatable(blocks) -> list[tuple[object, dict]]:
    """(component, {attribute: English}) for every component showing a string of STRINGS."""
    items = []
    for block in blocks.values():
        fields = {a: getattr(block, a) for a in ("label", "placeholder", "info") if getattr(block, a, None) in STRINGS}
        if isinstance(block, (gr.Button, gr.Markdown)) and block.value in STRINGS:
            fields["value"] = block.value
        if any(label in STRINGS for label, _ in getattr(block, "choices", None) or ()):
            fields["choices"] = list(block.choices)
        if isinstance(block, gr.Dataframe) and any(h in STRINGS for h in block.headers or ()):
            fields["headers"] = tuple(block.headers)  # an empty table shows these; a filled one its own columns
        if isinstance(block, PLOTS):  # an axis is titled with its column's name unless given a title
            for axis in ("x", "y", "color"):
                title = getattr(block, f"{axis}_title") or getattr(block, axis)
                if title in STRINGS:
                    fields[f"{axis}_title"] = title
        if fields:
            items.append((block, fields))
    return items


def shown(items: list[tuple[object, dict]]) -> list:
    """The components whose text `switcher` translates: pass them after the language, so that a text a handler
    has written since (a dataset summary, a run's status) is kept rather than reset to the translated default."""
    return [block for block, fields in items if "value" in fields or "headers" in fields]


def switcher(items: list[tuple[object, dict]]):
    """The handler for the language selector: one update per translatable component. Given the current texts of
    `shown(items)` after the language, it leaves alone those that are no longer a default text."""

    def switch(language: str, *current) -> list:
        lang = LANGUAGES.get(language, "en")
        if session():  # called by a page (not directly, as in tests or scripts)
            SESSIONS[session()] = lang
        live = (i for i, (_, fields) in enumerate(items) if "value" in fields or "headers" in fields)
        texts = dict(zip(live, current, strict=False))
        updates = []
        for i, (_, fields) in enumerate(items):
            kw = {}
            for attr, english in fields.items():
                if attr == "value" and i in texts and texts[i] not in (english, *STRINGS[english]):
                    text = message(ORIGINALS.get(texts[i], texts[i]), lang)  # written by a handler: live state
                    if text != texts[i]:
                        kw["value"] = text
                    continue
                if attr == "headers":
                    kw["value"] = _table(texts.get(i), english, lang)
                    continue
                if attr == "choices":
                    kw["choices"] = [(tr(label, lang), value) for label, value in english]
                else:
                    kw[attr] = tr(english, lang)
            updates.append(gr.update(**kw))
        return updates

    return switch


def _table(value, headers: tuple[str, ...], lang: str) -> pd.DataFrame:
    """A table's current value with its column names in `lang` (its default headers when it is empty)."""
    if not isinstance(value, pd.DataFrame) or value.empty:
        value = pd.DataFrame(columns=headers)
    return value.rename(columns=lambda name: message(ORIGINALS.get(name, name), lang))


def message(text: str, lang: str) -> str:
    """`text` as a handler wrote it (English), in `lang`: each " · "-separated part translated whole when it is a
    known string or matches a template of i18n_more.MESSAGES (keeping **bold**); unknown parts stay as they are."""
    if lang == "en" or not isinstance(text, str):
        return text
    out = "\n".join(" · ".join(_part(part, lang) for part in line.split(" · ")) for line in text.split("\n"))
    if out != text:
        if len(ORIGINALS) > 5000:  # live texts change every second while training: keep the memory bounded
            ORIGINALS.clear()
        ORIGINALS[out] = text
    return out


def _part(part: str, lang: str) -> str:
    before, core, after = re.fullmatch(r"(\s*\**)(.*?)(\**\s*)", part, re.S).groups()
    if core in STRINGS:
        return before + tr(core, lang) + after
    for pattern, zh, ru in i18n_more.PATTERNS:
        if m := pattern.fullmatch(core):
            groups = (_part(group, lang) for group in m.groups(""))  # a group may be a template itself: durations
            return before + (zh if lang == "zh" else ru).format(*groups) + after
    return part


def session() -> str:
    """The page session of the event being handled ("" outside one)."""
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) or ""


def say(text: str) -> str:
    """`text`, a message a handler is about to show, in the language picked on the page it goes to."""
    return message(text, SESSIONS.get(session(), "en"))


def english(text: str) -> str:
    """A message `say` translated, back in English as the handler wrote it: for a handler that tells one answer from
    another by its words (a refusal starts "**Not started:**" in English only)."""
    return ORIGINALS.get(text, text)
