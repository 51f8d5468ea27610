"""The Gradio UI: one builder per tab. Imports gradio and engine.api only (tests/test_layering.py)."""
