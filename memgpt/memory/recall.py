"""Recall memory: every message ever exchanged, searchable by words and meaning, and by date, paged.

SQL holds every message (the source of truth, and the date search). Conversational messages are also
indexed in Milvus (``kind == "recall"``), each with its day and the message before it (``RecallIndex``),
so ``conversation_search`` ranks them by meaning and, where the deployment has BM25, by their words, and
shows each hit with its neighbours (``memgpt.memory.results``). Indexing runs after each step on one
thread per process (``indexer()``; a step never waits for embeddings), which gathers the new messages of
every open agent into passes of one embedding call and one Milvus insert; it catches up on anything a crash
or an offline embedding endpoint left out, and a search waits for its agent's share first. What a
message's text is: ``memgpt.memory.messages``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from memgpt.embeddings.base import EmbeddingModel, Vector
from memgpt.errors import MemGPTError, ToolError
from memgpt.memory.background import Batcher, Outcome
from memgpt.memory.messages import indexed_text, search_text, stored
from memgpt.memory.paging import PAGE_SIZE, PAST_END_CHECK, Page, RankedPage, check_page
from memgpt.memory.results import Result, Scope, keyword_query, parse_date, ranking_note
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.claims import IndexClaims
from memgpt.storage.filters import all_of, eq, is_in
from memgpt.storage.fusion import CANDIDATES, Weights
from memgpt.storage.turns import Fence, new_owner
from memgpt.types import Message, Passage, SearchHit

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)
_INDEX_BATCH = 128  # messages per pass, over every agent waiting: a /pop waits for at most one pass
# Seconds a step's request waits for its pass: the turn ends first, other agents' steps join. A pass has a cost
# of its own besides its agents' (its embedding calls: one short text ~6 ms CPU, ~2.7 a text in a batch of 40; its
# Milvus calls; the SQL mark): passes of 1, 5, 20, 50 agents cost 15, 32, 91, 212 ms (a chat turn each, on a loaded
# machine), ~12 ms a pass + ~4 an agent. So a server under load indexes in fewer, larger passes (at 0.05 s one
# gathered ~7-18 agents at 50 clients). Nothing waits for it: a search asks urgently (no pause), a stop settles.
_GATHER = 0.25
CATCH_UP_SECONDS = 10.0  # a search waits this long for the index, then uses the SQL word search
# A pass's claim on its agents where other processes index them too (storage/claims.py) lasts as long as a
# server's lease (Storage.claim_seconds): a process killed mid-pass on another host, or one stopped (SIGSTOP, a
# frozen VM), holds them this long (one killed on this host, not at all). A pass embeds in parts each sized to take
# about ``_PART_SHARE`` of the claim (measured on the part before), and renews its claims before a part once a
# ``_PART_SHARE`` of the claim went by since it last did, so a pass slower than the claim (a backlog of 128 messages
# on a slow CPU or endpoint) keeps its agents: when it outlived its claim at once, another process's pass took the
# agents over, embedded them again and lost them the same way, each taking over from the other for ever. An agent
# lost all the same (a part far slower than the one before) is not embedded further, and the pass renews once more
# right before its delete and insert and writes only the agents it still holds, rather than alongside the pass
# that took them; only the delete and insert of one batch must take less than a claim. Nothing waits for another
# process's claim long: a turn's end not at all (``close``), a search ``_ELSEWHERE_PATIENCE`` seconds (then the
# SQL word search); what that process leaves unindexed is indexed at the agent's next request once it lets go.
_ELSEWHERE_PATIENCE = 2.0
_PART_SHARE = 0.25
_FIRST_PART = 16  # texts embedded before a pass with claims knows how long one takes (a turn's few: all at once)
_ELSEWHERE_PAUSE = 0.02  # seconds a pass that found its agents in another process's pass waits before its next
_MAX_INDEXED_BYTES = 60_000  # under the Milvus text field's 65,535; the whole message stays in SQL
# Own embeddings kept for the next batch's first message, per model and process (see RecallIndex): one per
# agent active lately is what is needed; 4096 float32 vectors of 384 dimensions are 6 MB.
_RECENT = 4096
_QUERIES = 16  # query embeddings kept for the next page of the same search
# How many messages around a hit are read to find the nearest with words on each side (bare tool calls of
# the agent may sit between them).
_REACH = 3
# How recall ranks (chosen with bench/fusion_sweep.py on the three benchmark conversations; the README says how
# and what else was tried). A chat message is short, so BM25 matches on one common word ("Tom", "work")
# are many: a keyword hit keeps half its credit unless its meaning is close too (``Weights.gate``), and words
# then weigh 1.5. Each message's score then gains this share of its shown neighbours' scores: the model reads
# a hit with the messages around it, so a result is as good as the three messages it shows.
RECALL_WEIGHTS = Weights(dense=1.0, keyword=1.5, gate=0.5)
NEIGHBOUR_SHARE = 0.2
RESCORED = 30  # how many of the best fused hits gain their neighbours' share (the same on every page)
# What the model is told when the ranked search cannot run (no index, or it is unreachable or behind): the
# tool's description says how the ranked search works, and this search works differently.
WORD_SEARCH_NOTE = (
    "Word search only (the ranked search is unavailable or still catching up): messages that contain every "
    "word of the query, oldest first; use few key words."
)


@dataclass
class RecallIndex:
    """The Milvus side of recall memory: each message indexed in the context of the one before it.

    The entry's text (what BM25 matches) is the message's day, the end of the message before it and its
    own words (``memgpt.memory.messages.indexed_text``); its vector is the normalised sum of the two
    messages' own embeddings, so a short reply is found by the question it answers at no extra embedding
    cost: each message is embedded once, and the one before a batch comes from ``_recent``."""

    store: PassageStore
    model: EmbeddingModel
    # Own embeddings of the last messages indexed, by id, shared by every index of the model in the process:
    # the next batch's first message needs its predecessor's, and a server opens an agent (and its index)
    # anew for a turn. A miss, after a restart or an eviction, embeds it again.
    _recent: OrderedDict[str, np.ndarray] = field(init=False, repr=False)
    _queries: OrderedDict[str, Vector] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # indexing may run on a thread

    def __post_init__(self) -> None:
        self._recent = _recent_of(self.model)

    def add(self, user_id: str, messages: list[Message], before: Mapping[str, Message | None]) -> None:
        """Index ``messages`` now, replacing what an interrupted earlier pass wrote of them; ``before`` maps each
        one's id to the searchable message right before it. Messages without words get no entry."""
        pairs = _worded([(m, before.get(m.id)) for m in messages])
        missing = self.uncached(pairs)
        fresh = dict(zip([m.id for m in missing], _embedded(self.model, missing), strict=True))
        _write(self.store, self.entries(user_id, pairs, fresh))
        self.remember(pairs, fresh)

    def uncached(self, pairs: Sequence[tuple[Message, Message | None]]) -> list[Message]:
        """The messages of ``pairs`` (and those before them) whose own embedding is not cached: to embed."""
        with _recent_lock:
            wanted = {m.id: m for pair in pairs for m in pair if m is not None and _own_key(m) not in self._recent}
        return list(wanted.values())

    def entries(
        self, user_id: str, pairs: Sequence[tuple[Message, Message | None]], fresh: Mapping[str, Vector]
    ) -> list[Passage]:
        """The index entries of ``pairs`` (each message with the one before it), from the own embeddings in
        ``fresh`` or cached ones (one evicted meanwhile is embedded again)."""
        # The own embeddings of those not in ``fresh``: cached ones, or embedded again.
        own: dict[str, Vector | np.ndarray] = {}
        wanted = {m.id: m for p in pairs for m in p if m is not None and m.id not in fresh}
        if wanted:
            with _recent_lock:
                for message in wanted.values():
                    if (key := _own_key(message)) in self._recent:
                        own[message.id] = self._recent[key]
            late = [m for m in wanted.values() if m.id not in own]
            if late:
                own.update(zip([m.id for m in late], _embedded(self.model, late), strict=True))
        own.update({m.id: fresh[m.id] for p in pairs for m in p if m is not None and m.id in fresh})
        both = [(own[message.id], own[previous.id]) for message, previous in pairs if previous is not None]
        sums = iter(_joined([mine for mine, _ in both], [theirs for _, theirs in both]))
        vectors = [_plain(own[message.id]) if previous is None else next(sums) for message, previous in pairs]
        return [
            Passage(
                id=message.id,
                text=_fit(indexed_text(message, previous)),
                user_id=user_id,
                agent_id=message.agent_id,
                kind="recall",
                created_at=message.created_at,
                metadata={"role": message.role.value},
                embedding=vector,
            )
            for (message, previous), vector in zip(pairs, vectors, strict=True)
        ]

    def remember(self, pairs: Sequence[tuple[Message, Message | None]], fresh: Mapping[str, Vector]) -> None:
        """Keep the indexed messages' own embeddings for the next batch's first message."""
        import numpy as np  # here: a process that indexes nothing (`memgpt run --message`) never imports it

        kept = {_own_key(m): np.asarray(fresh[m.id], dtype=np.float32) for m, _ in pairs if m.id in fresh}
        with _recent_lock:
            self._recent.update(kept)
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
        gone = set(message_ids)
        with _recent_lock:
            for key in [key for key in self._recent if key.partition("\0")[0] in gone]:
                del self._recent[key]

    def remove(self, agent_id: str, message_ids: Sequence[str]) -> None:
        if message_ids:
            self.store.delete(all_of(eq("agent_id", agent_id), is_in("id", list(message_ids))))


