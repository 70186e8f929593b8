"""``GET /v1/models/`` and ``GET /v1/models/embedding``: the handles ``agents.create(model=..., embedding=...)``
takes, listed as Letta lists them (``client.models.list()``, ``client.models.embeddings.list()``). A server has one
LLM endpoint and one embedding model (see ``memgpt.server.models``): the LLM list is the configured model and the
other models the endpoint serves, the embedding list that one model."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from memgpt.errors import LLMError
from memgpt.server.schemas.common import LLM_ENDPOINT_TYPES, LOCAL_EMBEDDING_PROVIDER
from memgpt.server.state import CurrentUser, State

router = APIRouter(prefix="/v1/models", tags=["models"])

# Letta's ProviderType for each of memgpt's LLM providers (the OpenAI-compatible ones are "openai" to Letta).
_PROVIDER_TYPES = {
    "anthropic": "anthropic",
    "azure": "azure",
    "groq": "groq",
    "ollama": "ollama",
    "openrouter": "openrouter",
    "vllm": "vllm",
    "lmstudio": "lmstudio_openai",
}


class ModelOut(BaseModel):
    """Letta's ``Model``: an LLM an agent can run on, named by ``handle``."""

    handle: str
    name: str
    display_name: str
    model: str
    model_type: str = "llm"
    model_endpoint_type: str
    model_endpoint: str | None = None
    provider_type: str
    provider_name: str
    context_window: int = Field(description="the window an agent made with this handle gets (context_window_limit)")
    max_context_window: int


class EmbeddingModelOut(BaseModel):
    """Letta's ``EmbeddingModel``: the server's one embedding model."""

    handle: str | None
    name: str
    display_name: str
    embedding_model: str
    embedding_dim: int
    embedding_endpoint_type: str
    embedding_endpoint: str | None = None
    embedding_chunk_size: int | None = None
    model_type: str = "embedding"
    provider_type: str
    provider_name: str


@router.get("/", response_model=list[ModelOut])
@router.get("", response_model=list[ModelOut], include_in_schema=False)
def list_models(state: State, user: CurrentUser) -> list[ModelOut]:
    """The configured model first, then the others its endpoint lists; empty while the server has no LLM."""
    models = state.models()
    try:
        resolved = models.llm()
    except LLMError:
        return []
    names = dict.fromkeys([resolved.model, *models.served()])
    return [
        ModelOut(
            handle=f"{resolved.provider}/{name}",
            name=name,
            display_name=name,
            model=name,
            model_endpoint_type=LLM_ENDPOINT_TYPES.get(resolved.provider, "openai"),
            model_endpoint=resolved.endpoint or None,
            provider_type=_PROVIDER_TYPES.get(resolved.provider, "openai"),
            provider_name=resolved.provider,
            context_window=resolved.context_window,
            max_context_window=resolved.context_window,
        )
        for name in names
        if name
    ]


@router.get("/embedding", response_model=list[EmbeddingModelOut])
def list_embedding_models(state: State, user: CurrentUser) -> list[EmbeddingModelOut]:
    config = state.models().embedding_config()
    provider = state.config.embedding.provider
    return [
        EmbeddingModelOut(
            handle=config.handle,
            name=config.embedding_model,
            display_name=config.embedding_model,
            embedding_model=config.embedding_model,
            embedding_dim=config.embedding_dim,
            embedding_endpoint_type=config.embedding_endpoint_type,
            embedding_endpoint=config.embedding_endpoint,
            embedding_chunk_size=config.embedding_chunk_size,
            provider_type="hugging-face" if provider == LOCAL_EMBEDDING_PROVIDER else "openai",
            provider_name=provider,
        )
    ]
