"""Chat with a GGUF file through llama.cpp (llama-cpp-python), with the chat template embedded in the file.

The same reply()/stream() interface as engine.chat.infer.ChatModel, so the Chat tab and the CLI treat a GGUF like a run.
The template is rendered here (sandboxed Jinja, as transformers renders it) and the token ids go to llama.cpp's
completion API, which stops on the vocabulary's end-of-generation tokens (EOS and end-of-turn: <|im_end|>, <|eot_id|>,
...), so a reply ends exactly where the model ends its turn.
"""

import os
import time
from pathlib import Path

from engine.chat.infer import (
    END_OF_TURN,
    MODEL_CONTEXT,
    ReplyStats,
    Turn,
    note_context,
    reply_room,
    sampling_defaults,
    template_refused,
)
from engine.core.errors import UserError

# Our sampling names -> the general.sampling.* header keys llama.cpp reads as a model's defaults.
GGUF_SAMPLING_KEYS = dict(
    temperature="temp", top_p="top_p", top_k="top_k", min_p="min_p", repetition_penalty="penalty_repeat"
)


def _trained_context(path: Path) -> int:
    """The context length the model was trained for, read from the file's header (memory-mapped, no weights)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        return int(reader.fields[f"{arch}.context_length"].parts[-1][0])
    except (KeyError, ValueError, IndexError):
        raise UserError(f"'{path.name}' is not a readable GGUF model file.") from None


class GGUFChat:
    """A GGUF model loaded for chat; `reply` and `stream` take a list of {"role", "content"} messages."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", n_ctx: int = 4096, logits: bool = False):
        """`logits` keeps every position's logits after `llm.eval` (llm.scores: n_ctx x vocab floats), which the
        loss of engine.export.evaluate reads."""
        import llama_cpp

        path = Path(path)
        if not path.is_file():
            raise UserError(f"GGUF file '{path}' does not exist.")
        trained = _trained_context(path)
        try:
            self.llm = llama_cpp.Llama(
                str(path),
                n_ctx=min(n_ctx, trained),
                n_gpu_layers=0 if device == "cpu" else -1,
                n_threads=os.cpu_count() or 1,
                logits_all=logits,
                verbose=False,
            )
        except ValueError:
            raise UserError(
                f"llama.cpp could not load '{path.name}'; the file is damaged or of a newer format."
            ) from None
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        if not self.template:
            raise UserError(f"'{path.name}' has no chat template embedded; export it again with Tunesmith.")
        keys = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
        self.specials = {name: self._token_text(meta.get(f"tokenizer.ggml.{key}")) for name, key in keys.items()}
        self.add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
        self.source = str(path)
        # what stops a reply, named in its note: llama.cpp's window (n_ctx) where it is shorter than the model's context
        self.limit = MODEL_CONTEXT if self.llm.n_ctx() >= trained else "llama.cpp's chat window"
        self._turn = Turn()  # llama.cpp's context serves one reply at a time

    def _token_text(self, token_id) -> str:
        if token_id is None:
            return ""
        return self.llm.detokenize([int(token_id)], special=True).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Free llama.cpp's model and context now rather than at garbage collection."""
        self.llm.close()

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as text through the file's chat template, after the BOS the file says to add where the
        template writes none (as engine.data.tokenizing.render). A template refusing it (Gemma 2's raises on a system
        turn, many on turns out of order) is a UserError, as engine.data.tokenizing.render makes it."""
        from engine.data.templates import render_template

        try:
            text = render_template(
                self.template,
                messages,
                add_generation_prompt,
                bos_token=self.specials["bos"],
                eos_token=self.specials["eos"],
                pad_token=self.specials["pad"],
                unk_token=self.specials["unk"],
            )
        except Exception as e:  # a template is a program of its own: it can fail in any way, always for this input
            raise template_refused(f"in '{Path(self.source).name}'", messages, e) from None
        bos = self.specials["bos"] if self.add_bos else ""  # as llama.cpp and Ollama prompt it, as it was trained
        return text if text.startswith(bos) else bos + text

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (special tokens parsed, no extra BOS: the template has its own)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat-rendered prompt as token ids."""
        return self.encode(self.render(messages))

    def _completion(self, ids, max_new_tokens, temperature, top_p, top_k, repetition_penalty, min_p, stream):
        if max_new_tokens <= 0:  # llama.cpp reads max_tokens 0 as "no limit": the reply would run to the window's end
            empty = dict(choices=[dict(text="", finish_reason="length")], usage=dict(completion_tokens=0))
            return iter([empty]) if stream else empty
        return self.llm.create_completion(
            ids,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,  # 0 disables top-k in llama.cpp's sampler, as in transformers
            min_p=min_p,
            repeat_penalty=repetition_penalty,
            stop=list(END_OF_TURN),  # end-of-turn texts a model may spell out as plain text
            stream=stream,
        )

    def reply(
        self,
        messages,
        max_new_tokens=256,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        min_p=0.0,
        stats: ReplyStats | None = None,
    ) -> str:
        """The whole reply (greedy when temperature is 0), without the end-of-turn token."""
        ids = self.prompt_ids(messages)
        room = reply_room(len(ids), max_new_tokens, self.llm.n_ctx(), self.limit)  # llama.cpp raises past its context
        with self._turn():
            t0 = time.perf_counter()
            out = self._completion(ids, room, temperature, top_p, top_k, repetition_penalty, min_p, False)
        if stats is not None:
            stats.tokens, stats.seconds = out["usage"]["completion_tokens"], time.perf_counter() - t0
            note_context(stats, len(ids), room, max_new_tokens, self.limit)
        return out["choices"][0]["text"].strip()

    def stream(
        self,
        messages,
        max_new_tokens=256,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        min_p=0.0,
        stats: ReplyStats | None = None,
    ):
        """Yield the reply so far, growing as tokens arrive. `stats`, when given, is updated as they do: llama.cpp
        streams one chunk per generated token (a chunk's text may be empty mid-character), then a closing chunk."""
        stats = stats if stats is not None else ReplyStats()
        ids = self.prompt_ids(messages)
        room = reply_room(len(ids), max_new_tokens, self.llm.n_ctx(), self.limit)  # llama.cpp raises past its context
        with self._turn():
            t0 = time.perf_counter()
            text = ""
            chunks = self._completion(ids, room, temperature, top_p, top_k, repetition_penalty, min_p, True)
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["finish_reason"] is None:  # the closing chunk carries no token
                    stats.tokens += 1
                stats.seconds = time.perf_counter() - t0
                if choice["text"]:
                    text += choice["text"]
                    yield text.strip()
        note_context(stats, len(ids), room, max_new_tokens, self.limit)

    def compare(self, messages, stats=None, **sampling):
        """A GGUF file has its adapter merged into the weights: there is no base model in it to compare with."""
        raise UserError(
            f"'{Path(self.source).name}' is a GGUF file, whose adapter is merged into its weights, so it has no base "
            "model to compare with; pick the run it was exported from."
        )


def file_sampling(path: str | os.PathLike) -> dict:
    """Sampling defaults of a GGUF file, read from its header: the general.sampling.* values Tunesmith writes (the
    model's own defaults at export), else its architecture's family defaults (a file made elsewhere)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        out = sampling_defaults(arch)  # llama.cpp's names of these families are their model_type
        for ours, key in GGUF_SAMPLING_KEYS.items():
            field = reader.fields.get(f"general.sampling.{key}")
            if field is not None:
                out[ours] = type(out[ours])(round(float(field.parts[-1][0]), 4))  # stored as float32
    except (KeyError, ValueError, IndexError, OSError):  # IndexError: a header cut off (a copy that stopped)
        raise UserError(f"'{Path(path).name}' is not a readable GGUF model file.") from None
    return out
