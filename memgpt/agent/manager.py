"""What can be done with agents, as plain functions the CLI and a server both call: create, find by name
or id, resolve ("which agent": find or create), list, update, delete, attach and detach sources, open for
chatting; and the personas and humans new agents start from. Every function that looks up a user's data
takes the user id."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from memgpt.agent import prompts
from memgpt.agent.agent import WINDOW_FIX, Agent, window_refusal
from memgpt.agent.context import system_message
from memgpt.agent.tools import Tool, builtin_tools, load_user_tools
from memgpt.config import Config
from memgpt.data.sources import get_source
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import NotFoundError, UserError
from memgpt.llm.base import LLMClient
from memgpt.memory.archival import ArchivalMemory
from memgpt.memory.core import DEFAULT_LIMIT, CoreMemory
from memgpt.memory.recall import RecallIndex, RecallMemory
from memgpt.memory.recall import writing as recall_writing
from memgpt.storage import Storage
from memgpt.storage.agents import AgentSummary, StepChanges
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import all_of, eq
from memgpt.tokens import bound_message, bound_tools, count_message, count_tools
from memgpt.types import AgentState, Block, EmbeddingSpace, Source, utc_now

CUSTOM = "custom"  # the persona or human of an agent made with its own block text rather than a template
MAX_LABEL = 64  # characters of a block label
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
    blocks: Sequence[Block] = (),
    system: str | None = None,
    description: str = "",
    tags: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    tools: Sequence[str] | None = None,
    tools_folder: Path | None = None,
) -> AgentState:
    """A new agent. Its core memory is ``blocks`` (label, value, limit) plus, for persona and human when
    ``blocks`` has none, the persona and human templates named ``persona`` and ``human``. ``tools``
    names the functions it may call (None: every one there is, with the user's from ``tools_folder``);
    ``system`` replaces MemGPT's prompt. A context window too small for all that is refused before
    anything is stored."""
    name = validate_agent_name(name)
    _refuse_taken(storage, user_id, name)
    given = check_blocks(blocks)
    missing = []
    for kind, chosen in (("persona", persona), ("human", human)):
        if kind not in given:
            text = template_text(storage, user_id, kind, chosen)
            missing.append(Block(kind, text, max(DEFAULT_LIMIT, len(text))))
    if system is not None and not system.strip():
        raise UserError("the system prompt cannot be empty")
    now = utc_now()
    state = AgentState(
        id=f"agent-{uuid.uuid4()}",
        name=name,
        user_id=user_id,
        persona=persona if "persona" not in given else CUSTOM,
        human=human if "human" not in given else CUSTOM,
        system_prompt=system if system is not None else prompts.system_prompt(),
        llm_model=model,
        context_window=context_window,
        embedding_model=embedding.model,
        embedding_dim=embedding.dimensions,
        created_at=now,
        description=description,
        tags=tuple(dict.fromkeys(tags)),
        metadata=dict(metadata or {}),
        tools=tuple(dict.fromkeys(tools)) if tools is not None else None,
        updated_at=now,
    )
    ordered = [b for b in missing if b.label == "persona"] + list(blocks) + [b for b in missing if b.label == "human"]
    check_window(storage, state, ordered, tools_folder=tools_folder)
    return storage.agents.create(state, ordered)


def check_window(
    storage: Storage,
    state: AgentState,
    blocks: Sequence[Block],
    *,
    tools_folder: Path | None = None,
    fix: str = WINDOW_FIX,
    subject: str | None = None,
) -> None:
    """Refuse, before it is stored, an agent whose context window its fixed prompt (system prompt, core
    memory ``blocks``, function schemas) leaves no room in: measured as ``Agent.check_window`` measures it
    when the agent opens, with the memory statistics of an agent that has no messages yet. ``subject`` names
    the agent in the refusal (see :func:`window_refusal`)."""
    tools, _ = agent_tools(state, tools_folder=tools_folder)
    specs = [tool.spec() for tool in tools]
    message = system_message(
        state, CoreMemory(list(blocks)).render(), recall_count=0, archival_count=0, sources=[], now=utc_now()
    )
    ratio_model, ratio = storage.agents.token_ratio(state.id)
    ratio = ratio if ratio_model == state.llm_model else 1.0
    # The bound first (no tokenizer): it is at least the count, so a window it fits needs no count.
    bound = round((bound_message(message) + bound_tools(specs)) * ratio)
    refusal = window_refusal(state, bound, len(specs), fix, subject)
    if refusal:
        ours = count_message(state.llm_model, message) + count_tools(state.llm_model, specs)
        refusal = window_refusal(state, round(ours * ratio), len(specs), fix, subject)
    if refusal:
        raise UserError(refusal)


def check_new_window(storage: Storage, user_id: str, new: NewAgent, *, fix: str) -> None:
    """Refuse a context window too small for a new agent made as ``new`` says (its persona and human templates,
    MemGPT's prompt, every function): the window `memgpt run` would refuse at its first agent, with the same
    minimum and words, told before (by `memgpt configure`). ``fix`` says how to give it more."""
    blocks = [
        Block(kind, text, max(DEFAULT_LIMIT, len(text)))
        for kind, text in (
            ("persona", template_text(storage, user_id, "persona", new.persona)),
            ("human", template_text(storage, user_id, "human", new.human)),
        )
    ]
    state = AgentState(
        id=f"agent-{uuid.uuid4()}",
        name="",
        user_id=user_id,
        persona=new.persona,
        human=new.human,
        system_prompt=prompts.system_prompt(),
        llm_model=new.model,
        context_window=new.context_window,
        embedding_model=new.embedding.model,
        embedding_dim=new.embedding.dimensions,
    )
    check_window(storage, state, blocks, tools_folder=new.tools_folder, fix=fix, subject="a new agent")


def check_blocks(blocks: Sequence[Block]) -> set[str]:
    """The labels of ``blocks``, refused in one line when two share a label or a value exceeds its limit."""
    labels: set[str] = set()
    for block in blocks:
        if not block.label.strip() or len(block.label) > MAX_LABEL or any(ord(c) < 32 for c in block.label):
            raise UserError(f"a block label must be 1-{MAX_LABEL} characters on one line, not {block.label!r}")
        if block.label in labels:
            raise UserError(f"two blocks are labelled {block.label!r}; labels name blocks, so each must be unique")
        if block.limit < 1:
            raise UserError(f"the limit of block {block.label!r} must be a positive number of characters")
        if len(block.value) > block.limit:
            raise UserError(over_limit(block.label, block.limit, len(block.value)))
        labels.add(block.label)
    return labels


def over_limit(label: str, limit: int, requested: int) -> str:
    """Letta's words for a block value longer than its limit, naming the block."""
    return (
        f"Edit failed: Exceeds {limit} character limit (requested {requested}) in block {label!r}; "
        "shorten its value or raise its limit."
    )


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
    tools_folder: Path | None = None  # the user's tools, which a new agent may call too


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
            tools_folder=new.tools_folder,
        )
        return created, True
    if model and model != state.llm_model:
        state = update_agent(storage, state, model=model, tools_folder=new.tools_folder)
    return state, False


def _refuse_taken(storage: Storage, user_id: str, name: str) -> None:
    """A name the user's agents already have is refused. The message names that agent's id, which every interface
    takes (the CLI's --agent, /v1/agents/{id}, the Python client), and no interface's own flag or path: the
    server, the Python client and the CLI all reach this."""
    taken = storage.agents.get(user_id, name)
    if taken is not None:
        raise UserError(f"an agent named {name!r} already exists ({taken.id}); pick another name")


def update_agent(
    storage: Storage,
    state: AgentState,
    *,
    name: str | None = None,
    model: str | None = None,
    context_window: int | None = None,
    system: str | None = None,
    description: str | None = None,
    tags: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    tools: Sequence[str] | None = None,
    tools_folder: Path | None = None,
) -> AgentState:
    """Change what may change after creation; None leaves a field as it is. Returns the new state. A change
    that leaves the context window too small for the fixed prompt is refused before anything is written."""
    fields: dict[str, Any] = {}
    if name is not None and name.strip() != state.name:
        fields["name"] = validate_agent_name(name)
        _refuse_taken(storage, state.user_id, fields["name"])
    if model is not None:
        if not model.strip():
            raise UserError("the model name cannot be empty")
        fields["llm_model"] = model.strip()
    if context_window is not None:
        if context_window < 1024:
            raise UserError("the context window must be at least 1024 tokens")
        fields["context_window"] = context_window
    if system is not None:
        if not system.strip():
            raise UserError("the system prompt cannot be empty")
        fields["system_prompt"] = system
    for key, value in (("description", description), ("metadata", metadata)):
        if value is not None:
            fields[key] = value
    if tags is not None:
        fields["tags"] = list(dict.fromkeys(tags))
    if tools is not None:
        fields["tools"] = list(dict.fromkeys(tools))
    prompt = {key: fields[key] for key in ("llm_model", "context_window", "system_prompt") if key in fields}
    if prompt or tools is not None:
        changed = replace(state, **prompt, tools=tuple(fields["tools"]) if tools is not None else state.tools)
        check_window(storage, changed, storage.agents.blocks(state.id), tools_folder=tools_folder)
    storage.agents.update(state.id, **fields)
    updated = storage.agents.by_id(state.user_id, state.id)
    if updated is None:
        raise NotFoundError(f"agent {state.name!r} was deleted meanwhile")
    return updated


def update_block(
    storage: Storage,
    state: AgentState,
    label: str,
    *,
    value: str | None = None,
    limit: int | None = None,
    description: str | None = None,
    read_only: bool | None = None,
) -> Block:
    """A person's edit of one core memory block (None leaves a field as it is); the agent's next step sees
    it. A value over the limit, or a limit below the value, is refused and nothing changes."""
    block = get_block(storage, state, label)
    changed = replace(
        block,
        value=block.value if value is None else value,
        limit=block.limit if limit is None else limit,
        description=block.description if description is None else description,
        read_only=block.read_only if read_only is None else read_only,
    )
    if changed.limit < 1:
        raise UserError(f"the limit of block {label!r} must be a positive number of characters")
    if len(changed.value) > changed.limit:
        if value is None:  # only the limit changed
            raise UserError(
                f"Edit failed: block {label!r} holds {len(changed.value)} characters, more than the new limit of "
                f"{changed.limit}; shorten its value first (or in the same request)."
            )
        raise UserError(over_limit(label, changed.limit, len(changed.value)))
    storage.agents.save_block(state.id, changed)
    return changed


def get_block(storage: Storage, state: AgentState, label: str) -> Block:
    blocks = storage.agents.blocks(state.id)
    for block in blocks:
        if block.label == label:
            return block
    known = ", ".join(b.label for b in blocks) or "none"
    raise NotFoundError(f"agent {state.name!r} has no core memory block {label!r} (blocks: {known})")


def list_agents(storage: Storage, user_id: str) -> list[AgentSummary]:
    return storage.agents.list(user_id)


def tool_catalog(tools_folder: Path | None = None) -> tuple[list[Tool], list[str]]:
    """Every function an agent can have: MemGPT's own, then the user's from ``tools_folder``; with one-line
    warnings about user tools that could not be loaded."""
    tools = builtin_tools()
    warnings: list[str] = []
    if tools_folder is not None:
        extra, warnings = load_user_tools(tools_folder, [t.name for t in tools])
        tools += extra
    return tools, warnings


def chosen_tools(state: AgentState, catalog: Sequence[Tool]) -> list[Tool]:
    """The tools of ``catalog`` the agent may call (all of them unless it has a choice)."""
    if state.tools is None:
        return list(catalog)
    chosen = set(state.tools)
    return [t for t in catalog if t.name in chosen]


def agent_tools(
    state: AgentState, *, tools_folder: Path | None = None, extra_tools: Sequence[Tool] = ()
) -> tuple[list[Tool], list[str]]:
    """The functions the agent may call and one-line warnings about tools that could not be loaded.
    ``extra_tools`` (for example an MCP server's) come last; one whose name is taken already is skipped."""
    catalog, warnings = tool_catalog(tools_folder)
    tools = chosen_tools(state, catalog)
    for tool in extra_tools:
        if any(t.name == tool.name for t in tools):
            warnings.append(f"{tool.name} is already a tool; skipped")
        else:
            tools.append(tool)
    return tools, warnings


def check_tool_names(names: Sequence[str], *, tools_folder: Path | None = None) -> list[str]:
    """``names`` when each is a function agents can have (MemGPT's or a user tool); else a one-line UserError."""
    known = [t.name for t in tool_catalog(tools_folder)[0]]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"no tool named {', '.join(map(repr, unknown))}; the tools are: {', '.join(known)}")
    return list(names)


