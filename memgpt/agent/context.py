"""The system message: the agent's prompt, memory statistics, summary and core memory, rendered for the LLM."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from memgpt.llm.base import ChatMessage
from memgpt.memory.messages import timestamp
from memgpt.types import AgentState


def system_message(
    state: AgentState, core: str, *, recall_count: int, archival_count: int, sources: Sequence[str], now: datetime
) -> ChatMessage:
    lines = [
        state.system_prompt.strip(),
        "",
        f"### Memory [last modified: {timestamp(now)}]",
        f"{recall_count} previous messages between you and the user are stored in recall memory "
        "(use functions to access them)",
        f"{archival_count} total memories are stored in archival memory (use functions to access them)",
    ]
    if sources:
        lines.append("Data sources attached to your archival memory: " + ", ".join(sources))
    if state.summary:
        lines += [
            "",
            "Summary of earlier conversation (moved out of your context window; search recall memory for details):",
            state.summary,
        ]
    lines += [
        "",
        "Core memory shown below (limited in size, additional information stored in archival / recall memory):",
        core,
    ]
    return {"role": "system", "content": "\n".join(lines)}
