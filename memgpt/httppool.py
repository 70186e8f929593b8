"""One pooled httpx client per API endpoint and key, shared by every caller in the process.

Making an ``httpx.Client`` loads the certificate store (tens of ms of CPU) and a new client opens new
connections, so the LLM and embedding adapters ask here for one per endpoint and reuse it: a server that
opens an agent for each turn still sends every request over a kept-alive connection. A forked child
starts with none (a parent's connections are no use to it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

USER_AGENT = "memgpt"
_clients: dict[tuple[str, tuple[tuple[str, str], ...]], httpx.Client] = {}
_guard = threading.Lock()


def client(base_url: str, headers: Mapping[str, str]) -> httpx.Client:
    """The process's client for ``base_url`` sending ``headers`` with every request (timeouts are given
    per request). Redirects are followed, as the openai SDK did."""
    key = (base_url, tuple(sorted(headers.items())))
    with _guard:
        made = _clients.get(key)
        if made is None:
            import httpx

            made = _clients[key] = httpx.Client(
                base_url=base_url,
                headers={"user-agent": USER_AGENT, **headers},
                follow_redirects=True,
                timeout=httpx.Timeout(120.0),
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),  # the SDK's
            )
        return made


def openai_headers(env: Mapping[str, str]) -> dict[str, str]:
    """OpenAI's organization and project, from the variables the openai SDK reads: the chat and the
    embedding requests both send them."""
    named = {"openai-organization": env.get("OPENAI_ORG_ID", ""), "openai-project": env.get("OPENAI_PROJECT_ID", "")}
    return {header: value for header, value in named.items() if value}


def _forget_in_child() -> None:
    global _guard
    _guard = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_in_child)
