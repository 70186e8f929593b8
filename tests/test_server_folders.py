"""Folders, uploads, agent↔folder links and Agent Files through Letta's own client (letta-client 1.12.1)
against a real server: uploads are answered at once and loaded in the background with progress, a folder
attached to an agent is searched in its turns, users never see each other's folders, and a load cut short
by kill -9 is finished on the next start."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import APIStatusError, BadRequestError, ConflictError, Letta, NotFoundError
from sqlalchemy import select

from memgpt.config import load_config, save_config
from memgpt.data.ingest import LoadReport, SourceLoader
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import ConflictError as MemGPTConflictError
from memgpt.errors import UserError
from memgpt.memory.archival import ArchivalMemory
from memgpt.owners import this_process
from memgpt.server import jobs
from memgpt.storage.files import FileStore
from memgpt.storage.filters import eq
from memgpt.storage.sql import MetadataStore
from memgpt.types import DocumentStatus, EmbeddingSpace, FileRecord, FileStatus, utc_now
from tests import web
from tests.conftest import DATA, PAPER, cli
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, ServerProcess, auth, retrying_letta, use_scripted_llm

AGENT_FILES = DATA / "agent-files"
SPACE = EmbeddingSpace("all-MiniLM-L6-v2", 384)


@pytest.fixture
def server(request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM) -> Iterator[LiveServer]:
    if "metadata_url" in request.fixturenames:  # the database is chosen before the server opens it
        request.getfixturevalue("metadata_url")
    live = LiveServer(home, use_scripted_llm(home, llm.url))
    yield live
    live.stop()


def client_for(server: LiveServer, user: str | None = None) -> Letta:
    return Letta(base_url=server.url, api_key=server.key(user))


def wait_until_loaded(client: Letta, folder_id: str, file_id: str, timeout: float = 600) -> tuple[Any, list[Any]]:
    """Poll the file until its load ends; the final file and every state seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = client.folders.files.retrieve(file_id, folder_id=folder_id)
        seen.append(current)
        if current.processing_status in ("completed", "error"):
            return current, seen
        time.sleep(0.1)
    pytest.fail(f"file {file_id} still {seen[-1].processing_status} after {timeout} s")


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_folders_are_created_listed_paged_and_deleted(server: LiveServer) -> None:
    client = client_for(server)
    made = [client.folders.create(name=f"f{n}", description=f"folder {n}") for n in range(5)]
    assert all(f.id.startswith("source-") and f.embedding_config.embedding_dim == 384 for f in made)
    assert made[0].embedding_config.handle == "local/all-MiniLM-L6-v2" and made[0].description == "folder 0"
    assert [f.name for f in client.folders.list()] == ["f0", "f1", "f2", "f3", "f4"]  # oldest first
    first = client.folders.list(limit=2)
    assert [f.name for f in first.items] == ["f0", "f1"]
    assert [f.name for f in client.folders.list(limit=2)] == ["f0", "f1", "f2", "f3", "f4"]  # iterating pages on
    assert [f.name for f in client.folders.list(limit=2, order="desc", after=made[3].id).items] == ["f2", "f1"]
    assert [f.name for f in client.folders.list(before=made[3].id, limit=2).items] == ["f1", "f2"]
    assert client.folders.list(after="source-unknown").items == []
    assert [f.id for f in client.folders.list(name="f3")] == [made[3].id]
    assert client.folders.retrieve(made[2].id).name == "f2"
    with_instructions = client.folders.create(name="docs", instructions="Cite the page.", metadata={"team": "a"})
    again = client.folders.retrieve(with_instructions.id)
    assert (again.instructions, again.metadata) == ("Cite the page.", {"team": "a"})

    key = auth(server.key())
    taken = web.post(f"{server.url}/v1/folders/", json={"name": "f1"}, headers=key)
    assert taken.status_code == 409 and taken.headers["x-should-retry"] == "false"
    assert taken.json() == {"detail": "a source named 'f1' already exists; pick another name"}
    with pytest.raises(BadRequestError, match="not this server's embedding model 'local/all-MiniLM-L6-v2'"):
        client.folders.create(name="openai", embedding="openai/text-embedding-3-small")
    with pytest.raises(BadRequestError, match="not this server's embedding model"):
        client.folders.create(name="openai", embedding_config={"embedding_model": "x", "embedding_dim": 1536,
                                                               "embedding_endpoint_type": "openai"})

    assert client.folders.delete(made[0].id) is None
    with pytest.raises(NotFoundError, match="no source \\(folder\\) with id"):
        client.folders.retrieve(made[0].id)
    assert len(list(client.folders.list())) == 5