def _fit(text: str) -> str:
    """The text cut to what one Milvus row holds (at a character boundary)."""
    data = text.encode("utf-8")
    return text if len(data) <= _MAX_INDEXED_BYTES else data[:_MAX_INDEXED_BYTES].decode("utf-8", "ignore")


def _own_key(message: Message) -> str:
    """A message's key among the cached own embeddings: its id and what its text was when embedded, so an
    edit made in another process (whose cache was the one told) is never indexed with the old text's vector."""
    digest = hashlib.blake2b(search_text(message).encode("utf-8"), digest_size=8).hexdigest()
    return f"{message.id}\0{digest}"


def _recent_of(model: EmbeddingModel) -> OrderedDict[str, np.ndarray]:
    """The process's cache of own embeddings made with ``model``."""
    with _recent_lock:
        cache = _recents.get(model)
        if cache is None:
            cache = _recents[model] = OrderedDict()
        return cache


def _plain(vector: Vector | np.ndarray) -> Vector:
    return vector.tolist() if hasattr(vector, "tolist") else vector  # an ndarray (without importing numpy)


def _joined(own: Sequence[Vector | np.ndarray], before: Sequence[Vector | np.ndarray]) -> list[Vector]:
    """Each message's entry vector: the normalised sum of its own embedding and the one's before it (all in one
    go: numpy's call per message cost more than its arithmetic)."""
    if not own:
        return []
    import numpy as np

    total = np.add(np.asarray(own, dtype=np.float64), np.asarray(before, dtype=np.float64))
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    return (total / norms).tolist()  # type: ignore[no-any-return]


