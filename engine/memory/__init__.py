"""Whether and how a run fits in memory: the estimator, the one verdict the UI, CLI and run share, the offload
manager (activation store, weight streaming, host embedding), the checkpointing policy and gradient release.

May import engine.core, engine.data, engine.spec and engine.patching.
"""
