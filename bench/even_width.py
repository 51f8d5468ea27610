"""Time and peak memory of one epoch's batch plan (engine.training.steps.batches_for_epoch) on the CPU, no model.

    python3 bench/even_width.py BATCH_SIZE MICRO_BATCHES_PER_STEP

100,000 Alpaca-like lengths (log-normal, median ~245 tokens); the evened-out unit is BATCH_SIZE x MICRO_BATCHES_PER_STEP
examples where a step's micro-batches are joined (EVEN_WIDEST bounds it). Run each width in its own process: the
peak RSS is the process's.
"""

import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.training.steps import batches_for_epoch  # noqa: E402

batch_size, per_step = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(0)
lengths = [max(20, int(rng.lognormvariate(5.5, 0.7))) for _ in range(100_000)]
t = time.perf_counter()
batches_for_epoch(len(lengths), batch_size, 3407, 0, lengths, per_step)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"width {batch_size * per_step}: {time.perf_counter() - t:.2f} s, peak RSS {rss:.0f} MB")
