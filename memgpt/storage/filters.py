"""The only place Milvus filter expressions are built.

Field names are checked against the passage schema and every value is escaped, so a value can never
widen a filter. Values should be internal ids: user-facing names are resolved in SQL first (Milvus
Lite 2.5 cannot even match a newline inside a string literal).

Each filter comes in two forms. ``expr`` compares the string fields themselves and is exact: queries,
counts and deletes use it. ``keyed`` compares 64-bit keys of the fields searches filter on (user,
kind, agent, source) -- on a Milvus server, comparing 1M strings per search costs more than the
vector search itself (measured in bench/: 12.3 ms vs 8.4 ms p50 at 1M). A key is a BLAKE2b digest,
so a collision takes ~2^64 tries to craft; still, search hits are re-checked against the exact
predicate (``matches``) before anyone sees them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

STRING_FIELDS = frozenset({"id", "kind", "source_id", "document_id", "agent_id", "user_id"})
INT_FIELDS = frozenset({"chunk_index", "created_at"})
KEYED_FIELDS = {"user_id": "user_key", "kind": "kind_key", "agent_id": "agent_key", "source_id": "source_key"}

Predicate = Callable[[Mapping[str, Any]], bool]


def key_of(value: str) -> int:
    """The signed 64-bit key stored beside a keyed string field."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def _always(_: Mapping[str, Any]) -> bool:
    return True


def _never(_: Mapping[str, Any]) -> bool:
    return False


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f]")  # below 32 but the tab


def quote(value: str) -> str:
    """A Milvus string literal for ``value``."""
    if not isinstance(value, str):
        raise TypeError(f"filter value must be str, got {type(value).__name__}")
    if _CONTROL.search(value):  # a regular expression: recall indexing quotes every message id of a pass (~5x faster)
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
    keyed: str  # the same condition on key fields where it can be; see the module docstring
    matches: Predicate = dataclass_field(compare=False, repr=False)

    def __and__(self, other: Filter) -> Filter:
        return _combine("and", self, other)

    def __or__(self, other: Filter) -> Filter:
        return _combine("or", self, other)

    def __str__(self) -> str:
        return self.expr


MATCH_ALL = Filter("", "", _always)


def _combine(op: str, left: Filter, right: Filter) -> Filter:
    if not left.expr:
        return right
    if not right.expr:
        return left
    lm, rm = left.matches, right.matches
    return Filter(
        f"({left.expr}) {op} ({right.expr})",
        f"({left.keyed}) {op} ({right.keyed})",
        (lambda e: lm(e) and rm(e)) if op == "and" else (lambda e: lm(e) or rm(e)),
    )


def eq(field: str, value: str | int) -> Filter:
    if isinstance(value, str):
        expr = f"{_check_field(field, STRING_FIELDS)} == {quote(value)}"
        keyed = f"{KEYED_FIELDS[field]} == {key_of(value)}" if field in KEYED_FIELDS else expr
        return Filter(expr, keyed, lambda e: e.get(field) == value)
    expr = f"{_check_field(field, INT_FIELDS)} == {_int(value)}"
    return Filter(expr, expr, lambda e: e.get(field) == value)


def _values(field: str, values: Iterable[str]) -> tuple[str, list[str]]:
    items = list(values)
    for item in items:
        quote(item)  # type and control-character checks, before any form is built
    return _check_field(field, STRING_FIELDS), items


def _list(items: list[str]) -> str:
    return "[" + ", ".join(quote(v) for v in items) + "]"


def _keys(items: list[str]) -> str:
    return "[" + ", ".join(str(key_of(v)) for v in items) + "]"


def is_in(field: str, values: Iterable[str]) -> Filter:
    """``field in [...]``; an empty list matches nothing."""
    field, items = _values(field, values)
    if not items:
        nothing = f'{field} == "" and {field} != ""'
        return Filter(nothing, nothing, _never)
    expr = f"{field} in {_list(items)}"
    keyed = f"{KEYED_FIELDS[field]} in {_keys(items)}" if field in KEYED_FIELDS else expr
    allowed = frozenset(items)
    return Filter(expr, keyed, lambda e: e.get(field) in allowed)


def not_in(field: str, values: Iterable[str]) -> Filter:
    """``field not in [...]``; an empty list matches everything."""
    field, items = _values(field, values)
    if not items:
        return MATCH_ALL
    expr = f"{field} not in {_list(items)}"
    keyed = f"{KEYED_FIELDS[field]} not in {_keys(items)}" if field in KEYED_FIELDS else expr
    excluded = frozenset(items)
    return Filter(expr, keyed, lambda e: e.get(field) not in excluded)


def between(field: str, start: int | None = None, end: int | None = None) -> Filter:
    """Inclusive range on an integer field; either bound may be open."""
    _check_field(field, INT_FIELDS)
    parts = []
    if start is not None:
        parts.append(f"{field} >= {_int(start)}")
    if end is not None:
        parts.append(f"{field} <= {_int(end)}")
    expr = " and ".join(parts)
    low = start if start is not None else -(2**63)
    high = end if end is not None else 2**63 - 1
    return Filter(expr, expr, lambda e: low <= int(e.get(field, low - 1)) <= high) if expr else MATCH_ALL


_METADATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def meta_eq(key: str, value: str) -> Filter:
    """``metadata[key] == value``: a string stored under ``key`` in the passage's JSON metadata."""
    if not _METADATA_KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a metadata key (letters, digits and _ only)")
    expr = f'metadata["{key}"] == {quote(value)}'

    def matches(entity: Mapping[str, Any]) -> bool:
        metadata = entity.get("metadata")
        return isinstance(metadata, Mapping) and metadata.get(key) == value

    return Filter(expr, expr, matches)


def tagged(tags: Iterable[str], *, every: bool = False) -> Filter:
    """Passages whose ``metadata["tags"]`` list holds any of ``tags`` (all of them when ``every``); no tags
    match everything."""
    items = list(dict.fromkeys(tags))
    for item in items:
        quote(item)
    if not items:
        return MATCH_ALL
    expr = f'{"json_contains_all" if every else "json_contains_any"}(metadata["tags"], {_list(items)})'
    wanted = frozenset(items)

    def matches(entity: Mapping[str, Any]) -> bool:
        have = (entity.get("metadata") or {}).get("tags") or []
        held = frozenset(t for t in have if isinstance(t, str)) if isinstance(have, list) else frozenset()
        return wanted <= held if every else bool(wanted & held)

    return Filter(expr, expr, matches)


def all_of(*filters: Filter) -> Filter:
    result = MATCH_ALL
    for item in filters:
        result = result & item
    return result
