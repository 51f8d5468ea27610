"""model.generate after FastLanguageModel.for_inference: one sequence on the engine's decoder, the rest on transformers.

A request the decoder serves is one prompt (batch 1, no padding) with greedy or sampled decoding and only
the options below; it runs on engine.chat.decode.Decoder (static KV cache, CUDA graphs on a GPU, adapters unmerged) and
returns what transformers' generate returns: the prompt, the new tokens and the end-of-sequence token that stopped
it. Anything else (batches, beam search, logits processors, stop strings, return_dict_in_generate, ...) is passed
unchanged to the model's own generate, so no option is dropped.
"""

from collections.abc import Mapping

import torch

# What the decoder does itself. use_cache is always on there (the output is the same either way).
FAST_OPTIONS = {
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "streamer",
}
# transformers' values for generation options that neither the call nor the model's generation_config sets
# (GenerationConfig._get_default_generation_params).
DEFAULTS = dict(max_length=20, do_sample=False, temperature=1.0, top_k=50, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


class FastGenerate:
    """Callable that stands in for `model.generate` (set on the instance by for_inference)."""

    def __init__(self, model):
        self.model = model
        self.transformers_generate = type(model).generate.__get__(model)
        self.decoder = None

    def release(self) -> None:
        """Drop the decoder (its cache and CUDA graphs); it swaps no module of the model, so nothing is put back."""
        self.decoder = None

    def __call__(self, *args, **kwargs):
        args, kwargs = _unpacked(args, kwargs)
        ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        mask = kwargs.get("attention_mask")
        rest = set(kwargs) - {"input_ids", "inputs", "attention_mask"}
        one_prompt = isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[0] == 1 and len(args) <= 1
        if not one_prompt or rest - FAST_OPTIONS or (mask is not None and not bool(mask.all())):
            return self.transformers_generate(*args, **kwargs)
        return self._decode(ids, kwargs)

    def _setting(self, kwargs, name):
        """The call's value, else the model's generation_config, else transformers' default."""
        value = kwargs.get(name)
        if value is None:
            value = getattr(self.model.generation_config, name, None)
        return DEFAULTS.get(name) if value is None else value

    def _decode(self, ids: torch.Tensor, kwargs) -> torch.Tensor:
        from engine.chat.decode import Decoder, Sampling

        if self.decoder is None:
            self.decoder = Decoder(self.model)
        new_max = self._setting(kwargs, "max_new_tokens")
        if new_max is None:
            new_max = self._setting(kwargs, "max_length") - ids.shape[1]
        sample = self._setting(kwargs, "do_sample")
        sampling = Sampling(
            temperature=self._setting(kwargs, "temperature") if sample else 0.0,  # 0: greedy, the filters unused
            top_p=self._setting(kwargs, "top_p"),
            top_k=self._setting(kwargs, "top_k"),
            min_p=self._setting(kwargs, "min_p"),
            repetition_penalty=self._setting(kwargs, "repetition_penalty"),
        )
        eos = self._setting(kwargs, "eos_token_id")
        stop = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        streamer = kwargs.get("streamer")
        if streamer is not None:
            streamer.put(ids.cpu())
        new = []
        for token in self.decoder.tokens(ids[0], new_max, sampling):
            new.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if token in stop:
                break
        if streamer is not None:
            streamer.end()
        return torch.cat([ids, torch.tensor([new], dtype=ids.dtype, device=ids.device)], dim=1)


def _unpacked(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with a prompt given as a BatchEncoding spread into its tensors (input_ids, attention_mask, ...).

    In transformers 5 `tokenizer.apply_chat_template(messages, return_tensors="pt")` returns a BatchEncoding where
    it returned the input_ids tensor before, and notebooks pass that result on as `model.generate(input_ids)` or
    `model.generate(input_ids=inputs)`; generate itself fails on it. Options given beside it are kept over its keys.
    """
    if args and isinstance(args[0], Mapping):
        return args[1:], {**args[0], **kwargs}
    for name in ("input_ids", "inputs"):
        if isinstance(kwargs.get(name), Mapping):
            rest = {k: v for k, v in kwargs.items() if k != name}
            return args, {**kwargs[name], **rest}
    return args, kwargs
