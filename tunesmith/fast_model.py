"""FastModel: Unsloth's FastModel (Gemma 3 notebooks) for text-only causal LMs, on FastLanguageModel's calls."""

from engine.core.errors import UserError
from engine.spec.jobspec import ALL_LINEAR
from tunesmith.model import FastLanguageModel

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class FastModel(FastLanguageModel):
    """Unsloth's FastModel (Gemma 3 notebooks) for text-only causal LMs: FastLanguageModel's calls, with get_peft_model
    choosing its layers by the finetune_* switches. Vision and audio models are not supported."""

    @staticmethod
    def get_peft_model(
        model,
        r: int = 16,
        target_modules=None,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        finetune_vision_layers: bool = True,
        finetune_language_layers: bool = True,
        finetune_attention_modules: bool = True,
        finetune_mlp_modules: bool = True,
        **kwargs,
    ):
        """FastLanguageModel.get_peft_model, with the layers picked as Unsloth's FastModel picks them.

        Args:
            model, r, lora_alpha, lora_dropout, **kwargs: as for FastLanguageModel.get_peft_model.
            target_modules: None (the default) for every attention and MLP projection the switches below leave on;
                a list of names is kept, less those the switches turn off.
            finetune_vision_layers: a text model has no vision layers: either value changes nothing.
            finetune_language_layers: must be True: a text model's layers are all language layers.
            finetune_attention_modules: adapters on q/k/v/o_proj.
            finetune_mlp_modules: adapters on gate/up/down_proj.
        """
        call = "FastModel.get_peft_model"
        if not finetune_language_layers:
            raise UserError(
                f"{call}: finetune_language_layers=False leaves nothing to train in a text model (it has no vision "
                "layers); keep it True."
            )
        off = (() if finetune_attention_modules else ATTENTION) + (() if finetune_mlp_modules else MLP)
        names = ALL_LINEAR if target_modules in (None, "all-linear") else target_modules
        if not isinstance(names, str):
            names = [n for n in names if n not in off]
        if not names:
            raise UserError(f"{call}: the finetune_* switches leave no layer to train; turn attention or MLP on.")
        return FastLanguageModel.get_peft_model(
            model, r=r, target_modules=names, lora_alpha=lora_alpha, lora_dropout=lora_dropout, **kwargs
        )
