#!/usr/bin/env bash
# Sets up .venv (first run) and runs the whole test suite: lint, then pytest. Extra args go to pytest.
set -euo pipefail
MEMGPT_EXTRAS="[dev]"
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check memgpt tests bench
status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"
  status=0
fi
exit "$status"
