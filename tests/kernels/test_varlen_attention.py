"""kernels/varlen_attention.py: padding-free causal attention against its reference, and the reference against torch
SDPA run per segment."""

import torch
import torch.nn.functional as F

from kernels.varlen_attention import varlen_attention, varlen_attention_reference


def test_reference_is_sdpa_per_segment():
    torch.manual_seed(0)
    lengths = [5, 1, 0, 9, 3]
    cu = torch.tensor([0, 5, 6, 6, 15, 18], dtype=torch.int32)
    q = torch.randn(18, 4, 16)
    k, v = torch.randn(18, 2, 16), torch.randn(18, 2, 16)
    out = varlen_attention(q, k, v, cu, 0.25)
    for a, n in zip(cu[:-1].tolist(), lengths):
        if n:
            seg = slice(a, a + n)
            qs, ks, vs = (t[seg].transpose(0, 1) for t in (q, k, v))
            sdpa = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.25, enable_gqa=True)
            torch.testing.assert_close(out[seg], sdpa.transpose(0, 1), rtol=2e-5, atol=2e-5)
    assert torch.equal(out, varlen_attention_reference(q, k, v, cu, 0.25))
