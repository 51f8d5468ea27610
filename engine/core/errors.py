"""Errors a user can cause, carrying one sentence that says what to do."""


class UserError(Exception):
    """A problem with the user's input or machine, worded for the user.

    The message is one sentence (or two) that names the thing at fault and what to do about it. Code that catches a
    UserError shows `str(err)` to the user and writes any traceback to the run log only.
    """


class ModelError(UserError):
    """A UserError about the chosen model (missing, unreachable, outside a shared app's workspace), raised where a
    model is only a helper (the dataset preview), so the caller names the model as the thing at fault."""


class BudgetTooSmall(UserError):
    """A VRAM budget below what any plan of the run needs. `template` is the sentence with '{need}' for the GiB
    needed, `need` the figure in it: the planner's estimate at the refused budget (engine.memory.offload), which
    engine.memory.verdict.plan_for replaces with the smallest budget a plan exists for (another budget's loss chunks
    and offload choices differ from the refused one's)."""

    def __init__(self, template: str, need: float):
        super().__init__(template.format(need=need))
        self.template, self.need = template, need


class Cancelled(Exception):
    """The user cancelled the run; raised where the run polls its stop flag (between steps, between data batches)."""
