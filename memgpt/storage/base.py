"""The passage store interface every vector backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from memgpt.storage.filters import MATCH_ALL, Filter
from memgpt.storage.fusion import Weights
from memgpt.types import Passage, SearchHit


class PassageStore(ABC):
    """Passages of one embedding space (one model, one dimension).

    Writes are idempotent upserts keyed by the passage id, so replaying a load never duplicates.
    Reads see every write that returned before them.
    """

    #: Vector dimension this store accepts; every write and query is checked against it.
    dimensions: int
    #: Capability flags, so callers never branch on the backend's name.
    supports_hybrid: bool = False
    supports_partition_key: bool = False
    #: Whether another process's writes may be missed for a moment unless a read names them (``read_after``).
    tracks_writes: bool = False
    #: Whether other processes may write the store while this one has it open (False for Milvus Lite, whose
    #: file one process opens at a time): then work this process left running cannot meet another's.
    shared: bool = True

    @property
    def search_window(self) -> int | None:
        """How deep (offset + limit) a search ranks by meaning and by words; past it the store ranks by
        meaning alone (None: no such limit)."""
        return None

    @abstractmethod
    def upsert(self, passages: Sequence[Passage]) -> None:
        """Insert or replace passages in one atomic batch. Every passage must carry an embedding."""

    def insert(self, passages: Sequence[Passage]) -> None:
        """Add passages whose ids are not stored yet. Where replacing costs a lookup of the old row
        (Milvus Lite scans for it: ~0.8 s per call at 100k passages) a backend makes this cheaper than
        ``upsert``; an id that is stored already may then be stored twice, so callers either made the id
        just now or deleted it first."""
        self.upsert(passages)

    @abstractmethod
    def delete(self, where: Filter, *, count: bool = True) -> int:
        """Delete what ``where`` matches (never everything by accident: an empty filter is refused); returns
        how many passages matched, or 0 with ``count=False`` where counting costs a query of its own."""

    @abstractmethod
    def search(
        self,
        vector: Sequence[float],
        *,
        limit: int,
        where: Filter = MATCH_ALL,
        offset: int = 0,
        text: str | None = None,
        with_text: bool = True,
        weights: Weights | None = None,
    ) -> list[SearchHit]:
        """Best passages first: by meaning, and also by the words of ``text`` where ``supports_hybrid``,
        the two fused with ``weights`` (the store's default when None; see ``memgpt.storage.fusion``).
        ``with_text=False`` leaves the hits' ``passage.text`` empty, for callers that need only ids and
        metadata (cheaper to fetch); ``with_texts`` reads them for the few that are shown."""

    @abstractmethod
    def with_texts(self, hits: Sequence[SearchHit]) -> list[SearchHit]:
        """``hits`` (from ``search(with_text=False)``) with their passages' texts read, in the same order. A
        passage removed since it was ranked is left out: there is nothing of it to show."""

    @abstractmethod
    def query(self, where: Filter, *, limit: int, offset: int = 0) -> list[Passage]:
        """Passages matching ``where`` without ranking (embeddings not returned)."""

    @abstractmethod
    def iterate(
        self, where: Filter = MATCH_ALL, *, batch_size: int = 1000, with_embeddings: bool = False
    ) -> Iterator[list[Passage]]:
        """Every matching passage, in batches, however many there are."""

    @abstractmethod
    def count(self, where: Filter = MATCH_ALL) -> int:
        """How many passages match ``where``."""

    def write_mark(self) -> int:
        """A point in the store's history at or after every write this process made (0 where every read
        sees every write already): another process's ``read_after`` of it sees them."""
        return 0

    def read_after(self, mark: int) -> None:  # noqa: B027 - optional hook, deliberately a no-op by default
        """Let this process's next searches see every write up to ``mark`` (another process's
        ``write_mark``), waiting for them where the store has not applied them yet."""

    def flush(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op by default
        """Make recent writes fast to search (Milvus Lite seals segments); a no-op by default."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (and, for Milvus Lite, the file lock)."""

    def __enter__(self) -> PassageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
