#!/usr/bin/env bash
# One prepared GPU check, at most 8 minutes on one H100 (see benchmarks/gpu_check.py):
# ResNet-50 / 224 px / batch 256 / bf16 / channels_last step throughput and peak memory of
# mocov2plus, mixmask and unmix_mixmask on synthetic tensors, host syncs per step, and the DALI
# loader (when nvidia.dali is installed) on a generated JPEG folder.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (if set) or benchmarks/results/
#   bash benchmarks/gpu_check.sh --tiny     # CPU, tiny network: checks that it runs
#
# Dependencies: torch, torchvision, lightning, timm, omegaconf, pillow, numpy (hydra is not
# needed). Where omegaconf is missing (the lent GPU machines have no registry), put its wheels
# in .whl/ first (omegaconf and antlr4-python3-runtime==4.9.3, `pip download --no-deps`); this
# script installs them into /tmp/site. DALI's wheel (~425 MB) is too big to carry there.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
# 450 s for the python part leaves the rest of the 8 minutes for start-up and the copy back.
timeout 450 "$PY" benchmarks/gpu_check.py --out "$RESULT_DIR/gpu_check.json" "$@" 2>&1 \
  | tee "$RESULT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