def _embedded(model: EmbeddingModel, messages: Sequence[Message]) -> list[Vector]:
    """The messages' own embeddings, each text embedded once."""
    texts = [search_text(m) for m in messages]
    unique = list(dict.fromkeys(texts))
    known = dict(zip(unique, model.embed_multi(unique), strict=True)) if unique else {}
    return [known[text] for text in texts]


def _write(store: PassageStore, entries: list[Passage], bare: Sequence[Message] = ()) -> None:
    """Delete, then insert: Milvus Lite's upsert scans for the old rows (~0.8 s per call at 100k passages).
    Entries a crash left between the insert and the SQL mark are replaced, never doubled. Messages without
    words (``bare``) get no entry, and lose one an earlier version wrote (see ``_worded``)."""
    agents = sorted({p.agent_id for p in entries if p.agent_id} | {m.agent_id for m in bare})
    ids = [p.id for p in entries] + [m.id for m in bare]
    if ids:
        store.delete(all_of(is_in("agent_id", agents), is_in("id", ids)), count=False)
    if entries:
        store.insert(entries)


def _worded(pairs: Sequence[tuple[Message, Message | None]]) -> list[tuple[Message, Message | None]]:
    """The pairs whose message has words: only they are indexed. One without words (an agent message that
    only called a tool) is never shown, as a result or a neighbour; an entry of its own would only take a
    ranked candidate's place (a page came back short while more matched). Its row is marked indexed all
    the same, so the backlog counts only what is still to index."""
    return [(m, previous) for m, previous in pairs if search_text(m)]


def _bare(pairs: Sequence[tuple[Message, Message | None]]) -> list[Message]:
    return [m for m, _ in pairs if not search_text(m)]


def _next_worded(after: Sequence[Message], gone: set[str]) -> str | None:
    """The first of ``after`` with words and not in ``gone``: the one indexed with the words before it."""
    return next((m.id for m in after if m.id not in gone and search_text(m)), None)


def _unseen(messages: list[Message], shown: set[str]) -> list[Message]:
    return [m for m in messages if m.id not in shown]


Neighbours = Mapping[str, tuple[str | None, str | None]]  # MessageStore.worded_neighbours: before, after
Windows = dict[str, tuple[list[Message], Message, list[Message]]]  # MessageStore.around: before, message, after


def with_neighbour_scores(
    hits: list[SearchHit], neighbours: Neighbours, scored: Sequence[SearchHit] = ()
) -> list[SearchHit]:
    """``hits`` re-ranked by their score plus ``NEIGHBOUR_SHARE`` of the scores of the messages their result
    would show beside them (``neighbours``: each hit's nearest messages with words before and after it),
    taken from ``hits`` and ``scored`` (0 for a message in neither); ties keep the fused order."""
    scores = {h.passage.id: h.score for h in (*scored, *hits)}

    def share(hit_id: str) -> float:
        return sum(scores.get(m, 0.0) for m in neighbours.get(hit_id, (None, None)) if m is not None)

    rescored = [SearchHit(h.passage, h.score + NEIGHBOUR_SHARE * share(h.passage.id), h.shares_words) for h in hits]
    return sorted(rescored, key=lambda h: -h.score)