@dataclass(frozen=True)
class AgentMemory:
    """An agent's recall and archival memory as its tools search and fill them (core memory is its
    stored blocks: ``storage.agents.blocks``, edited through ``memory.core``)."""

    recall: RecallMemory
    archival: ArchivalMemory


def open_memory(
    storage: Storage,
    state: AgentState,
    embedding: EmbeddingModel,
    *,
    eager: bool = True,
    vectors_at_first_use: bool | None = None,
) -> AgentMemory:
    """The agent's memory with ``embedding``, which must be the model its memory was written with; ``eager``:
    new messages are indexed in recall as they are stored (on the indexer's thread). Else they are left to the
    next catch-up (``RecallMemory``). ``vectors_at_first_use`` (default: not ``eager``): Milvus opens only if a
    tool (or undoing a step, or the indexer) uses it, not now: the archival count the agent's prompt shows is
    read from SQL, so an agent opens and a turn that uses no archival tool runs while Milvus is away."""
    lazy = not eager if vectors_at_first_use is None else vectors_at_first_use
    store = storage.passages_at_first_use(state.space) if lazy else storage.passages(state.space)
    archival = archival_memory(storage, state, embedding, store=store)
    index = RecallIndex(store, embedding)
    recall = RecallMemory(storage, agent_id=state.id, user_id=state.user_id, index=index, eager=eager)
    return AgentMemory(recall, archival)


