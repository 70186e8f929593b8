"""One recall indexing pass as `memgpt server` runs it under load: CPU of the pass by part, and Milvus Lite's.

    python bench/index_pass_bench.py [--agents 50] [--per-pass 25] [--passes 40] [--words 0] [--profile]

A home on Milvus Lite + SQLite with ``--agents`` agents; each round gives ``--per-pass`` of them one chat turn
(the user's message, the agent's send_message reply, the tool's result: two messages to index) as a server turn
writes it, then runs one ``index_pass`` over those agents, as the indexer's thread does after its gathering pause.
Prints the pass's CPU (this thread: its embedding calls, and the rest per message) and wall time, and the CPU
the Milvus Lite process used meanwhile. ``--words N`` adds N words to each message and reply (a chat's size:
embedding dominates); ``--profile`` prints cProfile's top functions of the passes (``SORT=cumulative`` to
sort them so). Numbers on a shared machine are noisy: compare runs made one after another.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from memgpt.agent.manager import create_agent  # noqa: E402
from memgpt.config import load_config  # noqa: E402
from memgpt.embeddings.base import Vector  # noqa: E402
from memgpt.embeddings.local import LocalMiniLM  # noqa: E402
from memgpt.memory.recall import RecallIndex, RecallMemory, index_pass  # noqa: E402
from memgpt.storage import Storage  # noqa: E402
from memgpt.types import Message, Role, ToolCall  # noqa: E402

WORDS = ("the", "a", "river", "cake", "climbing", "sister", "train", "garden", "music", "winter", "letter", "doctor")


class _TimedModel(LocalMiniLM):
    """The local model, counting the CPU (this thread's) its embedding calls take."""

    seconds = 0.0

    def embed_multi(self, texts: Sequence[str], **kwargs: Any) -> list[Vector]:
        started = time.thread_time()
        try:
            return super().embed_multi(texts, **kwargs)
        finally:
            self.seconds += time.thread_time() - started


def _children_cpu() -> float:
    """CPU seconds of the processes this one started (Milvus Lite's ``milvus``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(os.getpid()):
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _turn(agent_id: str, who: int, number: int, at: datetime, words: int, rng: random.Random) -> list[Message]:
    extra = " ".join(rng.choice(WORDS) for _ in range(words))
    said = f"Noted. {extra}".strip()
    call = ToolCall(f"call-{agent_id}-{number}", "send_message", f'{{"message": "{said}"}}')
    return [
        Message(
            f"{agent_id}-u{number}",
            agent_id,
            Role.USER,
            f"bench message {number} from client {who} {extra}".strip(),
            at,
        ),
        Message(f"{agent_id}-a{number}", agent_id, Role.ASSISTANT, "", at, tool_calls=(call,)),
        Message(f"{agent_id}-t{number}", agent_id, Role.TOOL, '{"status": "OK"}', at, tool_call_id=call.id),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--per-pass", type=int, default=25, help="agents with a new turn in each pass")
    parser.add_argument("--passes", type=int, default=40)
    parser.add_argument("--words", type=int, default=0, help="words added to each message and reply")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        os.environ["MEMGPT_HOME"] = str(home)
        storage = Storage(load_config(home), home)
        model = _TimedModel()
        store = storage.passages(model.space)
        recalls = []
        for i in range(args.agents):
            state = create_agent(
                storage, user_id="u", name=f"agent-{i}", persona="sam_pov", human="basic", model="scripted",
                context_window=8192, embedding=model.space,
            )  # fmt: skip
            recall = RecallMemory(storage, agent_id=state.id, user_id="u", index=RecallIndex(store, model))
            recall.sync()  # its first messages
            recalls.append(recall)
        start = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
        turns = {r.agent_id: 0 for r in recalls}
        who = {r.agent_id: i for i, r in enumerate(recalls)}  # each client's messages differ, as a chat's do
        profiler = cProfile.Profile() if args.profile else None
        cpu = wall = milvus = embedding = 0.0
        indexed = 0
        for number in range(args.passes + 2):  # the first two warm up
            chosen = rng.sample(recalls, args.per_pass)
            for recall in chosen:
                turns[recall.agent_id] += 1
                at = start + timedelta(seconds=number)
                recall.append(_turn(recall.agent_id, who[recall.agent_id], turns[recall.agent_id], at, args.words, rng))
            milvus_before = _children_cpu()  # not in the pass's CPU: reading /proc costs some
            before = (time.thread_time(), time.perf_counter(), model.seconds)
            if profiler is not None and number >= 2:
                profiler.enable()
            outcome = index_pass(chosen)
            if profiler is not None:
                profiler.disable()
            after = (time.thread_time(), time.perf_counter(), model.seconds)
            milvus_after = _children_cpu()
            assert len(outcome.finished) == len(chosen), outcome
            if number >= 2:
                cpu += after[0] - before[0]
                wall += after[1] - before[1]
                milvus += milvus_after - milvus_before
                embedding += after[2] - before[2]
                indexed += 2 * len(chosen)
        print(
            f"agents {args.agents}, {args.per_pass} a pass, {args.passes} passes, words {args.words}: "
            f"pass CPU {cpu * 1000 / args.passes:.1f} ms ({cpu * 1e6 / indexed:.0f} us a message; embedding "
            f"{embedding * 1000 / args.passes:.1f} ms, the rest {(cpu - embedding) * 1e6 / indexed:.0f} us a message), "
            f"wall {wall * 1000 / args.passes:.1f} ms, Milvus Lite CPU {milvus * 1000 / args.passes:.1f} ms a pass"
        )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(30)
        storage.close()


if __name__ == "__main__":
    main()
