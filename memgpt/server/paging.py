"""Letta's cursor paging over a list: ``after``/``before`` an item's id in the requested order.

letta-client iterates a page by asking again with ``after=<last id>`` until a page is empty, so paging
must be real: an unknown cursor gives ``[]`` (never the first page again, which would loop forever).
"""

from __future__ import annotations

import math
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
    place: Callable[[str], int | None] | None = None,
) -> list[T]:
    """One page of ``items`` (given oldest first). ``before`` alone pages backwards: the ``limit`` items
    just before the cursor. ``place`` tells where a cursor that is not among the items stood (how many of them
    come before it: a deleted item), or None."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [key(item) for item in ordered]
    n = len(ordered)

    def position(cursor: str) -> float | None:
        """The cursor's index in ``ordered``; halfway between two items for one that is gone."""
        if cursor in ids:
            return float(ids.index(cursor))
        at = place(cursor) if place is not None else None
        if at is None:
            return None
        return at - 0.5 if order == "asc" else n - at - 0.5

    start, end = 0, n
    if after is not None:
        if (found := position(after)) is None:
            return []
        start = math.floor(found) + 1
    if before is not None:
        if (found := position(before)) is None:
            return []
        end = math.ceil(found)
    window = ordered[start:end]
    if limit is None:
        return window
    return window[-limit:] if before is not None and after is None else window[:limit]
