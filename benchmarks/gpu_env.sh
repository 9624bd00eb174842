#!/usr/bin/env bash
# Sourced by the prepared GPU scripts (gpu_check.sh, cifar_gpu.sh). Sets PY (the interpreter:
# $PYTHON, else the project's .venv on a machine without nvidia-smi, else python3), puts the
# clone on PYTHONPATH, and where the modules named in NEEDS (default omegaconf) are missing,
# installs the wheels found in .whl/ into /tmp/site (the lent GPU machines have no registry).
# RESULT_DIR is $OUT if set, else benchmarks/results.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! command -v nvidia-smi >/dev/null; then
  PY=.venv/bin/python  # the project's environment on a development machine
fi
if ! "$PY" -c "import ${NEEDS:-omegaconf}" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    echo "error: ${NEEDS:-omegaconf} not importable and .whl/ holds no wheels to install" >&2
    exit 3
  fi
fi
RESULT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$RESULT_DIR"
command -v nvidia-smi >/dev/null && \
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