def open_agent(
    storage: Storage,
    state: AgentState,
    *,
    llm: LLMClient,
    embedding: EmbeddingModel,
    tools_folder: Path | None = None,
    extra_tools: Sequence[Tool] = (),
    max_steps: int = 10,
    eager: bool = True,
    vectors_at_first_use: bool | None = None,
) -> tuple[Agent, list[str]]:
    """A runnable agent and one-line warnings (tools that could not be loaded, see ``agent_tools``; a recall
    index still catching up). Close the agent when done with it. A context window too small for the
    agent's fixed prompt is a UserError. ``eager=False``: recall indexing is left to the next search (or eager
    opening), for a process that runs a turn and ends (see ``RecallMemory``). ``vectors_at_first_use``: see
    ``open_memory``."""
    memory = open_memory(storage, state, embedding, eager=eager, vectors_at_first_use=vectors_at_first_use)
    tools, warnings = agent_tools(state, tools_folder=tools_folder, extra_tools=extra_tools)
    backlog = memory.recall.backlog() if eager else 0
    if backlog:  # a crash, an unreachable endpoint or an older memgpt left messages unindexed
        memory.recall.sync_later()
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
        archival=memory.archival,
        recall=memory.recall,
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


def archival_memory(
    storage: Storage, state: AgentState, embedding: EmbeddingModel, *, store: PassageStore | None = None
) -> ArchivalMemory:
    """The agent's archival memory, searched with ``embedding`` (refused when the agent was made with another);
    ``store``: its passage store, if not ``storage.passages`` (see ``open_memory``)."""
    state.space.ensure_same(
        embedding.space, owner=f"the memory of agent {state.name!r}", fix="switch back with `memgpt configure`"
    )
    return ArchivalMemory(storage, embedding, agent_id=state.id, user_id=state.user_id, store=store)


