"""Embeddings from OpenAI or any OpenAI-compatible endpoint (Ollama, vLLM, LM Studio, llama.cpp)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from memgpt import httppool
from memgpt.embeddings.base import EmbeddingModel, Vector
from memgpt.errors import ConfigError, EmbeddingError
from memgpt.replytext import body_detail, one_line
from memgpt.tokens import encoding_for_model

_OPENAI_ENDPOINT = "https://api.openai.com/v1"
_RETRIED = (408, 409, 429)  # and every 5xx, as the openai SDK retried
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
    """``POST /embeddings`` on an OpenAI-compatible server over plain HTTP, with retries and backoff for
    429s, 5xx, timeouts and dropped connections (as the openai SDK did)."""

    timeout = 60.0
    max_retries = 4
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(
        self,
        model: str,
        *,
        dimensions: int,
        endpoint: str = "",
        api_key: str = "",
        max_tokens: int = 0,
        batch_size: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``headers`` go with every request (OpenAI's organization and project)."""
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
        self._headers = dict(headers or {})

    @property
    def where(self) -> str:
        return self.endpoint or "api.openai.com"

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        # base64 as the SDK asked for it: a quarter of the bytes of JSON floats and no float parsing; a
        # server that ignores it sends lists, which are read as well.
        payload: dict[str, Any] = {"model": self.model_id, "input": list(texts), "encoding_format": "base64"}
        if self.model_id.startswith("text-embedding-3"):
            payload["dimensions"] = self.dimensions
        body = json.dumps(payload, ensure_ascii=False).encode()
        key = {"authorization": f"Bearer {self._api_key or 'not-needed'}", **self._headers}
        http = httppool.client(self.endpoint or _OPENAI_ENDPOINT, key).httpx()
        for retry in range(self.max_retries + 1):
            try:
                response = http.post(
                    "/embeddings", content=body, timeout=self.timeout, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as exc:
                if retry == self.max_retries or isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
                    raise EmbeddingError(f"embedding endpoint {self.where} failed: {one_line(exc)}") from exc
                self.sleep(_pause(retry, None))
                continue
            if response.status_code == 200:
                return _vectors(response.text, len(texts), self.where)
            status = response.status_code
            if (status not in _RETRIED and status < 500) or retry == self.max_retries:
                raise EmbeddingError(
                    f"embedding endpoint {self.where} answered {response.status_code}: {body_detail(response.text)}"
                )
            self.sleep(_pause(retry, response.headers.get("retry-after")))
        raise AssertionError("unreachable")  # the loop returns or raises

    def count_tokens(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


def _pause(retry: int, retry_after: str | None) -> float:
    """Seconds before the next try: what the server asked for (when reasonable), else 0.5 s doubling to 8 s,
    with jitter."""
    try:
        asked = float(retry_after) if retry_after else 0.0
    except ValueError:
        asked = 0.0
    if 0 < asked <= 60:
        return asked
    return min(0.5 * 2**retry, 8.0) * (1 - 0.25 * random.random())


def _vectors(text: str, expected: int, where: str) -> list[Vector]:
    """The reply's vectors in input order; anything else is one clear EmbeddingError."""
    try:
        data = json.loads(text)["data"]
        ordered = sorted(data, key=lambda item: item["index"])
        vectors = [_vector(item["embedding"]) for item in ordered]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise EmbeddingError(
            f"embedding endpoint {where} sent a reply that is not a list of embeddings: {one_line(text, 200)}"
        ) from exc
    if len(vectors) != expected:
        raise EmbeddingError(f"embedding endpoint {where} sent {len(vectors)} embeddings for {expected} texts")
    return vectors


def _vector(embedding: object) -> Vector:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()
    if not isinstance(embedding, list):
        raise TypeError("not an embedding")
    return [float(x) for x in embedding]
