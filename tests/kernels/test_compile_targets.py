"""Every Triton kernel the engine launches compiles for every GPU we support, within its shared memory per block.

The CPU interpreter runs kernels but never compiles them: a kernel the compiler refuses, or one whose tiles need more
shared memory than a T4 or an RTX 4090 has (Triton's OutOfResources, at the first launch), passes every CPU test.
Here the engine's launches are recorded in the interpreter (tests/launches.py) as the engine makes them, with
the configs their launchers pick for each target GPU (`kernels.target.emulate`), and each distinct specialization is
compiled ahead of time for that GPU (Triton 3.9 ships ptxas; no GPU needed), in one subprocess batch per test session.

What is launched, at real model widths (constexprs such as head-dim and hidden-size blocks follow them):

- training: engine.patching.warmup's launches (norms, RoPE, varlen attention forward and backward, SwiGLU/GeGLU, the
  fused loss, NF4 dequantization) for the supported families' configs, LoRA and QLoRA, in fp16 and bf16;
- decoding (engine.chat.decode_step's calls): add_rms_norm, the q/k/v, o, gate/up, down and lm_head matvecs (dense),
  or nf4_group_matvec / nf4_matvec (QLoRA) for one row and for a batch of rows (the tensor-core path),
  rope_kv_cache and decode_attention for one sequence and for a batch, swiglu, the fused norm/SwiGLU matvecs of one
  token (dense), and the host embedding's gather;
- mixture of experts (engine.patching.moe's calls): grouped_mm with LoRA factors forward and backward, and
  nf4_grouped_mm, at Qwen3-30B-A3B's and gpt-oss-20b's expert widths.

The kernels are not run (`recorded(run=False)`): their launchers, Triton's binder and the host code between launches
are, and no result is read. The NF4 matvecs' configs are the engine's for the real (N, K) (`pick_config`,
`group_config`), launched on weights of fewer rows in the same specialization class (N a multiple of 16 and of the
block), so that bitsandbytes does not quantize whole weights here. A T4 (sm_75) has no bf16: the engine trains and
decodes in fp16 there (engine.core.hardware), so sm_75 gets the fp16 launches only. Not covered: fp32 on a GPU (only
when a job asks for it).
"""

import functools
import math
import os
import time

import pytest
import torch
from launches import compile_all, jit_functions, launchable, recorded

from engine.chat.decode_step import _nf4_fields
from engine.patching import warmup
from kernels import dispatch, target
from kernels.add_rms_norm import add_rms_norm
from kernels.decode_attention import decode_attention
from kernels.embedding import gather_rows
from kernels.fused_matvec import norm_matvec, swiglu_matvec
from kernels.grouped_mm import grouped_mm
from kernels.matvec import MatvecConfig, matvec
from kernels.nf4_group_matvec import group_config, nf4_group_matvec
from kernels.nf4_grouped_mm import nf4_grouped_mm
from kernels.nf4_matvec import nf4_matvec
from kernels.nf4_matvec import pick_config as nf4_pick_config
from kernels.rope_kv_cache import rope_kv_cache
from kernels.swiglu import swiglu
from kernels.varlen_attention import GPU_BLOCKS, gpu_blocks

bnb_functional = pytest.importorskip("bitsandbytes.functional")
pytestmark = pytest.mark.skipif(
    not dispatch.INTERPRET, reason="records launches in the interpreter (TRITON_INTERPRET=1)"
)

# Shared memory one block may use (opted in), bytes, per compute capability: NVIDIA's CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability", "Maximum amount of shared memory per thread block": 64 KB (7.5),
# 163 KB (8.0), 99 KB (8.6, 8.9), 227 KB (9.0), KB = 1024 bytes.
TARGETS = {
    75: target.Target(75, 64 * 1024),  # T4 (fp16 only)
    80: target.Target(80, 163 * 1024),  # A100
    86: target.Target(86, 99 * 1024),  # RTX 30xx, A10, A40
    89: target.Target(89, 99 * 1024),  # RTX 40xx, L4, L40S
    90: target.Target(90, 227 * 1024),  # H100, H200
}
NO_BF16 = {75}

