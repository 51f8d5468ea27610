"""LoRA linear layers, y = x W^T + s (x A^T) B^T (+ bias), as one autograd op with a hand-written backward.

W (out, in) is frozen: a 16-bit tensor, or bitsandbytes NF4 (packed uint8 plus its QuantState), dequantized by
`kernels.nf4` into one reused buffer each time it is needed, forward and backward, so no full-precision copy of a
4-bit weight outlives the op. A (r, in) and B (out, r) are the trainable adapter. Several projections of the same
input (Q, K and V; gate and up) go through one op, with their A's stacked:

    forward:  xa = x [A_1; A_2; ...]^T                    (N, r_1 + r_2 + ...): one matmul for all adapters
              y_i = x W_i^T + s_i xa_i B_i^T              (xa_i B_i^T first; the base matmul adds it as its C)
    backward: g_i = s_i dy_i B_i                           (N, r_i)
              dA = [g_1 g_2 ...]^T x,  dB_i = s_i dy_i^T xa_i
              dx = [g_1 g_2 ...] [A_1; A_2; ...] + sum_i dy_i W_i   (accumulated into one tensor)

The small (rank-r) products come first and the large base matmuls accumulate onto them (cuBLAS's beta, read in the
matmul's epilogue while it computes): adding a rank-r product after the base matmul would instead be a separate pass
that reads and writes the whole (N, out) output, which the llama8b profile showed at ~15 ms a step.

A checkpointed layer's first forward may write the outputs into given buffers (`out`) and its recompute hand them
back (`given`): the op then returns those values and computes only the rank-r product its backward needs.

Saved for the backward: x (the layer input, which autograd keeps for any linear anyway) and xa (N x sum r, tiny),
plus references to the weights. Compared with PEFT's module-by-module path this skips each (N, out) adapter output,
its scaled copy and the sum, the separate input gradients of every projection and their sum.

The adapters of one op may also live in one flat trainable tensor, `packed` = [A_1; A_2; ...] (row-major, the
stacked (sum r, in) block) then B_1, B_2, ... each flattened, with the A's and B's passed as views of it. The op then
returns one gradient for `packed` instead of one per A and B (engine.patching.modules.pack_adapters puts every op's
`packed` in one trainable tensor of the model), and the stacked A's need no concatenation.

Matmuls run in the compute dtype: the autocast dtype when autocast is on, else W's (the NF4 compute dtype for a
4-bit base). Gradients come back in the dtypes of x, A and B.
"""

import torch
import torch.nn.functional as F

from kernels.nf4 import nf4_dequantize_state

# One buffer per (device, dtype), grown to the largest weight seen: every 4-bit layer dequantizes into it in turn.
_BUFFERS: dict[tuple, torch.Tensor] = {}


def lora_linear_reference(x, weight, A, B, scale: float, bias=None) -> torch.Tensor:
    """Pure-torch y = x W^T + s (x A^T) B^T + bias, for a 16-bit W."""
    y = F.linear(x, weight, bias)
    return y + scale * F.linear(F.linear(x, A), B)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor, quant_state) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return quant_state.dtype if quant_state is not None else weight.dtype


def _dense(weight: torch.Tensor, quant_state, dtype: torch.dtype, own: bool = False) -> torch.Tensor:
    """W in `dtype`: the 16-bit tensor itself (cast if needed), or the NF4 weight dequantized into the shared buffer
    (`own`: into a tensor of its own, which the caller may keep)."""
    if quant_state is None:
        return weight if weight.dtype == dtype else weight.to(dtype)
    shape = tuple(quant_state.shape)
    numel = shape[0] * shape[1]
    key = (weight.device, quant_state.dtype)
    buf = None if own else _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=quant_state.dtype, device=weight.device)
        if not own:
            _BUFFERS[key] = buf
    w = nf4_dequantize_state(weight, quant_state, out=buf[:numel].view(shape))
    return w if w.dtype == dtype else w.to(dtype)


