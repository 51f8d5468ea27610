"""Evaluation: the base model, runs and exported GGUF files on the same questions, side by side.

Each case is a conversation up to its last assistant turn (the prompt) and that turn's text (the reference). A model
is measured twice over the cases:
  loss / perplexity   the mean negative log-likelihood of the reference's tokens (and the end-of-turn token after it)
                      given the prompt, over every such token of every case; PyTorch models through a forward pass,
                      GGUF files through llama.cpp's logits of the same text (its own tokenizer, so both agree)
  generated answers   a greedy reply to the prompt, scored against the reference (engine.export.scoring)
A run with a LoRA adapter gives "base" and the tuned model from one load (the adapter switched off and on). The
results are one JSON object and a CSV with a line per case and model, written to a new folder (results.json,
results.csv) that engine.api chooses: the first run's eval/ folder, or the workspace's evals/ folder.
"""

import contextlib
import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

from engine.core.errors import UserError
from engine.core.files import new_folder, write_json, write_text

LIMIT = 100  # cases evaluated unless asked otherwise: each costs a generated reply per model
MAX_NEW_TOKENS = 128
STOPPED = "The evaluation was stopped; nothing was saved."
GGUF_CONTEXT = 2048  # llama.cpp keeps n_ctx x vocab logits for the loss: 1.2 GB at Qwen's 151,936 tokens


@dataclass(frozen=True)
class Case:
    row: int  # the row number in its file
    prompt: list[dict]  # the messages before the reference reply
    reference: str


def read_cases(spec, part: str = "train", limit: int = LIMIT) -> list[Case]:
    """Chat rows of `spec.data` (`part` "eval": the rows a run held out) as cases, up to `limit` (0: all)."""
    from engine.data.formats import CHAT_FORMATS, check_format, to_messages
    from engine.data.tokenizing import batched_rows

    source = Path(spec.data).name
    fmt = None if spec.data_format == "auto" else spec.data_format
    cases = []
    for batch in batched_rows(spec, "reading", part=part):
        for i, row in batch:
            fmt = check_format(row, i, source, fmt) if spec.data_format == "auto" else fmt
            if fmt not in CHAT_FORMATS:
                raise UserError(
                    f"{source} is {fmt} data; evaluation takes chat rows with reference answers (alpaca, sharegpt "
                    "or chatml)."
                )
            msgs = to_messages(row, fmt, i, source, spec.system_prompt)
            last = max(k for k, m in enumerate(msgs) if m["role"] == "assistant")
            if last and msgs[last]["content"].strip():
                cases.append(Case(i, msgs[:last], msgs[last]["content"]))
            if limit and len(cases) >= limit:
                return cases
    if not cases:
        raise UserError(f"{source} has no rows with a question and a reference answer to evaluate on.")
    return cases


def reference_span(encode, prompt_text: str, full_text: str) -> tuple[list[int], int] | None:
    """(token ids of the whole conversation, where the reference starts), or None when the prompt's tokens are not a
    prefix of the conversation's (a template that renders earlier turns differently)."""
    prompt, ids = encode(prompt_text), encode(full_text.rstrip())
    if ids[: len(prompt)] != prompt or len(ids) <= len(prompt) or not prompt:
        return None
    return ids, len(prompt)


class TorchModel:
    """A run, adapter folder, model folder or hub id, loaded once; `adapter=False` is its base model."""

    def __init__(self, source: str, device: str, log):
        from engine.chat.infer import ChatModel
        from engine.models.context import context_length

        self.chat = ChatModel(source, device, log=log)
        self.has_adapter = self.chat.has_adapter
        self.context = context_length(self.chat.model.config)  # None: unknown, nothing is left out

    def fits(self, case: Case) -> bool:
        """Whether the case's prompt leaves the model's context room for a reply."""
        return self.context is None or len(self.chat.prompt_ids(case.prompt)) < self.context

    def reply(self, case: Case, adapter: bool, max_new_tokens: int) -> str:
        return self.chat.reply(case.prompt, max_new_tokens=max_new_tokens, temperature=0.0, adapter=adapter)

    def loss(self, case: Case, adapter: bool) -> tuple[float, int] | None:
        """(summed negative log-likelihood of the reference's tokens, their count), or None."""
        import torch

        from engine.data.tokenizing import render

        tok = self.chat.tokenizer
        full = render(tok, [*case.prompt, {"role": "assistant", "content": case.reference}])
        span = reference_span(
            lambda t: tok(t, add_special_tokens=False)["input_ids"], render(tok, case.prompt, True), full
        )
        if span is None or (self.context is not None and len(span[0]) > self.context):
            return None  # past the context the model was never trained: no loss to read there
        ids, start = span
        model = self.chat.model
        off = model.disable_adapter() if self.has_adapter and not adapter else contextlib.nullcontext()
        target = torch.tensor(ids[start:], device=model.device)
        with torch.no_grad(), off:
            # the head runs only where a reference token is predicted (the last position predicts none): every
            # position's logits would be positions x vocabulary x 4 bytes: 2,000 x 151,936 x 4 = 1.2 GB (arithmetic)
            x = torch.tensor([ids[:-1]], device=model.device)
            logits = model(input_ids=x, logits_to_keep=len(target)).logits[0, -len(target) :].float()
        nll = -torch.log_softmax(logits, -1).gather(1, target[:, None]).sum()
        return float(nll), len(target)

    def close(self) -> None:
        """Let go of the weights now (and of what the load left in garbage cycles), before the next model loads."""
        import gc

        self.chat = None
        gc.collect()


