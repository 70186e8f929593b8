"""Summaries of messages evicted from the context window, folded into the previous summary."""

from __future__ import annotations

from collections.abc import Sequence

from memgpt.llm.base import ChatMessage, LLMClient
from memgpt.memory.messages import summary_line
from memgpt.tokens import count_tokens
from memgpt.types import Message

INSTRUCTIONS = (
    "You maintain the running summary of a conversation between an AI agent and a user; older parts of the "
    "conversation are leaving the agent's context window. Rewrite the summary so it covers the previous summary "
    "and the new excerpt. Keep names, facts about the user, decisions, open questions, promises and dates; drop "
    "small talk. Write in the first person as the agent, in at most {words} words. Reply with the summary only."
)


def summarize(
    llm: LLMClient, previous: str, excerpt: Sequence[Message], *, words: int = 300, budget_tokens: int = 0
) -> str:
    """One summary of ``previous`` plus ``excerpt``; an excerpt too long for one call is folded in parts."""
    budget = budget_tokens or int(llm.context_window * 0.6)
    lines = [summary_line(m) for m in excerpt]
    parts: list[list[str]] = [[]]
    used = 0
    for line in lines:
        size = count_tokens(llm.model, [{"role": "user", "content": line}])
        if parts[-1] and used + size > budget:
            parts.append([])
            used = 0
        parts[-1].append(line[: budget * 3] if size > budget else line)
        used += size
    summary = previous
    for part in parts:
        prompt: list[ChatMessage] = [
            {"role": "system", "content": INSTRUCTIONS.format(words=words)},
            {
                "role": "user",
                "content": f"Previous summary:\n{summary or '(none)'}\n\nNew excerpt:\n" + "\n".join(part),
            },
        ]
        summary = llm.complete(prompt).content.strip() or summary
    return summary
