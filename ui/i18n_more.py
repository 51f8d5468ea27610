"""Chinese and Russian for the texts added after the first translation: the Train tab's help lines and Advanced
section, its plots, history and confirmation, the Evaluate tab, table headers and axis titles, and the templates of
the live messages (GPU lines, progress, run states) that `i18n.message` translates whole at the UI boundary.

Kept apart from i18n.py so that the mechanism stays short; i18n.STRINGS includes these.
"""

import re

from ui import i18n_engine, i18n_jobs, i18n_refusals

STRINGS = {  # English: (Chinese, Russian)
    # Model and Data tabs
    "Qwen/Qwen3-0.6B or /path/to/model": ("Qwen/Qwen3-0.6B 或 /path/to/model", "Qwen/Qwen3-0.6B или /путь/к/модели"),
    "Pick a model from the list or type a hub id / local folder.": (
        "从列表中选择模型，或输入 Hub ID / 本地文件夹。",
        "Выберите модель из списка или введите ID на хабе / локальную папку.",
    ),
    "(default)": ("（默认）", "(по умолчанию)"),
    "Export log lines": ("导出日志内容", "Строки журнала экспорта"),
    "Who are you?": ("你是谁？", "Кто ты?"),
    "tokens": ("token 数", "токены"),
    "rows": ("行数", "строки"),
    # Train tab: everyday settings' help lines
    "The run folder is runs/<date>-<time>-<name>.": (
        "运行文件夹为 runs/<日期>-<时间>-<名称>。",
        "Папка запуска: runs/<дата>-<время>-<имя>.",
    ),
    "Optimizer steps to train.": ("要训练的优化器步数。", "Шагов оптимизатора."),
    "Passes over the data, when Steps is 0.": ("步数为 0 时遍历数据的轮数。", "Проходы по данным, когда шагов 0."),
    "Peak step size: 1e-4 to 5e-4 for LoRA; too high ruins it.": (
        "峰值步长：LoRA 用 1e-4 到 5e-4；过高会毁掉训练。",
        "Пиковый шаг: 1e-4–5e-4 для LoRA; слишком большой всё портит.",
    ),
    "Examples per micro-step; memory grows with it.": (
        "每个微步的样本数；显存随之增长。",
        "Примеров на микрошаг; память растёт.",
    ),
    "Micro-steps per step; no memory.": ("每步的微步数；不占显存。", "Микрошагов на шаг; без лишней памяти."),
    "Adapter capacity; more: slower.": ("适配器容量；越大越慢。", "Ёмкость адаптера; больше — медленнее."),
    "Recomputes layers in the backward.": ("反向传播时重新计算各层。", "Пересчитывает слои при обратном проходе."),
    "Fills each row with several short examples: fewer padded tokens.": (
        "每行装入多个短样本：填充 token 更少。",
        "Несколько коротких примеров в строке: меньше паддинга.",
    ),
    "exact": ("精确", "точно"),
    "numeric": ("数值", "числом"),
    # Train tab: Advanced section (train_settings.ADVANCED)
    "Warmup steps": ("预热步数", "Шаги разогрева"),
    "Steps over which the learning rate rises to its peak; steadies the start.": (
        "学习率升到峰值所用的步数；让开头更平稳。",
        "За сколько шагов скорость обучения растёт до пика; сглаживает старт.",
    ),
    "Learning-rate schedule": ("学习率调度", "График скорости обучения"),
    "How the learning rate falls after warmup: to 0, or constant.": (
        "预热后学习率如何下降：降到 0，或保持不变。",
        "Как скорость падает после разогрева: до 0 или не меняется.",
    ),
    "linear": ("线性", "линейный"),
    "cosine": ("余弦", "косинусный"),
    "constant": ("恒定", "постоянный"),
    "Weight decay": ("权重衰减", "Затухание весов"),
    "Pulls weights towards 0 each step; 0 (the default) suits LoRA.": (
        "每步把权重拉向 0；0（默认）适合 LoRA。",
        "Тянет веса к 0 на каждом шаге; 0 (по умолчанию) подходит LoRA.",
    ),
    "Gradient clipping": ("梯度裁剪", "Обрезка градиента"),
    "Largest gradient norm a step may use; 0 turns clipping off.": (
        "每步允许的最大梯度范数；0 表示关闭裁剪。",
        "Наибольшая норма градиента на шаг; 0 выключает обрезку.",
    ),
    "Optimizer": ("优化器", "Оптимизатор"),
    "auto: 8-bit AdamW on a GPU (1/4 the state memory), AdamW on the CPU.": (
        "auto：GPU 上用 8 位 AdamW（状态显存为 1/4），CPU 上用 AdamW。",
        "auto: 8-битный AdamW на GPU (1/4 памяти состояния), AdamW на CPU.",
    ),
    "LoRA alpha (0: same as the rank)": ("LoRA alpha（0：等于秩）", "LoRA alpha (0: равна рангу)"),
    "Scales the adapter's effect (alpha / rank).": (
        "缩放适配器的作用（alpha / 秩）。",
        "Масштаб влияния адаптера (alpha / ранг).",
    ),
    "LoRA dropout": ("LoRA dropout", "Дропаут LoRA"),
    "Share of adapter inputs dropped while training; against overfitting.": (
        "训练时丢弃的适配器输入比例；防止过拟合。",
        "Доля входов адаптера, отбрасываемых при обучении; против переобучения.",
    ),
    "Scale by alpha / √rank: steadier at high ranks.": (
        "按 alpha / √秩 缩放：高秩时更稳。",
        "Масштаб alpha / √ранг: стабильнее при больших рангах.",
    ),
    "Layers with adapters": ("加适配器的层", "Слои с адаптерами"),
    "More layers learn more, for a little more memory and time.": (
        "层越多学得越多，显存和时间略增。",
        "Больше слоёв — больше учится, чуть больше памяти и времени.",
    ),
    "Seed": ("随机种子", "Сид"),
    "Fixes the data order and the adapter's start: the same seed repeats a run.": (
        "固定数据顺序和适配器初值：相同种子可复现运行。",
        "Фиксирует порядок данных и старт адаптера: тот же сид повторяет запуск.",
    ),
    "Checkpoint every N steps (0: at the end only)": (
        "每 N 步保存检查点（0：仅在结束时）",
        "Чекпоинт каждые N шагов (0: только в конце)",
    ),
    "Each checkpoint pauses training to write.": (
        "每次保存都会暂停训练来写盘。",
        "Каждый чекпоинт приостанавливает обучение.",
    ),
    "Checkpoint every N minutes (0: off)": ("每 N 分钟保存检查点（0：关闭）", "Чекпоинт каждые N минут (0: выкл.)"),
    "A time-based save, so a crash loses little.": (
        "按时间保存，崩溃时损失很少。",
        "Сохранение по времени: при сбое теряется мало.",
    ),
    "Checkpoints kept": ("保留的检查点数", "Хранить чекпоинтов"),
    "Older ones are deleted; each takes the adapter's size on disk.": (
        "更早的会被删除；每个占用一个适配器大小的磁盘空间。",
        "Старые удаляются; каждый занимает на диске размер адаптера.",
    ),
    "Learn the prompts too": ("也学习提示词", "Учить и промпты"),
    "Off: loss on the replies only, what chat models need.": (
        "关闭：只对回复计算损失，对话模型需要这样。",
        "Выкл.: потери только на ответах, как нужно чат-моделям.",
    ),
    "Added as a system turn to every example that has none.": (
        "作为系统消息加到每个没有系统消息的样本中。",
        "Добавляется как системная реплика в примеры без неё.",
    ),
    "Fast kernels": ("快速内核", "Быстрые ядра"),
    "Tunesmith's kernels for Llama, Mistral, Qwen and Gemma; off: plain PyTorch.": (
        "Tunesmith 为 Llama、Mistral、Qwen 和 Gemma 提供的内核；关闭：纯 PyTorch。",
        "Ядра Tunesmith для Llama, Mistral, Qwen и Gemma; выкл.: обычный PyTorch.",
    ),
    "Device": ("设备", "Устройство"),
    "auto: the GPU when there is one.": ("auto：有 GPU 时用 GPU。", "auto: GPU, если он есть."),
    "Precision": ("精度", "Точность"),
    "auto: bf16 where the GPU has it, fp16 otherwise, fp32 on the CPU.": (
        "auto：GPU 支持时用 bf16，否则 fp16，CPU 上 fp32。",
        "auto: bf16, где GPU умеет, иначе fp16; fp32 на CPU.",
    ),
    "GRPO: KL penalty": ("GRPO：KL 惩罚", "GRPO: штраф KL"),
    "Pull towards the base model; 0 skips the reference pass (faster).": (
        "向基座模型靠拢；0 跳过参考模型计算（更快）。",
        "Притяжение к базовой модели; 0 пропускает эталонный проход (быстрее).",
    ),
    "Held out for validation (0-1)": ("留作验证的比例（0-1）", "Доля для валидации (0-1)"),
    "The run held no rows out for validation, so these are questions it was trained on: the scores show what it "
    "learned, not how it answers new questions. For that, type a questions file, or train with 'Held out for "
    "validation (0-1)' above 0 (Train tab, Advanced).": (
        "该运行没有留出验证行，所以这些是它训练过的问题：分数反映它学到了什么，而不是它如何回答新问题。"
        "要评估后者，请填写问题文件，或在训练时把“留作验证的比例（0-1）”设为大于 0（训练页，高级）。",
        "Запуск не отложил строк для валидации, поэтому это вопросы, на которых он обучался: оценки показывают, "
        "что он выучил, а не как он отвечает на новые вопросы. Для этого укажите файл с вопросами или обучайте с "
        "«Доля для валидации (0-1)» больше 0 (вкладка «Обучение», «Дополнительно»).",
    ),
    "Share of rows kept out to measure a validation loss.": (
        "留出部分行来测量验证损失。",
        "Доля строк, отложенных для потерь на валидации.",
    ),
    "Validation every N steps (0: ~10 times)": (
        "每 N 步验证一次（0：约 10 次）",
        "Валидация каждые N шагов (0: ~10 раз)",
    ),
    "Each pass runs the held-out rows once.": ("每次把留出的行跑一遍。", "Каждый проход прогоняет отложенные строки."),
    "GPUs (0: every visible one)": ("GPU 数（0：全部可见的）", "GPU (0: все видимые)"),
    "Several GPUs train data-parallel, one process each.": (
        "多块 GPU 数据并行训练，每块一个进程。",
        "Несколько GPU учат параллельно, по процессу на каждый.",
    ),
    "Adapters on experts (MoE)": ("专家层加适配器（MoE）", "Адаптеры на экспертах (MoE)"),
    "Mixture-of-experts models: train the experts too.": (
        "混合专家模型：也训练专家层。",
        "Модели со смесью экспертов: учить и экспертов.",
    ),
    "Job file and command line": ("任务文件与命令行", "Файл задания и командная строка"),
    "Save as job.yaml": ("保存为 job.yaml", "Сохранить как job.yaml"),
    "Load job.yaml": ("加载 job.yaml", "Загрузить job.yaml"),
    # Train tab: plots, history, deleting
    "Tokens/s": ("token/秒", "Токенов/с"),
    "tokens/s": ("token/秒", "токенов/с"),
    "Memory (GB)": ("显存（GB）", "Память (ГБ)"),
    "GB": ("GB", "ГБ"),
    "step": ("步", "шаг"),
    "loss": ("损失", "потери"),
    "value": ("数值", "значение"),
    "series": ("曲线", "ряд"),
    "run": ("运行", "запуск"),
    "state": ("状态", "состояние"),
    "model": ("模型", "модель"),
    "started": ("开始于", "начат"),
    "duration": ("时长", "длительность"),
    "Yes, delete it": ("是，删除", "Да, удалить"),
    "Keep it": ("保留", "Оставить"),
    # Evaluate tab
    "Did the tune work? Score the base model, your runs and their GGUF exports on the same questions: the loss of the "
    "reference answers, and greedy answers checked against them.": (
        "微调有效吗？用同一组问题给基座模型、你的运行及其 GGUF 导出打分：参考答案的损失，以及与之核对的贪心回答。",
        "Сработало ли дообучение? Оцените базовую модель, ваши запуски и их GGUF на одних вопросах: потери на "
        "эталонных ответах и жадные ответы, сверенные с ними.",
    ),
    "Also score: the answer matches this regex": ("另计：回答匹配此正则", "Также оценить: ответ подходит под regex"),
    "Identity name (found in identity data when empty)": (
        "身份名字（留空：从身份数据中查找）",
        "Имя личности (пусто: из датасета личности)",
    ),
    "Identity maker": ("身份开发者", "Создатель личности"),
    "Scores (loss: lower is better; scores: share of questions)": (
        "得分（损失：越低越好；得分：问题占比）",
        "Оценки (потери: чем ниже, тем лучше; оценки: доля вопросов)",
    ),
    "perplexity": ("困惑度", "перплексия"),
    "question": ("问题", "вопрос"),
    "reference": ("参考答案", "эталон"),
    "setting": ("设置", "настройка"),
    "raw": ("原始", "исходные"),
    "reward mean": ("奖励均值", "средняя награда"),
    "reward std": ("奖励标准差", "разброс награды"),
    "margin (chosen − rejected)": ("差距（选中 − 拒绝）", "отрыв (выбранный − отклонённый)"),
    "smoothed": ("平滑", "сглаженные"),
    "train": ("训练", "обучение"),
    "validation": ("验证", "валидация"),
    "No run here has been evaluated yet: evaluate them above to see their scores.": (
        "这些运行还没有评估过：先在上方评估，才能看到得分。",
        "Эти запуски ещё не оценивались: оцените их выше, чтобы увидеть оценки.",
    ),
    # the names a refusal of Start or Save gives boxes whose labels say more (train_settings.BASIC)
    "Steps": ("步数", "Шаги"),
    "LoRA rank": ("LoRA 秩", "Ранг LoRA"),
    "Beta": ("Beta", "Beta"),
    "Their learning rate (embeddings)": ("词嵌入的学习率", "Скорость обучения эмбеддингов"),
}

