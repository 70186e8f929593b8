"""Embeddings from OpenAI or any OpenAI-compatible endpoint (Ollama, vLLM, LM Studio, llama.cpp)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from memgpt.embeddings.base import EmbeddingModel, Vector
from memgpt.errors import ConfigError, EmbeddingError
from memgpt.tokens import encoding_for_model

# Input limits of OpenAI's embedding models, in cl100k tokens.
_OPENAI_LIMIT = 8191
# Vector sizes of OpenAI's embedding models, so configuring one needs no network call.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_TOKEN_MARGIN = 0.9  # other servers' tokenizers differ from cl100k; stay clear of their limit


class OpenAIEmbeddings(EmbeddingModel):
    """``POST /embeddings`` on an OpenAI-compatible server, with the SDK's retry and backoff."""

    def __init__(
        self,
        model: str,
        *,
        dimensions: int,
        endpoint: str = "",
        api_key: str = "",
        max_tokens: int = 0,
        batch_size: int = 0,
    ) -> None:
        self.model_id = model
        self.dimensions = dimensions
        self.endpoint = endpoint.rstrip("/") or None
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        if not self._api_key and self.endpoint is None:
            raise ConfigError("OpenAI embeddings need an API key: set OPENAI_API_KEY or run `memgpt configure`")
        limit = max_tokens or _OPENAI_LIMIT
        self.max_input_tokens = limit if self.endpoint is None else int(limit * _TOKEN_MARGIN)
        self.batch_size = batch_size or 128
        self._encoding = encoding_for_model(model)
        self._client: Any = None

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                api_key=self._api_key or "not-needed", base_url=self.endpoint, timeout=60, max_retries=4
            )
        return self._client

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        import openai

        if not texts:
            return []
        options: dict[str, Any] = {}
        if self.model_id.startswith("text-embedding-3"):
            options["dimensions"] = self.dimensions
        try:
            response = self._openai().embeddings.create(model=self.model_id, input=list(texts), **options)
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            detail = body.get("message") or exc.message
            raise EmbeddingError(
                f"embedding endpoint {self.endpoint or 'api.openai.com'} answered {exc.status_code}: "
                f"{_first_line(str(detail))}"
            ) from exc
        except openai.APIError as exc:
            where = self.endpoint or "api.openai.com"
            raise EmbeddingError(f"embedding endpoint {where} failed: {_first_line(str(exc))}") from exc
        ordered = sorted(response.data, key=lambda item: item.index)
        return [list(item.embedding) for item in ordered]

    def count_tokens(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else "no details"
