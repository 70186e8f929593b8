"""Recall memory: every message ever exchanged, searchable by words and meaning, and by date, paged.

SQL holds every message (the source of truth, and the date search). Conversational messages are also
indexed in Milvus (``kind == "recall"``) so ``conversation_search`` ranks them by meaning and, where
the deployment has BM25, by their words. Indexing runs on a background thread after each step (a
step never waits for embeddings), catches up on anything a crash or an offline embedding endpoint
left out, and a search waits for it first. What a message's text is: ``memgpt.memory.messages``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import MemGPTError, ToolError
from memgpt.memory.background import Background
from memgpt.memory.messages import describe, search_text, stored
from memgpt.memory.paging import PAGE_SIZE, Page, check_page
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import all_of, eq, is_in
from memgpt.types import Message, Passage

logger = logging.getLogger(__name__)
_INDEX_BATCH = 64  # messages per pass under the write lock: a /pop waits for at most one
CATCH_UP_SECONDS = 10.0  # a search waits this long for the index, then uses the SQL word search
_MAX_INDEXED_BYTES = 60_000  # under the Milvus text field's 65,535; the whole message stays in SQL
# An embedding needs some text: an agent message with neither a thought nor words to the person (it only
# called a tool) is indexed under this, so it still counts where the SQL record does.
_NO_WORDS = "(empty)"


def parse_date(value: str, *, end: bool) -> datetime:
    """YYYY-MM-DD (the whole day) or an ISO timestamp; naive times are UTC."""
    try:
        if len(value.strip()) == 10:
            day = datetime.strptime(value.strip(), "%Y-%m-%d").date()
            moment = datetime.combine(day, time.max if end else time.min)
            return moment.replace(tzinfo=UTC)
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ToolError(f"{value!r} is not a date: use YYYY-MM-DD, e.g. 2024-01-31") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class RecallIndex:
    """The Milvus side of recall memory."""

    store: PassageStore
    model: EmbeddingModel

    def add(self, user_id: str, messages: list[Message]) -> None:
        """Index ``messages``, replacing what an interrupted earlier pass wrote of them."""
        texts = [_fit(search_text(m)) or _NO_WORDS for m in messages]
        vectors = self.model.embed_multi(texts)
        # Delete, then insert: Milvus Lite's upsert scans for the old rows (~0.8 s at 100k passages).
        self.remove(messages[0].agent_id, [m.id for m in messages])
        self.store.insert(
            [
                Passage(
                    id=m.id,
                    text=text,
                    user_id=user_id,
                    agent_id=m.agent_id,
                    kind="recall",
                    created_at=m.created_at,
                    metadata={"role": m.role.value},
                    embedding=vector,
                )
                for m, text, vector in zip(messages, texts, vectors, strict=True)
            ]
        )

    def remove(self, agent_id: str, message_ids: Sequence[str]) -> None:
        if message_ids:
            self.store.delete(all_of(eq("agent_id", agent_id), is_in("id", list(message_ids))))


def _fit(text: str) -> str:
    """The text cut to what one Milvus row holds (at a character boundary)."""
    data = text.encode("utf-8")
    return text if len(data) <= _MAX_INDEXED_BYTES else data[:_MAX_INDEXED_BYTES].decode("utf-8", "ignore")


class RecallMemory:
    """One agent's message history; ``index`` is None where only the SQL word search is wanted.

    With an index, ``sync_later`` indexes on a background thread; ``close`` lets it finish."""

    def __init__(self, storage: Storage, *, agent_id: str, user_id: str, index: RecallIndex | None = None) -> None:
        self._messages = storage.messages
        self.agent_id = agent_id
        self.user_id = user_id
        self._index = index
        # Held while a pass writes the index and marks messages indexed, and while messages are edited or
        # removed: a pass never marks a message indexed under text it no longer has, nor indexes a removed one.
        self._writing = threading.RLock()
        self._background = Background(self.sync, f"recall indexing of agent {agent_id}") if index else None

    @property
    def writing(self) -> threading.RLock:
        """Hold it to change or delete messages without a background indexing pass in between."""
        return self._writing

    def count(self) -> int:
        return self._messages.count(self.agent_id)

    def backlog(self) -> int:
        """Messages recall search should see that are not in the index yet (0 without an index)."""
        return self._messages.backlog(self.agent_id) if self._index is not None else 0

    def append(self, messages: Sequence[Message]) -> None:
        """Record messages outside a step's commit (the user's message before any LLM call, heartbeats)."""
        self._messages.append(self.agent_id, [stored(m) for m in messages])

    def replace(self, message: Message) -> None:
        """Record a message's edited content or tool calls; the index picks the new text up at the next sync."""
        with self._writing:
            self._messages.replace(stored(message))
        self.sync_later()

    def remove(self, message_ids: list[str]) -> None:
        """Delete messages for good (the user's /pop and /retry), from SQL and from the index."""
        with self._writing:
            self.unindex(message_ids)
            self._messages.remove(self.agent_id, message_ids)

    def unindex(self, message_ids: Sequence[str]) -> None:
        """Take messages out of the index before they are deleted. They are marked unindexed first, so a
        crash before their deletion leaves them to be indexed again, never index entries without a message."""
        if self._index is None or not message_ids:
            return
        with self._writing:
            self._messages.mark_indexed(self.agent_id, message_ids, indexed=False)
            self._index.remove(self.agent_id, message_ids)

    def sync(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Index what is not indexed yet, now; returns whether the index now holds every message. Failures
        are logged and retried next time (SQL keeps all). ``stop`` is asked between batches."""
        if self._index is None:
            return False
        try:
            while not stop():
                with self._writing:
                    batch = self._messages.unindexed(self.agent_id, _INDEX_BATCH)
                    if not batch:
                        return True
                    self._index.add(self.user_id, batch)
                    self._messages.mark_indexed(self.agent_id, [m.id for m in batch])
        except MemGPTError as exc:
            logger.warning("recall messages not indexed yet (%s); word search still finds them", exc)
        return False

    def sync_later(self) -> None:
        """Index new messages on the background thread (now, where there is none)."""
        if self._background is not None:
            self._background.request()
        else:
            self.sync()

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Index what is left and wait up to ``timeout`` seconds (None: as long as it takes) for it; whether
        the index holds every message."""
        return self.caught_up(timeout)

    def caught_up(self, timeout: float | None = CATCH_UP_SECONDS) -> bool:
        """Before a search: index what is left, waiting up to ``timeout`` seconds. False when the index is
        unreachable or still behind (a long unindexed history): the search then reads SQL, which has all."""
        if self._index is None:
            return False
        if self._background is None:
            return self.sync()
        self._background.request()
        return self._background.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Let background indexing finish for up to ``timeout`` seconds, then stop it (what is left is
        indexed when the agent is opened again)."""
        if self._background is not None:
            self._background.close(timeout)

    def search(self, query: str, page: int | None = 0) -> Page:
        if not query.strip():
            raise ToolError("query is empty: give words to look for")
        number = check_page(page)
        if not self.caught_up():  # no index, or it is unreachable or behind: SQL word search
            found, total = self._messages.search(self.agent_id, query, offset=number * PAGE_SIZE, limit=PAGE_SIZE)
            return Page([describe(m) for m in found], total, number)
        where = all_of(eq("user_id", self.user_id), eq("kind", "recall"), eq("agent_id", self.agent_id))
        store = self._index.store
        total = store.count(where)
        if total == 0:
            return Page([], 0, number)
        hits = store.search(
            self._index.model.embed(query), text=query, limit=PAGE_SIZE, offset=number * PAGE_SIZE, where=where
        )
        messages = self._messages.by_id(self.agent_id, [h.passage.id for h in hits])
        return Page([describe(messages[h.passage.id]) for h in hits if h.passage.id in messages], total, number)

    def search_dates(self, start_date: str, end_date: str, page: int | None = 0) -> Page:
        start, end = parse_date(start_date, end=False), parse_date(end_date, end=True)
        if end < start:
            raise ToolError("end_date is before start_date")
        if end - start > timedelta(days=36_500):
            raise ToolError("that date range is too wide")
        number = check_page(page)
        found, total = self._messages.between(self.agent_id, start, end, offset=number * PAGE_SIZE, limit=PAGE_SIZE)
        return Page([describe(m) for m in found], total, number)
