"""Chat with a run's adapter, a merged model or a hub model: the same chat template as training, streamed, with
each reply's tokens/s, a base-vs-fine-tuned compare from one copy of the weights, and per-family sampling defaults."""

import contextlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import UserError
from engine.core.hardware import choose_placement
from engine.data.templates import END_OF_TURN, stop_strings
from engine.models.adapter_source import hub_adapter


def locate(source: str) -> tuple[str, Path | None, Path | None]:
    """(base model, adapter folder or None, tokenizer folder or None) for a run, an adapter folder or a model.
    An adapter is only ever read from safetensors (engine.chat.infer.check_adapter)."""
    base, adapter, tok_dir = _locate(source)
    if adapter is not None:
        check_adapter(adapter)
    return base, adapter, tok_dir


def check_adapter(folder: Path) -> None:
    """Refuse an adapter folder without adapter_model.safetensors: its adapter_model.bin would be unpickled, and
    unpickling a file someone handed over can run their code."""
    if any(folder.glob("adapter_model*.safetensors")):
        return
    if any(folder.glob("adapter_model*.bin")) or any(folder.glob("*.pt")):
        raise UserError(
            f"'{folder}' holds its adapter only as a pickle file (adapter_model.bin), which could run code when "
            "loaded; Tunesmith loads adapters from safetensors only. Save it again with "
            "save_pretrained(..., safe_serialization=True) where it was made."
        )
    raise UserError(f"'{folder}' has no adapter_model.safetensors; it is not a complete LoRA adapter.")


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _locate(source: str) -> tuple[str, Path | None, Path | None]:
    path = Path(source)
    if (path / "job.yaml").is_file():
        from engine.spec.jobspec import read_job

        spec = read_job(path / "job.yaml")
        if (path / "model").is_dir():
            return str(path / "model"), None, path / "model"
        if (path / "adapter").is_dir():
            return spec.model, path / "adapter", path / "adapter"
        ckpts = sorted((path / "checkpoints").glob("step-*"))
        if not ckpts:
            raise UserError(
                f"Run {path.name} has no adapter or checkpoint yet: wait for its first checkpoint if it is still "
                "running; if it stopped before one, there is nothing to use, so start it again."
            )
        if (ckpts[-1] / "config.json").is_file():  # full fine-tuning's checkpoint is the whole model, not an adapter
            return str(ckpts[-1]), None, path / "tokenizer"
        return spec.model, ckpts[-1], path / "tokenizer"
    path = hub_adapter(source) or path  # a hub repository holding a LoRA adapter: chat with it on its base
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        # a run's checkpoint (checkpoints/ or best/) holds no tokenizer: the run's tokenizer/ is the one it trained
        # with (its chat template may be one the job named); an adapter saved alone without one trained with its base's
        run_tok = path.parent.parent / "tokenizer"
        if _has_tokenizer(path):
            return base, path, path
        return base, path, run_tok if path.parent.name in ("checkpoints", "best") and _has_tokenizer(run_tok) else None
    return source, None, None


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
GENERIC_SAMPLING = dict(temperature=0.7, top_p=0.9, top_k=0, min_p=0.0, repetition_penalty=1.0)
# Sampling defaults of each family (config.json's model_type), from its model cards, for models whose own
# generation_config.json does not set them. The Chat tab's sliders, the GGUF header and the Ollama Modelfile use them.
_GEMMA_SAMPLING = dict(temperature=1.0, top_p=0.95, top_k=64)
FAMILY_SAMPLING = {
    "qwen3": dict(temperature=0.7, top_p=0.8, top_k=20),  # Qwen3's non-thinking mode
    "qwen2": dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),  # Qwen2.5 Instruct
    "llama": dict(temperature=0.6, top_p=0.9),  # Llama 3.x Instruct
    "mistral": dict(temperature=0.7, top_p=1.0),
    "gemma": _GEMMA_SAMPLING,
    "gemma2": _GEMMA_SAMPLING,
    "gemma3": _GEMMA_SAMPLING,
    "gemma3_text": _GEMMA_SAMPLING,
}


def sampling_defaults(model_type: str | None, generation: dict | None = None) -> dict:
    """Temperature, top_p, top_k, min_p and repetition_penalty to offer for a model.

    The model's generation_config.json (`generation`) wins where it sets a value (temperature, top_p, top_k and min_p
    only when it samples, do_sample true: otherwise they are transformers' unused defaults); then the family's
    values (FAMILY_SAMPLING); then GENERIC_SAMPLING.
    """
    out = {**GENERIC_SAMPLING, **FAMILY_SAMPLING.get(model_type or "", {})}
    gen = generation or {}
    for key in SAMPLING_KEYS:
        if gen.get(key) is not None and (gen.get("do_sample") or key == "repetition_penalty"):
            out[key] = gen[key]
    return {k: int(v) if k == "top_k" else float(v) for k, v in out.items()}


