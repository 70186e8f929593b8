"""What this server can run agents on: the models of its one LLM endpoint and its one embedding space.

Letta names both by handle, ``provider/model`` (``openai/gpt-4o-mini``, ``local/all-MiniLM-L6-v2``). A server
has one LLM endpoint and one embedding model (its config's), so a handle is checked against them and an
agent stores only the model name.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from memgpt.config import Config
from memgpt.errors import ConfigError, LLMError, UserError
from memgpt.llm import ResolvedLLM, resolve_llm
from memgpt.llm.presets import PRESETS
from memgpt.server.schemas.common import EmbeddingConfig, LlmConfig, configured_space
from memgpt.types import AgentState, EmbeddingSpace

logger = logging.getLogger(__name__)
LISTING_TTL = 60.0  # seconds a model list from the LLM endpoint is trusted
PROBE_TIMEOUT = 3.0
# Handles people write for an OpenAI-compatible endpoint whatever its preset is called here.
_SAME_API = {"openai-compatible": {"openai"}, "llamacpp": {"openai"}, "vllm": {"openai"}, "lmstudio": {"openai"}}


@dataclass
class ServedModels:
    """The server's LLM and embedding choices; the LLM endpoint's model list is asked for at most once a minute."""

    config: Config
    _listing: tuple[float, tuple[str, ...] | None] = (0.0, None)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def llm(self) -> ResolvedLLM:
        """The configured LLM endpoint; LLMError (502) when the server has none: its owner must configure one."""
        try:
            return resolve_llm(self.config.llm)
        except ConfigError as exc:
            raise LLMError(f"the server's LLM is not configured ({exc})") from exc

    def llm_config(self, state: AgentState) -> LlmConfig:
        try:
            resolved = resolve_llm(self.config.llm, require_model=False)
            provider, endpoint = resolved.provider, resolved.endpoint
        except ConfigError:
            provider, endpoint = self.config.llm.provider, self.config.llm.endpoint
        return LlmConfig.of(
            provider=provider, model=state.llm_model, context_window=state.context_window, endpoint=endpoint
        )

    def embedding_space(self) -> EmbeddingSpace:
        return configured_space(self.config.embedding)

    def embedding_config(self, space: EmbeddingSpace | None = None) -> EmbeddingConfig:
        return EmbeddingConfig.of(space or self.embedding_space(), self.config.embedding)

    # -- handles ----------------------------------------------------------------------------------
    def model_for(self, handle: str) -> str:
        """The model name for ``handle`` (``provider/model`` or a bare model name) on this server's LLM;
        UserError (400) naming what this server serves otherwise."""
        handle = handle.strip()
        resolved = self.llm()
        provider, slash, model = handle.partition("/")
        if not slash or provider not in PRESETS:
            provider, model = resolved.provider, handle
        if not model:
            raise UserError(f"model {handle!r} names no model; write it as '{resolved.provider}/<model name>'")
        if provider != resolved.provider and provider not in _SAME_API.get(resolved.provider, set()):
            raise UserError(
                f"model {handle!r}: this server's LLM is {resolved.provider} at {resolved.endpoint}; "
                f"ask for '{resolved.provider}/<model>' (for example '{resolved.provider}/{resolved.model}')"
            )
        served = self._served(resolved)
        if served and model not in served and not _lenient(resolved, model, served):
            shown = ", ".join(f"{resolved.provider}/{m}" for m in served[:8]) + (", ..." if len(served) > 8 else "")
            raise UserError(f"model {handle!r}: {resolved.endpoint} does not serve {model!r}; it serves {shown}")
        return model

    def check_embedding(self, handle: str | None, config: dict[str, Any] | None) -> None:
        """Agents use the server's embedding model: a handle or config naming another is a UserError naming both."""
        space = self.embedding_space()
        mine = self.embedding_config(space)
        asked: str | None = None
        if handle is not None and handle.strip():
            provider, slash, model = handle.strip().rpartition("/")
            if model != space.model or (slash and provider != self.config.embedding.provider):
                asked = handle.strip()
        if config is not None:
            model, dims = config.get("embedding_model"), config.get("embedding_dim")
            if (model is not None and model != space.model) or (dims is not None and dims != space.dimensions):
                asked = f"{model or '?'} ({dims or '?'} dims)"
        if asked is not None:
            raise UserError(
                f"embedding {asked!r} is not this server's embedding model {mine.handle!r} ({space.dimensions} dims): "
                "agents here embed with that one; leave embedding out or ask for it"
            )

    def served(self) -> tuple[str, ...]:
        """The models the LLM endpoint lists (none when it does not say, or cannot be asked right now)."""
        return self._served(self.llm()) or ()

    def _served(self, resolved: ResolvedLLM) -> tuple[str, ...] | None:
        """The endpoint's models (None when it does not say, or cannot be asked right now)."""
        with self._guard:
            checked, served = self._listing
            if time.monotonic() - checked < LISTING_TTL:
                return served
        from memgpt.llm.probe import check_llm

        try:
            served = check_llm(resolved, timeout=PROBE_TIMEOUT).served or None
        except LLMError as exc:  # the turn will say what is wrong; an agent can still be made now
            logger.warning("cannot list the LLM endpoint's models: %s", exc)
            served = None
        with self._guard:
            self._listing = (time.monotonic(), served)
        return served


def _lenient(resolved: ResolvedLLM, model: str, served: tuple[str, ...]) -> bool:
    """Servers that answer with their one loaded model whatever the name, and Ollama's ``:latest`` tags."""
    preset = PRESETS.get(resolved.provider)
    return bool(preset and preset.any_model_name) or f"{model}:latest" in served
