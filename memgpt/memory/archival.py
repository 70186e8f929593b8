"""Archival memory: the agent's own passages plus every attached source, searched by meaning.

Attaching a source links it (a filter on its id); nothing is copied, and detaching unlinks it. A
passage an agent step inserts is recorded under the step before it is written (see
``memgpt.storage.agents``), so a step that never commits can have it removed again.
"""

from __future__ import annotations

import uuid
from datetime import UTC

from memgpt.data.chunking import Chunker
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import ToolError
from memgpt.memory.paging import PAGE_SIZE, Page, check_page
from memgpt.storage import Storage
from memgpt.storage.agents import PASSAGE, StepEffect
from memgpt.storage.filters import Filter, all_of, eq, is_in, not_in
from memgpt.types import Passage, SearchHit, utc_now


class ArchivalMemory:
    """One agent's archival memory, in ``model``'s embedding space (the agent's, checked when it is opened)."""

    def __init__(self, storage: Storage, model: EmbeddingModel, *, agent_id: str, user_id: str) -> None:
        self._storage = storage
        self._model = model
        self.agent_id = agent_id
        self.user_id = user_id
        self._store = storage.passages(model.space)
        size = min(250, model.max_input_tokens)
        self._chunker = Chunker(model.count_tokens, size, 25)
        self.last_recorded_step = ""  # the last step this memory recorded passages under

    def _where(self) -> Filter:
        """The agent's own passages or those of its attached sources, fully loaded documents only."""
        sources = self._storage.attachments.source_ids(self.agent_id)
        mine = eq("agent_id", self.agent_id)
        scope = mine | is_in("source_id", sources) if sources else mine
        hidden = self._storage.metadata.hidden_document_ids(sources)
        return all_of(eq("user_id", self.user_id), eq("kind", "archival"), scope, not_in("document_id", hidden))

    def count(self) -> int:
        return self._store.count(self._where())

    def insert(self, content: str, *, step_id: str = "") -> int:
        """Store ``content`` (split if it is longer than the model takes); returns the passage count.
        ``step_id``: the agent step inserting it, which records the passages before writing them."""
        if not content.strip():
            raise ToolError("content is empty; nothing was stored")
        chunks = self._chunker.split(content)
        vectors = self._model.embed_multi(chunks)
        now = utc_now()
        ids = [uuid.uuid4().hex for _ in chunks]
        if step_id:
            self._storage.agents.record_effects(self.agent_id, [StepEffect(step_id, PASSAGE, i) for i in ids])
            self.last_recorded_step = step_id
        self._store.insert(  # the ids are new: no old row to replace
            [
                Passage(
                    id=passage_id,
                    text=chunk,
                    user_id=self.user_id,
                    agent_id=self.agent_id,
                    chunk_index=index,
                    created_at=now,
                    embedding=vector,
                )
                for index, (passage_id, chunk, vector) in enumerate(zip(ids, chunks, vectors, strict=True))
            ]
        )
        return len(chunks)

    def remove(self, passage_ids: list[str]) -> None:
        """Delete some of the agent's own passages (what a step that was undone or forgotten wrote)."""
        if passage_ids:
            self._store.delete(all_of(eq("agent_id", self.agent_id), is_in("id", passage_ids)))

    def search(self, query: str, page: int | None = 0) -> Page:
        if not query.strip():
            raise ToolError("query is empty: describe what to look for")
        number = check_page(page)
        where = self._where()
        total = self._store.count(where)
        if total == 0:
            return Page([], 0, number)
        hits = self._store.search(
            self._model.embed(query), text=query, limit=PAGE_SIZE, offset=number * PAGE_SIZE, where=where
        )
        return Page([_describe(h) for h in hits], total, number)


def _describe(hit: SearchHit) -> str:
    passage = hit.passage
    stamp = passage.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    origin = ""
    if passage.metadata.get("file_name"):
        origin = (
            f" ({passage.metadata['file_name']}"
            + (f", page {passage.metadata['page']}" if "page" in passage.metadata else "")
            + ")"
        )
    return f"[{stamp}]{origin} {passage.text}"
