"""The system message: the agent's prompt, summary, core memory and memory statistics, rendered for the LLM.

Providers reuse the longest prefix a prompt shares with the one before (llama.cpp keeps it in its KV
cache; OpenAI and Anthropic bill a cached prefix at a fraction). The agent rebuilds this message only
when memory is modified (see ``Agent._system``); the statistics, which change most often then, come last.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from memgpt.llm.base import ChatMessage
from memgpt.memory.messages import timestamp
from memgpt.types import AgentState


def memory_part(state: AgentState, core: str) -> str:
    """The prompt, the summary of evicted messages and core memory: the same from step to step until
    memory is edited or messages are evicted."""
    lines = [state.system_prompt.strip(), "", "### Memory"]
    if state.summary:
        lines += [
            "Summary of earlier conversation (moved out of your context window; search recall memory for details):",
            state.summary,
            "",
        ]
    lines += [
        "Core memory shown below (limited in size, additional information stored in archival / recall memory):",
        core,
    ]
    return "\n".join(lines)


def statistics_part(*, recall_count: int, archival_count: int, sources: Sequence[str], now: datetime) -> str:
    """Memory statistics and the time they were taken."""
    lines = [
        "",
        f"### Memory statistics [last modified: {timestamp(now)}]",
        f"{recall_count} previous messages between you and the user are stored in recall memory "
        "(use functions to access them)",
        f"{archival_count} total memories are stored in archival memory (use functions to access them)",
    ]
    if sources:
        lines.append("Data sources attached to your archival memory: " + ", ".join(sources))
    return "\n".join(lines)


def system_message(
    state: AgentState, core: str, *, recall_count: int, archival_count: int, sources: Sequence[str], now: datetime
) -> ChatMessage:
    statistics = statistics_part(recall_count=recall_count, archival_count=archival_count, sources=sources, now=now)
    return {"role": "system", "content": memory_part(state, core) + "\n" + statistics}
