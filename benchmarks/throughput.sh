#!/usr/bin/env bash
# Issue 19's lever measurement in one prepared command of at most 9 minutes on one H100/H200
# (see benchmarks/throughput.py): the bare training step of MoCo v2 and MixMask on the CIFAR GPU
# recipe (ResNet-18 CIFAR stem, 32 px, batch 512, bf16, channels_last), each performance lever
# alone and the winners combined as ratios to the current path, host syncs, the k-NN monitor in
# bf16 vs float32, FLOPs per step and the fraction of a bf16 peak measured in the same run.
#
#   bash benchmarks/throughput.sh                  # results in $OUT (if set) or benchmarks/results/
#   bash benchmarks/throughput.sh --end-to-end     # + a few Lightning epochs on the CIFAR-10 tars
#   bash benchmarks/throughput.sh --tiny           # CPU, tiny network: checks that it runs
#
# BUDGET_S (default 480): the script's budget in seconds (what setting up took is deducted from
# throughput.py's --budget-s); a hard timeout 30 s after it stops throughput.py.
# Dependencies and .whl/ as for cifar_gpu.sh (omegaconf and hydra-core wheels where the machine
# has no registry; .cifar10/ with the tars for --end-to-end).
set -uo pipefail
start=$(date +%s)
NEEDS="omegaconf, hydra" source "$(dirname "$0")/gpu_env.sh"
BUDGET_S="${BUDGET_S:-480}"
DATA=()
case " $* " in
  *" --end-to-end "*)
    TINY=()
    case " $* " in *" --tiny "*) TINY=(--tiny) ;; esac
    # no data (or a failed unpack) is not an error: throughput.py skips the runs and says why
    dir="$(cifar10_dir "${TINY[@]}")" && DATA=(--data "$dir")
    ;;
esac
# the wheels' install and the tars' unpacking came out of the budget; 30 s of grace after it
left=$(( ${BUDGET_S%.*} - ($(date +%s) - start) ))
timeout "$((left + 30))" "$PY" benchmarks/throughput.py --budget-s "$left" \
  --out "$RESULT_DIR" "${DATA[@]}" "$@" 2>&1 | tee "$RESULT_DIR/throughput.log"
status=${PIPESTATUS[0]}
echo "throughput.sh: $(( $(date +%s) - start )) s, throughput.py exit status $status"
exit "$status"
