"""Paged search results as the model sees them: "Showing 5 of 37 results (page 0 of 7)"."""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SIZE = 5


@dataclass(frozen=True)
class Page:
    items: list[str]
    total: int
    page: int
    page_size: int = PAGE_SIZE

    @property
    def last_page(self) -> int:
        return max(0, (self.total - 1) // self.page_size)

    def render(self, what: str) -> str:
        if not self.total:
            return f"No {what} found."
        if not self.items:
            return f"No more {what}: there are {self.total}, on pages 0 to {self.last_page}."
        header = f"Showing {len(self.items)} of {self.total} {what} (page {self.page} of {self.last_page}):"
        return "\n".join([header, *self.items])


def check_page(page: int | None) -> int:
    from memgpt.errors import ToolError

    if page is None:
        return 0
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise ToolError("page must be a whole number, 0 or more")
    return page
