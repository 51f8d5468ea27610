"""Chinese and Russian for the engine's refusals about models, job files, GRPO rewards and training runs (loading a
model, its memory plan, job.yaml's settings, resuming, running out of memory): the Model and Train tabs show them
after "**Not started:**" and the like. The form and its mechanism are those of i18n_refusals.
"""

from ui.i18n_refusals import template

REFUSALS = [  # (English with {} for values, Chinese, Russian)
    # loading a model (engine.models, engine.memory, engine.training.preflight)
    (
        "The memory plan cannot read this model's architecture: its config.json ({}) has no {}, so its memory "
        "cannot be planned and it cannot be trained here; use a model of a family it reads (Llama, Mistral, Qwen, "
        "Gemma, Phi, StarCoder2, GPT-NeoX, Falcon, Jamba, ERNIE 4.5, DeepSeek, Mixtral, gpt-oss).",
        "显存规划无法读取此模型的架构：其 config.json（{0}）中没有 {1}，因此无法规划显存，也无法在此训练；请使用它能读"
        "取的"
        "模型系列（Llama、Mistral、Qwen、Gemma、Phi、StarCoder2、GPT-NeoX、Falcon、Jamba、ERNIE 4.5、DeepSeek、"
        "Mixtral、gpt-oss）。",
        "План памяти не может прочитать архитектуру этой модели: в её config.json ({0}) нет {1}, поэтому память не "
        "спланировать и обучить её здесь нельзя; возьмите модель из семейств, которые он читает (Llama, Mistral, "
        "Qwen, Gemma, Phi, StarCoder2, GPT-NeoX, Falcon, Jamba, ERNIE 4.5, DeepSeek, Mixtral, gpt-oss).",
    ),
    (
        "LoRA has nowhere to go in this model ({}): it has none of the layers chosen for adapters ({}); its layers "
        "are named {}. Train it with full fine-tuning, or name some of those in the job's target_modules.",
        "此模型中没有可放 LoRA 的地方（{0}）：它没有任何选作适配器的层（{1}）；它的层名为 {2}。请用全量微调训练它，"
        "或在任务的 target_modules 中指定其中一些层。",
        "LoRA некуда поставить в этой модели ({0}): в ней нет ни одного из слоёв, выбранных для адаптеров ({1}); "
        "её слои называются {2}. Обучайте её полным дообучением или укажите некоторые из них в target_modules "
        "задания.",
    ),
    (
        "'{}' does not fit in GPU memory; use QLoRA (4-bit), a smaller model, or a card with more memory.",
        "'{0}' 放不进 GPU 显存；请改用 QLoRA（4 位）、更小的模型或显存更大的显卡。",
        "'{0}' не помещается в память GPU; используйте QLoRA (4 бита), модель поменьше или карту с большей памятью.",
    ),
    (
        "'{}' needs its own Python code to load; turn on 'trust remote code' only if you trust its authors.",
        "'{0}' 需要运行自带的 Python 代码才能加载；只有信任其作者时才开启“信任远程代码”。",
        "Для загрузки '{0}' нужен её собственный код на Python; включайте «Доверять удалённому коду», только если "
        "доверяете её авторам.",
    ),
    (
        "'{}' is a kind of model that transformers {} does not know (model_type in its config.json); update "
        "transformers (pip install -U transformers) or pick another model.",
        "'{0}' 是 transformers {1} 不认识的模型类型（见其 config.json 中的 model_type）；请更新 transformers"
        "（pip install -U transformers）或选择其他模型。",
        "'{0}' — вид модели, который transformers {1} не знает (model_type в её config.json); обновите "
        "transformers (pip install -U transformers) или выберите другую модель.",
    ),
    (
        "None of the LoRA target modules {} exist in this model; its linear layers are named {}.",
        "此模型中不存在任何 LoRA 目标模块 {0}；它的线性层名为 {1}。",
        "Ни одного из целевых модулей LoRA {0} в этой модели нет; её линейные слои называются {1}.",
    ),
    (
        "'{}' is a file, not a model folder; give the folder that holds its config.json and weights, or a hub id.",
        "'{0}' 是文件，不是模型文件夹；请给出包含其 config.json 和权重的文件夹，或 Hub ID。",
        "'{0}' — файл, а не папка модели; укажите папку с её config.json и весами или ID на хабе.",
    ),
    (
        "'{}' is stored in 4-bit and does not fit this GPU without streaming its layers, which needs the 16-bit "
        "original; load that (as QLoRA), or use a shorter max_seq_length or a larger GPU.",
        "'{0}' 以 4 位存储，不逐层流式加载就放不进此 GPU，而流式加载需要 16 位原版；请加载原版（作为 QLoRA），"
        "或使用更短的 max_seq_length 或更大的 GPU。",
        "'{0}' хранится в 4 битах и не помещается в эту GPU без потоковой подгрузки слоёв, для которой нужен "
        "16-битный оригинал; загрузите его (как QLoRA) или уменьшите max_seq_length, или возьмите GPU побольше.",
    ),
    (
        "'{}' lacks the weight '{}' its config needs; the model folder is damaged.",
        "'{0}' 缺少其配置需要的权重 '{1}'；模型文件夹已损坏。",
        "В '{0}' нет веса '{1}', нужного по её конфигурации; папка модели повреждена.",
    ),
    (
        "Could not download '{}': the hub is unreachable and it is not in the local cache. Connect to the internet, "
        "or pick a local model folder.",
        "无法下载 '{0}'：连不上 Hub，本地缓存中也没有。请连接互联网，或选择本地模型文件夹。",
        "Не удалось скачать '{0}': хаб недоступен, а в локальном кеше её нет. Подключитесь к интернету или "
        "выберите локальную папку модели.",
    ),
    (
        "Could not download '{}' ({}); check the connection and free disk, then retry.",
        "无法下载 '{0}'（{1}）；请检查网络连接和剩余磁盘空间，然后重试。",
        "Не удалось скачать '{0}' ({1}); проверьте подключение и свободное место на диске и повторите.",
    ),
    (
        "'{}' has no config.json, so it is not a transformers model folder.",
        "'{0}' 没有 config.json，因此不是 transformers 模型文件夹。",
        "В '{0}' нет config.json, значит, это не папка модели transformers.",
    ),
    (
        "'{}' has only pickled (.bin/.pt) weights; Tunesmith loads safetensors only, which cannot run code. Convert "
        "the model to safetensors first.",
        "'{0}' 只有 pickle 格式（.bin/.pt）的权重；Tunesmith 只加载不会运行代码的 safetensors。请先把模型转换为 "
        "safetensors。",
        "У '{0}' веса только в pickle (.bin/.pt); Tunesmith загружает только safetensors, которые не могут "
        "запустить код. Сначала преобразуйте модель в safetensors.",
    ),
    (
        "'{}' has no .safetensors weight files.",
        "'{0}' 没有 .safetensors 权重文件。",
        "В '{0}' нет файлов весов .safetensors.",
    ),
    (
        "'{}' is stored quantized ({}), which Tunesmith cannot train from; {}.",
        "'{0}' 以量化格式存储（{1}），Tunesmith 无法从它训练；{2}。",
        "'{0}' хранится квантованной ({1}), и Tunesmith не может с неё обучать; {2}.",
    ),
    ("load its 16-bit original {}", "请加载它的 16 位原版 {0}", "загрузите её 16-битный оригинал {0}"),
    ("load its 16-bit original", "请加载它的 16 位原版", "загрузите её 16-битный оригинал"),
    (
        "'{}' is stored in 4-bit, so it trains only as QLoRA (4-bit weights with LoRA adapters); use QLoRA, or {} "
        "for 16-bit LoRA or full fine-tuning.",
        "'{0}' 以 4 位存储，因此只能作为 QLoRA 训练（4 位权重加 LoRA 适配器）；请使用 QLoRA，或为 16 位 LoRA 或全量微调"
        "{1}。",
        "'{0}' хранится в 4 битах и обучается только как QLoRA (4-битные веса с адаптерами LoRA); используйте "
        "QLoRA или для 16-битной LoRA либо полного дообучения {1}.",
    ),
    (
        "This GPU has {} GiB; Tunesmith needs at least a 6 GB card (or the CPU).",
        "此 GPU 只有 {0} GiB；Tunesmith 至少需要 6 GB 的显卡（或使用 CPU）。",
        "У этой GPU {0} ГиБ; Tunesmith нужна карта хотя бы на 6 ГБ (или CPU).",
    ),
    (
        "'{}' is not valid JSON; the model folder is damaged.",
        "'{0}' 不是有效的 JSON；模型文件夹已损坏。",
        "'{0}' — неверный JSON; папка модели повреждена.",
    ),
    (
        "'{}' names no model_type, so it is not a transformers model configuration.",
        "'{0}' 没有指定 model_type，因此不是 transformers 模型配置。",
        "В '{0}' не указан model_type, значит, это не конфигурация модели transformers.",
    ),
    # job files and their settings (engine.spec)
    (
        "Job setting '{}' is '{}'; use one of: {}.",
        "任务设置 '{0}' 为 '{1}'；请使用其中之一：{2}。",
        "Параметр задания '{0}' равен '{1}'; используйте одно из: {2}.",
    ),
    (
        "Set 'max_steps' to a positive number of steps, or 'epochs' above 0.",
        "请把 'max_steps' 设为正的步数，或把 'epochs' 设为大于 0。",
        "Задайте 'max_steps' положительным числом шагов или 'epochs' больше 0.",
    ),
    (
        "No model chosen: give a hub id such as 'Qwen/Qwen3-0.6B' or a local folder.",
        "未选择模型：请给出 Hub ID（如 'Qwen/Qwen3-0.6B'）或本地文件夹。",
        "Модель не выбрана: укажите ID на хабе, например 'Qwen/Qwen3-0.6B', или локальную папку.",
    ),
    (
        "No dataset chosen: give a JSON or JSONL file.",
        "未选择数据集：请给出 JSON 或 JSONL 文件。",
        "Датасет не выбран: укажите файл JSON или JSONL.",
    ),
    (
        "Validation ('eval_fraction', 'eval_data') works with the sft and pretrain objectives, not {}; remove it or "
        "use `python -m engine eval` on the finished run.",
        "验证（'eval_fraction'、'eval_data'）只适用于 sft 和 pretrain 训练目标，不适用于 {0}；请去掉它，"
        "或对完成的运行使用 `python -m engine eval`。",
        "Валидация ('eval_fraction', 'eval_data') работает с целями sft и pretrain, но не с {0}; уберите её или "
        "запустите `python -m engine eval` для завершённого запуска.",
    ),
    (
        "GRPO needs at least one reward in 'rewards' (e.g. {preset: regex, pattern: ...}).",
        "GRPO 的 'rewards' 中至少需要一个奖励（例如 {{preset: regex, pattern: ...}}）。",
        "Для GRPO в 'rewards' нужна хотя бы одна награда (например, {{preset: regex, pattern: ...}}).",
    ),
    (
        "{}: expected a mapping of settings (key: value), got {}.",
        "{0}：应为设置的映射（key: value），实际是 {1}。",
        "{0}: ожидался словарь настроек (key: value), а получено {1}.",
    ),
    (
        "{}: unknown setting '{}'; did you mean '{}'?",
        "{0}：未知的设置 '{1}'；你是想写 '{2}' 吗？",
        "{0}: неизвестный параметр '{1}'; может быть, '{2}'?",
    ),
    (
        "{}: unknown setting '{}'; known settings are: {}.",
        "{0}：未知的设置 '{1}'；已知的设置有：{2}。",
        "{0}: неизвестный параметр '{1}'; известные параметры: {2}.",
    ),
    ("{}: the setting '{}' is required.", "{0}：必须给出设置 '{1}'。", "{0}: параметр '{1}' обязателен."),
    (
        "{}: the setting '{}' is given twice (again at line {}); keep one of them.",
        "{0}：设置 '{1}' 出现了两次（第 {2} 行再次出现）；只保留一个。",
        "{0}: параметр '{1}' задан дважды (снова в строке {2}); оставьте один.",
    ),
    (
        "{} is not valid YAML at line {}; check its indentation and colons.",
        "{0} 第 {1} 行不是有效的 YAML；请检查缩进和冒号。",
        "{0}: неверный YAML в строке {1}; проверьте отступы и двоеточия.",
    ),
    (
        "{} is not valid YAML; check its indentation and colons.",
        "{0} 不是有效的 YAML；请检查缩进和冒号。",
        "{0} — неверный YAML; проверьте отступы и двоеточия.",
    ),
    ("Job file '{}' does not exist.", "任务文件 '{0}' 不存在。", "Файла задания '{0}' нет."),
    (
        "'{}' is a folder, not a job file; give the path of a job.yaml.",
        "'{0}' 是文件夹，不是任务文件；请给出 job.yaml 的路径。",
        "'{0}' — папка, а не файл задания; укажите путь к job.yaml.",
    ),
    (
        "Job file '{}' cannot be read (permission denied).",
        "无法读取任务文件 '{0}'（权限不足）。",
        "Файл задания '{0}' не читается (нет доступа).",
    ),
    (
        "Job file '{}' is not UTF-8 text (byte {}); save it as UTF-8.",
        "任务文件 '{0}' 不是 UTF-8 文本（第 {1} 字节）；请另存为 UTF-8。",
        "Файл задания '{0}' — не текст UTF-8 (байт {1}); сохраните его в UTF-8.",
    ),
    (
        "Job setting '{}' holds an invalid character ({} at position {}); remove it.",
        "任务设置 '{0}' 含有无效字符（位置 {2} 处的 {1}）；请删除它。",
        "В параметре задания '{0}' недопустимый символ ({1} на позиции {2}); удалите его.",
    ),
    (
        "{}: setting '{}' should be {}, not '{}'.",
        "{0}：设置 '{1}' 应为 {2}，而不是 '{3}'。",
        "{0}: параметр '{1}' должен быть {2}, а не '{3}'.",
    ),
    (
        "{}: setting '{}' should be {}, not {}.",
        "{0}：设置 '{1}' 应为 {2}，而不是 {3}。",
        "{0}: параметр '{1}' должен быть {2}, а не {3}.",
    ),
    (
        "Job setting '{}' ({}) must be {}; got '{}'.",
        "任务设置 '{0}'（{1}）必须是 {2}；实际是 '{3}'。",
        "Параметр задания '{0}' ({1}) должен быть {2}; получено '{3}'.",
    ),
    (
        "Job setting '{}' ({}) must be {}; got {}.",
        "任务设置 '{0}'（{1}）必须是 {2}；实际是 {3}。",
        "Параметр задания '{0}' ({1}) должен быть {2}; получено {3}.",
    ),
    (
        "A reward compares replies with the column '{}', which '{}' does not have; its columns are {}. Map a column "
        "to it or change the reward's field.",
        "有奖励会把回复与列 '{0}' 比较，但 '{1}' 没有这一列；它的列为 {2}。请把某一列映射到它，或修改该奖励的 field。",
        "Награда сравнивает ответы с колонкой '{0}', которой в '{1}' нет; её колонки: {2}. Сопоставьте с ней "
        "колонку или измените поле награды.",
    ),
    # a dataset of the wrong kind for the objective (engine.spec.objectives.format_problem), its names and needs
    (
        "{} needs {}; this dataset is {}. It suits {}.",
        "{0}需要{1}；此数据集是 {2}。它适用于：{3}。",
        "Для цели «{0}» нужно: {1}; этот датасет — {2}. Он подходит для: {3}.",
    ),
    (
        "{} needs {}; this dataset is {}.",
        "{0}需要{1}；此数据集是 {2}。",
        "Для цели «{0}» нужно: {1}; этот датасет — {2}.",
    ),
    ("Chat fine-tuning (SFT)", "对话微调（SFT）", "дообучение на диалогах (SFT)"),
    ("Continued pretraining", "继续预训练", "продолженное предобучение"),
    ("DPO or ORPO", "DPO 或 ORPO", "DPO или ORPO"),
    (
        "chat examples (Alpaca, ShareGPT or ChatML rows)",
        "对话样本（Alpaca、ShareGPT 或 ChatML 格式的行）",
        "диалоговые примеры (строки Alpaca, ShareGPT или ChatML)",
    ),
    (
        "raw text (a 'text' column, or a .txt / .md file)",
        "纯文本（'text' 列，或 .txt / .md 文件）",
        "обычный текст (колонка 'text' или файл .txt / .md)",
    ),
    (
        "preference pairs (prompt, chosen and rejected columns)",
        "偏好对（prompt、chosen 和 rejected 列）",
        "пары предпочтений (колонки prompt, chosen и rejected)",
    ),
    (
        "prompts (a 'prompt' column, plus any column a reward compares with, such as 'answer')",
        "提示（'prompt' 列，以及奖励要比较的列，如 'answer'）",
        "запросы (колонка 'prompt' и колонки, с которыми сравнивают награды, например 'answer')",
    ),
    # GRPO rewards (engine.spec.rewards): "Reward 2 (length): ..."
    (
        "Reward {} (format): 'open_tag' and 'close_tag' are the tags around the reasoning (<think>).",
        "奖励 {0}（format）：'open_tag' 和 'close_tag' 是推理内容两侧的标签（<think>）。",
        "Награда {0} (format): 'open_tag' и 'close_tag' — теги вокруг рассуждений (<think>).",
    ),
    (
        "Reward {} (length): need 0 <= min_chars <= max_chars (got {}, {}).",
        "奖励 {0}（length）：需要 0 <= min_chars <= max_chars（实际为 {1}、{2}）。",
        "Награда {0} (length): нужно 0 <= min_chars <= max_chars (получено {1}, {2}).",
    ),
    (
        "Reward {} (character): give the assistant's 'name' or 'maker' (or both).",
        "奖励 {0}（character）：请给出助手的 'name' 或 'maker'（或两者）。",
        "Награда {0} (character): укажите 'name' или 'maker' ассистента (или оба).",
    ),
    (
        "Reward {} (python): 'function' should look like package.module:function, not '{}'.",
        "奖励 {0}（python）：'function' 应写成 package.module:function，而不是 '{1}'。",
        "Награда {0} (python): 'function' должна иметь вид package.module:function, а не '{1}'.",
    ),
    (
        "Reward {} is '{}'; give a preset, one of: {}.",
        "奖励 {0} 为 '{1}'；请给出一个预设，其中之一：{2}。",
        "Награда {0} равна '{1}'; укажите пресет, один из: {2}.",
    ),
    (
        "Reward {} ({}) has an unknown setting '{}'; it takes: {}.",
        "奖励 {0}（{1}）有未知的设置 '{2}'；它接受：{3}。",
        "У награды {0} ({1}) неизвестный параметр '{2}'; она принимает: {3}.",
    ),
    (
        "Reward {} ({}): '{}' should be like '{}', not '{}'.",
        "奖励 {0}（{1}）：'{2}' 应类似 '{3}'，而不是 '{4}'。",
        "Награда {0} ({1}): '{2}' должно быть вида '{3}', а не '{4}'.",
    ),
    (
        "Reward {} ({}): '{}' should be like {}, not {}.",
        "奖励 {0}（{1}）：'{2}' 应类似 {3}，而不是 {4}。",
        "Награда {0} ({1}): '{2}' должно быть вида {3}, а не {4}.",
    ),
    (
        "Reward {} (answer): 'mode' is '{}'; use exact or numeric.",
        "奖励 {0}（answer）：'mode' 为 '{1}'；请使用 exact 或 numeric。",
        "Награда {0} (answer): 'mode' равно '{1}'; используйте exact или numeric.",
    ),
    (
        "Reward {} (answer): name the dataset column with the reference answer in 'field'.",
        "奖励 {0}（answer）：请在 'field' 中写明含参考答案的数据集列。",
        "Награда {0} (answer): укажите в 'field' колонку датасета с эталонным ответом.",
    ),
    (
        "Reward {} (regex): give the 'pattern' a reply should match.",
        "奖励 {0}（regex）：请给出回复应匹配的 'pattern'。",
        "Награда {0} (regex): укажите 'pattern', которому должен соответствовать ответ.",
    ),
    (
        "Could not load the reward function '{}' ({}); check it is on PYTHONPATH.",
        "无法加载奖励函数 '{0}'（{1}）；请检查它是否在 PYTHONPATH 中。",
        "Не удалось загрузить функцию награды '{0}' ({1}); проверьте, что она есть в PYTHONPATH.",
    ),
    ("'{}' is not a function.", "'{0}' 不是函数。", "'{0}' — не функция."),
    (
        "The answer reward reads the column '{}', which this dataset does not have.",
        "answer 奖励读取列 '{0}'，但此数据集没有这一列。",
        "Награда answer читает колонку '{0}', которой в этом датасете нет.",
    ),
    # training and resuming (engine.training)
    (
        "Full fine-tuning on several GPUs shards AdamW's states, which {} cannot; set optimizer to auto or adamw, or "
        "gpus to 1.",
        "多 GPU 全量微调会切分 AdamW 的状态，而 {0} 做不到；请把 optimizer 设为 auto 或 adamw，或把 gpus 设为 1。",
        "Полное дообучение на нескольких GPU делит состояния AdamW между ними, а {0} так не умеет; задайте optimizer "
        "auto или adamw либо gpus 1.",
    ),
    (
        "This run's checkpoints were trained on commit {} of the hub dataset '{}', which cannot be read now "
        "(offline, and not in this machine's datasets cache, or gone from the hub): connect to the network to "
        "resume, or start a new run to train on the dataset as it is now. Its checkpoints are kept as they were.",
        "此运行的检查点是在 Hub 数据集 '{1}' 的提交 {0} 上训练的，而该提交现在无法读取"
        "（离线且不在本机的 datasets 缓存中，或已从 Hub 删除）："
        "请联网后继续训练，或开始新的运行，用数据集现在的内容训练。其检查点保持原样。",
        "Чекпоинты этого запуска обучены на коммите {0} датасета '{1}' с хаба, а его сейчас не прочитать (нет сети "
        "и его нет в кэше datasets на этой машине, или он удалён с хаба): подключитесь к сети, чтобы продолжить, "
        "или начните новый запуск, чтобы обучать на датасете в нынешнем виде. Чекпоинты сохранены как были.",
    ),
    (
        "The run reads commit {} of the hub dataset '{}', which cannot be read now ({}): connect to the network to "
        "download it, or start a new run to train on the dataset as it is now.",
        "此运行读取 Hub 数据集 '{1}' 的提交 {0}，而它现在无法读取（{2}）：请联网下载它，或开始新的运行，"
        "用数据集现在的内容训练。",
        "Запуск читает коммит {0} датасета '{1}' с хаба, а его сейчас не прочитать ({2}): подключитесь к сети, "
        "чтобы скачать его, или начните новый запуск, чтобы обучать на датасете в нынешнем виде.",
    ),
    (
        "Job setting '{}' is '{}'; give a commit of the hub dataset (its 40 hex digits, from the dataset's history "
        "page), or leave it empty to read the latest.",
        "任务设置 '{0}' 的值是 '{1}'；请填写 Hub 数据集的一个提交（40 位十六进制，见数据集的历史页面），"
        "或留空以读取最新版本。",
        "Параметр задания '{0}' равен '{1}'; укажите коммит датасета на хабе (40 шестнадцатеричных цифр, со "
        "страницы истории датасета) или оставьте пустым, чтобы читать последнюю версию.",
    ),
    (
        "job.yaml was edited since this run's checkpoints were made ({}), which a resume cannot honour; put those "
        "settings back to resume it, or start a new run with them; to resume on another number of GPUs, keep "
        "grad_accum x gpus as it was. Its checkpoints are kept as they were.",
        "自此运行的检查点生成以来，job.yaml 已被修改（{0}），继续训练无法遵循这些修改；请把这些设置改回去再继续，"
        "或用它们开始新的运行；若要在不同数量的 GPU 上继续，请保持 grad_accum × gpus 不变。其检查点保持原样。",
        "job.yaml изменён после чекпоинтов этого запуска ({0}), а продолжение не может это учесть; верните эти "
        "настройки, чтобы продолжить, или начните с ними новый запуск; чтобы продолжить на другом числе GPU, "
        "сохраните grad_accum × gpus прежним. Чекпоинты сохранены как были.",
    ),
    (
        "job.yaml was edited since this run's checkpoints were made ({}), which a resume cannot honour; put those "
        "settings back to resume it, or start a new run with them. Its checkpoints are kept as they were.",
        "自此运行的检查点生成以来，job.yaml 已被修改（{0}），继续训练无法遵循这些修改；请把这些设置改回去再继续，"
        "或用它们开始新的运行。其检查点保持原样。",
        "job.yaml изменён после чекпоинтов этого запуска ({0}), а продолжение не может это учесть; верните эти "
        "настройки, чтобы продолжить, или начните с ними новый запуск. Чекпоинты сохранены как были.",
    ),
    (
        "This job asks for {} GPUs but {} are visible; set gpus to {} or less (0 uses all of them), or check "
        "CUDA_VISIBLE_DEVICES.",
        "此任务要求 {0} 块 GPU，但只能看到 {1} 块；请把 gpus 设为 {2} 或更小（0 表示全部使用），或检查 "
        "CUDA_VISIBLE_DEVICES。",
        "Задание просит {0} GPU, а видно {1}; задайте gpus не больше {2} (0 — все) или проверьте CUDA_VISIBLE_DEVICES.",
    ),
    (
        "This model's plan updates weights in the backward, which one GPU does; set gpus to 1.",
        "此模型的计划在反向传播中更新权重，只有单 GPU 能这样做；请把 gpus 设为 1。",
        "План этой модели обновляет веса при обратном проходе, а так умеет только одна GPU; задайте gpus 1.",
    ),
    ("{}; set gpus to 1.", "{0}；请把 gpus 设为 1。", "{0}; задайте gpus 1."),
    ("{} trains on one GPU for now", "{0} 目前只在一块 GPU 上训练", "{0} пока обучается на одной GPU"),
    (
        "Trained embeddings are continued pretraining's; plan {} without them.",
        "训练词嵌入属于继续预训练；请在不训练词嵌入的情况下估算 {0}。",
        "Обучение эмбеддингов относится к продолженному предобучению; оцените {0} без него.",
    ),
    (
        "A run with validation (eval_fraction or eval_data) trains on one GPU for now",
        "带验证（eval_fraction 或 eval_data）的运行目前只在一块 GPU 上训练",
        "Запуск с валидацией (eval_fraction или eval_data) пока обучается на одной GPU",
    ),
    (
        "{}: row {}: 'chosen' and 'rejected' share no first turn, so there is no prompt to answer.",
        "{0}：第 {1} 行：'chosen' 和 'rejected' 没有相同的开头轮次，因此没有要回答的提示。",
        "{0}: строка {1}: у 'chosen' и 'rejected' нет общей первой реплики, так что отвечать не на что.",
    ),
    (
        "{}: row {}: '{}' ends with a '{}' turn; it should end with the reply.",
        "{0}：第 {1} 行：'{2}' 以 '{3}' 轮次结尾；它应以回复结尾。",
        "{0}: строка {1}: '{2}' заканчивается репликой '{3}'; он должен заканчиваться ответом.",
    ),
    (
        "The loss became {} at step {}; lower the learning rate (now {}) and start again.",
        "第 {1} 步的损失变成了 {0}；请调低学习率（当前为 {2}）后重新开始。",
        "Потери стали {0} на шаге {1}; уменьшите скорость обучения (сейчас {2}) и начните заново.",
    ),
    (
        "This model takes padded batches of up to {} tokens, more than the {} its memory plan was made for; set the "
        "environment variable TUNESMITH_PLAN_FOR_DATA=0 and start the run again.",
        "此模型接收最多 {0} 个 token 的填充批次，超过其显存计划所依据的 {1}；请设置环境变量 TUNESMITH_PLAN_FOR_DATA=0 "
        "后重新开始运行。",
        "Эта модель получает дополненные батчи до {0} токенов — больше {1}, на которые рассчитан её план памяти; "
        "задайте переменную окружения TUNESMITH_PLAN_FOR_DATA=0 и начните запуск заново.",
    ),
    (
        "This run already trained {} steps (its checkpoint {}), more than the {} its job.yaml now asks for; set "
        "max_steps to {} or more in job.yaml to resume it, or start a new run for fewer steps. Its checkpoints are "
        "kept as they were.",
        "此运行已训练了 {0} 步（其检查点 {1}），超过 job.yaml 现在要求的 {2} 步；要继续，请在 job.yaml 中把 max_steps "
        "设为 {3} 或更大，或开始一个步数更少的新运行。其检查点保持原样。",
        "Этот запуск уже обучился {0} шагов (его чекпоинт {1}) — больше {2}, которые теперь просит job.yaml; "
        "задайте в job.yaml max_steps не меньше {3}, чтобы продолжить, или начните новый запуск на меньшее число "
        "шагов. Чекпоинты сохранены как были.",
    ),
    # running out of memory while training (engine.memory.verdict.out_of_memory_message)
    (
        "Ran out of memory in the first step, before anything was trained; start again with a smaller batch size "
        "or maximum sequence length, or a smaller model.",
        "在第一步就内存不足，还没有训练任何内容；请用更小的批大小或最大序列长度，或更小的模型重新开始。",
        "Память закончилась на первом шаге, до какого-либо обучения; начните заново с меньшим размером батча или "
        "максимальной длиной последовательности либо с моделью поменьше.",
    ),
    (
        "Ran out of GPU memory in the first step, before anything was trained; start again with a lower budget "
        "(TUNESMITH_VRAM_GIB), a smaller batch size or maximum sequence length, or a smaller model.",
        "在第一步就 GPU 显存不足，还没有训练任何内容；请用更低的预算（TUNESMITH_VRAM_GIB）、更小的批大小或最大序列长度"
        "，"
        "或更小的模型重新开始。",
        "Память GPU закончилась на первом шаге, до какого-либо обучения; начните заново с меньшим бюджетом "
        "(TUNESMITH_VRAM_GIB), меньшим размером батча или максимальной длиной последовательности либо с моделью "
        "поменьше.",
    ),
    (
        "Ran out of GPU memory at step {} (another program took GPU memory, or a batch needed more than planned). "
        "The run saved step {}; resume continues from it once GPU memory is free, or with a lower budget "
        "(TUNESMITH_VRAM_GIB); or start again with a smaller batch size or maximum sequence length.",
        "第 {0} 步 GPU 显存不足（其他程序占用了显存，或某个批次需要的比计划多）。运行已保存第 {1} 步；等显存空闲后，"
        "或以更低的预算（TUNESMITH_VRAM_GIB）继续，就从这一步开始；也可以用更小的批大小或最大序列长度重新开始。",
        "Память GPU закончилась на шаге {0} (её заняла другая программа или батчу понадобилось больше "
        "запланированного). Запуск сохранил шаг {1}; продолжение начнётся с него, когда память GPU освободится, "
        "или с меньшим бюджетом (TUNESMITH_VRAM_GIB); либо начните заново с меньшим размером батча или "
        "максимальной длиной последовательности.",
    ),
    (
        "Ran out of GPU memory at step {} (another program took GPU memory, or a batch needed more than planned). "
        "It ran out while updating the weights, so resume continues from the latest checkpoint once GPU memory is "
        "free, or with a lower budget (TUNESMITH_VRAM_GIB); or start again with a smaller batch size or maximum "
        "sequence length.",
        "第 {0} 步 GPU 显存不足（其他程序占用了显存，或某个批次需要的比计划多）。它是在更新权重时耗尽的，因此等显存空"
        "闲后，"
        "或以更低的预算（TUNESMITH_VRAM_GIB）继续时，会从最新的检查点开始；也可以用更小的批大小或最大序列长度重新开始"
        "。",
        "Память GPU закончилась на шаге {0} (её заняла другая программа или батчу понадобилось больше "
        "запланированного). Это случилось при обновлении весов, поэтому продолжение начнётся с последнего "
        "чекпоинта, когда память GPU освободится, или с меньшим бюджетом (TUNESMITH_VRAM_GIB); либо начните заново "
        "с меньшим размером батча или максимальной длиной последовательности.",
    ),
    (
        "Ran out of memory at step {}. The run saved step {}; resume continues from it once other programs have "
        "freed RAM; or start again with a smaller batch size or maximum sequence length.",
        "第 {0} 步内存不足。运行已保存第 {1} 步；等其他程序释放内存后继续，就从这一步开始；也可以用更小的批大小或最大"
        "序列长度"
        "重新开始。",
        "Память закончилась на шаге {0}. Запуск сохранил шаг {1}; продолжение начнётся с него, когда другие "
        "программы освободят ОЗУ; либо начните заново с меньшим размером батча или максимальной длиной "
        "последовательности.",
    ),
    (
        "Ran out of memory at step {}. It ran out while updating the weights, so resume continues from the latest "
        "checkpoint once other programs have freed RAM; or start again with a smaller batch size or maximum "
        "sequence length.",
        "第 {0} 步内存不足。它是在更新权重时耗尽的，因此等其他程序释放内存后继续时，会从最新的检查点开始；"
        "也可以用更小的批大小或最大序列长度重新开始。",
        "Память закончилась на шаге {0}. Это случилось при обновлении весов, поэтому продолжение начнётся с "
        "последнего чекпоинта, когда другие программы освободят ОЗУ; либо начните заново с меньшим размером батча "
        "или максимальной длиной последовательности.",
    ),
]
MESSAGES = [(template(english), zh, ru) for english, zh, ru in REFUSALS]
