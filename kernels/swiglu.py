"""SwiGLU and GeGLU gated activations, forward and backward, elementwise over flat blocks.

    swiglu(g, u) = silu(g) * u = g * sigmoid(g) * u
    geglu(g, u)  = gelu(g) * u,   gelu exact:  0.5 g (1 + erf(g / sqrt 2))
                                  gelu tanh:   0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))

Backward, with a = act(g):   d_u = dy * a,   d_g = dy * u * act'(g)
    silu'(g) = s (1 + g (1 - s)),  s = sigmoid(g)
    exact gelu'(g) = 0.5 (1 + erf(g / sqrt 2)) + g exp(-g^2 / 2) / sqrt(2 pi)
    tanh gelu'(g)  = 0.5 (1 + t) + 0.5 g (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 g^2),  t = tanh(...)

Numerics: loads in the input dtype, fp32 math, one rounding to the output dtype. The forward saves only g and u (the
autograd inputs, kept anyway by the surrounding linears); the backward recomputes the activation instead of storing
it, which saves one (tokens x intermediate) tensor per layer. tanh is written through exp (Triton's interpreter has
no tanh), and both tanh and sigmoid through exp(-|z|), which never overflows.

Bytes moved (n elements, b bytes each): forward 3nb (read g, u; write y); backward 5nb (read dy, g, u; write dg, du).
The eager reference moves several fp32 temporaries on top.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import dispatch

BLOCK = 1024
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """Pure-torch act(gate) * up in fp32, rounded once to gate's dtype. activation: silu, gelu, gelu_tanh."""
    g = gate.float()
    if activation == "silu":
        a = F.silu(g)
    elif activation == "gelu":
        a = F.gelu(g)
    elif activation == "gelu_tanh":
        a = F.gelu(g, approximate="tanh")
    else:
        raise ValueError(f"activation {activation!r}: use one of {ACTIVATIONS}")
    return (a * up.float()).to(gate.dtype)


@triton.jit
def _tanh(z):
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _sigmoid(z):
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    """act(g) and act'(g) for fp32 g (the compiler drops act' where it is unused). 0.39894... = 1/sqrt(2 pi)."""
    if ACT == 0:
        s = _sigmoid(g)
        a = g * s
        da = s * (1.0 + g * (1.0 - s))
    elif ACT == 1:
        e = tl.erf(g * 0.7071067811865476)
        a = 0.5 * g * (1.0 + e)
        da = 0.5 * (1.0 + e) + g * tl.exp(-0.5 * g * g) * 0.3989422804014327
    else:
        k = 0.7978845608028654
        t = _tanh(k * (g + 0.044715 * g * g * g))
        a = 0.5 * g * (1.0 + t)
        da = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * g * g)
    return a, da


@triton.jit
def _swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(g, ACT)
    tl.store(y_ptr + offs, (a * u).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(dy_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a, da = _act_and_grad(g, ACT)
    tl.store(dg_ptr + offs, (dy * u * da).to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(du_ptr + offs, (dy * a).to(du_ptr.dtype.element_ty), mask=mask)


def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    y = torch.empty_like(gate)
    n = gate.numel()
    _swiglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](gate, up, y, n, ACT=_ACT_ID[activation], BLOCK=BLOCK, num_warps=4)
    return y


def swiglu_bwd(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str):
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    _swiglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](
        dy.contiguous(), gate, up, dg, du, n, ACT=_ACT_ID[activation], BLOCK=BLOCK, num_warps=4
    )
    return dg, du


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, activation):
        gate, up = gate.contiguous(), up.contiguous()
        ctx.save_for_backward(gate, up)
        ctx.activation = activation
        return swiglu_fwd(gate, up, activation)

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dg, du = swiglu_bwd(dy, gate, up, ctx.activation)
        return dg, du, None


def swiglu(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """act(gate) * up, the gated MLP activation (Llama/Qwen/Mistral: silu; Gemma: gelu_tanh).

    Args:
        gate: output of gate_proj, any shape, fp32/bf16/fp16.
        up: output of up_proj, same shape and dtype.
        activation: "silu" (SwiGLU), "gelu" (exact erf GeGLU) or "gelu_tanh" (tanh-approximate GeGLU).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: use one of {ACTIVATIONS}")
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} differ")
    if dispatch.use_triton(gate, up):
        return SwiGLUFunction.apply(gate, up, activation)
    return swiglu_reference(gate, up, activation)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """gelu(gate) * up; approximate="tanh" (Gemma's gelu_pytorch_tanh) or "none" (exact erf GELU)."""
    return swiglu(gate, up, "gelu_tanh" if approximate == "tanh" else "gelu")
