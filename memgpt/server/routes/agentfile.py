"""Agent Files over HTTP: ``agents.export_file`` (the JSON text) and ``agents.import_file`` (multipart,
Letta's form fields); both call ``memgpt.agent.agentfile``, as `memgpt export agent` and `memgpt import` do."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile
from pydantic import BaseModel, TypeAdapter

from memgpt.agent.agentfile import (
    ImportedAgent,
    ImportOptions,
    export_agent,
    export_text,
    import_agent_file,
    import_settings,
)
from memgpt.agent.agentfile_format import read_agent_file
from memgpt.errors import UserError
from memgpt.server.retried import RetriedWrite, arrived, is_retry
from memgpt.server.routes.agents import find_agent
from memgpt.server.routes.folders import Jobs
from memgpt.server.state import CurrentUser, ServerState, State
from memgpt.server.turns import TurnRunner, request_digest
from memgpt.types import FileStatus

router = APIRouter(tags=["agents"])


class ImportedOut(BaseModel):
    """What became of one agent of the file (memgpt's own detail beside Letta's ``agent_ids``)."""

    agent_id: str
    name: str
    messages: int
    archival_passages: int
    files: list[str]
    tools_mapped: dict[str, list[str]]
    tools_without_equivalent: list[str]
    custom_tools_not_installed: list[str]
    mcp_servers_attached: list[str]
    notes: list[str]

    @classmethod
    def of(cls, imported: ImportedAgent) -> ImportedOut:
        return cls(
            agent_id=imported.state.id,
            name=imported.state.name,
            messages=imported.messages,
            archival_passages=imported.passages,
            files=[f.file_name for f in imported.files],
            tools_mapped=imported.tools_mapped,
            tools_without_equivalent=imported.tools_without_equivalent,
            custom_tools_not_installed=imported.custom_tools,
            mcp_servers_attached=imported.mcp_servers,
            notes=imported.notes,
        )


class ImportResult(BaseModel):
    agent_ids: list[str]
    imported: list[ImportedOut]


@router.get("/v1/agents/{agent_id}/export")
def export_file(
    agent_id: str,
    state: State,
    user: CurrentUser,
    scrub_messages: bool = False,
    use_legacy_format: bool = False,
    conversation_id: str | None = None,
    max_steps: int | None = None,
) -> Response:
    """The agent as an Agent File (JSON text): blocks, messages (none with ``scrub_messages``), tools,
    attached folders with their files' text, its MCP servers (without secrets), and its archival passages
    under the key ``memgpt``."""
    if use_legacy_format:
        raise UserError("the legacy agent file format is not supported; leave out use_legacy_format")
    agent = find_agent(state, user.id, agent_id)
    document = export_agent(
        state.storage,
        agent,
        chunk_size=state.config.embedding.chunk_size,
        scrub_messages=scrub_messages,
        home=state.home,
    )
    return Response(export_text(document), media_type="application/json")


def _secrets(value: str | None, field: str) -> None:
    if value is None or not value.strip():
        return
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UserError(f"{field} must be a JSON object string, e.g. '{{\"KEY\": \"value\"}}'")


class _Imports(RetriedWrite[ImportResult]):
    """Every API import is recorded as a run (its request's digest: the user, the file's SHA-256 and the form), as
    ``memgpt.server.retried`` describes: letta-client's retry of an import that timed out gets the agents the first
    attempt made, never a second copy. A file imported again on purpose (no retry header) is a new import, as in
    Letta. An import is all or nothing, so a retry of one that failed or died imports again."""

    def __init__(
        self, runner: TurnRunner, user_id: str, digest: str, *, arrived: float | None = None, retry: bool = False
    ) -> None:
        still = "the import this request retries is still running; its agents are listed when done"
        # The runs' key: one user's imports, whose old runs are forgotten together.
        key, answer = f"import:{user_id}", TypeAdapter(ImportResult)
        super().__init__(runner, key, digest, answer, still, arrived=arrived, retry=retry)


def _imports(
    state: ServerState, user_id: str, file: UploadFile, data: bytes, form: dict[str, Any], request: Request, retry: bool
) -> _Imports:
    body = {**form, "file": hashlib.sha256(data).hexdigest(), "file_name": file.filename}
    digest = request_digest(user_id, "", "/v1/agents/import", body)
    return _Imports(state.turns(), user_id, digest, arrived=arrived(request.scope), retry=retry)


@router.post("/v1/agents/import", response_model=ImportResult)
def import_file(
    request: Request,
    state: State,
    user: CurrentUser,
    jobs: Jobs,
    file: Annotated[UploadFile, File(description="The agent file (.af)")],
    name: Annotated[str | None, Form()] = None,
    override_name: Annotated[str | None, Form()] = None,
    append_copy_suffix: Annotated[bool, Form()] = True,
    on_name_clash: Annotated[Literal["suffix", "error"], Form(description="memgpt: a taken name")] = "suffix",
    strip_messages: Annotated[bool, Form()] = False,
    override_existing_tools: Annotated[bool, Form()] = True,
    model: Annotated[str | None, Form()] = None,
    override_model_handle: Annotated[str | None, Form()] = None,
    embedding: Annotated[str | None, Form()] = None,
    override_embedding_handle: Annotated[str | None, Form()] = None,
    secrets: Annotated[str | None, Form()] = None,
    env_vars_json: Annotated[str | None, Form()] = None,
    project_id: Annotated[str | None, Form()] = None,
    x_override_embedding_model: Annotated[str | None, Header()] = None,
    x_stainless_retry_count: Annotated[str | None, Header()] = None,
) -> ImportResult:
    """Make new agents from an Agent File (Letta's or memgpt's); all of it or, on any error, nothing. The
    files of their folders are then loaded in the background, as uploads are.
    Tools map to MemGPT's by name; tools that carry code are never installed (the answer lists them), so
    ``override_existing_tools`` changes nothing; ``secrets`` and ``env_vars_json`` are checked, not kept;
    ``project_id`` is ignored. ``on_name_clash`` (memgpt's own) says what a taken name does. A retry of the same
    import (letta-client's, after a timeout) answers with the agents the first attempt made (``_Imports``)."""
    data = file.file.read()
    form = {
        "name": name,
        "override_name": override_name,
        "append_copy_suffix": append_copy_suffix,
        "on_name_clash": on_name_clash,
        "strip_messages": strip_messages,
        "model": override_model_handle or model,
        "embedding": [embedding, override_embedding_handle, x_override_embedding_model],
        "secrets": [secrets, env_vars_json],
    }
    retry = is_retry(x_stainless_retry_count)
    imports = _imports(state, user.id, file, data, form, request, retry)
    earlier = imports.earlier() if retry else None
    if earlier is not None:
        return earlier

    def work() -> ImportResult:  # recorded from here: a retry that comes meanwhile waits for it
        for handle in (embedding, override_embedding_handle, x_override_embedding_model):
            state.models().check_embedding(handle, None)  # imported agents are embedded again with the server's
        _secrets(secrets, "secrets")
        _secrets(env_vars_json, "env_vars_json")
        document = read_agent_file(data, file.filename or "the agent file")
        options = ImportOptions(
            # As Letta: ``name`` before the deprecated ``override_name``; a name given is used as given, without
            # "_copy" (which the default append_copy_suffix=True would add: letta-client omits it).
            name=name or override_name,
            copy_suffix=append_copy_suffix and not (name or override_name),
            on_clash=on_name_clash,
            strip_messages=strip_messages,
            model=state.models().model_for(handle) if (handle := override_model_handle or model) else None,
        )
        settings = import_settings(state.home, state.config, state.embedding())
        # Files load in the background, as uploads do: a large folder would outlast the client's timeout, and its
        # retries would start the same import again. folders.files.retrieve shows their progress.
        settings = dataclasses.replace(settings, load_files=False)
        imported = import_agent_file(state.storage, document, user_id=user.id, settings=settings, options=options)
        for record in {f.id: f for i in imported for f in i.files}.values():
            if record.status is FileStatus.PENDING:
                jobs.submit(record.id)
        return ImportResult(agent_ids=[i.state.id for i in imported], imported=[ImportedOut.of(i) for i in imported])

    return imports.run(work)
