"""kernels/embedding.py: rows gathered by the kernel equal the table's rows exactly (the CPU interpreter here; on the
GPU machine, from a table in pinned host memory)."""

import pytest
import torch
from tolerances import DTYPES

from kernels import dispatch
from kernels.embedding import gather_rows, gather_rows_reference

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_is_the_tables_rows(dtype):
    torch.manual_seed(0)
    table = torch.randn(50, 1500, dtype=torch.float32).to(dtype)  # wider than one block: a masked second piece
    ids = torch.randint(0, 50, (2, 7))
    ids[0, 0] = ids[1, 6] = 49  # the last row, twice
    with dispatch.force("triton"):
        got = gather_rows(table, ids)
    assert got.shape == (2, 7, 1500) and got.dtype == dtype
    assert torch.equal(got, table[ids]) and torch.equal(gather_rows_reference(table, ids), table[ids])
    with dispatch.force("triton"):
        assert gather_rows(table, ids[:, :0]).shape == (2, 0, 1500)


def test_gather_rows_refuses_a_table_it_cannot_index():
    with pytest.raises(ValueError, match="contiguous"):
        gather_rows(torch.zeros(8, 6).t(), torch.tensor([1, 2]))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gather_rows_from_pinned_host_memory_on_the_gpu():
    """The table stays in pinned host RAM; the ids and the rows are on the GPU, bit-exact."""
    table = torch.randn(128256, 4096).to(torch.bfloat16).pin_memory()
    ids = torch.randint(0, 128256, (2, 2048), device="cuda")
    with dispatch.force("triton"):
        got = gather_rows(table, ids)
    assert got.is_cuda and torch.equal(got.cpu(), table[ids.cpu()])
