"""Moving every passage from one Milvus to another (Milvus Lite to a server, usually).

Batched and resumable: a batch whose ids are all present at the target already is skipped, and
upserts are idempotent, so an interrupted transfer is simply run again. Counts are compared per
embedding space at the end; the caller switches the config only when they match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memgpt.storage.filters import is_in
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.types import EmbeddingSpace

_BATCH = 1000


@dataclass
class TransferReport:
    copied: int = 0
    skipped: int = 0
    counts: dict[EmbeddingSpace, tuple[int, int]] = field(default_factory=dict)  # (source count, target count)

    @property
    def complete(self) -> bool:
        return all(target >= source for source, target in self.counts.values())


class Transfer:
    """Both ends of a transfer, connected on creation (a bad target fails here) and closed together."""

    def __init__(self, source: MilvusTarget, target: MilvusTarget) -> None:
        self._source = MilvusConnection(source)
        try:
            self._target = MilvusConnection(target)
        except BaseException:
            self._source.close()
            raise

    def plan(self) -> dict[EmbeddingSpace, int]:
        """Passages to move per embedding space; opening a store also upgrades an old schema."""
        return {space: self._source.passages(space).count() for space in self._source.spaces()}

    def run(self, *, on_progress: Callable[[int], None] | None = None) -> TransferReport:
        report = TransferReport()
        for space in self._source.spaces():
            origin = self._source.passages(space)
            destination = self._target.passages(space)
            for batch in origin.iterate(batch_size=_BATCH, with_embeddings=True):
                ids = [p.id for p in batch]
                if destination.count(is_in("id", ids)) == len(ids):
                    report.skipped += len(batch)
                else:
                    destination.upsert(batch)
                    report.copied += len(batch)
                if on_progress:
                    on_progress(len(batch))
            destination.flush()
            report.counts[space] = (origin.count(), destination.count())
        return report

    def close(self) -> None:
        try:
            self._target.close()
        finally:
            self._source.close()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
