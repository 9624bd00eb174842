#!/usr/bin/env bash
# Issue 19's lever measurement in one prepared command of at most 9 minutes on one H100/H200
# (see benchmarks/throughput.py and the plan in benchmarks/README.md): the bare training step of
# MoCo v2 and MixMask on the CIFAR GPU recipe (ResNet-18 CIFAR stem, 32 px, batch 512, bf16,
# channels_last), each performance lever alone and the winners combined as ratios to the
# current path, host syncs, the k-NN monitor in bf16 vs float32, FLOPs per step and the
# fraction of a bf16 peak measured in the same run.
#
#   bash benchmarks/throughput.sh                  # results in $OUT (if set) or benchmarks/results/
#   bash benchmarks/throughput.sh --end-to-end     # + Lightning epochs on the CIFAR-10 tars
#   bash benchmarks/throughput.sh --tiny           # CPU, tiny network: checks that it runs
#
# BUDGET_S (default 530): the whole script's budget in seconds, setting up included (what it
# took is deducted from throughput.py's --budget-s). A hard stop backs it: SIGTERM 20 s after
# the budget (throughput.py writes what it has, exit status 124), SIGKILL 15 s later (the
# results of the last finished phase stay: throughput.py rewrites them after each): at most
# BUDGET_S + 35 s in all, 565 s by default, inside a device call's 600 s.
# --end-to-end without CIFAR-10 (or tars that do not unpack) is an error before any GPU work:
# exit status 4. Dependencies and .whl/ as for cifar_gpu.sh (omegaconf and hydra-core wheels
# where the machine has no registry; .cifar10/ with the tars for --end-to-end).
# Writes throughput_<device>[_tiny].{json,md} and throughput.log: 3 files in $OUT.
set -uo pipefail
start=$(date +%s)
BUDGET_S="${BUDGET_S:-530}"
NEEDS="omegaconf, hydra" source "$(dirname "$0")/gpu_env.sh"
DATA=()
case " $* " in
  *" --end-to-end "*)
    TINY=()
    case " $* " in *" --tiny "*) TINY=(--tiny) ;; esac
    dir="$(cifar10_dir "${TINY[@]}")" || {
      echo "throughput.sh: error: --end-to-end needs the CIFAR-10 images (above); nothing ran" >&2
      exit 4
    }
    DATA=(--data "$dir")
    ;;
esac
left=$(( ${BUDGET_S%.*} - ($(date +%s) - start) ))
if [ "$left" -lt 30 ]; then
  echo "throughput.sh: error: setting up took $(( $(date +%s) - start )) s of BUDGET_S=$BUDGET_S" >&2
  exit 1
fi
timeout -k 15 "$((left + 20))" "$PY" benchmarks/throughput.py --budget-s "$left" \
  --out "$RESULT_DIR" "${DATA[@]}" "$@" 2>&1 | tee "$RESULT_DIR/throughput.log"
status=${PIPESTATUS[0]}
echo "throughput.sh: $(( $(date +%s) - start )) s, throughput.py exit status $status"
exit "$status"
