"""Creating, loading, attaching and deleting agents: what both the CLI and a server need."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from pathlib import Path

from memgpt.agent import prompts
from memgpt.agent.agent import Agent
from memgpt.agent.tools import Tool, builtin_tools, load_user_tools
from memgpt.config import Config
from memgpt.data.sources import get_source
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import NotFoundError, UserError
from memgpt.llm.base import LLMClient
from memgpt.memory.archival import ArchivalMemory
from memgpt.memory.core import DEFAULT_LIMIT
from memgpt.memory.recall import RecallIndex, RecallMemory
from memgpt.storage import Storage
from memgpt.storage.agents import AgentStore
from memgpt.storage.filters import all_of, eq
from memgpt.types import AgentState, Block, Source, utc_now

_ADJECTIVES = """Polite Brave Calm Clever Curious Gentle Happy Honest Jolly Kind Lively Lucky Merry Mighty Nimble
Noble Patient Proud Quiet Quick Shiny Silly Sunny Swift Tidy Wise Witty Zesty Bold Bright Cosmic Daring Eager Fuzzy
Golden Humble Jazzy Loyal Mellow Plucky Rustic Snappy Spry Stellar Velvet Vivid""".split()  # noqa: SIM905
_NOUNS = """Butterfly Otter Falcon Panda Fox Heron Koala Lynx Marmot Narwhal Owl Penguin Quokka Raven Salmon Tiger
Walrus Badger Beaver Comet Dolphin Ember Finch Gecko Harbor Iris Jaguar Kestrel Lantern Maple Nebula Orchid Pebble
Quasar Robin Sparrow Tulip Unicorn Violet Willow Yak Zephyr""".split()  # noqa: SIM905


def friendly_name(taken: set[str], rng: random.Random | None = None) -> str:
    """A two-word name like 'PoliteButterfly' that no agent of this user has yet."""
    rng = rng or random.Random()
    for _ in range(200):
        name = rng.choice(_ADJECTIVES) + rng.choice(_NOUNS)
        if name not in taken:
            return name
    return f"{rng.choice(_ADJECTIVES)}{rng.choice(_NOUNS)}{uuid.uuid4().hex[:4]}"


def template_text(agents: AgentStore, user_id: str, kind: str, name: str) -> str:
    """A persona or human by name: the user's own first, then the shipped ones."""
    text = agents.template(user_id, kind, name)
    if text is not None:
        return text
    shipped = prompts.shipped(kind)
    if name in shipped:
        return shipped[name]
    known = sorted({*shipped, *agents.templates(user_id, kind)})
    raise NotFoundError(
        f"no {kind} named {name!r} (available: {', '.join(known)}); add one with `memgpt add {kind} --name {name} ...`"
    )


def template_names(agents: AgentStore, user_id: str, kind: str) -> dict[str, str]:
    return {**prompts.shipped(kind), **agents.templates(user_id, kind)}


def validate_agent_name(name: str) -> str:
    stripped = name.strip()
    if not stripped or len(stripped) > 256 or any(ord(c) < 32 for c in stripped):
        raise UserError("an agent name must be 1-256 characters on one line")
    return stripped


def create_agent(
    agents: AgentStore,
    *,
    user_id: str,
    name: str,
    persona: str,
    human: str,
    model: str,
    context_window: int,
    embedding: EmbeddingModel,
) -> AgentState:
    name = validate_agent_name(name)
    if agents.get(user_id, name) is not None:
        raise UserError(f"an agent named {name!r} already exists; pick another name or run it with --agent")
    persona_text = template_text(agents, user_id, "persona", persona)
    human_text = template_text(agents, user_id, "human", human)
    state = AgentState(
        id=str(uuid.uuid4()),
        name=name,
        user_id=user_id,
        persona=persona,
        human=human,
        system_prompt=prompts.system_prompt(),
        llm_model=model,
        context_window=context_window,
        embedding_model=embedding.model_id,
        embedding_dim=embedding.dimensions,
        created_at=utc_now(),
    )
    limit = max(DEFAULT_LIMIT, len(persona_text), len(human_text))
    blocks = [Block("persona", persona_text, limit), Block("human", human_text, limit)]
    return agents.create(state, blocks, [])


