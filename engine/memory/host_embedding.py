"""The host embedding, as engine.memory.offload plans it: an untied input embedding table kept in pinned host RAM,
its rows gathered by the GPU over PCIe (kernels.embedding).
"""


def host_embedding(embedding, device):
    """A module computing `embedding(ids)` from a table in host RAM and giving the (tokens x hidden) result on
    `device`; the original module, moved to the host, stays as `base_layer`.

    The GPU waits for these rows at the start of every step. On CUDA a plain table is pinned, and the GPU gathers its
    tokens' rows itself over PCIe (kernels.embedding: no host work, no synchronization); a host lookup, pinned and
    copied, left the GPU idle 9-12 ms of every llama8b step at 4096 tokens on the H100 machine. Elsewhere, for a table
    whose module does more than look rows up (a scaled embedding), and once a GPU turns out unable to read pinned
    host memory, the module runs on the host and its result is copied over."""
    import torch

    from kernels.embedding import gather_rows

    device = torch.device(device)

    class HostEmbeddingModule(torch.nn.Module):
        def __init__(self, base_layer):
            super().__init__()
            self.base_layer = base_layer.to("cpu")
            plain = type(base_layer) is torch.nn.Embedding and base_layer.max_norm is None
            self.gpu_gather = plain and device.type == "cuda"
            if self.gpu_gather:
                weight = self.base_layer.weight
                weight.data = weight.data.contiguous().pin_memory()  # readable by the GPU over PCIe

        @property
        def weight(self):
            return self.base_layer.weight

        def get_base_layer(self):
            return self.base_layer

        def forward(self, ids):
            with torch.no_grad():  # the table is frozen: nothing to differentiate on the host
                out = None
                if self.gpu_gather:
                    try:
                        out = gather_rows(self.base_layer.weight, ids.to(device, non_blocking=True))
                    except (RuntimeError, ValueError):  # a GPU or driver that cannot read pinned host memory
                        self.gpu_gather = False
                if out is None:
                    out = self.base_layer(ids.to("cpu"))
                    out = out.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else out.to(device)
            return out.requires_grad_(torch.is_grad_enabled())  # as enable_input_require_grads asks

    return HostEmbeddingModule(embedding)
