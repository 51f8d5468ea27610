"""TRL's fused LM-head loss in pure torch for tensors off the GPU, so the CPU never runs Triton's interpreter.

TRL 1.15's trainers score tokens with `trl.trainer.utils._ChunkedLogProbFunction`, whose inner loop is a Triton kernel
on any device. Without a GPU only Triton's interpreter can run it: tens of seconds per step on a tiny model, and
"Cannot call @triton.jit'd outside of the scope of a kernel" when TRITON_INTERPRET is set after TRL's kernels were
imported. `use_torch_loss` swaps in `chunked_logprob`, the same computation in torch (autograd does the backward), for
tensors that are not on CUDA; CUDA tensors still take TRL's kernel.
"""

import os

import torch

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def chunked_logprob(
    hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None, logit_scale=1.0, outputs=()
):
    """TRL's ChunkedLogProbFunction.apply in torch: (log-probabilities of `targets`, then entropy, log(sum p^2), mean
    logit and whether the target is the first argmax, each None unless named in `outputs`) of `hidden @ weight.T`."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    z = torch.nn.functional.linear(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    z = z.float() * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    logp = z.log_softmax(-1)
    logprobs = logp.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():  # TRL marks these three non-differentiable
        sum_sq = torch.logsumexp(2 * logp, -1) if "log_sum_sq_probs" in outputs else None
        mean = z.mean(-1) if "mean_logits" in outputs else None
        top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
    return logprobs, entropy, sum_sq, mean, top1


class _OffGpuLogProb:
    """Stands in for TRL's autograd Function: its kernel for CUDA tensors, chunked_logprob for any other (and for all
    when Triton is missing, where TRL has no kernel)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def apply(self, hidden, *args):
        if hidden.is_cuda and self.kernel is not None:
            return self.kernel.apply(hidden, *args)
        return chunked_logprob(hidden, *args)


def use_torch_loss() -> bool:
    """Make TRL's trainers compute their loss in torch off the GPU; False (nothing changed) when the user set
    TRITON_INTERPRET=1 to run Triton kernels in the interpreter, or when it is done already."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    from trl.trainer import utils

    if isinstance(utils._ChunkedLogProbFunction, _OffGpuLogProb):
        return False
    utils._ChunkedLogProbFunction = _OffGpuLogProb(utils._ChunkedLogProbFunction)
    return True