class LoRALinearFunction(torch.autograd.Function):
    """Several LoRA projections of the same input (q/k/v, or gate/up) in one op: the adapters' down-projections run
    as one matmul of x with the stacked A's, and the input gradient is accumulated into one tensor."""

    @staticmethod
    def forward(ctx, x, meta, packed, *tensors):
        scales, states, output_unused, given, out, keep_dequantized = meta
        weights, As, Bs, biases = tensors[0::4], tensors[1::4], tensors[2::4], tensors[3::4]
        kept = []  # NF4 weights dequantized for this forward, kept for the backward (`keep_dequantized`)
        dtype = _compute_dtype(x, weights[0], states[0])
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            if packed is None:
                a_all = torch.cat(As)
            else:
                a_all = packed[: sum(A.numel() for A in As)].view(-1, x.shape[-1])
            a_all = a_all.to(dtype)
            xa_all = x2 @ a_all.t()
            bs = [B.to(dtype) for B in Bs]
            outs, start = [], 0
            for i, (w, qs, b, bias, s) in enumerate(zip(weights, states, bs, biases, scales, strict=True)):
                if output_unused:  # shape and dtype only: the backward below never reads the outputs
                    outs.append(xa_all.new_zeros(()).expand(*x.shape[:-1], b.shape[0]))
                    continue
                if given is not None:  # the values an earlier pass computed: the same, without their products
                    if given[i].shape != (*x.shape[:-1], b.shape[0]) or given[i].dtype != dtype:
                        raise ValueError(f"given output {i} must be {(*x.shape[:-1], b.shape[0])} {dtype}")
                    outs.append(given[i].detach())
                    continue
                xa = xa_all[:, start : start + b.shape[1]]
                start += b.shape[1]
                # the small product first, so the base matmul adds it in its epilogue: no second pass over the output
                y = xa @ b.t() if out is None else torch.matmul(xa, b.t(), out=out[i].view(-1, b.shape[0]))
                dense = _dense(w, qs, dtype, own=keep_dequantized and qs is not None)
                if keep_dequantized and qs is not None:
                    kept.append(dense)
                y.addmm_(x2, dense.t(), beta=s)
                if bias is not None:
                    y += bias.to(dtype)
                outs.append(y.view(*x.shape[:-1], y.shape[-1]))
        if len(kept) != len(weights):
            kept = []  # all or none: an op with a 16-bit weight has no dequantization to save
        ctx.save_for_backward(x2, xa_all, a_all, *weights, *bs, *kept)
        ctx.meta, ctx.x_dtype, ctx.x_shape = meta[:2], x.dtype, x.shape  # scales, quant states
        ctx.param_dtypes = [(A.dtype, B.dtype) for A, B in zip(As, Bs, strict=True)]
        ctx.packed = None if packed is None else (packed.shape, packed.dtype)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *dys):
        x2, xa_all, a_all, *rest = ctx.saved_tensors
        scales, states = ctx.meta
        n = len(scales)
        weights, bs, kept = rest[:n], rest[n : 2 * n], rest[2 * n :]
        need_x, need_params = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:])
        if ctx.packed is not None:
            need_params = ctx.needs_input_grad[2]
        dA, dB = [None] * n, [None] * n
        dx = None
        with torch.autocast(x2.device.type, enabled=False):
            gs, dy2s, start = [], [], 0
            for i, (dy, b, s) in enumerate(zip(dys, bs, scales, strict=True)):
                r = b.shape[1]
                dy2 = dy if dy is not None else torch.zeros(*ctx.x_shape[:-1], b.shape[0], device=x2.device)
                dy2 = dy2.reshape(-1, b.shape[0]).to(x2.dtype)
                dy2s.append(dy2)
                g = (dy2 @ b).mul_(s)  # (N, r), the scale folded in once
                gs.append(g)
                if need_params:
                    dB[i] = (dy2.t() @ xa_all[:, start : start + r]).mul_(s)
                start += r
            g_all = torch.cat(gs, dim=1)
            if need_params:
                da_all = g_all.t() @ x2
                start = 0
                for i, b in enumerate(bs if ctx.packed is None else ()):  # packed: one gradient, made below
                    dA[i] = da_all[start : start + b.shape[1]].to(ctx.param_dtypes[i][0])
                    dB[i] = dB[i].to(ctx.param_dtypes[i][1])
                    start += b.shape[1]
            if need_x:
                dx = g_all @ a_all  # the small product first: each base matmul then accumulates in its epilogue
                for i, dy2 in enumerate(dy2s):
                    dense = kept[i].to(x2.dtype) if kept else _dense(weights[i], states[i], x2.dtype)
                    dx.addmm_(dy2, dense)
                dx = dx.view(ctx.x_shape).to(ctx.x_dtype)
        d_packed = None
        if ctx.packed is not None and need_params:
            d_packed = _packed_gradient(ctx.packed, da_all, dB)
            dB = [None] * n  # the views get no gradient of their own
        grads = []
        for i in range(n):
            grads += [None, dA[i], dB[i], None]
        return (dx, None, d_packed, *grads)


