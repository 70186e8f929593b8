"""Folders (memgpt's sources), their files, and which agents they are attached to (Letta's ``folders``,
``folders.files``, ``folders.agents`` and ``agents.folders``).

An upload is stored and answered at once (``processing_status`` pending); ``FileJobs`` loads it with the
loader `memgpt load` uses, and ``folders.files.retrieve`` shows how far it got. Attaching links a folder
to an agent's archival memory; nothing is copied.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile

from memgpt.agent import manager
from memgpt.data import files as folder_files
from memgpt.data.files import DuplicateHandling
from memgpt.data.sources import create_source, delete_source, list_sources, source_by_id
from memgpt.server.jobs import FileJobs
from memgpt.server.paging import Order, page
from memgpt.server.routes.agents import find_agent
from memgpt.server.schemas.common import configured_space
from memgpt.server.schemas.folders import FileMetadataOut, FolderCreate, FolderOut
from memgpt.server.state import CurrentUser, ServerState, State
from memgpt.types import FileRecord, Source

router = APIRouter(tags=["folders"])


async def file_jobs(request: Request) -> FileJobs:
    return request.app.state.file_jobs  # type: ignore[no-any-return]


Jobs = Annotated[FileJobs, Depends(file_jobs)]
After = Annotated[str | None, Query(description="Only items after this id, in the requested order")]
Before = Annotated[str | None, Query(description="Only items before this id, in the requested order")]
OrderBy = Annotated[Literal["created_at"], Query()]


def _folder(state: ServerState, source: Source) -> FolderOut:
    return FolderOut.of(source, state.config.embedding)


# -- folders -------------------------------------------------------------------------------------
@router.get("/v1/folders/", response_model=list[FolderOut])
@router.get("/v1/folders", response_model=list[FolderOut], include_in_schema=False)
def list_folders(
    state: State,
    user: CurrentUser,
    after: After = None,
    before: Before = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    order: Order = "asc",
    order_by: OrderBy = "created_at",
    name: str | None = None,
) -> list[FolderOut]:
    sources = list_sources(state.storage, user.id)
    if name is not None:
        sources = [s for s in sources if s.name == name.strip()]

    def place(cursor: str) -> int | None:  # a folder deleted since it was listed (a loop deleting each one)
        gone = state.storage.metadata.deleted_source(user.id, cursor)
        return None if gone is None else sum((s.created_at, s.name) < gone for s in sources)

    chosen = page(sources, key=lambda s: s.id, after=after, before=before, limit=limit, order=order, place=place)
    return [_folder(state, s) for s in chosen]


@router.post("/v1/folders/", response_model=FolderOut)
@router.post("/v1/folders", response_model=FolderOut, include_in_schema=False)
def create_folder(body: FolderCreate, state: State, user: CurrentUser) -> FolderOut:
    """An empty folder on the server's embedding model; upload files into it."""
    state.models().check_embedding(body.embedding, body.embedding_config)  # folders use the server's model
    source = create_source(
        state.storage,
        user.id,
        body.name,
        configured_space(state.config.embedding),
        body.description or "",
        instructions=body.instructions or "",
        metadata=body.metadata,
    )
    return _folder(state, source)


@router.get("/v1/folders/{folder_id}", response_model=FolderOut)
def retrieve_folder(folder_id: str, state: State, user: CurrentUser) -> FolderOut:
    return _folder(state, source_by_id(state.storage, user.id, folder_id))


@router.delete("/v1/folders/{folder_id}")
def delete_folder(folder_id: str, state: State, user: CurrentUser, jobs: Jobs) -> None:
    """Delete the folder with its files and passages; agents it was attached to lose the link."""
    source = source_by_id(state.storage, user.id, folder_id)
    jobs.cancel([f.id for f in state.storage.files.list(source.id)])
    delete_source(state.storage, source)


@router.get("/v1/folders/{folder_id}/agents", response_model=list[str])
def list_folder_agents(
    folder_id: str,
    state: State,
    user: CurrentUser,
    after: After = None,
    before: Before = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    order: Order = "asc",
) -> list[str]:
    """The ids of the agents the folder is attached to."""
    source = source_by_id(state.storage, user.id, folder_id)
    ids = state.storage.attachments.agent_ids(source.id)
    return page(ids, key=str, after=after, before=before, limit=limit, order=order)


# -- files ---------------------------------------------------------------------------------------
def _file_out(state: ServerState, source: Source, record: FileRecord, include_content: bool) -> FileMetadataOut:
    content = folder_files.file_text(state.storage, source, record) if include_content else None
    return FileMetadataOut.of(record, content)


