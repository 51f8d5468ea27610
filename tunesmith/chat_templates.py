"""Chat-template helpers of Unsloth notebooks: named templates, ShareGPT standardisation, loss on replies only.

Templates are the engine's (engine.data.templates), so training, chat and the GGUF/Ollama exports render a conversation
the same way. Rows are converted by engine.data.formats, which names the row and field of any problem.
"""

from engine.core.errors import UserError
from tunesmith import options

# Unsloth's template names -> the engine's. Differences: Qwen's templates here add no default system prompt and no
# <think> block (chat_template="auto" keeps the tokenizer's own); Gemma's covers Gemma 1-3 (the same turn markers).
TEMPLATE_ALIASES = {
    "chatml": "chatml",
    "qwen-2.5": "qwen",
    "qwen-25": "qwen",
    "qwen25": "qwen",
    "qwen2.5": "qwen",
    "qwen-3": "qwen",
    "qwen3": "qwen",
    "qwen3-instruct": "qwen",
    "llama-3": "llama-3",
    "llama3": "llama-3",
    "llama-3.1": "llama-3",
    "llama-31": "llama-3",
    "llama-3.2": "llama-3",
    "llama-3.3": "llama-3",
    "mistral": "mistral",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma-2": "gemma",
    "gemma3": "gemma",
    "gemma-3": "gemma",
    "alpaca": "alpaca",
    "plain": "plain",
    "qwen": "qwen",
    "auto": "auto",
}
STANDARD_MAPPING = {"role": "role", "content": "content", "user": "user", "assistant": "assistant"}
# Unsloth's other arguments: (values that change nothing, what to do instead of any other value)
TEMPLATE_OPTIONS = {
    "system_message": (
        (None,),
        "Tunesmith's templates write no default system prompt to replace: put "
        '{"role": "system", "content": ...} first in each conversation',
    ),
}
ALIAS_HELP = (
    "rename the roles of your rows to human/user, gpt/assistant or system first (e.g. with dataset.map); those are "
    "the ones it reads"
)
SHAREGPT_OPTIONS = {
    "aliases_for_system": ((), ALIAS_HELP),
    "aliases_for_user": ((), ALIAS_HELP),
    "aliases_for_assistant": ((), ALIAS_HELP),
}
RESPONSES_OPTIONS = {
    "force_match": ((), "the markers are matched exactly as the tokenizer writes them: drop force_match"),
    "tokenizer": ((None,), "the trainer's processing_class is used: drop tokenizer"),
    "return_function": ((False,), "the trainer itself is changed and returned: drop return_function"),
    "num_proc": ((None,), "the masking runs in this process: drop num_proc"),
}


def get_chat_template(
    tokenizer, chat_template: str = "chatml", mapping: dict | None = None, map_eos_token=True, **kwargs
):
    """Set a named chat template on the tokenizer and return it.

    Args:
        tokenizer: the tokenizer from FastLanguageModel.from_pretrained.
        chat_template: an Unsloth name (qwen-2.5, qwen3, chatml, llama-3, llama-3.1, mistral, gemma, gemma-3, alpaca,
            ... see TEMPLATE_ALIASES), or "auto" for the tokenizer's own. Unknown names raise a UserError listing
            the supported ones.
        mapping: the message keys and role names of the rows, as Unsloth takes them: {"role": "from", "content":
            "value", "user": "human", "assistant": "gpt"} for ShareGPT rows. The template then reads those keys and
            names, and role/content messages too (what the app's chat and the exports send it).
        map_eos_token: True (the default) only: generation always stops at the template's end-of-turn marker.
        **kwargs: system_message=None is accepted; a system message goes first in each conversation instead (the
            templates write no default one to replace). Other arguments are refused with a sentence.
    """
    from engine.data.tokenizing import ensure_chat_template

    options.check("get_chat_template", kwargs, TEMPLATE_OPTIONS, get_chat_template)

    name = TEMPLATE_ALIASES.get(str(chat_template).lower())
    if name is None:
        raise UserError(f"Unknown chat template '{chat_template}'; Tunesmith supports {', '.join(TEMPLATE_ALIASES)}.")
    mapped = mapping not in (None, STANDARD_MAPPING)
    if mapped and (
        not isinstance(mapping, dict)
        or set(mapping) != set(STANDARD_MAPPING)
        or not all(isinstance(v, str) and v for v in mapping.values())
    ):
        raise UserError(
            'get_chat_template: mapping should name the keys and roles of your rows, e.g. {"role": "from", '
            '"content": "value", "user": "human", "assistant": "gpt"}; or convert the rows with '
            "standardize_sharegpt(dataset) and leave mapping out."
        )
    if map_eos_token is not True:
        raise UserError("get_chat_template: map_eos_token=False is not supported; replies end at the end-of-turn.")
    ensure_chat_template(tokenizer, name)
    prelude = _mapping_prelude(mapping) if mapped else ""
    if not tokenizer.chat_template.startswith(prelude):  # "auto" keeps the template a first call mapped already
        tokenizer.chat_template = prelude + tokenizer.chat_template
    return tokenizer


