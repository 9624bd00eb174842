#!/usr/bin/env bash
# Idempotent set-up shared by demo.sh and test.sh (source it):
#   - a virtual environment in .venv (or $SOLO_MIXMASK_VENV) with PyTorch, this package (editable)
#     and its test tools; re-installs only when setup.cfg / pyproject.toml change;
#   - Fashion-MNIST from the Debian package dataset-fashion-mnist where apt is available
#     (elsewhere the demo lets torchvision download it into ~/.cache/solo_mixmask).
# Environment: PYTHON (interpreter for the venv, default python3), TORCH_SPEC (pip requirement
# for torch/torchvision, default the pinned wheels this project is tested with),
# SOLO_MIXMASK_TORCH_FROM (another venv whose PyTorch this one reuses instead of installing a
# second copy of several GB: .ci/run's Lightning 2.1.2 environment borrows .venv's).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SOLO_MIXMASK_VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# Extras of this package to install, the same for demo.sh, test.sh and lint.sh so that they share
# one set-up (a different list reinstalls): test, plus dali (NVIDIA DALI, Linux x86-64 only) so its
# CPU pipeline is tested; where it cannot be installed the DALI tests skip and say why.
if [ "$(uname -sm)" = "Linux x86_64" ]; then EXTRAS="${SOLO_MIXMASK_EXTRAS:-test,dali}"; else EXTRAS="${SOLO_MIXMASK_EXTRAS:-test}"; fi
# Extra pip requirements resolved together with the package, e.g. the oldest supported Lightning:
# SOLO_MIXMASK_PINS="lightning==2.1.2 pytorch-lightning==2.1.2 torchmetrics==0.11.4 setuptools<81"
PINS="${SOLO_MIXMASK_PINS:-}"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

quiet_pip() { # pip, without the noise of unreachable local find-links and of setuptools'
  # information-only "Editable installation" block (printed for every editable install of a
  # package that maps a folder, here configs/ -> solo_mixmask.configs); keeps pip's status
  local log rc=0
  log="$(mktemp)"
  "$VENV/bin/python" -m pip "$@" >"$log" 2>&1 || rc=$?
  grep -vE "^WARNING: Location" "$log" |
    sed '/BuildBackendWarning: Editable installation/,/with strategy, WheelFile/d' || true
  rm -f "$log"
  return "$rc"
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
TORCH_FROM="${SOLO_MIXMASK_TORCH_FROM:-}"
if [ -n "$TORCH_FROM" ] && "$TORCH_FROM/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # The borrowed venv's site-packages go at the END of sys.path: whatever this venv installs
  # itself (its Lightning pins, this package) comes first; torch and the rest are found there.
  site_of() { "$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
  site_of "$TORCH_FROM" >"$(site_of "$VENV")/solo-mixmask-borrowed-torch.pth"
  echo "[setup] $VENV uses the PyTorch of $TORCH_FROM"
fi
stamp="$VENV/.solo-mixmask-installed"
want="$( (cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml"; echo "$EXTRAS $PINS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing PyTorch and solo-mixmask into $VENV"
  quiet_pip install -q --upgrade pip
  if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    # shellcheck disable=SC2086
    quiet_pip install -q $TORCH_SPEC || quiet_pip install -q torch torchvision
  fi
  # shellcheck disable=SC2086
  if ! quiet_pip install -q -e "$ROOT[$EXTRAS]" $PINS; then
    echo "[setup] could not install extras [$EXTRAS]; installing [test] only"
    # shellcheck disable=SC2086
    quiet_pip install -q -e "$ROOT[test]" $PINS
  fi
  echo "$want" >"$stamp"
fi
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) ||
    echo "[setup] apt could not install dataset-fashion-mnist; the demo will download it with torchvision"
fi
export PATH="$VENV/bin:$PATH"
