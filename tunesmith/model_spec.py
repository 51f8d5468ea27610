"""What Tunesmith records on a model it loaded: the JobSpec of its settings, and whether it carries LoRA adapters.

Below both tunesmith.model (which records it) and tunesmith.save (which reads it), so neither imports the other.
"""

from engine.core.errors import UserError
from engine.spec.jobspec import JobSpec


def spec_of(model) -> JobSpec:
    """The JobSpec that from_pretrained / get_peft_model recorded on `model`."""
    spec = getattr(model, "tunesmith_spec", None)
    if spec is None:
        raise UserError("This model was not loaded by Tunesmith; load it with FastLanguageModel.from_pretrained.")
    return spec


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")
