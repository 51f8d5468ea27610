"""Chinese and Russian for the rest of the engine's refusals (UserError sentences) that the tabs show after their
"**Not started:**" and the like: a shared app's limits, runs, the chat, disk and checkpoints, datasets, evaluation,
export, GGUF and the hub (i18n_jobs holds those about models, job files, rewards and training). tests/test_i18n.py
finds every refusal the engine raises and fails on one with no template.

Each entry is the engine's sentence with {} where it puts a value (a name, a number, a library's reason), written
as the engine writes it; `template` makes it the pattern i18n_more.MESSAGES holds. The values stay as they are
(each is translated again when it is itself a known sentence).
"""

import re


def template(english: str) -> str:
    """The pattern of a sentence with {} for each value: the text around them literal, each value a group."""
    return "(.+?)".join(re.escape(part) for part in english.split("{}"))


REFUSALS = [  # (English with {} for values, Chinese, Russian)
    (
        "Dataset '{}' names a hidden file ('{}', a name starting with '.') in its README.md's configs, and a "
        "dataset's hidden files are not read: rename it without the leading dot.",
        "数据集 '{0}' 的 README.md 配置中写了一个隐藏文件（'{1}'，以 '.' 开头的名称），而数据集的隐藏文件不会被读取："
        "请把它改名，去掉开头的点。",
        "Датасет '{0}' называет в конфигурации своего README.md скрытый файл ('{1}', имя начинается с '.'), а "
        "скрытые файлы датасета не читаются: переименуйте его без точки в начале.",
    ),
    # a shared app (engine.api.access, runs, exports)
    (
        "'{}' in '{}' is a link to a file outside the workspace's runs/, data/ and exports/ ({}), which a shared app "
        "does not open; copy that file in instead of linking it.",
        "'{1}' 中的 '{0}' 是指向工作区 runs/、data/ 和 exports/ 之外文件的链接（{2}），共享的应用不会打开它；"
        "请把该文件复制进来，而不是链接。",
        "'{0}' в '{1}' — ссылка на файл вне папок runs/, data/ и exports/ рабочей области ({2}), а общее "
        "приложение такие не открывает; скопируйте файл вместо ссылки.",
    ),
    (
        "'{}' is a link to a file outside the workspace's runs/, data/ and exports/ ({}), which a shared app does "
        "not open; copy that file in instead of linking it.",
        "'{0}' 是指向工作区 runs/、data/ 和 exports/ 之外文件的链接（{1}），共享的应用不会打开它；"
        "请把该文件复制进来，而不是链接。",
        "'{0}' — ссылка на файл вне папок runs/, data/ и exports/ рабочей области ({1}), а общее приложение такие "
        "не открывает; скопируйте файл вместо ссылки.",
    ),
    (
        "The {} '{}' is not allowed: use letters, digits, '-', '_' and '.', with no path separators and not starting "
        "with a dot.",
        "不允许使用{0} '{1}'：请只用字母、数字、'-'、'_' 和 '.'，不含路径分隔符，也不以点开头。",
        "Нельзя использовать {0} '{1}': используйте буквы, цифры, '-', '_' и '.', без разделителей пути и не с "
        "точки в начале.",
    ),
    (
        "The {} is too long for a file name; shorten it to {} characters or fewer (a third of that in Chinese or "
        "Japanese).",
        "{0}作为文件名太长；请缩短到 {1} 个字符以内（中文或日文约为其三分之一）。",
        "Слишком длинное {0} для имени файла; сократите до {1} символов (для китайского или японского — втрое меньше).",
    ),
    (
        "This app is shared, so it only opens files inside its workspace's runs/, data/ and exports/ folders ({}); {}.",
        "这是共享的应用，只打开其工作区 runs/、data/ 和 exports/ 文件夹中的文件（{0}）；{1}。",
        "Это общее приложение: оно открывает только файлы в папках runs/, data/ и exports/ своей рабочей области "
        "({0}); {1}.",
    ),
    (
        "'{}' is hidden (a name starting with '.'), and a shared app opens no hidden file or folder: rename it "
        "without the leading dot.",
        "'{0}' 是隐藏的（名称以 '.' 开头），共享的应用不打开隐藏的文件或文件夹：请去掉开头的点重新命名。",
        "'{0}' скрыт (имя начинается с '.'), а общее приложение не открывает скрытые файлы и папки: переименуйте "
        "без точки в начале.",
    ),
    (
        "This app is shared, so an upload needs your own write token typed in the Export tab: the machine's "
        "HF_TOKEN is not lent to the app's users.",
        "这是共享的应用，上传需要你在导出页输入自己的写入令牌：本机的 HF_TOKEN 不借给应用的用户。",
        "Это общее приложение, поэтому для загрузки нужен ваш собственный токен с правом записи, введённый на "
        "вкладке «Экспорт»: HF_TOKEN этой машины пользователям приложения не выдаётся.",
    ),
    (
        "This app is shared, so it runs no code shipped with a model: untick 'Trust remote code', or train this "
        "model from the command line on the machine itself.",
        "这是共享的应用，不运行模型自带的代码：请取消勾选“信任远程代码”，或在本机上从命令行训练此模型。",
        "Это общее приложение, и оно не запускает код, поставляемый с моделью: снимите флажок «Доверять "
        "удалённому коду» или обучайте эту модель из командной строки на самой машине.",
    ),
    (
        "This run's job.yaml turns on trust_remote_code (Python shipped with its model runs on this machine), and a "
        "run folder may come from anyone: if you trust its model, resume it from the command line (python -m engine "
        "resume RUN).",
        "此运行的 job.yaml 开启了 trust_remote_code（模型自带的 Python 代码会在本机运行），而运行文件夹可能来自任何人："
        "如果你信任其模型，请从命令行继续它（python -m engine resume RUN）。",
        "В job.yaml этого запуска включён trust_remote_code (на этой машине запустится Python из его модели), а "
        "папка запуска может прийти от кого угодно: если доверяете модели, продолжите запуск из командной строки "
        "(python -m engine resume RUN).",
    ),
    (
        "This job has a 'python' reward, which runs your own code: that is accepted only from the command line or "
        "the Python API (engine.api.start(spec, allow_code=True)), never from the app.",
        "此任务有 'python' 奖励，会运行你自己的代码：只能从命令行或 Python API（engine.api.start(spec, "
        "allow_code=True)）接受，绝不从应用接受。",
        "В этом задании есть награда 'python', запускающая ваш собственный код: она принимается только из командной "
        "строки или Python API (engine.api.start(spec, allow_code=True)), но не из приложения.",
    ),
    # runs, resumes, names (engine.api.runs, data, exports, models, evals)
    (
        "Unknown objective '{}'; use one of: {}.",
        "未知的训练目标 '{0}'；请使用其中之一：{1}。",
        "Неизвестная цель обучения '{0}'; используйте одну из: {1}.",
    ),
    (
        "'{}' already exists; choose another file name.",
        "'{0}' 已存在；请换一个文件名。",
        "'{0}' уже существует; выберите другое имя файла.",
    ),
    (
        "Pick two or more runs to compare.",
        "请选择两个或更多运行进行对比。",
        "Выберите два или больше запусков для сравнения.",
    ),
    (
        "Unknown export format '{}'; use one of: {}.",
        "未知的导出格式 '{0}'；请使用其中之一：{1}。",
        "Неизвестный формат экспорта '{0}'; используйте один из: {1}.",
    ),
    (
        "'{}' already exists; choose another folder name (nothing is ever overwritten).",
        "'{0}' 已存在；请换一个文件夹名（任何内容都不会被覆盖）。",
        "'{0}' уже существует; выберите другое имя папки (ничто никогда не перезаписывается).",
    ),
    (
        "'{}' is being exported already; wait for that export, or cancel it, or choose another name.",
        "'{0}' 已在导出中；请等待该导出完成，或取消它，或换一个名称。",
        "'{0}' уже экспортируется; дождитесь этого экспорта, отмените его или выберите другое имя.",
    ),
    (
        "Unknown method '{}'; use qlora, lora or full.",
        "未知的方法 '{0}'；请使用 qlora、lora 或 full。",
        "Неизвестный метод '{0}'; используйте qlora, lora или full.",
    ),
    ("No download of '{}' was started.", "没有开始下载 '{0}'。", "Скачивание '{0}' не запускалось."),
    ("Run {} cannot be resumed: {}", "运行 {0} 无法继续：{1}", "Запуск {0} нельзя продолжить: {1}"),
    (
        "Run {} is still {}; cancel it before resuming.",
        "运行 {0} 仍在进行（{1}）；请先取消它再继续。",
        "Запуск {0} ещё не завершён ({1}); отмените его, прежде чем продолжать.",
    ),
    (
        "Run {} already finished; start a new run to train further.",
        "运行 {0} 已经完成；要继续训练，请开始新的运行。",
        "Запуск {0} уже завершён; чтобы обучать дальше, начните новый запуск.",
    ),
    (
        "'{}' in its folder is a link, which a run folder made here never holds; replace the link with the file "
        "itself.",
        "其文件夹中的 '{0}' 是链接，而此处创建的运行文件夹从不包含链接；请用文件本身替换该链接。",
        "'{0}' в его папке — ссылка, а в папках запусков, созданных здесь, ссылок не бывает; замените ссылку самим "
        "файлом.",
    ),
    (
        "No run '{}': give a run folder (with job.yaml) or a run id from the run list.",
        "没有运行 '{0}'：请给出运行文件夹（含 job.yaml）或运行列表中的运行 ID。",
        "Запуска '{0}' нет: укажите папку запуска (с job.yaml) или ID запуска из списка.",
    ),
    (
        "'{}' is not a run of this app; pick one from the run history (a run id is the name of a folder in runs/).",
        "'{0}' 不是此应用的运行；请从运行历史中选择（运行 ID 是 runs/ 中文件夹的名称）。",
        "'{0}' — не запуск этого приложения; выберите запуск в истории (ID запуска — имя папки в runs/).",
    ),
    (
        "Run {} is still {}; cancel it before deleting it.",
        "运行 {0} 仍在进行（{1}）；请先取消它再删除。",
        "Запуск {0} ещё не завершён ({1}); отмените его, прежде чем удалять.",
    ),
    (
        "Run {} has no adapter or checkpoint yet: wait for its first checkpoint if it is still running; if it "
        "stopped before one, there is nothing to use, so start it again.",
        "运行 {0} 还没有适配器或检查点：如果它仍在运行，请等待第一个检查点；如果它在此之前就停止了，则没有可用的内容，"
        "请重新开始。",
        "У запуска {0} ещё нет адаптера или чекпоинта: если он ещё идёт, дождитесь первого чекпоинта; если он "
        "остановился раньше, использовать нечего — запустите его заново.",
    ),
    # the Chat tab (engine.chat)
    (
        "'{}' is a GGUF file, whose adapter is merged into its weights, so it has no base model to compare with; "
        "pick the run it was exported from.",
        "'{0}' 是 GGUF 文件，其适配器已合并进权重，因此没有可对比的基座模型；请选择导出它的运行。",
        "'{0}' — файл GGUF, адаптер в нём слит с весами, и сравнивать не с чем; выберите запуск, из которого он "
        "экспортирован.",
    ),
    (
        "'{}' is not a readable GGUF model file.",
        "'{0}' 不是可读取的 GGUF 模型文件。",
        "'{0}' — не читаемый файл модели GGUF.",
    ),
    ("GGUF file '{}' does not exist.", "GGUF 文件 '{0}' 不存在。", "Файла GGUF '{0}' нет."),
    (
        "llama.cpp could not load '{}'; the file is damaged or of a newer format.",
        "llama.cpp 无法加载 '{0}'；文件已损坏或格式更新。",
        "llama.cpp не смог загрузить '{0}'; файл повреждён или более нового формата.",
    ),
    (
        "'{}' has no chat template embedded; export it again with Tunesmith.",
        "'{0}' 没有内嵌对话模板；请用 Tunesmith 重新导出。",
        "В '{0}' нет встроенного шаблона чата; экспортируйте его заново через Tunesmith.",
    ),
    (
        "'{}' of '{}' is not valid JSON ({}); copy the file again from the model's source.",
        "'{1}' 的 '{0}' 不是有效的 JSON（{2}）；请从模型来源重新复制该文件。",
        "'{0}' в '{1}' — неверный JSON ({2}); скопируйте файл заново из источника модели.",
    ),
    (
        "This conversation is {} tokens, which fills {} of {} tokens; clear the chat (or shorten the system prompt) "
        "to go on.",
        "此对话有 {0} 个 token，已占满 {1}（{2} 个 token）；请清空聊天（或缩短系统提示词）后继续。",
        "Разговор занимает {0} токенов и заполняет {1} ({2} токенов); очистите чат (или сократите системный "
        "промпт), чтобы продолжить.",
    ),
    ("the model's context", "模型的上下文", "контекст модели"),
    (
        "Another reply from this model is still being written; wait for it to finish (or stop it), then ask again.",
        "此模型的另一条回复仍在生成；请等它完成（或停止它）后再提问。",
        "Другой ответ этой модели ещё пишется; дождитесь конца (или остановите его), затем спросите снова.",
    ),
    (
        "'{}' holds its adapter only as a pickle file (adapter_model.bin), which could run code when loaded; "
        "Tunesmith loads adapters from safetensors only. Save it again with save_pretrained(..., "
        "safe_serialization=True) where it was made.",
        "'{0}' 的适配器只有 pickle 文件（adapter_model.bin），加载时可能运行代码；Tunesmith 只从 safetensors 加载适配"
        "器。"
        "请在创建它的地方用 save_pretrained(..., safe_serialization=True) 重新保存。",
        "В '{0}' адаптер есть только как pickle-файл (adapter_model.bin), который при загрузке может запустить код; "
        "Tunesmith загружает адаптеры только из safetensors. Сохраните его заново через save_pretrained(..., "
        "safe_serialization=True) там, где он был создан.",
    ),
    (
        "'{}' has no adapter_model.safetensors; it is not a complete LoRA adapter.",
        "'{0}' 没有 adapter_model.safetensors；它不是完整的 LoRA 适配器。",
        "В '{0}' нет adapter_model.safetensors; это не полный адаптер LoRA.",
    ),
    (
        "'{}' has no LoRA adapter, so there is no base model to compare with; pick a run trained with LoRA or QLoRA.",
        "'{0}' 没有 LoRA 适配器，因此没有可对比的基座模型；请选择用 LoRA 或 QLoRA 训练的运行。",
        "У '{0}' нет адаптера LoRA, и сравнивать не с чем; выберите запуск, обученный с LoRA или QLoRA.",
    ),
    # disk, files, hardware, checkpoints (engine.core)
    (
        "The disk is full: {} failed ({} free where '{}' is); {}. Free some space (old runs, exports, the Hugging "
        "Face cache) and try again.",
        "磁盘已满：{0}时失败（'{2}' 所在位置剩余 {1}）；{3}。请释放一些空间（旧的运行、导出、Hugging Face 缓存）后重试"
        "。",
        "Диск заполнен: не удалось {0} (свободно {1} там, где '{2}'); {3}. Освободите место (старые запуски, "
        "экспорты, кеш Hugging Face) и повторите.",
    ),
    (
        "Cannot create '{}': {}; pick another folder.",
        "无法创建 '{0}'：{1}；请选择其他文件夹。",
        "Не удалось создать '{0}': {1}; выберите другую папку.",
    ),
    (
        "Not enough free disk for {}: it needs about {} GiB and '{}' has {} GiB free; free some space or pick "
        "another folder.",
        "磁盘空间不足，无法写入{0}：约需 {1} GiB，而 '{2}' 只剩 {3} GiB；请释放一些空间或选择其他文件夹。",
        "Не хватает места на диске для {0}: нужно около {1} ГиБ, а в '{2}' свободно {3} ГиБ; освободите место или "
        "выберите другую папку.",
    ),
    (
        "This job asks for a GPU but PyTorch sees none; set device to 'auto' or 'cpu', or install a CUDA build of "
        "PyTorch.",
        "此任务要求使用 GPU，但 PyTorch 看不到任何 GPU；请把 device 设为 'auto' 或 'cpu'，或安装支持 CUDA 的 PyTorch。",
        "Задание просит GPU, но PyTorch её не видит; задайте device 'auto' или 'cpu' или установите сборку PyTorch "
        "с CUDA.",
    ),
    (
        "{} has no bf16 support; choose dtype fp16 or auto.",
        "{0} 不支持 bf16；请把 dtype 设为 fp16 或 auto。",
        "{0} не поддерживает bf16; выберите dtype fp16 или auto.",
    ),
    (
        "{} '{}' is not a valid regular expression ({}).",
        "{0} '{1}' 不是有效的正则表达式（{2}）。",
        "{0} '{1}' — неверное регулярное выражение ({2}).",
    ),
    (
        "The checkpoint {} has no {} state; it is incomplete, so delete that folder to resume from the one before it.",
        "检查点 {0} 没有 {1} 状态；它不完整，请删除该文件夹，以便从前一个检查点继续。",
        "В чекпоинте {0} нет состояния {1}; он неполный — удалите эту папку, чтобы продолжить с предыдущего.",
    ),
    (
        "The checkpoint {} holds a {} that is not plain data (it could run code when read), so it was not loaded "
        "({}); delete the checkpoint folder and start the run again, or resume only run folders you made yourself.",
        "检查点 {0} 中的 {1} 不是纯数据（读取时可能运行代码），因此未加载（{2}）；请删除该检查点文件夹并重新开始运行，"
        "或只继续你自己创建的运行文件夹。",
        "Чекпоинт {0} содержит {1} не в виде простых данных (при чтении может запустить код), поэтому он не "
        "загружен ({2}); удалите папку чекпоинта и начните запуск заново или продолжайте только свои запуски.",
    ),
    (
        "The checkpoint {} cannot be read ({}); it is damaged, so delete that folder to resume from the one before it.",
        "无法读取检查点 {0}（{1}）；它已损坏，请删除该文件夹，以便从前一个检查点继续。",
        "Чекпоинт {0} не читается ({1}); он повреждён — удалите эту папку, чтобы продолжить с предыдущего.",
    ),
    # datasets (engine.data)
    (
        "{}: row {}: field 'history' should be a list of [question, answer] pairs.",
        "{0}：第 {1} 行：字段 'history' 应为 [问题, 回答] 对的列表。",
        "{0}: строка {1}: поле 'history' должно быть списком пар [вопрос, ответ].",
    ),
    (
        "{}: row {}: pair {} of 'history' has an empty or non-text {} turn.",
        "{0}：第 {1} 行：'history' 的第 {2} 对中 {3} 轮次为空或不是文本。",
        "{0}: строка {1}: в паре {2} из 'history' реплика {3} пустая или не текст.",
    ),
    (
        "The identity needs both a name and a maker.",
        "身份数据需要同时有名字和开发者。",
        "Для личности нужны и имя, и создатель.",
    ),
    (
        "Unknown language '{}'; choose from {}.",
        "未知的语言 '{0}'；请从 {1} 中选择。",
        "Неизвестный язык '{0}'; выберите из {1}.",
    ),
    (
        "Unknown data format '{}'; use auto or one of: {}.",
        "未知的数据格式 '{0}'；请使用 auto 或其中之一：{1}。",
        "Неизвестный формат данных '{0}'; используйте auto или один из: {1}.",
    ),
    (
        "{} holds JSON objects spread over several lines; put one example per line (JSONL), or make the file a JSON "
        "list of examples ([{...}, {...}]).",
        "{0} 中的 JSON 对象跨越了多行；请每行放一个样本（JSONL），或把文件写成样本的 JSON 列表（[{{...}}, {{...}}]）。",
        "В {0} объекты JSON растянуты на несколько строк; запишите по одному примеру в строке (JSONL) или сделайте "
        "файл JSON-списком примеров ([{{...}}, {{...}}]).",
    ),
    (
        "Dataset folder '{}' holds no data files; put .jsonl, .json, .csv or .parquet files in it.",
        "数据集文件夹 '{0}' 中没有数据文件；请放入 .jsonl、.json、.csv 或 .parquet 文件。",
        "В папке датасета '{0}' нет файлов данных; положите в неё файлы .jsonl, .json, .csv или .parquet.",
    ),
    (
        "Could not load dataset '{}' ({}): check the name; if it is gated or private, this shared app downloads "
        "without this machine's Hugging Face token: {}, or upload the data.",
        "无法加载数据集 '{0}'（{1}）：请检查名称；如果它是受限或私有的，这个共享应用下载时不使用本机的 Hugging Face "
        "令牌：{2}，或上传数据。",
        "Не удалось загрузить датасет '{0}' ({1}): проверьте название; если он закрытый или приватный, это общее "
        "приложение скачивает без токена Hugging Face этой машины: {2}, либо загрузите данные.",
    ),
    (
        "Dataset '{}' names a file that is not inside its folder ('{}'), in its README.md's configs; give the data "
        "file itself, or put the files in the dataset's folder.",
        "数据集 '{0}' 的 README.md 配置中指定了不在其文件夹内的文件（'{1}'）；请直接给出数据文件，或把文件放进数据集的"
        "文件夹。",
        "Датасет '{0}' в конфигурациях своего README.md указывает файл вне своей папки ('{1}'); укажите сам файл "
        "данных или положите файлы в папку датасета.",
    ),
    (
        "Dataset '{}' names a file that is not on the hub ('{}'), in its README.md's configs; give the data file "
        "itself, or put the files in the dataset's folder.",
        "数据集 '{0}' 的 README.md 配置中指定了不在 Hub 上的文件（'{1}'）；请直接给出数据文件，或把文件放进数据集的文"
        "件夹。",
        "Датасет '{0}' в конфигурациях своего README.md указывает файл не на хабе ('{1}'); укажите сам файл данных "
        "или положите файлы в папку датасета.",
    ),
    (
        "Dataset '{}' holds files of more than one format: only its {} files would be read, and '{}' would be left "
        "out: put files of one format in the folder, or give one file.",
        "数据集 '{0}' 含有多种格式的文件：只会读取其中的 {1} 文件，'{2}' 会被略去：请在文件夹中只放一种格式的文件，或"
        "只给一个文件。",
        "В датасете '{0}' файлы нескольких форматов: прочитаны были бы только файлы {1}, а '{2}' пропущен: "
        "положите в папку файлы одного формата или укажите один файл.",
    ),
    # evaluation (engine.export.evaluate, scoring)
    (
        "The evaluation was stopped; nothing was saved.",
        "评估已停止；未保存任何内容。",
        "Оценка остановлена; ничего не сохранено.",
    ),
    (
        "{} is {} data; evaluation takes chat rows with reference answers (alpaca, sharegpt or chatml).",
        "{0} 是 {1} 数据；评估需要带参考答案的对话行（alpaca、sharegpt 或 chatml）。",
        "{0} — данные {1}; для оценки нужны диалоговые строки с эталонными ответами (alpaca, sharegpt или chatml).",
    ),
    (
        "{} has no rows with a question and a reference answer to evaluate on.",
        "{0} 中没有带问题和参考答案、可用于评估的行。",
        "В {0} нет строк с вопросом и эталонным ответом для оценки.",
    ),
    (
        "A 'python' reward runs your own code; evaluation takes the built-in presets only.",
        "'python' 奖励会运行你自己的代码；评估只接受内置预设。",
        "Награда 'python' запускает ваш собственный код; для оценки подходят только встроенные пресеты.",
    ),
    # export (engine.export: adapter, merge, gguf)
    (
        "PEFT did not load {} of the adapter's weights (e.g. '{}'); report this.",
        "PEFT 没有加载适配器的 {0} 个权重（例如 '{1}'）；请报告此问题。",
        "PEFT не загрузил {0} весов адаптера (например, '{1}'); сообщите об этом.",
    ),
    (
        "The exported adapter answers differently from the run's adapter; the export was not saved.",
        "导出的适配器与运行的适配器回答不同；导出未保存。",
        "Экспортированный адаптер отвечает не так, как адаптер запуска; экспорт не сохранён.",
    ),
    (
        "'{}' has no tokenizer.json (only a SentencePiece .model file); GGUF export reads tokenizer.json. Export as "
        "merged16 instead.",
        "'{0}' 没有 tokenizer.json（只有 SentencePiece .model 文件）；GGUF 导出读取的是 tokenizer.json。请改为导出 "
        "merged16。",
        "В '{0}' нет tokenizer.json (только файл SentencePiece .model); экспорт в GGUF читает tokenizer.json. "
        "Экспортируйте как merged16.",
    ),
    (
        "GGUF export cannot convert the tokenizer of '{}': it is {}, and the export writes only byte-level BPE "
        "tokenizers (Llama 3, Qwen) and SentencePiece BPE tokenizers with byte fallback (Llama 2, Mistral, Gemma); "
        "export as merged16 instead.",
        "GGUF 导出无法转换 '{0}' 的分词器：它是 {1}，而导出只支持字节级 BPE 分词器（Llama 3、Qwen）和带字节回退的 "
        "SentencePiece BPE 分词器（Llama 2、Mistral、Gemma）；请改为导出 merged16。",
        "Экспорт в GGUF не может преобразовать токенизатор '{0}': это {1}, а экспорт пишет только байтовые "
        "BPE-токенизаторы (Llama 3, Qwen) и BPE-токенизаторы SentencePiece с байтовым запасным вариантом "
        "(Llama 2, Mistral, Gemma); экспортируйте как merged16.",
    ),
    (
        "GGUF export does not support rope scaling '{}' (supported: linear, yarn, llama3); export as merged16 instead.",
        "GGUF 导出不支持 RoPE 缩放 '{0}'（支持：linear、yarn、llama3）；请改为导出 merged16。",
        "Экспорт в GGUF не поддерживает масштабирование RoPE '{0}' (поддерживаются linear, yarn, llama3); "
        "экспортируйте как merged16.",
    ),
    (
        "GGUF export: this {} model's {} differs from what llama.cpp computes for it; export as merged16 instead.",
        "GGUF 导出：此 {0} 模型的 {1} 与 llama.cpp 的计算不同；请改为导出 merged16。",
        "Экспорт в GGUF: {1} этой модели {0} отличается от того, что вычисляет llama.cpp; экспортируйте как merged16.",
    ),
    (
        "The tokenizer of '{}' has {} tokens but the model only {} embeddings; resize the embeddings before exporting.",
        "'{0}' 的分词器有 {1} 个 token，而模型只有 {2} 个嵌入；请在导出前调整嵌入大小。",
        "В токенизаторе '{0}' {1} токенов, а у модели только {2} эмбеддингов; измените размер эмбеддингов перед "
        "экспортом.",
    ),
    (
        "'{}' has no chat template; export it through Tunesmith, which adds one.",
        "'{0}' 没有对话模板；请通过 Tunesmith 导出，它会加上模板。",
        "У '{0}' нет шаблона чата; экспортируйте через Tunesmith, он его добавит.",
    ),
    (
        "GGUF export does not know where the weight '{}' of this {} model goes; export as merged16 instead.",
        "GGUF 导出不知道此 {1} 模型的权重 '{0}' 应放在哪里；请改为导出 merged16。",
        "Экспорт в GGUF не знает, куда идёт вес '{0}' этой модели {1}; экспортируйте как merged16.",
    ),
    (
        "llama.cpp could not quantize the model to {} (code {}); try gguf-f16 or gguf-q8_0.",
        "llama.cpp 无法把模型量化为 {0}（代码 {1}）；请试试 gguf-f16 或 gguf-q8_0。",
        "llama.cpp не смог квантовать модель в {0} (код {1}); попробуйте gguf-f16 или gguf-q8_0.",
    ),
    (
        "gguf-mxfp4 stores a mixture-of-experts model's experts in MXFP4 and '{}' has no experts; pick gguf-q8_0 or "
        "gguf-q4_k_m instead.",
        "gguf-mxfp4 以 MXFP4 存储混合专家模型的专家，而 '{0}' 没有专家；请改选 gguf-q8_0 或 gguf-q4_k_m。",
        "gguf-mxfp4 хранит экспертов модели со смесью экспертов в MXFP4, а у '{0}' экспертов нет; выберите "
        "gguf-q8_0 или gguf-q4_k_m.",
    ),
    (
        "The GGUF's greedy answer differs from the PyTorch model's on {} clear token(s) (logits differ by up to {}); "
        "the export was not saved. Report this bug.",
        "GGUF 的贪心回答与 PyTorch 模型有 {0} 个明显不同的 token（logit 最多相差 {1}）；导出未保存。请报告此错误。",
        "Жадный ответ GGUF расходится с моделью PyTorch на {0} явных токенах (логиты отличаются до {1}); экспорт "
        "не сохранён. Сообщите об этой ошибке.",
    ),
    (
        "llama.cpp tokenizes the chat prompt differently from transformers with this GGUF, so it would not answer "
        "like the trained model; the export was not saved. Report this bug.",
        "使用此 GGUF 时，llama.cpp 对对话提示的分词与 transformers 不同，因此它不会像训练好的模型那样回答；导出未保存。"
        "请报告此错误。",
        "С этим GGUF llama.cpp токенизирует промпт чата не так, как transformers, и отвечал бы не как обученная "
        "модель; экспорт не сохранён. Сообщите об этой ошибке.",
    ),
    (
        "GGUF export: the experts of '{}' are not numbered 0..{}.",
        "GGUF 导出：'{0}' 的专家编号不是 0..{1}。",
        "Экспорт в GGUF: эксперты '{0}' не пронумерованы 0..{1}.",
    ),
    (
        "GGUF export does not know where the experts '{}' go; export as merged16 instead.",
        "GGUF 导出不知道专家 '{0}' 应放在哪里；请改为导出 merged16。",
        "Экспорт в GGUF не знает, куда идут эксперты '{0}'; экспортируйте как merged16.",
    ),
    (
        "GGUF export: this Qwen3-MoE model does not renormalize its top-k routing weights (norm_topk_prob false), "
        "which llama.cpp always does; export as merged16 instead.",
        "GGUF 导出：此 Qwen3-MoE 模型不对 top-k 路由权重重新归一化（norm_topk_prob 为 false），而 llama.cpp 总会这样做"
        "；"
        "请改为导出 merged16。",
        "Экспорт в GGUF: эта модель Qwen3-MoE не перенормирует веса маршрутизации top-k (norm_topk_prob false), "
        "а llama.cpp делает это всегда; экспортируйте как merged16.",
    ),
    (
        "GGUF export: dense layers between the MoE layers are not supported; export as merged16.",
        "GGUF 导出：不支持 MoE 层之间的稠密层；请导出 merged16。",
        "Экспорт в GGUF: плотные слои между слоями MoE не поддерживаются; экспортируйте как merged16.",
    ),
    (
        "GGUF export: llama.cpp's gpt-oss uses sliding-window attention on even layers and full attention on odd "
        "ones, and this model's layer_types differ; export as merged16 instead.",
        "GGUF 导出：llama.cpp 的 gpt-oss 在偶数层使用滑动窗口注意力、在奇数层使用完整注意力，而此模型的 layer_types "
        "不同；请改为导出 merged16。",
        "Экспорт в GGUF: gpt-oss в llama.cpp использует скользящее окно внимания на чётных слоях и полное внимание "
        "на нечётных, а layer_types этой модели другие; экспортируйте как merged16.",
    ),
    (
        "Merging a {} adapter is not supported; export it as 'lora' instead.",
        "不支持合并 {0} 适配器；请改为导出 'lora'。",
        "Слияние адаптера {0} не поддерживается; экспортируйте его как 'lora'.",
    ),
    (
        "'{}' has no adapter_model.safetensors; export it as 'lora' or retrain.",
        "'{0}' 没有 adapter_model.safetensors；请导出为 'lora' 或重新训练。",
        "В '{0}' нет adapter_model.safetensors; экспортируйте как 'lora' или обучите заново.",
    ),
    (
        "The adapter's LoRA weights for '{}' are incomplete; the adapter file is damaged.",
        "适配器中 '{0}' 的 LoRA 权重不完整；适配器文件已损坏。",
        "Веса LoRA адаптера для '{0}' неполные; файл адаптера повреждён.",
    ),
    (
        "The adapter changes '{}', which this base model does not have; wrong base?",
        "适配器修改了 '{0}'，但此基座模型没有它；基座模型选错了？",
        "Адаптер меняет '{0}', а в этой базовой модели такого нет; не та база?",
    ),
    (
        "The adapter changes '{}', which this base model does not have; wrong base model?",
        "适配器修改了 '{0}'，但此基座模型没有它；基座模型选错了？",
        "Адаптер меняет '{0}', а в этой базовой модели такого нет; не та базовая модель?",
    ),
    (
        "The adapter replaces '{}', which this base model does not have; wrong base model?",
        "适配器替换了 '{0}'，但此基座模型没有它；基座模型选错了？",
        "Адаптер заменяет '{0}', а в этой базовой модели такого нет; не та базовая модель?",
    ),
    (
        "The base weight '{}' is stored as {}, which the merge does not handle.",
        "基座权重 '{0}' 以 {1} 存储，合并无法处理。",
        "Базовый вес '{0}' хранится как {1}, а слияние такое не обрабатывает.",
    ),
    (
        "The merged model disagrees with the adapter model (logits differ by {}); the export was not saved. Report "
        "this bug.",
        "合并后的模型与适配器模型不一致（logit 相差 {0}）；导出未保存。请报告此错误。",
        "Объединённая модель расходится с моделью с адаптером (логиты отличаются на {0}); экспорт не сохранён. "
        "Сообщите об этой ошибке.",
    ),
    (
        "'{}' has no LoRA adapter to export (a full fine-tune exports as merged16).",
        "'{0}' 没有可导出的 LoRA 适配器（全量微调请导出 merged16）。",
        "У '{0}' нет адаптера LoRA для экспорта (полное дообучение экспортируется как merged16).",
    ),
    # the hub (engine.models.hub)
    (
        "Uploading to the Hugging Face hub needs a write token: set HF_TOKEN, enter it in the Export tab, or log in "
        "with `hf auth login`; create one at huggingface.co/settings/tokens.",
        "上传到 Hugging Face 需要写入令牌：设置 HF_TOKEN、在导出页输入，或用 `hf auth login` 登录；"
        "可在 huggingface.co/settings/tokens 创建令牌。",
        "Для загрузки на хаб Hugging Face нужен токен с правом записи: задайте HF_TOKEN, введите его на вкладке "
        "«Экспорт» или войдите через `hf auth login`; создать токен можно на huggingface.co/settings/tokens.",
    ),
    (
        "{} The export itself is complete in '{}'.",
        "{0} 导出本身已完整保存在 '{1}' 中。",
        "{0} Сам экспорт полностью сохранён в '{1}'.",
    ),
    ("'{}' is not an export folder.", "'{0}' 不是导出文件夹。", "'{0}' — не папка экспорта."),
    (
        "Uploading '{}' to '{}' failed ({}). The export is complete in '{}'; check the token's write access and the "
        "connection, then push again.",
        "把 '{0}' 上传到 '{1}' 失败（{2}）。导出已完整保存在 '{3}' 中；请检查令牌的写入权限和网络连接，然后再次推送。",
        "Загрузка '{0}' в '{1}' не удалась ({2}). Экспорт полностью сохранён в '{3}'; проверьте право записи "
        "токена и подключение, затем загрузите снова.",
    ),
    # values the sentences above put in: what a name is, what was being written, what is kept, what to do
    ("export name", "导出名称", "имя экспорта"),
    ("dataset name", "数据集名称", "имя датасета"),
    ("upload the file instead", "请改为上传文件", "загрузите файл вместо этого"),
    (
        "put the model folder inside it, or pick a hub model",
        "请把模型文件夹放进工作区，或选择 Hub 上的模型",
        "положите папку модели туда или выберите модель с хаба",
    ),
    (
        "pick a run or an exported GGUF file, or a hub model",
        "请选择一个运行、导出的 GGUF 文件，或 Hub 上的模型",
        "выберите запуск, экспортированный GGUF-файл или модель с хаба",
    ),
    ("starting", "启动中", "запускается"),
    (
        "This run folder is damaged ({}); delete it, or fix its files by hand.",
        "此运行文件夹已损坏（{0}）；请删除它，或手动修复其文件。",
        "Папка запуска повреждена ({0}); удалите её или исправьте её файлы вручную.",
    ),
    ("saving the checkpoint of step {}", "保存第 {0} 步的检查点", "сохранить чекпоинт шага {0}"),
    ("writing the {} export", "写入 {0} 导出", "записать экспорт {0}"),
    (
        "the last complete checkpoint ({}) is kept, and resume continues from it",
        "最后一个完整的检查点（{0}）已保留，继续时从它开始",
        "последний полный чекпоинт ({0}) сохранён, и продолжение начнётся с него",
    ),
    (
        "no checkpoint had been saved yet, so a resume starts from step 0",
        "还没有保存任何检查点，因此继续时从第 0 步开始",
        "чекпоинтов ещё не было, поэтому продолжение начнётся с шага 0",
    ),
    ("nothing was written to '{}'", "没有向 '{0}' 写入任何内容", "в '{0}' ничего не записано"),
    ("a zip of the export for download", "用于下载的导出 zip 包", "zip-архива экспорта для скачивания"),
    ("the adapter", "适配器", "адаптера"),  # "Not enough free disk for ...": the Russian genitive
    ("the merged model", "合并后的模型", "объединённой модели"),
    ("the {} export", "{0} 导出", "экспорта {0}"),
    ("The scoring regex", "评分正则", "Оценочный regex"),
    ("The reward '{}': its pattern", "奖励“{0}”的模式", "Шаблон награды '{0}'"),
    ("Reward {} (regex): the pattern", "奖励 {0}（regex）的模式", "Награда {0} (regex): шаблон"),
    # the tabs' own refusals and lines (ui/): Export, Train's Advanced section and data check, a run's metrics
    (
        "Type the hub repository to push to, as user/name.",
        "请输入要推送到的 Hub 仓库，格式为 user/name。",
        "Введите репозиторий на хабе для загрузки в виде user/name.",
    ),
    (
        "This run kept no best weights (it had no validation set); untick 'best'.",
        "此运行没有保存最佳权重（它没有验证集）；请取消勾选“导出验证损失最低的权重”。",
        "Этот запуск не сохранил лучших весов (у него не было валидационного набора); снимите флажок «Экспортировать "
        "лучшие по валидации веса».",
    ),
    ("{}: tick at least one layer.", "{0}：请至少勾选一层。", "{0}: отметьте хотя бы один слой."),
    (
        "✅ The dataset ({}) suits this objective.",
        "✅ 数据集（{0}）适合此训练目标。",
        "✅ Датасет ({0}) подходит для этой цели.",
    ),
    (
        "margin {} (chosen {}, rejected {})",
        "差值 {0}（选中 {1}，拒绝 {2}）",
        "разница {0} (выбранный {1}, отклонённый {2})",
    ),
    ("pairs ranked right {}", "排序正确的偏好对 {0}", "верно упорядоченных пар {0}"),
    ("reward {} ± {}", "奖励 {0} ± {1}", "награда {0} ± {1}"),
    ("reply length {} tokens", "回复长度 {0} 个 token", "длина ответа {0} токенов"),
    ("{} GPUs, peak memory per GPU: {}", "{0} 块 GPU，每块峰值显存：{1}", "{0} GPU, пик памяти на каждой: {1}"),
    ("⚠ {}", "⚠ {0}", "⚠ {0}"),  # the Train tab's data check: a warning sign, then the engine's sentence
    # the hub refusing a model (engine.core.hub_id.refusal), a LoRA adapter given as the model (adapter_source)
    (
        "'{}' is gated, and this shared app downloads without this machine's Hugging Face token: {}, or put the "
        "model's folder in the workspace.",
        "'{0}' 是受限模型，而这个共享应用下载时不使用本机的 Hugging Face 令牌：{1}，或把模型文件夹放进工作区。",
        "'{0}' — закрытая модель, а это общее приложение скачивает без токена Hugging Face этой машины: {1}, либо "
        "положите папку модели в рабочую область.",
    ),
    (
        "'{}' is not on the hub or is private, and this shared app downloads without this machine's Hugging Face "
        "token: {}, or put the model's folder in the workspace.",
        "'{0}' 不在 Hub 上或是私有的，而这个共享应用下载时不使用本机的 Hugging Face 令牌：{1}，或把模型文件夹放进工作"
        "区。",
        "'{0}' нет на хабе или она приватная, а это общее приложение скачивает без токена Hugging Face этой машины: "
        "{1}, либо положите папку модели в рабочую область.",
    ),
    (
        "the host can lend this machine's Hugging Face token to the app's users by starting it with --lend-hf-token "
        "(or TUNESMITH_LEND_HF_TOKEN=1)",
        "主机可以用 --lend-hf-token（或 TUNESMITH_LEND_HF_TOKEN=1）启动应用，把本机的 Hugging Face 令牌借给应用的用户",
        "хозяин машины может выдать пользователям приложения её токен Hugging Face, запустив приложение с "
        "--lend-hf-token (или TUNESMITH_LEND_HF_TOKEN=1)",
    ),
    (
        "'{}' is gated: accept its licence on huggingface.co/{} while logged in, then log in here with `hf auth "
        "login` (or set HF_TOKEN) and retry.",
        "'{0}' 是受限模型：请登录后在 huggingface.co/{1} 接受其许可，然后在这里用 `hf auth login` 登录"
        "（或设置 HF_TOKEN）并重试。",
        "'{0}' — закрытая модель: войдите на huggingface.co и примите её лицензию на huggingface.co/{1}, затем "
        "войдите здесь через `hf auth login` (или задайте HF_TOKEN) и повторите.",
    ),
    (
        "No model '{}' on the Hugging Face hub; check the spelling, or, if it is private, log in with `hf auth "
        "login` (or set HF_TOKEN) as a user who can read it.",
        "Hugging Face 上没有模型 '{0}'；请检查拼写，如果它是私有的，请用 `hf auth login` 以能读取它的用户身份登录"
        "（或设置 HF_TOKEN）。",
        "Модели '{0}' на хабе Hugging Face нет; проверьте написание, а если она приватная, войдите через "
        "`hf auth login` (или задайте HF_TOKEN) как пользователь с доступом к ней.",
    ),
    (
        "'{}' is a LoRA adapter, not a model, and its adapter_config.json names no base model; pick the model it "
        "was trained from instead.",
        "'{0}' 是 LoRA 适配器，不是模型，而且其 adapter_config.json 没有写明基座模型；请改选训练它所用的模型。",
        "'{0}' — адаптер LoRA, а не модель, и его adapter_config.json не называет базовую модель; выберите "
        "модель, на которой он обучен.",
    ),
    # the evaluation with no questions, as the command line and Python read it (engine.api.evals)
    (
        "Give the questions to evaluate on (--data FILE on the command line, data= in Python), or add a run that "
        "held some out for validation (eval_fraction or eval_data).",
        "请给出用于评估的问题（命令行用 --data FILE，Python 中用 data=），或加入一个留出了验证行的运行"
        "（eval_fraction 或 eval_data）。",
        "Укажите вопросы для оценки (--data FILE в командной строке, data= в Python) или добавьте запуск, "
        "отложивший строки для валидации (eval_fraction или eval_data).",
    ),
    (
        "Run '{}' held no rows out for validation, so it has no unseen questions: give some (--data FILE on the "
        "command line, data= in Python), or evaluate it on the questions it trained on (--seen-rows, "
        "seen_rows=True in Python, as the app's Evaluate tab does), which shows what it learned rather than how it "
        "answers new questions.",
        "运行 '{0}' 没有留出验证行，因此没有它没见过的问题：请给出一些问题（命令行用 --data FILE，Python 中用 data=），"
        "或用它训练过的问题评估它（--seen-rows，Python 中用 seen_rows=True，应用的评估页就是这样做的），"
        "这显示的是它学到了什么，而不是它如何回答新问题。",
        "Запуск '{0}' не отложил строк для валидации, и новых для него вопросов нет: укажите их (--data FILE в "
        "командной строке, data= в Python) или оцените его на вопросах, на которых он обучался (--seen-rows, "
        "seen_rows=True в Python, как делает вкладка «Оценка» приложения) — это покажет, чему он научился, а не "
        "как отвечает на новые вопросы.",
    ),
]
MESSAGES = [(template(english), zh, ru) for english, zh, ru in REFUSALS]
