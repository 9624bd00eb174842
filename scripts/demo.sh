#!/usr/bin/env bash
# One command from a fresh clone: set up, then pretrain MixMask on Fashion-MNIST (the embedded
# default: configs/pretrain/fashion_mnist/mixmask.yaml plus the demo budget below) and print where
# the results are. Extra arguments are hydra overrides, e.g. ./scripts/demo.sh max_epochs=10
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
extra=()
[ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] || extra+=(data.download=true)
# Demo budget (a 2-core laptop CPU, under 15 minutes with set-up): 15,000 images, 2 epochs.
solo-mixmask pretrain --config-name fashion_mnist/mixmask \
  data.train_subset=15000 max_epochs=2 "${extra[@]}" "$@"
