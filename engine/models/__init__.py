"""Models: find, download and load one (with the fast path and the memory plan applied), the hub (download with
progress, upload), and the VRAM-tier presets with the curated model catalog.

May import engine.core, engine.data, engine.spec, engine.patching and engine.memory.
"""
