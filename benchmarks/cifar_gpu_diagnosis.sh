#!/usr/bin/env bash
# Issue 17's GPU proof in one slot: (a) the diagnosis grid (cifar_grid.py: MoCo v2 and MixMask
# under each candidate fix, 6 epochs, 3 processes) and, at the same time, (b) the comparison
# with the fixed recipe (accuracy.py --profile cifar_gpu: CIFAR_RECIPE, 30 epochs, k-NN every
# 10). Both share one GPU, so neither's img/s is a speed figure (cifar_gpu.sh measures speed).
#
#   bash benchmarks/cifar_gpu_diagnosis.sh            # results in $OUT (if set) or benchmarks/results/
#   bash benchmarks/cifar_gpu_diagnosis.sh --tiny     # CPU, tiny network: does it run?
#
# Environment as cifar_gpu.sh (SOLO_MIXMASK_CIFAR10, .cifar10/ and .whl/ carried to a lent GPU
# machine); GRID_EPOCHS (default 6), COMPARE_EPOCHS (default 30), TIMEOUT_S (default 540).
set -uo pipefail
NEEDS="omegaconf, hydra" source "$(dirname "$0")/gpu_env.sh"
TINY=()
[ "${1:-}" = "--tiny" ] && TINY=(--tiny) && shift
DATA="$(cifar10_dir "${TINY[@]}")" || exit 4
GRID_EPOCHS="${GRID_EPOCHS:-6}"
COMPARE_EPOCHS="${COMPARE_EPOCHS:-30}"
[ ${#TINY[@]} -gt 0 ] && GRID_EPOCHS=2 && COMPARE_EPOCHS=2
start=$(date +%s)
timeout "${TIMEOUT_S:-540}" "$PY" benchmarks/accuracy.py --profile cifar_gpu --data "$DATA" \
  --out-dir "$RESULT_DIR" --epochs "$COMPARE_EPOCHS" --tag fixed "${TINY[@]}" 2>&1 \
  | grep -v "^[│┃┏┗┡└]" > "$RESULT_DIR/accuracy_cifar_gpu_fixed.log" &
compare=$!
timeout "${TIMEOUT_S:-540}" "$PY" benchmarks/cifar_grid.py --data "$DATA" --out-dir "$RESULT_DIR" \
  --epochs "$GRID_EPOCHS" --eval-every $(( GRID_EPOCHS / 2 )) --parallel 3 "${TINY[@]}" 2>&1 \
  | grep -v "^[│┃┏┗┡└]" > "$RESULT_DIR/cifar_grid.log"
grid=${PIPESTATUS[0]}
wait "$compare"
compared=$?
echo "cifar_gpu_diagnosis.sh: $(( $(date +%s) - start )) s; grid exit $grid, comparison exit $compared"
tail -n 25 "$RESULT_DIR/cifar_grid.log"
tail -n 40 "$RESULT_DIR/accuracy_cifar_gpu_fixed.log"
[ "$grid" -eq 0 ] && [ "$compared" -eq 0 ]
