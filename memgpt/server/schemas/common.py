"""Shapes several resources share (Letta's names): the LLM an agent runs on, an embedding space, a tool.

Agents, folders and agent files all describe their embedding space as an ``EmbeddingConfig`` and an
agent's model as an ``LlmConfig``; both are built from our own records and the server's config here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memgpt.config import EmbeddingSettings
from memgpt.types import EmbeddingSpace, Source

# Our LLM providers as Letta's ``model_endpoint_type`` enum names them (every other one speaks OpenAI's API).
LLM_ENDPOINT_TYPES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure",
    "ollama": "ollama",
    "vllm": "vllm",
    "lmstudio": "lmstudio",
    "llamacpp": "llamacpp",
    "groq": "groq",
    "openrouter": "openrouter",
}
LOCAL_EMBEDDING_PROVIDER = "local"
LOCAL_EMBEDDING_TYPE = "hugging-face"  # Letta's endpoint type for a model run in-process
# The largest whole number a request may carry where it is stored: an INTEGER column (32 bits on PostgreSQL).
INT_MAX = 2**31 - 1
_TOOL_IDS = uuid.UUID("6d656d67-7074-4000-8000-746f6f6c7321")  # namespace of the stable ids of tools


class LlmConfig(BaseModel):
    """Which LLM an agent runs on. ``handle`` is ``provider/model``, what ``agents.create(model=...)`` takes."""

    model: str
    model_endpoint_type: str = Field(description="Letta's name of the API family, e.g. openai, anthropic, ollama")
    context_window: int
    model_endpoint: str | None = None
    handle: str | None = None
    provider_name: str | None = None
    put_inner_thoughts_in_kwargs: bool = False

    @classmethod
    def of(cls, *, provider: str, model: str, context_window: int, endpoint: str = "") -> LlmConfig:
        return cls(
            model=model,
            model_endpoint_type=LLM_ENDPOINT_TYPES.get(provider, "openai"),
            context_window=context_window,
            model_endpoint=endpoint or None,
            handle=f"{provider}/{model}" if provider else model,
            provider_name=provider or None,
        )


class EmbeddingConfig(BaseModel):
    """An embedding space as Letta describes it. ``handle`` is ``provider/model`` (``local/all-MiniLM-L6-v2``
    for the built-in offline model)."""

    embedding_endpoint_type: str = Field(description="openai, or hugging-face for the built-in local model")
    embedding_model: str
    embedding_dim: int
    embedding_endpoint: str | None = None
    embedding_chunk_size: int | None = None
    batch_size: int | None = None
    handle: str | None = None

    @classmethod
    def of(cls, space: EmbeddingSpace, settings: EmbeddingSettings) -> EmbeddingConfig:
        """``space`` described with what the server's config says of its model (when it is that model)."""
        configured = space == configured_space(settings)
        provider = settings.provider if configured else _provider_of(space.model)
        return cls(
            embedding_endpoint_type=LOCAL_EMBEDDING_TYPE if provider == LOCAL_EMBEDDING_PROVIDER else "openai",
            embedding_model=space.model,
            embedding_dim=space.dimensions,
            embedding_endpoint=(settings.endpoint or None) if configured and provider != "local" else None,
            embedding_chunk_size=settings.chunk_size if configured else None,
            batch_size=(settings.batch_size or None) if configured else None,
            handle=f"{provider}/{space.model}",
        )


def configured_space(settings: EmbeddingSettings) -> EmbeddingSpace:
    """The embedding space the settings describe (without loading the model)."""
    if settings.provider == LOCAL_EMBEDDING_PROVIDER:
        from memgpt.embeddings.local import DIMENSIONS, MODEL_ID

        return EmbeddingSpace(MODEL_ID, DIMENSIONS)
    return EmbeddingSpace(settings.model, settings.dimensions)


def _provider_of(model: str) -> str:
    from memgpt.embeddings.local import MODEL_ID

    return LOCAL_EMBEDDING_PROVIDER if model == MODEL_ID else "openai"


def tool_id(name: str) -> str:
    """A tool's id, the same in every process and release: tools are known by name."""
    return f"tool-{uuid.uuid5(_TOOL_IDS, name)}"


class ToolOut(BaseModel):
    """A function an agent may call (Letta's ``Tool``). MemGPT's own are ``letta_core``; a user's are ``custom``."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str
    description: str | None = None
    tool_type: str = "custom"
    source_type: str = "python"
    json_schema: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    return_char_limit: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, serialization_alias="metadata_")

    @classmethod
    def of(cls, name: str, description: str, parameters: dict[str, Any], *, builtin: bool) -> ToolOut:
        kind = "letta_core" if builtin else "custom"
        return cls(
            id=tool_id(name),
            name=name,
            description=description,
            tool_type=kind,
            json_schema={"name": name, "description": description, "parameters": parameters},
            tags=[kind],
        )


class SourceOut(BaseModel):
    """A source (Letta calls it a folder; ``agents.folders.list`` and ``AgentState.sources`` show these)."""

    id: str
    name: str
    embedding_config: EmbeddingConfig
    description: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    vector_db_provider: str = "native"

    @classmethod
    def of(cls, source: Source, settings: EmbeddingSettings) -> SourceOut:
        return cls(
            id=source.id,
            name=source.name,
            embedding_config=EmbeddingConfig.of(source.space, settings),
            description=source.description or None,
            instructions=source.instructions or None,
            metadata=source.metadata,
            created_at=source.created_at,
            updated_at=source.created_at,
        )
