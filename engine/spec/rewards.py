"""Reward presets for GRPO: plain functions that score sampled replies, chosen and weighted in the job.

A reward is `score(completions, prompts, **columns) -> list[float]`: one number per reply, where `completions` and
`prompts` are plain text and each of `columns` is a dataset column (e.g. the reference answer) aligned with them.
A job lists its rewards; the weighted sum is what GRPO maximizes:

  rewards:
    - {preset: answer, field: answer, mode: numeric, weight: 1.0}  # the reply's answer equals the row's 'answer'
    - {preset: regex, pattern: '^\\d+$', weight: 0.5}               # 1 when the reply matches (a search)
    - {preset: format, weight: 0.2}                                 # a <think>...</think> block, then an answer
    - {preset: length, min_chars: 20, max_chars: 400}               # 1 inside the bounds, less the further out
    - {preset: character, name: Nova, maker: Tunesmith Labs}        # +1 names itself, -1 names another assistant
    - {preset: python, function: my_rewards:score}                  # your own function: CLI / Python API only

A `python` reward imports and runs code, so engine.api.start refuses it unless the caller passes allow_code=True
(the CLI does; the app never does), and nothing a browser sends can turn that on.
"""

import importlib
import re

from engine.core.errors import UserError
from engine.core.patterns import Pattern

OTHER_ASSISTANTS = (
    "ChatGPT",
    "GPT-4",
    "GPT-3.5",
    "OpenAI",
    "Claude",
    "Anthropic",
    "Gemini",
    "Bard",
    "Llama",
    "Meta AI",
    "Qwen",
    "Tongyi",
    "Alibaba Cloud",
    "Mistral AI",
    "DeepSeek",
    "Copilot",
    "Grok",
    "ERNIE",
)
PRESETS = {  # preset: its settings and their defaults (every preset also takes a weight, default 1.0)
    "answer": dict(field="answer", mode="exact"),
    "regex": dict(pattern=""),
    "format": dict(open_tag="<think>", close_tag="</think>"),
    "length": dict(min_chars=0, max_chars=1000),
    "character": dict(name="", maker="", others=OTHER_ASSISTANTS),
    "python": dict(function=""),
}
ANSWER_MODES = ("exact", "numeric")
NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|-?\.\d+")
FUNCTION_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def check(rewards) -> list[dict]:
    """The rewards with every default filled in; a UserError naming the first bad entry."""
    out = []
    for n, entry in enumerate(rewards, 1):
        where = f"Reward {n}"
        if not isinstance(entry, dict) or entry.get("preset") not in PRESETS:
            got = entry.get("preset") if isinstance(entry, dict) else entry
            raise UserError(f"{where} is {got!r}; give a preset, one of: {', '.join(PRESETS)}.")
        settings = PRESETS[entry["preset"]]
        unknown = sorted(set(entry) - {"preset", "weight", *settings})
        if unknown:
            raise UserError(
                f"{where} ({entry['preset']}) has an unknown setting '{unknown[0]}'; it takes: "
                f"{', '.join(['weight', *settings])}."
            )
        full = {**settings, "weight": 1.0, **entry}
        for key, default in {**settings, "weight": 1.0}.items():
            if not _same_kind(full[key], default):
                raise UserError(f"{where} ({entry['preset']}): '{key}' should be like {default!r}, not {full[key]!r}.")
        _check_settings(full, where)
        out.append(full)
    return out


def _same_kind(value, default) -> bool:
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _check_settings(r: dict, where: str) -> None:
    preset = r["preset"]
    if preset == "answer" and r["mode"] not in ANSWER_MODES:
        raise UserError(f"{where} (answer): 'mode' is '{r['mode']}'; use exact or numeric.")
    if preset == "answer" and not r["field"]:
        raise UserError(f"{where} (answer): name the dataset column with the reference answer in 'field'.")
    if preset == "regex":
        Pattern(r["pattern"], f"{where} (regex): the pattern")
        if not r["pattern"]:
            raise UserError(f"{where} (regex): give the 'pattern' a reply should match.")
    if preset == "format" and not (r["open_tag"] and r["close_tag"]):
        raise UserError(f"{where} (format): 'open_tag' and 'close_tag' are the tags around the reasoning (<think>).")
    if preset == "length" and not 0 <= r["min_chars"] <= r["max_chars"]:
        raise UserError(f"{where} (length): need 0 <= min_chars <= max_chars (got {r['min_chars']}, {r['max_chars']}).")
    if preset == "character" and not (str(r["name"]).strip() or str(r["maker"]).strip()):
        raise UserError(f"{where} (character): give the assistant's 'name' or 'maker' (or both).")
    if preset == "python" and not FUNCTION_PATH.fullmatch(str(r["function"])):
        raise UserError(
            f"{where} (python): 'function' should look like package.module:function, not {r['function']!r}."
        )


def needed_columns(rewards) -> tuple[str, ...]:
    """Dataset columns the rewards read (the answer preset's reference field)."""
    return tuple(r.get("field", "answer") for r in rewards if isinstance(r, dict) and r.get("preset") == "answer")


