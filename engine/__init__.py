"""Tunesmith's engine: data, memory planning, model loading, training, chat and export behind one API (engine.api).

Stage packages, lowest first (each may import only itself and the ones before it; tests/test_layering.py checks it):
core, data, spec, patching, memory, models, chat, training, export, api. The modules directly in engine/ are entry
points above them all: run (the run subprocess), __main__ (the CLI), bench (the shared harness), calibrate.

Importing this package is cheap: torch, transformers and friends load only when a function needs them, so the UI
process can import engine.api without pulling in torch.
"""