class RecallMemory:
    """One agent's message history; ``index`` is None where only the SQL word search is wanted.

    With an index, ``sync_later`` has the process's recall indexer (``indexer()``) index new messages on its
    thread; ``close`` lets this agent's share finish. ``eager=False`` (a process that runs one turn and ends, as
    `memgpt run --message` does) leaves new messages to the backlog instead: SQL marks them unindexed, and the
    next search of the agent (``caught_up``, in any process) or the next eager opening indexes them first, so
    the process never loads the embedding model unless a tool embeds."""

    def __init__(
        self,
        storage: Storage,
        *,
        agent_id: str,
        user_id: str,
        index: RecallIndex | None = None,
        eager: bool = True,
    ) -> None:
        self._messages = storage.messages
        self.agent_id = agent_id
        self.user_id = user_id
        self._index = index
        self.eager = eager
        # The agent's messages as the process's indexer knows them (another RecallMemory of the same agent in
        # this process is the same work, never done twice at once).
        self.key: Hashable = (id(storage.messages), agent_id)
        # Held while a pass writes the index and marks messages indexed, and while messages are edited or
        # removed: a pass never marks a message indexed under text it no longer has, nor indexes a removed one.
        self._writing = _writing_lock(self.key)
        # Where other processes index the agent too, a pass claims it first (one writer of its entries at a time).
        shared = index is not None and index.store.shared
        self._claims = IndexClaims(storage.metadata, storage.claim_seconds) if shared else None
        self.fence: Fence | None = None  # the lease of the server turn that holds the agent: its writes carry it

    @property
    def writing(self) -> threading.RLock:
        """Hold it to change or delete messages without an indexing pass in between."""
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
            self._messages.replace(stored(message), fence=self.fence)
            if self._index is not None:
                self._index.forget([message.id])
                window = self._messages.around(self.agent_id, [message.id], before=0, after=1, worded=True)
                after = _next_worded(window[message.id][2], set()) if message.id in window else None
                self._messages.mark_indexed(self.agent_id, [after] if after else [], indexed=False)
        self.sync_later()

    def remove(self, message_ids: list[str]) -> None:
        """Delete messages for good (the user's /pop and /retry), from SQL and from the index; the message
        after each one was indexed with its words, so it is indexed again with its new predecessor."""
        with self._writing:
            successors = self._after(message_ids)
            self.unindex(message_ids)
            self._messages.remove(self.agent_id, message_ids)
            if successors and self._index is not None:
                self._messages.mark_indexed(self.agent_id, successors, indexed=False)
        if successors and self._index is not None:
            self.sync_later()

    def _after(self, message_ids: list[str]) -> list[str]:
        """The message with words right after each of ``message_ids`` that is not itself among them."""
        if self._index is None or not message_ids:
            return []
        gone = set(message_ids)
        window = self._messages.around(self.agent_id, message_ids, before=0, after=len(gone) + 1, worded=True)
        found = {_next_worded(after, gone) for _, _, after in window.values()}
        return [message_id for message_id in found if message_id is not None]

    def unindex(self, message_ids: Sequence[str]) -> None:
        """Take messages out of the index before they are deleted. They are marked unindexed first, so a
        crash before their deletion leaves them to be indexed again, never index entries without a message."""
        if self._index is None or not message_ids:
            return
        with self._writing:
            self._messages.mark_indexed(self.agent_id, message_ids, indexed=False)
            self._index.remove(self.agent_id, message_ids)
            self._index.forget(message_ids)

    def sync(self) -> bool:
        """Index what is not indexed yet, now, in this thread; returns whether the index now holds every message.
        Failures are logged and retried next time (SQL keeps all)."""
        if self._index is None:
            return False
        while True:
            outcome = index_pass([self])
            if self.key in outcome.failed:
                return False
            if self.key in outcome.finished:
                return True

    def sync_later(self) -> None:
        """Index new messages on the indexer's thread (without an index, or not ``eager``: nothing to do; the
        backlog is caught up before the next search)."""
        if self._index is not None and self.eager:
            indexer().request(self)

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Index what is left and wait up to ``timeout`` seconds (None: as long as it takes) for it; whether
        the index holds every message."""
        return self.caught_up(timeout)

    def caught_up(self, timeout: float | None = CATCH_UP_SECONDS) -> bool:
        """Before a search: index what is left, waiting up to ``timeout`` seconds. False when the index is
        unreachable or still behind (a long unindexed history): the search then reads SQL, which has all."""
        if self._index is None:
            return False
        # Its imports here, in the caller's thread (the indexer's would otherwise make them: see ``load_early``),
        # for a process that loaded no model yet (not ``eager``); nothing once it is loaded.
        self._index.model.load_early()
        indexer().request(self, urgent=True)
        return indexer().wait(self, timeout, patience=_ELSEWHERE_PATIENCE)

    @property
    def waits_at_close(self) -> bool:
        """Whether ``close(wait=False)`` waits for this agent's indexing (a shared index): a turn holds its lease
        until then."""
        return self._index is not None and self._index.store.shared

    def close(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Let this agent's indexing finish for up to ``timeout`` seconds, then withdraw it (what is left is
        indexed when the agent is opened again). ``wait=False``: wait only when another process may index the
        agent next (a shared index); else the process's indexer finishes the work in its own time, a search of
        the agent waits for it, and what a stop leaves is indexed at the next open. Never for an agent another
        process's pass holds (its claim): that pass, or the next one once it lets go, indexes the messages."""
        if self._index is not None and (wait or self.waits_at_close):
            indexer().withdraw(self, timeout, patience=0.0)

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
                offset=self._offset(number),
                limit=PAGE_SIZE,
                start=scope.start,
                end=scope.end,
                role=scope.role,
            )
            # Each message cut as the ranked search shows it: a 1 MB message came back whole, a tool result
            # over the window, summarized away before the model saw it.
            return Page([Result(m).render() for m in found], total, number, about=WORD_SEARCH_NOTE)
        return self._ranked(self._index, query, number, scope)

    def _offset(self, number: int) -> int:
        """Where page ``number`` starts, never past the agent's message count: a page number far past the end
        (the model may ask for any) would overflow SQL's integers, or make Milvus rank every message."""
        wanted = number * PAGE_SIZE
        return wanted if wanted < PAST_END_CHECK else min(wanted, self.count())

    def _ranked(self, index: RecallIndex, query: str, number: int, scope: Scope) -> RankedPage:
        if self._offset(number) < number * PAGE_SIZE:  # past every message: nothing to rank
            return RankedPage([], number, False)
        where = all_of(eq("user_id", self.user_id), eq("kind", "recall"), eq("agent_id", self.agent_id), scope.where())
        store = index.store
        wanted = (number + 1) * PAGE_SIZE
        # Enough candidates to fill the pages up to this one however many hits fold into earlier results.
        depth = max(CANDIDATES, wanted * 3)
        hits = store.search(
            index.query_vector(query),
            text=keyword_query(query),
            limit=depth,
            where=where,
            with_text=False,
            weights=RECALL_WEIGHTS,
        )
        best = hits[:RESCORED]  # the rest keep their fused score (a share for all 100 ranks the benchmark the same)
        neighbours = self._messages.worded_neighbours(self.agent_id, [h.passage.id for h in best])
        ranked = with_neighbour_scores(best, neighbours, hits) + hits[RESCORED:]
        results = self.with_neighbours(ranked, wanted + 1, neighbours)
        about = (ranking_note(hits, store.supports_hybrid) + scope.describe()).strip()
        more = len(results) > wanted
        return RankedPage([r.render() for r in results[number * PAGE_SIZE : wanted]], number, more, about)

    def with_neighbours(self, hits: list[SearchHit], limit: int, neighbours: Neighbours | None = None) -> list[Result]:
        """Up to ``limit`` results, best first, each with the messages with words right before and after it;
        a hit that an earlier result already shows is not repeated, nor is any message shown twice. An agent
        message without words (it only called a tool) has nothing to read, so it is neither a result (it is
        not indexed: see ``_worded``) nor a neighbour. ``neighbours``: the neighbours' ids of some hits,
        already read (``MessageStore.worded_neighbours``), so only those messages are read for them."""
        shown: set[str] = set()
        results: list[Result] = []
        # Read a few hits at a time: most pages need only the first ones.
        step = limit + 3
        for start in range(0, len(hits), step):
            batch = [h.passage.id for h in hits[start : start + step] if h.passage.id not in shown]
            windows = self._windows(batch, neighbours or {})
            for hit_id in batch:
                if len(results) >= limit:
                    return results
                if hit_id in shown or hit_id not in windows:  # not shown twice; removed since it was indexed
                    continue
                before, match, after = windows[hit_id]
                if not search_text(match):
                    continue
                before, after = [m for m in before if search_text(m)][-1:], [m for m in after if search_text(m)][:1]
                result = Result(match, _unseen(before, shown), _unseen(after, shown))
                shown.update(m.id for m in (*result.before, match, *result.after))
                results.append(result)
        return results

    def _windows(self, batch: list[str], neighbours: Neighbours) -> Windows:
        """Each hit of ``batch`` with the messages around it: for a hit whose neighbours' ids are known, just
        those messages; for the rest, the few searchable messages on each side (``around``)."""
        known = [hit_id for hit_id in batch if hit_id in neighbours]
        ids = {*known, *(m for hit_id in known for m in neighbours[hit_id] if m is not None)}
        read = self._messages.by_id(self.agent_id, list(ids)) if known else {}
        windows: Windows = {}
        for hit_id in known:
            if hit_id in read:  # else removed since it was indexed
                before, after = (read.get(m) if m else None for m in neighbours[hit_id])
                windows[hit_id] = ([before] if before else [], read[hit_id], [after] if after else [])
        rest = [hit_id for hit_id in batch if hit_id not in neighbours]
        if rest:
            windows.update(self._messages.around(self.agent_id, rest, before=_REACH, after=_REACH))
        return windows

    def search_dates(self, start_date: str, end_date: str, page: int | None = 0) -> Page:
        start, end = parse_date(start_date, end=False), parse_date(end_date, end=True)
        if end < start:
            raise ToolError("end_date is before start_date")
        if end - start > timedelta(days=36_500):
            raise ToolError("that date range is too wide")
        number = check_page(page)
        found, total = self._messages.between(self.agent_id, start, end, offset=self._offset(number), limit=PAGE_SIZE)
        return Page([Result(m).render() for m in found], total, number)


