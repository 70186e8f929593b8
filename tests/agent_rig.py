"""An agent wired to real storage (Milvus Lite, SQLite), the real embedding model and the scripted LLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memgpt.agent.agent import Agent
from memgpt.agent.events import Event, Reply
from memgpt.agent.manager import create_agent, open_agent
from memgpt.embeddings.local import LocalMiniLM
from memgpt.llm.openai_compat import OpenAICompatible
from memgpt.storage import Storage
from memgpt.types import AgentState
from tests.conftest import USER
from tests.scripted_llm import ScriptedLLM


def new_agent(
    storage: Storage,
    model: LocalMiniLM,
    name: str,
    user_id: str = USER,
    *,
    persona: str = "sam_pov",
    context_window: int = 16_000,
) -> AgentState:
    """A stored agent for the scripted LLM (``model="scripted"``), embedding with ``model``."""
    return create_agent(
        storage,
        user_id=user_id,
        name=name,
        persona=persona,
        human="basic",
        model="scripted",
        context_window=context_window,
        embedding=model.space,
    )


@dataclass
class Rig:
    storage: Storage
    model: LocalMiniLM
    llm: ScriptedLLM
    user_id: str = USER
    opened: list[Agent] = field(default_factory=list)

    def client(self, context_window: int = 16_000, timeout: float = 30.0) -> OpenAICompatible:
        client = OpenAICompatible(
            model="scripted", context_window=context_window, endpoint=self.llm.url, timeout=timeout
        )
        client.backoff_seconds = 0.01
        return client

    def create(self, name: str = "tester", persona: str = "sam_pov", context_window: int = 16_000) -> Agent:
        new_agent(self.storage, self.model, name, self.user_id, persona=persona, context_window=context_window)
        return self.open(name, context_window=context_window)

    def open(
        self, name: str = "tester", *, context_window: int = 16_000, timeout: float = 30.0, **options: Any
    ) -> Agent:
        state = self.storage.agents.get(self.user_id, name)
        assert state is not None
        agent, warnings = open_agent(
            self.storage, state, llm=self.client(context_window, timeout), embedding=self.model, **options
        )
        assert not warnings
        self.opened.append(agent)
        return agent

    def close(self) -> None:
        """Close every agent opened (their recall indexing finishes) before the storage closes."""
        for agent in self.opened:
            agent.close()


def replies(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, Reply)]


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON envelopes of the tool messages in one recorded LLM request."""
    import json

    return [json.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"]
