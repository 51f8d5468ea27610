"""Compile the fast path's Triton kernels while the weights load, so the first training step does not.

Triton compiles a kernel the first time it is launched with a new specialization (its constexprs, the dtypes of its
pointers, whether each pointer is 16-byte aligned and whether each integer is 1 or a multiple of 16), then keeps it
in memory for the process (and on disk for later ones). A run's first step used to pay for all of them: on the H200
the identity run's first step took 11.8 s, 10.7 s of it the first CUDA-graph capture, mostly Triton compiling
(bench/README.md). None of those kernels depends on the weights, only on the model's config, the compute dtype and
the token count's class, so `start` launches each one, on tiny tensors laid out as engine.patching.modules' drop-ins
lay theirs out, in a background thread as soon as the run has read config.json; `Warmup.join` waits for it once the
model is ready and logs how long it took.

What it launches, forward and backward (`launches`): kernels.nf4's dequantization (a 4-bit base, and the 16-bit
copies engine.memory.weights.keep_dense makes while loading), kernels.rms_norm at the hidden size and, with per-head
q/k norms, at the head size, kernels.rope on the attention's (1, T, heads, head_dim) q and k, kernels.varlen_attention
for every window and soft cap the layers use, kernels.swiglu with the config's activation, and kernels.cross_entropy
at the vocabulary size with its shifted labels. The LoRA projections are cuBLAS matmuls: nothing to compile. T is 64:
every padding-free bucket is a multiple of 64 (engine.data.batching), so a bucket's token counts fall in the same
specialization classes as T's (kernels.rms_norm's backward does not specialize on the row counts, which vary with T).
tests/test_warmup.py checks that a patched model's padding-free step launches no specialization the warm-up missed.

No kernel here autotunes, so there is no tuning key to match. Not warmed: the mixture-of-experts kernels
(kernels.grouped_mm, kernels.nf4_grouped_mm), the chat's decoding kernels (engine.chat.warmup compiles those for a
chat, with this module's `Shapes` and `Warmup`), and the right-padded path's shapes (its token counts are any
length); whatever is missed compiles at its first launch, as before.

Compiling (MLIR passes, LLVM, ptxas) leaves the GIL to the loading thread most of the time: on this project's 2-core
development VM (shared, loaded), while Triton compiled the varlen dQ kernel for sm_90, a Python thread's 1 ms sleeps
took 1.2-1.6 ms on average in each compile stage, GIL included (0.12 s at worst). A failure in the warm-up is
logged and the run goes on (the first step then compiles what is missing, as before). The memory plan, made while
the warm-up runs, counts the allocator's reserved memory as the run's, so the warm-up's few MiB do not shrink it;
its tensors are freed, and the allocator's cache emptied and its cuBLAS workspace released, before `join` returns.
Its tensors hold constants, never random draws, so the run's generators (LoRA's initialisation draws while it runs)
do not move. On the CPU (and with TUNESMITH_KERNELS=reference) it does nothing: the fast path's kernels are GPU
kernels. TUNESMITH_KERNEL_WARMUP=0 turns it off, to measure a run without it on the same machine.
"""

import contextlib
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import NamedTuple

import torch

from engine.data.batching import SMALL_STEP
from kernels import dispatch
from kernels.cross_entropy import fused_linear_cross_entropy
from kernels.nf4 import nf4_dequantize
from kernels.rms_norm import rms_norm
from kernels.rope import rope
from kernels.swiglu import swiglu
from kernels.varlen_attention import varlen_attention

TOKENS = SMALL_STEP  # every padding-free bucket is a multiple of it
LOSS_WIDTH = 16  # the loss's hidden size here: only its matmuls (cuBLAS) see it, never the Triton kernel
# config.json's activation names -> kernels.swiglu's (engine.patching.modules.ACTIVATIONS maps transformers' classes
# for these names); any other activation keeps its MLP unfused
CONFIG_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
QK_NORM_TYPES = ("qwen3", "qwen3_moe", "gemma3", "gemma3_text")  # per-head q and k RMSNorms


