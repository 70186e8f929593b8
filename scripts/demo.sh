#!/usr/bin/env bash
# Sets up .venv (first run), then the seed's workflow: configure Milvus Lite, load the MemGPT paper into
# the source "memgpt_research_paper", search it, and chat with a memgpt_doc agent that has it attached.
# Without an LLM (OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENAI_BASE_URL or `memgpt configure`) the last
# step stops with one line saying how to set one up.
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
echo
echo '$ memgpt run --agent memgpt_doc_demo --persona memgpt_doc --attach memgpt_research_paper'
status=0
"$MEMGPT" run --agent memgpt_doc_demo --persona memgpt_doc --attach memgpt_research_paper || status=$?
exit "$status"
