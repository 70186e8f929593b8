"""memgpt's Python client: ``create_client()`` works on the local home in this process,
``create_client(base_url=..., token=...)`` talks to a `memgpt server`; both have the same methods
(``memgpt.client.base.Client``) and return the same types (``memgpt.client.types``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memgpt.client.base import Client


def create_client(base_url: str | None = None, token: str | None = None, *, home: str | Path | None = None) -> Client:
    """A client of the server at ``base_url`` with the API key ``token``; without ``base_url``, one on the
    local home (``home``, else ``$MEMGPT_HOME``) as its own user, in this process."""
    if base_url is not None:
        from memgpt.client.rest import RESTClient

        return RESTClient(base_url, token)
    from memgpt.client.local import LocalClient

    return LocalClient(Path(home) if home is not None else None)
