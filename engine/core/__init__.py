"""Foundations every stage uses: user errors, safe file writes, the disk, the run log, training-state files, hub ids and
the machine (GPU, memory, device and dtype).

Imports nothing of the engine outside engine.core.
"""
