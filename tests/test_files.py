"""A source's files as records: what `memgpt load` records, uploads taken and deleted, a file's text read
back, and the migration that gives files loaded before it their rows."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from memgpt.data.files import (
    DuplicateHandling,
    check_supported,
    clean_file_name,
    delete_file,
    file_text,
    join_chunks,
    take_upload,
)
from memgpt.data.sources import create_source, delete_source, get_source, search_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import AlreadyExistsError, UnsupportedFileTypeError, UserError
from memgpt.storage import Storage
from memgpt.storage.filters import eq
from memgpt.storage.migrations import MIGRATIONS, apply_migrations
from memgpt.storage.sql import create_metadata_engine, parse_metadata_url
from memgpt.types import EmbeddingSpace, FileStatus
from tests.conftest import DATA, USER, load

pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL


def test_a_load_records_each_file_and_how_it_went(storage: Storage, model: LocalMiniLM) -> None:
    report = load(storage, model, "docs", DATA / "test.md", DATA / "test.csv", DATA / "encrypted.pdf")
    assert report.files_loaded == 2 and len(report.failures) == 1
    source = get_source(storage, USER, "docs")
    assert source.id.startswith("source-")
    files = {f.file_name: f for f in storage.files.list(source.id)}
    assert set(files) == {"test.md", "test.csv", "encrypted.pdf"}
    for name in ("test.md", "test.csv"):
        record = files[name]
        assert record.id.startswith("file-") and record.status is FileStatus.COMPLETED
        assert record.total_chunks == record.chunks_embedded > 0
        documents = storage.metadata.documents(source.id, file_path=record.path)
        assert record.total_chunks == sum(d.n_passages for d in documents)
        assert record.file_size == (DATA / name).stat().st_size and not record.stored and not record.job_owner
    assert files["test.md"].file_type == "text/markdown" and files["test.csv"].file_type == "text/csv"
    broken = files["encrypted.pdf"]
    assert broken.status is FileStatus.ERROR
    assert broken.error_message == "encrypted PDF (needs a password); decrypt it first"

    again = load(storage, model, "docs", DATA / "test.md")  # unchanged: the same row, still completed
    assert again.unchanged == [str(DATA / "test.md")]
    assert {f.id for f in storage.files.list(source.id)} == {f.id for f in files.values()}
    assert all(f.status is not FileStatus.PARSING for f in storage.files.list(source.id))


def test_a_file_with_the_content_of_another_gets_no_row(storage: Storage, model: LocalMiniLM, tmp_path: Path) -> None:
    twin = tmp_path / "copy.md"
    shutil.copy(DATA / "test.md", twin)
    report = load(storage, model, "docs", DATA / "test.md", twin)
    assert report.duplicates == [(str(twin), str((DATA / "test.md").resolve()))]
    source = get_source(storage, USER, "docs")
    assert [f.file_name for f in storage.files.list(source.id)] == ["test.md"]


def test_deleting_a_file_takes_its_passages_and_keeps_the_others(storage: Storage, model: LocalMiniLM) -> None:
    load(storage, model, "docs", DATA / "test.md", DATA / "philosophical_question.txt")
    source = get_source(storage, USER, "docs")
    store = storage.passages(model.space)
    record = next(f for f in storage.files.list(source.id) if f.file_name == "test.md")
    before = store.count(eq("source_id", source.id))
    deleted = delete_file(storage, source, record)
    assert deleted == record.total_chunks > 0
    assert store.count(eq("source_id", source.id)) == before - deleted
    assert storage.metadata.documents(source.id, file_path=record.path) == []
    assert [f.file_name for f in storage.files.list(source.id)] == ["philosophical_question.txt"]
    hits = search_source(storage, get_source(storage, USER, "docs"), model, "memgpt", k=20)
    assert all(h.passage.metadata["file_name"] == "philosophical_question.txt" for h in hits)


def test_a_files_text_comes_from_the_file_or_else_from_its_passages(
    storage: Storage, model: LocalMiniLM, tmp_path: Path
) -> None:
    original = (DATA / "long_test.txt").read_text(encoding="utf-8")
    path = tmp_path / "long.txt"
    path.write_text(original, encoding="utf-8")
    load(storage, model, "docs", path)
    source = get_source(storage, USER, "docs")
    record = storage.files.list(source.id)[0]
    assert record.total_chunks > 3
    assert file_text(storage, source, record) == original
    path.unlink()  # gone from disk: put back together from its passages, overlaps dropped
    rebuilt = file_text(storage, source, record)
    assert rebuilt is not None
    assert " ".join(rebuilt.split()) == " ".join(original.split())


def test_join_chunks_keeps_the_overlap_once() -> None:
    assert join_chunks(["the quick brown fox jumps over", "brown fox jumps over the lazy dog"]) == (
        "the quick brown fox jumps over the lazy dog"
    )
    assert join_chunks(["one two\nthree four", "two three four five"]) == "one two\nthree four five"
    assert join_chunks(["a b c", "c d e"]) == "a b c\nc d e"  # one shared word is chance, not an overlap


def test_uploads_are_stored_under_the_home_and_named_safely(storage: Storage, home: Path) -> None:
    space = EmbeddingSpace("all-MiniLM-L6-v2", 384)
    source = create_source(storage, USER, "docs", space)
    with pytest.raises(AlreadyExistsError, match="a source named 'docs' already exists"):
        create_source(storage, USER, " docs ", space)
    upload = take_upload(storage, home, source, "../../etc/notes.md", io.BytesIO(b"# hi\nthere"), space=space)
    record = upload.record
    assert record.file_name == "notes.md" and record.stored and record.status is FileStatus.PENDING
    assert Path(record.path) == (home / "files" / source.id / record.id / "notes.md").resolve()
    assert Path(record.path).read_bytes() == b"# hi\nthere" and record.job_owner

    def again(handling: DuplicateHandling) -> str:
        result = take_upload(
            storage, home, source, "notes.md", io.BytesIO(b"other"), space=space, duplicate_handling=handling
        )
        return result.record.file_name if not result.skipped else f"skipped:{result.record.id}"

    assert again(DuplicateHandling.SKIP) == f"skipped:{record.id}"
    assert again(DuplicateHandling.SUFFIX) == "notes (1).md"
    assert again(DuplicateHandling.SUFFIX) == "notes (2).md"
    with pytest.raises(AlreadyExistsError, match=r"file 'notes\.md' already exists in folder 'docs'"):
        again(DuplicateHandling.ERROR)
    assert again(DuplicateHandling.REPLACE) == "notes.md"
    names = sorted(f.file_name for f in storage.files.list(source.id))
    assert names == ["notes (1).md", "notes (2).md", "notes.md"]
    assert not Path(record.path).exists()  # the replaced upload's folder is gone

    other = EmbeddingSpace("text-embedding-3-small", 1536)
    with pytest.raises(UserError, match="folder 'docs' was embedded with all-MiniLM-L6-v2"):
        take_upload(storage, home, source, "x.md", io.BytesIO(b"x"), space=other)
    with pytest.raises(UserError, match="empty"):
        take_upload(storage, home, source, "empty.md", io.BytesIO(b""), space=space)
    replace = DuplicateHandling.REPLACE
    with pytest.raises(UserError, match="empty"):  # refused before the file it would replace is touched
        take_upload(storage, home, source, "notes.md", io.BytesIO(b""), space=space, duplicate_handling=replace)
    assert "empty.md" not in {f.file_name for f in storage.files.list(source.id)}
    assert "notes.md" in {f.file_name for f in storage.files.list(source.id)}
    delete_source(storage, source)
    assert not (home / "files" / source.id).exists()


def test_file_names_and_types_are_checked() -> None:
    assert clean_file_name("C:\\Users\\me\\paper.pdf") == "paper.pdf"
    for bad in ("", "  ", "..", "dir/", "a\nb.md", "x" * 300 + ".md"):
        with pytest.raises(UserError):
            clean_file_name(bad)
    with pytest.raises(UnsupportedFileTypeError, match=r"tool.exe: files of type '.exe' cannot be loaded"):
        check_supported("tool.exe")
    with pytest.raises(UnsupportedFileTypeError, match="files without an extension"):
        check_supported("Makefile")
    check_supported("Paper.PDF")


def test_files_loaded_before_the_files_table_get_rows(metadata_url: str) -> None:
    engine = create_metadata_engine(parse_metadata_url(metadata_url))
    with engine.begin() as conn:
        for _name, migrate in MIGRATIONS[:7]:
            migrate(conn)
        conn.execute(text("create table schema_migrations (name varchar(128) primary key, applied_at timestamp)"))
        for name, _ in MIGRATIONS[:7]:
            conn.execute(text(f"insert into schema_migrations values ('{name}', '2026-01-01')"))
        conn.execute(text("insert into sources values ('s1', 'u', 'old', '', 'm', 4, 'ready', '2026-01-01')"))
        for doc, path, status, passages in (
            ("d1", "/a/paper.pdf", "ready", 5),
            ("d2", "/a/paper.pdf", "ready", 7),
            ("d3", "/a/cut.txt", "pending", 3),
            ("d4", "/a/gone.txt", "deleting", 2),
        ):
            conn.execute(
                text(
                    f"insert into documents values ('{doc}', 's1', '{path}', '{Path(path).name}', 'h', 10, null, "
                    f"{passages}, 'sig', '{status}', '2026-01-02')"
                )
            )
    assert apply_migrations(engine) == ["0008_files", *(name for name, _ in MIGRATIONS[8:])]  # and any later
    with engine.connect() as conn:
        columns = "path, file_name, status, total_chunks, chunks_embedded, error_message"
        rows = conn.execute(text(f"select {columns} from files order by path")).all()
        instructions = conn.execute(text("select instructions, metadata from sources")).one()
    assert [tuple(r) for r in rows] == [
        ("/a/cut.txt", "cut.txt", "error", 0, 0, "the load was interrupted; run the same `memgpt load` again"),
        ("/a/paper.pdf", "paper.pdf", "completed", 12, 12, ""),
    ]
    assert tuple(instructions) == ("", "{}")
    engine.dispose()


def test_a_kept_loads_end_does_not_overwrite_a_row_another_process_took_over(
    storage: Storage, model: LocalMiniLM
) -> None:
    """A server's load (``keep_owner``) that stops after another process took its file over (the lease lapsed)
    leaves the row to that process: its end is written only while the row is still this process's."""
    from memgpt.data.filerecords import FileTracker
    from memgpt.owners import this_process

    source = create_source(storage, USER, "taken", model.space)
    tracker = FileTracker(storage, source, keep_owner=True)
    tracker.started(DATA / "test.md")
    record = storage.files.list(source.id)[0]
    assert record.job_owner == this_process()
    assert storage.files.claim(record.id, "elsewhere-host:1:x", previous=this_process())
    tracker.abandoned("Milvus failed to upsert passages")
    after = storage.files.get(record.id)
    assert after is not None
    assert (after.status, after.job_owner, after.error_message) == (FileStatus.PARSING, "elsewhere-host:1:x", "")