def _mapping_prelude(mapping: dict) -> str:
    """Jinja that rewrites `messages` to role/content with the standard role names, reading a message by the
    mapping's keys where it has them (role/content otherwise), before the template proper. It writes no text."""
    import json

    q = {k: json.dumps(v) for k, v in mapping.items()}  # JSON strings are Jinja string literals
    return (
        "{% set mapped = namespace(messages=[]) %}{% for m in messages %}"
        f"{{% set role = m[{q['role']}] if {q['role']} in m else m['role'] %}}"
        f"{{% set content = m[{q['content']}] if {q['content']} in m else m['content'] %}}"
        f"{{% set role = 'user' if role == {q['user']} else ('assistant' if role == {q['assistant']} else role) %}}"
        "{% set mapped.messages = mapped.messages + [{'role': role, 'content': content}] %}{% endfor %}"
        "{% set messages = mapped.messages %}"
    )


def standardize_sharegpt(dataset, **kwargs):
    """ShareGPT rows ({"conversations": [{"from": "human"|"gpt"|"system", "value"}]}) as role/content messages in
    the same column, so tokenizer.apply_chat_template can render them. Rows already in role/content are checked and
    kept. Returns a new datasets.Dataset. Unsloth's aliases_for_* arguments are refused with what to do instead."""
    from engine.data.formats import to_messages

    options.check("standardize_sharegpt", kwargs, SHAREGPT_OPTIONS, standardize_sharegpt)

    if "conversations" not in dataset.column_names:
        raise UserError(
            f"standardize_sharegpt: the dataset has no 'conversations' column (it has {dataset.column_names})."
        )

    def convert(row, index):
        turns = row["conversations"]
        sharegpt = bool(turns) and isinstance(turns[0], dict) and "from" in turns[0]
        fmt, key = ("sharegpt", "conversations") if sharegpt else ("chatml", "messages")
        return {"conversations": to_messages({key: turns}, fmt, index + 1)}

    return dataset.map(convert, with_indices=True)


def standardize_data_formats(dataset, **kwargs):
    """Unsloth's newer name for standardize_sharegpt (Gemma 3 notebooks): the same conversion of the
    "conversations" column to role/content messages."""
    return standardize_sharegpt(dataset, **kwargs)


def response_mask(ids: list[int], instruction: list[int], response: list[int], starts=()) -> list[bool]:
    """Which tokens of `ids` belong to a reply: those after each `response` marker, up to the next `instruction`
    marker (the markers themselves excluded). `starts` are positions where a new packed sequence begins."""
    keep, inside, i = [False] * len(ids), False, 0
    starts = set(starts)
    while i < len(ids):
        if i in starts:
            inside = False
        if ids[i : i + len(response)] == response:
            inside, i = True, i + len(response)
        elif ids[i : i + len(instruction)] == instruction:
            inside, i = False, i + len(instruction)
        else:
            keep[i], i = inside, i + 1
    return keep


