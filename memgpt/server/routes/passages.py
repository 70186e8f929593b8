"""``/v1/agents/{agent_id}/archival-memory``: the agent's archival memory (Letta's ``agents.passages``).

Listing, adding and deleting work on the agent's own passages; searching looks where the agent's own
``archival_memory_search`` looks: its passages and those of its attached folders.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException

from memgpt.agent.manager import archival_memory
from memgpt.errors import NotFoundError, UnavailableError, UserError
from memgpt.memory.archival import ArchivalMemory, over_insert_limit
from memgpt.server.retried import RetriedWrite, arrived, is_retry
from memgpt.server.routes.agents import find_agent
from memgpt.server.schemas.agents import Deleted
from memgpt.server.schemas.passages import (
    PassageCreate,
    PassageOut,
    SearchResponse,
    SearchResult,
    TagMatch,
    stored_passage_ids,
)
from memgpt.server.state import CurrentUser, ServerState, State
from memgpt.server.turns import request_digest
from memgpt.storage.filters import tagged
from memgpt.types import Passage

router = APIRouter(prefix="/v1/agents/{agent_id}/archival-memory", tags=["archival memory"])
_ANSWER = TypeAdapter(list[str])  # the passages' ids: their texts are read back for a retry's answer


def _archival(state: ServerState, user_id: str, agent_id: str) -> ArchivalMemory:
    return archival_memory(state.storage, find_agent(state, user_id, agent_id), state.embedding())


def _refuse_long(state: ServerState, text: str) -> None:
    """A text longer than ``server.max_passage_mb`` is refused before any work: embedding it would outlast the
    client's timeout (and hold a stopping server)."""
    problem = over_insert_limit(text, state.config.server.max_passage_mb, "text")
    if problem is not None:
        raise StarletteHTTPException(
            413, f"{problem}; send it in parts, or upload it as a file to a folder (loaded as a job)"
        )


def _stop_when_stopping(state: ServerState) -> Callable[[], None]:
    def check() -> None:
        if state.stopping.is_set():
            raise UnavailableError("the server is stopping: nothing was stored; send the text again when it is back")

    return check


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


@router.post("", response_model=list[PassageOut])
@router.post("/", response_model=list[PassageOut], include_in_schema=False)
def create_passage(
    agent_id: str,
    body: PassageCreate,
    request: Request,
    state: State,
    user: CurrentUser,
    x_stainless_retry_count: Annotated[str | None, Header()] = None,
) -> list[PassageOut]:
    """Store text in the agent's archival memory (split into passages when it is long); returns them. A long text
    may outlast letta-client's timeout: its retry answers with the passages the first attempt stored, never a
    second copy (``memgpt.server.retried``: a retry of a try that failed midway rewrites the passages it wrote, whose
    ids derive from its run); the same text sent again on purpose is stored again, as in Letta."""
    if not body.text.strip():
        raise UserError("text: is empty; nothing was stored")
    _refuse_long(state, body.text)
    archival = _archival(state, user.id, agent_id)
    config = state.models().embedding_config()
    digest = request_digest(user.id, agent_id, "/v1/agents/archival-memory", body.model_dump(mode="json"))
    still = "the insert this request retries is still running; list the passages when it is done"
    retry = is_retry(x_stainless_retry_count)
    write = RetriedWrite(
        state.turns(), f"passages:{agent_id}", digest, _ANSWER, still, arrived=arrived(request.scope), retry=retry
    )
    earlier = write.earlier() if retry else None
    if earlier is not None:
        return [PassageOut.of(p, config) for p in archival.own_by_ids(earlier)]
    made: list[Passage] = []

    def work() -> list[str]:
        tags, moment = body.tags or [], _utc(body.created_at)
        stop = _stop_when_stopping(state)
        made.extend(archival.add(body.text, tags=tags, created_at=moment, attempt=write.attempt, check=stop))
        return [p.id for p in made]

    ids = write.run(work)
    if not made:  # the run of this request's retry answered it (it overtook this first try)
        made.extend(archival.own_by_ids(ids))
    return [PassageOut.of(p, config) for p in made]


@router.get("", response_model=list[PassageOut])
@router.get("/", response_model=list[PassageOut], include_in_schema=False)
def list_passages(
    agent_id: str,
    state: State,
    user: CurrentUser,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ascending: bool = True,
    search: str | None = None,
) -> list[PassageOut]:
    """The agent's own passages, oldest first unless ``ascending=false``; ``search`` keeps those with that text."""
    archival = _archival(state, user.id, agent_id)
    passages = archival.own_passages(limit=limit, ascending=ascending, after=after, before=before, containing=search)
    config = state.models().embedding_config()
    return [PassageOut.of(p, config) for p in passages]


@router.get("/search", response_model=SearchResponse)
def search_passages(
    agent_id: str,
    state: State,
    user: CurrentUser,
    query: Annotated[str, Query(min_length=1)],
    top_k: Annotated[int, Query(ge=1, le=1000)] = 10,
    tags: Annotated[list[str] | None, Query()] = None,
    tag_match_mode: TagMatch = "any",
    start_datetime: datetime | None = None,
    end_datetime: datetime | None = None,
) -> SearchResponse:
    """The agent's best passages for ``query`` (its own and its folders'), by meaning and by words."""
    if not query.strip():
        raise UserError("query: is empty; say what to look for")
    archival = _archival(state, user.id, agent_id)
    also = tagged(tags or [], every=tag_match_mode == "all") & ArchivalMemory.created_between(
        _utc(start_datetime), _utc(end_datetime)
    )
    hits = archival.hits(query, limit=top_k, also=also)
    return SearchResponse(count=len(hits), results=[SearchResult.of(h) for h in hits])


@router.delete("/{memory_id}", response_model=Deleted)
def delete_passage(agent_id: str, memory_id: str, state: State, user: CurrentUser) -> Deleted:
    """Delete one of the agent's own passages. A folder's passages go with their file or folder: one of them is
    refused, naming its file (deleting one would leave the file's loaded passages short of what it records)."""
    archival = _archival(state, user.id, agent_id)
    stored = stored_passage_ids(memory_id)
    if any(archival.delete_own(candidate) for candidate in stored):
        return Deleted(message=f"Memory id={memory_id} successfully deleted")
    found = archival.visible_by_id(stored)
    if found is not None and found.source_id:
        raise UserError(
            f"passage {memory_id!r} is part of file {found.metadata.get('file_name', '?')!r} of folder "
            f"{found.source_id}: delete that file (folders.files.delete) or detach the folder instead"
        )
    raise NotFoundError(f"the agent has no archival passage with id {memory_id!r}")
