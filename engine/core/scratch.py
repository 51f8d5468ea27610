"""Scratch memory of the fast path that engine.memory.estimate counts, here (no torch) so that the plain-Python estimate
reads the numbers engine.patching uses.
"""

# NF4 experts (engine.patching.moe) are dequantized this many bytes of 16-bit weights at a time at most (whole experts;
# one expert when a single one is larger): 64 MiB is 10 of Qwen3-30B-A3B's gate_up tensors (6 MiB each) and one of
# Mixtral-8x7B's (224 MiB), against a whole layer's stack of 768 MiB and 3.5 GiB.
EXPERT_CHUNK_BYTES = 64 * 2**20


def experts_per_chunk(per_expert_bytes: int) -> int:
    """How many experts whose largest tensor takes `per_expert_bytes` one dequantization chunk holds."""
    return max(1, EXPERT_CHUNK_BYTES // max(1, per_expert_bytes))
