"""Settings checked as the user entered them, before anything loads: each named by the label the user sees, with
the range it must be in, and warnings for values that are allowed but almost always a mistake.

JobSpec checks every value again (with the setting's key, for job files); this is the sentence an app shows.
"""

from engine.core.errors import UserError
from engine.spec.jobspec import INT_MAX, LIMITS, Limit

# Above these peak learning rates a run nearly always diverges or wrecks what the model knew; the usual values
# are 1e-4 to 5e-4 for LoRA / QLoRA and 1e-5 to 5e-5 for full fine-tuning.
SANE_LR = {"lora": 1e-2, "qlora": 1e-2, "full": 1e-3}


def check_settings(values: dict, labels: dict, method: str = "lora") -> list[str]:
    """Raise a UserError naming the first setting of `values` (JobSpec keys) that is empty or out of its range, by
    its label in `labels`; return warnings (sentences) for allowed values far outside the usual range."""
    for key, value in values.items():
        label = labels.get(key, key)
        if value is None or value == "":
            raise UserError(f"{label} is empty; enter a number.")
        limit = LIMITS.get(key)
        if limit is not None and not _within(limit, key, value):
            raise UserError(f"{label} must be {_describe(limit)}; you entered {_typed(value)}.")
    if values.get("max_steps") == 0 and values.get("epochs") == 0:
        steps, epochs = labels.get("max_steps", "max_steps"), labels.get("epochs", "epochs")
        raise UserError(f"{steps} and {epochs} are both 0: set one of them above 0.")
    warnings = []
    lr, high = values.get("learning_rate"), SANE_LR.get(method, SANE_LR["lora"])
    if lr is not None and lr > high:
        warnings.append(
            f"{labels.get('learning_rate', 'learning_rate')} {lr:g} is far above the usual range for {method} "
            f"(at most {high:g}); training is likely to diverge and ruin the model."
        )
    return warnings


def _within(limit: Limit, key: str, value) -> bool:
    try:
        limit.check(key, value)
    except UserError:
        return False
    return True


def _typed(value) -> str:
    """`value` as the user typed it: whole numbers in full (`:g` showed 2000000 as 2e+06), others as `:g`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _describe(limit: Limit) -> str:
    if limit.high == INT_MAX:
        return f"a whole number, {limit.low:g} or more"
    return limit.describe()
