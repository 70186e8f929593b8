"""What can be done with agents, as plain functions the CLI and a server both call: create, find by name
or id, resolve ("which agent": find or create), list, update, delete, attach and detach sources, open for
chatting; and the personas and humans new agents start from. Every function that looks up a user's data
takes the user id."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
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
from memgpt.storage.agents import AgentSummary
from memgpt.storage.filters import all_of, eq
from memgpt.types import AgentState, Block, EmbeddingSpace, Source, utc_now

LONG_BACKLOG = 500  # unindexed messages worth telling the user about (minutes of embedding on a small CPU)
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


def template_text(storage: Storage, user_id: str, kind: str, name: str) -> str:
    """A persona or human by name: the user's own first, then the shipped ones."""
    text = storage.templates.get(user_id, kind, name)
    if text is not None:
        return text
    shipped = prompts.shipped(kind)
    if name in shipped:
        return shipped[name]
    known = sorted({*shipped, *storage.templates.all(user_id, kind)})
    raise NotFoundError(
        f"no {kind} named {name!r} (available: {', '.join(known)}); add one with `memgpt add {kind} --name {name} ...`"
    )


def template_names(storage: Storage, user_id: str, kind: str) -> dict[str, str]:
    """Name to text of every persona (or human) the user can choose: shipped ones, then their own."""
    return {**prompts.shipped(kind), **storage.templates.all(user_id, kind)}


def save_template(storage: Storage, user_id: str, kind: str, name: str, text: str) -> str:
    """Add or replace one of the user's personas or humans; returns its (stripped) name."""
    if kind not in prompts.KINDS:
        raise UserError(f"a template is a persona or a human, not {kind!r}")
    name, text = name.strip(), text.strip()
    if not name or not text:
        raise UserError(f"the {kind} name and text cannot be empty")
    storage.templates.save(user_id, kind, name, text)
    return name


def validate_agent_name(name: str) -> str:
    """The name without surrounding blanks; refused when empty, too long or on several lines."""
    stripped = name.strip()
    if not stripped or len(stripped) > 256 or any(ord(c) < 32 for c in stripped):
        raise UserError("an agent name must be 1-256 characters on one line")
    return stripped


def create_agent(
    storage: Storage,
    *,
    user_id: str,
    name: str,
    persona: str,
    human: str,
    model: str,
    context_window: int,
    embedding: EmbeddingSpace,
) -> AgentState:
    name = validate_agent_name(name)
    if storage.agents.get(user_id, name) is not None:
        raise UserError(f"an agent named {name!r} already exists; pick another name or run it with --agent")
    persona_text = template_text(storage, user_id, "persona", persona)
    human_text = template_text(storage, user_id, "human", human)
    state = AgentState(
        id=str(uuid.uuid4()),
        name=name,
        user_id=user_id,
        persona=persona,
        human=human,
        system_prompt=prompts.system_prompt(),
        llm_model=model,
        context_window=context_window,
        embedding_model=embedding.model,
        embedding_dim=embedding.dimensions,
        created_at=utc_now(),
    )
    limit = max(DEFAULT_LIMIT, len(persona_text), len(human_text))
    blocks = [Block("persona", persona_text, limit), Block("human", human_text, limit)]
    return storage.agents.create(state, blocks)


def find_agent(storage: Storage, user_id: str, ref: str) -> AgentState | None:
    """The user's agent named ``ref`` (blanks around it ignored), else the one with that id."""
    name = validate_agent_name(ref)
    return storage.agents.get(user_id, name) or storage.agents.by_id(user_id, name)


def get_agent(storage: Storage, user_id: str, ref: str) -> AgentState:
    """Like ``find_agent``, but a missing agent is a NotFoundError listing the user's agents."""
    state = find_agent(storage, user_id, ref)
    if state is None:
        known = ", ".join(sorted(storage.agents.names(user_id))) or "none yet"
        raise NotFoundError(f"no agent named {ref.strip()!r} (agents: {known})")
    return state


@dataclass(frozen=True)
class NewAgent:
    """How to make an agent when the one asked for does not exist yet."""

    persona: str
    human: str
    model: str
    context_window: int
    embedding: EmbeddingSpace


def resolve_agent(
    storage: Storage, user_id: str, ref: str | None, *, new: NewAgent, model: str | None = None
) -> tuple[AgentState, bool]:
    """Which agent to run: the user's agent named (or with the id) ``ref``, else a new one named ``ref``,
    or a friendly name when ``ref`` is None. ``model`` switches an existing agent to another LLM model.
    Returns the agent and whether it was created now."""
    state = find_agent(storage, user_id, ref) if ref is not None else None
    if state is None:
        name = ref if ref is not None else friendly_name(storage.agents.names(user_id))
        created = create_agent(
            storage,
            user_id=user_id,
            name=name,
            persona=new.persona,
            human=new.human,
            model=model or new.model,
            context_window=new.context_window,
            embedding=new.embedding,
        )
        return created, True
    if model and model != state.llm_model:
        state = update_agent(storage, state, model=model)
    return state, False


