"""gpt-oss checkpoints stored in MXFP4 (OpenAI's `openai/gpt-oss-20b` and `-120b`): their experts dequantized.

Such a checkpoint's config.json has `quantization_config: {quant_method: "mxfp4"}` and stores each fused expert tensor
as two uint8 tensors: `<name>_blocks` [E, rows, cols / 32, 16], two 4-bit E2M1 values a byte (the low nibble is the
even column, the high nibble the odd one), and `<name>_scales` [E, rows, cols / 32], one E8M0 exponent per block of 32
values (the block's values are E2M1 * 2**(scale - 127)). `rows x cols` is the nn.Linear orientation (out x in), so the
16-bit parameter transformers' GptOssExperts holds is its transpose, [E, cols, rows] (gate_up_proj [E, H, 2I],
down_proj [E, I, H]); the layout is transformers' (integrations/mxfp4.py), written here again to read it without
transformers' loader: the exports read the checkpoint tensor by tensor (`tensors`, `read`), and so does the loader
of every training run (engine.models.loading.mxfp4_host_model, layer by layer), which dequantizes one layer's
experts at a time. An E2M1 value times a power of two is a bf16 number, so bf16 holds them exactly.

A model loaded whole outside training (chat, calibration, the export checks) loads through transformers
with `Mxfp4Config(dequantize=True)` (`load_kwargs`), which dequantizes each expert tensor on the device it loads to
and leaves no quantization_config on the model; it leaves those tensors bf16 whatever the dtype asked, so the caller
casts them (engine.patching.moe.cast_experts). The flag also keeps transformers from probing for its Triton MXFP4
kernels (Hugging Face's `kernels` package, which this repository's own `kernels/` shadows). Its dequantization holds
the whole tensor's temporaries at once, ours one expert's: a random gate_up_proj of gpt-oss-20b's shape (blocks
[32, 5760, 90, 16]) took 44.1 s there and 14.6 s here, timed one call each on a shared 2-core CPU, equal results.
"""

import math
from pathlib import Path

BLOCK = 32  # values per E8M0 scale
# The 16 E2M1 codes: sign bit, 2 exponent bits, 1 mantissa bit.
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
PACKED = ("_blocks", "_scales")


def is_mxfp4(cfg: dict) -> bool:
    """Whether config.json `cfg` is an MXFP4 checkpoint's."""
    from engine.models.prequantized import quantization

    return quantization(cfg) == "mxfp4"


def load_kwargs(cfg: dict) -> dict:
    """from_pretrained's extra keyword arguments for a checkpoint with config.json `cfg`: MXFP4 experts dequantized
    as they load; none for any other checkpoint."""
    if not is_mxfp4(cfg):
        return {}
    from transformers import Mxfp4Config

    return {"quantization_config": Mxfp4Config(dequantize=True)}


def dequantize(blocks, scales, dtype):
    """The 16-bit (or fp32) parameter of an MXFP4 pair: blocks [E, rows, G, 16] uint8 and scales [E, rows, G] uint8
    as [E, G * 32, rows] in `dtype`. One expert at a time, so the temporaries stay one expert's size."""
    import torch

    n_experts, rows, groups, half = blocks.shape
    if scales.shape != (n_experts, rows, groups) or half * 2 != BLOCK:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not pair")
    table = torch.tensor(E2M1, dtype=torch.float32)
    out = torch.empty(n_experts, groups * BLOCK, rows, dtype=dtype)
    for e in range(n_experts):
        packed = blocks[e].to(torch.uint8)
        values = torch.stack((table[(packed & 0x0F).long()], table[(packed >> 4).long()]), dim=-1)  # even, odd
        values = torch.ldexp(values.reshape(rows, groups, BLOCK), scales[e].to(torch.int32).unsqueeze(-1) - 127)
        out[e] = values.reshape(rows, groups * BLOCK).T.to(dtype)
    return out


def tensors(path: Path) -> list[tuple[str, Path, tuple, str]]:
    """[(name, shard file, shape, safetensors dtype)] of the 16-bit model a checkpoint folder holds, from the headers
    only: an MXFP4 pair is one entry, named and shaped as its dequantized parameter, its dtype "BF16" (what it
    dequantizes to exactly)."""
    return scan(path)[0]


def scan(path: Path) -> tuple[list[tuple[str, Path, tuple, str]], set[str]]:
    """(`tensors`, the names of its entries that are MXFP4 pairs)."""
    from safetensors import safe_open

    from engine.core.statefile import weight_files

    entries, pairs = [], {}
    for f in weight_files(path):
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                sl = st.get_slice(k)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                if k.endswith(PACKED) and dtype == "U8":
                    pairs.setdefault(k[: -len("_blocks")], {})[k[-len("blocks") :]] = (f, shape)
                else:
                    entries.append((k, f, shape, dtype))
    for name, pair in pairs.items():
        if set(pair) != {"blocks", "scales"}:
            raise ValueError(f"the MXFP4 tensor '{name}' has no {'scales' if 'blocks' in pair else 'blocks'}")
        f, (n_experts, rows, groups, _) = pair["blocks"]
        if pair["scales"][0] != f:
            raise ValueError(f"the MXFP4 tensor '{name}' has its blocks and scales in different files")
        entries.append((name, f, (n_experts, groups * BLOCK, rows), "BF16"))
    return entries, set(pairs)


def read(name: str, f: Path, dtype=None):
    """Tensor `name` of shard `f` (an entry of `tensors`): as stored, or an MXFP4 pair dequantized to `dtype`."""
    import torch
    from safetensors import safe_open

    with safe_open(f, framework="pt") as st:  # a handle per tensor: its memory map closes at once
        if f"{name}_blocks" in st.keys() and name not in st.keys():
            return dequantize(st.get_tensor(f"{name}_blocks"), st.get_tensor(f"{name}_scales"), dtype or torch.bfloat16)
        return st.get_tensor(name)


def param_count(path: Path) -> int:
    """Number of weights of the model in a safetensors folder (an MXFP4 pair counts as its dequantized tensor)."""
    return sum(math.prod(shape) for _, _, shape, _ in tensors(path))
