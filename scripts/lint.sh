#!/usr/bin/env bash
# Lint and type checks (what .ci/run runs after the tests): ruff's rules and formatting over the
# whole tree, then mypy over the package. Set-up as for the tests (scripts/setup.sh).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" || exit 1
cd "$ROOT"
status=0
ruff check . || status=1
ruff format --check . || status=1
mypy || status=1
exit "$status"