class GGUFModel:
    """A GGUF file through llama.cpp: replies, and the loss from its logits (kept for every position)."""

    has_adapter = False

    def __init__(self, path: str, device: str):
        from engine.chat.gguf_chat import GGUFChat

        self.chat = GGUFChat(path, device, n_ctx=GGUF_CONTEXT, logits=True)

    def fits(self, case: Case) -> bool:
        """Whether the case's prompt leaves llama.cpp's window room for a reply."""
        return len(self.chat.prompt_ids(case.prompt)) < self.chat.llm.n_ctx()

    def reply(self, case: Case, adapter: bool, max_new_tokens: int) -> str:
        return self.chat.reply(case.prompt, max_new_tokens=max_new_tokens, temperature=0.0)

    def loss(self, case: Case, adapter: bool) -> tuple[float, int] | None:
        import numpy as np

        chat = self.chat
        full = chat.render([*case.prompt, {"role": "assistant", "content": case.reference}], False)
        span = reference_span(chat.encode, chat.render(case.prompt), full)
        if span is None or len(span[0]) > chat.llm.n_ctx():
            return None
        ids, start = span
        chat.llm.reset()
        chat.llm.eval(ids)
        logits = np.asarray(chat.llm.scores[start - 1 : len(ids) - 1], dtype=np.float64)
        chat.llm.reset()  # the next completion must not reuse these tokens' cache as its prompt
        top = logits.max(1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        target = np.asarray(ids[start:])
        return float((lse - logits[np.arange(len(target)), target]).sum()), len(target)

    def close(self) -> None:
        self.chat.close()


def label_of(source: str) -> str:
    """A short name for a source in tables: the run id, the GGUF file's name, the model folder's name or hub id."""
    path = Path(source)
    if (path / "job.yaml").is_file() or source.lower().endswith(".gguf") or path.is_dir():
        return path.name
    return source


def labels_of(sources: list[str]) -> list[str]:
    """label_of each source, made unique: a label two sources share (GGUF files of one name from two exports), or
    "base", is prefixed with the source's folder name, then numbered if still taken."""
    short = [label_of(s) for s in sources]
    taken, out = {"base"}, []
    for source, name in zip(sources, short, strict=True):
        label = f"{Path(source).parent.name}/{name}" if name in taken or short.count(name) > 1 else name
        unique, n = label, 2
        while unique in taken:
            unique, n = f"{label} ({n})", n + 1
        taken.add(unique)
        out.append(unique)
    return out


def evaluate(
    sources: list[str],
    cases: list[Case],
    scorers: list[tuple[str, object]],
    base: bool = True,
    max_new_tokens: int = MAX_NEW_TOKENS,
    device: str = "auto",
    log=print,
    base_model: str | None = None,
    should_stop=None,
) -> dict:
    """Every source on every case: loss, perplexity and mean scores per model, and each case's replies and scores.
    With `base`, the first source that has an adapter is also measured with it switched off ("base"); `base_model`
    (a full fine-tune's base, which has no adapter to switch off) is instead loaded and measured first as "base".
    `should_stop`, a callable, is asked before each model and each question: when it answers True the evaluation
    ends with a UserError (STOPPED) and nothing is returned."""
    models, rows = [], [dict(row=c.row, prompt=_question(c), reference=c.reference) for c in cases]
    should_stop = should_stop or (lambda: False)
    if base and base_model:
        model = TorchModel(base_model, device, log)
        try:
            log(f"evaluate: base ({base_model}) on {len(cases)} cases")
            models.append(
                _measure(model, "base", base_model, True, cases, scorers, rows, max_new_tokens, should_stop, log)
            )
        finally:
            model.close()
        base = False
    for source, name in _stopping(should_stop, zip(sources, labels_of(sources), strict=True)):
        # one model in memory at a time: the one before was closed, which let go of its weights
        model = GGUFModel(source, device) if source.lower().endswith(".gguf") else TorchModel(source, device, log)
        try:
            variants = [("base", False)] if base and model.has_adapter else []
            base = base and not model.has_adapter
            for label, adapter in [*variants, (name, True)]:
                log(f"evaluate: {label} on {len(cases)} cases")
                models.append(
                    _measure(model, label, source, adapter, cases, scorers, rows, max_new_tokens, should_stop, log)
                )
        finally:
            model.close()
    return dict(cases=len(cases), scorers=[n for n, _ in scorers], models=models, rows=rows)


@contextlib.contextmanager
def _memory_sentence(label: str):
    """Running out of GPU memory (the loss pass's logits, a reply's cache) as a sentence for the Evaluate tab, in
    place of torch's error or the Chat tab's advice (engine.chat.infer.OUT_OF_MEMORY)."""
    import torch

    from engine.chat.infer import OUT_OF_MEMORY

    try:
        yield
    except (torch.OutOfMemoryError, UserError) as e:
        if isinstance(e, UserError) and str(e) != OUT_OF_MEMORY:
            raise
        torch.cuda.empty_cache()
        raise UserError(
            f"The GPU ran out of memory evaluating {label}; lower 'Longest answer (tokens)', or evaluate on shorter "
            "questions or a smaller model."
        ) from None


def _measure(model, label, source, adapter, cases, scorers, rows, max_new_tokens, should_stop, log=print) -> dict:
    """One model's replies, losses and mean scores. A case whose prompt fills the model's context gets no reply and is
    left out of its scores and loss (counted in "left_out"): one long row does not end the whole evaluation. Each
    answer written is logged ("answered 3 of 50"): the replies take nearly all the time."""
    with _memory_sentence(label):
        return _measured(model, label, source, adapter, cases, scorers, rows, max_new_tokens, should_stop, log)


def _stopping(should_stop, items):
    """`items`, one at a time, while `should_stop()` is False."""
    for item in items:
        if should_stop():
            raise UserError(STOPPED)
        yield item


def _measured(model, label, source, adapter, cases, scorers, rows, max_new_tokens, should_stop, log) -> dict:
    t0 = time.perf_counter()
    kept = [k for k, c in enumerate(cases) if model.fits(c)]
    if not kept:
        raise UserError(
            f"Every question is longer than the context of {label}, so it cannot answer any; evaluate on shorter "
            "questions."
        )
    replies = {}
    for n, k in enumerate(_stopping(should_stop, kept), 1):
        replies[k] = model.reply(cases[k], adapter, max_new_tokens)
        log(f"evaluate: {label}: answered {n} of {len(kept)}")
    log(f"evaluate: {label}: the loss of the {len(kept)} reference answers")  # one forward each: quick
    losses = {k: model.loss(cases[k], adapter) for k in _stopping(should_stop, kept)}
    prompts, refs = [_question(cases[k]) for k in kept], [cases[k].reference for k in kept]
    scores = {name: dict(zip(kept, fn([replies[k] for k in kept], prompts, refs), strict=True)) for name, fn in scorers}
    nll = sum(v[0] for v in losses.values() if v)
    count = sum(v[1] for v in losses.values() if v)
    for k, row in enumerate(rows):
        row.setdefault("replies", {})[label] = replies.get(k, "")
        row.setdefault("scores", {})[label] = {name: s.get(k) for name, s in scores.items()}
        one = losses.get(k)
        row.setdefault("loss", {})[label] = round(one[0] / one[1], 6) if one else None
    loss = nll / count if count else None
    return dict(
        name=label,
        source=str(source),
        loss=round(loss, 6) if loss is not None else None,
        perplexity=round(math.exp(min(loss, 700)), 4) if loss is not None else None,
        tokens=count,
        scores={name: round(sum(s.values()) / len(s), 6) for name, s in scores.items()},
        left_out=len(cases) - len(kept),
        seconds=round(time.perf_counter() - t0, 2),
    )


def _question(case: Case) -> str:
    """The last user turn of a case's prompt (what a table shows as the question)."""
    users = [m["content"] for m in case.prompt if m["role"] == "user"]
    return users[-1] if users else ""


def save(results: dict, folder: Path) -> dict:
    """Write results.json and results.csv into the new folder `folder`; returns their paths."""
    with new_folder(folder) as tmp:
        names, scorers = [m["name"] for m in results["models"]], results["scorers"]
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["row", "model", "question", "reference", "reply", "loss", *scorers])
        for row in results["rows"]:
            for name in names:
                scores = row["scores"][name]
                w.writerow(
                    [row["row"], name, row["prompt"], row["reference"], row["replies"][name], row["loss"][name]]
                    + [scores[s] for s in scorers]
                )
        write_text(tmp / "results.csv", out.getvalue())
        write_json(tmp / "results.json", results)
    return dict(json=str(folder / "results.json"), csv=str(folder / "results.csv"))


def parse_rewards(texts: list[str]) -> tuple[dict, ...]:
    """Reward presets given as JSON objects on the command line."""
    import json

    out = []
    for text in texts:
        try:
            value = json.loads(text)
        except ValueError:
            raise UserError(f'--reward {text!r} is not JSON; write it like \'{{"preset": "length"}}\'.') from None
        if not isinstance(value, dict):
            raise UserError(f"--reward {text!r} should be a JSON object with a 'preset'.")
        out.append(value)
    return tuple(out)
