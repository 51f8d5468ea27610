"""Instructions per weight in the main loop of the NF4 matvec kernel as compiled for the H100 (sm_90), counted without
a GPU: a proxy, not a speed. At batch 1 the kernel is bounded by how fast the SMs issue instructions for each byte the
memory delivers, so fewer instructions per weight is what `kernels.nf4_matvec.pick_config`'s starting rule looks
for until bench/bench_nf4_matvec.py has measured configs on the GPU.

    python bench/nf4_matvec_sass.py [--configs 8x128w1gather,4x512w4load] [--rows 1] [--before] [--group]

For each config (default: the picked ones of the NF4 decode shapes of Qwen3-4B and Llama-8B) it compiles the kernel
for bf16 x, nested absmax, K a multiple of the step, through Triton's own compiler and ptxas, disassembles it with
the nvdisasm that ships with Triton, finds the K loop (the backward branch) and prints its instructions, their count
per weight (weights a thread handles per step) and the registers. `--before` also counts the previous kernel's loop
(bench/nf4_matvec_before.py); `--group` also counts kernels/nf4_group_matvec.py's loop for each config.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile for the GPU even where there is none
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import nf4_matvec  # noqa: E402
from kernels.nf4_matvec import Nf4MatvecConfig, pick_config  # noqa: E402

SHAPES = [(4096, 2560), (1024, 2560), (2560, 4096), (9728, 2560), (2560, 9728), (4096, 4096), (14336, 4096)]
TARGET = GPUTarget("cuda", 90, 32)
PTRS = dict(packed_ptr="*u8", absmax_ptr="*u8", absmax2_ptr="*fp32", code2_ptr="*fp32", code_ptr="*fp32")


def _tool(name: str, cubin: bytes, *flags: str) -> str:
    """The output of one of the CUDA binary tools that ship with Triton, run on `cubin`."""
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(path), *flags, f.name], capture_output=True, text=True, check=True).stdout


def loop_stats(cubin: bytes) -> tuple[int, collections.Counter]:
    """(instructions, opcode counts) of the first loop (the span of the first backward branch) in a cubin."""
    labels, ops, pending = {}, [], []
    for line in _tool("nvdisasm", cubin, "-c").splitlines():
        if m := re.match(r"^(\.L_x_\d+):", line):
            pending.append(m.group(1))
        elif m := re.match(r"\s*/\*([0-9a-f]{4})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?);", line):
            addr = int(m.group(1), 16)
            labels.update((name, addr) for name in pending)
            pending = []
            ops.append((addr, m.group(2), m.group(3)))
    for addr, op, args in ops:
        target = re.search(r"(\.L_x_\d+)", args)
        if op.startswith("BRA") and target and labels.get(target.group(1), addr) < addr:
            body = [o for a, o, _ in ops if labels[target.group(1)] <= a <= addr]
            return len(body), collections.Counter(o.split(".")[0] for o in body)
    return 0, collections.Counter()


def compile_new(cfg: Nf4MatvecConfig, rows: int):
    sig = dict(xw_ptr="*i32", **PTRS, b_ptr="*bf16", y_ptr="*bf16", part_ptr="*fp32", M="i32", N="i32", K="i32",
               n_blocks="i32", kb_per_split="i32", offset="fp32")  # fmt: skip
    const = dict(BLOCKSIZE=64, BLOCKSIZE2=256, NESTED=True, ALIGNED=True, EVEN_K=True, GATHER=cfg.decode == "gather",
                 HAS_BIAS=False, SPLIT=cfg.split_k > 1, PRECISION="tf32", BLOCK_M=1 if rows == 1 else 16,
                 BLOCK_N=cfg.block_n, BLOCK_KB=cfg.block_kb, GROUP=min(32, cfg.block_kb),
                 NUM_STAGES=cfg.num_stages)  # fmt: skip
    sig.update(dict.fromkeys(const, "constexpr"))
    divisible = {(i,): [["tt.divisibility", 16]] for i in (*range(9), 10, 11, 12, 13)}  # pointers, N, K, counts
    src = ASTSource(fn=nf4_matvec._nf4_matvec_kernel, signature=sig, constexprs=const, attrs=divisible)
    return triton.compile(src, target=TARGET, options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def compile_group(cfg: Nf4MatvecConfig, rows: int):
    """kernels/nf4_group_matvec.py's kernel, as compile_new compiles nf4_matvec's (three weights' slots)."""
    from kernels import nf4_group_matvec

    sig = dict(xw_ptr="*i32", y_ptr="*bf16", part_ptr="*fp32")
    for i in range(3):
        sig.update({f"packed{i}": "*u8", f"absmax{i}": "*u8", f"absmax2_{i}": "*fp32", f"code2_{i}": "*fp32",
                    f"code{i}": "*fp32", f"b{i}": "*bf16", f"n{i}": "i32", f"n_blocks{i}": "i32",
                    f"offset{i}": "fp32"})  # fmt: skip
    sig.update(M="i32", N="i32", K="i32", kb_per_split="i32", end0="i32", end1="i32")
    const = dict(BLOCKSIZE=64, BLOCKSIZE2=256, NESTED=True, ALIGNED=True, EVEN_K=True, GATHER=cfg.decode == "gather",
                 HAS_BIAS=False, SPLIT=cfg.split_k > 1, PRECISION="tf32", BLOCK_M=1 if rows == 1 else 16,
                 BLOCK_N=cfg.block_n, BLOCK_KB=cfg.block_kb, GROUP=min(32, cfg.block_kb),
                 NUM_STAGES=cfg.num_stages)  # fmt: skip
    names = list(sig)
    sig.update(dict.fromkeys(const, "constexpr"))
    counts = {"N", "K", "kb_per_split", *(f"{c}{i}" for c in ("n", "n_blocks") for i in range(3))}
    divisible = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(names) if sig[a].startswith("*") or a in counts}
    src = ASTSource(fn=nf4_group_matvec._nf4_group_matvec_kernel, signature=sig, constexprs=const, attrs=divisible)
    return triton.compile(src, target=TARGET, options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def compile_before():
    import nf4_matvec_before

    sig = dict(x_ptr="*bf16", **PTRS, y_ptr="*bf16", N="i32", K="i32", offset="fp32")
    const = dict(BLOCKSIZE=64, BLOCKSIZE2=256, NESTED=True, ROUND_BF16=True, BLOCK_N=16, BLOCK_KB=128)
    sig.update(dict.fromkeys(const, "constexpr"))
    divisible = {(i,): [["tt.divisibility", 16]] for i in range(9)}
    src = ASTSource(fn=nf4_matvec_before._nf4_matvec_fwd_kernel, signature=sig, constexprs=const, attrs=divisible)
    return triton.compile(src, target=TARGET, options=dict(num_warps=4, enable_fp_fusion=False))


def parse(text: str) -> Nf4MatvecConfig:
    """'8x128w1gather' -> Nf4MatvecConfig(8, 128, num_warps=1, decode="gather"); a suffix 's2' asks for 2 stages."""
    m = re.fullmatch(r"(\d+)x(\d+)w(\d+)(load|gather)(?:s(\d+))?", text)
    if not m:
        raise SystemExit(f"config {text!r}: write BLOCK_NxBLOCK_KBw<warps><load|gather>[s<stages>], e.g. 8x128w1gather")
    return Nf4MatvecConfig(int(m.group(1)), int(m.group(2)), 1, int(m.group(3)), m.group(4), int(m.group(5) or 1))


def report(name: str, kernel, weights: int) -> str:
    count, ops = loop_stats(kernel.asm["cubin"])
    regs = re.search(r"REG:(\d+)", _tool("cuobjdump", kernel.asm["cubin"], "-res-usage"))
    top = ", ".join(f"{op} {n}" for op, n in ops.most_common(8))
    return (
        f"{name}: {count} instructions a step / {weights} weights a thread = {count / weights:.2f} a weight, "
        f"{regs.group(1) if regs else '?'} registers ({top})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="", help="comma-separated, e.g. 8x128w1gather,4x512w4load")
    parser.add_argument("--rows", type=int, default=1, help="rows of x: 1, or 2..16 for the tensor-core kernel")
    parser.add_argument("--before", action="store_true", help="also count the previous kernel's loop")
    parser.add_argument("--group", action="store_true", help="also count kernels/nf4_group_matvec.py's loop")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, target sm_90, bf16 x, nested absmax")
    configs = [parse(c) for c in args.configs.split(",") if c] or list(
        dict.fromkeys(pick_config(*nk, args.rows) for nk in SHAPES)
    )
    for cfg in configs:
        weights = 2 * cfg.block_n * cfg.block_kb // (32 * cfg.num_warps)
        print(
            report(
                f"{cfg.block_n}x{cfg.block_kb}B w{cfg.num_warps} {cfg.decode} st{cfg.num_stages}",
                compile_new(cfg, args.rows),
                weights,
            )
        )
        if args.group:
            print(report("  grouped (3 weights' slots)", compile_group(cfg, args.rows), weights))
    if args.before:
        print(report("before (16x128B w4)", compile_before(), 2 * 16 * 128 // 128))


if __name__ == "__main__":
    main()
