"""Recall memory: every message ever exchanged, searchable by words and by date, paged."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from memgpt.errors import ToolError
from memgpt.memory.paging import PAGE_SIZE, Page, check_page
from memgpt.storage.agents import AgentStore
from memgpt.types import Message, Role


def describe(message: Message) -> str:
    """One line per message, with when it was said: what a person would want to find again."""
    stamp = message.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if message.role is Role.USER:
        return f"[{stamp}] user: {message.content}"
    said = [c.arguments for c in message.tool_calls if c.name == "send_message"]
    text = message.content
    if said:
        import json

        try:
            text = f"{text} | said: {json.loads(said[0]).get('message', '')}".strip(" |")
        except (json.JSONDecodeError, AttributeError):
            text = f"{text} | said: {said[0]}"
    return f"[{stamp}] assistant: {text}"


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


class RecallMemory:
    def __init__(self, agents: AgentStore, agent_id: str) -> None:
        self._agents = agents
        self._agent_id = agent_id

    def count(self) -> int:
        return self._agents.count_messages(self._agent_id)

    def search(self, query: str, page: int | None = 0) -> Page:
        if not query.strip():
            raise ToolError("query is empty: give words to look for")
        number = check_page(page)
        found, total = self._agents.search_messages(self._agent_id, query, offset=number * PAGE_SIZE, limit=PAGE_SIZE)
        return Page([describe(m) for m in found], total, number)

    def search_dates(self, start_date: str, end_date: str, page: int | None = 0) -> Page:
        start, end = parse_date(start_date, end=False), parse_date(end_date, end=True)
        if end < start:
            raise ToolError("end_date is before start_date")
        if end - start > timedelta(days=36_500):
            raise ToolError("that date range is too wide")
        number = check_page(page)
        found, total = self._agents.messages_between(
            self._agent_id, start, end, offset=number * PAGE_SIZE, limit=PAGE_SIZE
        )
        return Page([describe(m) for m in found], total, number)
