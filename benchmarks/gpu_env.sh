#!/usr/bin/env bash
# Sourced by the prepared GPU scripts (gpu_check.sh, cifar_gpu.sh, cifar_gpu_diagnosis.sh,
# throughput.sh). Sets PY (the interpreter: $PYTHON, else the project's .venv on a machine
# without nvidia-smi, else python3), puts the clone on PYTHONPATH, and where the modules named in
# NEEDS (default omegaconf) are missing, installs the wheels found in .whl/ into /tmp/site (the
# lent GPU machines have no registry). RESULT_DIR is $OUT if set, else benchmarks/results.
# Prints the GPU and the torch / lightning / python versions.
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
"$PY" -c "import torch, sys, lightning; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', lightning.__version__, 'python', sys.version.split()[0])"

# cifar10_dir [--tiny]: the CIFAR-10 folder for the CIFAR scripts: $SOLO_MIXMASK_CIFAR10, else
# .cifar10/ in the clone (tars carried to a lent GPU machine), else ../shared/data/cifar10; tars
# are unpacked once with tar (faster than Python for 60,000 small files) unless --tiny, whose
# per-class sample accuracy.py makes itself. Prints the folder; exit status 4, with an error
# line, when the folder holds neither train.tar.gz + test.tar.gz nor train/ + test/, or when
# unpacking fails.
cifar10_dir() {
  local data="${SOLO_MIXMASK_CIFAR10:-}"
  if [ -z "$data" ]; then
    if [ -f .cifar10/train.tar.gz ]; then data="$PWD/.cifar10"; else data="$PWD/../shared/data/cifar10"; fi
  fi
  if ! { [ -f "$data/train.tar.gz" ] && [ -f "$data/test.tar.gz" ]; } \
    && ! { [ -d "$data/train" ] && [ -d "$data/test" ]; }; then
    echo "error: no CIFAR-10 under $data: expected train.tar.gz and test.tar.gz or train/ and" \
      "test/ (set SOLO_MIXMASK_CIFAR10, or copy the tars to .cifar10/ in the clone)" >&2
    return 4
  fi
  if [ "${1:-}" != "--tiny" ] && [ -f "$data/train.tar.gz" ]; then
    # one copy per source folder (named by its checksum), so two clones never replace each
    # other's; .complete names the tars' folder: a copy cut short is unpacked afresh
    local unpacked
    unpacked="${TMPDIR:-/tmp}/solo_mixmask_cifar10_$(printf '%s' "$data" | cksum | cut -d' ' -f1)"
    if [ "$(cat "$unpacked/.complete" 2>/dev/null)" != "$data" ]; then
      rm -rf "$unpacked" && mkdir -p "$unpacked" && tar -xzf "$data/train.tar.gz" -C "$unpacked" \
        && tar -xzf "$data/test.tar.gz" -C "$unpacked" && printf '%s' "$data" > "$unpacked/.complete" \
        || { echo "error: unpacking the CIFAR-10 tars of $data into $unpacked failed" >&2; return 4; }
    fi
    data="$unpacked"
  fi
  echo "$data"
}