def index_pass(recalls: Sequence[RecallMemory], limit: int = _INDEX_BATCH) -> Outcome:
    """Index up to ``limit`` unindexed messages of these agents (each one's oldest first, under its writing lock)
    in one go: one embedding call per model, one delete and one insert per Milvus collection. An agent left
    with none is finished; one whose messages could not be read, embedded or written is failed (logged;
    SQL keeps all, and it is tried again at its next request); the rest have more to do."""
    outcome = Outcome()
    claimed = _Claimed()
    read: dict[str, str] = {}  # each message's search text as read: it is marked indexed only if still that
    with ExitStack() as held:
        work = _unindexed(recalls, limit, outcome, held, claimed, read)
        with claimed.keeping(outcome):
            fresh = _embed(work, outcome, claimed)
        lost = claimed.lost(outcome)
        by_store: dict[int, list[tuple[RecallMemory, RecallIndex, list[Passage], list[Message]]]] = {}
        for recall, index, pairs in work:
            if recall.key not in outcome.failed and recall.key not in lost:
                entries = index.entries(recall.user_id, _worded(pairs), fresh)
                by_store.setdefault(id(index.store), []).append((recall, index, entries, _bare(pairs)))
        for group in by_store.values():
            try:
                entries = [p for _, _, written, _ in group for p in written]
                _write(group[0][1].store, entries, [m for _, _, _, bare in group for m in bare])
            except MemGPTError as exc:
                _failed(outcome, [recall for recall, _, _, _ in group], exc)
                continue
            by_messages: dict[int, list[tuple[RecallMemory, dict[str, str]]]] = {}
            for recall, _, written, bare in group:
                done = {i: read[i] for i in [p.id for p in written] + [m.id for m in bare]}
                by_messages.setdefault(id(recall._messages), []).append((recall, done))
            for marks in by_messages.values():  # one statement for the agents of one database
                try:
                    marks[0][0]._messages.mark_indexed_as_read({r.agent_id: done for r, done in marks})
                except MemGPTError as exc:
                    _failed(outcome, [recall for recall, _ in marks], exc)
                else:
                    _indexing_again()
        for _, index, pairs in work:
            index.remember(pairs, fresh)
    outcome.elsewhere = set(claimed.elsewhere)
    if claimed.elsewhere and not work:  # they go round again: once the other process's pass is likely over
        time.sleep(_ELSEWHERE_PAUSE)
    return outcome