def attach_source(storage: Storage, state: AgentState, source: Source | str) -> tuple[Source, bool]:
    """Link one of the agent's user's sources (or the one named so) to its archival memory; (source, False)
    when it was attached already."""
    source = _users_source(storage, state, source)
    if source.status == "deleting":
        raise UserError(f"source {source.name!r} is being deleted; it cannot be attached")
    source.space.ensure_same(
        state.space,
        owner=f"source {source.name!r}",
        user=f"the model of agent {state.name!r}",
        fix="load the files again into a new source with the agent's model",
    )
    return source, storage.attachments.attach(state.id, source.id)


def detach_source(storage: Storage, state: AgentState, source: Source | str) -> Source:
    source = _users_source(storage, state, source)
    if not storage.attachments.detach(state.id, source.id):
        raise UserError(f"source {source.name!r} is not attached to agent {state.name!r}")
    return source


def _users_source(storage: Storage, state: AgentState, source: Source | str) -> Source:
    if isinstance(source, str):
        return get_source(storage, state.user_id, source)
    if source.user_id != state.user_id:
        raise NotFoundError(f"no source named {source.name!r}")
    return source


def attached_sources(storage: Storage, state: AgentState) -> list[Source]:
    """The sources linked to the agent's archival memory, in the order they were attached."""
    sources = {s.id: s for s in storage.metadata.list_sources(state.user_id)}
    return [sources[i] for i in storage.attachments.source_ids(state.id) if i in sources]


def reset_messages(storage: Storage, state: AgentState) -> int:
    """Start the agent's context over as a new agent's (Letta's ``messages.reset``): every message leaves the
    context window and the summary of earlier ones goes; all stay in recall, searchable (Letta deletes them: in
    MemGPT recall is every message, and the agent can still find what was said). Returns how many left the
    window. The agent's version moves, so a process holding it open reads it again."""
    ids = [m.id for m in storage.messages.in_context(state.id)]
    storage.agents.commit_step(state.id, StepChanges(evicted_ids=ids, summary="", pressure_alerted=False))
    return len(ids)


def delete_agent(storage: Storage, state: AgentState) -> int:
    """Delete the agent, its messages and its own archival passages (attached sources stay); returns how many
    archival passages it had (its recall index entries, also deleted, are not counted: they are its messages)."""
    store = storage.passages(state.space)
    mine = (eq("user_id", state.user_id), eq("agent_id", state.id))
    # Under the recall writing lock: an indexing pass this process still runs for the agent (a server turn does
    # not wait for its own) ends first, so none writes index entries of deleted messages after this.
    with recall_writing(storage, state.id):
        archival = store.count(all_of(*mine, eq("kind", "archival")))
        store.delete(all_of(*mine), count=False)
        storage.agents.delete(state.id)
    return archival


def default_agent_settings(config: Config, model: str | None) -> tuple[str, int]:
    """Model and context window for a new agent, from --model or the configured LLM."""
    from memgpt.llm import resolve_llm

    resolved = resolve_llm(config.llm)
    return model or resolved.model, resolved.context_window
