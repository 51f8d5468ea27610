"""Batch-1 decoding of our own: a prompt pass, then one-token steps over a static KV cache, on CUDA replayed from a
CUDA graph captured once per cache size (and per adapter state).

Three paths, decided once per Decoder and logged with the reason:

- "step" (llama, mistral, qwen2, qwen3): engine/chat/decode_step.py, the layer math written out over our kernels (about
9
  launches a layer where transformers' forward makes ~38) and a KV cache of our own; q/k/v and gate/up run as one
  matvec each; LoRA adapters stay unmerged. The prompt runs through the same code as one batch (torch SDPA for its
  attention) and fills the cache.
- "forward" (any other static-cache model, and every model under `TUNESMITH_DECODE_KERNELS=0`): the model's own
  transformers forward over a transformers StaticCache. With `TUNESMITH_DECODE_KERNELS=0` it is exactly transformers'
  kernels, so greedy output is bit-equal to transformers generate; otherwise a GQA model's decode steps use
  `gqa_decode_attention` (below).
- "generate" (a cache with sliding-window layers: Gemma 2 and 3, Mistral with a window): transformers generate itself,
  streamed token by token. Those cache layers keep their position in a Python int, so no step over them can be
  captured, and generate is the reference for them anyway.

Why a manual CUDA graph and not torch.compile: capturing the step costs a few eager steps (one to warm up the
kernels, two on a side stream, one captured), where compiling transformers' static-cache step takes tens of seconds
(48 s first call for Qwen3-4B on an H100). At batch 1 the step is bound by reading the weights once; the graph removes
the Python and launch overhead of its hundreds of kernels. A replay needs no host value: the token and its position
live in device tensors that the step reads and advances itself (transformers' StaticCache, on the "forward" path, keeps
its write position on the device too and builds the causal mask from it).

`gqa_decode_attention` ("forward" path): with a bool mask over the static cache, transformers' sdpa path copies K and
V once per query head of a group (repeat_kv: 4x the cache for Qwen3-4B, every step). For one query token the g query
heads that share a KV head are instead laid out as g query rows against that head, the same arithmetic with no copy.
It is a named attention implementation registered with transformers and switched on for our decode steps only.

Which execution runs is decided once per Decoder and logged too: `TUNESMITH_DECODE=graph|eager` wins; otherwise
graphs on CUDA and eager on the CPU; a capture that fails falls back to eager for the Decoder's lifetime.

Sampling is done on the float32 logits in torch with the transformers order (repetition penalty, temperature, top-k,
top-p, min-p) and no host sync: a sample is `argmax(p / E)` with E ~ Exp(1) i.i.d. (the exponential race), which
draws token i with probability p_i. The loop keeps one step in flight: it enqueues step i+1 before it reads token i
back, so the GPU never waits for the host to decode text or check stops.

B replies at once (GRPO's samples, the Chat tab's compare) run on the same step with a cache per row:
engine/chat/decode_batch.py.

A little over 500 lines: the three paths share one Decoder (cache, sampling, graph capture); the step's own layer
math is engine.chat.decode_step's.
"""

import contextlib
import copy
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

MODES = ("graph", "eager")
DECODE_ATTENTION = "tunesmith_gqa_decode"
CACHE_ROUND = 256  # cache length granularity: a longer chat re-captures at the next multiple (~0.5 s on a 4B model)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 is greedy (the other filters then do nothing)."""

    temperature: float = 0.0
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    repetition_penalty: float = 1.0  # divide positive (multiply negative) logits of tokens already in the context
    seed: int | None = None  # None draws from torch's global generator


def choose_mode(device: torch.device) -> tuple[str, str]:
    """("graph" or "eager", why): TUNESMITH_DECODE wins, else graphs on CUDA and eager elsewhere."""
    wanted = os.environ.get("TUNESMITH_DECODE", "").strip().lower()
    if wanted:
        if wanted not in MODES:
            raise ValueError(f"TUNESMITH_DECODE={wanted!r}: use one of {', '.join(MODES)}")
        if wanted == "graph" and device.type != "cuda":
            return "eager", f"TUNESMITH_DECODE=graph but the model is on {device.type}: eager steps"
        return wanted, f"TUNESMITH_DECODE={wanted}"
    if device.type == "cuda":
        return "graph", "CUDA: decode step captured in a CUDA graph over a static KV cache"
    return "eager", f"{device.type}: eager decode steps over a static KV cache"


