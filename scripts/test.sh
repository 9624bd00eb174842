#!/usr/bin/env bash
# One command from a fresh clone: set up, then run the test suite (extra arguments go to pytest).
# Exit status: pytest's, except that "no tests collected" (5) is a failure too.
set -uo pipefail
if [ "$(uname -sm)" = "Linux x86_64" ]; then export SOLO_MIXMASK_EXTRAS="${SOLO_MIXMASK_EXTRAS:-test,dali}"; fi
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" || exit 1
cd "$ROOT"
set +e
python -m pytest -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$status"
