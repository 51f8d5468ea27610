"""Padding of a run's padding-free micro-batches, as `python -m engine train` plans them (issue 22), on the CPU.

    python3 bench/padding.py --data identity|alpaca|long [--n 400] [--bs 8] [--accum 1] [--seq 2048] [--epochs 1]
                             [--packing]

Writes the shared e2e harness's dataset (`e2e_bench.make_data`, the same rows for the same --n and --data) and its
tokenizer (`train_bench.make_tokenizer`, the one its random-weight models carry), tokenizes the rows with the
engine's own data path (`engine.data.tokenizing.load_examples`, the default template and max_seq_length), and
prints for the run's micro-batches, plain shuffled and evened out by tokens (engine.training.steps.even_out): the
bucket sizes the run plans (engine.data.batching.plan_buckets with the CUDA-graph price of the GPU path) and the
share of the padded tokens that is padding: the figures a GPU run's log prints in its `batches:` lines. With
`--accum` above 1 each step's micro-batches are joined into rows (engine.training.steps.rows_of_run, the steps
evened out instead of the micro-batches, as the run does), and the rows are what is planned. No model, no GPU.
The harness is read from $BENCH_HARNESS, else .bench/, else ../shared/bench/.
"""

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def harness() -> Path:
    for folder in (os.environ.get("BENCH_HARNESS"), ROOT / ".bench", ROOT.parent / "shared" / "bench"):
        if folder and (Path(folder) / "e2e_bench.py").exists():
            return Path(folder)
    sys.exit("no e2e_bench.py in $BENCH_HARNESS, .bench/ or ../shared/bench/")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="alpaca", choices=["identity", "alpaca", "long"])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1, help="grad_accum: micro-batches per step, joined into rows")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--seed", type=int, default=3407, help="the job's seed (JobSpec's default)")
    a = ap.parse_args()
    sys.path.insert(0, str(harness()))
    import e2e_bench
    import train_bench
    from transformers import AutoTokenizer

    from engine.data.batching import EAGER_STEP_COST, GRAPH_SHAPE_COST, planned
    from engine.data.tokenizing import load_examples
    from engine.spec.jobspec import JobSpec
    from engine.training.steps import micro_batches_of_run, rows_of_run

    with tempfile.TemporaryDirectory() as work:
        data, tokenizer = Path(work) / "data.jsonl", Path(work) / "tokenizer"
        e2e_bench.make_data(str(data), a.n, a.data)
        train_bench.make_tokenizer(str(tokenizer))
        tok = AutoTokenizer.from_pretrained(str(tokenizer))
        spec = JobSpec.from_yaml(
            f"model: {tokenizer}\ndata: {data}\nname: padding\nmax_seq_length: {a.seq}\nbatch_size: {a.bs}\n"
            f"packing: {str(a.packing).lower()}\nseed: {a.seed}\n"
        )
        examples = load_examples(spec, tok, log=lambda line: None)
    lengths = [len(e.input_ids) for e in examples]
    steps = math.ceil(a.epochs * math.ceil(len(examples) / a.bs) / a.accum)
    count = steps * a.accum
    print(f"{a.data}: {len(examples)} examples, {sum(lengths)} tokens, micro-batches of {a.bs}, {count} of them")
    for name, by in (("shuffled", None), ("evened out", lengths)):
        run = micro_batches_of_run(len(examples), a.bs, a.seed, count, by, a.accum)
        if a.accum > 1:
            run = rows_of_run(run, a.accum, 1, lengths, a.bs * a.seq)
            name = f"{name}, joined into {len(run)} rows"
        sizes, share = planned(examples, run, GRAPH_SHAPE_COST, once_cost=EAGER_STEP_COST)
        counts = sorted(sum(lengths[i] for i in micro) for micro in run)
        print(
            f"  {name}: buckets {', '.join(map(str, sizes))}; {100 * share:.1f}% padding; "
            f"tokens {counts[0]}-{counts[-1]} (median {counts[len(counts) // 2]})"
        )


if __name__ == "__main__":
    main()
