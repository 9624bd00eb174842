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
#   bash benchmarks/cifar_gpu.sh --tiny          # CPU, tiny network, 8 images per class: runs?
#
# Environment: SOLO_MIXMASK_CIFAR10 (a folder with train.tar.gz/test.tar.gz or train/ and test/),
# default .cifar10/ in the clone (copy the tars there to carry them to a lent GPU machine), else
# ../shared/data/cifar10. BUDGET_MINUTES (default 7.5): the two training runs' share of the slot.
# Dependencies: torch, torchvision, lightning, timm, omegaconf, hydra-core, matplotlib, pillow.
# Where omegaconf or hydra is missing (the lent GPU machines have no registry), put their wheels in
# .whl/ first (hydra-core, omegaconf and antlr4-python3-runtime==4.9.3, which is a source archive:
# build its wheel with `pip wheel`); this script installs them into /tmp/site.
set -uo pipefail
NEEDS="omegaconf, hydra" source "$(dirname "$0")/gpu_env.sh"
TINY=()
[ "${1:-}" = "--tiny" ] && TINY=(--tiny) && shift
DATA="$(cifar10_dir "${TINY[@]}")" || exit 4
PROFILE=(--profile cifar_gpu --data "$DATA" --out-dir "$RESULT_DIR" "${TINY[@]}")
RUNS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cifar_gpu_runs.XXXXXX")"  # checkpoints: not in $OUT
trap 'rm -rf "$RUNS_DIR"' EXIT
start=$(date +%s)
# 1. The data path alone against the training step (about half a minute on a GPU).
timeout 120 "$PY" benchmarks/memory_path.py "${PROFILE[@]}" --tag gpu 2>&1 \
  | tee "$RESULT_DIR/memory_path_gpu.log"
# 2. MoCo v2 against MixMask. Partial results are rewritten after each run.
BUDGET=(--budget-minutes "${BUDGET_MINUTES:-7.5}")
[ ${#TINY[@]} -gt 0 ] && BUDGET=()  # tiny: the profile's 2 epochs, nothing planned
timeout "${ACCURACY_TIMEOUT_S:-500}" "$PY" benchmarks/accuracy.py "${PROFILE[@]}" \
  --runs-dir "$RUNS_DIR" "${BUDGET[@]}" "$@" 2>&1 | grep -v "^[│┃┏┗┡└]" \
  | tee "$RESULT_DIR/accuracy_cifar_gpu.log"
status=${PIPESTATUS[0]}
# 3. The saved epochs of both runs against a fresh queue (benchmarks/README.md: a logged MoCo
# loss is scored against stale keys). Last, so that a slot cut short loses only this.
SCORED=(--batches 16)
[ ${#TINY[@]} -gt 0 ] && SCORED=(--batches 1)  # tiny: 5 batches per epoch, 4 fill the queue
RUNS=("$RUNS_DIR"/*/checkpoints)
if [ -e "${RUNS[0]}" ]; then
  timeout "${FRESH_TIMEOUT_S:-90}" "$PY" benchmarks/fresh_queue_loss.py "${RUNS[@]%/checkpoints}" \
    "${SCORED[@]}" --tag "cifar_gpu${TINY:+_tiny}" --out-dir "$RESULT_DIR" 2>&1 \
    | tee "$RESULT_DIR/fresh_queue_loss_cifar_gpu.log"
fi
echo "cifar_gpu.sh: $(( $(date +%s) - start )) s, accuracy.py exit status $status"
exit "$status"