@dataclass(frozen=True)
class Shapes:
    """What the fast path's kernels specialize on, from a config.json: the sizes, the family's extras, whether the
    base is 4-bit (and its absmax double-quantized) and how many segments a padding-free row holds."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    activation: str | None  # kernels.swiglu's name; None: the MLP stays unfused
    qk_norm: bool
    softcap: float  # attention logits' soft cap (Gemma 2), 0: none
    windows: tuple[int, ...]  # the attention windows the layers use, 0: none
    final_softcap: float  # the loss's logit soft cap, 0: none
    nf4: bool | None  # None: a 16-bit base; else whether the NF4 absmax is double-quantized
    segments: int  # cu_seqlens entries - 1: a micro-batch's examples plus the padding segment
    train_norms: bool = False  # full fine-tuning: the norms' weights get gradients (kernels.rms_norm's dw pass)

    @classmethod
    def from_config(cls, cfg: dict, method: str = "lora", batch_size: int = 8) -> "Shapes":
        text = cfg.get("text_config") or cfg
        kind = text.get("model_type") or cfg.get("model_type", "")
        heads = text["num_attention_heads"]
        act = text.get("hidden_activation") or text.get("hidden_act") or "silu"
        windows = {0}
        window = text.get("sliding_window") or 0
        layer_types = text.get("layer_types")
        if window and (
            "sliding_attention" in (layer_types or ())
            or (layer_types is None and text.get("use_sliding_window", True) is not False)
        ):
            windows.add(int(window))
            if layer_types is not None and "full_attention" not in layer_types:
                windows.discard(0)
        stored = (cfg.get("quantization_config") or {}).get("bnb_4bit_use_double_quant")
        return cls(
            hidden=text["hidden_size"],
            heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            intermediate=text.get("intermediate_size") or 0,
            vocab=text["vocab_size"],
            eps=float(text.get("rms_norm_eps") or 1e-6),
            activation=CONFIG_ACTIVATIONS.get(act),
            qk_norm=kind in QK_NORM_TYPES,
            softcap=float(text.get("attn_logit_softcapping") or 0.0),
            windows=tuple(sorted(windows)),
            final_softcap=float(text.get("final_logit_softcapping") or 0.0),
            nf4=(True if stored is None else bool(stored)) if method == "qlora" else None,
            segments=batch_size + 1,  # engine.data.batching.segment_slots - 1 for unpacked examples
            train_norms=method == "full",
        )


def _backward(outputs, leaves) -> None:
    """Differentiate `outputs` with contiguous gradients, as the layer around each drop-in hands it its gradient."""
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    torch.autograd.grad(outputs, leaves, [torch.full_like(y, 0.5) for y in outputs])


def _leaf(*shape, dtype, device, grad=True):
    return torch.full(shape, 0.25, dtype=dtype, device=device, requires_grad=grad)


def warm_nf4(s: Shapes, dtype, device) -> None:
    """kernels.nf4's dequantization of a bitsandbytes QuantState's fields (uint8 absmax codes when nested)."""
    shape, blocksize = (16, 256), 64  # 2,048 packed bytes: real weights' byte counts are multiples of 16 too
    blocks = shape[0] * shape[1] // blocksize
    packed = torch.full((shape[0] * shape[1] // 2, 1), 0x3C, dtype=torch.uint8, device=device)
    code = torch.linspace(-1, 1, 16, device=device)
    if s.nf4:
        absmax = torch.full((blocks,), 7, dtype=torch.uint8, device=device)
        absmax2, code2 = torch.ones(-(-blocks // 256), device=device), torch.linspace(-1, 1, 256, device=device)
        nf4_dequantize(packed, absmax, shape, dtype, blocksize, code, absmax2, code2, 0.5, 256)
    else:
        nf4_dequantize(packed, torch.ones(blocks, device=device), shape, dtype, blocksize, code)


def warm_norms(s: Shapes, dtype, device) -> None:
    """kernels.rms_norm over the hidden size (the layers' and the final norm) and per head (Qwen3/Gemma 3 q/k)."""
    shapes = [((1, TOKENS, s.hidden), s.hidden)]
    if s.qk_norm:
        shapes.append(((1, TOKENS, s.heads, s.head_dim), s.head_dim))
    for shape, width in shapes:
        x = _leaf(*shape, dtype=dtype, device=device)
        w = _leaf(width, dtype=dtype, device=device, grad=s.train_norms)  # frozen (LoRA): the backward without dw
        _backward(rms_norm(x, w, s.eps), (x, w) if s.train_norms else (x,))


def warm_attention(s: Shapes, dtype, device) -> None:
    """kernels.rope then kernels.varlen_attention as FastAttention runs them on a padding-free row of TOKENS tokens,
    for each window the layers use."""
    from engine.patching.modules import rope_tables

    d = s.head_dim
    cu = torch.full((s.segments + 1,), TOKENS, dtype=torch.int32, device=device)
    cu[0], cu[1] = 0, TOKENS // 2
    for window in s.windows:
        projected = [_leaf(1, TOKENS, n * d, dtype=dtype, device=device) for n in (s.heads, s.kv_heads, s.kv_heads)]
        q, k, v = (y.view(1, TOKENS, -1, d) for y in projected)
        cos, sin = (_leaf(1, TOKENS, d, dtype=dtype, device=device, grad=False) for _ in range(2))
        q, k = rope(q, k, *rope_tables(cos, sin))
        out = varlen_attention(
            q.view(TOKENS, -1, d), k.view(TOKENS, -1, d), v.reshape(TOKENS, -1, d), cu, d**-0.5, s.softcap, window
        )
        _backward(out.reshape(1, TOKENS, -1), projected)


def warm_mlp(s: Shapes, dtype, device) -> None:
    """kernels.swiglu on the gate and up projections' (1, T, intermediate) outputs."""
    if s.activation is None or not s.intermediate:
        return
    gate, up = (_leaf(1, TOKENS, s.intermediate, dtype=dtype, device=device) for _ in range(2))
    _backward(swiglu(gate, up, s.activation), (gate, up))


def warm_loss(s: Shapes, dtype, device) -> None:
    """kernels.cross_entropy as engine.patching.modules.fused_loss_forward calls it: hidden states without their last
    token, labels without their first (an 8-byte offset: an unaligned pointer, as in the run)."""
    hidden = _leaf(1, TOKENS, LOSS_WIDTH, dtype=dtype, device=device)
    weight = _leaf(s.vocab, LOSS_WIDTH, dtype=dtype, device=device, grad=False)
    labels = torch.arange(TOKENS, device=device).view(1, TOKENS) % s.vocab
    labels[0, :3] = -100
    loss = fused_linear_cross_entropy(hidden[:, :-1], weight, labels[:, 1:], softcap=s.final_softcap or None)
    _backward(loss, (hidden,))


def launches(s: Shapes) -> list:
    """The warm-up's steps in order, (name, function of (shapes, dtype, device)): the 4-bit dequantization first,
    which the load itself uses (engine.memory.weights.keep_dense)."""
    steps = [("nf4", warm_nf4)] if s.nf4 is not None else []
    return steps + [("rms_norm", warm_norms), ("attention", warm_attention), ("mlp", warm_mlp), ("loss", warm_loss)]


def warm(s: Shapes, dtype, device, stop=None, done=None) -> list[str]:
    """Run `launches(s)` on `device` in `dtype` now (in this thread); returns the names run (appended to `done` as each
    ends, when given). `stop()` True ends it between steps."""
    done = [] if done is None else done
    for name, step in launches(s):
        if stop is not None and stop():
            break
        step(s, dtype, device)
        done.append(name)
    return done


def warm_and_release(s: Shapes, dtype, device, stop=None, done=None) -> None:
    """`warm`, then (on CUDA) wait for its kernels, so that a failing one shows here and not in the run's first step,
    and hand its memory back before the memory plan counts it, whether it failed or not."""
    try:
        warm(s, dtype, device, stop, done)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        if device.type == "cuda":
            if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
                torch._C._cuda_clearCublasWorkspaces()  # the loss's matmuls gave this thread a cuBLAS workspace
            torch.cuda.empty_cache()


class Words(NamedTuple):
    """How a warm-up's log lines name what it warmed and who waits for it."""

    subject: str = "kernels"
    waiter: str = "the run"  # "... waited 0.4 s for it"
    ready: str = "the model was ready"  # "done before ..."
    first: str = "the first step"  # what compiles the kernels when the warm-up failed


class Warmup:
    """The background warm-up of one run: `join` waits for it and logs what it did (once).

    `work(shapes, dtype, device, stop, done)` does it (default: `warm_and_release`), appending what it did to `done`
    and ending early when `stop()` is True; `words` names it in the log (engine.chat.warmup's decode kernels)."""

    def __init__(self, shapes, dtype=None, device=None, note: str = "", work=None, words: Words = Words()):
        self.shapes, self.dtype, self.device = shapes, dtype, device
        self.note = note  # why there is nothing to do, when there is not
        self.work, self.words = work or warm_and_release, words
        self.error, self.trace = None, ""
        self.done: list[str] = []
        self.started = self.finished = time.perf_counter()
        self.stopping = False
        self.thread = None
        if shapes is not None:
            self.thread = threading.Thread(target=self._run, name="kernel-warmup", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
                self.work(self.shapes, self.dtype, self.device, lambda: self.stopping, self.done)
        except Exception as exc:  # noqa: BLE001  a warm-up must never fail the run: the first step compiles instead
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            self.trace = traceback.format_exc()
        finally:
            self.finished = time.perf_counter()

    def join(self, log=print, stop: bool = False) -> None:
        """Wait for the warm-up (`stop`: after its current step) and log how it went; the run goes on either way."""
        w = self.words
        if self.thread is None:
            if self.note:
                log(f"{w.subject}: no warm-up ({self.note})")
                self.note = ""
            return
        self.stopping = stop
        waited = time.perf_counter()
        self.thread.join()
        self.thread = None
        waited = time.perf_counter() - waited
        took = self.finished - self.started
        if stop:
            return
        if self.error is not None:
            log(self.trace.rstrip())
            log(f"{w.subject}: the warm-up failed after {took:.1f} s ({self.error}); {w.first} compiles the kernels")
            return
        when = f"{w.waiter} waited {waited:.1f} s for it" if waited > 0.05 else f"done before {w.ready}"
        log(f"{w.subject} compiled in {took:.1f} s while the weights loaded ({', '.join(self.done)}; {when})")


class CompileWatch:
    """The Triton kernels compiled (not found in the process's memory) from its creation until `stop`: the run's
    first step says whether the warm-up missed any (Triton's post-compile hook; a hook set before is kept)."""

    def __init__(self):
        import triton

        self.names: list[str] = []
        self.previous = triton.knobs.runtime.jit_post_compile_hook

        def hook(**kw):
            self.names.append(kw["fn"].name)
            return self.previous(**kw) if self.previous is not None else None

        triton.knobs.runtime.jit_post_compile_hook = hook

    def stop(self) -> str:
        """Stop counting; the log line that says what was compiled."""
        import triton

        triton.knobs.runtime.jit_post_compile_hook = self.previous
        if not self.names:
            return "kernels: the first step compiled no Triton kernel"
        return f"kernels: the first step compiled {len(self.names)} Triton kernel(s): {', '.join(self.names)}"


def start(spec, cfg: dict, device: str, dtype) -> Warmup:
    """Begin warming the kernels a run of `spec` will launch, for the model whose config.json is `cfg`, computing on
    `device` in `dtype`; a Warmup that does nothing (and says why when joined) where no Triton kernel will run."""
    if os.environ.get("TUNESMITH_KERNEL_WARMUP", "1") == "0":  # to measure a run without it, on the same machine
        return Warmup(None, note="TUNESMITH_KERNEL_WARMUP=0")
    if not spec.fast_path:
        return Warmup(None, note="the fast path is off")
    if not device.startswith("cuda"):
        return Warmup(None, note=f"the model loads to {device}, where the fast path's GPU kernels do not run")
    if dispatch.backend() != "triton":
        return Warmup(None, note=f"the kernels run their pure-torch references: {dispatch.REASON}")
    from engine.patching import family_for

    kind = cfg.get("model_type", "")  # what patch_model reads: a multimodal wrapper's own type has no fast path
    if family_for(kind) is None:
        return Warmup(None, note=f"no fast path for model type '{kind}'")
    if not torch.cuda.is_available():  # a GPU placement planned on a machine without one (the planner's refusals)
        return Warmup(None, note="no CUDA device is visible here")
    where = torch.device(device)
    if where.index is None:  # this thread's device (a rank pinned its own): the warm-up's thread starts on GPU 0
        where = torch.device("cuda", torch.cuda.current_device())
    try:
        shapes = Shapes.from_config(cfg, spec.method, spec.batch_size)
    except (KeyError, TypeError, ValueError) as exc:
        return Warmup(None, note=f"config.json lacks what it needs: {exc}")
    return Warmup(shapes, dtype, where)
