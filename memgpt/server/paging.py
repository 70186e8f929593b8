"""Letta's cursor paging over a list: ``after``/``before`` an item's id in the requested order.

letta-client iterates a page by asking again with ``after=<last id>`` until a page is empty, so paging
must be real: an unknown cursor gives ``[]`` (never the first page again, which would loop forever).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

T = TypeVar("T")
Order = Literal["asc", "desc"]


def page(
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    after: str | None = None,
    before: str | None = None,
    limit: int | None = None,
    order: Order = "asc",
) -> list[T]:
    """One page of ``items`` (given oldest first). ``before`` alone pages backwards: the ``limit`` items
    just before the cursor."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [key(item) for item in ordered]
    start, end = 0, len(ordered)
    if after is not None:
        if after not in ids:
            return []
        start = ids.index(after) + 1
    if before is not None:
        if before not in ids:
            return []
        end = ids.index(before)
    window = ordered[start:end]
    if limit is None:
        return window
    return window[-limit:] if before is not None and after is None else window[:limit]
