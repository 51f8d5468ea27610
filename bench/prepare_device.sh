#!/bin/bash
# Run HERE, not on the GPU machine, before a GPU session: builds the two git-ignored folders that `run` carries.
#   bash bench/prepare_device.sh      then `run` with carry [".anchors", ".bench"] and command `bash bench/queue.sh 1`
# .anchors: bitsandbytes, trl, datasets, Unsloth, Liger (../shared/bench/prepare_device_site.sh --anchors; on the
# device PYTHONPATH=$PWD/.anchors). .bench: a copy of ../shared/bench/*.py, the shared harness (../shared does not
# travel). TUNESMITH_SHARED=DIR overrides where shared/ is (default: the repo root's parent's shared/, else the main
# checkout's when this is a git worktree). Downloads wheels from PyPI; checks the whole carry fits 64 MiB.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
shared=${TUNESMITH_SHARED:-$root/../shared}
if [[ ! -f $shared/bench/prepare_device_site.sh && -z ${TUNESMITH_SHARED:-} ]]; then
  common=$(cd "$(git rev-parse --git-common-dir)" && pwd)  # a worktree's main checkout is beside shared/
  shared=$(dirname "$common")/../shared
fi
[[ -f $shared/bench/prepare_device_site.sh ]] || { echo "no shared/bench/ at $shared: set TUNESMITH_SHARED"; exit 2; }
if ! { git check-ignore -q .anchors/ && git check-ignore -q .bench/; }; then
  echo ".anchors/ or .bench/ is not git-ignored: add them to .gitignore"
  exit 2
fi

bash "$shared/bench/prepare_device_site.sh" .anchors --anchors || { echo "building .anchors failed"; exit 1; }
rm -rf .bench && mkdir -p .bench && cp "$shared"/bench/*.py .bench/ || exit 1

du -sh .anchors .bench
files() { git ls-files -z && git ls-files -z --others --exclude-standard; }  # what travels besides the carry
tree=$(files | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb .anchors .bench | awk '{s += $1} END {print s}')
total=$((tree + carry))
echo "working tree $((tree / 1024)) KiB + carry $((carry / 1024)) KiB = $((total / 1048576)) MiB of the 64 MiB limit"
((total < 64 * 1048576)) || { echo "over the 64 MiB carry limit"; exit 1; }
echo 'carry: [".anchors", ".bench"]   command: bash bench/queue.sh N   (bench/README.md, "Next GPU session")'