# The supported families' config.json fields the kernels see (from the models' published configs)
CONFIGS = {
    "Llama-3.2-1B": dict(model_type="llama", hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, intermediate_size=8192, vocab_size=128256, rms_norm_eps=1e-5, hidden_act="silu"),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=128256, rms_norm_eps=1e-5, hidden_act="silu"),
    "Qwen3-4B": dict(model_type="qwen3", hidden_size=2560, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, vocab_size=151936, hidden_act="silu"),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, vocab_size=152064, sliding_window=131072, use_sliding_window=False,
                       hidden_act="silu"),
    "Mistral-7B": dict(model_type="mistral", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=32768, sliding_window=4096, hidden_act="silu"),
    "Gemma-2-2B": dict(model_type="gemma2", hidden_size=2304, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=256, intermediate_size=9216, vocab_size=256000, hidden_activation="gelu_pytorch_tanh",
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
                       layer_types=["sliding_attention", "full_attention"]),
    "Gemma-2-9B": dict(model_type="gemma2", hidden_size=3584, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=256, intermediate_size=14336, vocab_size=256000, hidden_activation="gelu_pytorch_tanh",
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
                       layer_types=["sliding_attention", "full_attention"]),
    "Gemma-3-4B": dict(model_type="gemma3", text_config=dict(
        model_type="gemma3_text", hidden_size=2560, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        intermediate_size=10240, vocab_size=262208, hidden_activation="gelu_pytorch_tanh", sliding_window=1024,
        layer_types=["sliding_attention"] * 5 + ["full_attention"])),
}  # fmt: skip
QLORA = ("Qwen3-4B", "Gemma-2-2B")  # QLoRA adds the NF4 dequantization only, whose launch is width-free
DECODERS = ("Llama-3.1-8B", "Qwen3-4B", "Qwen2.5-7B")  # engine.chat.decode_step's families at their widths
MOE = {  # hidden, expert intermediate, stored transposed ([E, in, out], gpt-oss) or as nn.Linear ([E, out, in])
    "Qwen3-30B-A3B": (2048, 768, False),
    "gpt-oss-20b": (2880, 2880, True),
}
ROWS = 4  # a batch of decoded rows (and of tokens per expert): any count 2..MAX_ROWS takes the same kernels


def train(dtype) -> None:
    """engine.patching.warmup's launches for every config (LoRA), and with a 4-bit base for QLORA."""
    for name, cfg in CONFIGS.items():
        for method in ("lora", "qlora") if name in QLORA else ("lora",):
            warmup.warm(warmup.Shapes.from_config(cfg, method), dtype, torch.device("cpu"))


def _nf4(n: int, k: int, dtype) -> dict:
    """nf4_matvec's weight arguments as engine.chat.decode_step reads them from a bitsandbytes QLoRA weight."""
    w = torch.full((n, k), 0.01, dtype=dtype)
    packed, state = bnb_functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    return _nf4_fields(packed, state)


def _rows(block: int) -> int:
    """A weight height of the same class as the real one (a multiple of 16) that `block` rows tile."""
    return math.lcm(16, block)


def _project(x, n: int, k: int, dtype, nf4: bool, bias: bool = False):
    """One decode projection of the engine's config for an (n, k) weight: matvec (one dense row) or nf4_matvec."""
    rows = x.shape[0]
    if nf4:
        cfg = nf4_pick_config(n, k, rows)
        b = torch.zeros(_rows(cfg.block_n), dtype=dtype) if bias else None
        return nf4_matvec(x, bias=b, config=cfg, **_nf4(_rows(cfg.block_n), k, dtype))
    weight = torch.empty(n, k, dtype=dtype)  # never touched: the kernels do not run (`recorded(run=False)`)
    return matvec(x[:1], weight, torch.zeros(n, dtype=dtype) if bias else None)


