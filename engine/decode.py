"""Batch-1 decoding of our own: eager prefill, then one-token steps over a static KV cache, on CUDA replayed from a
CUDA graph captured once per cache size (and per adapter state).

Why a manual graph and not torch.compile: the step is the model's own eager forward (PEFT LoRA layers included, so
base and fine-tuned share one copy of the weights), and capturing it costs a few eager forwards (~4 for the first
call: one to allocate the cache, two warm-ups, one captured), expected well under a second for a 4B model (not yet
measured), where compiling the same step with mode="reduce-overhead" takes tens of seconds (transformers' own
static-cache generate: 48 s first call on an H100). At batch 1 the step is bound by reading the weights once; the
graph removes the Python and launch overhead of the thousand-odd kernels per token, which is what makes eager
decoding slow (transformers: 35 tok/s).

The step is graph-safe because transformers' StaticCache keeps its write position in a device tensor that the step
itself advances (`cumulative_length.add_`), the causal mask is built on the device from it, and our position buffer is
advanced inside the step too: a replay needs no host value. Caches with sliding-window layers keep a Python int and
are not, so those models decode eagerly (with the reason logged).

Attention in the decode step: with a bool mask over the static cache, transformers' sdpa path copies K and V once per
query head of a group (repeat_kv: 4x the cache for Qwen3-4B, written and read again every step). For one query token
the g query heads that share a KV head are instead laid out as g query rows against that head (`gqa_decode_attention`),
the same arithmetic with no copy. It is a named attention implementation registered with transformers and switched
on for our decode steps only (prefill and everyone else's calls keep "sdpa").

Kernels in the step: at batch 1 the step's time beyond the weight read is per-kernel overhead (~2 us each, even
replayed), and an eager RMSNorm is ~8 kernels, 4 per Qwen3 layer (2 on Llama). On CUDA the Llama/Qwen/Mistral RMSNorm
instances are swapped for drop-ins over kernels/rms_norm.py (one kernel each; within one ulp of transformers' rounding,
see that file), keeping the original as `base_layer` so `unfuse_rms_norms` undoes it. `TUNESMITH_DECODE_KERNELS=0`
keeps transformers' modules and its sdpa attention (and so bit-equality with transformers generate).

Which path runs is decided once per Decoder and logged: `TUNESMITH_DECODE=graph|eager` wins; otherwise graphs on
CUDA and eager on the CPU; a capture that fails falls back to eager for the Decoder's lifetime.

Sampling is done on the float32 logits in torch with the transformers order (repetition penalty, temperature, top-k,
top-p, min-p) and no host sync: a sample is `argmax(p / E)` with E ~ Exp(1) i.i.d. (the exponential race), which
draws token i with probability p_i. The loop keeps one step in flight: it enqueues step i+1 before it reads token i
back, so the GPU never waits for the host to decode text or check stops.
"""

import contextlib
import os
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


NORM_CLASSES = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")  # y = w * x / rms(x), no offset


class FusedRMSNorm(torch.nn.Module):
    """A transformers RMSNorm instance computed by kernels/rms_norm.py; the original stays as `base_layer`."""

    def __init__(self, base_layer):
        super().__init__()
        self.base_layer = base_layer
        self.eps = float(getattr(base_layer, "variance_epsilon", getattr(base_layer, "eps", 1e-6)))

    def get_base_layer(self):
        """The original norm: PEFT's unload() treats modules with a base_layer as wrappers and asks for this."""
        return self.base_layer

    @property
    def weight(self):
        """The wrapped norm's weight, for code that reads `norm.weight` (as it would on the original module)."""
        return self.base_layer.weight

    def forward(self, hidden_states):
        from kernels.rms_norm import rms_norm

        return rms_norm(hidden_states, self.base_layer.weight, self.eps)


def fuse_rms_norms(model) -> list[str]:
    """Swap every Llama/Qwen/Mistral RMSNorm instance in `model` for a FusedRMSNorm; returns the names swapped."""
    names = [n for n, m in model.named_modules() if type(m).__name__ in NORM_CLASSES and n]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, FusedRMSNorm(getattr(owner, attr)))
    return names


def unfuse_rms_norms(model) -> int:
    """Put the original modules back; returns how many."""
    restored = 0
    for name in [n for n, m in model.named_modules() if isinstance(m, FusedRMSNorm)]:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        module = getattr(owner, attr)
        if isinstance(module, FusedRMSNorm):  # PEFT's unload() may already have put the original back
            setattr(owner, attr, module.base_layer)
            restored += 1
    return restored


def choose_kernels(device: torch.device) -> tuple[bool, str]:
    """(swap RMSNorms for the Triton kernel?, why): TUNESMITH_DECODE_KERNELS=0/1 wins, else on CUDA with Triton."""
    wanted = os.environ.get("TUNESMITH_DECODE_KERNELS", "").strip()
    if wanted in ("0", "1"):
        return wanted == "1" and device.type == "cuda", f"TUNESMITH_DECODE_KERNELS={wanted}"
    if device.type != "cuda":
        return False, "transformers' RMSNorm (kernels only on CUDA)"
    from kernels import dispatch

    if dispatch.backend() != "triton":
        return False, f"transformers' RMSNorm (kernels: {dispatch.REASON})"
    return True, "RMSNorm on kernels/rms_norm.py"


