"""How conversation_search is scoped, what its query's words are, and how each result is shown.

A result is a matching message with the message just before it (often the question it answers) and
just after it (often the answer to it), so a short reply that matched by its context arrives with that
context and a matching question arrives with its answer. Neighbours are cut to keep a page small.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from memgpt.errors import ToolError
from memgpt.memory.messages import describe
from memgpt.memory.paging import ranking_note as ranked_by
from memgpt.storage.filters import MATCH_ALL, Filter, all_of, between, meta_eq
from memgpt.types import Message, Role, SearchHit

_MATCH_CHARS = 1_000  # of the matching message shown
_NEIGHBOUR_CHARS = 300  # of each message shown around it
_ORDINAL = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)\b", re.IGNORECASE)
_ISO_DAY = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")


def parse_date(value: str, *, end: bool) -> datetime:
    """YYYY-MM-DD (the whole day) or an ISO timestamp; naive times are UTC."""
    try:
        if len(value.strip()) == 10:
            day = datetime.strptime(value.strip(), "%Y-%m-%d").date()
            moment = datetime.combine(day, time.max if end else time.min)
            return moment.replace(tzinfo=UTC)
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ToolError(f"{value!r} is not a date: use YYYY-MM-DD, e.g. 2024-01-31") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Scope:
    """Which messages a search may return: between two moments (inclusive), of one role."""

    start: datetime | None = None
    end: datetime | None = None
    role: Role | None = None

    @classmethod
    def of(cls, start_date: str = "", end_date: str = "", role: str = "") -> Scope:
        """From the tool's arguments (empty means unbounded / both roles); bad values raise ToolError."""
        start = parse_date(start_date, end=False) if start_date.strip() else None
        end = parse_date(end_date, end=True) if end_date.strip() else None
        if start is not None and end is not None and end < start:
            raise ToolError("end_date is before start_date")
        wanted = role.strip().lower()
        if wanted not in ("", "user", "assistant"):
            raise ToolError(f"role must be 'user' or 'assistant' (or empty for both), not {role!r}")
        return cls(start, end, Role(wanted) if wanted else None)

    def where(self) -> Filter:
        """Dates and role as a Milvus filter: applied before ranking, so a page is never cut short."""
        role = meta_eq("role", self.role.value) if self.role is not None else MATCH_ALL
        if self.start is None and self.end is None:
            return role
        return all_of(between("created_at", _millis(self.start), _millis(self.end)), role)

    def describe(self) -> str:
        parts = []
        if self.role is not None:
            parts.append(f"only {self.role.value} messages")
        if self.start is not None or self.end is not None:
            start = f"{self.start:%Y-%m-%d}" if self.start else "the start"
            end = f"{self.end:%Y-%m-%d}" if self.end else "now"
            parts.append(f"only from {start} to {end}")
        return f" Searched {', '.join(parts)}." if parts else ""


def _millis(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def keyword_query(query: str) -> str:
    """The query as the word search should read it: days as recall indexes them ("14th" is "14",
    "2024-03-14" is "14 March 2024"); stemming and function words are the analyzer's job."""

    def spelled(found: re.Match[str]) -> str:
        try:
            day = datetime(int(found[1]), int(found[2]), int(found[3]))
        except ValueError:
            return found[0]
        return f"{day.day} {day:%B %Y}"

    return _ORDINAL.sub(r"\1", _ISO_DAY.sub(spelled, query))


def ranking_note(hits: Sequence[SearchHit], hybrid: bool) -> str:
    """How the results were ranked, and how many of the ranked candidates (``hits``, best first: the
    search's whole candidate list, not one page) share words with the query (``paging.ranking_note``)."""
    note = ranked_by(hits, hybrid, "messages")
    if not note or not hybrid:
        return note
    return f"{note} Each result is a message that matched, with the messages just before and after it."


@dataclass(frozen=True)
class Result:
    """A matching message and the messages shown around it (oldest first)."""

    match: Message
    before: list[Message] = field(default_factory=list)
    after: list[Message] = field(default_factory=list)

    def render(self) -> str:
        lines = [_cut(describe(self.match), _MATCH_CHARS)]
        lines += [f"  before: {_cut(describe(m), _NEIGHBOUR_CHARS)}" for m in self.before]
        lines += [f"  after: {_cut(describe(m), _NEIGHBOUR_CHARS)}" for m in self.after]
        return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
