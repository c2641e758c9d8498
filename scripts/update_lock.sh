#!/usr/bin/env bash
# Refresh scripts/constraints-cpu.txt (the lock CI installs from) to today's newest releases within
# pyproject.toml's bounds, then run the whole suite against them. Upgrading is this one deliberate step:
# review `git diff scripts/constraints-cpu.txt`, and commit it only if the suite passed.
#
#   bash scripts/update_lock.sh            # fresh venv in .venv-lock/, new lock, full test suite
#   bash scripts/update_lock.sh --no-test  # only write the new lock
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=scripts/constraints-cpu.txt
EXTRAS=$(sed -n 's/^EXTRAS_CI="\([^"]*\)".*/\1/p' scripts/setup.sh)
VENV=.venv-lock
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q --upgrade pip
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' scripts/setup.sh)
"$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"   # no constraints: the newest allowed by pyproject.toml
new=$(mktemp)
{
  echo "# Exact versions CI tested: scripts/setup.sh installs with '-c' on this file (extras $EXTRAS; CPU torch)."
  echo "# Refresh with scripts/update_lock.sh (newest releases, then the whole suite); review the diff, commit."
  echo "# python $("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'), $(date -u +%F)"
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v '^#' | sed -E 's/^(torch==[^+]+)\+cpu$/\1/'
} >"$new"
mv "$new" "$LOCK"
echo "update_lock: wrote $LOCK"
git --no-pager diff --stat -- "$LOCK" || true
if [ "${1:-}" != --no-test ]; then
  # the suite runs in the fresh venv, with its own kernel build
  . "$VENV/bin/activate"
  bash scripts/build_kernels.sh
  ruff check .
  python -m pytest -q -p no:cacheprovider
fi
rm -rf "$VENV"