def get_agent(agents: AgentStore, user_id: str, name: str) -> AgentState:
    state = agents.get(user_id, name)
    if state is None:
        known = ", ".join(sorted(agents.names(user_id))) or "none yet"
        raise NotFoundError(f"no agent named {name!r} (agents: {known})")
    return state


def open_agent(
    storage: Storage,
    agents: AgentStore,
    state: AgentState,
    *,
    llm: LLMClient,
    embedding: EmbeddingModel,
    tools_folder: Path | None = None,
    extra_tools: Sequence[Tool] = (),
    max_steps: int = 10,
) -> tuple[Agent, list[str]]:
    """A runnable agent and one-line warnings about tools that could not be loaded.

    ``extra_tools`` (for example an MCP server's) come after MemGPT's and the user's; one whose name
    is taken already is skipped with a warning.
    """
    if (state.embedding_model, state.embedding_dim) != (embedding.model_id, embedding.dimensions):
        raise UserError(
            f"agent {state.name!r} stores memories with {state.embedding_model}, but the configured embedding model "
            f"is {embedding.model_id}; switch back with `memgpt configure`"
        )
    tools = builtin_tools()
    warnings: list[str] = []
    if tools_folder is not None:
        extra, warnings = load_user_tools(tools_folder, [t.name for t in tools])
        tools += extra
    for tool in extra_tools:
        if any(t.name == tool.name for t in tools):
            warnings.append(f"{tool.name} is already a tool; skipped")
        else:
            tools.append(tool)
    archival = ArchivalMemory(storage, agents, state, embedding)
    store = storage.passages(state.embedding_model, state.embedding_dim)
    recall = RecallMemory(agents, state, RecallIndex(store, embedding))
    recall.sync()  # catch up on messages a crash or an unreachable endpoint left unindexed

    def source_names() -> list[str]:
        names = {s.id: s.name for s in storage.metadata.list_sources(state.user_id)}
        return [names[i] for i in agents.attached(state.id) if i in names]

    agent = Agent(
        state,
        agents=agents,
        archival=archival,
        recall=recall,
        llm=llm,
        tools=tools,
        max_steps=max_steps,
        source_names=source_names,
    )
    return agent, warnings


def attach_source(storage: Storage, agents: AgentStore, state: AgentState, source_name: str) -> tuple[Source, bool]:
    """Link a source to the agent's archival memory; (source, False) when it was attached already."""
    source = get_source(storage, source_name)
    if (source.embedding_model, source.embedding_dim) != (state.embedding_model, state.embedding_dim):
        raise UserError(
            f"source {source.name!r} was embedded with {source.embedding_model} but agent {state.name!r} uses "
            f"{state.embedding_model}; load the files again into a new source with the agent's model"
        )
    return source, agents.attach(state.id, source.id)


def detach_source(storage: Storage, agents: AgentStore, state: AgentState, source_name: str) -> Source:
    source = get_source(storage, source_name)
    if not agents.detach(state.id, source.id):
        raise UserError(f"source {source.name!r} is not attached to agent {state.name!r}")
    return source


def delete_agent(storage: Storage, agents: AgentStore, state: AgentState) -> int:
    """Delete the agent, its messages and its own archival passages (attached sources stay)."""
    store = storage.passages(state.embedding_model, state.embedding_dim)
    deleted = store.delete(all_of(eq("user_id", state.user_id), eq("agent_id", state.id)))
    agents.delete(state.id)
    return deleted


def default_agent_settings(config: Config, model: str | None) -> tuple[str, int]:
    """Model and context window for a new agent, from --model or the configured LLM."""
    from memgpt.llm import resolve_llm

    resolved = resolve_llm(config.llm)
    return model or resolved.model, resolved.context_window
