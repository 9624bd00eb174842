#!/usr/bin/env bash
# One GPU comparison that fits one 10-minute slot: CIFAR-10, ResNet-18 (CIFAR stem), all 50,000
# images in GPU memory (data.format=memory), bf16, channels_last, asymmetric MoCo v2 against
# MixMask with the same recipe and seed (accuracy.py's cifar_gpu profile), as many epochs (at most
# 100) as the step times measured at start-up allow inside the budget; k-NN (k=200, T=0.1) of the
# 10,000 test images against the 50,000 training images every 10 epochs, online linear too.
# Before it, memory_path.py measures the data path alone against the training step; after it,
# fresh_queue_loss.py scores both runs' checkpoints (every 10 epochs) against a fresh queue.
#
#   bash benchmarks/cifar_gpu.sh                 # results in $OUT (if set) or benchmarks/results/
#   bash benchmarks/cifar_gpu.sh --epochs 30     # exactly 30 epochs (a warning line if the
#                                                # estimate passes the budget)
#   bash benchmarks/cifar_gpu.sh --tiny          # CPU, tiny network, 8 images per class: runs?
#
# Environment: SOLO_MIXMASK_CIFAR10 (a folder with train.tar.gz/test.tar.gz or train/ and test/),
# default .cifar10/ in the clone (copy the tars there to carry them to a lent GPU machine), else
# ../shared/data/cifar10. SLOT_S (default 570): the whole script's seconds, setting up included;
# each step's hard timeout is cut to what is left of them (fresh_queue_loss.py, last, is skipped
# with a line when less than 15 s are left). BUDGET_MINUTES: the two training runs' budget
# (default: what is left of SLOT_S after memory_path.py, less 60 s for fresh_queue_loss.py).
# Dependencies: torch, torchvision, lightning, timm, omegaconf, hydra-core, matplotlib, pillow.
# Where omegaconf or hydra is missing (the lent GPU machines have no registry), put their wheels in
# .whl/ first (hydra-core, omegaconf==2.3.0 and antlr4-python3-runtime==4.9.3, which is a source
# archive: build its wheel with `pip wheel`); this script installs them into /tmp/site.
# Every step runs even when an earlier one failed; the exit status is the first non-zero one.
# $OUT gets 8 files (a lent GPU machine returns no more): the three steps' .json and .md,
# accuracy.py's .png and one log, cifar_gpu.log, of all three.
set -uo pipefail
start=$(date +%s)
SLOT_S="${SLOT_S:-570}"
NEEDS="omegaconf, hydra" source "$(dirname "$0")/gpu_env.sh"
LOG="$RESULT_DIR/cifar_gpu.log"
: > "$LOG"
TINY=()
[ "${1:-}" = "--tiny" ] && TINY=(--tiny) && shift
DATA="$(cifar10_dir "${TINY[@]}")" || exit 4
PROFILE=(--profile cifar_gpu --data "$DATA" --out-dir "$RESULT_DIR" "${TINY[@]}")
RUNS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cifar_gpu_runs.XXXXXX")"  # checkpoints: not in $OUT
trap 'rm -rf "$RUNS_DIR"' EXIT
left() { echo $(( SLOT_S - ($(date +%s) - start) )); }
first=0  # the first non-zero exit status
ran() {  # ran SCRIPT STATUS: log it, keep the first failure
  echo "cifar_gpu.sh: $1 exit status $2" | tee -a "$LOG"
  [ "$first" -eq 0 ] && first="$2"
}
# 1. The data path alone against the training step (about half a minute on a GPU).
cap=$(( $(left) - 120 )); [ "$cap" -gt 120 ] && cap=120; [ "$cap" -lt 1 ] && cap=1
timeout -k 10 "$cap" "$PY" benchmarks/memory_path.py "${PROFILE[@]}" --tag gpu 2>&1 | tee -a "$LOG"
ran memory_path.py "${PIPESTATUS[0]}"
# 2. MoCo v2 against MixMask. Partial results are rewritten after each run.
secs=$(( $(left) - 60 ))  # the default budget, in minutes to a tenth (bash has no floats)
[ "$secs" -lt 60 ] && secs=60
BUDGET=(--budget-minutes "${BUDGET_MINUTES:-$(( secs / 60 )).$(( secs % 60 / 6 ))}")
[ ${#TINY[@]} -gt 0 ] && BUDGET=()  # tiny: the profile's 2 epochs, nothing planned
cap=$(( $(left) - 30 )); [ "$cap" -lt 1 ] && cap=1
timeout -k 10 "$cap" "$PY" benchmarks/accuracy.py "${PROFILE[@]}" \
  --runs-dir "$RUNS_DIR" "${BUDGET[@]}" "$@" 2>&1 | grep --line-buffered -v "^[│┃┏┗┡└]" \
  | tee -a "$LOG"
ran accuracy.py "${PIPESTATUS[0]}"
# 3. The saved epochs of both runs against a fresh queue (benchmarks/README.md: a logged MoCo
# loss is scored against stale keys). Last, so that a slot cut short loses only this.
SCORED=(--batches 16)
[ ${#TINY[@]} -gt 0 ] && SCORED=(--batches 1)  # tiny: 5 batches per epoch, 4 fill the queue
RUNS=("$RUNS_DIR"/*/checkpoints)
cap=$(( $(left) )); [ "$cap" -gt 90 ] && cap=90
if [ ! -e "${RUNS[0]}" ]; then
  echo "cifar_gpu.sh: fresh_queue_loss.py skipped: no run saved a checkpoint" | tee -a "$LOG"
elif [ "$cap" -lt 15 ]; then
  echo "cifar_gpu.sh: fresh_queue_loss.py skipped: $cap s of SLOT_S=$SLOT_S left" | tee -a "$LOG"
else
  timeout -k 5 "$cap" "$PY" benchmarks/fresh_queue_loss.py "${RUNS[@]%/checkpoints}" \
    "${SCORED[@]}" --tag "cifar_gpu${TINY:+_tiny}" --out-dir "$RESULT_DIR" 2>&1 | tee -a "$LOG"
  ran fresh_queue_loss.py "${PIPESTATUS[0]}"
fi
echo "cifar_gpu.sh: $(( $(date +%s) - start )) s, exit status $first" | tee -a "$LOG"
exit "$first"
