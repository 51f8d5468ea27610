#!/bin/bash
# The fast path and the offload manager on the GPU machine, in one call: optionally the GPU tests, then the harness
# (a copy in .bench/) side by side for each "impl arch mode [extra harness args]" argument, e.g.
#   bash bench/fastpath.sh --tests "project qwen3_0.6b lora" "hf qwen3_0.6b lora" "unsloth qwen3_0.6b lora"
# Carry .anchors (bitsandbytes, trl, datasets, Unsloth, Liger: ../shared/bench/prepare_device_site.sh --anchors)
# and .bench. Prints the harness's RESULT lines.
set -u
export PYTHONPATH=$PWD/.anchors PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ ${1:-} == --tests ]]; then
  shift
  python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu tests/kernels/test_lora.py tests/test_patching_parity.py \
    tests/test_offload.py 2>&1 | grep -vi warn | tail -60
fi
for run in "$@"; do
  read -r impl arch mode extra <<<"$run"
  echo "== $run"
  timeout 420 python3 .bench/train_bench.py --impl "$impl" --arch "$arch" --mode "$mode" $extra 2>&1 \
    | grep -E "^RESULT|^# (patching|checkpointing|plan|offload|loading|cuda graphs)|Error|error:" | tail -12
done
