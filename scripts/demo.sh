#!/usr/bin/env bash
# Sets up .venv (first run), then does the seed's workflow with no LLM needed: configure Milvus Lite,
# load the MemGPT paper into the source "memgpt_research_paper", and search it.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
MEMGPT="$VENV/bin/memgpt"
PAPER="$ROOT/tests/data/memgpt_research_paper.pdf"
HOME_DIR="${MEMGPT_HOME:-$HOME/.memgpt}"

if [ ! -f "$HOME_DIR/config.toml" ]; then
  "$MEMGPT" configure --no-prompt --archival-storage milvus --milvus-uri "$HOME_DIR/milvus.db"
fi
"$MEMGPT" load directory --name memgpt_research_paper --input-files="$PAPER"
"$MEMGPT" list sources
echo
echo '$ memgpt search memgpt_research_paper "deep memory retrieval" -k 3'
"$MEMGPT" search memgpt_research_paper "deep memory retrieval" -k 3
