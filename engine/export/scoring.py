"""Scorers for generated answers against reference answers: exact match, contains, a regex, the GRPO reward presets
(engine.spec.rewards) reused as scorers, and the identity check (the reply names the new name and its maker).

A scorer is `score(replies, prompts, references) -> list[float]`, one number per row; engine.export.evaluate averages
them per model. The identity of an identity dataset is found in its reference answers (`detect_identity`), so its
check runs without being asked for.
"""

import re

from engine.core.errors import UserError
from engine.core.patterns import Pattern
from engine.spec import rewards

# Capitalised words that open sentences of identity answers in many phrasings, never a name ("I am", "My name").
NOT_NAMES = {"i", "i'm", "my", "hi", "hello", "you", "you're", "how", "what", "ai", "me", "я", "меня", "привет"}
# Latin and Cyrillic letters spelled out: Python's \w also matches Chinese, which runs into the name ("我是Nova，")
CAPITALISED = re.compile(
    r"(?<![A-Za-zА-Яа-яЁё])[A-ZА-ЯЁ][A-Za-zА-Яа-яЁё0-9'-]*(?:[ \t]+[A-ZА-ЯЁ][A-Za-zА-Яа-яЁё0-9'-]*)*"
)
IDENTITY_SHARE = 0.9  # an identity dataset names its assistant and maker in (nearly) every answer


def _normal(text: str) -> str:
    return " ".join(str(text).split()).casefold().rstrip(".!。")


def _names(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None


def exact(replies, prompts, references) -> list[float]:
    """1 when the reply equals the reference, case, spacing and a final full stop ignored (the answer reward's exact
    mode: a reasoning block before the answer is skipped)."""
    return rewards.answer("reference")(replies, prompts, reference=references)


def contains(replies, prompts, references) -> list[float]:
    """1 when the reference appears in the reply (case and spacing ignored)."""
    return [float(_normal(ref) in _normal(reply)) for reply, ref in zip(replies, references, strict=True)]


def identity(name: str, maker: str):
    """1 when the reply names both the assistant (`name`) and its maker, as whole words, any case."""

    def score(replies, prompts, references) -> list[float]:
        return [float(_names(reply, name) and _names(reply, maker)) for reply in replies]

    return score


def detect_identity(references: list[str]) -> tuple[str, str] | None:
    """(name, maker) of an identity dataset: the two capitalised phrases that (nearly) every reference answer holds,
    in the order most answers give them; None when the answers do not look like an identity dataset."""
    if len(references) < 3:
        return None
    counts = {}
    for ref in references:
        for phrase in {_without_openers(m.group(0)) for m in CAPITALISED.finditer(ref)}:
            if len(phrase) > 1:
                counts[phrase] = counts.get(phrase, 0) + 1
    common = [p for p, n in counts.items() if n >= IDENTITY_SHARE * len(references)]
    if len(common) != 2:
        return None
    a, b = common  # the name is the one most answers give first ("I am Nova, built by Tunesmith Labs")
    a_first = sum(0 <= ref.find(a) < ref.find(b) for ref in references)
    b_first = sum(0 <= ref.find(b) < ref.find(a) for ref in references)
    return (a, b) if a_first >= b_first else (b, a)


def _without_openers(phrase: str) -> str:
    """The phrase without the sentence openers it starts with ("I'm Nova" -> "Nova")."""
    words = phrase.split()
    while words and words[0].casefold() in NOT_NAMES:
        words.pop(0)
    return " ".join(words)


def build(
    regex: str = "", reward_presets=(), identity_of: tuple[str, str] | None = None, note=None
) -> list[tuple[str, object]]:
    """[(name, scorer)]: exact and contains always, then the regex, the reward presets (checked as a job's rewards
    are; `python` ones are refused here) and the identity check when given. `note(sentence)` hears of a regex too
    slow on a reply (once per regex), which then scores 0 there."""
    out = [("exact", exact), ("contains", contains)]
    if regex:
        out.append(("regex", _regex(Pattern(regex, "The scoring regex", note))))
    if rewards.runs_code(reward_presets):
        raise UserError("A 'python' reward runs your own code; evaluation takes the built-in presets only.")
    for name, _, fn in rewards.build(reward_presets, note):
        out.append((name, _reward(fn, rewards.needed_columns(reward_presets))))
    if identity_of:
        out.append(("identity", identity(*identity_of)))
    return out


def _regex(pattern):
    def score(replies, prompts, references):
        return [float(pattern.search(reply)) for reply in replies]

    return score


def _reward(fn, columns):
    """A reward preset as a scorer: columns it reads (the answer preset's field) hold the reference answers."""

    def score(replies, prompts, references):
        return [float(v) for v in fn(replies, prompts, **{c: references for c in columns})]

    return score
