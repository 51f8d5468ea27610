"""The one tolerance table for kernel tests: a Triton kernel vs its pure-torch reference, by dtype.

Both sides compute in fp32 and round once to the output dtype, so the gap is reduction order plus one rounding.
"""

import torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

TOL = {
    # loosened from torch's default (1.3e-6, 1e-5): rows are reduced in a different order (block tree vs torch's
    # vectorized sum) and dw / the lm_head gradient sum over many rows.
    torch.float32: {"rtol": 2e-5, "atol": 2e-5},
    # rtol is torch's default for bf16; atol loosened from 1e-5 because Triton's CPU interpreter rounds fp32 -> bf16
    # towards zero (the GPU rounds to nearest even), i.e. up to one bf16 ulp instead of half of one on small values.
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    # rtol is torch's default for fp16; atol loosened from 1e-5 for outputs near zero where one fp16 rounding of an
    # fp32 sum of O(1) terms is ~5e-4 absolute.
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, summed: int = 1):
    """torch.testing.assert_close with the table's tolerance for `dtype` (default: expected's dtype).

    `summed`: for a gradient that is a sum over that many rows (RMSNorm's dw, the lm_head gradient) atol grows with
    sqrt(summed), the typical size of the rounding noise of such a sum.
    """
    tol = dict(TOL[dtype or expected.dtype])
    tol["atol"] *= summed**0.5
    torch.testing.assert_close(actual, expected, **tol)
