"""Recall memory: every message ever exchanged, searchable by words and meaning, and by date, paged.

SQL holds every message (the source of truth, and the date search). Conversational messages are also
indexed in Milvus (``kind == "recall"``), each with its day and the message before it (``RecallIndex``),
so ``conversation_search`` ranks them by meaning and, where the deployment has BM25, by their words, and
shows each hit with its neighbours (``memgpt.memory.results``). Indexing runs on a background thread after
each step (a step never waits for embeddings), catches up on anything a crash or an offline embedding
endpoint left out, and a search waits for it first. What a message's text is: ``memgpt.memory.messages``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from memgpt.embeddings.base import EmbeddingModel, Vector
from memgpt.errors import MemGPTError, ToolError
from memgpt.memory.background import Background
from memgpt.memory.messages import describe, indexed_text, search_text, stored
from memgpt.memory.paging import PAGE_SIZE, Page, RankedPage, check_page
from memgpt.memory.results import Result, Scope, keyword_query, parse_date, ranking_note
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import all_of, eq, is_in
from memgpt.storage.fusion import CANDIDATES
from memgpt.storage.turns import Fence
from memgpt.types import Message, Passage, SearchHit

logger = logging.getLogger(__name__)
_INDEX_BATCH = 64  # messages per pass under the write lock: a /pop waits for at most one
CATCH_UP_SECONDS = 10.0  # a search waits this long for the index, then uses the SQL word search
_MAX_INDEXED_BYTES = 60_000  # under the Milvus text field's 65,535; the whole message stays in SQL
# An embedding needs some text: an agent message with neither a thought nor words to the person (it only
# called a tool) is indexed under this, so it still counts where the SQL record does.
_NO_WORDS = "(empty)"
_RECENT = 64  # own embeddings kept for the next batch's first message (see RecallIndex)
_QUERIES = 16  # query embeddings kept for the next page of the same search


@dataclass
class RecallIndex:
    """The Milvus side of recall memory: each message indexed in the context of the one before it.

    The entry's text (what BM25 matches) is the message's day, the end of the message before it and its
    own words (``memgpt.memory.messages.indexed_text``); its vector is the normalised sum of the two
    messages' own embeddings, so a short reply is found by the question it answers at no extra embedding
    cost: each message is embedded once, and the one before a batch comes from ``_recent``."""

    store: PassageStore
    model: EmbeddingModel
    # Own embeddings of the last messages indexed, by id: the next batch's first message needs its
    # predecessor's (a miss, after a restart, embeds it again).
    _recent: OrderedDict[str, Vector] = field(default_factory=OrderedDict, repr=False)
    _queries: OrderedDict[str, Vector] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # indexing may run on a thread

    def add(self, user_id: str, messages: list[Message], before: Mapping[str, Message | None]) -> None:
        """Index ``messages``, replacing what an interrupted earlier pass wrote of them; ``before`` maps each
        one's id to the searchable message right before it."""
        context = [before.get(m.id) for m in messages]
        own = self._own_vectors(list({m.id: m for m in [*messages, *filter(None, context)]}.values()))
        passages = [
            Passage(
                id=message.id,
                text=_fit(indexed_text(message, previous)),
                user_id=user_id,
                agent_id=message.agent_id,
                kind="recall",
                created_at=message.created_at,
                metadata={"role": message.role.value},
                embedding=own[message.id] if previous is None else _joined(own[message.id], own[previous.id]),
            )
            for message, previous in zip(messages, context, strict=True)
        ]
        # Delete, then insert: Milvus Lite's upsert scans for the old rows (~0.8 s at 100k passages).
        self.remove(messages[0].agent_id, [m.id for m in messages])
        self.store.insert(passages)
        self._remember({m.id: own[m.id] for m in messages})

    def _own_vectors(self, messages: list[Message]) -> dict[str, Vector]:
        with self._lock:
            cached = {m.id: self._recent[m.id] for m in messages if m.id in self._recent}
        missing = [m for m in messages if m.id not in cached]
        vectors = self.model.embed_multi([search_text(m) or _NO_WORDS for m in missing])
        return {**cached, **dict(zip([m.id for m in missing], vectors, strict=True))}

    def _remember(self, vectors: dict[str, Vector]) -> None:
        with self._lock:
            self._recent.update(vectors)
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def query_vector(self, query: str) -> Vector:
        """The query's embedding; the last few are kept, as the model pages through one query's results."""
        with self._lock:
            if query in self._queries:
                self._queries.move_to_end(query)
                return self._queries[query]
        vector = self.model.embed(query)
        with self._lock:
            self._queries[query] = vector
            while len(self._queries) > _QUERIES:
                self._queries.popitem(last=False)
        return vector

    def forget(self, message_ids: Sequence[str]) -> None:
        """Drop cached embeddings of messages whose text changed or that were removed."""
        with self._lock:
            for message_id in message_ids:
                self._recent.pop(message_id, None)

    def remove(self, agent_id: str, message_ids: Sequence[str]) -> None:
        if message_ids:
            self.store.delete(all_of(eq("agent_id", agent_id), is_in("id", list(message_ids))))


