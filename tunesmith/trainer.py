"""UnslothTrainer and UnslothTrainingArguments (Unsloth's continued-pretraining notebooks): TRL's SFTTrainer and
SFTConfig with `embedding_learning_rate`, a step size of its own for embed_tokens and lm_head.

Those notebooks train the embeddings and the output head in full beside the adapters (get_peft_model with
"embed_tokens" and "lm_head" among target_modules) at a rate 2-10x below the adapters': they are trained from their
pretrained values, where the adapters start from zero, and at the adapters' rate they move too far (as the engine's own
continued pretraining does, engine.training.pretrain.param_groups). The optimizer is the Trainer's own (its `optim`,
weight-decay groups and 8-bit handling); the trainable embedding and head weights are then moved into groups of their
own at embedding_learning_rate, before the optimizer's first step (it holds no state yet) and before the scheduler is
made from its groups, which it then scales alike.

`import tunesmith` translates their older spellings as for SFTTrainer / SFTConfig (tunesmith.compat).
"""

import dataclasses

from trl import SFTConfig, SFTTrainer


@dataclasses.dataclass
class UnslothTrainingArguments(SFTConfig):
    """SFTConfig with `embedding_learning_rate`: None trains every weight at learning_rate; a value trains
    embed_tokens and lm_head (when get_peft_model trains them, or in full fine-tuning) at it."""

    embedding_learning_rate: float | None = dataclasses.field(
        default=None,
        metadata={"help": "Learning rate of embed_tokens and lm_head (None: learning_rate); 2-10x below it."},
    )


class UnslothTrainer(SFTTrainer):
    """SFTTrainer whose optimizer gives embed_tokens and lm_head `args.embedding_learning_rate` (when set)."""

    def create_optimizer(self, model=None):
        from engine.training.pretrain import is_embedding

        rate = getattr(self.args, "embedding_learning_rate", None)
        made = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if rate is None or not made:
            return optimizer
        names = {id(p): name for name, p in (model or self.model).named_parameters()}
        moved = 0
        for group in list(optimizer.param_groups):
            embed = [p for p in group["params"] if is_embedding(names.get(id(p), ""))]
            if embed:
                group["params"] = [p for p in group["params"] if not is_embedding(names.get(id(p), ""))]
                settings = {k: v for k, v in group.items() if k != "params"}
                optimizer.add_param_group({**settings, "params": embed, "lr": rate})
                moved += sum(p.numel() for p in embed)
        if moved:
            print(
                f"UnslothTrainer: embed_tokens and lm_head ({moved:,} weights) at embedding_learning_rate={rate:g}, "
                f"the rest at learning_rate={self.args.learning_rate:g}"
            )
        else:
            print(
                f"UnslothTrainer: embedding_learning_rate={rate:g} changes nothing: embed_tokens and lm_head are not "
                'trained (list "embed_tokens", "lm_head" in get_peft_model\'s target_modules to train them)'
            )
        return optimizer


def unsloth_train(trainer, *args, **kwargs):
    """trainer.train(*args, **kwargs): Unsloth's continued-pretraining notebooks call this, which in Unsloth fixed
    gradient accumulation for transformers <= 4.45; the installed transformers accumulates correctly itself."""
    return trainer.train(*args, **kwargs)
