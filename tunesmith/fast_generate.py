"""model.fast_generate, model.save_lora and model.load_lora: the vLLM calls of Unsloth's GRPO notebooks, without vLLM.

Those notebooks load with `fast_inference=True` (a vLLM engine beside the model, in Unsloth) and then write:

    from vllm import SamplingParams                  # here: from tunesmith import SamplingParams
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=1024)
    text = model.fast_generate([prompt], sampling_params=params, lora_request=None)[0].outputs[0].text
    model.save_lora("grpo_saved_lora")
    text = model.fast_generate(prompt, sampling_params=params,
                               lora_request=model.load_lora("grpo_saved_lora"))[0].outputs[0].text

Tunesmith has no vLLM: the same calls run on the engine's decoder (engine.chat.decode.Decoder: one sequence at a time
over a static KV cache, adapters unmerged, CUDA graphs on a GPU) and return what vLLM returns, as far as notebooks read
it: one RequestOutput per prompt, in order, whose `.outputs` holds `n` CompletionOutput with `.text`, `.token_ids`
and `.finish_reason`. As in vLLM, where the model's weights are the base's and adapters come only with a request,
lora_request=None generates with the base model (the adapters switched off for the call) and a request from load_lora
with that saved adapter: the model's own adapters when they hold the saved weights (a save_lora of this model), else
the saved weights swapped in for the call and put back after it. Given tensors rather than text, fast_generate is
model.generate (as in Unsloth without vLLM).
"""

import contextlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.errors import UserError
from tunesmith.model_spec import is_peft

_REQUEST_IDS = itertools.count(1)


class SamplingParams:
    """vLLM's SamplingParams, for the options Tunesmith's decoder has (vLLM's defaults: temperature 1, 16 tokens).

    Args:
        n: completions per prompt.
        temperature: 0 is greedy.
        top_p, top_k (0 or -1: off), min_p, repetition_penalty: as in vLLM (and transformers).
        max_tokens: most new tokens per completion.
        seed: a seed for this request's sampling (completion i of n uses seed + i); None draws from torch's generator.
        stop: strings that end a completion (not included in its text unless include_stop_str_in_output).
        stop_token_ids: tokens that end a completion beside the EOS tokens.
        ignore_eos: keep generating past the EOS tokens (up to max_tokens).
        skip_special_tokens: leave special tokens out of the text.
    """

    def __init__(self, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, max_tokens: int | None = 16, seed: int | None = None,
                 stop=None, stop_token_ids=None, include_stop_str_in_output: bool = False, ignore_eos: bool = False,
                 skip_special_tokens: bool = True, **kwargs):  # fmt: skip
        if kwargs:
            raise UserError(
                f"SamplingParams: Tunesmith's decoder has no '{next(iter(kwargs))}'; it takes n, temperature, top_p, "
                "top_k, min_p, repetition_penalty, max_tokens, seed, stop, stop_token_ids, "
                "include_stop_str_in_output, ignore_eos and skip_special_tokens."
            )
        self.n, self.temperature, self.top_p, self.top_k, self.min_p = n, temperature, top_p, top_k, min_p
        self.repetition_penalty, self.max_tokens, self.seed = repetition_penalty, max_tokens, seed
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.stop_token_ids = list(stop_token_ids or [])
        self.include_stop_str_in_output, self.ignore_eos = include_stop_str_in_output, ignore_eos
        self.skip_special_tokens = skip_special_tokens

    def __repr__(self) -> str:
        return f"SamplingParams({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


@dataclass(frozen=True)
class LoRARequest:
    """What model.load_lora returns, as vLLM's LoRARequest (name, id, path): passed to fast_generate's lora_request."""

    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class CompletionOutput:
    """One completion, as vLLM's: its text, new token ids (the stop token left out) and "stop" or "length"."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class RequestOutput:
    """The completions of one prompt, as vLLM's."""

    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def save_lora(model, save_directory) -> None:
    """Save the LoRA adapter into a new folder (as save_pretrained_merged(save_method="lora") does), for load_lora."""
    from tunesmith.save import save_pretrained_merged

    save_pretrained_merged(model, save_directory, save_method="lora")


