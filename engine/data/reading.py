"""Reading a dataset as a stream of (row number, row): JSON (an array), JSONL, CSV, TSV, Parquet, plain text (.txt/.md:
one raw-text row per paragraph), a folder of those, or a hub dataset. Every problem names the file and the 1-based row;
files are read as streams where the format allows, and nothing is ever written back.
"""

import csv
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from engine.core.errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".md")


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors put at the start of a file


CSV_FIELD_BYTES = 256 * 2**20  # the largest CSV cell read (csv's own limit is 128 KiB)


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (1-based row number, row) from a dataset file, streaming where the format allows."""
    yield from file_rows(path)[1]


def file_rows(path: str | os.PathLike, count: bool = False) -> tuple[int | None, Iterator[tuple[int, dict]]]:
    """The file's last row number when it is known without parsing every row, and its (row number, row) pairs.

    The number is exact for Parquet (its metadata) and JSON arrays (parsed whole); for JSONL, with `count`, it is the
    line count (one pass over the bytes; blank lines are not rows but keep their number); otherwise None.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Dataset file '{path}' does not exist; check the path or upload it again.")
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(BOM)
        while not head.strip() and (more := f.read(2**20)):  # blank lines before the first row
            head = more
    if not head.strip():
        raise UserError(f"Dataset file '{path.name}' is empty; it needs at least one example.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_total(path), _parquet_rows(path)
    # what Windows Notepad saves as "Unicode" (with a byte-order mark), or a text starting with two ASCII characters
    # in UTF-16 without one: every other byte zero
    no_bom = len(head) >= 4 and (not any(head[1:4:2]) and all(head[0:4:2]) or not any(head[0:4:2]) and all(head[1:4:2]))
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or no_bom:
        raise UserError(f"Dataset file '{path.name}' is UTF-16 text; save it again as UTF-8.")
    if b"\x00" in head:
        raise UserError(f"Dataset file '{path.name}' looks binary, not text; save it as JSON, JSONL, CSV or Parquet.")
    if suffix in (".csv", ".tsv"):
        header = head.splitlines()[0]  # Excel writes ';' where the comma is the decimal mark (German, French...)
        semicolons = suffix == ".csv" and b";" in header and b"," not in header
        mac = b"\r" in head and b"\n" not in head  # Excel for Mac ends each line with a carriage return alone
        delimiter = "\t" if suffix == ".tsv" else ";" if semicolons else ","
        # "instruction, output", typed by hand: a space after each separator is no part of a value (where it is
        # not, a cell may start with spaces that are: indented code)
        spaced = f"{delimiter} ".encode() in header
        return None, _csv_rows(path, delimiter, mac, spaced)
    if suffix in (".txt", ".md"):
        return None, _text_rows(path)
    if head.lstrip()[:1] == b"[":
        rows = _json_array(path)
        return len(rows), _json_array_rows(path, rows)
    if head.lstrip()[:1] == b"{":
        return _line_count(path) if count else None, _jsonl_rows(path)
    raise UserError(f"'{path.name}' is neither JSON nor JSONL; use one of {', '.join(SUFFIXES)}.")


def _decode(path: Path, raw: bytes, row: int, what: str = "row") -> str:
    """One line of the file as text; `what` names it ("line" in a CSV or text file, whose rows are counted otherwise:
    after the header, or by paragraph)."""
    try:
        # a BOM (Windows editors write one) is not data, on the first line or on that of a file joined to another
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path.name}: {what} {row} is not UTF-8 text; re-save the file as UTF-8.") from None


def _line_count(path: Path) -> int:
    """Lines of a file, read in 1 MiB blocks (a pass over the bytes, far cheaper than parsing them)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(2**20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _json_value(path: Path, text: str, where: str):
    """json.loads with a sentence for its errors, including nesting deeper than Python's recursion allows."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if where == "the file":
            raise UserError(f"{path.name}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}).") from None
        raise UserError(f"{path.name}: {where} is not valid JSON ({e.msg} at column {e.colno}).") from None
    except RecursionError:
        raise UserError(
            f"{path.name}: {where} nests lists or objects thousands of levels deep; no training example does that, "
            "so the file is probably damaged."
        ) from None


def _jsonl_rows(path: Path):
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(path, raw, lineno)
            if not line.strip():
                continue
            if line.strip() == "{":  # json.dumps(indent=...): valid JSON, but "row 1 is not valid JSON" said otherwise
                raise UserError(
                    f"{path.name} holds JSON objects spread over several lines; put one example per line (JSONL), "
                    "or make the file a JSON list of examples ([{...}, {...}])."
                )
            row = _json_value(path, line, f"row {lineno}")
            if not isinstance(row, dict):
                raise UserError(f"{path.name}: row {lineno} is not a JSON object ({{...}}).")
            yield lineno, row