def gqa_decode_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """SDPA for one query token under grouped-query attention, without repeating K/V per query head.

    query (B, H, 1, D) with H = Hkv * g is viewed as (B, Hkv, g, D): head h = k * g + j reads KV head k, as repeat_kv
    pairs them. Anything else (prefill, no GQA, float masks, extras) goes to transformers' sdpa_attention_forward.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    hk = key.shape[1]
    plain = attention_mask is None or attention_mask.dtype != torch.bool or kwargs.get("dropout", 0.0) != 0.0
    if q != 1 or h == hk or plain or kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, hk, h // hk, d), key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(b, 1, h, d), None


def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, gqa_decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


def static_cache_blocker(config) -> str | None:
    """What keeps a static-cache step from `config`'s cache: the first StaticCache layer type that is not a plain
    StaticLayer (a sliding window), or that there is no StaticCache for it; None when there is none."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    try:
        cache = StaticCache(config=config, max_cache_len=1)  # layers allocate on their first write: this is cheap
    except (ValueError, TypeError, AttributeError, NotImplementedError) as e:
        return f"no static cache ({e.__class__.__name__}: {e})"
    kinds = [type(layer).__name__ for layer in cache.layers if type(layer) is not StaticLayer]
    return f"its cache has {kinds[0]} layers, whose position is a host int" if kinds else None


def choose_path(net, kernels: bool | None) -> tuple[str, str]:
    """("step", "forward" or "generate", why) for a transformers causal LM `net` (see the module docstring).

    `kernels` False, or TUNESMITH_DECODE_KERNELS=0, keeps transformers' own forward; True or None uses our step where
    the family has one."""
    from engine.chat.decode_step import unsupported

    env = os.environ.get("TUNESMITH_DECODE_KERNELS", "").strip()
    if env == "0" or kernels is False:
        why = "TUNESMITH_DECODE_KERNELS=0" if env == "0" else "kernels=False"
        why += ": transformers' own forward, bit-equal to transformers generate"
    else:
        why = unsupported(net)
        if why is None:
            return "step", f"our decode step for {net.config.model_type}"
    blocker = static_cache_blocker(net.config)
    if blocker is not None:
        return "generate", f"transformers generate ({why}; {blocker})"
    return "forward", f"transformers' forward over a static cache ({why})"


def pick(logits: torch.Tensor, s: Sampling, seen: torch.Tensor | None, generator=None) -> torch.Tensor:
    """Next token (shape (1,), on the logits' device) from float32 `logits` (V,); `seen` marks context tokens.

    Batched: logits and seen (B, V) -> (B, 1), row by row; `generator` may then be a list of one generator per row
    (each row draws what a one-row pick with its generator would)."""
    if seen is not None and s.repetition_penalty != 1.0:
        p = s.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    if s.temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        # as transformers: drop the ascending-sorted head whose mass is <= 1 - top_p, always keeping the top token
        sorted_logits, order = torch.sort(logits)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - s.top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if s.min_p > 0:
        probs = probs.masked_fill(probs < s.min_p * probs.amax(-1, keepdim=True), 0.0)
    if isinstance(generator, list):
        race = torch.stack(
            [torch.empty_like(row).exponential_(generator=g) for row, g in zip(probs, generator, strict=True)]
        )
    else:
        race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(-1, keepdim=True)


