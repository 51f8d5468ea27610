"""Refusing options: an argument the engine cannot honour raises a UserError that names what to do instead.

Ported notebooks pass arguments that Tunesmith does not implement (8-bit weights, vLLM, LoftQ) or that exist in no
library at all. Each public call takes them as keyword arguments and hands them to `check`, which lets through only
the value that means "what Tunesmith does anyway" (load_in_8bit=False, token=None) and refuses anything else.
"""

import inspect

from engine.core.errors import UserError

# arguments whose value is a credential: a refusal names the argument only, since a notebook's output (where the
# sentence is shown) is often shared
SECRET = {"token", "hub_token", "push_to_hub_token"}


def check(call: str, given: dict, table: dict, function) -> None:
    """Raise for the first argument in `given` that `table` does not accept.

    Args:
        call: the call's name as users write it, for the message ("FastLanguageModel.from_pretrained").
        given: the extra keyword arguments the call received.
        table: {argument: (accepted values, what to do instead)}; an argument set to an accepted value is a no-op.
        function: the call itself; its named parameters are listed when an argument is not known at all.
    """
    for name, value in given.items():
        if name not in table:
            params = inspect.signature(function).parameters.values()
            named = [p.name for p in params if p.kind is not p.VAR_KEYWORD]
            raise UserError(f"{call}: Tunesmith has no '{name}' argument; it takes {', '.join(named)}.")
        accepted, instead = table[name]
        if not any(value is a or (type(value) is type(a) and value == a) for a in accepted):
            shown = "..." if name in SECRET else repr(value)
            raise UserError(f"{call}: {name}={shown} is not supported; {instead}.")