def _json_array(path: Path) -> list:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name}: byte {e.start} is not UTF-8 text; re-save the file as UTF-8.") from None
    rows = _json_value(path, text, "the file")
    if not isinstance(rows, list):
        raise UserError(f"{path.name}: expected a JSON list of examples.")
    return rows


def _json_array_rows(path: Path, rows: list):
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path.name}: row {i} is not a JSON object ({{...}}).")
        yield i, row


def _csv_rows(path: Path, delimiter: str, mac: bool = False, spaced: bool = False):
    # csv refuses fields over 128 KiB by default; a long document in one cell is a fair training example
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_BYTES))
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines(keepends=True) if mac else f  # a file object splits at "\n" only
        lines = (_decode(path, raw, n, "line") for n, raw in enumerate(raw_lines, 1))
        # strict: a quote never closed is an error, where csv otherwise reads the rest of the file into its cell
        reader = csv.DictReader(lines, delimiter=delimiter, strict=True, skipinitialspace=spaced)
        i = 0
        try:
            header = reader.fieldnames or []
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise UserError(f"{path.name}: the header names the column '{twice[0]}' twice; rename one of them.")
            for i, row in enumerate(reader, 1):
                if None in row:
                    raise UserError(f"{path.name}: row {i} has more values than the header has columns.")
                yield i, {k: v for k, v in row.items() if v is not None}
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise UserError(
                    f'{path.name}: row {i + 1} opens a quote (") that is never closed; close it, or write a quote '
                    'that is part of the text as two ("").'
                ) from None
            if "expected after '\"'" in str(e):
                raise UserError(
                    f"{path.name}: row {i + 1} has text after the closing quote of a quoted value; put the whole "
                    'value in quotes, and write each quote inside it as two ("").'
                ) from None
            raise UserError(f"{path.name}: row {i + 1} cannot be read as CSV ({e}).") from None


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception:
        raise UserError(f"'{path.name}' is not a readable Parquet file.") from None


def _parquet_total(path: Path) -> int:
    return _parquet_file(path).metadata.num_rows