def load_lora(model, save_directory, load_tensors: bool = False) -> LoRARequest:
    """A request for fast_generate's lora_request: generate with the adapter saved in `save_directory`.

    The folder is checked here; its weights are read when fast_generate uses it. `load_tensors` (vLLM's way of passing
    the weights in memory) changes nothing: the weights are read from the folder either way."""
    folder = Path(save_directory).expanduser()
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise UserError(
            f"'{folder}' holds no saved adapter (adapter_config.json and adapter_model.safetensors); save one with "
            "model.save_lora(path) first."
        )
    number = next(_REQUEST_IDS)
    return LoRARequest(str(number), number, str(folder))


def fast_generate(model, prompts=None, sampling_params=None, lora_request=None, use_tqdm: bool = False, **kwargs):
    """Generate completions for one prompt or a list of them, as vLLM's LLM.generate does (see the module's note).

    Args:
        model: a model from FastLanguageModel (bound already when called as model.fast_generate).
        prompts: a string, or a list of strings (each rendered already, e.g. by apply_chat_template(tokenize=False)).
            Token ids (a tensor or what the tokenizer returns) are handed to model.generate with **kwargs instead.
        sampling_params: a SamplingParams (tunesmith's or vLLM's), or one a prompt; None: SamplingParams().
        lora_request: None generates with the base model (no adapters), as vLLM does; model.load_lora(path) with
            the adapter saved there.
        use_tqdm: accepted; there is no progress bar.

    Returns:
        A list of RequestOutput, one a prompt, in order: `out[0].outputs[0].text` is the first prompt's completion.
    """
    if isinstance(prompts, Mapping) or hasattr(prompts, "shape") or (prompts is None and kwargs):
        if sampling_params is not None or lora_request is not None:
            raise UserError(
                "fast_generate: sampling_params and lora_request go with text prompts; with token ids it is "
                "model.generate, which takes generate's options (max_new_tokens=, temperature=, ...)."
            )
        return model.generate(**kwargs) if prompts is None else model.generate(prompts, **kwargs)
    if kwargs:
        raise UserError(
            f"fast_generate: Tunesmith has no '{next(iter(kwargs))}' argument for text prompts; it takes prompts, "
            "sampling_params, lora_request and use_tqdm."
        )
    texts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise UserError(
            "fast_generate: give the prompt as a string or a list of strings (render chat messages with "
            "tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))."
        )
    params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(texts)
    if len(params) != len(texts):
        raise UserError(f"fast_generate: {len(params)} sampling_params for {len(texts)} prompts; give one a prompt.")
    if lora_request is not None and not is_peft(model):
        raise UserError(
            "fast_generate: this model has no LoRA adapters for lora_request; add them with "
            "FastLanguageModel.get_peft_model, or load the saved adapter with FastLanguageModel.from_pretrained(path)."
        )
    return _generate(model, texts, [p if p is not None else SamplingParams() for p in params], lora_request)


def _generate(model, texts: list[str], params: list, lora_request) -> list[RequestOutput]:
    import torch

    from engine.chat.decode import Decoder

    tok = getattr(model, "tunesmith_tokenizer", None)
    if tok is None:
        raise UserError("fast_generate needs a model loaded by FastLanguageModel.from_pretrained.")
    training = model.training
    model.eval()
    try:
        with _adapter(model, lora_request) as adapter, torch.no_grad():
            decoder = Decoder(model)  # its own, dropped after the call: the weights may be swapped for this one
            return [_request(decoder, tok, model, text, p, adapter) for text, p in zip(texts, params, strict=True)]
    finally:
        model.train(training)