@router.post("/v1/folders/{folder_id}/upload", response_model=FileMetadataOut)
def upload_file(
    folder_id: str,
    state: State,
    user: CurrentUser,
    jobs: Jobs,
    response: Response,
    file: Annotated[UploadFile, File(description="The file to load into the folder")],
    duplicate_handling: DuplicateHandling = DuplicateHandling.SUFFIX,
    name: Annotated[str | None, Query(description="Store the file under this name instead")] = None,
) -> FileMetadataOut:
    """Store the file and answer at once (pending); it is loaded in the background. Poll
    ``GET /v1/folders/{folder_id}/files/{file_id}`` until it is completed or error."""
    source = source_by_id(state.storage, user.id, folder_id)
    given = file.content_type or ""
    upload = folder_files.take_upload(
        state.storage,
        state.home,
        source,
        name or file.filename or "",
        file.file,
        space=configured_space(state.config.embedding),
        content_type="" if given == "application/octet-stream" else given,
        duplicate_handling=duplicate_handling,
        original_name=file.filename or "",
        cancel=jobs.cancel,
    )
    if upload.skipped:
        response.headers["X-Upload-Result"] = "skipped"
    else:
        jobs.submit(upload.record.id)
    return FileMetadataOut.of(upload.record)


@router.get("/v1/folders/{folder_id}/files", response_model=list[FileMetadataOut])
def list_files(
    folder_id: str,
    state: State,
    user: CurrentUser,
    after: After = None,
    before: Before = None,
    limit: Annotated[int, Query(ge=1)] = 1000,
    order: Order = "asc",
    order_by: OrderBy = "created_at",
    include_content: bool = False,
) -> list[FileMetadataOut]:
    source = source_by_id(state.storage, user.id, folder_id)
    records = state.storage.files.list(source.id)
    chosen = page(records, key=lambda f: f.id, after=after, before=before, limit=limit, order=order)
    return [_file_out(state, source, r, include_content) for r in chosen]


@router.get("/v1/folders/{folder_id}/files/{file_id}", response_model=FileMetadataOut)
def retrieve_file(
    folder_id: str, file_id: str, state: State, user: CurrentUser, include_content: bool = False
) -> FileMetadataOut:
    """A file and where its load is (``processing_status``, ``chunks_embedded`` of ``total_chunks``)."""
    source = source_by_id(state.storage, user.id, folder_id)
    return _file_out(state, source, folder_files.get_file(state.storage, source, file_id), include_content)


@router.delete("/v1/folders/{folder_id}/{file_id}", status_code=204)
def delete_file(folder_id: str, file_id: str, state: State, user: CurrentUser, jobs: Jobs) -> Response:
    """Delete the file and its passages (a load still running is stopped first)."""
    source = source_by_id(state.storage, user.id, folder_id)
    record = folder_files.get_file(state.storage, source, file_id)
    jobs.cancel([record.id])
    folder_files.delete_file(state.storage, source, record)
    return Response(status_code=204)


# -- agents and folders --------------------------------------------------------------------------
@router.patch("/v1/agents/{agent_id}/folders/attach/{folder_id}")
def attach_folder(agent_id: str, folder_id: str, state: State, user: CurrentUser) -> None:
    """Link the folder to the agent's archival memory (nothing is copied)."""
    agent = find_agent(state, user.id, agent_id)
    manager.attach_source(state.storage, agent, source_by_id(state.storage, user.id, folder_id))


@router.patch("/v1/agents/{agent_id}/folders/detach/{folder_id}")
def detach_folder(agent_id: str, folder_id: str, state: State, user: CurrentUser) -> None:
    agent = find_agent(state, user.id, agent_id)
    manager.detach_source(state.storage, agent, source_by_id(state.storage, user.id, folder_id))


@router.get("/v1/agents/{agent_id}/folders", response_model=list[FolderOut])
def list_agent_folders(
    agent_id: str,
    state: State,
    user: CurrentUser,
    after: After = None,
    before: Before = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    order: Order = "desc",
    order_by: OrderBy = "created_at",
) -> list[FolderOut]:
    agent = find_agent(state, user.id, agent_id)
    sources = sorted(manager.attached_sources(state.storage, agent), key=lambda s: (s.created_at, s.id))
    chosen = page(sources, key=lambda s: s.id, after=after, before=before, limit=limit, order=order)
    return [_folder(state, s) for s in chosen]
