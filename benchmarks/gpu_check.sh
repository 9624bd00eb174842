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
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! command -v nvidia-smi >/dev/null; then
  PY=.venv/bin/python  # the project's environment on a development machine
fi
if ! "$PY" -c "import omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    echo "error: omegaconf is not importable and .whl/ holds no wheels to install" >&2
    exit 3
  fi
fi
RESULT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$RESULT_DIR"
command -v nvidia-smi >/dev/null && \
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'python', sys.version.split()[0])"
# 450 s for the python part leaves the rest of the 8 minutes for start-up and the copy back.
timeout 450 "$PY" benchmarks/gpu_check.py --out "$RESULT_DIR/gpu_check.json" "$@" 2>&1 \
  | tee "$RESULT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
