#!/usr/bin/env bash
# The test command (README, CI): set up, lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
