r"""Regular expressions that users write (a GRPO regex reward, the Evaluate tab's scoring regex), matched with a time
limit.

A pattern with nested repeats backtracks exponentially on a reply it does not match: Python's `re` cannot be
interrupted, so one such reply held a training run, or one of the app's request slots, for ever. Measured on the
2-core development machine, `re.search(r"((.|\s)*)*\d\d\d\d\d", text)` on the first 16, 18 and 20 characters of
tests/test_grpo.py's reply took 0.06, 0.36 and 1.86 s (2.3x a character; `(a+)+$` on 24 and 26 a's then a b: 1.3
and 4.5 s). These patterns go through the `regex` package instead (re's syntax, its matching stopped after
TIMEOUT_S: the 132-character reply gave up at 0.10 s, three times in three); a reply it gives up on counts as no
match, and the first one is told.
"""

import regex

from engine.core.errors import UserError

# A pattern that is not pathological matches a reply of a few thousand characters far sooner; per reply.
TIMEOUT_S = 0.1


class Pattern:
    """A user's pattern, compiled: `search(text)` is whether it matches anywhere in `text`, False when it ran past
    TIMEOUT_S; `slow` counts those, and `note(sentence)` hears of the first one."""

    def __init__(self, pattern: str, what: str, note=None):
        """`what` names the pattern at the start of a sentence ("The scoring regex"); a pattern that does not
        compile raises a UserError that says so."""
        try:
            self.compiled = regex.compile(pattern)
        except (regex.error, TypeError) as e:
            raise UserError(f"{what} '{pattern}' is not a valid regular expression ({e}).") from None
        self.pattern, self.what, self.note, self.slow = pattern, what, note, 0

    def search(self, text: str) -> bool:
        try:
            return self.compiled.search(text, timeout=TIMEOUT_S) is not None
        except TimeoutError:
            self.slow += 1
            if self.slow == 1 and self.note is not None:
                self.note(
                    f"{self.what} '{self.pattern}' is too slow: it ran past {TIMEOUT_S:g} s on a reply of {len(text)} "
                    "characters, so that reply (and any other it is too slow on) scores 0; simplify the pattern "
                    "(a repeat inside a repeat, like (a+)+, can take for ever)."
                )
            return False
