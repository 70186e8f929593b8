"""The one module of the recall benchmark that calls memgpt internals: update it when they move.

A ``RecallHome`` is one benchmark conversation loaded into a fresh memgpt home (Milvus Lite file,
SQLite database, the local MiniLM model), one agent holding every message with its original time.
Messages are written and indexed the way a chat writes them: the person's message is appended, the
agent's reply (a ``send_message`` call) is appended with it, then recall memory syncs its index, as
``Agent._commit`` does after every step.

Every search answers with what the model would be shown: a ranked list of items, each item the ids of
the benchmark messages it shows (one id today; more when hits are shown with their neighbours).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from memgpt.agent.manager import create_agent
from memgpt.config import Config
from memgpt.embeddings.base import EmbeddingModel
from memgpt.embeddings.local import LocalMiniLM
from memgpt.memory.paging import PAGE_SIZE
from memgpt.memory.recall import RecallIndex, RecallMemory
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import Filter, all_of, eq
from memgpt.types import Message, Role, SearchHit, ToolCall

# What the model sees of one message (memgpt.memory.recall.describe): "[2024-01-08 19:04:00 UTC] user: ..."
_SHOWN = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\] (user|assistant):")

Shown = list[list[str]]  # ranked items, each the benchmark message ids it shows
Model = EmbeddingModel


def local_model() -> Model:
    """memgpt's default embedding model, loaded once (the first embedding pays for the load)."""
    model = LocalMiniLM()
    model.embed("warm up")
    return model


@dataclass(frozen=True)
class Turn:
    """One benchmark message: who said it, when, and the words."""

    id: str
    role: str  # "user" or "assistant"
    text: str
    at: datetime


def _message(agent_id: str, turn: Turn) -> Message:
    if turn.role == "user":
        return Message(id=turn.id, agent_id=agent_id, role=Role.USER, content=turn.text, created_at=turn.at)
    call = ToolCall(f"call-{turn.id}", "send_message", json.dumps({"message": turn.text}, ensure_ascii=False))
    return Message(
        id=turn.id, agent_id=agent_id, role=Role.ASSISTANT, content="", created_at=turn.at, tool_calls=(call,)
    )


class RecallHome:
    """One conversation in its own memgpt home; close it (or use ``with``) to release Milvus Lite."""

    def __init__(self, root: Path, model: EmbeddingModel) -> None:
        self.model = model
        config = Config()
        self.storage = Storage(config, root)
        self.state = create_agent(
            self.storage,
            user_id=config.user_id,
            name="bench",
            persona="sam_pov",
            human="basic",
            model="bench",
            context_window=8192,
            embedding=model.space,
        )
        self.store: PassageStore = self.storage.passages(model.space)
        self.recall = RecallMemory(
            self.storage, agent_id=self.state.id, user_id=self.state.user_id, index=RecallIndex(self.store, model)
        )
        self._by_stamp: dict[tuple[str, str], str] = {}

    def __enter__(self) -> RecallHome:
        return self

    def __exit__(self, *exc: object) -> None:
        self.storage.close()

    @property
    def where(self) -> Filter:
        """The filter conversation_search applies: this user's recall entries of this agent."""
        return all_of(eq("user_id", self.state.user_id), eq("kind", "recall"), eq("agent_id", self.state.id))

    def load(self, turns: Sequence[Turn], on_turn: Callable[[], None] | None = None) -> float:
        """Write every turn in order, syncing the index after each reply; returns seconds spent indexing."""
        indexing = 0.0
        for turn in turns:
            stamp = (turn.at.strftime("%Y-%m-%d %H:%M:%S"), turn.role)
            if stamp in self._by_stamp:
                raise ValueError(f"messages {self._by_stamp[stamp]} and {turn.id} show the same time and role")
            self._by_stamp[stamp] = turn.id
            self.recall.append([_message(self.state.id, turn)])
            if turn.role == "assistant":
                began = time.perf_counter()
                complete = self.recall.sync()
                indexing += time.perf_counter() - began
                if not complete:
                    raise RuntimeError("recall indexing failed; see the log")
            if on_turn is not None:
                on_turn()
        began = time.perf_counter()
        if not self.recall.sync():
            raise RuntimeError("recall indexing failed; see the log")
        return indexing + time.perf_counter() - began

    def indexed(self) -> int:
        return self.store.count(self.where)

    # -- searches: each returns the top ``pages * PAGE_SIZE`` as shown ------------------------------
    def conversation_search(self, query: str, pages: int = 2) -> Shown:
        """memgpt's conversation_search exactly as the model calls it, page after page."""
        shown: Shown = []
        for page in range(pages):
            shown += [self._ids_in(item) for item in self.recall.search(query, page).items]
        return shown

    def dense(self, query: str, pages: int = 2) -> Shown:
        return self._ids(self.store.search(self.model.embed(query), limit=pages * PAGE_SIZE, where=self.where))

    def bm25(self, query: str, pages: int = 2) -> Shown:
        return self._ids(self.store.keyword_search(query, limit=pages * PAGE_SIZE, where=self.where))

    @staticmethod
    def _ids(hits: list[SearchHit]) -> Shown:
        return [[hit.passage.id] for hit in hits]

    def _ids_in(self, item: str) -> list[str]:
        found = [self._by_stamp.get((stamp, who)) for stamp, who in _SHOWN.findall(item)]
        if not found or None in found:
            raise RuntimeError(f"cannot tell which messages this search result shows: {item[:120]!r}")
        return [i for i in found if i is not None]