def update_agent(
    storage: Storage,
    state: AgentState,
    *,
    name: str | None = None,
    model: str | None = None,
    context_window: int | None = None,
) -> AgentState:
    """Change what may change after creation (name, LLM model, context window); returns the new state."""
    fields: dict[str, str | int] = {}
    if name is not None and name.strip() != state.name:
        fields["name"] = validate_agent_name(name)
        if storage.agents.get(state.user_id, fields["name"]) is not None:
            raise UserError(f"an agent named {fields['name']!r} already exists; pick another name")
    if model is not None:
        if not model.strip():
            raise UserError("the model name cannot be empty")
        fields["llm_model"] = model.strip()
    if context_window is not None:
        if context_window < 1024:
            raise UserError("the context window must be at least 1024 tokens")
        fields["context_window"] = context_window
    storage.agents.update(state.id, **fields)
    updated = storage.agents.by_id(state.user_id, state.id)
    if updated is None:
        raise NotFoundError(f"agent {state.name!r} was deleted meanwhile")
    return updated


def list_agents(storage: Storage, user_id: str) -> list[AgentSummary]:
    return storage.agents.list(user_id)


def open_agent(
    storage: Storage,
    state: AgentState,
    *,
    llm: LLMClient,
    embedding: EmbeddingModel,
    tools_folder: Path | None = None,
    extra_tools: Sequence[Tool] = (),
    max_steps: int = 10,
) -> tuple[Agent, list[str]]:
    """A runnable agent and one-line warnings (tools that could not be loaded, a recall index still
    catching up). Close the agent when done with it.

    ``extra_tools`` (for example an MCP server's) come after MemGPT's and the user's; one whose name
    is taken already is skipped with a warning. A context window too small for the agent's fixed prompt
    is a UserError.
    """
    state.space.ensure_same(
        embedding.space, owner=f"the memory of agent {state.name!r}", fix="switch back with `memgpt configure`"
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
    archival = ArchivalMemory(storage, embedding, agent_id=state.id, user_id=state.user_id)
    index = RecallIndex(storage.passages(state.space), embedding)
    recall = RecallMemory(storage, agent_id=state.id, user_id=state.user_id, index=index)
    backlog = recall.backlog()
    if backlog:  # a crash, an unreachable endpoint or an older memgpt left messages unindexed
        recall.sync_later()
    if backlog >= LONG_BACKLOG:
        warnings.append(
            f"{backlog:,} messages are not in the recall index yet; they are being indexed in the background "
            "(conversation_search finds them by their words until then)"
        )

    def source_names() -> list[str]:
        names = {s.id: s.name for s in storage.metadata.list_sources(state.user_id)}
        return [names[i] for i in storage.attachments.source_ids(state.id) if i in names]

    agent = Agent(
        state,
        storage=storage,
        archival=archival,
        recall=recall,
        llm=llm,
        tools=tools,
        max_steps=max_steps,
        source_names=source_names,
    )
    try:
        agent.check_window()
    except BaseException:
        agent.close()
        raise
    return agent, warnings


def attach_source(storage: Storage, state: AgentState, source_name: str) -> tuple[Source, bool]:
    """Link one of the agent's user's sources to its archival memory; (source, False) when it was attached already."""
    source = get_source(storage, state.user_id, source_name)
    source.space.ensure_same(
        state.space,
        owner=f"source {source.name!r}",
        user=f"the model of agent {state.name!r}",
        fix="load the files again into a new source with the agent's model",
    )
    return source, storage.attachments.attach(state.id, source.id)


def detach_source(storage: Storage, state: AgentState, source_name: str) -> Source:
    source = get_source(storage, state.user_id, source_name)
    if not storage.attachments.detach(state.id, source.id):
        raise UserError(f"source {source.name!r} is not attached to agent {state.name!r}")
    return source


def delete_agent(storage: Storage, state: AgentState) -> int:
    """Delete the agent, its messages and its own archival passages (attached sources stay)."""
    store = storage.passages(state.space)
    deleted = store.delete(all_of(eq("user_id", state.user_id), eq("agent_id", state.id)))
    storage.agents.delete(state.id)
    return deleted


def default_agent_settings(config: Config, model: str | None) -> tuple[str, int]:
    """Model and context window for a new agent, from --model or the configured LLM."""
    from memgpt.llm import resolve_llm

    resolved = resolve_llm(config.llm)
    return model or resolved.model, resolved.context_window
