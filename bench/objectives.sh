#!/bin/bash
# DPO and GRPO on qwen3_0.6b (random weights): the engine's job path against plain TRL + PEFT, each impl/objective in
# its own process so peak memory does not mix. Prints each run's RESULT line (bench/objectives_bench.py says what is
# measured) and the log lines that say which paths ran. Carry .anchors (bitsandbytes, trl, datasets) and .bench.
#   bash bench/objectives.sh                     # the four runs, about 5 minutes on an H100
#   bash bench/objectives.sh --steps 4 --tiny    # extra arguments go to every run
set -u
export PYTHONPATH=$PWD/.anchors PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
arch=qwen3_0.6b
[[ " $* " == *" --tiny "* ]] && arch=tiny
# the checkpoint is made once, outside the timed runs
python3 -c "import sys; sys.path.insert(0, '.bench'); from train_bench import ensure_model; ensure_model('$arch')"
for run in "project dpo" "trl dpo" "project grpo" "trl grpo"; do
  read -r impl objective <<<"$run"
  echo "== $impl $objective"
  timeout 135 python3 bench/objectives_bench.py --impl "$impl" --objective "$objective" "$@" 2>&1 \
    | grep -E "^RESULT|grpo: sampler|^[0-9:]+ decode:|cuda graphs|checkpointing:|Error|error:" | tail -12
  echo "exit ${PIPESTATUS[0]}"
done
