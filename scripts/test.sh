#!/usr/bin/env bash
# The test command (README, CI): set up, lint, type-check, run the whole suite.
#   bash scripts/test.sh [pytest args]    e.g. bash scripts/test.sh tests/test_api.py -x
#   FRVD_TEST_WORKERS=0 bash scripts/test.sh   # one process (default: 2 pytest-xdist workers, a file each)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "test: ruff check ."
ruff check .
# mypy runs beside the tests (its ~25 s overlap the suite's waits); its verdict is read after them
echo "test: mypy (engine/ and export/, configured in pyproject.toml [tool.mypy]), beside pytest"
MYPY_LOG=$(mktemp)
mypy > "$MYPY_LOG" 2>&1 &
MYPY_PID=$!
mypy_verdict() {
  if wait "$MYPY_PID"; then
    tail -n 1 "$MYPY_LOG"; rm -f "$MYPY_LOG"
  else
    cat "$MYPY_LOG" >&2; rm -f "$MYPY_LOG"
    echo "test: error: the type checker (mypy) found the errors above in engine/ or export/." >&2
    echo "test: fix the annotations (run: mypy), or see docs/architecture.md 'Types' for the house rules." >&2
    return 1
  fi
}
# Two workers on the two cores, whole files per worker (module fixtures built once; the background
# engine exports are shared through tests/engines_support.py); one file's waits (servers, subprocesses)
# overlap another's compute.
WORKERS=${FRVD_TEST_WORKERS:-2}
XDIST=()
if [ "$WORKERS" != 0 ]; then XDIST=(-n "$WORKERS" --dist loadfile); fi
status=0
python -m pytest -q -p no:cacheprovider "${XDIST[@]}" "$@" || status=$?
mypy_verdict || status=1
exit "$status"