def _parquet_rows(path: Path):
    n = 0
    for batch in _parquet_file(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _text_rows(path: Path):
    with open(path, "rb") as f:
        lines = (_decode(path, raw, n, "line") for n, raw in enumerate(f, 1))  # its rows are paragraphs
        n, para = 0, []
        for line in itertools.chain(lines, [""]):
            if line.strip():
                para.append(line)
            elif para:
                n += 1
                yield n, {"text": "".join(para).strip()}
                para = []


def folder_files(folder: Path) -> list[Path]:
    """The files of a dataset folder its rows may come from, in name order: all but hidden ones and those under a
    folder named '__...', which `datasets` leaves out too."""
    return [
        f
        for f in sorted(folder.rglob("*"))
        if f.is_file() and not any(p.startswith((".", "__")) for p in f.relative_to(folder).parts)
    ]


def _text_files(folder: Path) -> list[Path]:
    """A folder's text files (.txt, .md) when they are all its data files, in name order; else []. A README.md is the
    folder's card, not text to learn, unless a folder holds nothing else; one naming `configs` is left to `datasets`."""
    files = [f for f in folder_files(folder) if f.suffix.lower() in SUFFIXES]
    readme = folder / "README.md"
    if readme in files:
        if "configs:" in readme.read_text(errors="replace"):
            return []  # the card says which files make the dataset: `datasets` reads them as it says
        if len(files) > 1:
            files.remove(readme)
    return files if files and all(f.suffix.lower() in (".txt", ".md") for f in files) else []


def _text_folder_rows(files: list[Path]):
    """A folder of text files as one file would be read: one raw-text row per paragraph (`datasets` made one per
    line, so a pretraining run learned each line of a book as a document of its own), numbered across the files."""
    n = 0
    for path in files:
        for _, row in _text_rows(path):
            n += 1
            yield n, row


def iter_source(source: str, config: str = "", split: str = "train", revision: str = "") -> Iterator[tuple[int, dict]]:
    """Rows of a local file, or of a hub dataset (or local dataset folder) loaded through `datasets`; a hub dataset
    at commit `revision` (empty: the latest)."""
    yield from source_rows(source, config, split, revision=revision)[1]


def source_rows(
    source: str, config: str = "", split: str = "train", count: bool = False, revision: str = ""
) -> tuple[int | None, Iterator[tuple[int, dict]]]:
    """Like iter_source, with the last row number first where it is known (see file_rows, whose `count` it takes;
    hub datasets know their length), for progress reports."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return file_rows(path, count)
    if path.is_dir() and (texts := _text_files(path)):
        return None, _text_folder_rows(texts)
    from engine.core.hub_id import HUB_ID, url_hint

    # a hub id looks like a relative path (owner/name), but one ending in a file suffix is a mistyped file name
    if not path.is_dir() and (not HUB_ID.match(source) or path.suffix.lower() in SUFFIXES):
        raise UserError(
            # a file name with a space ('data/my file.jsonl') is not a hub id typed with one
            url_hint(source, spaces=path.suffix.lower() not in SUFFIXES)
            or f"Dataset file '{source}' does not exist; check the path or upload it again."
        )
    import datasets

    builder = None
    try:
        if path.is_dir():  # by its expanded path: datasets takes '~/my_dataset' for a hub id
            builder = datasets.load_dataset_builder(str(path), config or None)
        else:
            builder = _hub_builder(source, config, revision)
            if revision and builder.hash != revision:
                raise _not_at(source, revision, "offline, and not in this machine's datasets cache")
        _check_files(source, path, builder.config.data_files or {})  # before anything is read
        builder.download_and_prepare()
        ds = builder.as_dataset(split=split)
    except ValueError as e:
        if "split" in str(e).lower():
            have = ", ".join(f"'{s}'" for s in (builder.info.splits or {})) if builder is not None else ""
            if have:  # ultrachat_200k has train_sft and test_sft, no 'train'
                raise UserError(f"Dataset '{source}' has no split '{split}'; pick one it has: {have}.") from None
            raise UserError(f"Dataset '{source}' has no split '{split}'; pick one it has (often 'train').") from None
        raise UserError(f"Could not load dataset '{source}': {str(e).splitlines()[0][:200]}") from None
    except datasets.exceptions.DatasetGenerationError as e:  # a file of a folder (or hub dataset) did not parse
        cause = str(e.__cause__ or e).splitlines()[0][:200]
        raise UserError(
            f"Could not read '{source}' as one dataset ({cause}); every file in it must be valid and of one format "
            "with the same columns: fix or remove the bad file, or give one file."
        ) from None
    except (datasets.data_files.EmptyDatasetError, datasets.exceptions.DataFilesNotFoundError) as e:
        if not path.is_dir():  # a hub dataset without data files: as any other failure to load it, below
            raise _not_loaded(source, e) from None
        raise UserError(
            f"Dataset folder '{path.name}' holds no data files; put .jsonl, .json, .csv or .parquet files in it."
        ) from None
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        if revision:  # the commit gone from the hub (a history squashed), or the hub out of reach
            raise _not_at(source, revision, type(e).__name__) from None
        raise _not_loaded(source, e) from None
    return len(ds), ((i, dict(row)) for i, row in enumerate(ds, 1))


def is_hub_dataset(source: str) -> bool:
    """Whether `source` names a hub dataset: no file or folder of that name here, and no data file's name (a file
    this process cannot see)."""
    from engine.core.hub_id import HUB_ID

    path = Path(os.path.expanduser(source))
    return not path.exists() and bool(HUB_ID.match(source)) and path.suffix.lower() not in SUFFIXES


def hub_revision(source: str, config: str = "", revision: str = "") -> str | None:
    """The commit of the hub dataset `source` that reading it now reads: `revision` where that commit can be read
    (from the hub, or offline from the cache), else the hub's latest, or offline the cached copy's (datasets names a
    prepared copy's folder by it). None for a local file or folder, and where it cannot be told (offline with no
    copy of it, a misspelt or gated name), where reading it fails with a sentence of its own."""
    if not is_hub_dataset(source):
        return None
    import httpx

    try:
        found = _hub_builder(source, config, revision).hash
    # datasets' not-found, offline and data-file errors are OSErrors; a dataset script is a RuntimeError; the hub
    # client's own network errors are httpx's
    except (OSError, ValueError, RuntimeError, httpx.HTTPError):
        return None
    if not isinstance(found, str) or (revision and found != revision):
        return None
    return found


COMMIT = re.compile(r"[0-9a-f]{40}")  # a git commit's id: what it names never changes
_RESOLVED: dict[tuple, object] = {}  # (source, config, commit, datasets cache) -> its builder, in this process
_RESOLVED_MAX = 8  # a run reads one or two datasets; the app's process may check a few runs' resumes


def _hub_builder(source: str, config: str, revision: str):
    """datasets' builder of hub dataset `source` at commit `revision` (empty: the latest). A builder of a commit is
    kept for this process: the run's record resolves the commit (a request to the hub), and reading its rows takes
    that resolution instead of asking again. Offline, datasets takes the latest cached copy whatever the revision:
    the copy of `revision` is taken where the cache holds it (else the builder's hash is not `revision`)."""
    import datasets
    from datasets.packaged_modules.cache.cache import Cache

    key = (source, config, revision, datasets.config.HF_DATASETS_CACHE)
    if revision and (kept := _RESOLVED.get(key)) is not None:
        if not isinstance(kept, Cache) or os.path.isdir(kept.cache_dir):  # a cached copy removed since
            return kept
    builder = datasets.load_dataset_builder(source, config or None, revision=revision or None)
    if revision and isinstance(builder, Cache) and builder.hash != revision:
        pinned = Cache(
            cache_dir=os.path.expanduser(datasets.config.HF_DATASETS_CACHE),
            repo_id=source,
            dataset_name=builder.dataset_name,
            config_name=builder.config.name,
            version=str(builder.config.version),
            hash=revision,
        )
        builder = pinned if os.path.isdir(pinned.cache_dir) else builder
    if isinstance(builder.hash, str) and COMMIT.fullmatch(builder.hash):
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.pop(next(iter(_RESOLVED)))
        _RESOLVED[key[:2] + (builder.hash, key[3])] = builder
    return builder


def _not_at(source: str, revision: str, why: str) -> UserError:
    """The sentence for a hub dataset's commit (a resumed run's, or job.yaml's data_revision) that cannot be read."""
    return UserError(
        f"The run reads commit {revision[:12]} of the hub dataset '{source}', which cannot be read now ({why}): "
        "connect to the network to download it, or start a new run to train on the dataset as it is now."
    )


def _not_loaded(source: str, e: Exception) -> UserError:
    """The sentence for a hub dataset that could not be loaded (offline, misspelt, gated, or without data files)."""
    import datasets

    from engine.core.hub_token import HOW_TO_LEND, withheld

    if withheld() and isinstance(e, datasets.exceptions.DatasetNotFoundError):  # gated and private ones too
        return UserError(
            f"Could not load dataset '{source}' ({type(e).__name__}): check the name; if it is gated or private, this "
            f"shared app downloads without this machine's Hugging Face token: {HOW_TO_LEND}, or upload the data."
        )
    return UserError(
        f"Could not load dataset '{source}' ({type(e).__name__}): check the name, the connection, "
        "or download it on a connected machine."
    )


def _check_files(source: str, folder: Path, data_files: dict) -> None:
    """Refuse a dataset whose files are not its own: a hub dataset reads only files of the hub, a dataset folder only
    files inside itself. Its README.md's `configs` may name any path (absolute, '..', another filesystem's URL), which
    `datasets` would read: a dataset handed over, or a README.md uploaded to a shared app, could show or train on any
    file of this machine."""
    inside = folder.resolve() if folder.is_dir() else None
    for name in (str(f) for files in data_files.values() for f in files):
        if inside is not None:
            ok = "://" not in name and "::" not in name and inside in Path(name).resolve().parents
        else:
            ok = name.startswith("hf://") and "::" not in name
        if not ok:
            where = "inside its folder" if inside is not None else "on the hub"
            raise UserError(
                f"Dataset '{source}' names a file that is not {where} ('{name[:120]}'), in its README.md's "
                "configs; give the data file itself, or put the files in the dataset's folder."
            )
        # a folder's hidden files (its .git/, an editor's copies) are not its data, as every reader of a folder
        # skips them; a shared app, which opens no hidden file named to it, would show one its README.md names
        if inside is not None and any(p.startswith(".") for p in Path(name).resolve().relative_to(inside).parts):
            raise UserError(
                f"Dataset '{source}' names a hidden file ('{name[:120]}', a name starting with '.') in its README.md's "
                "configs, and a dataset's hidden files are not read: rename it without the leading dot."
            )
    readme = folder / "README.md"
    if inside is not None and not (readme.is_file() and "configs:" in readme.read_text(errors="replace")):
        _check_one_format(source, inside, {Path(str(f)).resolve() for files in data_files.values() for f in files})


def _check_one_format(source: str, folder: Path, read: set[Path]) -> None:
    """Refuse a folder of which `datasets` would read only some data files: it reads only the most common format of a
    folder (a CSV beside JSONL files was dropped without a word) unless a README.md's configs say which files."""
    for f in folder_files(folder):
        part = f.relative_to(folder).parts
        if f.suffix.lower() in SUFFIXES and f.suffix != ".md" and f.resolve() not in read:
            kinds = sorted({g.suffix for g in read}) or ["no"]
            raise UserError(
                f"Dataset '{source}' holds files of more than one format: only its {'/'.join(kinds)} files would be "
                f"read, and '{'/'.join(part)}' would be left out: put files of one format in the folder, or give one "
                "file."
            )


def read_rows(source: str | os.PathLike, limit: int | None = None, **where) -> list[dict]:
    return [row for _, row in itertools.islice(iter_source(str(source), **where), limit)]
