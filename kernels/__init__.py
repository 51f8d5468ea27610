"""Triton kernels, one op per file, each beside its pure-torch reference (see shared/STYLE.md).

Kernels import torch and triton only: never engine, transformers, peft, trl or gradio (tests/test_layering.py).
"""