def _packed_gradient(packed, da_all, dB) -> torch.Tensor:
    """The gradient of a packed adapter tensor: the stacked A's gradient, then each B's, in its layout."""
    shape, dtype = packed
    grad = torch.empty(shape, dtype=dtype, device=da_all.device)
    start = da_all.numel()
    grad[:start].view_as(da_all).copy_(da_all)
    for d in dB:
        grad[start : start + d.numel()].view_as(d).copy_(d)
        start += d.numel()
    return grad


def lora_linear_group(
    x, projections, packed=None, output_unused=False, given=None, out=None, keep_dequantized=False
) -> tuple[torch.Tensor, ...]:
    """`lora_linear` for several projections of the same x at once (Q, K, V; or gate, up).

    Args:
        x: (..., in) activations.
        projections: one (weight, A, B, scale, bias, quant_state) tuple per projection, as for `lora_linear`.
        packed: None, or the flat trainable tensor the A's and B's are views of, in the layout the module docstring
            gives; its gradient then comes back as one tensor (the views get none).
        output_unused: the caller will not read the outputs' values, only differentiate through them (a
            checkpointed layer's recompute, whose output only feeds a sum): the outputs are zeros of the right shape
            (stride 0) and their products, dequantization included, are skipped. The gradients are unchanged.
        given: the outputs' values, computed by an earlier pass over the same x and weights (a checkpointed layer's
            first forward, kept for its recompute): they are returned as the outputs, their products skipped, and the
            gradients are those of computing them.
        out: (..., out_i) contiguous tensors to write the outputs into (a CUDA graph's static buffers); the outputs
            returned are views of them.
        keep_dequantized: NF4 weights are dequantized into tensors of their own, kept for the backward instead of
            dequantized again there (a checkpointed layer's recompute, whose backward follows at once: one
            dequantization fewer per weight, for their 16-bit size until the backward).
    """
    scales, states = tuple(float(p[3]) for p in projections), tuple(p[5] for p in projections)
    meta = (scales, states, output_unused, given, out, keep_dequantized)
    tensors = []
    for weight, A, B, _, bias, _ in projections:
        tensors += [weight, A, B, bias]
    return LoRALinearFunction.apply(x, meta, packed, *tensors)


def lora_linear(x, weight, A, B, scale: float, bias=None, quant_state=None) -> torch.Tensor:
    """x W^T + scale (x A^T) B^T + bias with a frozen W and trainable A, B.

    Args:
        x: (..., in) activations.
        weight: (out, in) 16-bit frozen weight, or bitsandbytes' packed NF4 tensor when `quant_state` is given.
        A: (r, in) LoRA down-projection; B: (out, r) LoRA up-projection.
        scale: lora_alpha / r (or / sqrt(r) for rsLoRA).
        bias: (out,) frozen bias or None.
        quant_state: the bitsandbytes QuantState of an NF4 `weight`, else None.
    """
    return lora_linear_group(x, [(weight, A, B, scale, bias, quant_state)])[0]
