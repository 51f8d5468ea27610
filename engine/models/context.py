"""A model's context length: the most tokens one sequence can hold, so neither a training example nor a chat's
prompt and reply run past the positions the model was trained for.
"""

# what config.json calls the context length, by family: most say max_position_embeddings, GPT-2 n_positions (older
# files n_ctx), ChatGLM seq_length, a few max_sequence_length
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")


def context_length(config) -> int | None:
    """The context length of a model's configuration (config.json's dict, or a transformers config); a multimodal
    model's is its text model's. Where config.json leaves it out, the family's own default (its transformers config
    class) stands. None when neither says.
    """
    if not isinstance(config, dict):  # a transformers config: its text part, whose attributes include the defaults
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return _first(lambda key: getattr(text, key, None))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    found = _first(text.get) or _first(config.get)
    if found is not None or not isinstance(config.get("model_type"), str):
        return found
    from transformers import AutoConfig

    try:
        defaults = AutoConfig.for_model(config["model_type"])
    except (KeyError, ValueError):  # a family transformers does not know (remote code): nothing to go by
        return None
    return context_length(defaults)


def _first(get) -> int | None:
    for key in CONTEXT_KEYS:
        value = get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def fit_to_context(spec, config: dict):
    """(spec, note): a spec whose max_seq_length is above the model's context comes back with max_seq_length set to
    the context, and a sentence saying so; otherwise the spec unchanged and None.

    Clamped rather than refused: the default length and the GPU presets' lengths are not chosen per model, so a
    refusal would fail runs whose user never typed a length, and a length above the context only lets examples
    grow past the positions the model knows (learned position tables, as GPT-2's, fail outright).
    """
    context = context_length(config)
    if context is None or spec.max_seq_length <= context:
        return spec, None
    return spec.replace(max_seq_length=context), context_note(spec.max_seq_length, context)


def context_note(asked: int, context: int) -> str:
    """The sentence for a max_seq_length of `asked` cut to the model's `context` (a run's note, the Data tab's)."""
    return (
        f"max_seq_length {asked} is longer than this model's context of {context} tokens, so training uses "
        f"{context}; set max_seq_length to {context} or less to match."
    )