class Decoder:
    """Generates token ids for one sequence at a time from a causal LM (a PeftModel's adapters stay unmerged).

    Args:
        model: a transformers causal LM, or a PeftModel over one (LoRA layers are applied on the fly).
        log: called with one line saying which decode path runs and why.
        mode: "graph" or "eager" to force a path (tests); None decides with `choose_mode`.
        kernels: False keeps transformers' own forward (bit-equal to transformers generate), as
            TUNESMITH_DECODE_KERNELS=0 does; True or None runs our decode step where the family has one
            (`choose_path`).
        warmup: engine.chat.warmup's background compile of the step's kernels (started before the weights loaded),
            joined, and logged, before the first reply, so before any capture; None: nothing to wait for.
    """

    def __init__(self, model, log=print, mode: str | None = None, kernels: bool | None = None, warmup=None):
        self.model = model
        self.warmup = warmup
        self.net = model.get_base_model() if hasattr(model, "disable_adapter") else model
        self.device = next(model.parameters()).device
        if mode is None:
            self.mode, reason = choose_mode(self.device)
        else:
            self.mode, reason = mode, "forced by the caller"
        self.log = log
        self.path, why = choose_path(self.net, kernels)
        self.step = None
        self.attention = self.net.config._attn_implementation
        if self.path == "step":
            from engine.chat.decode_step import DecodeStep

            self.step = DecodeStep(self.net)
            why += f" ({self.step.describe()})"
        elif (
            self.path == "forward"
            and kernels is not False
            and os.environ.get("TUNESMITH_DECODE_KERNELS", "").strip() != "0"
        ):
            cfg = self.net.config.get_text_config(decoder=True)
            heads = cfg.num_attention_heads
            kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
            if self.attention == "sdpa" and kv_heads < heads:
                _register_decode_attention()
                self.attention = DECODE_ATTENTION
                why += f"; GQA decode attention ({heads // kv_heads} query heads per KV head, no repeat_kv copy)"
        if self.path == "generate":
            self.log(f"decode: {why}")
        else:
            self.log(f"decode: {self.mode} ({reason}); {why}")
        self._cache = None
        self._capacity = 0
        self._graphs: dict[tuple, tuple] = {}  # (adapter on, active adapter) -> (CUDAGraph, logits it writes)
        self._ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._start = torch.zeros(1, dtype=torch.long, device=self.device)  # where a prompt starts: always 0
        self._busy = False  # one generation at a time: every generation shares the one cache and graph
        self._rows = None  # engine.chat.decode_batch.Rows: the batched cache and graphs, made at the first batch

    def _adapter(self, on: bool):
        """peft's disable_adapter() when `on` is False and the model has adapters; else nothing."""
        if on or not hasattr(self.model, "disable_adapter"):
            return contextlib.nullcontext()
        return self.model.disable_adapter()

    def _key(self, adapter: bool) -> tuple:
        return adapter, getattr(self.model, "active_adapter", None)

    def _refresh(self, adapter: bool) -> None:
        """Rebuild the step (and drop its graphs) when the model's weights or adapters changed since it was built.

        A merged LoRA layer asked to decode without its adapter is unmerged first, as PEFT's own forward does."""
        if self.step is None:
            return
        from engine.chat.decode_step import DecodeStep, signature

        if not adapter:
            for module in self.net.modules():
                if hasattr(module, "lora_A") and getattr(module, "merged", False):
                    module.unmerge()
        if signature(self.net) == self.step.signature:
            return
        self._graphs.clear()
        self._capacity = 0
        self.path, why = choose_path(self.net, kernels=None)
        if self.path != "step":  # e.g. weights now streamed from host RAM: the model's own forward knows how
            self.step = None
            self.log(f"decode: {why} from now on")
            return
        self.step = DecodeStep(self.net)
        self.log(f"decode: the model's weights or adapters changed; step rebuilt ({self.step.describe()})")

    def _ensure_cache(self, length: int) -> None:
        """A cache of at least `length` positions. The capacity is counted only once its cache is allocated: after an
        allocation that ran out of memory there is none, and the next reply allocates again."""
        if length <= self._capacity:
            if self._cache is not None:
                self._cache.reset()
            return
        self._graphs.clear()  # graphs point at the old cache's buffers
        self._cache, self._capacity = None, 0
        capacity = -(-length // CACHE_ROUND) * CACHE_ROUND
        if self.path == "step":
            self.step.allocate(capacity)
        else:
            from transformers import StaticCache

            self._cache = StaticCache(config=self.net.config, max_cache_len=capacity)
        self._capacity = capacity

    def _fallback(self, why: str) -> None:
        self.mode = "eager"
        self._graphs.clear()
        self.log(f"decode: eager from now on ({why})")

    @contextlib.contextmanager
    def _decode_attention(self):
        """Our decode attention for the enclosed calls only (the config is the model's, shared with other callers)."""
        config, before = self.net.config, self.net.config._attn_implementation
        config._attn_implementation = self.attention
        try:
            yield
        finally:
            config._attn_implementation = before

    def _step(self) -> torch.Tensor:
        """One eager decode step: feed `_ids` at `_pos`, advance `_pos`, return float32 logits (V,)."""
        if self.path == "step":
            logits = self.step.forward(self._ids.view(1), self._pos)
            self._pos.add_(1)
            return logits
        with self._decode_attention():
            out = self.net(
                input_ids=self._ids,
                position_ids=self._pos,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self._pos.add_(1)
        return out.logits[0, -1].float()

    def _capture(self, adapter: bool, run, pos: torch.Tensor):
        """Capture `run` (a step that advances `pos`) in a CUDA graph (warm-ups on a side stream first, as
        torch.cuda.graphs asks)."""
        pos.zero_()  # the warm-ups write positions 0-3 of the cache, which the next prompt overwrites
        with self._adapter(adapter):
            run()  # compiles the kernels, and allocates the StaticCache's buffers outside the graph's pool
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    run()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logits = run()
        if self._cache is not None:
            self._cache.reset()
        return graph, logits

    def _stepper(self, adapter: bool, run=None, pos=None, graphs=None, key=()):
        """The decode step to run: a graph replay, or the eager step (with the adapter state set around it).
        engine.chat.decode_batch passes its batched step `run`, its positions `pos` and its `graphs` (by `key`)."""
        run, pos = run or self._step, pos if pos is not None else self._pos
        graphs = self._graphs if graphs is None else graphs
        if self.mode == "graph":
            key = (*key, *self._key(adapter))
            if key not in graphs:
                try:
                    graphs[key] = self._capture(adapter, run, pos)
                except Exception as e:  # noqa: BLE001  any capture failure means the eager path, logged once
                    self._fallback(f"CUDA graph capture failed: {e.__class__.__name__}: {e}")
            if self.mode == "graph":
                graph, logits = graphs[key]

                def replay():
                    graph.replay()
                    return logits

                return replay

        def eager():
            with self._adapter(adapter):
                return run()

        return eager

    def _prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        n = prompt.shape[-1]
        if self.path == "step":
            logits = self.step.forward(prompt.view(n), self._start)
            self._pos.fill_(n)
            return logits
        out = self.net(
            input_ids=prompt.view(1, n),
            position_ids=torch.arange(n, device=self.device).view(1, n),
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._pos.fill_(n)
        return out.logits[0, -1].float()

    def _readback(self, tok: torch.Tensor):
        """A function returning `tok` as an int. On CUDA the copy to pinned memory is enqueued now and waited for by
        an event, so reading it does not wait for the steps enqueued after it (a plain int(tok) would)."""
        if self.device.type != "cuda":
            return lambda: int(tok)
        host = torch.empty(1, dtype=torch.long, pin_memory=True)
        host.copy_(tok.view(1), non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def read() -> int:
            done.synchronize()
            return int(host[0])

        return read

    def tokens(
        self,
        prompt_ids,
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        stop_ids=(),
        adapter: bool = True,
    ) -> Iterator[int]:
        """Yield generated token ids one by one, ending before a token in `stop_ids` or after max_new_tokens.

        Args:
            prompt_ids: the prompt's token ids (a list or a 1-D / (1, T) tensor).
            max_new_tokens: most tokens to generate.
            sampling: how tokens are chosen (greedy by default).
            stop_ids: token ids that end the reply (not yielded).
            adapter: False runs the base model alone (peft's disable_adapter) from the same loaded weights.
        """
        if max_new_tokens <= 0:
            return
        with self._exclusive(adapter):
            run = self._generated if self.path == "generate" else self._tokens
            yield from run(prompt_ids, max_new_tokens, sampling, stop_ids, adapter)

    @contextlib.contextmanager
    def _exclusive(self, adapter: bool):
        """The decoder for one generation at a time (they share the caches and graphs), refreshed for `adapter`."""
        if self._busy:
            raise RuntimeError(
                "This model is already generating a reply; finish (or close) that stream before starting another."
            )
        self._busy = True
        try:
            if self.warmup is not None:  # its compiles must be done before this reply's kernels launch
                self.warmup.join(self.log)
                self.warmup = None
            self._refresh(adapter)
            yield
        finally:
            self._busy = False

    def _tokens(self, prompt_ids, max_new_tokens, sampling, stop_ids, adapter) -> Iterator[int]:
        stop = {int(i) for i in stop_ids}
        with torch.inference_mode():
            prompt = torch.as_tensor(prompt_ids, dtype=torch.long).to(self.device).view(-1)
            self._ensure_cache(prompt.numel() + max_new_tokens)
            step = self._stepper(adapter)
            with self._adapter(adapter):
                logits = self._prefill(prompt)
            generator = None
            if sampling.seed is not None and sampling.temperature > 0:
                generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
            seen = None
            if sampling.repetition_penalty != 1.0:
                seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=self.device)
                seen[prompt] = True
            tok = pick(logits, sampling, seen, generator)
            read = self._readback(tok)
        for i in range(max_new_tokens):
            more = i + 1 < max_new_tokens
            with torch.inference_mode():
                if more:  # enqueue the next step before reading this token back: the device stays busy
                    self._ids.copy_(tok.view(1, 1))
                    if seen is not None:
                        seen.index_fill_(0, tok, True)
                    logits = step()
            t = read()
            if t in stop:
                return
            yield t
            if more:
                with torch.inference_mode():
                    tok = pick(logits, sampling, seen, generator)
                    read = self._readback(tok)

    def _generated(self, prompt_ids, max_new_tokens, sampling, stop_ids, adapter) -> Iterator[int]:
        """The "generate" path: transformers generate on a worker thread, its tokens passed on as they come; closing
        this iterator stops generate at its next token."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        stop = {int(i) for i in stop_ids}
        ids = torch.as_tensor(prompt_ids, dtype=torch.long).to(self.device).view(1, -1)
        config = copy.deepcopy(self.model.generation_config)
        sample = sampling.temperature > 0
        config.update(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            eos_token_id=sorted(stop) or None,  # generate stops on them; they are not passed on
            pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
            repetition_penalty=sampling.repetition_penalty,
        )
        if sample:
            top_k, min_p = sampling.top_k or None, sampling.min_p or None
            config.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=top_k, min_p=min_p)
        out: queue.Queue = queue.Queue()
        halt = threading.Event()
        finished = object()

        class Tokens(BaseStreamer):
            def __init__(self):
                self.prompt = True  # generate puts the prompt first

            def put(self, value):
                if self.prompt:
                    self.prompt = False
                    return
                for token in value.reshape(-1).tolist():
                    out.put(token)

            def end(self):
                pass

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool, device=input_ids.device)

        def work():
            try:
                with torch.inference_mode(), self._adapter(adapter), self._seeded(sampling):
                    self.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        generation_config=config,
                        streamer=Tokens(),
                        stopping_criteria=StoppingCriteriaList([Halt()]),
                    )
            except BaseException as e:  # noqa: BLE001  handed to the reading thread, which raises it
                out.put(e)
            finally:
                out.put(finished)

        worker = threading.Thread(target=work, name="tunesmith-generate", daemon=True)
        worker.start()
        try:
            for _ in range(max_new_tokens):
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                if item is finished or item in stop:
                    return
                yield item
        finally:
            halt.set()
            worker.join()

    @contextlib.contextmanager
    def _seeded(self, sampling: Sampling):
        """torch's global generator seeded with `sampling.seed` for the enclosed calls and restored after."""
        if sampling.seed is None or sampling.temperature <= 0:
            yield
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(sampling.seed)
            yield

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, adapter: bool = True) -> torch.Tensor:
        """Greedy: (1, T) -> (1, T + max_new_tokens), exactly max_new_tokens new tokens (no stop token)."""
        new = list(self.tokens(input_ids, max_new_tokens, adapter=adapter))
        tail = torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, tail], dim=1)
