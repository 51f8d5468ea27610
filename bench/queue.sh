#!/bin/bash
# The pending GPU measurements, one `run` call each, in priority order (bench/README.md, "Next GPU session"):
#   bash bench/queue.sh N   on the GPU machine, carry [".anchors", ".bench"] (bash bench/prepare_device.sh here first)
#   bash bench/queue.sh     lists the calls
# Each call ends before QUEUE_END_S seconds (565): every step runs under `timeout`, cut to what is left of the call,
# and is skipped when less than 15 s are left. Everything goes to $OUT/callN.log when OUT is set.
set -uo pipefail
export PYTHONPATH=$PWD/.anchors PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
END=${QUEUE_END_S:-565}
logdir=${OUT:-/tmp}
ID=qwen3_30b_a3b_12l

list() {
  cat <<'EOF'
1  issue 22: the card's kernel target; identity fp16 e2e, project vs Unsloth, cold Triton caches (wall_s <= 0.5x);
   alpaca QLoRA defaults vs --packing 1 (>= 90%)
2  issue 22: GPU tests (the two that failed at 9d8ca1d first, then the newer ones, then tests/kernels) -> gpu_tests.log
3  issue 22: e2e `long` QLoRA and `alpaca` LoRA rows, project vs Unsloth
4  issue 29: qwen3_30b_a3b_12l QLoRA seq 2048 bs 2: project, Unsloth, hf
5  issue 29: the same project run under --vram-gib 8 and 5; active-only expert fetch on/off at 8 tokens, --vram-gib 5
6  issue 24: budget sweep, the rest of llama8b's and qwen3_14b's 0.2 GiB steps
7  issue 24: budget sweep, the rest of qwen3_4b's 0.2 GiB steps; then llama8b QLoRA uncapped (project)
8  issue 30: decode bf16 batch 1; decode_profile bf16+NF4 batch 8; NF4 groups off; NF4 matvec and group benches
9  issue 22: identity fp16 without the kernel warm-up (TUNESMITH_KERNEL_WARMUP=0) and with, cold; then warm
10 issue 22: where an alpaca-sized padding-free step (8 x ~280 tokens) loses per token against a packed one
   (8 x ~1,824): bench/profile_step.py --varlen, QLoRA and LoRA
11 issue 22: alpaca QLoRA side by side: project defaults and --packing 1, Unsloth defaults and --packing 1
12 issue 22, this session's changes (eager size of one micro-batch, no per-step wait): their GPU tests; project
   alpaca QLoRA defaults and --packing 1, identity fp16; profile of the alpaca-sized and packed steps (QLoRA)
13 a step's micro-batches joined into rows (presets' 2 x 4): identity fp16 and alpaca QLoRA, joined and apart
   (TUNESMITH_JOIN=0); first the GPU tests of e6d26c8 (kernels.rms_norm without dw)
14 issue 29: the MoE step after f8e7b47 (NF4 experts dequantized a layer at a time): qwen3_30b_a3b_12l QLoRA seq
   2048 bs 2, project only, with kernels.grouped_mm and with torch._grouped_mm; grouped kernel tests on both; the MoE
   GPU tests; the step's profile
15 issue 29: kernels.grouped_mm's tile sizes against torch._grouped_mm, product by product (bench_grouped_mm.py);
   the step with TUNESMITH_GROUPED_MM=torch after its layout check; then call 5's --vram-gib 8 and 5
16 issue 29: the MoE step side by side (project, Unsloth, hf) with torch._grouped_mm the default and 16-bit copies
   of the NF4 experts where the plan has room; the GPU tests of both; the step's profile
17 issue 29: call 16's step after moe.Rows (no atomic scatter) and CUTLASS for every LoRA factor: project step,
   its profile, the MoE GPU tests
19 issue 22: call 11 after the one long micro-batch runs as rows of the captured size (Collator.rows), with the
   project's defaults at f81baef (before it; a git worktree of the copied repository) last
