"""Batched decoding: B replies at once on engine.chat.decode's static-cache / CUDA-graph design (GRPO's
num_generations replies, the Chat tab's base-and-tuned compare).

On the "step" path (engine/chat/decode_step.py) every row has its own KV cache and its own position, so ragged prompts
need no padding: each distinct prompt is run once (GRPO repeats each prompt num_generations times) and its cache rows
copied to the rows that share it; then one step feeds the B rows' last tokens at their B positions
(kernels/rope_kv_cache.py and kernels/decode_attention.py take a row axis), reading every weight once for all rows. On
CUDA that step is captured in a CUDA graph per batch size (and adapter state), as the one-row step is. A row that
stops keeps stepping (its results are dropped) until every row has stopped or max_new_tokens is reached: the graph's
shape stays fixed, and the rows are not moved around.

Rows may differ in adapter state (base and tuned side by side): the adapter stays on and a (B, 1) mask of ones and
zeros multiplies each LoRA term (decode_step.Projection.add_lora), so a base row gets the base model's output exactly.

Each row's greedy tokens equal the one-row Decoder's: the per-row kernels are the same programs on the same data, and
on the CPU the references run row by row; only the dense products see B rows at once (F.linear / cuBLAS rather than
the matvec kernel), which can change the last bits of a logit in 16-bit types. With a seed each row samples with its
own generator seeded alike, so a row draws what a one-row reply with that seed draws.

Other paths (transformers' forward or generate: Gemma 2/3 sliding windows, kernels off) and a batched cache that does
not fit in memory decode the rows one after another through the one-row Decoder, said once in the log.
"""

from collections import deque
from collections.abc import Iterator, Sequence

import torch

from engine.chat.decode import CACHE_ROUND, Sampling, pick