def _unindexed(
    recalls: Sequence[RecallMemory],
    limit: int,
    outcome: Outcome,
    held: ExitStack,
    claimed: _Claimed,
    read: dict[str, str],
) -> list[tuple[RecallMemory, RecallIndex, list[tuple[Message, Message | None]]]]:
    """The pass's messages: up to ``limit`` unindexed ones over ``recalls`` in order, read in one call per
    database (a transaction per agent), each agent's under its writing lock and, where other processes index
    it too, its claim (both held until the pass ends). Agents left with none are finished; those the limit did
    not reach, and those another process's pass holds (``claimed.elsewhere``), go round again."""
    by_messages: dict[int, list[tuple[RecallMemory, RecallIndex]]] = {}
    for recall in recalls:
        if recall._index is None:  # nothing to index for it
            outcome.finished.add(recall.key)
        else:
            by_messages.setdefault(id(recall._messages), []).append((recall, recall._index))
    work: list[tuple[RecallMemory, RecallIndex, list[tuple[Message, Message | None]]]] = []
    for group in by_messages.values():
        if limit <= 0:
            break
        for recall, _ in group:
            held.enter_context(recall.writing)
        group = _claimed(group, outcome, held, claimed)
        if not group:
            continue
        try:
            found = group[0][0]._messages.unindexed_of([recall.agent_id for recall, _ in group], limit, read)
        except MemGPTError as exc:
            _failed(outcome, [recall for recall, _ in group], exc)
            continue
        for recall, index in group:
            pairs = found.get(recall.agent_id)
            if pairs is None:  # the limit did not reach it
                continue
            if len(pairs) < limit:
                outcome.finished.add(recall.key)
            limit -= len(pairs)
            if pairs:
                work.append((recall, index, pairs))
    return work


