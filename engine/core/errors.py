"""Errors a user can cause, carrying one sentence that says what to do."""


class UserError(Exception):
    """A problem with the user's input or machine, worded for the user.

    The message is one sentence (or two) that names the thing at fault and what to do about it. Code that catches a
    UserError shows `str(err)` to the user and writes any traceback to the run log only.
    """


class ModelError(UserError):
    """A UserError about the chosen model (missing, unreachable, outside a shared app's workspace), raised where a
    model is only a helper (the dataset preview), so the caller names the model as the thing at fault."""


class Cancelled(Exception):
    """The user cancelled the run; raised where the run polls its stop flag (between steps, between data batches)."""