20 issue 30: decode attention over the filled positions (CHUNK 16): its GPU tests; decode bf16 batch 1 at HEAD and
   at f81baef (a git worktree), decode_profile bf16 batch 8
22 issue 29: CUDA graphs of the MoE layers (TUNESMITH_MOE_GRAPHS=1): their GPU test, then the qwen3_30b_a3b_12l
   QLoRA step with and without them, Unsloth, and the captured step's profile
23 issue 22: the load-time plan made for the data's largest micro-step: alpaca QLoRA defaults and --packing 1,
   defaults and identity fp16 again with TUNESMITH_PLAN_FOR_DATA=0, then Unsloth's alpaca defaults
18 issue 29: one machine, side by side: the MoE step at HEAD and at f28c0d0 (before moe.Rows and the one-pass LoRA
   add; a git worktree of the copied repository), then Unsloth
21 issue 30: the decoder's kernel warm-up (engine.chat.warmup), first reply <= 3 s: its GPU test; decode bf16 batch 1
   with a cold Triton cache, with the warm-up and without (TUNESMITH_DECODE_WARMUP=0); decode_profile bf16+NF4
   batch 8, cold
24 issues 30, 29, 22: the decoder warm-up loading its kernels (launchers built): its GPU test, decode bf16 batch 1
   with a cold Triton cache, then warm; MoE graphs on by default: the MoE GPU tests, the qwen3_30b_a3b_12l step,
   identity e2e on it with and without TUNESMITH_MOE_GRAPHS=0; identity fp16 without the kernel warm-up (its
   startup laps); alpaca QLoRA defaults and --packing 1 again
25 issue 29: chat on a MoE model, the speed the Chat tab decodes qwen3_30b_a3b_12l at (bf16 and NF4, engine's
   decoder path or transformers' generate, whichever it picks), against transformers' generate; then call 19 on an H200
26 issue 22: alpaca QLoRA defaults against --packing 1 on 3,000 examples (the issue's own packing row; 400 examples
   give the packed run 3 steady steps), each twice, alternating
27 issue 29: decode_profile on qwen3_30b_a3b_12l (bf16 and NF4, rows one after another on the forward path), then
   the QLoRA step under --vram-gib 8 and 5 with today's planner (MoE graphs the default, counted by the plan)
28 issue 22 (ran 2026-12-06: bench/README.md, "StepRecords timed"): a step's record written while the next step runs
   (engine.training.sft.StepRecords): alpaca QLoRA defaults and --packing 1 on 3,000 examples, then the defaults at
   b43ce33 (before it; old_tree) on the same machine; its GPU test
29 call 28 cut to what 374 s of device time hold: alpaca QLoRA defaults on 1,500 examples at HEAD and at b43ce33
30 issue 30 (ran 2026-12-07 on an H100: bench/README.md, "measured slower: off"): the norms and SwiGLU inside the
   packed matvecs of one token (kernels/fused_matvec.py): its GPU tests,
   then decode_profile bf16+NF4 batch 8 with TUNESMITH_DECODE_FUSE=0 (the default) and =1, one machine
31 issue 24 (ran 2026-12-07 on an H100): full fine-tuning of qwen3_4b with torch AdamW at 33 and 40 GiB, paged 8-bit at
   40 GiB: planned against measured peak (bench/full_ft.py)
32 issue 24 (ran 2026-12-07 on an H100): the DPO and GRPO plans (LoRA, qwen3_0.6b) against their measured peaks
   (bench/objectives_bench.py, project only)
EOF
}

step() {  # step SECONDS CMD...: CMD under timeout, cut to the call's end; skipped when under 15 s are left
  local want=$1 left=$((END - SECONDS)) rc
  shift
  ((want < left)) || want=$left
  if ((want < 15)); then
    echo "== SKIPPED (the call's end is near): $*"
    return 0
  fi
  echo "== [${SECONDS}s] $* (timeout ${want}s)"
  timeout -k 5 "$want" "$@"
  rc=$?
  echo "== exit $rc at ${SECONDS}s"
}

header() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  step 60 python3 -c "import torch, triton, transformers, peft; print('torch', torch.__version__, 'triton', \
triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  df -h /tmp | tail -1
}

keep_models() {  # keep_models ARCH...: the GPU machine's disk is 64 GiB; drop the harness's other models
  local root=${BENCH_MODEL_ROOT:-/tmp/models} m
  for m in "$root"/*; do
    [[ -d $m && " $* " != *" $(basename "$m") "* ]] && rm -rf "$m" && echo "== removed $m"
  done
  return 0
}

e2e() {  # e2e SECONDS RUN_TIMEOUT CACHE "impl data mode [args]"...: bench/e2e.sh, Triton/Inductor caches in CACHE
  local want=$1 run_timeout=$2 cache=$3
  shift 3
  step "$want" env RUN_TIMEOUT="$run_timeout" TRITON_CACHE_DIR="$cache/triton" \
    TORCHINDUCTOR_CACHE_DIR="$cache/inductor" bash bench/e2e.sh "$@"
}

call1() {  # issue 22: identity wall_s, project <= 0.5x Unsloth's; what the warm-up (engine/patching/warmup.py) saves
  keep_models qwen3_4b
  step 60 python3 -c "import torch,kernels.target as t; print(t.of(torch.empty(1,device='cuda')))"
  local a b
  a=$(mktemp -d) b=$(mktemp -d)  # a cold cache per run (the first includes making the model)
  e2e 200 150 "$a" "project identity qlora --dtype fp16"
  e2e 190 150 "$b" "unsloth identity qlora --dtype fp16"
  # the default path against --packing 1 (>= 90%), micro-batches evened out by tokens since 2b8e777; cache warm
  e2e 180 100 "$a" "project alpaca qlora" "project alpaca qlora --packing 1"
}

call9() {  # issue 22: what the kernel warm-up saves, cold; and a user's second run (warm cache)
  local a c
  a=$(mktemp -d) c=$(mktemp -d)
  keep_models qwen3_4b
  e2e 190 150 "$a" "project identity qlora --dtype fp16"
  TUNESMITH_KERNEL_WARMUP=0 e2e 190 150 "$c" "project identity qlora --dtype fp16"
  e2e 150 120 "$a" "project identity qlora --dtype fp16"  # warm cache: a user's second run
}

call2() {  # issue 22 and the fixes since 9d8ca1d: GPU tests, 3 groups so each prints its summary
  # test_decode_nf4_groups.py and test_graph_shapes.py hold no test marked gpu at this commit (all deselected)
  local args=(-m gpu -p no:cacheprovider -v -rfEs --durations=10)
  keep_models qwen3_4b
  {
    step 230 python3 -m pytest "${args[@]}" tests/test_moe_offload.py tests/test_notebook_api.py tests/test_warmup.py \
      tests/test_mxfp4.py tests/test_moe_expert_fetch.py tests/test_decode_nf4_groups.py tests/test_graph_shapes.py
    step 170 python3 -m pytest "${args[@]}" tests/test_offload.py tests/test_infer.py tests/test_decode_batch.py \
      tests/test_batching.py
    step 170 python3 -m pytest "${args[@]}" tests/kernels
  } 2>&1 | tee -a "$logdir/gpu_tests.log"
}

call3() {  # issue 22: the rows still missing (bench/README.md, "Still missing"), side by side
  local a
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 150 100 "$a" "project long qlora"
  e2e 200 170 "$a" "unsloth long qlora"
  e2e 220 90 "$a" "project alpaca lora" "unsloth alpaca lora"
}

call4() {  # issue 29: MoE QLoRA at Qwen3-30B-A3B's width, 12 layers; Unsloth and hf time 5 steps after 2
  local run=(python3 .bench/train_bench.py --arch "$ID" --mode qlora --seq 2048 --bs 2)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 120 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --impl project
  step 180 "${run[@]}" --impl unsloth --steps 5 --warmup 2
  step 180 "${run[@]}" --impl hf --steps 5 --warmup 2
}

call5() {  # issue 29: budgets; TUNESMITH_ACTIVE_EXPERTS (engine/memory/expert_fetch.py) only acts on micro-batches
  # of <= 10 tokens whose layers stream: 8 tokens under 5 GiB (`python -m engine estimate ... --ram 100` streams 8
  # of the 12 layers there)
  local run=(python3 .bench/train_bench.py --impl project --arch "$ID" --mode qlora)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 130 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --seq 2048 --bs 2 --vram-gib 8
  step 150 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --seq 2048 --bs 2 --vram-gib 5
  step 100 env TUNESMITH_BENCH_BATCH=1 "${run[@]}" --seq 8 --bs 1 --vram-gib 5
  step 100 env TUNESMITH_BENCH_BATCH=1 TUNESMITH_ACTIVE_EXPERTS=0 "${run[@]}" --seq 8 --bs 1 --vram-gib 5
}

# Budgets of bench/budget_sweep.py's SWEEPS not in bench/README.md's table of 2026-12-05 (commit 9d8ca1d)
call6() {  # issue 24
  keep_models llama8b qwen3_14b
  step 250 python3 bench/budget_sweep.py --parallel 2 --deadline-s 240 --only llama8b --budgets 5.8,6.2,6.6,7.0,7.4,7.8
  local left=$((END - SECONDS - 10))
  step $((left + 5)) python3 bench/budget_sweep.py --parallel 2 --deadline-s "$left" --only qwen3_14b \
    --budgets 3.8,4.0,4.4,4.6,5.0,5.2,5.6,5.8
}

call7() {  # issue 24; then the H200's uncapped llama8b figure (the budget section's "for the next call")
  keep_models qwen3_4b llama8b
  step 450 python3 bench/budget_sweep.py --parallel 2 --deadline-s 440 --only qwen3_4b \
    --budgets 6.2,6.4,6.6,6.8,7.2,7.4,7.6,7.8,8.2,8.4,8.6,8.8,9.2,9.4,9.6,9.8
  step 150 env TUNESMITH_BENCH_BATCH=2 python3 .bench/train_bench.py --impl project --arch llama8b --mode qlora \
    --seq 2048 --bs 2
}

call11() {  # issue 22: the alpaca targets in one call (>= 3x Unsloth, >= 90% of --packing 1, packing >= 3x Unsloth's)
  local a
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 170 100 "$a" "project alpaca qlora" "project alpaca qlora --packing 1"
  e2e 200 180 "$a" "unsloth alpaca qlora"
  e2e 180 170 "$a" "unsloth alpaca qlora --packing 1"
}

call12() {  # issue 22: what 76740b3 (eager size of one micro-batch) and 435766c (no per-step wait) change
  local a prof=(python3 bench/profile_step.py --impl project --arch qwen3_4b --varlen --bs 8 --rows 25 --mode qlora)
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 200 100 "$a" "project alpaca qlora" "project alpaca qlora --packing 1"
  step 120 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_patching_parity.py tests/test_batching.py \
    -k "graph or one_micro_batch or padding_free or varlen"
  step 90 python3 -m pytest -p no:cacheprovider -q -rfEs tests/kernels/test_rms_norm.py tests/test_warmup.py
  e2e 80 70 "$a" "project identity qlora --dtype fp16"
  step 80 "${prof[@]}" --seq 280
  step 80 "${prof[@]}" --seq 1824
}

call13() {  # a step's micro-batches joined into padding-free rows (engine.training.sft), at a preset's 2 x 4
  local run=(python3 bench/preset_e2e.py --bs 2 --accum 4)
  keep_models qwen3_4b
  step 90 python3 -m pytest -p no:cacheprovider -q -rfEs tests/kernels/test_rms_norm.py tests/test_warmup.py
  step 100 "${run[@]}" --data identity --dtype fp16
  step 100 env TUNESMITH_JOIN=0 "${run[@]}" --data identity --dtype fp16
  step 100 "${run[@]}" --data alpaca
  step 100 env TUNESMITH_JOIN=0 "${run[@]}" --data alpaca
}

call14() {  # issue 29: f8e7b47 against call 4's 6,707 tokens/s (0.61 s steps, 67% of it the GPU waiting on the host)
  local args=(--arch "$ID" --mode qlora --seq 2048 --bs 2)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 120 env TUNESMITH_BENCH_BATCH=2 python3 .bench/train_bench.py --impl project "${args[@]}"
  step 120 env TUNESMITH_BENCH_BATCH=2 TUNESMITH_GROUPED_MM=torch python3 .bench/train_bench.py --impl project \
    "${args[@]}"  # the grouped products through torch._grouped_mm (CUTLASS) instead of kernels.grouped_mm
  step 90 python3 bench/bench_grouped_mm.py  # ours against torch._grouped_mm at Qwen3-30B-A3B's gate_up
  step 60 env TUNESMITH_GROUPED_MM=torch python3 -m pytest -p no:cacheprovider -q -rfEs \
    tests/kernels/test_grouped_mm.py tests/kernels/test_nf4_grouped_mm.py
  step 150 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_moe_offload.py \
    tests/test_moe_expert_fetch.py tests/kernels/test_nf4_grouped_mm.py tests/test_moe_parity.py
  step 100 python3 bench/profile_step.py --impl project "${args[@]}" --rows 25
}

call15() {  # issue 29: call 14 measured 21,787 tokens/s (kernels.grouped_mm's fixed 64x64x32 tiles); torch._grouped_mm
  # refused a PEFT factor's permuted view there (now left to the Triton kernel)
  local run=(python3 .bench/train_bench.py --impl project --arch "$ID" --mode qlora)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 200 python3 bench/bench_grouped_mm.py
  step 120 env TUNESMITH_BENCH_BATCH=2 TUNESMITH_GROUPED_MM=torch "${run[@]}" --seq 2048 --bs 2
  step 60 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/kernels/test_grouped_mm.py
  step 130 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --seq 2048 --bs 2 --vram-gib 8
  step 150 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --seq 2048 --bs 2 --vram-gib 5
}

call16() {  # issue 29: after call 15 (torch._grouped_mm 28,492 tokens/s against Unsloth's 33,109 of call 4)
  local run=(python3 .bench/train_bench.py --arch "$ID" --mode qlora --seq 2048 --bs 2)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 120 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --impl project
  step 150 "${run[@]}" --impl unsloth --steps 5 --warmup 2
  step 90 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/kernels/test_grouped_mm.py \
    tests/test_moe_offload.py
  step 100 python3 bench/profile_step.py --impl project --arch "$ID" --mode qlora --seq 2048 --bs 2 --rows 25
  step 150 "${run[@]}" --impl hf --steps 5 --warmup 2
}

call17() {  # issue 29: call 16 measured 30,765 tokens/s (Unsloth 32,722, hf 15,038 on the H200)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 120 env TUNESMITH_BENCH_BATCH=2 python3 .bench/train_bench.py --impl project --arch "$ID" --mode qlora \
    --seq 2048 --bs 2
  step 100 python3 bench/profile_step.py --impl project --arch "$ID" --mode qlora --seq 2048 --bs 2 --rows 25
  step 120 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/kernels/test_grouped_mm.py \
    tests/test_moe_offload.py tests/test_moe_parity.py tests/test_moe_expert_fetch.py
}

call18() {  # issue 29: what fa68db9 and 0bb7bc5 changed, on one machine (calls 16, 17 and 4 ran on three)
  local run=(python3 "$PWD/.bench/train_bench.py" --impl project --arch "$ID" --mode qlora --seq 2048 --bs 2) old
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  old=$(mktemp -d)/f28c0d0  # the harness imports the engine from its working directory
  git worktree add -q --detach "$old" f28c0d0 || return
  step 120 env TUNESMITH_BENCH_BATCH=2 "${run[@]}"
  step 120 env -C "$old" TUNESMITH_BENCH_BATCH=2 "${run[@]}"
  step 150 python3 .bench/train_bench.py --impl unsloth --arch "$ID" --mode qlora --seq 2048 --bs 2 --steps 5 \
    --warmup 2
}

call19() {  # issue 22: call 11, and what Collator.rows changes against f81baef on the same machine
  local a old
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 170 100 "$a" "project alpaca qlora" "project alpaca qlora --packing 1"
  e2e 200 180 "$a" "unsloth alpaca qlora"
  e2e 180 170 "$a" "unsloth alpaca qlora --packing 1"
  old=$(mktemp -d)/f81baef
  git worktree add -q --detach "$old" f81baef || return
  ln -s "$PWD/.anchors" "$old/.anchors" && ln -s "$PWD/.bench" "$old/.bench"
  (cd "$old" && e2e 90 80 "$a" "project alpaca qlora")
}

call20() {  # issue 30: call 8 measured 13 us a decode attention call (H100, qwen3_4b, positions 128-383)
  local old
  keep_models qwen3_4b
  step 60 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/kernels/test_decode_attention.py
  step 90 python3 .bench/decode_bench.py --impl project --arch qwen3_4b
  old=$(mktemp -d)/f81baef
  git worktree add -q --detach "$old" f81baef || return
  step 60 env -C "$old" python3 "$PWD/.bench/decode_bench.py" --impl project --arch qwen3_4b
  step 90 python3 bench/decode_profile.py --arch qwen3_4b --batch 8 --dtypes bf16 --rows 8
}

call22() {  # issue 29: the host issued 192 grouped products a step (call 17); captured layers replay them at once
  local run=(python3 .bench/train_bench.py --arch "$ID" --mode qlora --seq 2048 --bs 2)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 60 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_moe_parity.py -k graph
  step 120 env TUNESMITH_BENCH_BATCH=2 TUNESMITH_MOE_GRAPHS=1 "${run[@]}" --impl project
  step 120 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --impl project
  step 150 "${run[@]}" --impl unsloth --steps 5 --warmup 2
  step 100 env TUNESMITH_MOE_GRAPHS=1 python3 bench/profile_step.py --impl project --arch "$ID" --mode qlora \
    --seq 2048 --bs 2 --rows 25
}

call21() {  # issue 30: decode_bench's first_call_s was 5.68 s with a cold Triton cache (H100, qwen3_4b; 1.82 s
  # first_reply_s with the kernels on disk); engine.chat.warmup compiles them while the weights load. A cold cache each.
  keep_models qwen3_4b
  step 120 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_decode_warmup.py
  step 90 env TRITON_CACHE_DIR="$(mktemp -d)" python3 .bench/decode_bench.py --impl project --arch qwen3_4b
  step 90 env TRITON_CACHE_DIR="$(mktemp -d)" TUNESMITH_DECODE_WARMUP=0 python3 .bench/decode_bench.py --impl project \
    --arch qwen3_4b
  step 240 env TRITON_CACHE_DIR="$(mktemp -d)" python3 bench/decode_profile.py --arch qwen3_4b --batch 8 \
    --dtypes bf16,nf4 --rows 8
}

call23() {  # issue 22: call 19's run plans were made for 16,384 tokens (8 x 2,048) where its micro-batches held 2,304
  local a
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 170 100 "$a" "project alpaca qlora" "project alpaca qlora --packing 1"
  TUNESMITH_PLAN_FOR_DATA=0 e2e 90 80 "$a" "project alpaca qlora"
  e2e 80 70 "$a" "project identity qlora --dtype fp16"
  TUNESMITH_PLAN_FOR_DATA=0 e2e 80 70 "$a" "project identity qlora --dtype fp16"
  e2e 200 180 "$a" "unsloth alpaca qlora"
}

call24() {  # call 21: a cold cache's first decode call 3.48 s, 0.92 s of it decoding; call 22: MoE graphs 1.07x
  local a run=(python3 .bench/train_bench.py --arch "$ID" --mode qlora --seq 2048 --bs 2)
  a=$(mktemp -d)
  keep_models qwen3_4b "$ID"
  step 90 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_decode_warmup.py
  step 60 env TRITON_CACHE_DIR="$a/decode" python3 .bench/decode_bench.py --impl project --arch qwen3_4b
  step 60 env TRITON_CACHE_DIR="$a/decode" python3 .bench/decode_bench.py --impl project --arch qwen3_4b
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 120 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_moe_parity.py tests/test_moe_offload.py \
    tests/test_moe_expert_fetch.py
  step 60 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --impl project
  ARCH=$ID e2e 80 70 "$a" "project identity qlora"
  ARCH=$ID TUNESMITH_MOE_GRAPHS=0 e2e 80 70 "$a" "project identity qlora"
  # the run log's "tokenizer" lap was 9.9-12.8 s in call 23 while the kernel warm-up ran beside it: without it
  TUNESMITH_KERNEL_WARMUP=0 e2e 80 70 "$a" "project identity qlora --dtype fp16"
  e2e 170 100 "$a" "project alpaca qlora" "project alpaca qlora --packing 1"
}

call25() {  # issue 29 asks for MoE chat "on the engine's decoder (or transformers' generate with a stated speed)"
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 90 python3 .bench/decode_bench.py --impl project --arch "$ID"
  step 90 python3 .bench/decode_bench.py --impl hf --arch "$ID"
  step 120 python3 bench/decode_profile.py --arch "$ID" --batch 8 --dtypes bf16,nf4 --rows 8
}

call26() {  # issue 22: 88.5% of --packing 1 in call 23, where the packed figure was 3 steady steps (22,330-23,970)
  local a
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 290 135 "$a" "project alpaca qlora --n 3000 --packing 1" "project alpaca qlora --n 3000"
  e2e 250 120 "$a" "project alpaca qlora --n 3000 --packing 1" "project alpaca qlora --n 3000"
}

call27() {  # issue 29: call 25's profile stopped at its batch assertion; the budgets last ran in call 15
  local run=(python3 .bench/train_bench.py --impl project --arch "$ID" --mode qlora)
  keep_models "$ID"
  step 200 python3 .bench/train_bench.py --impl project --arch "$ID" --make-only
  step 130 python3 bench/decode_profile.py --arch "$ID" --batch 8 --dtypes bf16,nf4 --rows 8
  step 140 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --seq 2048 --bs 2 --vram-gib 8
  step 160 env TUNESMITH_BENCH_BATCH=2 "${run[@]}" --seq 2048 --bs 2 --vram-gib 5
}

call28() {  # issue 22: call 26 had the defaults at 88.8-89.4% of --packing 1; the grad-norm read left the GPU idle
  local a old
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 290 135 "$a" "project alpaca qlora --n 3000" "project alpaca qlora --n 3000 --packing 1"
  old=$(old_tree b43ce33) || return
  (cd "$old" && e2e 130 120 "$a" "project alpaca qlora --n 3000")
  step 60 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_memory.py -k next_step_launches
}

call29() {  # call 28 in less device time: the defaults alone, before and after StepRecords, on one machine
  local a old
  a=$(mktemp -d)
  keep_models qwen3_4b
  e2e 130 100 "$a" "project alpaca qlora --n 1500"
  old=$(old_tree b43ce33) || return
  (cd "$old" && e2e 80 75 "$a" "project alpaca qlora --n 1500")
}

call30() {  # issue 30: batch-1 bf16 decode at 78.6% of the bandwidth limit (call 21), 85% asked; the fused inputs
  # take the 2 norms and the SwiGLU of each layer out of a token's step (72 + 36 kernels on qwen3_4b)
  keep_models qwen3_4b
  step 110 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/kernels/test_fused_matvec.py \
    tests/test_decode_warmup.py tests/test_infer.py -k "fused or first_reply or with_and_without_lora or step_agrees"
  step 160 env TUNESMITH_DECODE_FUSE=0 python3 bench/decode_profile.py --arch qwen3_4b --batch 8 --dtypes bf16,nf4 \
    --rows 8
  step 160 env TUNESMITH_DECODE_FUSE=1 python3 bench/decode_profile.py --arch qwen3_4b --batch 8 --dtypes bf16,nf4 \
    --rows 8
}

old_tree() {  # old_tree COMMIT: a tree of COMMIT that imports its own engine, .anchors and .bench linked in
  # a git worktree where the copy has .git; else .old/COMMIT, made here by
  # `mkdir -p .old/COMMIT && git archive COMMIT | tar -x -C .old/COMMIT` and carried
  local dir
  dir=$(mktemp -d)/$1
  if ! git worktree add -q --detach "$dir" "$1" 2> /dev/null; then
    dir=$PWD/.old/$1
    [[ -d $dir/engine ]] || { echo "no tree of $1: carry .old (see old_tree)" >&2; return 1; }
  fi
  ln -sfn "$PWD/.anchors" "$dir/.anchors" && ln -sfn "$PWD/.bench" "$dir/.bench" && echo "$dir"
}

call10() {  # issue 22: defaults at 88% of packing's tokens/s per padded token (2026-12-05): host or kernels?
  local prof=(python3 bench/profile_step.py --impl project --arch qwen3_4b --varlen --bs 8 --rows 25)
  keep_models qwen3_4b
  step 90 python3 -m pytest -m gpu -p no:cacheprovider -q -rfEs tests/test_patching_parity.py -k "one_micro_batch"
  step 150 "${prof[@]}" --mode qlora --seq 280
  step 150 "${prof[@]}" --mode qlora --seq 1824
  step 120 "${prof[@]}" --mode lora --seq 280
  step 120 "${prof[@]}" --mode lora --seq 1824
}

call8() {  # issue 30: decode; bench_*'s --budget bounds their sweeps, not their baselines
  keep_models qwen3_4b
  step 120 python3 .bench/decode_bench.py --impl project --arch qwen3_4b
  step 180 python3 bench/decode_profile.py --arch qwen3_4b --batch 8
  step 120 env TUNESMITH_NF4_GROUPS=0 python3 bench/decode_profile.py --arch qwen3_4b --batch 8 --dtypes nf4
  step 150 python3 bench/bench_nf4_matvec.py --budget 80
  local left=$((END - SECONDS))
  step "$left" python3 bench/bench_nf4_group_matvec.py --budget $((left > 190 ? 120 : left > 100 ? left - 70 : 30))
}

call31() {  # issue 24: the AdamW term of full fine-tuning (4 bytes a weight in bf16), planned against measured
  keep_models qwen3_4b
  local o
  for o in "adamw 33" "adamw 40" "auto 40"; do
    set -- $o
    step 130 python3 bench/full_ft.py --arch qwen3_4b --steps 6 --optimizer "$1" --vram-gib "$2"
  done
}

call32() {  # issue 24: DPO's two rows a pair and GRPO's replies in the plan, planned against measured
  keep_models qwen3_0.6b
  step 60 python3 -c "import sys; sys.path.insert(0, '.bench'); from train_bench import ensure_model; \
ensure_model('qwen3_0.6b')"
  step 150 python3 bench/objectives_bench.py --impl project --objective dpo
  step 150 python3 bench/objectives_bench.py --impl project --objective grpo
}

n=${1:-}
if ! declare -F "call$n" > /dev/null; then
  list
  exit 2
fi
if [[ ! -d .anchors || ! -f .bench/train_bench.py ]]; then
  echo "carry .anchors and .bench: run bash bench/prepare_device.sh on the development machine first"
  exit 2
fi
{
  echo "== call $n: $(list | sed -n "/^$n /p")"
  header
  "call$n"
  echo "== call $n done at ${SECONDS}s"
} 2>&1 | tee -a "$logdir/call$n.log"
