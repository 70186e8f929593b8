"""The only place Milvus filter expressions are built.

Field names are checked against the passage schema and every value is escaped, so a value can never
widen a filter. Values should be internal ids: user-facing names are resolved in SQL first (Milvus
Lite 2.5 cannot even match a newline inside a string literal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

STRING_FIELDS = frozenset({"id", "kind", "source_id", "document_id", "agent_id", "user_id"})
INT_FIELDS = frozenset({"chunk_index", "created_at"})


def quote(value: str) -> str:
    """A Milvus string literal for ``value``."""
    if not isinstance(value, str):
        raise TypeError(f"filter value must be str, got {type(value).__name__}")
    if any(ord(ch) < 32 and ch != "\t" for ch in value):
        raise ValueError("filter values cannot contain control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_field(name: str, allowed: frozenset[str]) -> str:
    if name not in allowed:
        raise ValueError(f"{name!r} is not a filterable field of this kind")
    return name


def _int(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected int, got {type(value).__name__}")
    return str(value)


@dataclass(frozen=True)
class Filter:
    """An immutable, already-safe boolean expression. Combine with ``&`` and ``|``."""

    expr: str

    def __and__(self, other: Filter) -> Filter:
        return _combine("and", self, other)

    def __or__(self, other: Filter) -> Filter:
        return _combine("or", self, other)

    def __str__(self) -> str:
        return self.expr


MATCH_ALL = Filter("")


def _combine(op: str, left: Filter, right: Filter) -> Filter:
    if not left.expr:
        return right
    if not right.expr:
        return left
    return Filter(f"({left.expr}) {op} ({right.expr})")


def eq(field: str, value: str | int) -> Filter:
    if isinstance(value, str):
        return Filter(f"{_check_field(field, STRING_FIELDS)} == {quote(value)}")
    return Filter(f"{_check_field(field, INT_FIELDS)} == {_int(value)}")


def _values(field: str, values: Iterable[str]) -> tuple[str, list[str]]:
    items = list(values)
    return _check_field(field, STRING_FIELDS), items


def _list(items: list[str]) -> str:
    return "[" + ", ".join(quote(v) for v in items) + "]"


def is_in(field: str, values: Iterable[str]) -> Filter:
    """``field in [...]``; an empty list matches nothing."""
    field, items = _values(field, values)
    return Filter(f"{field} in {_list(items)}" if items else f'{field} == "" and {field} != ""')


def not_in(field: str, values: Iterable[str]) -> Filter:
    """``field not in [...]``; an empty list matches everything."""
    field, items = _values(field, values)
    return Filter(f"{field} not in {_list(items)}") if items else MATCH_ALL


def between(field: str, start: int | None = None, end: int | None = None) -> Filter:
    """Inclusive range on an integer field; either bound may be open."""
    _check_field(field, INT_FIELDS)
    parts = []
    if start is not None:
        parts.append(f"{field} >= {_int(start)}")
    if end is not None:
        parts.append(f"{field} <= {_int(end)}")
    return Filter(" and ".join(parts))


def all_of(*filters: Filter) -> Filter:
    result = MATCH_ALL
    for item in filters:
        result = result & item
    return result
