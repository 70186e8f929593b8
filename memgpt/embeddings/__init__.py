"""Embedding models: a local offline default and OpenAI-compatible endpoints."""

from __future__ import annotations

from memgpt.config import EmbeddingSettings
from memgpt.embeddings.base import EmbeddingModel, Vector

__all__ = ["EmbeddingModel", "Vector", "embedding_model"]

_loaded: dict[str, EmbeddingModel] = {}


def embedding_model(settings: EmbeddingSettings) -> EmbeddingModel:
    """The model the settings describe, created once per process."""
    key = settings.model_dump_json()
    if key not in _loaded:
        _loaded[key] = _create(settings)
    return _loaded[key]


def _create(settings: EmbeddingSettings) -> EmbeddingModel:
    if settings.provider == "local":
        from memgpt.embeddings.local import MODEL_ID, LocalMiniLM

        if settings.model != MODEL_ID:
            from memgpt.errors import ConfigError

            raise ConfigError(
                f"the local embedding provider only offers {MODEL_ID}, not {settings.model!r}; "
                "run `memgpt configure --embedding-provider local`"
            )
        return LocalMiniLM(batch_size=settings.batch_size)
    import os

    from memgpt.embeddings.openai import OpenAIEmbeddings
    from memgpt.httppool import openai_headers

    return OpenAIEmbeddings(
        settings.model,
        dimensions=settings.dimensions,
        endpoint=settings.endpoint,
        api_key=settings.api_key,
        max_tokens=settings.max_tokens,
        batch_size=settings.batch_size,
        headers=openai_headers(os.environ),
    )