def test_uploads_load_in_the_background_and_an_attached_folder_is_searched(
    server: LiveServer, llm: ScriptedLLM, model: LocalMiniLM
) -> None:
    client = client_for(server)
    folder = client.folders.create(name="papers")
    started = time.monotonic()
    paper = client.folders.files.upload(folder.id, file=PAPER.open("rb"))
    assert time.monotonic() - started < 5  # answered at once, loaded afterwards
    assert paper.processing_status == "pending" and paper.id.startswith("file-") and paper.source_id == folder.id
    assert (paper.file_name, paper.file_type, paper.file_size) == (PAPER.name, "application/pdf", PAPER.stat().st_size)
    others = [
        client.folders.files.upload(folder.id, file=(DATA / name).open("rb"))
        for name in ("test.md", "long_test.txt", "test.csv", "test.json", "philosophical_question.txt")
    ]

    done, seen = wait_until_loaded(client, folder.id, paper.id)
    assert done.processing_status == "completed" and done.error_message is None
    assert done.total_chunks == done.chunks_embedded > 50
    statuses = [s.processing_status for s in seen]
    assert "embedding" in statuses and statuses.index("embedding") < statuses.index("completed")
    progress = [s.chunks_embedded for s in seen if s.processing_status == "embedding"]
    assert progress == sorted(progress) and all(s.total_chunks == done.total_chunks for s in seen[-2:])
    for upload in others:
        loaded, _ = wait_until_loaded(client, folder.id, upload.id)
        assert loaded.processing_status == "completed" and loaded.total_chunks > 0, loaded
    listed = client.folders.files.list(folder.id)
    assert [f.file_name for f in listed] == [PAPER.name, "test.md", "long_test.txt", "test.csv", "test.json",
                                             "philosophical_question.txt"]
    assert [f.id for f in client.folders.files.list(folder.id, limit=2, after=listed.items[1].id).items] == [
        listed.items[2].id,
        listed.items[3].id,
    ]
    with_text = client.folders.files.retrieve(others[0].id, folder_id=folder.id, include_content=True)
    assert with_text.content == (DATA / "test.md").read_text(encoding="utf-8")
    assert client.folders.retrieve(folder.id).passages == sum(f.total_chunks for f in listed)

    agent = client.agents.create(name="reader")
    assert client.agents.folders.attach(folder.id, agent_id=agent.id) is None
    assert client.folders.agents.list(folder.id) == [agent.id]
    assert [f.id for f in client.agents.folders.list(agent.id)] == [folder.id]
    llm.add(
        {
            "tool": "archival_memory_search",
            "args": {"query": "deep memory retrieval", "request_heartbeat": True},
            "content": "Let me look it up.",
        }
    )
    llm.reply("The paper evaluates deep memory retrieval.")
    turn = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "What does it test?"}])
    (result,) = [m for m in turn.messages if m.message_type == "tool_return_message"]
    assert result.status == "success" and PAPER.name in result.tool_return
    assert "deep memory retrieval" in result.tool_return.lower()

    # Every passage id the API gives is Letta's shape (a folder's were 32 bare hex digits) and is taken back.
    own = client.agents.passages.create(agent.id, text="My own note on deep memory retrieval benchmarks.")
    found = client.agents.passages.search(agent.id, query="deep memory retrieval", top_k=20).results
    assert own[0].id in {r.id for r in found} and any(r.source_id == folder.id for r in found)
    assert all(re.fullmatch(r"passage-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", r.id) for r in found), found
    from_folder = next(r for r in found if r.source_id == folder.id)
    refused = rf"passage '{from_folder.id}' is part of file '.+' of folder {folder.id}"
    with pytest.raises(BadRequestError, match=refused):
        client.agents.passages.delete(from_folder.id, agent_id=agent.id)
    client.agents.passages.delete(own[0].id, agent_id=agent.id)
    assert own[0].id not in {r.id for r in client.agents.passages.search(agent.id, query="own note").results}
    with pytest.raises(NotFoundError):
        client.agents.passages.delete(own[0].id, agent_id=agent.id)

    archival = ArchivalMemory(server.state.storage, model, agent_id=agent.id, user_id=server.state.owner.id)
    before = archival.count()
    client.folders.files.delete(paper.id, folder_id=folder.id)
    with pytest.raises(NotFoundError):
        client.folders.files.retrieve(paper.id, folder_id=folder.id)
    assert archival.count() == before - done.total_chunks
    assert not (server.home / "files" / folder.id / paper.id).exists()
    assert client.agents.folders.detach(folder.id, agent_id=agent.id) is None
    assert client.folders.agents.list(folder.id) == [] and archival.count() == 0
    with pytest.raises(BadRequestError, match="is not attached to agent 'reader'"):
        client.agents.folders.detach(folder.id, agent_id=agent.id)


