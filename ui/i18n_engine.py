"""Chinese and Russian templates for the sentences the engine writes that users meet on the Data, Train, Chat and
Export tabs: a malformed dataset file or a wrong column, the Train tab's preset note, the Chat tab's lines and the
export's check summary. File, column and field names stay as the engine wrote them (they are the template's groups).

i18n_more adds these to its MESSAGES and STRINGS; the mechanism is in i18n.py.
"""

ROW = r"(.+?): row (\d+)"  # "data.jsonl: row 3", where the engine names a row
STRINGS = {  # English: (Chinese, Russian)
    "No GPU detected: the CPU trains with the settings below (slowly).": (
        "未检测到 GPU：CPU 按下面的设置训练（很慢）。",
        "GPU не найдена: обучение на CPU с настройками ниже (медленно).",
    ),
    "Pick a finished run or a GGUF file in 'Run, GGUF file or model' above (or type a model), then send again.": (
        "请在上方「运行、GGUF 文件或模型」中选择已完成的运行或 GGUF 文件（或输入模型），然后再发送。",
        "Выберите завершённый запуск или GGUF-файл в поле «Запуск, GGUF-файл или модель» выше "
        "(или введите модель) и отправьте снова.",
    ),
    "Type a message first.": ("请先输入消息。", "Сначала введите сообщение."),
    "Type a prompt first.": ("请先输入提示词。", "Сначала введите запрос."),
    "Saved in 16 bits; a model without an adapter has nothing to compare with.": (
        "已保存为 16 位；没有适配器的模型无可对比。",
        "Сохранено в 16 битах; модели без адаптера не с чем сравнивать.",
    ),
    "tokenizer identical": ("分词器一致", "токенизатор совпадает"),
    "tokenizer differs": ("分词器不同", "токенизатор отличается"),
    "the others are near-ties, which rounding may tip": (
        "其余是几乎打平的情况，舍入即可改变",
        "остальные — почти ничьи, их решает округление",
    ),
    # Python's JSON parser's reasons, shown in brackets after "invalid JSON"
    "Expecting value": ("缺少值", "ожидалось значение"),
    "Expecting ',' delimiter": ("缺少 ',' 分隔符", "ожидался разделитель ','"),
    "Expecting ':' delimiter": ("缺少 ':' 分隔符", "ожидался разделитель ':'"),
    "Expecting property name enclosed in double quotes": (
        "属性名应使用双引号",
        "имя свойства должно быть в двойных кавычках",
    ),
    "Extra data": ("多余的数据", "лишние данные"),
}
MESSAGES = [  # (English regex, Chinese, Russian); each group is translated again, so templates nest
    # the Train tab's preset note
    (r"No preset: (.*)", "无预设：{0}", "Нет пресета: {0}"),
    (
        r"⚠ The (\S+) GB preset says this does not fit: (.*)",
        "⚠ {0} GB 预设显示放不下：{1}",
        "⚠ По пресету {0} ГБ не поместится: {1}",
    ),
    (r"⚠ This does not fit: (.*)", "⚠ 放不下：{0}", "⚠ Не поместится: {0}"),
    (
        r"Preset for this GPU \((.+?)\): (\d+) tokens × (\d+), accumulation (\d+), rank (\d+), "
        r"(checkpointing \S+?)(|, .* kept in host RAM \(slower\)); the run's plan peaks at (\S+) GiB\."
        r"( ?)(The run .*|)",
        "此 GPU 的预设（{0}）：{1} token × {2}，梯度累积 {3}，秩 {4}，{5}{6}；运行计划峰值 {7} GiB。{9}",
        "Пресет для этой GPU ({0}): {1} токенов × {2}, накопление {3}, ранг {4}, {5}{6}; пик по плану {7} ГиБ.{8}{9}",
    ),
    (r"(\S+) GB tier", "{0} GB 档", "уровень {0} ГБ"),
    (r"(\S+) GiB, below the smallest tier", "{0} GiB，低于最小档", "{0} ГиБ, меньше самого малого уровня"),
    (r"checkpointing on", "梯度检查点开启", "чекпоинтинг вкл."),
    (r"checkpointing off", "梯度检查点关闭", "чекпоинтинг выкл."),
    (r", weights kept in host RAM \(slower\)", "，冻结权重放在内存中（较慢）", ", веса в ОЗУ (медленнее)"),
    (r", optimizer kept in host RAM \(slower\)", "，优化器状态放在内存中（较慢）", ", оптимизатор в ОЗУ (медленнее)"),
    (r", activations kept in host RAM \(slower\)", "，激活值放在内存中（较慢）", ", активации в ОЗУ (медленнее)"),
    (r", (.*) kept in host RAM \(slower\)", "，{0} 放在内存中（较慢）", ", {0} в ОЗУ (медленнее)"),
    (  # why a tier's preset does not fit (engine.models.presets.derive, presets/*.yaml)
        r"needs about (\S+) GiB at (\d+) tokens and batch (\d+), and more than this tier's (\S+) GiB even with the "
        r"offload manager and (\d+) GiB of host RAM",
        "在 {1} token、批大小 {2} 时约需 {0} GiB，即使用上卸载管理器和 {4} GiB 内存，也超出此档的 {3} GiB",
        "нужно около {0} ГиБ при {1} токенах и батче {2} — больше {3} ГиБ этого уровня даже с выгрузкой и {4} ГиБ ОЗУ",
    ),
    (
        r"The run trains on (\d+) GPUs, one process each: these settings are per GPU\.",
        "运行在 {0} 块 GPU 上训练，每块一个进程：这些设置按每块 GPU 计。",
        "Запуск обучается на {0} GPU, по процессу на каждой: настройки — на одну GPU.",
    ),
    # the Chat tab
    (r"Cannot compare:\*\* (.*)", "无法对比：** {0}", "Не удалось сравнить:** {0}"),
    (r"(\d+) tokens, (\S+) tok/s", "{0} 个 token，{1} token/秒", "{0} токенов, {1} ток/с"),
    (r"Base: (.*)", "基座：{0}", "База: {0}"),
    (r"Fine-tuned: (.*)", "微调后：{0}", "Дообученная: {0}"),
    # the export's check summary (engine.export.report.summary)
    (
        r"PEFT loads it onto the base model \((\d+|\d+ of \d+) LoRA weights\) and it answers exactly as the run's "
        r"adapter \(max logit difference (\S+)\); it moves the base model's logits by up to "
        r"(\S+?)(| \(checked on .*\))\.",
        "PEFT 可把它加载到基座模型上（{0} 个 LoRA 权重），回答与运行的适配器完全一致（最大 logit 差 {1}）；"
        "它使基座模型的 logit 最多改变 {2}{3}。",
        "PEFT загружает его на базовую модель ({0} весов LoRA), и он отвечает в точности как адаптер запуска "
        "(макс. разница логитов {1}); он меняет логиты базовой модели не больше чем на {2}{3}.",
    ),
    (
        r" ?\(checked on its first (\d+) of (\d+) layers\)",
        "（仅检查了前 {0}/{1} 层）",
        "(проверено на первых {0} из {1} слоёв)",
    ),
    (r"(.+); ([Ll]lama\.cpp matches .*)\.", "{0}；{1}。", "{0}; {1}."),
    (r"([Mm]atches the adapter model: .*|Llama\.cpp matches .*)\.", "{0}。", "{0}."),
    (
        r"[Mm]atches the adapter model: max logit difference (\S+) in fp32, (\S+) once saved in "
        r"(\S+?)(| \(checked on .*\))",
        "与适配器模型一致：最大 logit 差 fp32 下为 {0}，保存为 {2} 后为 {1}{3}",
        "Совпадает с моделью с адаптером: макс. разница логитов {0} в fp32 и {1} после сохранения в {2}{3}",
    ),
    (
        r"[Ll]lama\.cpp matches the PyTorch model's (tokenizer \S+) "
        r"\(greedy text not compared: the model is too large\)",
        "llama.cpp 与 PyTorch 模型一致：{0}（未比较贪心文本：模型太大）",
        "llama.cpp совпадает с моделью PyTorch: {0} (жадный текст не сравнивался: модель слишком большая)",
    ),
    (
        r"[Ll]lama\.cpp matches the PyTorch model: (tokenizer \S+), (greedy text .*), max logit difference (\S+)",
        "llama.cpp 与 PyTorch 模型一致：{0}，{1}，最大 logit 差 {2}",
        "llama.cpp совпадает с моделью PyTorch: {0}, {1}, макс. разница логитов {2}",
    ),
    (r"greedy text identical \((\d+) tokens\)", "贪心文本一致（{0} 个 token）", "жадный текст совпадает ({0} токенов)"),
    (
        r"greedy text agrees on (\d+) of (\d+) tokens \((.*)\)",
        "贪心文本在 {1} 个 token 中有 {0} 个一致（{2}）",
        "жадный текст совпадает в {0} из {1} токенов ({2})",
    ),
    (r"(\d+) of (\d+)", "{0}/{1}", "{0} из {1}"),  # LoRA weights loaded of those saved
    (r"(\d+) clear disagreements", "{0} 处明显不一致", "явных расхождений: {0}"),
    # the Data tab: a malformed file or a wrong column (engine.data.reading, engine.data.formats)
    (
        r"Column mapping '(.*)' should look like column=field, e\.g\. question=instruction\.",
        "列映射 '{0}' 应写成 column=field，例如 question=instruction。",
        "Сопоставление '{0}' должно иметь вид column=field, например question=instruction.",
    ),
    (
        r"Column mapping (.*?)=(.*?): '(.*)' is not a field; use one of (.*)\.",
        "列映射 {0}={1}：'{2}' 不是字段；请使用其中之一：{3}。",
        "Сопоставление {0}={1}: '{2}' — не поле; используйте одно из: {3}.",
    ),
    (
        ROW + r" has no column '(.*)' \(mapped to '(.*)'\); its columns are (.*)\.",
        "{0}：第 {1} 行没有列 '{2}'（映射到 '{3}'）；该行的列为 {4}。",
        "{0}: в строке {1} нет колонки '{2}' (сопоставлена с '{3}'); её колонки: {4}.",
    ),
    (
        ROW + r" has fields (.*) which match no known format; use instruction/output \(Alpaca\), conversations "
        r"\(ShareGPT\) or messages \(ChatML\), or map your columns \(e\.g\. question=instruction\)\.",
        "{0}：第 {1} 行的字段 {2} 不符合任何已知格式；请使用 instruction/output（Alpaca）、conversations（ShareGPT）"
        "或 messages（ChatML），或映射列（例如 question=instruction）。",
        "{0}: поля строки {1} {2} не подходят ни к одному формату; нужны instruction/output (Alpaca), "
        "conversations (ShareGPT) или messages (ChatML), либо сопоставьте колонки (например, question=instruction).",
    ),
    (  # a DPO/ORPO pair with no prompt (engine.data.formats.validate_row)
        ROW + r" has no 'prompt'; then 'chosen' and 'rejected' must be whole conversations \(message lists\) that "
        r"share their first turns\. Add a prompt column, or map one \(e\.g\. question=prompt\)\.",
        "{0}：第 {1} 行没有 'prompt'；此时 'chosen' 和 'rejected' 必须是开头轮次相同的完整对话（消息列表）。"
        "请添加 prompt 列，或映射一列（例如 question=prompt）。",
        "{0}: в строке {1} нет 'prompt'; тогда 'chosen' и 'rejected' должны быть целыми разговорами (списками "
        "сообщений) с общими первыми репликами. Добавьте колонку prompt или сопоставьте её (например, "
        "question=prompt).",
    ),
    (  # LLaMA-Factory's ShareGPT pairs (engine.data.formats.sharegpt_pair)
        ROW + r": '(.+?)' should be the assistant's reply, not a '(.+?)' turn\.",
        "{0}：第 {1} 行的 '{2}' 应是助手的回复，而不是 '{3}' 轮次。",
        "{0}: строка {1}: '{2}' должен быть ответом ассистента, а не репликой '{3}'.",
    ),
    (
        ROW + r" has both 'prompt' and 'conversations'; keep one of them as the prompt\.",
        "{0}：第 {1} 行同时有 'prompt' 和 'conversations'；只保留其中一个作为提示。",
        "{0}: в строке {1} есть и 'prompt', и 'conversations'; оставьте что-то одно в качестве запроса.",
    ),
    (  # the same for GRPO's prompts and DPO/ORPO's pairs
        ROW + r" has fields (.*) which match no known format; use a 'prompt' column \(and the columns your rewards "
        r"read\), or map yours \(e\.g\. question=prompt\)\.",
        "{0}：第 {1} 行的字段 {2} 不符合任何已知格式；请使用 'prompt' 列（以及奖励读取的列），或映射你的列"
        "（例如 question=prompt）。",
        "{0}: поля строки {1} {2} не подходят ни к одному формату; нужна колонка 'prompt' (и колонки, которые "
        "читают награды), либо сопоставьте свои (например, question=prompt).",
    ),
    (
        ROW + r" has fields (.*) which match no known format; use prompt, chosen and rejected columns, or map yours "
        r"\(e\.g\. question=prompt\)\.",
        "{0}：第 {1} 行的字段 {2} 不符合任何已知格式；请使用 prompt、chosen 和 rejected 列，或映射你的列"
        "（例如 question=prompt）。",
        "{0}: поля строки {1} {2} не подходят ни к одному формату; нужны колонки prompt, chosen и rejected, либо "
        "сопоставьте свои (например, question=prompt).",
    ),
    (
        ROW + r" is (\S+) but earlier rows are (\S+); a file holds one format\.",
        "{0}：第 {1} 行是 {2} 格式，但前面的行是 {3}；一个文件只能有一种格式。",
        "{0}: строка {1} в формате {2}, а строки до неё — {3}; в файле должен быть один формат.",
    ),
    (
        ROW + r": field '(.*)' is missing or empty\.",
        "{0}：第 {1} 行：字段 '{2}' 缺失或为空。",
        "{0}: строка {1}: поле '{2}' отсутствует или пусто.",
    ),
    (
        ROW + r": field '(.*)' should be text, not (\S+)\.",
        "{0}：第 {1} 行：字段 '{2}' 应为文本，而不是 {3}。",
        "{0}: строка {1}: поле '{2}' должно быть текстом, а не {3}.",
    ),
    (
        ROW + r": field '(.*)' should be text\.",
        "{0}：第 {1} 行：字段 '{2}' 应为文本。",
        "{0}: строка {1}: поле '{2}' должно быть текстом.",
    ),
    (
        ROW + r": field '(.*)' holds an invalid character \((.*), half of a UTF-16 pair\) at position (\d+); "
        r"remove it or fix the program that wrote the file\.",
        "{0}：第 {1} 行：字段 '{2}' 在位置 {4} 有无效字符（{3}，半个 UTF-16 代理对）；"
        "请删除它，或修正写出该文件的程序。",
        "{0}: строка {1}: в поле '{2}' на позиции {4} недопустимый символ ({3}, половина пары UTF-16); "
        "удалите его или исправьте программу, записавшую файл.",
    ),
    (
        ROW + r": field '(.*)' should be a non-empty list of turns\.",
        "{0}：第 {1} 行：字段 '{2}' 应为非空的对话轮次列表。",
        "{0}: строка {1}: поле '{2}' должно быть непустым списком реплик.",
    ),
    (
        ROW + r": turn (\d+) of '(.*)' needs '(.*)' and '(.*)'\.",
        "{0}：第 {1} 行：'{3}' 的第 {2} 轮需要 '{4}' 和 '{5}'。",
        "{0}: строка {1}: реплике {2} в '{3}' нужны '{4}' и '{5}'.",
    ),
    (
        ROW + r": turn (\d+) has unknown role '(.*)'; use (.*)\.",
        "{0}：第 {1} 行：第 {2} 轮的角色 '{3}' 未知；请使用 {4}。",
        "{0}: строка {1}: у реплики {2} неизвестная роль '{3}'; используйте {4}.",
    ),
    (
        r"(.+?) has 'prompt' and 'completion' columns: to fine-tune on them, map them as prompt=instruction, "
        r"completion=output\.",
        "{0} 含有 'prompt' 和 'completion' 列：要用它们微调，请映射为 prompt=instruction, completion=output。",
        "В {0} есть колонки 'prompt' и 'completion': чтобы дообучить на них, сопоставьте их как "
        "prompt=instruction, completion=output.",
    ),
    (
        ROW + r": turn (\d+) of '(.*)' is a tool call or a tool's result, which cannot be trained on yet; leave out "
        r"the rows with tool calls\.",
        "{0}：第 {1} 行：'{3}' 的第 {2} 轮是工具调用或工具的结果，目前还不能用于训练；请去掉含工具调用的行。",
        "{0}: строка {1}: реплика {2} в '{3}' — вызов инструмента или его результат, на них пока нельзя обучать; "
        "уберите строки с вызовами инструментов.",
    ),
    (
        ROW + r": turn (\d+) of '(.*)' has an empty '(.*)'\.",
        "{0}：第 {1} 行：'{3}' 的第 {2} 轮的 '{4}' 为空。",
        "{0}: строка {1}: в реплике {2} из '{3}' пустое '{4}'.",
    ),
    (
        ROW + r": turn (\d+) of '(.*)' has a '(.*)' of parts that are not all text \(images or audio\); only text can "
        r"be trained on\.",
        "{0}：第 {1} 行：'{3}' 的第 {2} 轮的 '{4}' 含有非文本部分（图片或音频）；只能用文本训练。",
        "{0}: строка {1}: в реплике {2} из '{3}' поле '{4}' содержит не только текст (изображения или аудио); "
        "обучать можно только на тексте.",
    ),
    (
        ROW + r": turn (\d+) of '(.*)' has a '(.*)' that is (\S+), not text\.",
        "{0}：第 {1} 行：'{3}' 的第 {2} 轮的 '{4}' 是 {5}，不是文本。",
        "{0}: строка {1}: в реплике {2} из '{3}' поле '{4}' — {5}, а не текст.",
    ),
    (
        ROW + r": the conversation has no assistant turn, so there is nothing to learn\.",
        "{0}：第 {1} 行：对话里没有助手的回复，无可学习。",
        "{0}: строка {1}: в диалоге нет реплики ассистента, учиться нечему.",
    ),
    (
        r"(.+?): (\S+) data is not chat data; supervised fine-tuning takes alpaca, sharegpt or chatml rows\.",
        "{0}：{1} 数据不是对话数据；对话微调（SFT）需要 alpaca、sharegpt 或 chatml 格式的行。",
        "{0}: данные {1} — не диалоги; дообучение на диалогах (SFT) принимает строки alpaca, sharegpt или chatml.",
    ),
    (
        r"Dataset file '(.*)' is empty; it needs at least one example\.",
        "数据集文件 '{0}' 是空的；至少需要一个样本。",
        "Файл датасета '{0}' пуст; нужен хотя бы один пример.",
    ),
    (
        r"Dataset file '(.*)' looks binary, not text; save it as JSON, JSONL, CSV or Parquet\.",
        "数据集文件 '{0}' 看起来是二进制文件而非文本；请另存为 JSON、JSONL、CSV 或 Parquet。",
        "Файл датасета '{0}' похож на двоичный, а не на текст; сохраните его как JSON, JSONL, CSV или Parquet.",
    ),
    (
        r"'(.*)' is neither JSON nor JSONL; use one of (.*)\.",
        "'{0}' 既不是 JSON 也不是 JSONL；请使用其中之一：{1}。",
        "'{0}' — не JSON и не JSONL; используйте одно из: {1}.",
    ),
    (
        ROW + r" is not UTF-8 text; re-save the file as UTF-8\.",
        "{0}：第 {1} 行不是 UTF-8 文本；请把文件另存为 UTF-8。",
        "{0}: строка {1} — не текст UTF-8; пересохраните файл в UTF-8.",
    ),
    (
        r"(.+?): line (\d+) is not UTF-8 text; re-save the file as UTF-8\.",
        "{0}：第 {1} 行（文件行）不是 UTF-8 文本；请把文件另存为 UTF-8。",
        "{0}: строка файла {1} — не текст UTF-8; пересохраните файл в UTF-8.",
    ),
    (
        r"Dataset file '(.*)' is UTF-16 text; save it again as UTF-8\.",
        "数据集文件 '{0}' 是 UTF-16 文本；请另存为 UTF-8。",
        "Файл датасета '{0}' в кодировке UTF-16; пересохраните его в UTF-8.",
    ),
    (
        ROW + r" has fields (\[.*\]); names are case-sensitive: rename them in lower case, or map them \((.*)\)\.",
        "{0}：第 {1} 行的字段为 {2}；字段名区分大小写：请改成小写，或映射它们（{3}）。",
        "{0}: строка {1} с полями {2}; имена различают регистр: переименуйте их строчными буквами или "
        "сопоставьте ({3}).",
    ),
    (
        r"No folder '(.*)' here, and hub ids have no spaces: did you mean '(.*)'\?",
        "这里没有文件夹 '{0}'，且 Hub ID 不含空格：是否想填 '{1}'？",
        "Папки '{0}' здесь нет, а в id на хабе не бывает пробелов: может быть, '{1}'?",
    ),
    (
        r"'(.*)' is a web address; give its hub id '(.*)' instead\.",
        "'{0}' 是网页地址；请改为填写它的 Hub ID '{1}'。",
        "'{0}' — это веб-адрес; укажите вместо него id на хабе: '{1}'.",
    ),
    (
        r"Could not read '(.*)' as one dataset \((.*)\); every file in it must be valid and of one format with the "
        r"same columns: fix or remove the bad file, or give one file\.",
        "无法把 '{0}' 作为一个数据集读取（{1}）；其中每个文件都必须有效、格式相同且列相同：请修复或移除有问题的文件，"
        "或只给一个文件。",
        "Не удалось прочитать '{0}' как один датасет ({1}); все файлы в папке должны быть исправны, одного формата и "
        "с одинаковыми колонками: исправьте или уберите плохой файл либо укажите один файл.",
    ),
    (
        r"(.+?): byte (\d+) is not UTF-8 text; re-save the file as UTF-8\.",
        "{0}：第 {1} 字节不是 UTF-8 文本；请把文件另存为 UTF-8。",
        "{0}: байт {1} — не текст UTF-8; пересохраните файл в UTF-8.",
    ),
    (
        r"(.+?): invalid JSON at line (\d+), column (\d+) \((.*)\)\.",
        "{0}：第 {1} 行第 {2} 列的 JSON 无效（{3}）。",
        "{0}: неверный JSON в строке {1}, позиция {2} ({3}).",
    ),
    (
        ROW + r" is not valid JSON \((.*) at column (\d+)\)\.",
        "{0}：第 {1} 行不是有效的 JSON（第 {3} 列：{2}）。",
        "{0}: строка {1} — неверный JSON ({2}, позиция {3}).",
    ),
    (
        ROW + r" nests lists or objects thousands of levels deep; no training example does that, so the file is "
        r"probably damaged\.",
        "{0}：第 {1} 行的列表或对象嵌套了数千层；训练样本不会这样，文件可能已损坏。",
        "{0}: в строке {1} списки или объекты вложены на тысячи уровней; так не бывает, файл, видимо, повреждён.",
    ),
    (
        r"(.+?): the file nests lists or objects thousands of levels deep; no training example does that, so the "
        r"file is probably damaged\.",
        "{0}：文件的列表或对象嵌套了数千层；训练样本不会这样，文件可能已损坏。",
        "{0}: в файле списки или объекты вложены на тысячи уровней; так не бывает, файл, видимо, повреждён.",
    ),
    (
        ROW + r" is not a JSON object \(\{\.\.\.\}\)\.",
        "{0}：第 {1} 行不是 JSON 对象（{{...}}）。",
        "{0}: строка {1} — не JSON-объект ({{...}}).",
    ),
    (
        r"(.+?): expected a JSON list of examples\.",
        "{0}：应为由样本组成的 JSON 列表。",
        "{0}: ожидался JSON-список примеров.",
    ),
    (
        r"(.+?): the header names the column '(.*)' twice; rename one of them\.",
        "{0}：表头中列 '{1}' 出现了两次；请重命名其中一个。",
        "{0}: в заголовке колонка '{1}' названа дважды; переименуйте одну из них.",
    ),
    (
        ROW + r" has more values than the header has columns\.",
        "{0}：第 {1} 行的值比表头的列多。",
        "{0}: в строке {1} значений больше, чем колонок в заголовке.",
    ),
    (
        ROW + r" opens a quote \(\"\) that is never closed; close it, or write a quote that is part of the text as "
        r"two \(\"\"\)\.",
        '{0}：第 {1} 行的引号（"）没有闭合；请闭合它，或把属于文本的引号写成两个（""）。',
        '{0}: в строке {1} открыта кавычка ("), которая нигде не закрыта; закройте её или запишите кавычку, '
        'которая входит в текст, двумя ("").',
    ),
    (
        ROW + r" has text after the closing quote of a quoted value; put the whole value in quotes, and write each "
        r'quote inside it as two \(""\)\.',
        '{0}：第 {1} 行中带引号的值在右引号之后还有文字；请把整个值放进引号里，并把值内的每个引号写成两个（""）。',
        "{0}: в строке {1} после закрывающей кавычки значения идёт текст; заключите в кавычки всё значение, а "
        'каждую кавычку внутри него запишите двумя ("").',
    ),
    (
        ROW + r" cannot be read as CSV \((.*)\)\.",
        "{0}：第 {1} 行无法按 CSV 读取（{2}）。",
        "{0}: строку {1} не прочитать как CSV ({2}).",
    ),
    (
        r"'(.*)' is not a readable Parquet file\.",
        "'{0}' 不是可读取的 Parquet 文件。",
        "'{0}' — не читаемый файл Parquet.",
    ),
    (
        r"Dataset '(.*)' has no split '(.*)'; pick one it has: (.*)\.",
        "数据集 '{0}' 没有划分 '{1}'；请选一个它有的：{2}。",
        "У датасета '{0}' нет сплита '{1}'; выберите существующий: {2}.",
    ),
    (
        r"Dataset '(.*)' has no split '(.*)'; pick one it has \(often 'train'\)\.",
        "数据集 '{0}' 没有划分 '{1}'；请选一个它有的（通常是 'train'）。",
        "У датасета '{0}' нет сплита '{1}'; выберите существующий (обычно 'train').",
    ),
    (
        r"Could not load dataset '(.*)' \((.*)\): check the name, the connection, or download it on a connected "
        r"machine\.",
        "无法加载数据集 '{0}'（{1}）：请检查名称和网络连接，或在联网的机器上下载。",
        "Не удалось загрузить датасет '{0}' ({1}): проверьте имя и подключение или скачайте его на машине с сетью.",
    ),
    (r"Could not load dataset '(.*)': (.*)", "无法加载数据集 '{0}'：{1}", "Не удалось загрузить датасет '{0}': {1}"),
    (r"Dataset '(.*)' has no rows\.", "数据集 '{0}' 没有任何行。", "В датасете '{0}' нет строк."),
    (
        r"(.+?): the chat template cannot render its turns \((.*)\): (.*)\. Check the turn order or pick another "
        r"chat template\.",
        "{0}：对话模板无法渲染这些轮次（{1}）：{2}。请检查轮次顺序，或换一个对话模板。",
        "{0}: шаблон чата не может отобразить реплики ({1}): {2}. Проверьте порядок реплик или выберите другой шаблон.",
    ),
    (r"A conversation", "一段对话", "Диалог"),
    # a model's own template refusing the Chat tab's conversation (engine.chat.infer.template_refused)
    (
        r"The chat template (?:in|of) '(.*)' cannot render this conversation \((.*)\): (.*)\. Leave the System "
        r"prompt empty if the model takes none\.",
        "'{0}' 中的对话模板无法渲染此对话（{1}）：{2}。如果模型不接受系统提示词，请将其留空。",
        "Шаблон чата в '{0}' не может отобразить этот разговор ({1}): {2}. Оставьте системную подсказку пустой, "
        "если модель её не принимает.",
    ),
    (
        r"The chat template (?:in|of) '(.*)' cannot render this conversation \((.*)\): (.*)\. Clear the chat\.",
        "'{0}' 中的对话模板无法渲染此对话（{1}）：{2}。请清空聊天。",
        "Шаблон чата в '{0}' не может отобразить этот разговор ({1}): {2}. Очистите чат.",
    ),
    (
        r"The chat template changes assistant replies when it renders them; pick another template \(e\.g\. chatml\) "
        r"for this model\.",
        "对话模板在渲染时改动了助手的回复；请为此模型换一个模板（例如 chatml）。",
        "Шаблон чата меняет ответы ассистента при отображении; выберите для этой модели другой (например, chatml).",
    ),
    (
        r"(.+?): no example has an assistant reply within (\d+) tokens; raise the maximum sequence length\.",
        "{0}：没有样本的助手回复落在 {1} 个 token 以内；请调大最大序列长度。",
        "{0}: ни в одном примере ответ ассистента не укладывается в {1} токенов; увеличьте макс. длину.",
    ),
    (
        r"Unknown chat template '(.*)'; choose one of: (.*)\.",
        "未知的对话模板 '{0}'；请从中选择：{1}。",
        "Неизвестный шаблон чата '{0}'; выберите один из: {1}.",
    ),
    (
        r"This tokenizer has no end-of-sequence token, so a reply could never end; pick an instruct model or one "
        r"with an EOS token\.",
        "此分词器没有结束符，回复将无法结束；请选择 instruct 模型或带 EOS 符的模型。",
        "У токенизатора нет токена конца последовательности, ответ не сможет закончиться; выберите instruct-модель "
        "или модель с токеном EOS.",
    ),
    (ROW, "{0}：第 {1} 行", "{0}: строка {1}"),  # where a sentence names the row first (the chat template's)
    # the Export tab's format note and best-weights box
    (r"GGUF: (.*)", "GGUF：{0}", "GGUF: {0}"),
    (
        r"GGUF export does not support the '(.*)' architecture yet; it supports (.*)\. Export as merged16 and "
        r"convert with llama\.cpp's convert_hf_to_gguf\.py\.",
        "GGUF 导出暂不支持 '{0}' 架构；支持的有 {1}。请导出为 merged16，再用 llama.cpp 的 convert_hf_to_gguf.py 转换。",
        "Экспорт в GGUF пока не поддерживает архитектуру '{0}'; поддерживаются: {1}. Экспортируйте как merged16 "
        "и сконвертируйте скриптом convert_hf_to_gguf.py из llama.cpp.",
    ),
    (
        r"Export the best weights by validation loss \((.*)\) instead of the last",
        "导出验证损失最低的权重（{0}），而非最后的权重",
        "Экспортировать лучшие по валидации веса ({0}) вместо последних",
    ),
    # why a run does not fit (engine.memory.offload), as the preset note and the Model tab show it
    (
        r"Full fine-tuning of this model needs at least (\S+) GiB of GPU memory even with its activations"
        r"( ?)(and optimizer states|) in host RAM( ?)(and each gradient freed in the backward|), over the (\S+) GiB "
        r"budget; use LoRA or QLoRA\.",
        "即使把激活值{2}放在内存中{4}，全量微调此模型也至少需要 {0} GiB 显存，超出 {5} GiB 的预算；"
        "请改用 LoRA 或 QLoRA。",
        "Полному дообучению этой модели нужно не меньше {0} ГиБ памяти GPU даже с активациями{2} в ОЗУ{4} — "
        "больше бюджета {5} ГиБ; используйте LoRA или QLoRA.",
    ),
    (
        r"Full fine-tuning of this model needs at least (\S+) GiB on each GPU even with every layer recomputed, over "
        r"the (\S+) GiB budget; use LoRA or QLoRA, a shorter sequence length, or more GPUs\.",
        "即使每一层都重算，全量微调此模型在每块 GPU 上也至少需要 {0} GiB 显存，超出 {1} GiB 的预算；"
        "请改用 LoRA 或 QLoRA、缩短序列长度，或使用更多 GPU。",
        "Полному дообучению этой модели нужно не меньше {0} ГиБ на каждой GPU даже с пересчётом всех слоёв — "
        "больше бюджета {1} ГиБ; используйте LoRA или QLoRA, сократите длину последовательности "
        "или возьмите больше GPU.",
    ),
    (  # the same, before engine.memory.verdict.one_gpu_instead's sentence
        r"Full fine-tuning of this model needs at least (\S+) GiB on each GPU even with every layer recomputed, over "
        r"the (\S+) GiB budget\.",
        "即使每一层都重算，全量微调此模型在每块 GPU 上也至少需要 {0} GiB 显存，超出 {1} GiB 的预算。",
        "Полному дообучению этой модели нужно не меньше {0} ГиБ на каждой GPU даже с пересчётом всех слоёв — "
        "больше бюджета {1} ГиБ.",
    ),
    (  # engine.models.adapter_source.refusal: a LoRA adapter given as the model (the Model tab's fit line)
        r"'(.+?)' is a LoRA adapter, not a model: pick its base model '(.+?)' to train or estimate \(chat with the "
        r"adapter, export it, or train it further in a notebook with FastLanguageModel\.from_pretrained\('(.+?)'\)\)\.",
        "「{0}」是 LoRA 适配器，不是模型：训练或估算请选择它的基座模型「{1}」（适配器本身可以用来对话、导出，"
        "或在笔记本中用 FastLanguageModel.from_pretrained('{2}') 继续训练）。",
        "«{0}» — это адаптер LoRA, а не модель: для обучения или оценки выберите его базовую модель «{1}» (с адаптером "
        "можно общаться, экспортировать его или дообучить в ноутбуке через FastLanguageModel.from_pretrained('{2}')).",
    ),
    (  # engine.memory.verdict.one_gpu_instead, after the refusal above
        r"(.+?) One GPU fits it \(set gpus to 1\): (\S+) GiB of GPU memory and (\S+) GiB of host RAM, since a one-GPU "
        r"run may keep activations and optimizer states in host RAM and a sharded one does not\. Otherwise use LoRA "
        r"or QLoRA, a shorter sequence length, or more GPUs\.",
        "{0}单块 GPU 即可容纳（把 gpus 设为 1）：{1} GiB 显存和 {2} GiB 内存，因为单 GPU 运行可以把激活值和优化器状态"
        "放在内存中，而分片运行不能。否则请改用 LoRA 或 QLoRA、缩短序列长度，或使用更多 GPU。",
        "{0} На одной GPU обучение помещается (задайте gpus = 1): {1} ГиБ памяти GPU и {2} ГиБ ОЗУ, потому что запуск "
        "на одной GPU может держать активации и состояния оптимизатора в ОЗУ, а шардированный — нет. Иначе используйте "
        "LoRA или QLoRA, сократите длину последовательности или возьмите больше GPU.",
    ),
    (
        r"Full fine-tuning on one GPU needs bf16, and this run computes in fp16 \(the GPU has no bf16, or the job asks "
        r"for fp16\); use LoRA or QLoRA, whose adapters train in fp32, or set dtype to bf16 on a GPU that has it\.",
        "单块 GPU 上的全量微调需要 bf16，而本次运行以 fp16 计算（GPU 不支持 bf16，或任务要求 fp16）；"
        "请改用 LoRA 或 QLoRA（其适配器以 fp32 训练），或在支持 bf16 的 GPU 上把 dtype 设为 bf16。",
        "Полному дообучению на одной GPU нужен bf16, а этот запуск считает в fp16 (у GPU нет bf16, или задание "
        "просит fp16); используйте LoRA или QLoRA, чьи адаптеры обучаются в fp32, или задайте dtype bf16 "
        "на GPU, где он есть.",
    ),
    (
        r"Full fine-tuning cannot train fp16 weights, and this run asks for fp16 on the CPU; set dtype to auto "
        r"\(fp32 on the CPU\) or bf16, or use LoRA, whose adapters train in fp32\.",
        "全量微调无法训练 fp16 权重，而本次运行要求在 CPU 上使用 fp16；请把 dtype 设为 auto（CPU 上为 fp32）或 bf16，"
        "或改用 LoRA（其适配器以 fp32 训练）。",
        "Полное дообучение не может обучать веса в fp16, а этот запуск просит fp16 на CPU; задайте dtype auto "
        "(fp32 на CPU) или bf16 или используйте LoRA, чьи адаптеры обучаются в fp32.",
    ),
    (r"and optimizer states", "和优化器状态", " и состояниями оптимизатора"),
    (
        r"and each gradient freed in the backward",
        "、反向传播中逐个释放梯度",
        " и освобождением градиентов при обратном проходе",
    ),
    (
        r"This run needs at least (\S+) GiB of GPU memory even with every layer's weights in host RAM, over the "
        r"(\S+) GiB budget; use a shorter sequence length, a smaller batch, QLoRA, or a smaller model\.",
        "即使把每层权重都放在内存中，此运行也至少需要 {0} GiB 显存，超出 {1} GiB 的预算；"
        "请缩短序列长度、减小批大小、改用 QLoRA 或更小的模型。",
        "Запуску нужно не меньше {0} ГиБ памяти GPU даже с весами всех слоёв в ОЗУ — больше бюджета {1} ГиБ; "
        "сократите длину последовательности, уменьшите батч, возьмите QLoRA или модель поменьше.",
    ),
    (
        r"This run needs about (\S+) GiB of host RAM \(the 16-bit checkpoint while it loads(|, and what does not fit "
        r"in \S+ GiB of GPU memory|, and the training step on the CPU)\), and (\S+) GiB is free; close other "
        r"programs, use a smaller model, or a machine with more RAM\.",
        "此运行需要约 {0} GiB 内存（加载时的 16 位检查点{1}），而空闲的只有 {2} GiB；"
        "请关闭其他程序、换更小的模型，或换内存更大的机器。",
        "Запуску нужно около {0} ГиБ ОЗУ (16-битный чекпоинт при загрузке{1}), а свободно {2} ГиБ; "
        "закройте другие программы, возьмите модель поменьше или машину с большим ОЗУ.",
    ),
    (
        r", and what does not fit in (\S+) GiB of GPU memory",
        "，以及放不进 {0} GiB 显存的部分",
        " и то, что не влезло в {0} ГиБ памяти GPU",
    ),
    (", and the training step on the CPU", "，以及在 CPU 上的训练步骤", " и шаг обучения на CPU"),
    # held-out rows (engine.data.heldout)
    (
        r"No rows were held out for validation at eval_fraction (\S+); raise it, or give a separate file in "
        r"'eval_data'\.",
        "eval_fraction 为 {0} 时没有留出任何验证行；请调大它，或在 'eval_data' 中给出单独的文件。",
        "При eval_fraction {0} для валидации не отложено ни одной строки; увеличьте его или укажите отдельный файл "
        "в 'eval_data'.",
    ),
    (
        r"eval_fraction (\S+) held out every row; lower it so some are left to train on\.",
        "eval_fraction 为 {0} 时所有行都被留出；请调小它，留一些行用于训练。",
        "eval_fraction {0} отложил все строки; уменьшите его, чтобы осталось на чём учиться.",
    ),
    # a run's notes on the Train tab (engine.core.runlog.RunLog.note): the length cut to the model's context, examples
    # cut to max_seq_length or left out
    (
        r"ⓘ max_seq_length (\d+) is longer than this model's context of (\d+) tokens, so training uses (\d+); set "
        r"max_seq_length to (\d+) or less to match\.",
        "ⓘ max_seq_length {0} 超过了此模型的上下文长度 {1} 个 token，因此训练使用 {2}；"
        "请把 max_seq_length 设为 {3} 或更小。",
        "ⓘ max_seq_length {0} больше контекста этой модели ({1} токенов), поэтому обучение использует {2}; "
        "задайте max_seq_length не больше {3}.",
    ),
    (
        r"ⓘ (\d+) of (\d+) examples were longer than max_seq_length (\d+) and were cut to their first (\d+) tokens; "
        r"(\d+) of them kept none of their reply and were left out\. Raise max_seq_length to keep them whole\.",
        "ⓘ {1} 个样本中有 {0} 个超过 max_seq_length {2}，已截断为前 {3} 个 token；其中 {4} 个没有留下任何回复，"
        "已被略去。调大 max_seq_length 可保留完整样本。",
        "ⓘ {0} из {1} примеров длиннее max_seq_length {2} и обрезаны до первых {3} токенов; у {4} из них не "
        "осталось ответа, и они пропущены. Увеличьте max_seq_length, чтобы сохранить их целиком.",
    ),
    (
        r"ⓘ (\d+) of (\d+) examples were longer than max_seq_length (\d+) and were cut to their first (\d+) "
        r"tokens\. Raise max_seq_length to keep them whole\.",
        "ⓘ {1} 个样本中有 {0} 个超过 max_seq_length {2}，已截断为前 {3} 个 token。调大 max_seq_length 可保留完整样本。",
        "ⓘ {0} из {1} примеров длиннее max_seq_length {2} и обрезаны до первых {3} токенов. Увеличьте "
        "max_seq_length, чтобы сохранить их целиком.",
    ),
    (
        r"ⓘ (\d+) of (\d+) examples have no assistant reply to learn and were left out\.",
        "ⓘ {1} 个样本中有 {0} 个没有可学习的助手回复，已被略去。",
        "ⓘ {0} из {1} примеров не содержат ответа ассистента для обучения и пропущены.",
    ),
    # the same notes for validation examples and preference pairs (engine.data.tokenizing.length_notes' `what`)
    (
        r"ⓘ (\d+) of (\d+) validation examples were longer than max_seq_length (\d+) and were cut to their first "
        r"(\d+) tokens; (\d+) of them kept none of their reply and were left out\. Raise max_seq_length to keep them "
        r"whole\.",
        "ⓘ {1} 个验证样本中有 {0} 个超过 max_seq_length {2}，已截断为前 {3} 个 token；其中 {4} 个没有留下任何回复，"
        "已被略去。调大 max_seq_length 可保留完整样本。",
        "ⓘ {0} из {1} проверочных примеров длиннее max_seq_length {2} и обрезаны до первых {3} токенов; у {4} из "
        "них не осталось ответа, и они пропущены. Увеличьте max_seq_length, чтобы сохранить их целиком.",
    ),
    (
        r"ⓘ (\d+) of (\d+) validation examples were longer than max_seq_length (\d+) and were cut to their first "
        r"(\d+) tokens\. Raise max_seq_length to keep them whole\.",
        "ⓘ {1} 个验证样本中有 {0} 个超过 max_seq_length {2}，已截断为前 {3} 个 token。"
        "调大 max_seq_length 可保留完整样本。",
        "ⓘ {0} из {1} проверочных примеров длиннее max_seq_length {2} и обрезаны до первых {3} токенов. Увеличьте "
        "max_seq_length, чтобы сохранить их целиком.",
    ),
    (
        r"ⓘ (\d+) of (\d+) validation examples have no assistant reply to learn and were left out\.",
        "ⓘ {1} 个验证样本中有 {0} 个没有可学习的助手回复，已被略去。",
        "ⓘ {0} из {1} проверочных примеров не содержат ответа ассистента и пропущены.",
    ),
    (
        r"ⓘ (\d+) of (\d+) preference pairs were longer than max_seq_length (\d+) and were cut to their first "
        r"(\d+) tokens; (\d+) of them kept none of their reply and were left out\. Raise max_seq_length to keep them "
        r"whole\.",
        "ⓘ {1} 个偏好对中有 {0} 个超过 max_seq_length {2}，已截断为前 {3} 个 token；其中 {4} 个没有留下任何回复，"
        "已被略去。调大 max_seq_length 可保留完整样本。",
        "ⓘ {0} из {1} пар предпочтений длиннее max_seq_length {2} и обрезаны до первых {3} токенов; у {4} из них "
        "не осталось ответа, и они пропущены. Увеличьте max_seq_length, чтобы сохранить их целиком.",
    ),
    (
        r"ⓘ (\d+) of (\d+) preference pairs were longer than max_seq_length (\d+) and were cut to their first "
        r"(\d+) tokens\. Raise max_seq_length to keep them whole\.",
        "ⓘ {1} 个偏好对中有 {0} 个超过 max_seq_length {2}，已截断为前 {3} 个 token。"
        "调大 max_seq_length 可保留完整样本。",
        "ⓘ {0} из {1} пар предпочтений длиннее max_seq_length {2} и обрезаны до первых {3} токенов. Увеличьте "
        "max_seq_length, чтобы сохранить их целиком.",
    ),
    # DPO/ORPO pairs of two equal replies, GRPO prompts with no room for a reply (engine.training.preference, grpo)
    (
        r"ⓘ (\d+) of (\d+) preference pairs have the same chosen and rejected reply, which teaches no preference, and "
        r"were left out\.",
        "ⓘ {1} 个偏好对中有 {0} 个的选中回复与拒绝回复相同，学不到任何偏好，已被略去。",
        "ⓘ {0} из {1} пар предпочтений содержат одинаковые выбранный и отклонённый ответы, из которых нечему "
        "научиться, и пропущены.",
    ),
    (
        r"ⓘ (\d+) of (\d+) prompts are max_seq_length (\d+) tokens or longer, so no reply fits, and were left out\. "
        r"Raise max_seq_length to keep them\.",
        "ⓘ {1} 个提示中有 {0} 个达到或超过 max_seq_length {2} 个 token，放不下任何回复，已被略去。"
        "调大 max_seq_length 可保留它们。",
        "ⓘ {0} из {1} запросов занимают max_seq_length ({2} токенов) или больше, ответ в них не помещается, и они "
        "пропущены. Увеличьте max_seq_length, чтобы сохранить их.",
    ),
    # the same when nothing is left: the run fails with these (engine.training.preference, grpo)
    (
        r"The reward function '(.+?)' returned no number for any of (\d+) replies \(only None or NaN\); make it "
        r"return a float for each reply\.",
        "奖励函数 '{0}' 对全部 {1} 个回复都没有返回数值（只有 None 或 NaN）；请让它为每个回复返回一个浮点数。",
        "Функция награды '{0}' не вернула ни одного числа для {1} ответов (только None или NaN); пусть она "
        "возвращает число для каждого ответа.",
    ),
    (
        r"Every prompt is (\d+) tokens or longer, so no pair has a reply within max_seq_length (\d+); raise "
        r"max_seq_length\.",
        "每个提示都有 {0} 个或更多 token，因此没有一个偏好对的回复能放进 max_seq_length {1}；请调大 max_seq_length。",
        "Каждый запрос занимает {0} токенов или больше, поэтому ни в одной паре ответ не помещается в "
        "max_seq_length {1}; увеличьте max_seq_length.",
    ),
    (
        r"Every prompt is (\d+) tokens or longer, so no reply fits within max_seq_length (\d+); raise "
        r"max_seq_length\.",
        "每个提示都有 {0} 个或更多 token，因此任何回复都放不进 max_seq_length {1}；请调大 max_seq_length。",
        "Каждый запрос занимает {0} токенов или больше, поэтому ни один ответ не помещается в max_seq_length {1}; "
        "увеличьте max_seq_length.",
    ),
    (
        r"Every pair's chosen and rejected replies are the same, so there is no preference to learn\.",
        "每个偏好对的选中回复与拒绝回复都相同，因此没有可学习的偏好。",
        "В каждой паре выбранный и отклонённый ответы одинаковы, поэтому учиться нечему.",
    ),
    # the Chat tab: a reply that ran out of GPU memory
    (
        r"The GPU ran out of memory for this reply; lower 'Max new tokens' or clear the chat \(the conversation and "
        r"the reply are held in memory as it is written\), or pick a smaller model\.",
        "GPU 内存不足，无法写完此回复；请调低“最大新 token 数”或清空聊天（对话和回复在生成时都保存在内存中），"
        "或选择更小的模型。",
        "Для этого ответа не хватило памяти GPU; уменьшите «Максимум новых токенов» или очистите чат (разговор и ответ "
        "хранятся в памяти, пока он пишется), либо выберите модель поменьше.",
    ),
    # the Chat tab: a reply cut at the model's context, a conversation that fills it
    (
        r"The reply stopped at the model's context of (\d+) tokens \(the conversation's (\d+) and (\d+) of the "
        r"reply\); clear the chat to go on\.",
        "回复在模型的上下文长度 {0} 个 token 处停止（对话 {1} 个，回复 {2} 个）；请清空聊天后继续。",
        "Ответ остановлен на границе контекста модели, {0} токенов (разговор — {1}, ответ — {2}); очистите чат, "
        "чтобы продолжить.",
    ),
    (
        r"This conversation is (\d+) tokens, which fills the model's context of (\d+) tokens; clear the chat \(or "
        r"shorten the system prompt\) to go on\.",
        "此对话有 {0} 个 token，已占满模型的上下文长度 {1} 个 token；请清空聊天（或缩短系统提示词）后继续。",
        "Разговор занимает {0} токенов и заполняет весь контекст модели ({1} токенов); очистите чат (или "
        "сократите системную подсказку), чтобы продолжить.",
    ),
    # the same at llama.cpp's chat window (engine.chat.gguf_chat), where it is shorter than the model's context
    (
        r"The reply stopped at llama\.cpp's chat window of (\d+) tokens \(the conversation's (\d+) and (\d+) of the "
        r"reply\); clear the chat to go on\.",
        "回复在 llama.cpp 的聊天窗口 {0} 个 token 处停止（对话 {1} 个，回复 {2} 个）；请清空聊天后继续。",
        "Ответ остановлен на границе окна чата llama.cpp, {0} токенов (разговор — {1}, ответ — {2}); очистите "
        "чат, чтобы продолжить.",
    ),
    (
        r"This conversation is (\d+) tokens, which fills llama\.cpp's chat window of (\d+) tokens; clear the chat "
        r"\(or shorten the system prompt\) to go on\.",
        "此对话有 {0} 个 token，已占满 llama.cpp 的聊天窗口 {1} 个 token；请清空聊天（或缩短系统提示词）后继续。",
        "Разговор занимает {0} токенов и заполняет всё окно чата llama.cpp ({1} токенов); очистите чат (или "
        "сократите системную подсказку), чтобы продолжить.",
    ),
    # the Data tab's column mapping: two columns onto one field, one column twice
    (
        r"Columns '(.*)' and '(.*)' are both mapped to '(.*)', so one would overwrite the other; map only one of "
        r"them to '(.*)'\.",
        "列 '{0}' 和 '{1}' 都映射到了 '{2}'，其中一个会覆盖另一个；只把其中一个映射到 '{3}'。",
        "Колонки '{0}' и '{1}' обе сопоставлены с '{2}', и одна затёрла бы другую; сопоставьте с '{3}' только "
        "одну из них.",
    ),
    (
        r"Column '(.*)' is mapped to '(.*)', but (.*) also has a column '(.*)', so one would overwrite the other; "
        r"map '(.*)' to another field as well, or drop the mapping of '(.*)'\.",
        "列 '{0}' 映射到了 '{1}'，但 {2} 本身也有列 '{3}'，其中一个会覆盖另一个；把 '{4}' 也映射到别的字段，"
        "或去掉 '{5}' 的映射。",
        "Колонка '{0}' сопоставлена с '{1}', но в {2} уже есть колонка '{3}', и одна затёрла бы другую; "
        "сопоставьте '{4}' с другим полем или уберите сопоставление '{5}'.",
    ),
    (
        r"Column '(.*)' is mapped twice, to '(.*)' and to '(.*)'; a column can be one field only\.",
        "列 '{0}' 被映射了两次：到 '{1}' 和到 '{2}'；一列只能对应一个字段。",
        "Колонка '{0}' сопоставлена дважды: с '{1}' и с '{2}'; колонка может быть только одним полем.",
    ),
    # the Export tab: a hub repository name outside ASCII
    (
        r"'(.*)' is not a hub repository name; use 'user/name' in ASCII letters, digits, '-', '_' and '\.'\.",
        "'{0}' 不是 hub 仓库名；请用 ASCII 字母、数字、'-'、'_' 和 '.' 写成 'user/name'。",
        "'{0}' — не имя репозитория hub; используйте 'user/name' из ASCII-букв, цифр, '-', '_' и '.'.",
    ),
    # the Evaluate tab: a scoring regex that backtracks without end on some reply (engine.core.patterns)
    (
        r"The scoring regex (.*) is too slow: it ran past (\S+) s on a reply of (\d+) characters, so that reply "
        r"\(and any other it is too slow on\) scores 0; simplify the pattern \(a repeat inside a repeat, like "
        r"\(a\+\)\+, can take for ever\)\.",
        "评分正则 {0} 太慢：它在一条 {2} 个字符的回答上超过了 {1} 秒，所以该回答（以及它太慢的其他回答）记 0 分；"
        "请简化该模式（重复里套重复，如 (a+)+，可能永远算不完）。",
        "Оценочный regex {0} слишком медленный: на ответе из {2} символов он работал дольше {1} с, поэтому этот "
        "ответ (и любой другой, где он слишком медленный) получает 0; упростите шаблон (повтор внутри повтора, "
        "например (a+)+, может не закончиться никогда).",
    ),
]
