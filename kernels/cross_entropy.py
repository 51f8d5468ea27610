"""Fused final linear + cross-entropy over chunks of tokens: the (tokens x vocab) logits never exist at once.

For hidden states h (N, H), lm_head weight W (V, H) and labels y (N,), with z = h W^T and, optionally, Gemma-2's
soft-capping z <- cap * tanh(z / cap):

    loss = sum over rows with y != ignore_index of (logsumexp(z_row) - z_row[y]) / max(n_valid, 1)

so an all-ignored batch gives 0 (no NaN). The gradient with respect to the logits of a valid row is
(softmax(z) - onehot(y)) / n_valid, times 1 - tanh^2(z_raw / cap) when capped; ignored rows get 0. Then
dh = dz W and dW = dz^T h.

The forward does all the work, one chunk of C tokens at a time: logits = h_chunk W^T (torch matmul, in the input
dtype, fp32 accumulation), then `_cross_entropy_fwd_kernel` (one row per program, fp32 online logsumexp over blocks of
the vocabulary) writes the row's loss and overwrites the logits with their gradient in place, then torch computes
this chunk's dh and accumulates dW (addmm into the weight dtype, as Liger does, so no fp32 (V x H) buffer exists).
The backward only scales the stored dh and dW by the incoming scalar gradient. Peak extra memory: one (C x V) logits
chunk plus dh (N x H) and dW (V x H).

Chunk size: on CUDA, the largest power of two whose logits chunk takes at most a quarter of the free memory
(capped at 4096 tokens); on the CPU a fixed 64.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import dispatch

IGNORE_INDEX = -100
CPU_CHUNK = 64
MAX_CHUNK = 4096


def cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Pure-torch linear + cross-entropy: full logits, fp32 softmax, mean over non-ignored labels (0 if none)."""
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ weight.T).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    labels = labels.reshape(-1)
    n_valid = (labels != ignore_index).sum().clamp(min=1)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / n_valid


@triton.jit
def _tanh(z):
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _cross_entropy_fwd_kernel(
    logits_ptr,
    logits_stride,
    labels_ptr,
    loss_ptr,
    V,
    scale_ptr,
    softcap,
    ignore_index,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Row loss, and the row's logits overwritten with d loss / d logits (already divided by n_valid)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_stride
    label = tl.load(labels_ptr + row).to(tl.int64)
    valid = label != ignore_index
    safe_label = tl.where(valid, label, 0)
    cols = tl.arange(0, BLOCK_V)

    # pass 1: online logsumexp, per lane, then across lanes; -1e30 (not -inf) keeps exp(m_old - m_new) finite
    m = tl.full((BLOCK_V,), -1e30, tl.float32)
    d = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        mask = offs < V
        z = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z = softcap * _tanh(z / softcap)
        z = tl.where(mask, z, -1e30)
        m_new = tl.maximum(m, z)
        d = d * tl.exp(m - m_new) + tl.exp(z - m_new)
        m = m_new
    m_row = tl.max(m, axis=0)
    lse = m_row + tl.log(tl.sum(d * tl.exp(m - m_row), axis=0))

    target = tl.load(row_ptr + safe_label).to(tl.float32)
    if HAS_SOFTCAP:
        target = softcap * _tanh(target / softcap)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))

    # pass 2: gradient in place
    row_scale = tl.where(valid, tl.load(scale_ptr), 0.0)
    for start in range(0, V, BLOCK_V):
        offs = start + cols
        mask = offs < V
        x = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            t = _tanh(x / softcap)
            g = tl.exp(softcap * t - lse) - tl.where(offs == safe_label, 1.0, 0.0)
            g = g * (1.0 - t * t)
        else:
            g = tl.exp(x - lse) - tl.where(offs == safe_label, 1.0, 0.0)
        tl.store(row_ptr + offs, (g * row_scale).to(logits_ptr.dtype.element_ty), mask=mask)


def cross_entropy_rows(logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, softcap, ignore_index: int):
    """Launch on a (C, V) logits chunk: returns the (C,) fp32 row losses; logits now hold their gradient, times
    `scale` (a one-element fp32 tensor on the logits' device: 1 / n_valid, never read back to the host)."""
    rows, vocab = logits.shape
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    block = min(triton.next_power_of_2(vocab), 4096)
    _cross_entropy_fwd_kernel[(rows,)](
        logits,
        logits.stride(0),
        labels,
        loss,
        vocab,
        scale,
        float(softcap or 1.0),
        ignore_index,
        HAS_SOFTCAP=bool(softcap),
        BLOCK_V=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return loss


def choose_chunk_size(tokens: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Tokens per chunk: on CUDA the largest power of two whose logits use <= 1/4 of free memory; 64 on the CPU."""
    if device.type != "cuda":
        return max(1, min(tokens, CPU_CHUNK))
    free, _ = torch.cuda.mem_get_info(device)
    fits = max(1, (free // 4) // (vocab * torch.finfo(dtype).bits // 8))
    chunk = min(MAX_CHUNK, 1 << (fits.bit_length() - 1))
    return max(1, min(tokens, chunk))


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, softcap, ignore_index, chunk_size, grad_enabled):
        h2 = hidden.reshape(-1, hidden.shape[-1])
        y = labels.reshape(-1).contiguous()
        tokens, vocab = h2.shape[0], weight.shape[0]
        # 1 / n_valid stays on the device: reading it back would make the CPU wait for the whole forward pass
        scale = 1.0 / (y != ignore_index).sum().clamp(min=1).to(torch.float32).view(1)
        chunk = chunk_size or choose_chunk_size(tokens, vocab, hidden.dtype, hidden.device)
        # needs_input_grad stays True under torch.no_grad(), hence the caller's grad_enabled: eval skips both matmuls
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h2) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        losses = torch.empty(tokens, dtype=torch.float32, device=hidden.device)
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            hc = h2[start:end]
            logits = hc @ weight.T
            losses[start:end] = cross_entropy_rows(logits, y[start:end], scale, softcap, ignore_index)
            if need_h:
                torch.mm(logits, weight, out=grad_h[start:end])
            if need_w:
                grad_w.addmm_(logits.T, hc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.hidden_shape = hidden.shape
        return losses.sum() * scale[0]

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = (grad_h * grad_loss.to(grad_h.dtype)).view(ctx.hidden_shape)
        if grad_w is not None:
            grad_w = grad_w * grad_loss.to(grad_w.dtype)
        return grad_h, grad_w, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `labels`, without materializing all the logits.

    Args:
        hidden: (..., H) final hidden states (already shifted to line up with labels), fp32/bf16/fp16.
        weight: (V, H) lm_head weight, same dtype; its gradient is computed only when it requires grad.
        labels: (...) class ids, ignore_index where no loss is taken.
        softcap: Gemma-2's final_logit_softcapping (cap * tanh(logits / cap)); None for none.
        ignore_index: label value that is skipped.
        chunk_size: tokens per chunk; None picks it from free memory (CUDA) or 64 (CPU).

    Returns:
        A 0-dim fp32 loss; 0.0 when every label is ignored.
    """
    if dispatch.use_triton(hidden, weight):
        return FusedLinearCrossEntropyFunction.apply(
            hidden, weight, labels, softcap, ignore_index, chunk_size, torch.is_grad_enabled()
        )
    return cross_entropy_reference(hidden, weight, labels, softcap, ignore_index)