class Rows:
    """The batched state of one Decoder's step: the rows cache's inputs and the CUDA graphs captured over it."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.step = decoder.step
        self.count = self.capacity = 0
        self.graphs: dict[tuple, tuple] = {}  # (rows, masked, adapter key) -> (CUDAGraph, logits it writes)
        self.ids = self.pos = self.mask = None

    def ensure(self, count: int, length: int) -> None:
        """Inputs and a cache for `count` rows of `length` positions (grown to the next CACHE_ROUND multiple)."""
        if count == self.count and length <= self.capacity:
            return
        self.graphs.clear()  # graphs point at the old cache's buffers
        self.capacity = -(-max(length, self.capacity if count == self.count else 0) // CACHE_ROUND) * CACHE_ROUND
        self.count = count
        device = self.step.device
        self.ids = torch.zeros(count, dtype=torch.long, device=device)
        self.pos = torch.zeros(count, dtype=torch.long, device=device)
        self.mask = torch.ones(count, 1, dtype=self.step.dtype, device=device)
        self.step.allocate(self.capacity, rows=count)

    def _step(self, masked: bool) -> torch.Tensor:
        logits = self.step.forward_rows(self.ids, self.pos, self.mask if masked else None)
        self.pos.add_(1)
        return logits

    def stepper(self, adapter: bool, masked: bool):
        """The batched step to run (a graph replay, or eager), with the adapter state set around it."""
        return self.decoder._stepper(adapter, lambda: self._step(masked), self.pos, self.graphs, (self.count, masked))


def _readback(tok: torch.Tensor):
    """A function returning `tok` (B, 1) as a list of ints; on CUDA the copy is enqueued now (see Decoder._readback)."""
    if tok.device.type != "cuda":
        return lambda: tok.view(-1).tolist()
    host = torch.empty(tok.numel(), dtype=torch.long, pin_memory=True)
    host.copy_(tok.view(-1), non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def read() -> list[int]:
        done.synchronize()
        return host.tolist()

    return read


def batch(
    decoder,
    prompts: Sequence,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    stop_ids=(),
    adapter: bool | Sequence[bool] = True,
    keep_stop: bool = False,
) -> Iterator[list[int | None]]:
    """Decode B replies at once with `decoder` (an engine.chat.decode.Decoder); yield one list of B entries per step:
    a row's new token, or None once the row has ended (or, where rows run one after another, while it is not its turn).

    Args:
        decoder: the model's Decoder; it makes one generation at a time, batched or not.
        prompts: B prompts' token ids (lists or 1-D tensors), of any lengths.
        max_new_tokens: most tokens a row generates.
        sampling: how tokens are chosen (greedy by default); with a seed every row draws as a one-row reply
            with that seed would.
        stop_ids: token ids that end a row.
        adapter: False runs the base model alone; a list gives each row its own (base and tuned side by side).
        keep_stop: True yields the stop token that ends a row (GRPO trains on it); False drops it, as `tokens` does.
    """
    adapters = [bool(a) for a in adapter] if isinstance(adapter, list | tuple) else [bool(adapter)] * len(prompts)
    if len(adapters) != len(prompts):
        raise ValueError(f"batch: {len(prompts)} prompts but {len(adapters)} adapter states")
    if max_new_tokens <= 0 or not prompts:
        return
    with decoder._exclusive(all(adapters)):  # a base row unmerges merged adapters
        yield from _tokens(decoder, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop)


def _tokens(decoder, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop):
    if decoder.path != "step":
        why = f"the {decoder.path} path has no batched step; only our decode step has"
        yield from _one_by_one(decoder, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop, why)
        return
    prompts = [torch.as_tensor(p, dtype=torch.long).view(-1) for p in prompts]
    rows = decoder._rows
    if rows is None or rows.step is not decoder.step:
        rows = decoder._rows = Rows(decoder)
    try:
        rows.ensure(len(prompts), max(p.numel() for p in prompts) + max_new_tokens)
    except torch.OutOfMemoryError:
        decoder._rows = None
        decoder.step.rows = None
        torch.cuda.empty_cache()
        why = f"no memory for a cache of {len(prompts)} rows"
        yield from _one_by_one(decoder, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop, why)
        return
    yield from _batched(decoder, rows, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop)


def _one_by_one(decoder, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop, why):
    """The rows one after another through the one-row decoder; a step's list holds the current row's token only."""
    decoder.log(f"decode: batch of {len(prompts)} decoded one row after another ({why})")
    stop = {int(i) for i in stop_ids}
    run = decoder._generated if decoder.path == "generate" else decoder._tokens
    for b, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        for token in run(prompt, max_new_tokens, sampling, () if keep_stop else stop, adapter):
            yield [token if i == b else None for i in range(len(prompts))]
            if token in stop:
                break


def _prefill(decoder, rows: Rows, prompts, adapters) -> torch.Tensor:
    """Each distinct (prompt, adapter state) run once into its first row's cache, copied to the rows that share it;
    each row's position set to its prompt's length. The last logits (B, V)."""
    step, device = decoder.step, decoder.device
    first: dict[tuple, int] = {}
    logits = []
    for b, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        key = (tuple(prompt.tolist()), adapter)
        if key in first:
            a = first[key]
            step.rows.k[:, b].copy_(step.rows.k[:, a])
            step.rows.v[:, b].copy_(step.rows.v[:, a])
            logits.append(logits[a])
            continue
        first[key] = b
        with decoder._adapter(adapter):
            logits.append(step.prefill_row(prompt.to(device), b))
    rows.pos.copy_(torch.tensor([p.numel() for p in prompts], device=device))
    return torch.stack(logits)


def _batched(decoder, rows: Rows, prompts, max_new_tokens, sampling, stop_ids, adapters, keep_stop):
    stop = {int(i) for i in stop_ids}
    count = len(prompts)
    adapter, masked = any(adapters), any(adapters) and not all(adapters)  # mixed rows: adapter on, terms masked
    with torch.inference_mode():
        step = rows.stepper(adapter, masked)  # captured before the prompts: the warm-ups write the caches
        rows.mask.copy_(torch.tensor(adapters, dtype=rows.mask.dtype).view(count, 1))
        logits = _prefill(decoder, rows, prompts, adapters)
        generator = None
        if sampling.seed is not None and sampling.temperature > 0:
            generator = [torch.Generator(device=decoder.device).manual_seed(sampling.seed) for _ in range(count)]
        seen = None
        if sampling.repetition_penalty != 1.0:
            seen = torch.zeros(logits.shape, dtype=torch.bool, device=decoder.device)
            for b, prompt in enumerate(prompts):
                seen[b, prompt.to(decoder.device)] = True
        tok = pick(logits, sampling, seen, generator)
        read = _readback(tok)
    done = [False] * count
    for i in range(max_new_tokens):
        more = i + 1 < max_new_tokens
        with torch.inference_mode():
            if more:  # enqueue the next step before reading these tokens back: the device stays busy
                rows.ids.copy_(tok.view(count))
                if seen is not None:
                    seen.scatter_(1, tok, True)
                logits = step()
        out: list[int | None] = []
        for b, t in enumerate(read()):
            if done[b]:
                out.append(None)
                continue
            if t in stop:
                done[b] = True
                out.append(t if keep_stop else None)
            else:
                out.append(t)
        if any(t is not None for t in out):
            yield out
        if all(done):
            return
        if more:
            with torch.inference_mode():
                tok = pick(logits, sampling, seen, generator)
                read = _readback(tok)


def split_rows(steps: Iterator[list[int | None]], count: int) -> list[Iterator[int]]:
    """`count` iterators over the tokens of each row of `batch`'s `steps`, each pulling shared steps as it needs them
    (the other rows' tokens wait in buffers). A row has ended once it has had a token and a step then has none for
    it (batched: the row stopped; row after row: the next row's turn has come)."""
    buffers: list[deque] = [deque() for _ in range(count)]
    started, ended = [False] * count, [False] * count

    def pull() -> bool:
        step = next(steps, None)
        if step is None:
            ended[:] = [True] * count
            return False
        for b, token in enumerate(step):
            if token is None:
                ended[b] = ended[b] or started[b]
            else:
                started[b] = True
                buffers[b].append(token)
        return True

    def row(b: int) -> Iterator[int]:
        while buffers[b] or (not ended[b] and pull()) or buffers[b]:
            if buffers[b]:
                yield buffers[b].popleft()

    return [row(b) for b in range(count)]