def _fit(text: str) -> str:
    """The text cut to what one Milvus row holds (at a character boundary)."""
    data = text.encode("utf-8")
    return text if len(data) <= _MAX_INDEXED_BYTES else data[:_MAX_INDEXED_BYTES].decode("utf-8", "ignore")


def _joined(own: Vector, before: Vector) -> Vector:
    total = [a + b for a, b in zip(own, before, strict=True)]
    norm = math.sqrt(sum(v * v for v in total)) or 1.0
    return [v / norm for v in total]


def _unseen(messages: list[Message], shown: set[str]) -> list[Message]:
    return [m for m in messages if m.id not in shown]


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
        self.fence: Fence | None = None  # the lease of the server turn that holds the agent: its writes carry it

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
        self._messages.append(self.agent_id, [stored(m) for m in messages], fence=self.fence)

    def replace(self, message: Message) -> None:
        """Record a message's edited content or tool calls; the index picks the new text up at the next sync,
        for it and for the message after it (indexed with its words)."""
        with self._writing:
            self._messages.replace(stored(message))
            if self._index is not None:
                self._index.forget([message.id])
                window = self._messages.around(self.agent_id, [message.id], before=0)
                after = window[message.id][2] if message.id in window else []
                self._messages.mark_indexed(self.agent_id, [m.id for m in after], indexed=False)
        self.sync_later()

    def _context(self, messages: list[Message]) -> dict[str, Message | None]:
        """The searchable message right before each of ``messages``: what it is indexed with."""
        around = self._messages.around(self.agent_id, [m.id for m in messages], after=0)
        return {m.id: (around[m.id][0] or [None])[-1] if m.id in around else None for m in messages}

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
            self._index.forget(message_ids)

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
                    self._index.add(self.user_id, batch, self._context(batch))
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

    def search(
        self, query: str, page: int | None = 0, *, start_date: str = "", end_date: str = "", role: str = ""
    ) -> Page | RankedPage:
        """Messages ranked by meaning and words (see ``RankedPage``), each shown with its neighbours;
        optionally only between two dates and of one role. SQL word search while the index is unreachable."""
        if not query.strip():
            raise ToolError("query is empty: give words to look for")
        number = check_page(page)
        scope = Scope.of(start_date, end_date, role)
        if self._index is None or not self.caught_up():  # no index, or it is unreachable or behind: SQL word search
            found, total = self._messages.search(
                self.agent_id,
                query,
                offset=number * PAGE_SIZE,
                limit=PAGE_SIZE,
                start=scope.start,
                end=scope.end,
                role=scope.role,
            )
            return Page([describe(m) for m in found], total, number)
        return self._ranked(self._index, query, number, scope)

    def _ranked(self, index: RecallIndex, query: str, number: int, scope: Scope) -> RankedPage:
        where = all_of(
            eq("user_id", self.user_id), eq("kind", "recall"), eq("agent_id", self.agent_id), scope.where()
        )
        store = index.store
        wanted = (number + 1) * PAGE_SIZE
        # Enough candidates to fill the pages up to this one however many hits fold into earlier results.
        depth = max(CANDIDATES, wanted * 3 * (2 if scope.role else 1))
        hits = store.search(
            index.query_vector(query), text=keyword_query(query), limit=depth, where=where, with_text=False
        )
        results = self.with_neighbours([h for h in hits if scope.admits(h)], wanted + 1)
        about = ranking_note(hits, store.supports_hybrid) + scope.describe()
        more = len(results) > wanted
        return RankedPage([r.render() for r in results[number * PAGE_SIZE : wanted]], number, more, about)

    def with_neighbours(self, hits: list[SearchHit], limit: int) -> list[Result]:
        """Up to ``limit`` results, best first, each with the messages right before and after it; a hit
        that an earlier result already shows is not repeated, nor is any message shown twice."""
        shown: set[str] = set()
        results: list[Result] = []
        # Read a few hits at a time: most pages need only the first ones.
        step = limit + 3
        for start in range(0, len(hits), step):
            batch = [h.passage.id for h in hits[start : start + step] if h.passage.id not in shown]
            windows = self._messages.around(self.agent_id, batch)
            for hit_id in batch:
                if len(results) >= limit:
                    return results
                if hit_id in shown or hit_id not in windows:  # not shown twice; removed since it was indexed
                    continue
                before, match, after = windows[hit_id]
                result = Result(match, _unseen(before, shown), _unseen(after, shown))
                shown.update(m.id for m in (*result.before, match, *result.after))
                results.append(result)
        return results

    def search_dates(self, start_date: str, end_date: str, page: int | None = 0) -> Page:
        start, end = parse_date(start_date, end=False), parse_date(end_date, end=True)
        if end < start:
            raise ToolError("end_date is before start_date")
        if end - start > timedelta(days=36_500):
            raise ToolError("that date range is too wide")
        number = check_page(page)
        found, total = self._messages.between(self.agent_id, start, end, offset=number * PAGE_SIZE, limit=PAGE_SIZE)
        return Page([describe(m) for m in found], total, number)
