"""Ask an LLM endpoint what it serves, before memgpt relies on it (``memgpt configure`` does).

OpenAI-compatible servers list their models at ``GET /models``; several also say the context window:
vLLM (``max_model_len``), OpenRouter and Together (``context_length``), Groq (``context_window``),
llama.cpp's server (``meta.n_ctx_train`` there, and the window it actually serves at ``GET /props``)
and Ollama (``num_ctx`` in ``POST /api/show``). Anthropic lists models at ``GET /v1/models``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from memgpt.errors import LLMError
from memgpt.llm import ResolvedLLM
from memgpt.llm.anthropic import API_VERSION
from memgpt.llm.presets import PRESETS
from memgpt.llm.replies import json_body, status_error
from memgpt.replytext import body_detail, one_line

_WINDOW_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length", "max_input_tokens")
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class LLMCheck:
    """What the endpoint said. ``context_window`` is 0 when it did not say; ``served`` is empty when it
    does not list models (then ``model_listed`` is True: there is nothing to contradict)."""

    endpoint: str
    model: str  # the configured model, or the server's only one when none was configured
    served: tuple[str, ...] = ()
    model_listed: bool = True
    context_window: int = 0
    window_source: str = ""  # where the server said it, e.g. "/props n_ctx"
    any_model_name: bool = False  # the server answers with its loaded model whatever name is sent

    @property
    def problem(self) -> str:
        """Why memgpt cannot use this endpoint as configured, in one line ("" when it can)."""
        shown = ", ".join(self.served[:8]) + (", ..." if len(self.served) > 8 else "")
        if not self.model:
            return f"no model set, and {self.endpoint} serves several: {shown}"
        if self.model_listed or self.any_model_name:
            return ""
        return f"{self.endpoint} does not serve the model {self.model!r}; it serves: {shown or 'no models'}"


def check_llm(llm: ResolvedLLM, *, timeout: float = 10.0) -> LLMCheck:
    """Probe the endpoint; raises LLMError (one line) when it is down, refuses the key or is not an LLM API."""
    import httpx

    with httpx.Client(timeout=timeout) as http:
        if llm.provider == "anthropic":
            return _check_anthropic(http, llm)
        if llm.provider == "azure":  # Azure serves deployments, not a model list: nothing more to learn
            return LLMCheck(llm.endpoint, llm.model)
        return _check_openai_compatible(http, llm)


def _get(http: Any, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    import httpx

    try:
        response = http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise LLMError(f"{url} did not answer within {http.timeout.read:.0f} s") from exc
    except httpx.TransportError as exc:
        raise LLMError(f"cannot reach {url}: {one_line(exc)}") from exc
    if response.status_code != 200:
        detail = body_detail(response.text, 120)
        if response.status_code == 404:
            raise LLMError(f"{url} answered 404 ({detail}): is the endpoint the API's base URL (often ending in /v1)?")
        raise LLMError(str(status_error(response.status_code, detail, url)))
    try:
        return json_body(response.text, url)
    except LLMError as exc:
        raise LLMError(str(exc)) from None


def _root(endpoint: str) -> str:
    return endpoint[: -len("/v1")] if endpoint.endswith("/v1") else endpoint


def _listed(model: str, served: tuple[str, ...]) -> bool:
    # Ollama lists "llama3.1:latest" for "llama3.1"; Anthropic lists dated ids for its aliases.
    return not served or any(s == model or s == f"{model}:latest" or s.startswith(f"{model}-20") for s in served)


def _window(entry: dict[str, Any]) -> tuple[int, str]:
    for key in _WINDOW_KEYS:
        value = entry.get(key)
        if isinstance(value, int) and value > 0:
            return value, f"{key} in /models"
    meta = entry.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("n_ctx_train"), int) and meta["n_ctx_train"] > 0:
        return meta["n_ctx_train"], "meta.n_ctx_train in /models"
    return 0, ""


def _check_openai_compatible(http: Any, llm: ResolvedLLM) -> LLMCheck:
    headers = {"Authorization": f"Bearer {llm.api_key}"} if llm.api_key else {}
    listing = _get(http, "GET", f"{llm.endpoint}/models", headers=headers)
    entries = [e for e in listing.get("data") or [] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    if not isinstance(listing.get("data"), list):
        raise LLMError(f"{llm.endpoint}/models is not an OpenAI-compatible model list: {one_line(listing, 120)}")
    served = tuple(e["id"] for e in entries)
    model = llm.model or (served[0] if len(served) == 1 else "")
    entry = next((e for e in entries if e["id"] == model), entries[0] if len(entries) == 1 else {})
    window, source = _window(entry)
    if llm.provider == "llamacpp" or entry.get("owned_by") == "llamacpp":
        window, source = _llamacpp_window(http, llm.endpoint, window, source)
    elif llm.provider == "ollama" and model:
        window, source = _ollama_window(http, llm.endpoint, model, window, source)
    listed = _listed(model, served) if model else False
    any_name = bool(PRESETS[llm.provider].any_model_name) if llm.provider in PRESETS else False
    return LLMCheck(llm.endpoint, model, served, listed, window, source, any_name)


def _llamacpp_window(http: Any, endpoint: str, window: int, source: str) -> tuple[int, str]:
    """The window llama.cpp's server runs with (``n_ctx_train`` is only what the model was trained on)."""
    try:
        props = _get(http, "GET", f"{_root(endpoint)}/props")
    except LLMError:  # llama-cpp-python's server has no /props
        return window, source
    settings = props.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    n_ctx = n_ctx if isinstance(n_ctx, int) else props.get("n_ctx")
    return (n_ctx, "/props n_ctx") if isinstance(n_ctx, int) and n_ctx > 0 else (window, source)


def _ollama_window(http: Any, endpoint: str, model: str, window: int, source: str) -> tuple[int, str]:
    """Ollama cuts prompts at its ``num_ctx``, not at the trained length it reports; only a ``num_ctx``
    set for the model is a window memgpt can count on."""
    try:
        shown = _get(http, "POST", f"{_root(endpoint)}/api/show", json={"model": model})
    except LLMError:
        return window, source
    found = _NUM_CTX.search(str(shown.get("parameters") or ""))
    return (int(found.group(1)), "num_ctx in /api/show") if found else (window, source)


def _check_anthropic(http: Any, llm: ResolvedLLM) -> LLMCheck:
    headers = {"x-api-key": llm.api_key, "anthropic-version": API_VERSION}
    listing = _get(http, "GET", f"{llm.endpoint}/v1/models", headers=headers, params={"limit": 1000})
    entries = [e for e in listing.get("data") or [] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    served = tuple(e["id"] for e in entries)
    entry = next((e for e in entries if e["id"] == llm.model), {})
    window, source = _window(entry)
    return LLMCheck(llm.endpoint, llm.model, served, _listed(llm.model, served), window, source)

