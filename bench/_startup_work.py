"""The work inside `memgpt load`, `memgpt search` and `memgpt run --message`, measured warm in one process
(see startup_bench.py).

Prints one JSON line: {"load": s, "search": s, "step": s}, medians (3 searches, 3 turns; a third argument
gives the timed loads, 3 unless given, "search-only" none). The model is loaded, Milvus Lite is open and the
collection exists before anything is timed: what is left is what a command cannot skip. "step" is one turn
of `run --message` on an agent already open (an agent named "bench", created first): the message sent, the
prompt built, one call to the LLM at OPENAI_BASE_URL (the bench's scripted server, which answers at once),
the step stored (its messages are left to recall's backlog, as `run --message` leaves them to the next
search). Runs against whichever memgpt package is first on PYTHONPATH.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from memgpt.config import Config, memgpt_home
from memgpt.data.ingest import SourceLoader
from memgpt.data.sources import search_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage


def main() -> None:
    paper, query = Path(sys.argv[1]), sys.argv[2]
    chosen = sys.argv[3] if len(sys.argv) > 3 else "3"
    timed_loads = 0 if chosen == "search-only" else int(chosen)
    config = Config()
    model = LocalMiniLM()
    loads: list[float] = []
    searches: list[float] = []
    with Storage(config, memgpt_home()) as storage:
        loader = SourceLoader.from_settings(storage, model, config.embedding, user_id=config.user_id)
        loader.load("paper warm-up", [paper])
        for attempt in range(timed_loads):
            began = time.perf_counter()
            report = loader.load(f"paper {attempt}", [paper])
            loads.append(time.perf_counter() - began)
            if not report.ok:
                raise SystemExit(f"loading {paper} failed: {report.failures}")
        source = storage.metadata.get_source(config.user_id, "paper warm-up")
        if source is None:
            raise SystemExit("the loaded source is missing")
        search_source(storage, source, model, query, k=5)
        for _ in range(3):
            began = time.perf_counter()
            search_source(storage, source, model, query, k=5)
            searches.append(time.perf_counter() - began)
        steps = turns(storage, config, model)
    found = {"load": statistics.median(loads)} if loads else {}
    print(json.dumps({**found, "search": statistics.median(searches), "step": statistics.median(steps)}))


def turns(storage: Storage, config: Config, model: LocalMiniLM) -> list[float]:
    """Three timed turns (after one untimed) of an open agent that leaves recall indexing to the next search,
    as `memgpt run --message` does."""
    from memgpt.agent.manager import NewAgent, default_agent_settings, open_agent, resolve_agent
    from memgpt.llm import create_llm

    llm_model, window = default_agent_settings(config, None)
    new = NewAgent(config.default_persona, config.default_human, llm_model, window, model.space)
    state, _ = resolve_agent(storage, config.user_id, "bench", new=new)
    llm = create_llm(config.llm, model=state.llm_model, context_window=state.context_window)
    agent, _ = open_agent(storage, state, llm=llm, embedding=model, eager=False)
    took: list[float] = []
    try:
        for attempt in range(4):
            began = time.perf_counter()
            for _ in agent.send("hello"):
                pass
            if attempt:
                took.append(time.perf_counter() - began)
    finally:
        agent.close()
    return took


if __name__ == "__main__":
    main()
