"""Training runs: one module per objective (sft with its loop, pretrain, preference for DPO/ORPO, grpo), the TRL run
shared by the TRL-based objectives, the shared steps (optimizer, schedule, checkpoints), the pre-run checks, and the one
dispatcher that picks the objective (dispatch.train, called by the run subprocess, engine.run).

May import every stage up to engine.chat (GRPO samples with the chat decoder); the objectives never import each other.
"""
