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
from memgpt.memory.messages import search_text
from memgpt.memory.paging import PAGE_SIZE
from memgpt.memory.recall import RecallIndex, RecallMemory
from memgpt.memory.results import keyword_query
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import Filter, all_of, eq
from memgpt.storage.fusion import CANDIDATES, Weights, fuse
from memgpt.types import EmbeddingSpace, Message, Passage, Role, SearchHit, ToolCall

# What the model sees of one message (memgpt.memory.recall.describe): "[2024-01-08 19:04:00 UTC] user: ..."
_SHOWN = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\] (user|assistant):")

Shown = list[list[str]]  # ranked items, each the benchmark message ids it shows
Model = EmbeddingModel
TOP = 2 * PAGE_SIZE  # what the model sees on pages 0 and 1
RRF_K = 60  # memgpt's fusion before issue 11: Milvus's RRFRanker(60)


def rrf(dense: list[SearchHit], words: list[SearchHit]) -> list[SearchHit]:
    """Reciprocal-rank fusion, as Milvus's RRFRanker computes it: ranks matter, scores do not."""
    scores: dict[str, float] = {}
    hits = {h.passage.id: h for h in (*words, *dense)}
    for ranking in (dense, words):
        for rank, hit in enumerate(ranking, 1):
            scores[hit.passage.id] = scores.get(hit.passage.id, 0.0) + 1 / (RRF_K + rank)
    return [SearchHit(hits[i].passage, score) for i, score in sorted(scores.items(), key=lambda kv: -kv[1])]


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
        self.single: PassageStore | None = None  # each message alone: see prepare_single

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

    def ranked(
        self,
        query: str,
        ranking: str,
        *,
        index: str = "context",
        neighbours: bool = False,
        weights: Weights | None = None,
    ) -> Shown:
        """The top 10 of one ranking ("dense", "bm25", "rrf" or "fused") over one index: "context" is memgpt's
        (each message with its day and the message before it), "single" each message alone (what memgpt
        indexed before issue 11; see ``prepare_single``). ``neighbours`` shows each hit with the messages
        before and after it, as conversation_search does; ``weights`` are the fused ranking's."""
        store = self.store if index == "context" else self.single
        depth = CANDIDATES if neighbours or ranking in ("rrf", "fused") else TOP
        dense = lambda: store.search(self.model.embed(query), limit=depth, where=self.where)  # noqa: E731
        words = lambda: store.keyword_search(keyword_query(query), limit=depth, where=self.where)  # noqa: E731
        if ranking == "dense":
            hits = dense()
        elif ranking == "bm25":
            hits = words()
        elif ranking == "rrf":
            hits = rrf(dense(), words())
        else:
            hits = fuse(dense(), words(), weights or Weights())
        if not neighbours:
            return self._ids(hits[:TOP])
        return [[m.id for m in (*r.before, r.match, *r.after)] for r in self.recall.with_neighbours(hits, TOP)]

    def prepare_single(self) -> None:
        """Index every message alone, by its own words and vector, in a collection of its own (another
        embedding-space name, so memgpt keeps it apart): the index memgpt had before issue 11."""
        if self.single is not None:
            return
        self.single = self.storage.passages(EmbeddingSpace(f"{self.model.model_id}-single", self.model.dimensions))
        messages = [m for m in self.storage.messages.last(self.state.id, 1_000_000) if search_text(m)]
        vectors = self.model.embed_multi([search_text(m) for m in messages])
        self.single.upsert(
            [
                Passage(
                    id=m.id,
                    text=search_text(m),
                    user_id=self.state.user_id,
                    agent_id=m.agent_id,
                    kind="recall",
                    created_at=m.created_at,
                    metadata={"role": m.role.value},
                    embedding=vector,
                )
                for m, vector in zip(messages, vectors, strict=True)
            ]
        )
        self.single.flush()

    @staticmethod
    def _ids(hits: list[SearchHit]) -> Shown:
        return [[hit.passage.id] for hit in hits]

    def _ids_in(self, item: str) -> list[str]:
        found = [self._by_stamp.get((stamp, who)) for stamp, who in _SHOWN.findall(item)]
        if not found or None in found:
            raise RuntimeError(f"cannot tell which messages this search result shows: {item[:120]!r}")
        return [i for i in found if i is not None]
