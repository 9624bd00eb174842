#!/usr/bin/env bash
# One command from a fresh clone: set up, then run the test suite (extra arguments go to pytest).
# Exit status: pytest's, except that "no tests collected" (5) is a failure too.
# The tests run in one pytest-xdist worker per core (-n auto, work stealing: the long tests do
# not wait behind each other); `scripts/test.sh -n 0` runs them in this one process.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" || exit 1
cd "$ROOT"
set +e
PARALLEL=()
python -c "import xdist" 2>/dev/null && PARALLEL=(-n auto --dist worksteal)
# --durations: the slowest tests in every log, to keep the suite well under CI's 15 minutes
python -m pytest -q --durations=15 "${PARALLEL[@]}" "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$status"