def pick(logits: torch.Tensor, s: Sampling, seen: torch.Tensor | None, generator=None) -> torch.Tensor:
    """Next token (shape (1,), on the logits' device) from float32 `logits` (V,); `seen` marks context tokens."""
    if seen is not None and s.repetition_penalty != 1.0:
        p = s.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    if s.temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        # as transformers: drop the ascending-sorted head whose mass is <= 1 - top_p, always keeping the top token
        sorted_logits, order = torch.sort(logits)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - s.top_p
        drop[-1] = False
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if s.min_p > 0:
        probs = probs.masked_fill(probs < s.min_p * probs.max(), 0.0)
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(-1, keepdim=True)


class Decoder:
    """Generates token ids for one sequence at a time from a causal LM (a PeftModel's adapters stay unmerged).

    Args:
        model: a transformers causal LM, or a PeftModel over one (LoRA layers are applied on the fly).
        log: called with one line saying which decode path runs and why.
        mode: "graph" or "eager" to force a path (tests); None decides with `choose_mode`.
        kernels: swap RMSNorm instances for the Triton kernel (True/False); None decides with `choose_kernels`.
            False (or TUNESMITH_DECODE_KERNELS=0) also keeps transformers' sdpa in the decode step, so the step
            runs exactly transformers' kernels.
    """

    def __init__(self, model, log=print, mode: str | None = None, kernels: bool | None = None):
        self.model = model
        self.net = model.get_base_model() if hasattr(model, "disable_adapter") else model
        self.device = next(model.parameters()).device
        if mode is None:
            self.mode, reason = choose_mode(self.device)
        else:
            self.mode, reason = mode, "forced by the caller"
        self.log = log
        cfg = self.net.config.get_text_config(decoder=True)
        heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.attention = self.net.config._attn_implementation
        own = kernels is not False and os.environ.get("TUNESMITH_DECODE_KERNELS", "").strip() != "0"
        if own and self.attention == "sdpa" and kv_heads < heads:
            _register_decode_attention()
            self.attention = DECODE_ATTENTION
            reason += f"; GQA decode attention ({heads // kv_heads} query heads per KV head, no repeat_kv copy)"
        fuse, why = choose_kernels(self.device) if kernels is None else (kernels, "forced by the caller")
        if fuse:
            why += f": {len(fuse_rms_norms(self.net))} modules swapped"
        self.log(f"decode: {self.mode} ({reason}); {why}")
        self._cache = None
        self._capacity = 0
        self._graphs: dict[tuple, tuple] = {}  # (adapter on, active adapter) -> (CUDAGraph, logits it writes)
        self._ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._busy = False  # one sequence at a time: every generation shares the one cache and graph

    def _adapter(self, on: bool):
        """peft's disable_adapter() when `on` is False and the model has adapters; else nothing."""
        if on or not hasattr(self.model, "disable_adapter"):
            return contextlib.nullcontext()
        return self.model.disable_adapter()

    def _key(self, adapter: bool) -> tuple:
        return adapter, getattr(self.model, "active_adapter", None)

    def _ensure_cache(self, length: int) -> None:
        from transformers import StaticCache

        if length <= self._capacity:
            self._cache.reset()
            return
        self._graphs.clear()  # graphs point at the old cache's buffers
        self._cache = None
        self._capacity = -(-length // CACHE_ROUND) * CACHE_ROUND
        self._cache = StaticCache(config=self.net.config, max_cache_len=self._capacity)
        if self.mode == "graph":
            from transformers.cache_utils import StaticLayer

            sliding = [type(layer).__name__ for layer in self._cache.layers if type(layer) is not StaticLayer]
            if sliding:
                self._fallback(f"the cache has {sliding[0]} layers, whose position is a Python int")

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

    def _capture(self, adapter: bool):
        """Capture `_step` in a CUDA graph (warm-ups on a side stream first, as torch.cuda.graphs asks)."""
        with self._adapter(adapter):
            self._step()  # allocates the cache's buffers (lazily, on the first write) outside the graph's pool
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logits = self._step()
        self._cache.reset()  # the warm-ups wrote into it
        return graph, logits

    def _stepper(self, adapter: bool):
        """The decode step to run: a graph replay, or the eager step (with the adapter state set around it)."""
        if self.mode == "graph":
            key = self._key(adapter)
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._capture(adapter)
                except Exception as e:  # noqa: BLE001  any capture failure means the eager path, logged once
                    self._fallback(f"CUDA graph capture failed: {e.__class__.__name__}: {e}")
            if self.mode == "graph":
                graph, logits = self._graphs[key]

                def replay():
                    graph.replay()
                    return logits

                return replay

        def eager():
            with self._adapter(adapter):
                return self._step()

        return eager

    def _prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        n = prompt.shape[-1]
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
        if self._busy:
            raise RuntimeError(
                "This model is already generating a reply; finish (or close) that stream before starting another."
            )
        self._busy = True
        try:
            yield from self._tokens(prompt_ids, max_new_tokens, sampling, stop_ids, adapter)
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

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, adapter: bool = True) -> torch.Tensor:
        """Greedy: (1, T) -> (1, T + max_new_tokens), exactly max_new_tokens new tokens (no stop token)."""
        new = list(self.tokens(input_ids, max_new_tokens, adapter=adapter))
        tail = torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, tail], dim=1)