def test_what_cannot_be_loaded_is_refused_or_reported_in_one_line(server: LiveServer, tmp_path: Path) -> None:
    client = client_for(server)
    folder = client.folders.create(name="mixed")
    broken = client.folders.files.upload(folder.id, file=(DATA / "encrypted.pdf").open("rb"))
    failed, _ = wait_until_loaded(client, folder.id, broken.id)
    assert failed.processing_status == "error"
    assert failed.error_message == "encrypted PDF (needs a password); decrypt it first"

    with pytest.raises(APIStatusError) as unsupported:
        client.folders.files.upload(folder.id, file=("tool.exe", b"MZ\x90\x00"))
    assert unsupported.value.status_code == 415
    assert unsupported.value.body["detail"].startswith("tool.exe: files of type '.exe' cannot be loaded; supported:")
    with pytest.raises(BadRequestError, match=r"empty\.md: the uploaded file is empty"):
        client.folders.files.upload(folder.id, file=("empty.md", b""))
    key = auth(server.key())
    url = f"{server.url}/v1/folders/{folder.id}/upload"
    no_boundary = web.post(url, content=b"junk", headers={**key, "content-type": "multipart/form-data"})
    no_file = web.post(url, files={"other": ("a.md", b"x")}, headers=key)
    assert 400 <= no_boundary.status_code < 500 and "detail" in no_boundary.json()
    assert no_file.status_code == 422 and no_file.json()["detail"][0]["loc"] == ["body", "file"]
    bad_choice = web.post(url, params={"duplicate_handling": "merge"}, files={"file": ("a.md", b"x")}, headers=key)
    assert bad_choice.status_code == 422
    assert [f.file_name for f in client.folders.files.list(folder.id)] == ["encrypted.pdf"]

    note = tmp_path / "note.md"
    note.write_text("Miso is a cat.", encoding="utf-8")
    first = client.folders.files.upload(folder.id, file=note.open("rb"))
    with pytest.raises(ConflictError, match=r"file 'note\.md' already exists in folder 'mixed'"):
        client.folders.files.upload(folder.id, file=note.open("rb"), duplicate_handling="error")
    skipped = client.folders.files.with_raw_response.upload(folder.id, file=note.open("rb"), duplicate_handling="skip")
    assert skipped.headers["x-upload-result"] == "skipped" and skipped.parse().id == first.id
    suffixed = client.folders.files.upload(folder.id, file=note.open("rb"))
    assert suffixed.file_name == "note (1).md" and suffixed.original_file_name == "note.md"
    renamed = client.folders.files.upload(folder.id, file=note.open("rb"), name="cats.md")
    assert renamed.file_name == "cats.md"
    replaced = client.folders.files.upload(folder.id, file=note.open("rb"), duplicate_handling="replace")
    assert replaced.id != first.id and replaced.file_name == "note.md"
    with pytest.raises(NotFoundError):
        client.folders.files.retrieve(first.id, folder_id=folder.id)
    # Each copy loads as a file of its own (as in Letta), never failed as "same content as note.md": its passages
    # are its own, so deleting one copy leaves the others searchable.
    for upload in (suffixed, renamed, replaced):
        done = wait_until_loaded(client, folder.id, upload.id)[0]
        assert (done.processing_status, done.error_message, done.total_chunks) == ("completed", None, 1)
    store = server.state.storage.passages(SPACE)
    assert store.count(eq("source_id", folder.id)) == 3
    client.folders.files.delete(replaced.id, folder_id=folder.id)
    assert store.count(eq("source_id", folder.id)) == 2
    documents = server.state.storage.metadata.documents(folder.id)
    assert sorted(d.file_name for d in documents if d.status is DocumentStatus.READY) == ["cats.md", "note (1).md"]


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_users_never_see_each_others_folders(server: LiveServer) -> None:
    alice, bob = client_for(server, "alice"), client_for(server, "bob")
    folder = alice.folders.create(name="private")
    upload = alice.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
    agent = alice.agents.create(name="alices")
    alice.agents.folders.attach(folder.id, agent_id=agent.id)
    bobs_folder = bob.folders.create(name="private")  # the same name is fine: names are per user
    bobs_agent = bob.agents.create(name="bobs")

    assert [f.id for f in bob.folders.list()] == [bobs_folder.id]
    assert bob.folders.list(name="private").items[0].id == bobs_folder.id
    attempts = [
        lambda: bob.folders.retrieve(folder.id),
        lambda: bob.folders.delete(folder.id),
        lambda: bob.folders.files.list(folder.id),
        lambda: bob.folders.files.retrieve(upload.id, folder_id=folder.id),
        lambda: bob.folders.files.retrieve(upload.id, folder_id=bobs_folder.id),
        lambda: bob.folders.files.delete(upload.id, folder_id=folder.id),
        lambda: bob.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb")),
        lambda: bob.folders.agents.list(folder.id),
        lambda: bob.agents.folders.attach(folder.id, agent_id=bobs_agent.id),
        lambda: bob.agents.folders.attach(bobs_folder.id, agent_id=agent.id),
        lambda: bob.agents.folders.list(agent.id),
        lambda: bob.agents.export_file(agent.id),
    ]
    for attempt in attempts:
        with pytest.raises(NotFoundError):
            attempt()
    made_up = "source-00000000-0000-4000-8000-000000000000"
    bobs_key = auth(server.key("bob"))
    guessed = web.get(f"{server.url}/v1/folders/{made_up}", headers=bobs_key)
    real = web.get(f"{server.url}/v1/folders/{folder.id}", headers=bobs_key)
    assert real.status_code == guessed.status_code == 404
    assert real.json()["detail"] == guessed.json()["detail"].replace(made_up, folder.id)
    assert alice.folders.agents.list(folder.id) == [agent.id]
    assert wait_until_loaded(alice, folder.id, upload.id)[0].processing_status == "completed"


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_deleting_a_folder_unlinks_it_and_removes_its_files(server: LiveServer) -> None:
    client = client_for(server)
    folder = client.folders.create(name="short-lived")
    upload = client.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
    wait_until_loaded(client, folder.id, upload.id)
    agent = client.agents.create(name="holder")
    client.agents.folders.attach(folder.id, agent_id=agent.id)
    client.folders.delete(folder.id)
    assert client.agents.folders.list(agent.id).items == []
    store = server.state.storage.passages(SPACE)
    assert store.count(eq("source_id", folder.id)) == 0
    assert not (server.home / "files" / folder.id).exists()
    assert server.state.storage.files.list(folder.id) == []

    # Deleted while its file loads: the load stops first, so nothing of it is written afterwards.
    busy = client.folders.create(name="busy")
    loading = client.folders.files.upload(busy.id, file=PAPER.open("rb"))
    while client.folders.files.retrieve(loading.id, folder_id=busy.id).processing_status != "embedding":
        time.sleep(0.05)
    client.folders.delete(busy.id)
    after = client.folders.create(name="after")
    queued = client.folders.files.upload(after.id, file=(DATA / "test.md").open("rb"))
    assert wait_until_loaded(client, after.id, queued.id)[0].processing_status == "completed"  # ran after it
    assert store.count(eq("source_id", busy.id)) == 0
    assert not (server.home / "files" / busy.id).exists()