# Live messages that handlers write (engine and UI sentences), translated whole: (English pattern, Chinese, Russian),
# the templates' {0}, {1}… being the pattern's groups in order. The states and messages are those of engine runlog.
MESSAGES = [
    (r"GPUs found: none\.", "找到的 GPU：无。", "Найдено GPU: нет."),
    (
        r"GPUs found: (\d+) \((.*)\), a run trains on all of them\.",
        "找到 {0} 块 GPU（{1}），运行会用上全部。",
        "Найдено GPU: {0} ({1}), запуск учится на всех.",
    ),
    (
        r"GPUs found: (\d+) \((.*)\), a (\w+) run trains on the first of them\.",
        "找到 {0} 块 GPU（{1}），{2} 运行只用第一块。",
        "Найдено GPU: {0} ({1}), запуск {2} учится только на первой.",
    ),
    (r"GPUs found: (\d+) \((.*)\)\.", "找到 {0} 块 GPU（{1}）。", "Найдено GPU: {0} ({1})."),
    (r"No run is training\.", "没有正在训练的运行。", "Ничего не обучается."),
    (r"step (\d+)/(\S+)", "第 {0}/{1} 步", "шаг {0}/{1}"),
    (r"elapsed (.+)", "已用 {0}", "прошло {0}"),
    (r"about (.+) left", "约剩 {0}", "осталось около {0}"),
    (r"(\d+) s", "{0} 秒", "{0} с"),
    (r"(\d+) min (\d+) s", "{0} 分 {1} 秒", "{0} мин {1} с"),
    (r"(\d+) h (\d+) min", "{0} 小时 {1} 分", "{0} ч {1} мин"),
    (r"loss (\S+)", "损失 {0}", "потери {0}"),
    (r"grad norm (\S+)", "梯度范数 {0}", "норма градиента {0}"),
    (r"(\S+) tokens/s", "{0} token/秒", "{0} токенов/с"),
    (r"memory (\S+) GB", "显存 {0} GB", "память {0} ГБ"),
    (
        r"GPU: (\S+) / (\S+) GB in use, (\d+)% busy",
        "GPU：已用 {0} / {1} GB，{2}% 繁忙",
        "GPU: занято {0} / {1} ГБ, загрузка {2}%",
    ),
    (r"The full log is under \*Log\* below\.", "完整日志见下方 *日志*。", "Полный журнал — ниже, в разделе *Журнал*."),
    (r"Model:\*\* (.*)", "模型：** {0}", "Модель:** {0}"),
    (r"method:\*\* (.*)", "方法：** {0}", "метод:** {0}"),
    (r"cancelling", "正在取消", "отмена"),
    (r"saving a checkpoint, then stopping…", "先保存检查点，然后停止…", "сохраняю чекпоинт, затем остановка…"),
    (r"(.*) \(nothing to cancel\)", "{0}（无可取消）", "{0} (отменять нечего)"),
    (
        r"(\d+) questions? from the held-out rows of the run\.",
        "来自运行留出行的 {0} 个问题。",
        "{0} вопросов из отложенных строк запуска.",
    ),
    (
        r"(\d+) questions? from the run's training data \((`.*`)\)\.",
        "来自运行训练数据（{1}）的 {0} 个问题。",
        "{0} вопросов из обучающих данных запуска ({1}).",
    ),
    (r"(\d+) questions? from (`.*`)\.", "来自 {1} 的 {0} 个问题。", "{0} вопросов из {1}."),
    (r"Nothing was saved\.", "未保存任何内容。", "Ничего не сохранено."),
    (
        r"The GPU ran out of memory evaluating (.*); lower 'Longest answer \(tokens\)', or evaluate on shorter "
        r"questions or a smaller model\.",
        "评估 {0} 时 GPU 内存不足；请调低“最长回答（token 数）”，或用更短的问题或更小的模型评估。",
        "При оценке {0} не хватило памяти GPU; уменьшите «Самый длинный ответ (токенов)» или оценивайте на более "
        "коротких вопросах или меньшей модели.",
    ),
    (
        r"Every question is longer than the context of (.*), so it cannot answer any; evaluate on shorter questions\.",
        "每个问题都超出了 {0} 的上下文长度，它一个也无法回答；请用更短的问题评估。",
        "Каждый вопрос длиннее контекста {0}, поэтому она не может ответить ни на один; оценивайте на более коротких "
        "вопросах.",
    ),
    (
        r"(`.*`) could not answer (\d+) of the (\d+) questions, which are longer than its context: they are left out "
        r"of its scores\.",
        "{0} 无法回答 {2} 个问题中的 {1} 个（超出其上下文长度），它们不计入其得分。",
        "{0} не смогла ответить на {1} из {2} вопросов: они длиннее её контекста и не учтены в её оценках.",
    ),
    (
        r"Identity check: the answer names \*\*(.*)\*\* and \*\*(.*)\*\*\.",
        "身份检查：回答需说出 **{0}** 和 **{1}**。",
        "Проверка личности: ответ называет **{0}** и **{1}**.",
    ),
    (
        r"Saved to (`.*`) and `results\.json` beside it\.",
        "已保存到 {0}，旁边还有 `results.json`。",
        "Сохранено в {0}, рядом `results.json`.",
    ),
    (r"validation loss (\S+)", "验证损失 {0}", "потери на валидации {0}"),
    (
        r"best (\S+) at step (\d+) \(kept in the run's best/ folder\)",
        "最佳 {0}，在第 {1} 步（保存在运行的 best/ 文件夹）",
        "лучшие {0} на шаге {1} (сохранены в папке best/ запуска)",
    ),
    (r"loading the model", "正在加载模型", "загрузка модели"),
    (r"training", "训练中", "обучение"),
    (r"Training finished\.", "训练完成。", "Обучение завершено."),
    (
        r"Cancelled; resume continues from the last checkpoint, if any\.",
        "已取消；继续时从最后一个检查点开始（如有）。",
        "Отменено; продолжение начнётся с последнего чекпоинта, если он есть.",
    ),
    (r"loading", "加载中", "загрузка"),
    (r"running", "运行中", "идёт"),
    (r"done", "完成", "готово"),
    (r"failed", "失败", "ошибка"),
    (r"cancelled", "已取消", "отменён"),
]
# "**Not started:** <why>": the lead in bold, then the reason (itself translated when known).
LEADS = {
    "Not started": ("未开始", "Не запущено"),
    "Not resumed": ("未继续", "Не продолжено"),
    "Not deleted": ("未删除", "Не удалено"),
    "Not cancelled": ("未取消", "Не отменено"),
    "Cannot use this dataset": ("无法使用此数据集", "Нельзя использовать этот датасет"),
    "Not previewed": ("未预览", "Предпросмотр не показан"),
    "Cannot load": ("无法加载", "Не удалось загрузить"),
    "Not sent": ("未发送", "Не отправлено"),
    "Export failed": ("导出失败", "Экспорт не удался"),
    "Evaluation failed": ("评估失败", "Оценка не удалась"),
    "Evaluation stopped": ("评估已停止", "Оценка остановлена"),
    "Comparison failed": ("对比失败", "Сравнение не удалось"),
    "Upload failed": ("上传失败", "Загрузка не удалась"),
    "Exported; its download could not be prepared": (
        "已导出；但无法准备下载",
        "Экспортировано; скачивание не подготовлено",
    ),
    "Export cancelled": ("导出已取消", "Экспорт отменён"),
    "Export done": ("导出完成", "Экспорт готов"),
    "Cannot generate": ("无法生成", "Не удалось сгенерировать"),
    "Cannot save": ("无法保存", "Не удалось сохранить"),
    "Nothing to save": ("没有可保存的内容", "Нечего сохранять"),
    "Not loaded": ("未加载", "Не загружено"),
    "Not saved": ("未保存", "Не сохранено"),
    "Check": ("请检查", "Проверьте"),
    "Download failed": ("下载失败", "Скачивание не удалось"),
}
MESSAGES += [(re.escape(en) + r":\*\* (.*)", zh + "：** {0}", ru + ":** {0}") for en, (zh, ru) in LEADS.items()]
MESSAGES += [  # the engine's most common refusals, as the UI shows them
    (
        r"Exported \*\*(.*)\*\* to (`.*`) in (\S+) s\. ?(.*)",
        "已把 **{0}** 导出到 {1}，用时 {2} 秒。{3}",
        "**{0}** экспортирован в {1} за {2} с. {3}",
    ),
    (r"Download below: (.*)\.", "下方可下载：{0}。", "Скачать ниже: {0}."),
    (r"Uploaded to (.*)\.", "已上传到 {0}。", "Загружено на {0}."),
    (r"Exporting… (.*)", "正在导出… {0}", "Экспорт… {0}"),
    (r"No export to cancel\.", "没有可取消的导出。", "Нет экспорта для отмены."),
    (r"Evaluating…(.*)", "正在评估…{0}", "Оценка…{0}"),
    # its progress (ui.eval_tab.PROGRESS): the model in code quotes, then how far it has got
    (r"(`.*`): answering (\d+) questions?", "{0}：正在回答 {1} 个问题", "{0}: отвечает на вопросы ({1})"),
    (
        r"(`.*`): answered (\d+) of (\d+) questions?",
        "{0}：已回答 {1}/{2} 个问题",
        "{0}: отвечено вопросов: {1} из {2}",
    ),
    (
        r"(`.*`): measuring the loss on the (\d+) reference answers?",
        "{0}：正在计算 {1} 个参考答案上的损失",
        "{0}: считаются потери на эталонных ответах ({1})",
    ),
    (
        r"The evaluation stopped with an error; see the app's log\.",
        "评估因错误而停止；请查看应用的日志。",
        "Оценка остановилась из-за ошибки; см. журнал приложения.",
    ),
    (
        r"(\d+) question/answer pairs: edit them below, then save\.",
        "{0} 组问答：可在下方编辑，然后保存。",
        "Пар вопрос/ответ: {0}. Отредактируйте ниже и сохраните.",
    ),
    (r"generate the identity dataset first\.", "请先生成身份数据集。", "сначала сгенерируйте датасет личности."),
    (r"Saved (\d+) rows to (`.*`)\.", "已把 {0} 行保存到 {1}。", "Сохранено строк: {0}, в {1}."),
    (r"Loaded (`.*`)\.", "已加载 {0}。", "Загружено: {0}."),
    # Load job.yaml's notice: the settings loaded, then (each with the rest after it) what was not set from it
    (
        r"Loaded the settings of (.*): model (`.*`), dataset (`.*`)\.((?: .*)?)",
        "已加载 {0} 的设置：模型 {1}，数据集 {2}。{3}",
        "Загружены настройки из {0}: модель {1}, датасет {2}.{3}",
    ),
    (
        r"It asks for 'Trust remote code', which runs Python shipped with the model: that box is left unticked; "
        r"tick it on the Model tab only if you trust this model\.((?: .*)?)",
        "它要求“信任远程代码”，这会运行模型自带的 Python 代码：该选项保持未勾选；"
        "只有信任此模型时，才在模型页勾选它。{0}",
        "Он требует «Доверять удалённому коду», что запускает Python из модели: этот флажок оставлен снятым; "
        "отметьте его на вкладке «Модель», только если доверяете этой модели.{0}",
    ),
    (
        r"Its GRPO rewards (.*) are not shown here \(the tab has one of each preset, with its usual settings\): run "
        r"the file from the command line to train with them\.",
        "其 GRPO 奖励 {0} 未在此显示（此页每种预设只有一个，使用其常用设置）：请从命令行运行该文件，以用它们训练。",
        "Награды GRPO {0} здесь не показаны (на вкладке по одной награде каждого пресета, с обычными настройками): "
        "запустите файл из командной строки, чтобы обучать с ними.",
    ),
    (
        r"Its GRPO reward (.*) is not shown here \(the tab has one of each preset, with its usual settings\): run "
        r"the file from the command line to train with it\.",
        "其 GRPO 奖励 {0} 未在此显示（此页每种预设只有一个，使用其常用设置）：请从命令行运行该文件，以用它训练。",
        "Награда GRPO {0} здесь не показана (на вкладке по одной награде каждого пресета, с обычными настройками): "
        "запустите файл из командной строки, чтобы обучать с ней.",
    ),
    (r"Choose a job\.yaml file to load\.", "请选择要加载的 job.yaml 文件。", "Выберите файл job.yaml для загрузки."),
    (
        r"Run it from a terminal in the app's folder: (`.*`)",
        "在应用所在文件夹的终端中运行：{0}",
        "Запустите в терминале из папки приложения: {0}",
    ),
    # Start's and Save's checks of the settings (engine.spec.checks), each naming a box by its label
    (
        r"(.*) must be (.*); you entered (.*)\.",
        "{0}必须是{1}；你输入的是 {2}。",
        "Поле «{0}» должно быть: {1}; введено {2}.",
    ),
    (r"a positive number", "正数", "положительное число"),
    (r"(\S+) or a positive number", "{0} 或正数", "{0} или положительное число"),
    (r"at least (\S+) and below (\S+)", "不小于 {0} 且小于 {1}", "не меньше {0} и меньше {1}"),
    (r"a whole number from (\S+) to (\S+)", "{0} 到 {1} 之间的整数", "целое число от {0} до {1}"),
    (r"a whole number, (\S+) or more", "不小于 {0} 的整数", "целое число от {0} и больше"),
    (
        r"(.*) and (.*) are both 0: set one of them above 0\.",
        "{0}和{1}都是 0：请把其中一个设为大于 0。",
        "«{0}» и «{1}» равны 0: задайте одно из них больше 0.",
    ),
    (
        r"(.*) Press Start again to train anyway\.",
        "{0} 如仍要训练，请再次点击“开始训练”。",
        "{0} Чтобы всё равно начать обучение, нажмите «Начать обучение» ещё раз.",
    ),
    (
        r"(.*) (\S+) is far above the usual range for (\S+) \(at most (\S+)\); training is likely to diverge and "
        r"ruin the model\.",
        "{0} {1} 远高于 {2} 的常用范围（最多 {3}）；训练很可能发散并毁掉模型。",
        "{0} {1} намного выше обычного для {2} (не больше {3}); обучение, скорее всего, разойдётся и испортит модель.",
    ),
    (
        r"Delete run (`.*`) and everything in its folder \(checkpoints, adapter, log\)\? This cannot be undone\.",
        "删除运行 {0} 及其文件夹中的一切（检查点、适配器、日志）？此操作无法撤销。",
        "Удалить запуск {0} и всё в его папке (чекпоинты, адаптер, журнал)? Это нельзя отменить.",
    ),
    (
        r"Downloading (`.*`): (\S+) of (\S+) MB \((\d+)%\)",
        "正在下载 {0}：{1} / {2} MB（{3}%）",
        "Скачивание {0}: {1} из {2} МБ ({3}%)",
    ),
    (r"Downloading (`.*`): (\S+) MB so far", "正在下载 {0}：已下载 {1} MB", "Скачивание {0}: пока {1} МБ"),
    (r"Exporting \*\*(.*)\*\* to (`.*`)…", "正在把 **{0}** 导出到 {1}…", "Экспорт **{0}** в {1}…"),
    (r"Started run (`.*`)…", "已开始运行 {0}…", "Запущен {0}…"),
    (r"Resumed run (`.*`)…", "已继续运行 {0}…", "Продолжен {0}…"),
    (r"Deleted run (`.*`)\.", "已删除运行 {0}。", "Запуск {0} удалён."),
    (
        r"Run (`.*`) is still training; cancel it or wait for it to finish\.",
        "运行 {0} 仍在训练；请取消或等它结束。",
        "Запуск {0} ещё обучается; отмените его или дождитесь конца.",
    ),
    (
        r"Run (`.*`) is still training: chat with it once it has finished, or cancel it \(a cancelled run answers "
        r"from its last checkpoint\)\.",
        "运行 {0} 仍在训练：等它结束后再对话，或取消它（已取消的运行用其最后一个检查点回答）。",
        "Запуск {0} ещё обучается: поговорите с ним после окончания или отмените его (отменённый запуск отвечает "
        "по последней контрольной точке).",
    ),
    (
        r"Run (`.*`) is still training: evaluate it once it has finished, or cancel it \(a cancelled run answers "
        r"from its last checkpoint\)\.",
        "运行 {0} 仍在训练：等它结束后再评估，或取消它（已取消的运行用其最后一个检查点回答）。",
        "Запуск {0} ещё обучается: оцените его после окончания или отмените его (отменённый запуск отвечает "
        "по последней контрольной точке).",
    ),
    (
        r"Run (`.*`) is no longer in the runs folder \((.*)\): it was deleted or moved; pick another run\.",
        "运行 {0} 已不在运行文件夹（{1}）中：它已被删除或移动；请选择其他运行。",
        "Запуска {0} больше нет в папке запусков ({1}): он удалён или перемещён; выберите другой запуск.",
    ),
    (
        r"The (.*) of the reward '(.*)' is empty; enter a number\.",
        "奖励“{1}”的{0}为空；请输入一个数字。",
        "Поле «{0}» награды «{1}» пустое; введите число.",
    ),
    (
        r"(.*) is empty; enter a number\.",
        "{0}为空；请输入一个数字。",
        "Поле «{0}» пустое; введите число.",
    ),
    (
        r"Choose a dataset in the Data tab first\.",
        "请先在数据页选择数据集。",
        "Сначала выберите датасет на вкладке «Данные».",
    ),
    (
        r"Pick a model in the Model tab first\.",
        "请先在模型页选择模型。",
        "Сначала выберите модель на вкладке «Модель».",
    ),
    (r"Pick a run in the history first\.", "请先在历史中选择一个运行。", "Сначала выберите запуск в истории."),
    (r"Pick a run to export\.", "请选择要导出的运行。", "Выберите запуск для экспорта."),
    (
        r"Give the questions to evaluate on \(a questions file\), or add a run: its held-out rows are used, else the "
        r"questions it trained on\.",
        "请给出用于评估的问题（问题文件），或加入一个运行：使用它留出的行，否则用它训练过的问题。",
        "Укажите вопросы для оценки (файл вопросов) или добавьте запуск: берутся его отложенные строки, иначе вопросы, "
        "на которых он обучался.",
    ),
    (
        r"Pick a model, a run or a GGUF file to evaluate\.",
        "请选择要评估的模型、运行或 GGUF 文件。",
        "Выберите модель, запуск или GGUF-файл для оценки.",
    ),
    (
        r"Dataset file '(.*)' does not exist; check the path or upload it again\.",
        "数据集文件 '{0}' 不存在；请检查路径或重新上传。",
        "Файла датасета '{0}' нет; проверьте путь или загрузите заново.",
    ),
    (
        r"Model folder '(.*)' does not exist; give an existing folder or a hub id(?: like '.*')?\.",
        "模型文件夹 '{0}' 不存在；请给出已有文件夹或 Hub ID。",
        "Папки модели '{0}' нет; укажите существующую папку или ID на хабе.",
    ),
    (  # a hub id that cannot be read (engine.api.models): offline, misspelt, or gone
        r"Could not read the config of '(.*)' from the hub \((.*)\), and it is not in the local cache; check the "
        r"name and the connection, or give a local folder\.",
        "无法从 Hub 读取 '{0}' 的配置（{1}），本地缓存中也没有；请检查名称和网络连接，或给出本地文件夹。",
        "Не удалось прочитать конфигурацию '{0}' с хаба ({1}), и в локальном кеше её нет; проверьте название и "
        "подключение или укажите локальную папку.",
    ),
]
MESSAGES += [  # the Model tab's fit line and the Data tab's summary
    (r"this GPU \((\S+) GiB\)", "此 GPU（{0} GiB）", "в эту GPU ({0} ГиБ)"),
    (
        r"this GPU \((\S+) GiB, (\S+) GB preset\)",
        "此 GPU（{0} GiB，{1} GB 预设）",
        "в эту GPU ({0} ГиБ, пресет {1} ГБ)",
    ),
    (r"each of the (\d+) GPUs \((\S+) GiB\)", "{0} 块 GPU 中的每一块（{1} GiB）", "в каждую из {0} GPU ({1} ГиБ)"),
    (
        r"each of the (\d+) GPUs \((\S+) GiB, (\S+) GB preset\)",
        "{0} 块 GPU 中的每一块（{1} GiB，{2} GB 预设）",
        "в каждую из {0} GPU ({1} ГиБ, пресет {2} ГБ)",
    ),
    (r"this machine", "本机", "в этот компьютер"),
    (
        r"✅ Fits (.*): about (\S+) GiB peak at (\d+) tokens × (\d+)\.",
        "✅ {0}放得下：峰值约 {1} GiB，{2} token × {3}。",
        "✅ Помещается {0}: пик около {1} ГиБ при {2} токенов × {3}.",
    ),
    (
        r"✅ Fits (.*) with (\S+) in host RAM \(slower\): about (\S+) GiB on the GPU "
        r"and (\S+) GiB of RAM at (\d+) tokens × (\d+)\.",
        "✅ {0}放得下，{1} 放在内存中（较慢）：GPU 约 {2} GiB，内存 {3} GiB，{4} token × {5}。",
        "✅ Помещается {0}, {1} в ОЗУ (медленнее): около {2} ГиБ на GPU и {3} ГиБ ОЗУ при {4} токенов × {5}.",
    ),
    (
        r"✅ Fits (.*) with trained embeddings and (\S+) in host RAM \(slower\): about (\S+) GiB on the GPU "
        r"and (\S+) GiB of RAM at (\d+) tokens × (\d+)\.",
        "✅ 训练嵌入层时，{0}放得下，{1} 放在内存中（较慢）：GPU 约 {2} GiB，内存 {3} GiB，{4} token × {5}。",
        "✅ Помещается {0} с обучаемыми эмбеддингами, {1} в ОЗУ (медленнее): около {2} ГиБ на GPU и {3} ГиБ ОЗУ при "
        "{4} токенов × {5}.",
    ),
    (r"⚠ Will not fit (.*?): (.*)", "⚠ {0}放不下：{1}", "⚠ Не поместится {0}: {1}"),
    (  # the figures count continued pretraining's trained embeddings
        r"(.*) with trained embeddings",
        "训练嵌入层时，{0}",
        "{0} с обучаемыми эмбеддингами",
    ),
    (
        r"No GPU detected: training runs on the CPU \(slow\); about (\S+) GiB of RAM at (\d+) tokens × (\d+)\.",
        "未检测到 GPU：在 CPU 上训练（很慢）；约 {0} GiB 内存，{1} token × {2}。",
        "GPU не найдена: обучение на CPU (медленно); около {0} ГиБ ОЗУ при {1} токенов × {2}.",
    ),
    (
        r"No GPU detected: training runs on the CPU \(slow\); about (\S+) GiB of RAM at (\d+) tokens × (\d+) with "
        r"trained embeddings\.",
        "未检测到 GPU：在 CPU 上训练（很慢）；训练嵌入层时约 {0} GiB 内存，{1} token × {2}。",
        "GPU не найдена: обучение на CPU (медленно); около {0} ГиБ ОЗУ при {1} токенов × {2} с обучаемыми "
        "эмбеддингами.",
    ),
    (r"Memory estimate unavailable: (.*)", "无法估算显存：{0}", "Оценка памяти недоступна: {0}"),
    (r"Format:\*\* (.*)", "格式：** {0}", "Формат:** {0}"),
    (r"rows:\*\* (.*)", "行数：** {0}", "строк:** {0}"),
    (r"columns:\*\* (.*)", "列：** {0}", "колонки:** {0}"),
    (r"showing example (\d+) of (\d+)", "显示第 {0} 个样本，共 {1} 个", "пример {0} из {1}"),
    (
        r"Tokens per example: mean (\S+), max (\S+) \(first (\d+) rows\); (\d+) longer than (\d+)\.",
        "每个样本的 token 数：平均 {0}，最大 {1}（前 {2} 行）；{3} 行超过 {4}。",
        "Токенов в примере: в среднем {0}, максимум {1} (первые {2} строк); длиннее {4}: {3}.",
    ),
    (
        r"Pick a model in the Model tab to see the sample as the model sees it, with token counts\.",
        "在模型页选择模型，即可看到模型眼中的样本和 token 数。",
        "Выберите модель на вкладке «Модель», чтобы увидеть пример её глазами и число токенов.",
    ),
    (
        r"This (\S+) dataset is shown as stored: the model's view and token counts are drawn for chat examples\.",
        "此 {0} 数据集按原样显示：模型眼中的样本和 token 数只对对话样本绘制。",
        "Датасет {0} показан как есть: вид глазами модели и число токенов строятся только для диалоговых примеров.",
    ),
    (
        r"Cannot use the model (`.*`)\*\* \(Model tab\): (.*)",
        "无法使用模型 {0}**（模型页）：{1}",
        "Нельзя использовать модель {0}** (вкладка «Модель»): {1}",
    ),
]
STRINGS.update(i18n_engine.STRINGS)
MESSAGES += i18n_engine.MESSAGES
MESSAGES += i18n_refusals.MESSAGES + i18n_jobs.MESSAGES
PATTERNS = [(re.compile(english), zh, ru) for english, zh, ru in MESSAGES]