def folder_sampling(model_dir: Path) -> dict:
    """sampling_defaults of a model folder, from its config.json and generation_config.json."""
    cfg = _json(model_dir / "config.json")
    gen = model_dir / "generation_config.json"
    return sampling_defaults(cfg.get("model_type"), _json(gen) if gen.is_file() else None)


def _json(path: Path) -> dict:
    """A model folder's JSON file; one that is not JSON (cut off in a copy, edited by hand) is a UserError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(
            f"'{path.name}' of '{path.parent}' is not valid JSON ({e}); copy the file again from the model's source."
        ) from None


def source_sampling(source: str, families: dict | None = None) -> dict:
    """sampling_defaults of a chat source (a run, an adapter folder, a model folder or a hub id), read without loading
    or downloading anything: a hub id that is not in the local cache uses `families` (hub id -> model_type, the
    catalog's), else the generic values."""
    from engine.core.hub_id import HUB_ID

    base, _, _ = locate(source)
    path = Path(os.path.expanduser(base))
    if (path / "config.json").is_file():
        return folder_sampling(path)
    if HUB_ID.match(base):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "config.json")
        if isinstance(cached, str):  # a path; otherwise None or a "known to be missing" marker
            return folder_sampling(Path(cached).parent)
    return sampling_defaults((families or {}).get(base))


