"""Tunesmith's engine: loading, data, training, chat and export behind one API (engine.api).

Importing this package is cheap: torch, transformers and friends load only when a function needs them, so the UI
process can import engine.api without pulling in torch.
"""
