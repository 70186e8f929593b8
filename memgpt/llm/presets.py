"""Known LLM providers: where they listen by default, which key they read, and how they behave.

Every one except Anthropic speaks the OpenAI chat-completions API.
"""

from __future__ import annotations

from dataclasses import dataclass

from memgpt.config import ToolChoicePolicy

# Small local models often answer with neither text nor a function call; ask again naming send_message.
LOCAL_TOOL_CHOICE: ToolChoicePolicy = "auto_then_send_message"


@dataclass(frozen=True)
class ProviderPreset:
    name: str
    endpoint: str
    api_key_env: str = ""  # empty: local servers need no key
    default_model: str = ""
    context_window: int = 8192
    tool_choice: ToolChoicePolicy = "auto"
    any_model_name: bool = False  # the server answers with its one loaded model whatever name is sent


PRESETS: dict[str, ProviderPreset] = {
    p.name: p
    for p in (
        ProviderPreset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o-mini", 128_000),
        ProviderPreset("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", "claude-sonnet-4-5", 200_000),
        ProviderPreset("azure", "", "AZURE_OPENAI_API_KEY", "gpt-4o-mini", 128_000),
        ProviderPreset("ollama", "http://localhost:11434/v1", "", "llama3.1", 8192, LOCAL_TOOL_CHOICE),
        ProviderPreset("vllm", "http://localhost:8000/v1", "", "", 8192, LOCAL_TOOL_CHOICE),
        ProviderPreset("lmstudio", "http://localhost:1234/v1", "", "", 8192, LOCAL_TOOL_CHOICE),
        ProviderPreset("llamacpp", "http://localhost:8080/v1", "", "", 8192, LOCAL_TOOL_CHOICE, any_model_name=True),
        ProviderPreset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "llama-3.3-70b-versatile", 128_000),
        ProviderPreset(
            "openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openai/gpt-4o-mini", 128_000
        ),
        ProviderPreset("openai-compatible", "", "OPENAI_API_KEY", "", 8192),
    )
}