@dataclass
class _Claimed:
    """A pass's claims (``_claimed``): the agents each claim owner holds where other processes index them too,
    when it last took or renewed them (``time.monotonic``), the agents another process's pass held, and those
    whose claim the pass lost (at any renewal: ``gone``)."""

    owners: dict[str, tuple[IndexClaims, list[RecallMemory]]] = field(default_factory=dict)
    renewed: dict[str, float] = field(default_factory=dict)
    elsewhere: set[Hashable] = field(default_factory=set)
    gone: set[Hashable] = field(default_factory=set)
    # Held by whoever renews: the pass between parts, or ``keeping``'s thread while a part is embedded.
    guard: threading.RLock = field(default_factory=threading.RLock)

    @contextmanager
    def keeping(self, outcome: Outcome) -> Iterator[None]:
        """While the pass embeds: renew its claims from a thread of their own when due, so a part far slower than
        the one before (a busy machine: the embedding thread starved for longer than a claim) does not lose them
        to another process's pass, which would embed the same messages again. A stopped process renews nothing
        (its thread stops too): its claims expire as before."""
        seconds = self.seconds
        if seconds is None:
            yield
            return
        done = threading.Event()

        def renew() -> None:
            while not done.wait(seconds * _PART_SHARE):
                self._renew(list(self.owners), outcome)

        thread = threading.Thread(target=renew, name="recall claims", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    @property
    def seconds(self) -> float | None:
        """How long the shortest of the pass's claims lasts (None: it holds none)."""
        return min((claims.seconds for claims, _ in self.owners.values()), default=None)

    def kept(self, outcome: Outcome) -> set[Hashable]:
        """Between parts of the pass's embedding: renew the claims once ``_PART_SHARE`` of their length went by
        since they last were; returns the agents lost meanwhile (``lost``)."""
        with self.guard:
            now = time.monotonic()
            due = [o for o, (claims, _) in self.owners.items() if now - self.renewed[o] >= claims.seconds * _PART_SHARE]
            return self._renew(due, outcome)

    def lost(self, outcome: Outcome) -> set[Hashable]:
        """Renew the claims before the pass writes; returns the agents no longer held (their claim expired and
        another pass took it), whether lost now or between parts of the embedding: not written, not finished,
        they go round again. One not renewed is failed."""
        self._renew(list(self.owners), outcome)
        return set(self.gone)

    def _renew(self, owners: list[str], outcome: Outcome) -> set[Hashable]:
        with self.guard:
            return self._renew_held(owners, outcome)

    def _renew_held(self, owners: list[str], outcome: Outcome) -> set[Hashable]:
        lost: set[Hashable] = set()
        for owner in owners:
            claims, recalls = self.owners[owner]
            try:
                held = claims.renew([recall.agent_id for recall in recalls], owner, claims.seconds)
            except MemGPTError as exc:
                _failed(outcome, recalls, exc)
                self.owners[owner] = (claims, [])
                continue
            self.renewed[owner] = time.monotonic()
            lost.update(recall.key for recall in recalls if recall.agent_id not in held)
            self.owners[owner] = (claims, [recall for recall in recalls if recall.agent_id in held])
        outcome.finished.difference_update(lost)
        self.elsewhere.update(lost)
        self.gone.update(lost)
        return lost


def _claimed(
    group: list[tuple[RecallMemory, RecallIndex]], outcome: Outcome, held: ExitStack, claimed: _Claimed
) -> list[tuple[RecallMemory, RecallIndex]]:
    """Those of ``group`` (agents of one database) this pass may index: the ones only this process indexes, and
    the others once claimed (given back as the pass ends). One that cannot be claimed is failed."""
    shared = [recall for recall, _ in group if recall._claims is not None]
    claims = shared[0]._claims if shared else None
    if claims is None:
        return group
    owner = new_owner()
    try:
        mine = claims.claim([recall.agent_id for recall in shared], owner, claims.seconds)
    except MemGPTError as exc:
        _failed(outcome, shared, exc)
        return [(recall, index) for recall, index in group if recall._claims is None]
    held.callback(_give_back, claims, mine, owner)
    claimed.elsewhere.update(recall.key for recall in shared if recall.agent_id not in mine)
    claimed.owners[owner] = (claims, [recall for recall in shared if recall.agent_id in mine])
    claimed.renewed[owner] = time.monotonic()
    return [(recall, index) for recall, index in group if recall._claims is None or recall.agent_id in mine]


def _give_back(claims: IndexClaims, agent_ids: set[str], owner: str) -> None:
    try:
        claims.release(agent_ids, owner)
    except MemGPTError as exc:  # they expire
        logger.warning("cannot give back the recall indexing claims of %d agents (%s)", len(agent_ids), exc)


def _embed(
    work: Sequence[tuple[RecallMemory, RecallIndex, list[tuple[Message, Message | None]]]],
    outcome: Outcome,
    claimed: _Claimed,
) -> dict[str, Vector]:
    """The own embeddings of every message ``work`` needs and no index has cached, one call per model (in parts,
    where the pass holds claims: ``_in_parts``)."""
    by_model: dict[int, tuple[RecallIndex, list[RecallMemory], dict[str, Message]]] = {}
    for recall, index, pairs in work:
        _, recalls, missing = by_model.setdefault(id(index.model), (index, [], {}))
        recalls.append(recall)
        missing.update({m.id: m for m in index.uncached(_worded(pairs))})
    fresh: dict[str, Vector] = {}
    for index, recalls, missing in by_model.values():
        try:
            if claimed.seconds is None:
                fresh.update(zip(missing, _embedded(index.model, list(missing.values())), strict=True))
            else:
                fresh.update(_in_parts(index.model, recalls, list(missing.values()), claimed, outcome))
        except MemGPTError as exc:
            with claimed.guard:  # ``keeping``'s thread may fail some too
                _failed(outcome, recalls, exc)
    return fresh


def _in_parts(
    model: EmbeddingModel, recalls: Sequence[RecallMemory], messages: list[Message], claimed: _Claimed, outcome: Outcome
) -> dict[str, Vector]:
    """The own embeddings of ``messages`` (of ``recalls``' agents), in parts each sized to take ``_PART_SHARE`` of
    the pass's claims at the pace of the part before, with the claims renewed between parts when due; the messages
    of an agent whose claim was lost meanwhile (or could not be renewed) are not embedded."""
    budget = (claimed.seconds or 0.0) * _PART_SHARE
    fresh: dict[str, Vector] = {}
    size, left = _FIRST_PART, messages
    while left:
        part, left = left[:size], left[size:]
        started = time.monotonic()
        fresh.update(zip([m.id for m in part], _embedded(model, part), strict=True))
        took = time.monotonic() - started
        if left:
            with claimed.guard:  # those ``keeping``'s thread found lost too
                dropped = claimed.kept(outcome) | claimed.gone | set(outcome.failed)
            gone = {recall.agent_id for recall in recalls if recall.key in dropped}
            left = [m for m in left if m.agent_id not in gone]
            size = max(1, int(budget * len(part) / took)) if took > 0 else len(left)
    return fresh


# The class of the error recall indexing fails with (Milvus or the embedding model away), None while it works: its
# warning is logged once an outage, at its first failure, not at every turn's pass, and again when the error's class
# changes (Milvus back, the embedding model away now); and once when a pass writes again.
_outage: type[MemGPTError] | None = None
_outage_lock = threading.Lock()


def _failed(outcome: Outcome, recalls: Sequence[RecallMemory], exc: MemGPTError) -> None:
    global _outage
    with _outage_lock:
        first, _outage = _outage is not type(exc), type(exc)
    if first:
        logger.warning(
            "recall messages not indexed yet (%s); word search still finds them, and they are indexed once this "
            "passes (said once until then, or until it fails otherwise)", exc,
        )  # fmt: skip
    else:
        logger.debug("recall messages not indexed yet (%s)", exc)
    for recall in recalls:
        outcome.failed.add(recall.key)
        outcome.finished.discard(recall.key)


def _indexing_again() -> None:
    """A pass wrote its entries and marked its messages: an outage ``_failed`` logged is over."""
    global _outage
    if _outage is None:  # (the usual case, without the lock)
        return
    with _outage_lock:
        was, _outage = _outage, None
    if was is not None:
        logger.warning("recall indexing works again: the messages left unindexed are being indexed")


_recents: weakref.WeakKeyDictionary[EmbeddingModel, OrderedDict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_recent_lock = threading.Lock()
_locks: dict[Hashable, threading.RLock] = {}
_locks_guard = threading.Lock()
_indexer: Batcher[RecallMemory] | None = None


def _writing_lock(key: Hashable) -> threading.RLock:
    """The one writing lock of an agent's messages in this process."""
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


def writing(storage: Storage, agent_id: str) -> threading.RLock:
    """The writing lock of an agent's messages (``RecallMemory.writing``) without opening the agent: held, no
    indexing pass of this process is half done for it (one that starts after sees what was changed)."""
    return _writing_lock((id(storage.messages), agent_id))


def indexer() -> Batcher[RecallMemory]:
    """The process's recall indexer: one thread that indexes what every open agent's steps asked for, in
    passes of up to ``_INDEX_BATCH`` messages across agents."""
    global _indexer
    with _locks_guard:
        if _indexer is None:
            _indexer = Batcher(index_pass, lambda recall: recall.key, "recall indexing", gather=_GATHER)
        return _indexer


def settle_indexing(timeout: float = 10.0) -> bool:
    """Let this process's recall indexer finish what it was asked for (up to ``timeout`` seconds), before the
    storage it writes closes; what is left is indexed when its agents are opened again."""
    with _locks_guard:
        running = _indexer
    return running.settle(timeout) if running is not None else True


def _forget_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own indexer, with fresh locks."""
    global _indexer, _locks_guard, _recent_lock
    _indexer, _locks_guard, _recent_lock = None, threading.Lock(), threading.Lock()
    _locks.clear()


os.register_at_fork(after_in_child=_forget_in_child)
