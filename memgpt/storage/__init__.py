"""Where the bytes go: metadata in SQL, passages in Milvus, opened together from the config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from memgpt.config import Config
from memgpt.types import EmbeddingSpace

if TYPE_CHECKING:
    from memgpt.storage.base import PassageStore
    from memgpt.storage.milvus import MilvusConnection
    from memgpt.storage.sql import MetadataStore


class Storage:
    """Both stores of one memgpt home. Milvus is connected on first use: listing sources
    needs only SQL, and opening Milvus Lite costs most of a second and takes its file lock."""

    def __init__(self, config: Config, home: Path) -> None:
        from memgpt.storage.sql import MetadataStore

        self.user_id = config.user_id
        self.metadata: MetadataStore = MetadataStore(config.metadata_database_url(home))
        self._milvus_uri = config.milvus_uri(home)
        self._milvus_token = config.milvus.token
        self._milvus_database = config.milvus.database
        self._vectors: MilvusConnection | None = None

    @property
    def vectors(self) -> MilvusConnection:
        if self._vectors is None:
            from memgpt.storage.milvus import MilvusConnection, MilvusTarget

            self._vectors = MilvusConnection(MilvusTarget(self._milvus_uri, self._milvus_token, self._milvus_database))
        return self._vectors

    def passages(self, space: EmbeddingSpace) -> PassageStore:
        return self.vectors.passages(space)

    def close(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
            self._vectors = None
        self.metadata.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