def _group(x, ns, k: int, dtype, nf4: bool, bias: bool = False):
    """q/k/v or gate/up: one packed matvec (dense), or one nf4_group_matvec launch (QLoRA) with the engine's config."""
    if not nf4:
        return _project(x, sum(ns), k, dtype, False, bias)
    cfg = group_config(ns, k, x.shape[0])
    small = [_rows(cfg.block_n) * (n // min(ns)) for n in ns]  # the real ratios (Qwen3's 4:1:1 q/k/v)
    biases = [torch.zeros(n, dtype=dtype) for n in small] if bias else None
    return nf4_group_matvec(x, [_nf4(n, k, dtype) for n in small], biases, cfg)


def _fused(x, h, w, qkv: int, inter: int, dtype, bias: bool) -> None:
    """engine.chat.decode_step's fused launches for one token (kernels/fused_matvec.py)."""
    hidden = x.shape[1]
    b = torch.zeros(qkv, dtype=dtype) if bias else None
    norm_matvec(x, None, w, 1e-6, torch.empty(qkv, hidden, dtype=dtype), b)
    norm_matvec(x, h, w, 1e-6, torch.empty(qkv, hidden, dtype=dtype), b)
    norm_matvec(x, h, w, 1e-6, torch.empty(2 * inter, hidden, dtype=dtype))
    gate_up = torch.zeros(1, 2 * inter, dtype=dtype)
    swiglu_matvec(gate_up[:, :inter], gate_up[:, inter:], torch.empty(hidden, inter, dtype=dtype))


def decode(dtype) -> None:
    """engine.chat.decode_step's kernel calls, for one row and for ROWS rows, dense and NF4 bases."""
    for name in DECODERS:
        c = CONFIGS[name]
        hidden, inter, hq, hk = (
            c[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
        )
        d = c.get("head_dim") or hidden // hq
        bias, norm = c["model_type"] == "qwen2", c["model_type"] == "qwen3"  # Qwen2's q/k/v biases, Qwen3's q/k norms
        capacity = 256  # engine.chat.decode's CACHE_ROUND: the smallest cache
        for rows in (1, ROWS):
            for nf4 in (False, True):
                x = torch.full((rows, hidden), 0.5, dtype=dtype)
                w = torch.ones(hidden, dtype=dtype)
                y, h = add_rms_norm(x, None, w, 1e-6)
                y, h = add_rms_norm(x, h, w, 1e-6)
                _group(y, (hq * d, hk * d, hk * d), hidden, dtype, nf4, bias)
                qkv = torch.zeros(rows, (hq + 2 * hk) * d, dtype=dtype)  # the group's output: q, k, v are its columns
                q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=1)
                batched = (rows,) if rows > 1 else ()
                k_cache, v_cache = (torch.zeros(*batched, hk, capacity, d, dtype=dtype) for _ in range(2))
                cos, sin = torch.ones(capacity, d, dtype=dtype), torch.zeros(capacity, d, dtype=dtype)
                position = torch.arange(rows) + 7
                qk = (torch.ones(d, dtype=dtype),) * 2 if norm else (None, None)
                q = rope_kv_cache(q, k, v, cos, sin, position, k_cache, v_cache, *qk, 1e-6)
                a = decode_attention(q if rows > 1 else q[0], k_cache, v_cache, position, d**-0.5)
                _project(a.reshape(rows, -1), hidden, hq * d, dtype, nf4)
                _group(y, (inter, inter), hidden, dtype, nf4)
                swiglu(torch.zeros(rows, inter, dtype=dtype), torch.zeros(rows, inter, dtype=dtype))
                _project(torch.zeros(rows, inter, dtype=dtype), hidden, inter, dtype, nf4)
                if rows == 1 and not nf4:  # one token, packed weights: the norms and SwiGLU in the matvecs
                    _fused(x, h, w, (hq + 2 * hk) * d, inter, dtype, bias)
            _project(torch.zeros(rows, hidden, dtype=dtype), c["vocab_size"], hidden, dtype, False)  # lm_head: dense
        gather_rows(torch.zeros(64, hidden, dtype=dtype), torch.tensor([3, 5]))  # engine.memory.host_embedding
    # No pick splits K today (every measured config has split_k 1), but a measured one may: the reduction compiles too
    matvec(torch.zeros(1, 4096, dtype=dtype), torch.empty(4096, 4096, dtype=dtype), None, MatvecConfig(1, 1024, 4))


def experts(dtype) -> None:
    """engine.patching.moe's grouped products at the experts' widths: the base (16-bit, and NF4 a chunk at a time)
    plus the LoRA factors' two thin products, forward and backward; two experts of ROWS rows each."""
    offsets = torch.tensor([ROWS, 2 * ROWS], dtype=torch.int32)
    rank = 16
    for hidden, inter, transposed in MOE.values():
        for n_in, n_out in ((hidden, 2 * inter), (inter, hidden)):  # gate_up, then down
            x = torch.full((2 * ROWS, n_in), 0.5, dtype=dtype, requires_grad=True)
            stored = (2, n_in, n_out) if transposed else (2, n_out, n_in)
            w = torch.full(stored, 0.01, dtype=dtype)
            base = grouped_mm(x, w if transposed else w.transpose(1, 2), offsets)
            first = torch.full((2, n_in, rank), 0.01, dtype=dtype, requires_grad=True)
            second = torch.full((2, rank, n_out), 0.01, dtype=dtype, requires_grad=True)
            y = base + grouped_mm(grouped_mm(x, first, offsets), second, offsets)
            packed, state = bnb_functional.quantize_4bit(
                w.reshape(-1, stored[2]), blocksize=64, compress_statistics=True, quant_type="nf4"
            )
            y = y + nf4_grouped_mm(x, packed, state, stored, offsets, transposed, chunk=1)
            y.backward(torch.full_like(y, 0.5))


def _dtypes(cc: int):
    return (torch.float16,) if cc in NO_BF16 else (torch.float16, torch.bfloat16)


@functools.cache
def _recorded(gpu: target.Target, dtypes: tuple) -> tuple:
    """The launches of every scenario in these dtypes with the configs the launchers pick for `gpu`."""
    with target.emulate(gpu), recorded(run=False) as launches, torch.no_grad():
        for dtype in dtypes:
            with torch.enable_grad():
                train(dtype)
                experts(dtype)
            with torch.inference_mode():
                decode(dtype)
    return tuple(sorted(launches, key=lambda launch: launch.label()))


def _code(launch) -> tuple:
    """What a compiled kernel's code and shared memory follow: its types, constexprs and options; not the alignment
    and divisibility attributes, which change how wide its global loads are, not its tiles."""
    return launch.name, tuple(t for _, t in launch.signature), launch.constexprs, launch.options


@pytest.fixture(scope="session")
def compiled():
    """{capability: [(launch, {"shared": bytes, "seconds": compile time} or {"error": ...})]}: every target's launches
    compiled once, one compile per `_code` (one per specialization with TUNESMITH_COMPILE_EVERY=1)."""
    started = time.perf_counter()
    launched = {cc: _recorded(gpu, _dtypes(cc)) for cc, gpu in TARGETS.items()}
    recording = time.perf_counter() - started
    every = os.environ.get("TUNESMITH_COMPILE_EVERY") == "1"
    jobs = {(cc, launch if every else _code(launch)): (cc, launch) for cc, ls in launched.items() for launch in ls}
    results = dict(zip(jobs, compile_all(list(jobs.values())), strict=True))
    out = {cc: [] for cc in TARGETS}
    for cc, launches in launched.items():
        out[cc] = [(launch, results[cc, launch if every else _code(launch)]) for launch in launches]
    took = time.perf_counter() - started
    cpu = {cc: round(sum(r.get("seconds", 0) for (c, _), r in results.items() if c == cc)) for cc in TARGETS}
    print(f"\nrecorded in {recording:.0f} s, {len(jobs)} compiles, {took:.0f} s in all; compile s per target: {cpu}")
    return out


def test_a100_and_h100_keep_the_measured_attention_tiles():
    """kernels.varlen_attention's measured tiles stay the H100/H200's and the A100's; smaller cards get their own."""
    for d, blocks in GPU_BLOCKS.items():
        assert gpu_blocks(d, TARGETS[90].shared_memory) is blocks and gpu_blocks(d, TARGETS[80].shared_memory) is blocks
    assert gpu_blocks(256, TARGETS[86].shared_memory) != GPU_BLOCKS[256] != gpu_blocks(256, TARGETS[75].shared_memory)


def test_every_kernel_is_launched(compiled):
    """Each @triton.jit kernel of kernels/ is launched by some scenario above, so a new one is not left out."""
    kernels = {key.rsplit(".", 1)[1] for key in launchable(jit_functions())}
    launched = {launch.name for launches in compiled.values() for launch, _ in launches}
    assert kernels - launched == set(), f"kernels no scenario launches: {sorted(kernels - launched)}"


@pytest.mark.parametrize("cc", list(TARGETS))
def test_compiles_within_shared_memory(compiled, cc):
    """Every launch compiles for sm_{cc} and asks for no more shared memory per block than that GPU has; sm_75 gets
    fp16 launches only."""
    limit = TARGETS[cc].shared_memory
    failures = []
    for launch, result in compiled[cc]:
        if cc in NO_BF16 and launch.uses_bf16():
            failures.append(f"{launch.label()}: a bf16 launch for a GPU without bf16")
        elif "error" in result:
            failures.append(f"{launch.label()}: {result['error']}")
        elif result["shared"] > limit:
            failures.append(f"{launch.label()}: {result['shared']} bytes of shared memory, the limit is {limit}")
    assert not failures, f"sm_{cc}: " + "\n".join(failures)
