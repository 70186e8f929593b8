"""Summaries of messages evicted from the context window, folded into the previous summary."""

from __future__ import annotations

import json
from collections.abc import Sequence

from memgpt.llm.base import ChatMessage, LLMClient
from memgpt.tokens import count_tokens

INSTRUCTIONS = (
    "You maintain the running summary of a conversation between an AI agent and a user; older parts of the "
    "conversation are leaving the agent's context window. Rewrite the summary so it covers the previous summary "
    "and the new excerpt. Keep names, facts about the user, decisions, open questions, promises and dates; drop "
    "small talk. Write in the first person as the agent, in at most {words} words. Reply with the summary only."
)


def summarize(
    llm: LLMClient, previous: str, excerpt: Sequence[ChatMessage], *, words: int = 300, budget_tokens: int = 0
) -> str:
    """One summary of ``previous`` plus ``excerpt``; an excerpt too long for one call is folded in parts."""
    budget = budget_tokens or int(llm.context_window * 0.6)
    lines = [_line(m) for m in excerpt]
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


def _line(message: ChatMessage) -> str:
    role = message["role"]
    content = message.get("content") or ""
    if role == "user":
        try:
            body = json.loads(content)
            content = body.get("message") or body.get("reason") or content
            role = "user" if body.get("type") == "user_message" else "system"
        except (json.JSONDecodeError, AttributeError):
            pass
    calls = " ".join(
        f"[called {c['function']['name']} {c['function']['arguments']}]" for c in message.get("tool_calls") or []
    )
    return f"{role}: {content} {calls}".strip()
