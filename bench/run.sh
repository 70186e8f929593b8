#!/usr/bin/env bash
# One command for every figure in the README's benchmark section:
#   bash bench/run.sh            (add --quick for a 0.5 MB corpus, 10k passages, no 1M run, one recall conversation)
# The prompt-cache figure needs a real local LLM and takes minutes per request: bench/prompt_cache_bench.py.
# Prints markdown tables. The pure-Python Milvus Lite 3.x conflicts with the 2.5 default, so it is
# measured from its own virtualenv in bench/.venv-lite3.
set -euo pipefail
MEMGPT_EXTRAS="[dev]"  # brings the Milvus server package
source "$(dirname "$0")/../scripts/_venv.sh"
cd "$ROOT"
corpus_mb=5
sizes=10000,100000
server_sizes=100000,1000000
recall=()
startup=()
if [ "${1:-}" = "--quick" ]; then
  corpus_mb=0.5; sizes=10000; server_sizes=10000; recall=(--quick); startup=(--runs 3 --skip-load)
fi

LITE3="$ROOT/bench/.venv-lite3"
if [ ! -x "$LITE3/bin/python" ]; then
  "$PY" -m venv "$LITE3"
  "$LITE3/bin/pip" install --quiet --disable-pip-version-check pymilvus==3.0.2 milvus-lite==3.2.2 numpy "pydantic>=2.7"
fi

echo "### Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
"$VENV/bin/python" bench/load_bench.py --corpus-mb "$corpus_mb"
echo
"$VENV/bin/python" bench/startup_bench.py "${startup[@]}"
echo
"$VENV/bin/python" bench/embed_bench.py
echo
echo "### Archival search (filtered by user and 2 of 10 sources; query embedding excluded)"
echo
mapfile -t vectors < <("$VENV/bin/python" bench/vectors.py --count "${sizes##*,}")
common=(--vectors "${vectors[0]}" --queries "${vectors[1]}" --sizes "$sizes")
"$VENV/bin/python" bench/search_bench.py --label "milvus-lite 2.5.1 (default)" "${common[@]}" --header
"$VENV/bin/python" bench/search_bench.py --label "milvus-lite 2.5.1" --index AUTOINDEX "${common[@]}"
PYTHONPATH="$ROOT" "$LITE3/bin/python" bench/search_bench.py --label "milvus-lite 3.2.2" "${common[@]}"
echo
"$VENV/bin/python" bench/recall_bench.py "${recall[@]}"  # recall and archival (retrieval_bench) quality
if [ "${1:-}" != "--quick" ]; then  # the held-out conversation nothing in recall's ranking was chosen on
  echo
  "$VENV/bin/python" bench/recall_bench.py --data bench/recall_heldout --no-archival
fi
echo
"$VENV/bin/python" bench/step_bench.py --sizes "$sizes"
echo
echo "### Archival search on a Milvus server (HNSW; same filter and vectors)"
echo
mapfile -t big < <("$VENV/bin/python" bench/vectors.py --count "${server_sizes##*,}")
"$VENV/bin/python" bench/search_bench.py --label "milvus 2.3.5 server" --server --header \
  --vectors "${big[0]}" --queries "${big[1]}" --sizes "$server_sizes"
echo
clients=10,50,100
if [ "${1:-}" = "--quick" ]; then clients=10; fi
"$VENV/bin/python" bench/server_bench.py --clients "$clients" --header
# The bench's own floor in the same table: its clients against a stand-in that only waits (no server, no LLM).
"$VENV/bin/python" bench/server_bench.py --clients "$clients" --floor