@dataclass
class ReplyStats:
    """How fast a reply came: tokens the model generated for it (the end-of-turn token not counted) and the seconds
    since it was asked for (prompt processing included). Filled in as the reply streams."""

    tokens: int = 0
    seconds: float = 0.0
    note: str = ""  # why the reply ended early, when it did (the model's context was full)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class TextStream:
    """Turns token ids into text pieces as they arrive, never splitting a multi-byte character.

    Each step decodes a short window (from the token before the last emitted text to the end) and emits what grew,
    holding back text that ends in U+FFFD (an incomplete UTF-8 sequence) until the next token completes it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # tokens whose text has been emitted

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """The new text that `token_id` completes ("" while a character is still incomplete)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character included, as U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return now[len(before) :]


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (so must not be shown yet)."""
    for n in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return n
    return 0


MODEL_CONTEXT = "the model's context"  # what limits a reply, as reply_room and note_context name it


def reply_room(prompt: int, max_new_tokens: int, context: int | None, limit: str = MODEL_CONTEXT) -> int:
    """max_new_tokens, cut to the positions a context of `context` tokens (None: unknown) leaves after a prompt of
    `prompt` tokens. A prompt that fills the context is a UserError: past it the model was never trained, so its
    replies would be noise. `limit` names the context in the sentence (e.g. llama.cpp's shorter chat window)."""
    if context is None:
        return max_new_tokens
    if prompt >= context:
        raise UserError(
            f"This conversation is {prompt} tokens, which fills {limit} of {context} tokens; clear "
            "the chat (or shorten the system prompt) to go on."
        )
    return min(max_new_tokens, context - prompt)


def note_context(stats: ReplyStats, prompt: int, room: int, max_new_tokens: int, limit: str = MODEL_CONTEXT) -> None:
    """Say so in `stats.note` when the reply ended because the context was full (`room` of the `max_new_tokens`
    asked for were left after the prompt), not at its end of turn; `limit` names the context, as in reply_room."""
    if room < max_new_tokens and stats.tokens >= room:
        stats.note = (
            f"The reply stopped at {limit} of {prompt + room} tokens (the conversation's "
            f"{prompt} and {room} of the reply); clear the chat to go on."
        )


def template_refused(owner: str, messages: list[dict], error: Exception) -> UserError:
    """The sentence for a chat template that raised on the Chat tab's conversation (Gemma 2's refuses a system turn,
    many raise on turns out of order): which turns, why, and what the Chat tab can do about it. `owner` names the
    template's model ("of 'run'", "in 'file.gguf'")."""
    roles = [m["role"] for m in messages]
    why = str(error).splitlines()[0][:200].rstrip(".") if str(error) else type(error).__name__
    fix = "Leave the System prompt empty if the model takes none" if "system" in roles else "Clear the chat"
    return UserError(f"The chat template {owner} cannot render this conversation ({', '.join(roles)}): {why}. {fix}.")


OUT_OF_MEMORY = (
    "The GPU ran out of memory for this reply; lower 'Max new tokens' or clear the chat (the conversation and the "
    "reply are held in memory as it is written), or pick a smaller model."
)


@contextlib.contextmanager
def memory_sentence():
    """torch's out-of-memory error of a reply as OUT_OF_MEMORY (a UserError), the memory it left cached freed."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise UserError(OUT_OF_MEMORY) from None


TURN_WAIT_S = 600  # how long a reply waits for the one being written before giving up with a sentence


class Turn:
    """One reply at a time per loaded model (every reply shares the decoder's KV cache, or llama.cpp's context): a
    second reply waits up to TURN_WAIT_S for the one being written (another browser tab, compare during a chat). A
    Lock, not an RLock: a streamed reply may be resumed on another thread than the one that began it (Gradio steps
    generators on a thread pool). A second reply begun on the thread that holds the turn cannot wait for it (the
    first is suspended there) and is refused at once."""

    BUSY = "Another reply from this model is still being written; wait for it to finish (or stop it), then ask again."

    def __init__(self):
        self._lock = threading.Lock()
        self._holder = None

    @contextlib.contextmanager
    def __call__(self):
        me = threading.get_ident()
        if self._holder == me or not self._lock.acquire(timeout=TURN_WAIT_S):
            raise UserError(self.BUSY)
        self._holder = me
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()


class ChatModel:
    """A model loaded for chat; `reply` and `stream` take a list of {"role", "content"} messages.

    Decoding runs on engine.chat.decode.Decoder (static KV cache; CUDA-graph steps on a GPU). A run's adapter stays
    unmerged, so `adapter=False` chats with the base model alone from the same loaded weights.
    """

    def __init__(self, source: str, device: str = "auto", log=print):
        from engine.chat import warmup
        from engine.chat.decode import Decoder
        from engine.data.tokenizing import ensure_chat_template
        from engine.models.loading import load_model, load_tokenizer, resolve_model

        base, adapter, tok_dir = locate(source)
        self.placement = choose_placement(device)
        path = resolve_model(base, log)
        # the decode step's kernels compile while the weights load; the decoder waits for them at the first reply
        rows = (2,) if adapter is not None else ()  # the compare's base and tuned rows
        kernels = warmup.start_for(path, self.placement.device, self.placement.torch_dtype, rows=rows)
        try:
            self.tokenizer = load_tokenizer(tok_dir or path)
            ensure_chat_template(self.tokenizer)
            model = load_model(path, self.placement)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter)  # applied on the fly: the base stays shared
        except BaseException:  # no Decoder will join it: its compiles end here, not behind the app's next load
            kernels.join(log, stop=True)
            raise
        self.model = model.eval()
        self.has_adapter = adapter is not None
        self.decoder = Decoder(self.model, log=log, warmup=kernels)
        self.stop_ids = self._stop_ids()
        # markers the template writes that are not single tokens here (a named template on a base model): stop on text
        vocab = self.tokenizer.get_vocab()
        self.stop_texts = [s for s in stop_strings(self.tokenizer.chat_template) if s not in vocab]
        self.source = source
        self._turn = Turn()

    def _stop_ids(self) -> list[int]:
        tok, vocab = self.tokenizer, self.tokenizer.get_vocab()
        ids = {tok.eos_token_id} | {vocab[t] for t in END_OF_TURN if t in vocab}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def prompt_ids(self, messages) -> list[int]:
        """The chat-rendered prompt (generation prompt added) as token ids."""
        from engine.data.tokenizing import leading_bos

        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # a template is a program of its own: it can fail in any way, always for this input
            raise template_refused(f"of '{Path(self.source).name}'", messages, e) from None
        bos = leading_bos(self.tokenizer)  # as training renders it (engine.data.tokenizing.render)
        return self.tokenizer(text if text.startswith(bos) else bos + text, add_special_tokens=False)["input_ids"]

    def pieces(
        self,
        messages,
        max_new_tokens=256,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        min_p=0.0,
        stop=None,
        seed=None,
        adapter=True,
        stats: ReplyStats | None = None,
    ):
        """Yield the reply's text piece by piece (one per token that completes text), unstripped.

        Ends at an end-of-turn token, at a stop string (template markers that are not tokens, plus `stop`; the
        marker is not yielded) or after max_new_tokens. `adapter=False` uses the base model without the adapter.
        `stats`, when given, is updated with the tokens generated and the seconds taken as the reply grows.
        """
        from engine.chat.decode import Sampling

        stats = stats if stats is not None else ReplyStats()
        sampling = Sampling(temperature, top_p, top_k, min_p, repetition_penalty, seed)
        stops = [s for s in [*self.stop_texts, *(stop or [])] if s]
        ids = self.prompt_ids(messages)
        room = self.room(ids, max_new_tokens)
        with self._turn(), memory_sentence():
            tokens = self.decoder.tokens(ids, room, sampling, self.stop_ids, adapter and self.has_adapter)
            yield from self._pieces(tokens, stops, stats)
        note_context(stats, len(ids), room, max_new_tokens)

    def room(self, ids: list[int], max_new_tokens: int) -> int:
        """max_new_tokens, cut to what the model's context leaves after the prompt `ids` (reply_room)."""
        from engine.models.context import context_length

        return reply_room(len(ids), max_new_tokens, context_length(self.model.config))

    def _pieces(self, tokens, stops, stats):
        """The text pieces of the reply whose token ids `tokens` yields (see `pieces`)."""
        t0 = time.perf_counter()
        text = TextStream(self.tokenizer)
        pending = ""  # decoded text not yet shown: it may be the start of a stop string
        for token in tokens:
            stats.tokens += 1
            stats.seconds = time.perf_counter() - t0
            pending += text.push(token)
            hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if hits:
                if min(hits):
                    yield pending[: min(hits)]
                return
            keep = _held_back(pending, stops) if stops else 0
            if len(pending) > keep:
                yield pending[: len(pending) - keep]
                pending = pending[len(pending) - keep :]
        stats.seconds = time.perf_counter() - t0  # the end-of-turn token's step included
        pending += text.flush()
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        pending = pending[: min(hits)] if hits else pending
        if pending:
            yield pending

    def reply(
        self,
        messages,
        max_new_tokens=256,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        min_p=0.0,
        stop=None,
        seed=None,
        adapter=True,
        stats: ReplyStats | None = None,
    ) -> str:
        """The whole reply (greedy when temperature is 0), without the end-of-turn token."""
        kw = dict(min_p=min_p, stop=stop, seed=seed, adapter=adapter, stats=stats)
        return "".join(
            self.pieces(messages, max_new_tokens, temperature, top_p, top_k, repetition_penalty, **kw)
        ).strip()

    def stream(
        self,
        messages,
        max_new_tokens=256,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        min_p=0.0,
        stop=None,
        seed=None,
        adapter=True,
        stats: ReplyStats | None = None,
    ):
        """Yield the reply so far, growing as tokens arrive (stripped, as `reply` returns it)."""
        kw = dict(min_p=min_p, stop=stop, seed=seed, adapter=adapter, stats=stats)
        text = ""
        for piece in self.pieces(messages, max_new_tokens, temperature, top_p, top_k, repetition_penalty, **kw):
            text += piece
            yield text.strip()

    def compare(self, messages, stats: tuple[ReplyStats, ReplyStats] | None = None, **sampling):
        """Yield (fine-tuned reply so far, base reply so far) for the same messages, decoded together as one batch of
        two rows (engine.chat.decode_batch; the adapter masked off in the base row) from the same loaded weights (no
        second copy). Where the model has no batched step, or no memory for it, the fine-tuned reply streams first,
        then the base model's.

        Both replies use the same sampling settings and, when sampling, the same seed (one is drawn if none is
        given), so a difference comes from the adapter and not from the draw. `stats` receives (fine-tuned, base).
        `sampling` takes the keyword arguments of `stream`.
        """
        if not self.has_adapter:
            raise UserError(
                f"'{Path(self.source).name}' has no LoRA adapter, so there is no base model to compare with; pick a "
                "run trained with LoRA or QLoRA."
            )
        if sampling.get("temperature", 0.0) > 0 and sampling.get("seed") is None:
            sampling["seed"] = random.randrange(2**31)
        from engine.chat.decode import Sampling
        from engine.chat.decode_batch import batch, split_rows

        stats = stats or (ReplyStats(), ReplyStats())
        keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
        chosen = Sampling(**{k: sampling[k] for k in keys if sampling.get(k) is not None})
        stops = [s for s in [*self.stop_texts, *(sampling.get("stop") or [])] if s]
        ids = self.prompt_ids(messages)
        asked = sampling.get("max_new_tokens", 256)
        room = self.room(ids, asked)
        with self._turn(), memory_sentence():
            steps = batch(self.decoder, [ids, ids], room, chosen, self.stop_ids, [True, False])
            rows = [self._pieces(r, stops, s) for r, s in zip(split_rows(steps, 2), stats, strict=True)]
            texts, live = ["", ""], [True, True]
            try:
                while any(live):  # a piece of each reply in turn, so both grow together
                    for i, row in enumerate(rows):
                        piece = next(row, None) if live[i] else None
                        live[i] = piece is not None
                        texts[i] += piece or ""
                    yield texts[0].strip(), texts[1].strip()
            finally:
                steps.close()
        for one in stats:
            note_context(one, len(ids), room, asked)