def test_files_loaded_with_memgpt_load_show_in_the_folder(server: LiveServer, model: LocalMiniLM) -> None:
    storage = server.state.storage
    loader = SourceLoader(storage, model, user_id=server.state.owner.id, chunk_size=250, chunk_overlap=25)
    assert loader.load("from-cli", [DATA / "test.md", DATA / "test.csv"]).ok
    client = client_for(server)
    (folder,) = client.folders.list(name="from-cli")
    files = client.folders.files.list(folder.id)
    assert [(f.file_name, f.processing_status) for f in files] == [("test.md", "completed"), ("test.csv", "completed")]
    assert files.items[0].file_path == str((DATA / "test.md").resolve())  # the user's own file, not an upload


def test_a_folder_on_another_embedding_model_is_flagged_and_refused(server: LiveServer) -> None:
    from memgpt.data.sources import new_source

    storage = server.state.storage
    other = storage.metadata.create_source(
        new_source(server.state.owner.id, "openai-docs", EmbeddingSpace("text-embedding-3-small", 1536))
    )
    client = client_for(server)
    shown = client.folders.retrieve(other.id)
    assert shown.embedding_config.embedding_model == "text-embedding-3-small"
    assert "this server embeds with all-MiniLM-L6-v2 (384 dims)" in shown.warning
    with pytest.raises(BadRequestError, match="folder 'openai-docs' was embedded with text-embedding-3-small"):
        client.folders.files.upload(other.id, file=(DATA / "test.md").open("rb"))
    agent = client.agents.create(name="plain")
    with pytest.raises(BadRequestError, match="source 'openai-docs' was embedded with text-embedding-3-small"):
        client.agents.folders.attach(other.id, agent_id=agent.id)


# -- Agent Files ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_agent_files_import_and_export_through_the_client(server: LiveServer, llm: ScriptedLLM) -> None:
    client = client_for(server)
    ids = {}
    for path in sorted(AGENT_FILES.glob("*.af")):
        answer = client.agents.import_file(file=path.open("rb"))
        (ids[path.name],) = answer.agent_ids
        report = answer.to_dict()["imported"][0]
        assert report["agent_id"] == ids[path.name]
    custom = client.agents.import_file(file=(AGENT_FILES / "customer_service.af").open("rb")).to_dict()["imported"][0]
    assert custom["name"] == "customer_service_copy_2"  # Letta's "_copy" (the default), then a free name
    assert custom["custom_tools_not_installed"] == ["terminate_chat", "escalate", "cancel_order", "check_order_status"]
    assert custom["tools_mapped"]["memory_insert"] == ["core_memory_append"]
    research = client.agents.retrieve(ids["deep_research_agent.af"])
    assert research.name == "deep-thought-research-agent_copy"
    assert {b.label: b.limit for b in research.blocks}["research_citations"] == 5000

    llm.reply("Hello from an imported agent.")
    turn = client.agents.messages.create(ids["memgpt_agent.af"], messages=[{"role": "user", "content": "hi"}])
    said = [m.content for m in turn.messages if m.message_type == "assistant_message"]
    assert said == ["Hello from an imported agent."]

    exported = client.agents.export_file(ids["memgpt_agent.af"])
    assert isinstance(exported, str)
    document = json.loads(exported)
    assert [m["role"] for m in document["agents"][0]["messages"]][:2] == ["system", "user"]
    back = client.agents.import_file(
        file=("memgpt_agent.af", exported.encode()), name="round-trip", append_copy_suffix=False
    )
    again = client.agents.retrieve(back.agent_ids[0])
    assert again.name == "round-trip"
    history = client.agents.messages.list(again.id, order="asc")
    assert [m.content for m in history if m.message_type == "assistant_message"] == said
    scrubbed = json.loads(client.agents.export_file(again.id, scrub_messages=True))
    assert scrubbed["agents"][0]["messages"] == []
    with pytest.raises(BadRequestError, match="legacy agent file format is not supported"):
        client.agents.export_file(again.id, use_legacy_format=True)
    # A name given is used as given (append_copy_suffix defaults to True: it names the file's agent "..._copy"),
    # ``name`` before the deprecated ``override_name``; a taken one gets "_2" (Letta's names need not be unique).
    renamed = client.agents.import_file(file=("memgpt_agent.af", exported.encode()), override_name="renamed")
    assert client.agents.retrieve(renamed.agent_ids[0]).name == "renamed"
    both = client.agents.import_file(file=("m.af", exported.encode()), name="by-name", override_name="not-this")
    assert client.agents.retrieve(both.agent_ids[0]).name == "by-name"
    taken = client.agents.import_file(file=("memgpt_agent.af", exported.encode()), override_name="renamed")
    assert client.agents.retrieve(taken.agent_ids[0]).name == "renamed_2"
    with pytest.raises(ConflictError, match="an agent named 'round-trip' already exists"):
        client.agents.import_file(
            file=("x.af", exported.encode()),
            name="round-trip",
            append_copy_suffix=False,
            extra_body={"on_name_clash": "error"},
        )
    with pytest.raises(BadRequestError, match=r"corrupt\.af: not an agent file \(not JSON: Expecting"):
        client.agents.import_file(file=("corrupt.af", b'{"agents": ['))
    with pytest.raises(BadRequestError, match="not this server's embedding model"):
        client.agents.import_file(
            file=("x.af", exported.encode()), x_override_embedding_model="openai/text-embedding-3-small"
        )
    with pytest.raises(BadRequestError, match="secrets must be a JSON object string"):
        client.agents.import_file(file=("x.af", exported.encode()), secrets="[1]")
    before = {a.id for a in client.agents.list()}
    assert before == {a.id for a in client.agents.list()}


