"""memgpt: stateful LLM agents with tiered memory, archival memory in Milvus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memgpt.client import create_client

__version__ = "0.1.0"
__all__ = ["create_client"]


def __getattr__(name: str) -> Any:
    # The client pulls in the server's code; `import memgpt` (and `memgpt --help`) must stay light.
    if name == "create_client":
        from memgpt.client import create_client

        return create_client
    raise AttributeError(f"module 'memgpt' has no attribute {name!r}")
