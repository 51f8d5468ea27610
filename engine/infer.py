"""Chat with a run's adapter, a merged model or a hub model: the same chat template as training, streamed."""

import json
import threading
from pathlib import Path

from engine.errors import UserError
from engine.hardware import choose_placement
from engine.templates import END_OF_TURN, stop_strings


def locate(source: str) -> tuple[str, Path | None, Path | None]:
    """(base model, adapter folder or None, tokenizer folder or None) for a run, an adapter folder or a model."""
    path = Path(source)
    if (path / "job.yaml").is_file():
        from engine.jobspec import JobSpec

        spec = JobSpec.from_yaml((path / "job.yaml").read_text())
        if (path / "model").is_dir():
            return str(path / "model"), None, path / "model"
        if (path / "adapter").is_dir():
            return spec.model, path / "adapter", path / "adapter"
        ckpts = sorted((path / "checkpoints").glob("step-*"))
        if not ckpts:
            raise UserError(f"Run {path.name} has no adapter or checkpoint yet; wait for its first checkpoint.")
        return spec.model, ckpts[-1], path / "tokenizer"
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        return base, path, path
    return source, None, None


class ChatModel:
    """A model loaded for chat; `reply` and `stream` take a list of {"role", "content"} messages."""

    def __init__(self, source: str, device: str = "auto", log=print):
        from engine.data import ensure_chat_template
        from engine.loading import load_model, load_tokenizer, resolve_model

        base, adapter, tok_dir = locate(source)
        self.placement = choose_placement(device)
        self.tokenizer = load_tokenizer(tok_dir or resolve_model(base, log))
        ensure_chat_template(self.tokenizer)
        model = load_model(resolve_model(base, log), self.placement)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)  # applied on the fly: the base stays shared
        self.model = model.eval()
        self.stop_ids = self._stop_ids()
        # markers the template writes that are not single tokens here (a named template on a base model): stop on text
        vocab = self.tokenizer.get_vocab()
        self.stop_texts = [s for s in stop_strings(self.tokenizer.chat_template) if s not in vocab]
        self.source = source

    def _stop_ids(self) -> list[int]:
        tok, vocab = self.tokenizer, self.tokenizer.get_vocab()
        ids = {tok.eos_token_id} | {vocab[t] for t in END_OF_TURN if t in vocab}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def _inputs(self, messages):
        from engine.data import render

        text = render(self.tokenizer, messages, add_generation_prompt=True)
        enc = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        return {k: v.to(self.placement.device) for k, v in enc.items()}

    def _gen_kwargs(self, max_new_tokens, temperature, top_p, top_k, repetition_penalty):
        kw = dict(
            stop_strings=self.stop_texts or None,
            tokenizer=self.tokenizer,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id,
            repetition_penalty=repetition_penalty,
        )
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def reply(self, messages, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0) -> str:
        """The whole reply (greedy when temperature is 0), without the end-of-turn token."""
        import torch

        inputs = self._inputs(messages)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, **self._gen_kwargs(max_new_tokens, temperature, top_p, top_k, repetition_penalty)
            )
        return self._clean(self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

    def _clean(self, text: str) -> str:
        """Cut the reply at a text stop marker (they are not special tokens, so decoding keeps them)."""
        for marker in self.stop_texts:
            text = text.split(marker)[0]
        return text.strip()

    def stream(self, messages, max_new_tokens=256, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0):
        """Yield the reply so far, growing as tokens arrive."""
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._inputs(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, top_k, repetition_penalty)

        def run():
            with torch.inference_mode():
                self.model.generate(**inputs, streamer=streamer, **kw)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield self._clean(text)
        worker.join()
