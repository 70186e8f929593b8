"""Paged search results as the model sees them: "Showing 5 of 37 results (page 0 of 7)"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memgpt.types import SearchHit

PAGE_SIZE = 5
PAST_END_CHECK = 1_000  # from this offset on, a page is first checked against the count of what is searched


@dataclass(frozen=True)
class Page:
    """A page of a search whose matches can be counted. ``about``: how they were found, when the tool's own
    description would not say (recall's word search while its ranked search is unavailable)."""

    items: list[str]
    total: int
    page: int
    page_size: int = PAGE_SIZE
    about: str = ""

    @property
    def last_page(self) -> int:
        return max(0, (self.total - 1) // self.page_size)

    def render(self, what: str) -> str:
        if not self.total:
            return f"No {what} found.{' ' + self.about if self.about else ''}"
        if not self.items:
            return f"No more {what}: there are {self.total}, on pages 0 to {self.last_page}."
        header = f"Showing {len(self.items)} of {self.total} {what} (page {self.page} of {self.last_page})"
        header += f". {self.about}" if self.about else ":"
        return "\n".join([header, *self.items])


def check_page(page: int | None) -> int:
    from memgpt.errors import ToolError

    if page is None:
        return 0
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise ToolError("page must be a whole number, 0 or more")
    return page


@dataclass(frozen=True)
class RankedPage:
    """A page of a search that ranks by meaning: every message has a rank, so there is no honest "N
    results" to show. ``about`` says how the ranking was made and how many messages matched by words."""

    items: list[str]
    page: int
    more: bool  # whether the next page has results
    about: str = ""
    page_size: int = PAGE_SIZE

    def render(self, what: str) -> str:
        if not self.items:
            if self.page == 0:
                return f"No {what} found.{' ' + self.about if self.about else ''}"
            return f"No more {what}: page {self.page} is past the last one."
        first = self.page * self.page_size + 1
        last = first + len(self.items) - 1
        tail = f"more on page {self.page + 1}" if self.more else "this is the last page"
        header = f"Showing {what} {first}-{last}, best first (page {self.page}; {tail}). {self.about}".rstrip()
        return "\n".join([header, *self.items])


def ranking_note(hits: Sequence[SearchHit], hybrid: bool, what: str) -> str:
    """How a ranked search ranked, and how many of its ranked candidates (``hits``, best first: the search's
    whole candidate list, not one page) share words with the query: in a hybrid search every item in scope
    has a rank by meaning, so those are its matches by words. ``what``: the items, plural ("passages")."""
    if not hits:  # nothing in scope: there was no ranking to describe
        return ""
    if not hybrid:
        return "Ranked by meaning (this Milvus has no word search)."
    sharing = sum(1 for h in hits if h.shares_words)
    verb = "shares" if sharing == 1 else "share"
    return (
        f"Ranked by meaning and by shared words (any word form; common words ignored): {sharing} of the "
        f"{len(hits)} best-ranked {what} {verb} words with the query."
    )


def deep_ranking_note(window: int, what: str) -> str:
    """How a page past a hybrid store's ``window`` (its ``search_window``) was ranked: by meaning alone."""
    return (
        f"Ranked by meaning (this Milvus ranks by shared words only among its {window:,} best-ranked {what}; "
        "this page is past them)."
    )
