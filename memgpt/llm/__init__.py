"""LLM providers behind one interface; ``create_llm`` picks one from the settings and environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from memgpt.config import LLMSettings
from memgpt.errors import ConfigError
from memgpt.httppool import openai_headers
from memgpt.llm.base import ChatMessage, Completion, LLMClient, ToolSpec
from memgpt.llm.presets import PRESETS

__all__ = ["ChatMessage", "Completion", "LLMClient", "ResolvedLLM", "ToolSpec", "create_llm", "resolve_llm"]

NO_LLM = (
    "no LLM configured: set OPENAI_API_KEY (or ANTHROPIC_API_KEY), or point memgpt at a local server, e.g. "
    "`memgpt configure --llm-provider ollama --llm-model llama3.1` (also vllm, llamacpp, lmstudio), "
    "or set OPENAI_BASE_URL to any OpenAI-compatible endpoint"
)


@dataclass(frozen=True)
class ResolvedLLM:
    provider: str
    model: str
    endpoint: str
    api_key: str
    context_window: int
    tool_choice: str = "auto"  # the policy, one of memgpt.config.TOOL_CHOICES


def resolve_llm(
    settings: LLMSettings, env: Mapping[str, str] | None = None, *, require_model: bool = True
) -> ResolvedLLM:
    """Fill what the user did not set from the conventional environment variables, then the
    provider's preset. Anything set explicitly in the config wins. ``require_model=False`` lets the
    model stay empty (configure asks the server which one it serves)."""
    env = os.environ if env is None else env
    provider = settings.provider
    if not provider:
        if env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"):
            provider = "openai"
        elif env.get("ANTHROPIC_API_KEY"):
            provider = "anthropic"
        else:
            raise ConfigError(NO_LLM)
    preset = PRESETS.get(provider)
    if preset is None:
        raise ConfigError(f"unknown LLM provider {provider!r} in config.toml; run `memgpt configure`")
    endpoint = settings.endpoint
    if not endpoint and provider in ("openai", "openai-compatible"):
        endpoint = env.get("OPENAI_BASE_URL", "")
    endpoint = endpoint or preset.endpoint
    api_key = settings.api_key or (env.get(preset.api_key_env, "") if preset.api_key_env else "")
    hosted = provider in ("openai", "anthropic", "azure", "groq", "openrouter")
    # A hosted API at another endpoint may be a proxy that holds the key; Azure has no default endpoint and
    # always wants one (an empty api-key header would only earn a 401 later).
    if not api_key and (provider == "azure" or (hosted and endpoint == preset.endpoint)):
        raise ConfigError(NO_LLM if not settings.provider else f"{provider} needs an API key: set {preset.api_key_env}")
    if not endpoint:
        raise ConfigError(f"the {provider} provider needs an endpoint: `memgpt configure --llm-endpoint URL`")
    model = settings.model or preset.default_model
    if not model and require_model:
        raise ConfigError(f"no model set for {provider}: `memgpt configure --llm-model NAME`")
    return ResolvedLLM(
        provider,
        model,
        endpoint,
        api_key,
        settings.context_window or preset.context_window,
        settings.tool_choice or preset.tool_choice,
    )


def create_llm(
    settings: LLMSettings, *, model: str = "", context_window: int = 0, env: Mapping[str, str] | None = None
) -> LLMClient:
    resolved = resolve_llm(settings, env)
    chosen_model = model or resolved.model
    window = context_window or resolved.context_window
    # One request may use the whole budget unless the user set a shorter per-request limit.
    timeout = min(settings.attempt_timeout_seconds or settings.timeout_seconds, settings.timeout_seconds)
    client: LLMClient
    if resolved.provider == "anthropic":
        from memgpt.llm.anthropic import AnthropicClient

        client = AnthropicClient(
            model=chosen_model,
            context_window=window,
            api_key=resolved.api_key,
            endpoint=resolved.endpoint,
            timeout=timeout,
            deadline=settings.timeout_seconds,
        )
    else:
        from memgpt.llm.openai_compat import OpenAICompatible

        client = OpenAICompatible(
            model=chosen_model,
            context_window=window,
            endpoint=resolved.endpoint,
            api_key=resolved.api_key,
            timeout=timeout,
            deadline=settings.timeout_seconds,
            azure_api_version=settings.azure_api_version if resolved.provider == "azure" else "",
            headers=openai_headers(os.environ if env is None else env) if resolved.provider == "openai" else None,
        )
    if settings.function_calling == "json":
        from memgpt.llm.json_mode import JsonFunctionClient

        client = JsonFunctionClient(client)
    client.tool_choice = resolved.tool_choice
    return client