@pytest.mark.usefixtures("metadata_url")  # the runs and leases that record an import, on SQLite and on PostgreSQL
def test_a_retried_import_answers_with_the_agent_the_first_attempt_made(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """letta-client retries an import that timed out with the same file: the retries get the first attempt's agent
    (waiting while it runs), never a second copy. A deliberate second import still makes a copy, as in Letta."""
    from memgpt.server.routes import agentfile as route

    calls: list[float] = []
    real = route.import_agent_file

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(2.0)  # outlasts the client's timeout below
        return real(*args, **kwargs)

    monkeypatch.setattr(route, "import_agent_file", slow)
    impatient, retries = retrying_letta(server, max_retries=4, timeout=1.5)
    content = (AGENT_FILES / "memgpt_agent.af").read_bytes()
    answer = impatient.agents.import_file(file=("memgpt_agent.af", content))
    assert retries[0] == "0" and len(retries) >= 2, retries  # it timed out at least once and was sent again
    assert len(calls) == 1, "a retry imported the file again"
    (made,) = answer.agent_ids
    assert [a.id for a in client_for(server).agents.list()] == [made]
    again = client_for(server).agents.import_file(file=("memgpt_agent.af", content))  # on purpose: a copy
    assert len(calls) == 2 and again.agent_ids != [made]
    assert len(list(client_for(server).agents.list())) == 2


@pytest.mark.usefixtures("metadata_url")
def test_a_retry_that_overtakes_its_first_try_imports_once(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first try of an import is held up before it records its run; the retry, finding none, imports, and the
    first try answers with the retry's agents rather than importing a second copy. Ordered by events, not time."""
    from memgpt.server.retried import RetriedWrite

    real = RetriedWrite.run
    held, retried = threading.Event(), threading.Event()

    def overtaken(self: RetriedWrite[Any], work: Any) -> Any:
        if not held.is_set():  # the first try: held up until its retry answered
            held.set()
            assert retried.wait(60)
        return real(self, work)

    monkeypatch.setattr(RetriedWrite, "run", overtaken)
    url, headers = f"{server.url}/v1/agents/import", auth(server.key())
    content = (AGENT_FILES / "memgpt_agent.af").read_bytes()

    def send(extra: dict[str, str]) -> httpx.Response:
        files = {"file": ("memgpt_agent.af", content)}
        return web.post(url, files=files, headers={**headers, **extra}, timeout=120)

    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(send({})))
    first.start()
    assert held.wait(60)
    again = send({"X-Stainless-Retry-Count": "1"})
    retried.set()
    first.join(120)
    assert again.status_code == 200 and answers and answers[0].status_code == 200, (again.text, answers)
    assert answers[0].json() == again.json()
    assert [a.id for a in client_for(server).agents.list()] == again.json()["agent_ids"]


def test_a_retry_finds_what_became_of_the_import_it_repeats(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry imports anew when the first attempt failed or its process died (an import is all or nothing, so
    nothing of it is stored), answers with a finished attempt's agents, and waits for a running one (then 409)."""
    from memgpt.server import retried
    from memgpt.server.routes import agentfile as route
    from memgpt.storage.turns import HOST, Run, new_owner

    turns, user_id = server.state.storage.turns, server.state.owner.id
    imports = route._Imports(server.state.turns(), user_id, "d" * 64)
    assert imports.earlier() is None  # no first attempt reached this server
    dead = f"{HOST}:{os.getpid()}:0:{'0' * 32}"  # this pid, started at another time: a process that is gone
    assert turns.acquire("run-dead", dead, "run-dead", 600, run=Run("run-dead", imports.key, imports.digest))
    began = time.monotonic()
    assert imports.earlier() is None and time.monotonic() - began < 5  # at once, not after the wait

    def failing() -> route.ImportResult:
        raise UserError("not an agent file")

    with pytest.raises(UserError):
        imports.run(failing)
    assert imports.earlier() is None
    done = route.ImportResult(agent_ids=["agent-1"], imported=[])
    assert imports.run(lambda: done) == done
    assert imports.earlier() == done

    running = route._Imports(server.state.turns(), user_id, "e" * 64)
    assert turns.acquire("run-live", new_owner(), "run-live", 600, run=Run("run-live", running.key, running.digest))
    monkeypatch.setattr(retried, "RETRY_WAIT", 0.5)
    with pytest.raises(MemGPTConflictError, match="the import this request retries is still running"):
        running.earlier()


@pytest.mark.usefixtures("metadata_url")
def test_a_finished_imports_run_outlives_other_writes_for_its_retry(server: LiveServer) -> None:
    """An import's run is keyed by its user (``import:<user id>``), not by an agent: another write's record, which
    forgets the runs of deleted agents, leaves it, so a late retry still gets its agents rather than a copy."""
    from pydantic import TypeAdapter

    from memgpt.server.retried import RetriedWrite
    from memgpt.server.routes import agentfile as route

    runner, user_id = server.state.turns(), server.state.owner.id
    done = route.ImportResult(agent_ids=["agent-1"], imported=[])
    assert route._Imports(runner, user_id, "c" * 64).run(lambda: done) == done
    other = RetriedWrite(runner, "passages:gone", "b" * 64, TypeAdapter(list[str]), "still running")
    assert other.run(lambda: ["passage-1"]) == ["passage-1"]  # recorded with a sweep of what deleted agents left
    assert route._Imports(runner, user_id, "c" * 64).earlier() == done  # (a retry's look for its first try)


def test_an_import_holds_a_lease_of_the_servers_length_renewed_while_it_runs(server: LiveServer) -> None:
    """A retry takes an attempt whose lease is gone for a dead one: the lease lasts ``lease_ttl`` (a process that
    died is seen within one lease, not the whole retry window) and is renewed while a longer import runs."""
    from memgpt.server.routes import agentfile as route
    from memgpt.storage.turns import _LEASES

    runner = server.state.turns()
    runner.timing = dataclasses.replace(runner.timing, lease_ttl=1.0, renew_every=0.2)
    imports = route._Imports(runner, server.state.owner.id, "f" * 64)
    done = route.ImportResult(agent_ids=["agent-1"], imported=[])
    seen: list[tuple[str | None, float]] = []

    def work() -> route.ImportResult:
        time.sleep(2.0)  # twice the lease
        turns = server.state.storage.turns
        run = turns.recent_run(imports.key, imports.digest, utc_now() - timedelta(minutes=1))
        assert run is not None
        with server.state.storage.metadata.connection() as c:
            expires = c.execute(select(_LEASES.c.expires_at).where(_LEASES.c.agent_id == run.id)).scalar_one()
        seen.append((turns.running_run(run.id), (expires - utc_now()).total_seconds()))
        return done

    assert imports.run(work) == done
    ((running, left),) = seen
    assert running is not None, "the import's lease expired while it ran"
    assert left <= 1.0, f"the lease runs {left:.0f} s more: a dead import would block retries that long"


def test_bodies_and_files_over_the_limits_are_refused(home: Path, llm: ScriptedLLM) -> None:
    config = use_scripted_llm(home, llm.url)
    config.server.max_upload_mb = 0.02  # 20,000 bytes; the smallest example file has 24,427
    config.embedding.max_file_mb = 0.001  # the loader's own limit per file, as for `memgpt load`
    save_config(config, home)
    live = LiveServer(home, config)
    try:
        client = client_for(live)
        with pytest.raises(APIStatusError) as refused:
            client.agents.import_file(file=(AGENT_FILES / "memgpt_agent_with_convo.af").open("rb"))
        assert refused.value.status_code == 413 and "server.max_upload_mb" in refused.value.body["detail"]
        assert client.agents.list().items == []
        folder = client.folders.create(name="small")
        big = client.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
        failed, _ = wait_until_loaded(client, folder.id, big.id)
        assert failed.processing_status == "error" and "max_file_mb" in failed.error_message
    finally:
        live.stop()


# -- a server killed while loading ------------------------------------------------------------------
@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_a_load_cut_short_by_kill_9_is_finished_on_the_next_start(home: Path) -> None:
    created = cli("key", "create", home=home)  # in this process: not a start-up of its own (~2 CPU s)
    assert created.returncode == 0, created.stderr
    key = next(w for w in created.stdout.split() if w.startswith("sk-"))
    server = ServerProcess(home)
    server.wait_ready()
    try:
        client = Letta(base_url=server.url, api_key=key)
        folder = client.folders.create(name="papers")
        paper = client.folders.files.upload(folder.id, file=PAPER.open("rb"))
        while True:
            current = client.folders.files.retrieve(paper.id, folder_id=folder.id)
            if current.processing_status == "embedding":
                break
            assert current.processing_status in ("pending", "parsing"), current
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    config = load_config(home)
    metadata = MetadataStore(config.metadata_database_url(home))
    try:
        files = FileStore(metadata)
        stuck = files.get(paper.id)
        assert stuck is not None and stuck.status is FileStatus.EMBEDDING and stuck.job_owner
        # A `memgpt load` that died too: its file is the user's own, so it is reported, not loaded again.
        files.add(
            FileRecord(
                id="file-cli", source_id=folder.id, file_name="x.md", path="/nowhere/x.md",
                status=FileStatus.EMBEDDING, job_owner="elsewhere-host:1:x",
            )
        )
        files.add(
            FileRecord(
                id="file-cli-here", source_id=folder.id, file_name="y.md", path="/nowhere/y.md",
                status=FileStatus.PARSING, job_owner=stuck.job_owner,
            )
        )
    finally:
        metadata.close()

    server.start()  # the same port again
    server.wait_ready()
    try:
        client = Letta(base_url=server.url, api_key=key)
        done, _ = wait_until_loaded(client, folder.id, paper.id)
        assert done.processing_status == "completed" and done.total_chunks == done.chunks_embedded > 50
        assert client.folders.retrieve(folder.id).passages == done.total_chunks  # nothing twice, nothing missing
        here = client.folders.files.retrieve("file-cli-here", folder_id=folder.id)
        assert here.processing_status == "error"
        assert here.error_message == "the load was interrupted; run the same `memgpt load` again"
        # Another machine's load is never known dead until it has shown no progress for a while.
        assert client.folders.files.retrieve("file-cli", folder_id=folder.id).processing_status == "embedding"
    finally:
        server.stop()
    from memgpt.storage import Storage

    with Storage(config, home) as storage:
        assert storage.passages(SPACE).count(eq("source_id", folder.id)) == done.total_chunks


def test_a_load_whose_process_died_is_taken_over_by_a_running_server(
    home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two server processes share a home; the one loading an upload is killed and not started again. The other,
    running all along, finishes the load (it looked for such loads only when it started: the file showed
    `embedding` until some server process started)."""
    monkeypatch.setattr(jobs, "SWEEP_SECONDS", 0.2, raising=False)  # without a sweep: fail by waiting
    live = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        client = client_for(live)
        folder = client.folders.create(name="papers")
        upload = client.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
        done, _ = wait_until_loaded(client, folder.id, upload.id)
        passages = client.folders.retrieve(folder.id).passages
        assert done.processing_status == "completed" and passages == done.total_chunks > 0
        finished = subprocess.Popen(["true"])  # a process of this machine that no longer runs: the killed server
        finished.wait()
        dead = f"{socket.gethostname()}:{finished.pid}:killed"
        # As the killed process left it: midway, and its own (the kill left no trace but the row).
        live.state.storage.files.update(upload.id, status=FileStatus.EMBEDDING, chunks_embedded=2, job_owner=dead)

        again, _ = wait_until_loaded(client, folder.id, upload.id, timeout=60)
        assert again.processing_status == "completed" and again.chunks_embedded == again.total_chunks
        assert client.folders.retrieve(folder.id).passages == passages  # loaded again in place: nothing twice
    finally:
        live.stop()


def test_an_imported_agents_files_load_in_the_background_like_uploads(server: LiveServer, llm: ScriptedLLM) -> None:
    """An import answers once its agents exist; the files of their folders are loaded by the server's file
    jobs, as uploads are. A large folder loaded inside the request outlasted letta-client's 60 s timeout, and
    the client's two retries then started two more imports of the same file."""
    client = client_for(server)
    folder = client.folders.create(name="notes")
    upload = client.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
    wait_until_loaded(client, folder.id, upload.id)
    agent = client.agents.create(name="reader")
    client.agents.folders.attach(folder.id, agent_id=agent.id)
    exported = client.agents.export_file(agent.id)

    queued: list[str] = []
    real_submit = server.file_jobs.submit
    server.file_jobs.submit = queued.append  # type: ignore[method-assign]
    try:
        answer = client.agents.import_file(file=("reader.af", exported.encode()), append_copy_suffix=False, name="r2")
    finally:
        server.file_jobs.submit = real_submit  # type: ignore[method-assign]
    (new_id,) = answer.agent_ids
    (new_folder,) = client.agents.folders.list(new_id)
    (record,) = client.folders.files.list(new_folder.id)
    assert record.processing_status == "pending" and queued == [record.id]  # answered before loading it
    real_submit(record.id)
    loaded, _ = wait_until_loaded(client, new_folder.id, record.id)
    assert loaded.processing_status == "completed" and loaded.total_chunks == upload_chunks(client, folder.id)
    assert client.agents.passages.search(new_id, query="markdown heading").count > 0


def upload_chunks(client: Letta, folder_id: str) -> int:
    (record,) = client.folders.files.list(folder_id)
    return record.total_chunks


def test_a_load_another_process_took_over_is_neither_reset_nor_failed_by_this_one(server: LiveServer) -> None:
    """Between this process reading that it loads the file and writing the file's row, another host took the load
    over (its claim): the re-load's reset to pending and a failed load's error are written only while this process
    still loads the file."""
    client = client_for(server)
    folder = client.folders.create(name="taken")
    files = server.state.storage.files
    mine, theirs = this_process(), "elsewhere-host:1:x"
    for file_id in ("file-reloaded", "file-failed"):
        files.add(
            FileRecord(
                id=file_id,
                source_id=folder.id,
                file_name=f"{file_id}.md",
                path=f"/nowhere/{file_id}.md",
                status=FileStatus.EMBEDDING,
                job_owner=mine,
            )
        )
    read = files.get

    def read_then_taken(file_id: str) -> FileRecord | None:
        record = read(file_id)
        assert files.claim(file_id, theirs, previous=mine)  # the other host's takeover, right after the read
        return record

    files.get = read_then_taken  # type: ignore[method-assign]
    try:
        server.file_jobs._load("file-reloaded", again=True)
    finally:
        del files.get
    assert files.claim("file-failed", theirs, previous=mine)
    server.file_jobs._fail("file-failed", "gave up")
    for file_id in ("file-reloaded", "file-failed"):
        record = files.get(file_id)
        assert record is not None
        assert (record.status, record.job_owner, record.error_message) == (FileStatus.EMBEDDING, theirs, ""), file_id


def test_a_storage_away_retry_does_not_take_back_a_load_another_process_took_over(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This process's load stopped because storage went away, and meanwhile another process's sweep took the load
    over: the "try again" write (status pending, this process's retry) must not take the file back, or both
    processes load it."""
    client = client_for(server)
    folder = client.folders.create(name="taken-back")
    files = server.state.storage.files
    mine, theirs = this_process(), "elsewhere-host:1:x"
    files.add(
        FileRecord(
            id="file-away",
            source_id=folder.id,
            file_name="away.md",
            path="/nowhere/away.md",
            status=FileStatus.EMBEDDING,
            job_owner=mine,
        )
    )

    def taken_over_while_storage_away(*args: Any, **kwargs: Any) -> LoadReport:
        assert files.claim("file-away", theirs, previous=mine)  # the other host's sweep, while this load ran
        return LoadReport(source=folder.name, aborted="Milvus went away", storage_away=True)

    monkeypatch.setattr(jobs, "load_file", taken_over_while_storage_away)
    server.file_jobs._load("file-away")
    record = files.get("file-away")
    assert record is not None
    assert (record.status, record.job_owner, record.error_message) == (FileStatus.EMBEDDING, theirs, "")


def test_a_load_storage_went_away_from_is_kept_and_loaded_again(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Milvus out of reach midway through a real load (its first write fails as StorageUnavailable): the row stays
    this process's, pending with why ("...; trying again"), and the retry loads it; the loader must not let the row
    go, or the retry's write (fenced by the owner) changes nothing and the upload ends 'error'."""
    from memgpt.errors import StorageUnavailable
    from memgpt.storage.milvus.store import MilvusPassageStore

    upsert = MilvusPassageStore.upsert
    cuts: list[int] = []

    def away_once(store: MilvusPassageStore, passages: Any) -> None:
        if not cuts:
            cuts.append(len(passages))
            raise StorageUnavailable("Milvus failed to upsert passages: Fail connecting to server")
        upsert(store, passages)

    monkeypatch.setattr(MilvusPassageStore, "upsert", away_once)
    files = server.state.storage.files
    retries: list[FileRecord | None] = []
    again_later = server.file_jobs._again_later

    def seen_then_again(file_id: str, attempt: int) -> None:
        retries.append(files.get(file_id))  # the row as the retry finds it
        again_later(file_id, attempt)

    monkeypatch.setattr(server.file_jobs, "_again_later", seen_then_again)
    caplog.set_level(logging.WARNING, logger="memgpt.data.ingest")
    client = client_for(server)
    folder = client.folders.create(name="away")
    upload = client.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
    done, _ = wait_until_loaded(client, folder.id, upload.id, timeout=120)
    assert cuts and len(retries) == 1 and retries[0] is not None
    assert (retries[0].status, retries[0].job_owner) == (FileStatus.PENDING, this_process())
    # The row is its clients': the error's public line (the detail, naming hosts, is in the server's log).
    assert retries[0].error_message == f"{StorageUnavailable.public}; trying again"
    assert "Fail connecting to server" in caplog.text
    assert done.processing_status == "completed" and done.error_message is None, done
    assert done.total_chunks == done.chunks_embedded > 0
    record = files.get(upload.id)
    assert record is not None and record.job_owner == ""


def test_a_load_the_server_stops_midway_is_queued_for_the_next_start(server: LiveServer) -> None:
    """The server stops while a file is embedding: the row is left pending and this process's (which the next
    start takes over, as after a kill -9), not 'error' -- the loader must not let the row go before the stop's
    write (fenced by the owner) queues it."""
    client = client_for(server)
    folder = client.folders.create(name="stopped")
    paper = client.folders.files.upload(folder.id, file=PAPER.open("rb"))
    deadline = time.monotonic() + 120
    while (current := client.folders.files.retrieve(paper.id, folder_id=folder.id)).processing_status != "embedding":
        assert current.processing_status in ("pending", "parsing") and time.monotonic() < deadline, current
        time.sleep(0.05)
    server.file_jobs.stop()  # as the server's shutdown does: the load stops at its next batch
    record = server.state.storage.files.get(paper.id)
    assert record is not None
    assert (record.status, record.job_owner, record.error_message) == (FileStatus.PENDING, this_process(), "")