def _request(decoder, tok, model, text: str, params, adapter: bool) -> RequestOutput:
    from engine.chat.decode import Sampling

    bos = getattr(tok, "bos_token", None)
    # a rendered chat template may start with BOS already; the tokenizer would add a second one
    ids = tok(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
    stop_ids = set(_read(params, "stop_token_ids", None) or [])
    if not _read(params, "ignore_eos", False):
        for eos in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            stop_ids |= set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    top_k = _read(params, "top_k", 0) or 0
    seed = _read(params, "seed", None)
    max_tokens = _read(params, "max_tokens", 16)
    max_tokens = model.max_seq_length - len(ids) if max_tokens is None else max_tokens
    out = RequestOutput(text, ids)
    for i in range(_read(params, "n", 1)):
        sampling = Sampling(
            temperature=_read(params, "temperature", 1.0),
            top_p=_read(params, "top_p", 1.0),
            top_k=max(top_k, 0),  # vLLM's -1 and 0 both mean off
            min_p=_read(params, "min_p", 0.0),
            repetition_penalty=_read(params, "repetition_penalty", 1.0),
            seed=None if seed is None else seed + i,
        )
        out.outputs.append(_completion(decoder, tok, ids, max_tokens, sampling, stop_ids, params, adapter, i))
    return out


def _completion(decoder, tok, ids, max_tokens, sampling, stop_ids, params, adapter, index) -> CompletionOutput:
    stops = _read(params, "stop", None) or []
    stops = [stops] if isinstance(stops, str) else list(stops)
    skip = _read(params, "skip_special_tokens", True)
    new, reason, text = [], "length", None
    for token in decoder.tokens(ids, max_tokens, sampling, stop_ids, adapter):
        new.append(token)
        if stops:
            text = tok.decode(new, skip_special_tokens=skip)
            at = min(((text.find(s), s) for s in stops if s in text), default=None)
            if at is not None:
                keep = at[0] + (len(at[1]) if _read(params, "include_stop_str_in_output", False) else 0)
                return CompletionOutput(index, text[:keep], new, "stop")
    if len(new) < max_tokens:
        reason = "stop"  # the decoder ended before a stop token
    return CompletionOutput(index, tok.decode(new, skip_special_tokens=skip), new, reason)


def _read(params, name: str, default):
    """A SamplingParams field, from tunesmith's or vLLM's (when installed), whose None means the default."""
    value = getattr(params, name, None)
    return default if value is None else value


@contextlib.contextmanager
def _adapter(model, lora_request):
    """Yields whether the call uses adapters: not for None; for a request, the saved adapter's weights are swapped
    in where they differ from the model's, and put back afterwards."""
    if lora_request is None:
        yield False
        return
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(getattr(lora_request, "lora_path", None) or getattr(lora_request, "path", "") or "")
    saved = load_lora(model, folder)  # the same checks: a folder with both files
    folder = Path(saved.lora_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    mine = model.peft_config["default"]
    if (config.get("r"), config.get("lora_alpha"), bool(config.get("use_rslora"))) != (
        mine.r,
        mine.lora_alpha,
        bool(mine.use_rslora),
    ) or set(config.get("target_modules") or ()) != set(mine.target_modules):
        raise UserError(
            f"'{folder}' holds an adapter with other settings than this model's (r={config.get('r')}, lora_alpha="
            f"{config.get('lora_alpha')}, target_modules={sorted(config.get('target_modules') or ())}); generate with "
            f"it after FastLanguageModel.from_pretrained('{folder}')."
        )
    current = get_peft_model_state_dict(model)
    weights = load_file(folder / "adapter_model.safetensors")
    if set(weights) != set(current):
        raise UserError(
            f"'{folder}' does not fit this model's adapters ({len(set(weights) - set(current))} unknown and "
            f"{len(set(current) - set(weights))} missing weights); generate with it after "
            f"FastLanguageModel.from_pretrained('{folder}')."
        )
    if all(torch.equal(current[k], weights[k].to(current[k].device, current[k].dtype)) for k in current):
        yield True
        return
    kept = {k: v.detach().clone() for k, v in current.items()}
    set_peft_model_state_dict(model, weights)
    try:
        yield True
    finally:
        set_peft_model_state_dict(model, kept)
