"""Archival memory: the agent's own passages plus every attached source, searched by meaning.

Attaching a source links it (a filter on its id); nothing is copied, and detaching unlinks it. A
passage an agent step inserts is recorded under the step before it is written (see
``memgpt.storage.agents``), so a step that never commits can have it removed again.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

from memgpt.data.chunking import Chunker
from memgpt.data.sections import strip_label
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import StorageError, ToolError
from memgpt.memory.paging import (
    PAGE_SIZE,
    PAST_END_CHECK,
    RankedPage,
    check_page,
    deep_ranking_note,
    ranking_note,
)
from memgpt.storage import Storage
from memgpt.storage.agents import PASSAGE, StepEffect
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import MATCH_ALL, Filter, all_of, between, eq, is_in, not_in
from memgpt.storage.fusion import CANDIDATES
from memgpt.storage.turns import Fence
from memgpt.types import Passage, SearchHit, utc_now

logger = logging.getLogger(__name__)

_IDS = uuid.UUID("5c0e3a52-8f1d-4f57-9d0e-6b1a2f0c7d41")  # the namespace of passage ids derived from an attempt's


def passage_id(attempt: str, index: int) -> str:
    """The id of chunk ``index`` of the text an ``attempt`` (a retried write's run) stores: the same in its retries."""
    return f"passage-{uuid.uuid5(_IDS, f'{attempt}:{index}')}"


def over_insert_limit(text: str, limit_mb: float, field: str) -> str | None:
    """Why ``text`` is too long for one insert (``server.max_passage_mb``: it is embedded within the request, which
    a client gives up on after a minute), naming ``field``; None when it is not. The REST API and MCP say the same."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size <= limit_mb * 1_000_000:
        return None
    return (
        f"{field}: {size / 1_000_000:.1f} MB is more than one insert takes ({limit_mb:g} MB, server.max_passage_mb "
        "in the server's config.toml)"
    )


class ArchivalMemory:
    """One agent's archival memory, in ``model``'s embedding space (the agent's, checked when it is opened)."""

    def __init__(
        self,
        storage: Storage,
        model: EmbeddingModel,
        *,
        agent_id: str,
        user_id: str,
        store: PassageStore | None = None,
    ) -> None:
        """``store``: the passage store of ``model``'s space (default: ``storage.passages``, which opens Milvus)."""
        self._storage = storage
        self._model = model
        self.agent_id = agent_id
        self.user_id = user_id
        self._store = store if store is not None else storage.passages(model.space)
        self.last_recorded_step = ""  # the last step this memory recorded passages under
        self.fence: Fence | None = None  # the lease of the server turn that holds the agent: its writes carry it

    @functools.cached_property
    def _chunker(self) -> Chunker:
        """Made at the first insert: its import of semchunk (with multiprocessing and tqdm, ~0.03 CPU s) is
        not needed by a turn that stores nothing, as most are."""
        return Chunker(self._model.count_tokens, min(250, self._model.max_input_tokens), 25)

    def _where(self) -> Filter:
        """The agent's own passages or those of its attached sources, fully loaded documents only. Reads
        after it see what other processes wrote of them before (see ``memgpt.storage.marks``)."""
        sources = self._storage.attachments.source_ids(self.agent_id)
        self._read_after([self.agent_id, *sources])
        mine = eq("agent_id", self.agent_id)
        scope = mine | is_in("source_id", sources) if sources else mine
        hidden = self._storage.metadata.hidden_document_ids(sources)
        return all_of(eq("user_id", self.user_id), eq("kind", "archival"), scope, not_in("document_id", hidden))

    def _read_after(self, scope_ids: list[str]) -> None:
        self._storage.marks.catch_up(scope_ids, self._store)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around each write of the agent's own passages: the count kept in SQL is put aside before it (a crash
        during or after the write leaves it to be counted again) and made again after it, while the vector
        store is open, so that the next opening of the agent reads it from SQL (see ``AgentStore.archival_writing``)."""
        self._storage.agents.archival_writing(self.agent_id)
        yield
        self._storage.marks.written(self.agent_id, self._store)
        # Outside a server turn a server process holding the agent open sees the count move (its version).
        self._storage.agents.archival_writing(self.agent_id, ended=True, touch=self.fence is None)
        self.own_count()

    def _own(self) -> Filter:
        """The agent's own passages (what it stored itself), without those of attached sources."""
        self._read_after([self.agent_id])
        return all_of(eq("user_id", self.user_id), eq("kind", "archival"), eq("agent_id", self.agent_id))

    def count(self) -> int:
        """The passages a search of archival memory ranks: the agent's own (counted in SQL, see ``own_count``)
        and those of the fully loaded documents of its attached sources (their passage counts in SQL, as
        `memgpt list sources` shows them). No vector store is opened unless the own count must be made again."""
        sources = self._storage.attachments.source_ids(self.agent_id)
        return self.own_count() + self._storage.metadata.ready_passages(sources)

    def own_count(self) -> int:
        """How many passages of its own the agent has: the count kept in SQL, else counted in the vector store
        now (and kept unless a write began meanwhile). While the vector store cannot count (Milvus is away, and a
        write that failed there left the kept count unsure), the count kept last: the agent's prompt shows it, so a
        turn that uses no archival tool still runs; it is counted again the next time it is asked."""
        known, version = self._storage.agents.archival_count(self.agent_id)
        if known is not None:
            return known
        try:
            counted = self._store.count(self._own())
        except StorageError as exc:
            last = self._storage.agents.last_archival_count(self.agent_id)
            if last is None:
                raise
            logger.info(
                "agent %s: its archival passages cannot be counted now (%s); the last count is %d",
                self.agent_id,
                exc,
                last,
            )
            return last
        self._storage.agents.keep_archival_count(self.agent_id, counted, version, open_for=self._storage.claim_seconds)
        return counted

    def insert(self, content: str, *, step_id: str = "") -> int:
        """Store ``content`` (split if it is longer than the model takes); returns the passage count.
        ``step_id``: the agent step inserting it, which records the passages before writing them."""
        return len(self.add(content, step_id=step_id))

    def add(
        self,
        content: str,
        *,
        tags: Sequence[str] = (),
        created_at: datetime | None = None,
        step_id: str = "",
        attempt: str = "",
        check: Callable[[], None] | None = None,
    ) -> list[Passage]:
        """Store ``content`` as the agent's own passages (split if it is longer than the model takes),
        with ``tags`` in their metadata; returns them (without embeddings). With a ``step_id`` the
        passages are recorded under that step before they are written (see ``memgpt.storage.agents``).
        With an ``attempt`` (the run of a write a client may retry) their ids derive from it and the chunk's
        position, and they are upserted: a retry that redoes the work (an earlier try failed or died, perhaps after
        writing some) and a stalled try that goes on after it both rewrite the same rows, never a second copy.
        ``check`` is called all along the work before the write (while the text is split, before the embedding
        and after each embedding batch); an error it raises stops the add before anything is written."""
        if not content.strip():
            raise ToolError("content is empty; nothing was stored")
        chunks = self._chunker.split(content, check=check)
        if check is None:
            vectors = self._model.embed_multi(chunks)
        else:
            check()  # before the batches are planned (every chunk's tokens counted) and the model perhaps loaded
            vectors = self._model.embed_multi(chunks, on_progress=lambda _done: check())
        moment = created_at or utc_now()
        metadata = {"tags": list(dict.fromkeys(tags))} if tags else {}
        passages = [
            Passage(
                id=passage_id(attempt, index) if attempt else f"passage-{uuid.uuid4()}",
                text=chunk,
                user_id=self.user_id,
                agent_id=self.agent_id,
                chunk_index=index,
                created_at=moment,
                metadata=metadata,
                embedding=vector,
            )
            for index, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
        ]
        if step_id:
            effects = [StepEffect(step_id, PASSAGE, p.id) for p in passages]
            self._storage.agents.record_effects(self.agent_id, effects, fence=self.fence)
            self.last_recorded_step = step_id
        with self._writing():
            if attempt:  # another try of the same write (a retry, or a stalled first try going on) may write these ids
                self._store.upsert(passages)
            else:
                self._store.insert(passages)  # the ids are new: no old row to replace
        return [replace(p, embedding=None) for p in passages]

    def own_by_ids(self, passage_ids: Sequence[str]) -> list[Passage]:
        """The agent's own passages of these ids (those that are still stored), in the order given."""
        if not passage_ids:
            return []
        where = self._own() & is_in("id", list(passage_ids))
        found = {p.id: p for batch in self._store.iterate(where) for p in batch}
        return [found[i] for i in passage_ids if i in found]

    def remove(self, passage_ids: list[str]) -> None:
        """Delete some of the agent's own passages (what a step that was undone or forgotten wrote)."""
        if passage_ids:
            with self._writing():
                self._store.delete(all_of(eq("agent_id", self.agent_id), is_in("id", passage_ids)))

    def search(self, query: str, page: int | None = 0) -> RankedPage:
        """A page of the best passages for ``query``, ranked by meaning and words (see ``hits``). Every passage
        in scope has a rank by meaning, so there is no honest "N results": the page says how many of the
        best-ranked candidates share words with the query (``ranking_note``) and whether a next page has more."""
        if not query.strip():
            raise ToolError("query is empty: describe what to look for")
        number = check_page(page)
        where = self._where()
        start = number * PAGE_SIZE
        if start >= PAST_END_CHECK and start >= self._store.count(where):  # a page far past the end: nothing to rank
            return RankedPage([], number, False)
        window = self._store.search_window
        if window is not None and start + PAGE_SIZE + 1 > window:  # past the hybrid window: one page, by meaning
            return self._deep_page(query, number, where, window)
        # The same candidates the hybrid ranking fuses for any page within them, without texts: the page's are read.
        # A deeper page widens them to itself (and a hit more, to tell whether there is a next), up to the window.
        depth = max(CANDIDATES, start + PAGE_SIZE + 1)
        hits = self._store.search(
            self._model.embed(query),
            text=query,
            limit=depth if window is None else min(depth, window),
            where=where,
            with_text=False,
        )
        shown = self._store.with_texts(hits[start : start + PAGE_SIZE])
        about = ranking_note(hits, self._store.supports_hybrid, "passages")
        more = len(hits) > start + PAGE_SIZE
        return RankedPage([_describe(h) for h in shown], number, more, about)

    def _deep_page(self, query: str, number: int, where: Filter, window: int) -> RankedPage:
        """Page ``number``, past the ``window`` the store ranks by meaning and words in: it ranks by meaning
        alone there, and only this page (and one more hit, to tell whether there is a next) is kept."""
        hits = self.hits(query, limit=PAGE_SIZE + 1, offset=number * PAGE_SIZE, where=where)
        if self._store.supports_hybrid:
            about = deep_ranking_note(window, "passages") if hits else ""
        else:
            about = ranking_note(hits, False, "passages")
        more = len(hits) > PAGE_SIZE
        return RankedPage([_describe(h) for h in hits[:PAGE_SIZE]], number, more, about)

    def hits(
        self,
        query: str,
        *,
        limit: int,
        offset: int = 0,
        where: Filter | None = None,
        also: Filter = MATCH_ALL,
    ) -> list[SearchHit]:
        """The best passages for ``query`` by meaning and words (hybrid where Milvus has BM25), among the
        agent's own and its attached sources' passages that also match ``also``; best first."""
        if not query.strip():
            raise ToolError("query is empty: describe what to look for")
        scope = (where or self._where()) & also
        return self._store.search(self._model.embed(query), text=query, limit=limit, offset=offset, where=scope)

    @staticmethod
    def created_between(start: datetime | None, end: datetime | None) -> Filter:
        """Passages created from ``start`` to ``end`` (either may be open), for ``hits(also=...)``."""
        millis = [None if t is None else int(t.timestamp() * 1000) for t in (start, end)]
        return between("created_at", millis[0], millis[1])

    def own_passages(
        self,
        *,
        limit: int,
        ascending: bool = True,
        after: str | None = None,
        before: str | None = None,
        containing: str | None = None,
    ) -> list[Passage]:
        """A page of the agent's own passages in the order they were stored (ids break ties); ``after`` and
        ``before`` are passage ids relative to that order (an id that is not the agent's gives ``[]``), and
        ``containing`` keeps passages with that text in any case."""
        passages = [p for batch in self._store.iterate(self._own()) for p in batch]
        passages.sort(key=lambda p: (p.created_at, p.id), reverse=not ascending)
        position = {p.id: i for i, p in enumerate(passages)}
        start, stop = 0, len(passages)
        for cursor, later in ((after, True), (before, False)):
            if cursor is None:
                continue
            if cursor not in position:
                return []
            if later:
                start = max(start, position[cursor] + 1)
            else:
                stop = min(stop, position[cursor])
        window = passages[start:stop]
        if containing:
            needle = containing.lower()
            window = [p for p in window if needle in p.text.lower()]
        return window[-limit:] if before is not None and after is None else window[:limit]

    def visible_by_id(self, passage_ids: Sequence[str]) -> Passage | None:
        """The first passage of these ids that a search of the agent's archival memory sees (its own or an
        attached folder's), or None."""
        found = [p for batch in self._store.iterate(self._where() & is_in("id", list(passage_ids))) for p in batch]
        return replace(found[0], embedding=None) if found else None

    def delete_own(self, passage_id: str) -> bool:
        """Delete one of the agent's own passages; False when it has none with that id."""
        where = self._own() & eq("id", passage_id)
        if self._store.count(where) == 0:
            return False
        with self._writing():
            self._store.delete(where)
        return True


def _describe(hit: SearchHit) -> str:
    passage = hit.passage
    stamp = passage.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = passage.metadata
    origin, text = "", passage.text
    if meta.get("file_name"):
        page = meta.get("page")
        section = str(meta.get("section") or "")
        origin = (
            f" ({meta['file_name']}"
            + (f", page {page}" if page is not None else "")
            + (f", section: {section}" if section else "")
            + ")"
        )
        text = strip_label(text, section, page)
    return f"[{stamp}]{origin} {text}"