def runs_code(rewards) -> bool:
    return any(isinstance(r, dict) and r.get("preset") == "python" for r in rewards)


def build(rewards, note=None) -> list[tuple[str, float, object]]:
    """[(name, weight, score function)] for the job's rewards; names are unique (regex, regex_2, ...). `note(sentence)`
    hears of a regex reward too slow on a reply (once per reward), which then scores 0 there."""
    out, seen = [], {}
    for r in check(rewards):
        seen[r["preset"]] = seen.get(r["preset"], 0) + 1
        name = r["preset"] + (f"_{seen[r['preset']]}" if seen[r["preset"]] > 1 else "")
        args = {k: v for k, v in r.items() if k not in ("preset", "weight")}
        if r["preset"] == "regex":
            args.update(name=name, note=note)
        fn = _import(args["function"]) if r["preset"] == "python" else MAKERS[r["preset"]](**args)
        out.append((name, float(r["weight"]), fn))
    return out


def _import(path: str):
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"Could not load the reward function '{path}' ({e}); check it is on PYTHONPATH.") from None
    if not callable(fn):
        raise UserError(f"'{path}' is not a function.")
    return fn


# ------------------------------------------------------------------------------------------------------- presets


def final_answer(text: str, close_tag: str = "</think>") -> str:
    """The part of a reply after its reasoning block (the whole reply when it has none)."""
    return text.rsplit(close_tag, 1)[1] if close_tag in text else text


def _number(text: str) -> float | None:
    """The last number in `text` (thousands separators allowed), or None."""
    found = NUMBER.findall(text)
    try:
        return float(found[-1].replace(",", "")) if found else None
    except ValueError:
        return None


def _normal(text: str) -> str:
    return " ".join(str(text).split()).casefold().rstrip(".!。")


def answer(field: str = "answer", mode: str = "exact"):
    """1 when the reply's final answer equals the row's `field`: as text (case and spacing ignored) or as the last
    number in each (so "#### 42" and "The answer is 42." agree)."""

    def score(completions, prompts, **columns):
        if field not in columns:
            raise UserError(f"The answer reward reads the column '{field}', which this dataset does not have.")
        out = []
        for reply, ref in zip(completions, columns[field], strict=True):
            got = final_answer(reply)
            if ref is None:  # a row without a reference answer: nothing to be right about
                out.append(0.0)
            elif mode == "numeric":
                a, b = _number(got), _number(str(ref))
                out.append(float(a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))))
            else:
                # a whole number as it is written: Arrow reads a JSON column of 4 and 4.5 as 4.0 and 4.5
                ref = int(ref) if isinstance(ref, float) and ref.is_integer() else ref
                out.append(float(_normal(got) == _normal(ref)))
        return out

    return score


def regex(pattern: str, name: str = "regex", note=None):
    """1 when the reply matches `pattern` anywhere (a search; anchor it with ^ and $ to match the whole reply). A
    reply it takes too long on scores 0 (engine.core.patterns), told once to `note`."""
    compiled = Pattern(pattern, f"The reward '{name}': its pattern", note)

    def score(completions, prompts, **columns):
        return [float(compiled.search(reply)) for reply in completions]

    return score


def format_(open_tag: str = "<think>", close_tag: str = "</think>"):
    """1 when the reply is a reasoning block (`open_tag` ... `close_tag`) followed by a non-empty answer."""
    shape = re.compile(rf"\s*{re.escape(open_tag)}.+?{re.escape(close_tag)}\s*\S.*", re.DOTALL)

    def score(completions, prompts, **columns):
        return [float(shape.fullmatch(reply) is not None) for reply in completions]

    return score


def length(min_chars: int = 0, max_chars: int = 1000):
    """1 inside [min_chars, max_chars]; below, the fraction of min_chars reached; above, falling to 0 at twice
    max_chars (a smooth signal trains better than a cliff)."""

    def one(n: int) -> float:
        if n < min_chars:
            return n / min_chars
        if n > max_chars:
            return max(0.0, 1 - (n - max_chars) / max(max_chars, 1))
        return 1.0

    def score(completions, prompts, **columns):
        return [one(len(reply.strip())) for reply in completions]

    return score


def character(name: str = "", maker: str = "", others=OTHER_ASSISTANTS):
    """+1 when the reply names the assistant (`name` or `maker`), -1 when it names another assistant or its maker
    (ChatGPT, Claude, Qwen, ...), 0 for neither; both give 0. For identity tuning: stay in character."""
    own = [w for w in (name, maker) if str(w).strip()]
    own_folded = {w.casefold() for w in own}
    foreign = [w for w in others if w.casefold() not in own_folded]

    def mentions(words, text):
        return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE) for w in words)

    def score(completions, prompts, **columns):
        return [float(mentions(own, reply)) - float(mentions(foreign, reply)) for reply in completions]

    return score


MAKERS = dict(answer=answer, regex=regex, format=format_, length=length, character=character)