class ResponsesOnly:
    """A trainer's data collator, with the labels of every token outside the replies set to -100 (no loss)."""

    def __init__(self, collator, instruction: list[int], response: list[int]):
        self.collator = collator
        self.instruction = instruction
        self.response = response

    def __call__(self, features):
        import torch

        batch = self.collator(features)
        positions = batch.get("position_ids")
        keep = torch.tensor(
            [
                response_mask(
                    row.tolist(),
                    self.instruction,
                    self.response,
                    [] if positions is None else (positions[r] == 0).nonzero().flatten().tolist(),
                )
                for r, row in enumerate(batch["input_ids"])
            ],
            dtype=torch.bool,
            device=batch["labels"].device,
        )
        batch["labels"] = batch["labels"].masked_fill(~keep, -100)
        return batch


def train_on_responses_only(trainer, instruction_part: str, response_part: str, **kwargs):
    """Make a TRL trainer learn only the assistant replies; returns the trainer.

    Args:
        trainer: an SFTTrainer (or any transformers Trainer whose batches carry input_ids and labels).
        instruction_part: the text that starts a user turn, exactly as the chat template writes it
            ("<|im_start|>user\\n" for chatml/Qwen, "<|start_header_id|>user<|end_header_id|>\\n\\n" for Llama 3).
        response_part: the text that starts an assistant turn ("<|im_start|>assistant\\n" for chatml/Qwen).
        **kwargs: Unsloth's tokenizer=None, return_function=False and num_proc=None change nothing; other values,
            and force_match, are refused with what to do instead.

    Each batch's labels keep the tokens after a response_part up to the next instruction_part (so the end-of-turn
    token is learned); everything else gets -100. The trainer's data collator is wrapped, and where its datasets carry
    a labels column (TRL 1.x's SFTTrainer builds one) that column is masked the same way, so the notebooks' check,
    `tokenizer.decode([... trainer.train_dataset[i]["labels"]])`, shows what is trained.
    """
    options.check("train_on_responses_only", kwargs, RESPONSES_OPTIONS, train_on_responses_only)
    tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    instruction = tok(instruction_part, add_special_tokens=False)["input_ids"]
    response = tok(response_part, add_special_tokens=False)["input_ids"]
    if not instruction or not response:
        raise UserError("train_on_responses_only: instruction_part and response_part must be non-empty text.")
    first = next(iter(trainer.train_dataset))
    if "input_ids" in first and not any(response_mask(first["input_ids"], instruction, response)):
        raise UserError(
            f"train_on_responses_only: the first training example has no reply after {response_part!r}; give the "
            "markers exactly as the chat template writes them (tokenizer.apply_chat_template shows it)."
        )
    trainer.train_dataset = _mask_labels(trainer.train_dataset, instruction, response)
    evals = trainer.eval_dataset
    if isinstance(evals, dict):
        trainer.eval_dataset = {k: _mask_labels(v, instruction, response) for k, v in evals.items()}
    elif evals is not None:
        trainer.eval_dataset = _mask_labels(evals, instruction, response)
    trainer.data_collator = ResponsesOnly(trainer.data_collator, instruction, response)
    return trainer


def _mask_labels(dataset, instruction: list[int], response: list[int]):
    """`dataset` with the labels column of its tokenized rows set to -100 outside the replies (packed rows by their
    seq_lengths); a dataset without input_ids and labels columns is returned as it is."""
    from itertools import accumulate

    from datasets import Dataset

    if not isinstance(dataset, Dataset) or not {"input_ids", "labels"} <= set(dataset.column_names):
        return dataset

    def mask(row):
        starts = list(accumulate(row["seq_lengths"])) if "seq_lengths" in row else []
        keep = response_mask(row["input_ids"], instruction, response, starts)
        return {"labels": [label if k else -100 for label, k in zip(row["labels"], keep, strict=True)]}

    return dataset.map(mask, desc="Masking labels outside the replies")
