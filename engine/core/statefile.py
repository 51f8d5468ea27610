"""Training state (optimizer, schedule, random generators) saved as safetensors + JSON, never as a pickle.

A checkpoint folder may come from someone else (a shared run folder), and unpickling a file runs whatever code it
names. So `save_state(obj, folder, name)` splits a state dict into its tensors, written to `<name>.safetensors`, and
the rest of its structure, written to `<name>.json` with each tensor replaced by its key. Neither format can hold
code. JSON's own types lose two distinctions a state dict relies on, so they are tagged: dict keys that are not
strings (an optimizer's parameter indices) and tuples (Adam's betas, Python's random state).

Checkpoints written before this format (optimizer.pt, scheduler.pt, rng.pt) are read with torch's restricted
unpickler (`weights_only=True`: tensors, numbers, strings and containers only); one that holds anything else is
refused with a sentence, never unpickled.
"""

import json
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import write_text


def _encode(obj, tensors: dict, seen: set):
    import torch

    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        t = obj.detach().cpu()
        if t.data_ptr() in seen:  # safetensors refuses two entries sharing memory
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[key] = t.contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, seen) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, seen), _encode(v, tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, seen) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__} in a checkpoint's state")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


# the training state a full fine-tuning checkpoint keeps beside its model's weights (engine.training.steps saves it)
STATE_NAMES = ("optimizer", "scheduler", "rng")


def weight_files(folder: Path) -> list[Path]:
    """The .safetensors files of a model folder, sorted, without a checkpoint's training state (a full fine-tuning
    checkpoint is a model folder that also holds optimizer.safetensors and the like)."""
    return [f for f in sorted(Path(folder).glob("*.safetensors")) if f.stem not in STATE_NAMES]


def save_state(obj, folder: Path, name: str) -> None:
    """Write `obj` (nested dicts, lists, tuples, tensors, numbers, strings) as folder/name.safetensors and .json."""
    from safetensors.torch import save_file

    tensors: dict = {}
    structure = _encode(obj, tensors, set())
    save_file(tensors, str(folder / f"{name}.safetensors"))
    write_text(folder / f"{name}.json", json.dumps(structure) + "\n")


def load_state(folder: Path, name: str):
    """The object save_state wrote; for a checkpoint of the older format, folder/name.pt read by torch's restricted
    unpickler. Raises a UserError when the state is missing or is a pickle that holds more than plain data."""
    from safetensors.torch import load_file

    if (folder / f"{name}.json").is_file():
        return _decode(json.loads((folder / f"{name}.json").read_text()), load_file(folder / f"{name}.safetensors"))
    legacy = folder / f"{name}.pt"
    if not legacy.is_file():
        raise UserError(
            f"The checkpoint {folder.name} has no {name} state; it is incomplete, so delete that folder to resume "
            "from the one before it."
        )
    import pickle

    import torch

    try:
        return torch.load(legacy, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as e:
        raise UserError(
            f"The checkpoint {folder.name} holds a {legacy.name} that is not plain data (it could run code when "
            f"read), so it was not loaded ({str(e).splitlines()[0][:120]}); delete the checkpoint folder and start "
            "the run again, or resume only run folders you made yourself."
        ) from None
