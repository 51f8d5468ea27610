"""Continued pretraining: raw text, loss on every token, optionally the embeddings and lm_head at their own rate.

It runs in engine.training.sft's loop; this module supplies what differs from SFT: the examples (each text plus EOS, cut
into max_seq_length pieces rather than truncated, packed when the job asks), the embedding / lm_head training (PEFT
modules_to_save: full trainable copies beside the frozen originals, saved in the adapter) and the optimizer's
parameter groups (those copies, or in full fine-tuning the weights themselves, at `embedding_learning_rate`).
"""

from pathlib import Path

from engine.core.errors import UserError
from engine.data.formats import check_format, raw_text
from engine.data.tokenizing import Example, Examples, batched_rows, encode_batch, no_rows, pack
from engine.spec.objectives import format_problem

EMBEDDING_NAMES = ("embed_tokens", "lm_head")


def load_text_examples(spec, tokenizer, log=print, report=None, should_stop=None, part: str = "train") -> Examples:
    """Every text of the dataset as training sequences with labels on every token, read and tokenized as a stream
    in batches (engine.data.tokenizing.batched_rows: progress through `report`, cancel through `should_stop`, the
    training or held-out rows by `part`)."""
    source = Path(spec.data).name
    fmt = None if spec.data_format == "auto" else spec.data_format
    pieces, rows, eos = Examples(), 0, tokenizer.eos_token_id
    for batch in batched_rows(spec, "tokenizing", report, should_stop, part):
        texts = []
        for i, row in batch:
            if spec.data_format == "auto":
                fmt = check_format(row, i, source, fmt)
            if problem := format_problem(spec.objective, fmt):
                raise UserError(problem)
            texts.append(raw_text(row, i, source))
        for ids, _ in encode_batch(tokenizer, texts, add_special_tokens=True):
            if eos is not None and ids[-1:] != [eos]:
                ids = ids + [eos]  # the model learns where a document ends
            for start in range(0, len(ids), spec.max_seq_length):
                piece = ids[start : start + spec.max_seq_length]
                if len(piece) > 1:  # a single token has nothing to predict
                    pieces.append(Example(piece, piece, False, (len(piece),)))
        rows += len(batch)
    if not rows:
        raise no_rows(spec, part)
    log(f"data: {source} is {fmt}, {rows} rows")
    log(f"data: {pieces.tokens():,} tokens in {len(pieces)} pieces of up to {spec.max_seq_length} tokens")
    if spec.packing:
        pieces = pack(pieces, spec.max_seq_length)
        log(f"data: packed into {len(pieces)} sequences")
    return pieces


def add_embedding_training(model, log=print):
    """Make embed_tokens and lm_head of a LoRA model trainable as PEFT modules_to_save. With tied weights only the
    embedding gets a copy and lm_head is tied to it, as PEFT's ensure_weight_tying does (and does again on loading).
    PEFT makes the copies in the model's dtype: an fp16 model's become fp32 master weights (engine.training.precision),
    for the app's runs and the notebook API's alike."""
    from peft.utils.other import set_additional_trainable_modules

    from engine.training.precision import master_weights

    config = model.peft_config["default"]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    config.modules_to_save = ["embed_tokens"] if tied else list(EMBEDDING_NAMES)
    if tied:
        # modules_to_tie ties the head for this run; PEFT does not save it, so ensure_weight_tying is what the saved
        # adapter_config carries: loading the adapter, PEFT ties the head to the trained embedding again
        config.modules_to_tie, config.ensure_weight_tying = {"lm_head"}, True
    set_additional_trainable_modules(model, config, model.config, "default")
    n = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and is_embedding(name))
    log(f"pretrain: training {', '.join(config.modules_to_save)}{' (tied lm_head)' if tied else ''}: {n:,} parameters")
    master_weights(model, log)
    return model


def is_embedding(name: str) -> bool:
    return any(f"{part}." in name for part in EMBEDDING_NAMES)


def param_groups(model, spec) -> list[dict]:
    """The trainable parameters as optimizer groups: the embeddings and lm_head at `embedding_learning_rate`, the rest
    at `learning_rate` (the scheduler scales both alike)."""
    rest, embed = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (embed if is_embedding(name) else rest).append(p)
    groups = [dict(params=rest, lr=spec.learning_rate)]
    if embed:
        groups.append(dict(params=embed, lr=spec.embedding_learning_rate))
    return groups
