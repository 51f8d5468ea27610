"""Triton kernels, one op per file, each beside its pure-torch reference (see shared/STYLE.md).

Kernels import torch and triton only: never engine, transformers, peft, trl or gradio (tests/test_layering.py).

Fused multiply-add stays on: every kernel here was checked and timed with Triton's default of fusing a * b + c into
one FMA, and Triton 3.10 turns that default off (3.9 warns, once a process, while TRITON_DEFAULT_FP_FUSION is unset).
A value the user set is kept.
"""

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
