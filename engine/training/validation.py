"""Validation during training: the loss on the held-out rows (or the `eval_data` file) every `eval_steps` optimizer
steps, and the best weights by that loss kept in runs/<id>/best/step-NNNNNN/.

The pass runs the model in eval mode without gradients over the validation examples, batched the way training batches
them (padding-free where the model's attention takes cu_seqlens), and averages the loss over every predicted token,
so a short and a long example count by their tokens. The best weights are saved beside the checkpoints, not among
them, so pruning old checkpoints never deletes them: an adapter (or for full fine-tuning the model) with its
tokenizer and best.json ({"step", "eval_loss"}), which export and chat take like any adapter or model folder.
"""

import json
import math
import shutil
from pathlib import Path

from engine.core.files import new_folder, write_json
from engine.data.batching import Collator
from engine.data.heldout import eval_spec
from engine.training.steps import save_trainable

PASSES = 10  # validation passes over a run when eval_steps is 0


def best_checkpoint(run_dir: Path) -> Path | None:
    """The folder of a run's best weights by validation loss (best/step-NNNNNN), or None."""
    found = sorted(p for p in (Path(run_dir) / "best").glob("step-*") if (p / "best.json").is_file())
    return found[-1] if found else None


class Validator:
    """A run's validation set and its best loss so far; `due(step)` says when to run `check`."""

    def __init__(self, spec, examples, total: int, run_dir: Path, pad_id: int, device: str, varlen: bool, log):
        self.spec, self.examples, self.run_dir, self.log = spec, examples, run_dir, log
        self.total = total
        self.every = spec.eval_steps or max(1, total // PASSES)
        self.collate = Collator(examples, spec.batch_size, pad_id, device, varlen, lambda m: None)
        best = best_checkpoint(run_dir)  # a resumed run keeps the best it had
        self.best = json.loads((best / "best.json").read_text())["eval_loss"] if best else math.inf
        log(f"validation: {len(examples)} examples, every {self.every} steps and at the end")

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def loss(self, model, autocast) -> float:
        """The mean loss over every predicted token of the validation examples."""
        import torch

        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                size = self.spec.batch_size
                for start in range(0, len(self.examples), size):
                    # in parts where a micro-batch is over the memory plan (engine.training.sft.kept_to_plan)
                    for part in self.collate.rows(list(range(start, min(start + size, len(self.examples))))):
                        batch = self.collate([self.examples[i] for i in part])
                        n = int((batch["labels"][..., 1:] != -100).sum())  # the model shifts labels by one
                        if not n:
                            continue
                        with autocast:
                            total += float(model(**batch).loss) * n
                        count += n
        finally:
            model.train(was_training)
        return total / max(count, 1)

    def check(self, step: int, model, tok, autocast) -> dict:
        """Run the pass; on a new best, save the weights. Returns the fields for the step's metrics record."""
        loss = self.loss(model, autocast)
        improved = loss < self.best
        if improved:
            self.best = loss
            dest = self.run_dir / "best" / f"step-{step:06d}"
            if not dest.exists():
                with new_folder(dest) as tmp:
                    save_trainable(model, tmp)
                    tok.save_pretrained(tmp)
                    write_json(tmp / "best.json", dict(step=step, eval_loss=round(loss, 6)))
            for old in (self.run_dir / "best").glob("step-*"):
                if old != dest:
                    shutil.rmtree(old, ignore_errors=True)
        self.log(f"validation: step {step} eval loss {loss:.4f}" + (" (best so far, saved)" if improved else ""))
        return dict(eval_loss=round(loss, 6), best=improved)


def load_validation(spec, tok, log, report, stop, note=None):
    """The run's validation examples, tokenized as its training examples, or None when the job holds no validation
    set. engine.training.sft loads them with the training examples, before the weights, so that its memory plan
    holds the validation passes' micro-batches too. `note(text)` hears the sentence on validation examples cut to
    max_seq_length or left out, for the run's status."""
    espec = eval_spec(spec)
    if espec is None:
        return None
    from engine.data.tokenizing import load_examples
    from engine.training.pretrain import load_text_examples

    def told(m):
        log(f"validation {m}")

    if spec.objective == "pretrain":
        return load_text_examples(espec, tok, told, report, stop, "eval")
    return load_examples(espec, tok, told, report, stop, "eval", note=note)


def make_validator(spec, examples, total: int, run_dir: Path, pad_id: int, device: str, varlen: bool, log):
    """The run's Validator over `examples` (load_validation's), or None without any."""
    if examples is None:
        return None
    return Validator(spec, examples, total, run_dir, pad_id, device, varlen, log)
