#!/bin/bash
# The real-data yardstick on the GPU machine, side by side in one call: ../shared/bench/e2e_bench.py (a copy in
# .bench/) for each "impl data mode [extra e2e_bench args]" argument, one process each so peak memory does not mix:
#   bash bench/e2e.sh "project alpaca qlora" "unsloth alpaca qlora" "project identity qlora --dtype fp16"
# ARCH picks the model (default qwen3_4b). Carry .anchors (bitsandbytes, trl, datasets, Unsloth:
# ../shared/bench/prepare_device_site.sh --anchors) and .bench. Prints each run's RESULT line and the run log's
# lines that say which paths ran; the full output goes to $OUT/e2e.log when OUT is set.
set -u
export PYTHONPATH=$PWD/.anchors PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log=${OUT:-/tmp}/e2e.log
python3 -c "import sys; sys.path.insert(0, '.bench'); from train_bench import ensure_model; ensure_model('${ARCH:-qwen3_4b}')"
for run in "$@"; do
  read -r impl data mode extra <<<"$run"
  echo "== $run" | tee -a "$log"
  timeout "${RUN_TIMEOUT:-400}" python3 .bench/e2e_bench.py --impl "$impl" --arch "${ARCH:-qwen3_4b}" --data "$data" --mode "$mode" \
    $extra >/tmp/e2e_one.log 2>&1
  echo "exit $?"
  cat /tmp/e2e_one.log >>"$log"
  grep -E "^RESULT|batching|bucket|cuda graphs|first step|kernels|Error|error:" /tmp/e2e_one.log | tail -9
  if [[ $impl == project ]]; then  # the run's own log.txt (not printed by the harness): where loading and the end went
    runlog="$(ls -d runs/*e2e 2>/dev/null | sort | tail -1)/log.txt"
    if [[ -f $runlog ]]; then
      cat "$runlog" >>"$log"
      grep -E "startup:|kernels compiled|16-bit copies|cuda graphs|timing:|saved adapter" "$runlog"
    fi
  fi
done
