"""Loading real files into Milvus Lite: counts, search, reloads, replacements and bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from memgpt.config import EmbeddingSettings
from memgpt.data.ingest import _WRITE_WINDOW, LoadListener, SourceLoader, collect_files
from memgpt.data.loaders import LOADER_VERSION
from memgpt.data.sources import delete_source, get_source, list_sources, search_source, visible_passages
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import NotFoundError, UserError
from memgpt.storage import Storage
from memgpt.storage.filters import eq
from memgpt.types import EmbeddingSpace
from tests.conftest import DATA, PAPER, USER, load, loader

pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL


def milvus_count(storage: Storage, source_id: str) -> int:
    return storage.passages(EmbeddingSpace("all-MiniLM-L6-v2", 384)).count(eq("source_id", source_id))


def test_the_seed_paper(any_storage: Storage, model: LocalMiniLM, remembering_model: LocalMiniLM) -> None:
    report = load(any_storage, remembering_model, "memgpt_research_paper", PAPER)
    assert report.ok
    assert report.documents == 13
    assert 60 <= report.passages <= 120
    source = get_source(any_storage, USER, "memgpt_research_paper")
    assert (source.documents, source.passages) == (13, report.passages)
    assert milvus_count(any_storage, source.id) == report.passages

    hits = search_source(any_storage, source, model, "deep memory retrieval", k=5)
    assert len(hits) == 5
    assert any("deep memory retrieval" in h.passage.text.lower() for h in hits)
    top = hits[0].passage
    assert top.metadata["file_name"] == "memgpt_research_paper.pdf"
    assert 1 <= top.metadata["page"] <= 13


def test_reload_is_a_no_op_and_never_duplicates(any_storage: Storage, remembering_model: LocalMiniLM) -> None:
    first = load(any_storage, remembering_model, "paper", PAPER)
    again = load(any_storage, remembering_model, "paper", PAPER)
    assert again.ok and again.passages == 0 and again.unchanged == [str(PAPER)]
    source = get_source(any_storage, USER, "paper")
    assert milvus_count(any_storage, source.id) == first.passages == source.passages


def test_same_content_under_another_name_is_not_loaded_twice(
    storage: Storage, remembering_model: LocalMiniLM, tmp_path: Path
) -> None:
    copy = tmp_path / "renamed.pdf"
    shutil.copy(PAPER, copy)
    first = load(storage, remembering_model, "paper", PAPER)
    second = load(storage, remembering_model, "paper", copy)
    assert second.passages == 0 and second.duplicates == [(str(copy), str(PAPER.resolve()))]
    assert get_source(storage, USER, "paper").passages == first.passages


def test_files_are_added_to_an_existing_source_and_changed_files_replaced(
    any_storage: Storage, model: LocalMiniLM, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nThe archival memory lives in Milvus. " * 5)
    load(any_storage, model, "mixed", notes)
    load(any_storage, model, "mixed", DATA / "philosophical_question.txt")
    source = get_source(any_storage, USER, "mixed")
    assert source.documents == 2

    notes.write_text("# Notes\n\nRecall memory keeps every message ever sent. " * 200)
    changed = load(any_storage, model, "mixed", notes)
    assert changed.documents == 1 and changed.passages > 1
    source = get_source(any_storage, USER, "mixed")
    assert source.documents == 2
    assert milvus_count(any_storage, source.id) == source.passages
    texts = [h.passage.text for h in search_source(any_storage, source, model, "archival memory lives in Milvus", k=20)]
    assert not any("lives in Milvus" in t for t in texts)  # the old content is gone
    assert any_storage.metadata.hidden_document_ids([source.id]) == []


def test_bad_files_are_reported_and_the_rest_still_load(storage: Storage, model: LocalMiniLM, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    warnings: list[str] = []

    class Collect(LoadListener):
        def warn(self, message: str) -> None:
            warnings.append(message)

    paths = [empty, DATA / "test.md", junk, tmp_path / "missing.txt", DATA / "encrypted.pdf"]
    report = loader(storage, model, listener=Collect()).load("partly", paths)
    assert not report.ok
    assert report.documents == 1
    assert sorted(Path(f.path).name for f in report.failures) == [
        "empty.txt",
        "encrypted.pdf",
        "junk.pdf",
        "missing.txt",
    ]
    assert len(warnings) == 4 and all("\n" not in w for w in warnings)
    assert get_source(storage, USER, "partly").documents == 1


def test_a_load_where_everything_fails_leaves_no_empty_source(
    storage: Storage, model: LocalMiniLM, tmp_path: Path
) -> None:
    report = load(storage, model, "nothing", tmp_path / "missing.pdf")
    assert report.failures and report.documents == 0
    with pytest.raises(NotFoundError):
        get_source(storage, USER, "nothing")


def test_quoted_names_work_and_stay_apart(any_storage: Storage, model: LocalMiniLM) -> None:
    load(any_storage, model, 'it\'s "x"', DATA / "philosophical_question.txt")
    load(any_storage, model, 'it\'s "x" or 1==1', DATA / "test.json")
    quoted = get_source(any_storage, USER, 'it\'s "x"')
    hits = search_source(any_storage, quoted, model, "glossary markup language", k=50)
    assert hits and {h.passage.source_id for h in hits} == {quoted.id}
    assert all("Glossary" not in h.passage.text for h in hits)


@pytest.mark.parametrize("name", ["", "   ", "two\nlines"])
def test_invalid_source_names(any_storage: Storage, model: LocalMiniLM, name: str) -> None:
    with pytest.raises(UserError, match="source name"):
        load(any_storage, model, name, DATA / "test.md")


def test_delete_removes_every_passage(any_storage: Storage, model: LocalMiniLM) -> None:
    load(any_storage, model, "doomed", DATA / "long_test.txt")
    load(any_storage, model, "kept", DATA / "test.md")
    doomed = get_source(any_storage, USER, "doomed")
    assert milvus_count(any_storage, doomed.id) > 0
    assert delete_source(any_storage, doomed) == doomed.passages
    assert milvus_count(any_storage, doomed.id) == 0
    assert [s.name for s in list_sources(any_storage, USER)] == ["kept"]
    kept = get_source(any_storage, USER, "kept")
    assert milvus_count(any_storage, kept.id) == kept.passages


def test_a_source_keeps_its_embedding_model(storage: Storage, model: LocalMiniLM) -> None:
    load(storage, model, "paper", DATA / "test.md")

    class OtherModel(LocalMiniLM):
        model_id = "other-model"

    with pytest.raises(UserError, match="was embedded with all-MiniLM-L6-v2"):
        load(storage, OtherModel(), "paper", DATA / "test.json")
    with pytest.raises(UserError, match="configured model is other-model"):
        search_source(storage, get_source(storage, USER, "paper"), OtherModel(), "x", k=1)


def test_collect_files_filters_directories(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ["a.pdf", "b.md", "c.exe", "sub/d.txt", ".hidden/e.txt", ".f.md"]:
        (tmp_path / name).write_text("x")
    flat = collect_files(input_dir=tmp_path)
    assert [p.name for p in flat] == ["a.pdf", "b.md"]
    deep = collect_files(input_dir=tmp_path, recursive=True, extensions=["txt", ".PDF"])
    assert sorted(p.name for p in deep) == ["a.pdf", "d.txt"]
    explicit = collect_files([tmp_path / "c.exe", tmp_path / "c.exe"])
    assert [p.name for p in explicit] == ["c.exe"]
    with pytest.raises(UserError, match="not a directory"):
        collect_files(input_dir=tmp_path / "a.pdf")


def test_hidden_documents_are_excluded_from_search(
    any_storage: Storage, model: LocalMiniLM, remembering_model: LocalMiniLM
) -> None:
    load(any_storage, remembering_model, "paper", PAPER)
    source = get_source(any_storage, USER, "paper")
    page_five = next(d for d in any_storage.metadata.documents(source.id) if d.unit == 5)
    any_storage.metadata.publish([], [page_five.id])  # as if a replacement were half done
    hits = search_source(any_storage, source, model, "deep memory retrieval DMR task", k=30)
    assert hits and all(h.passage.document_id != page_five.id for h in hits)
    assert str(visible_passages(any_storage, source)).count(page_five.id) == 1


def test_symlink_loops_and_special_files_in_a_folder_are_named_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("x")
    (tmp_path / "sub" / "b.md").write_text("y")
    (tmp_path / "self.md").symlink_to(tmp_path / "self.md")  # a loop with a wanted name
    (tmp_path / "knot").symlink_to(tmp_path / "knot")  # a loop with any name is named too
    (tmp_path / "gone.md").symlink_to(tmp_path / "missing.md")
    (tmp_path / "gone.bin").symlink_to(tmp_path / "missing.bin")  # not wanted: skipped silently
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder link is not followed, so it cannot loop
    (tmp_path / "link.md").symlink_to(tmp_path / "a.md")
    os.mkfifo(tmp_path / "pipe.md")
    flat = collect_files(input_dir=tmp_path)
    assert [p.name for p in flat] == ["a.md", "gone.md", "knot", "pipe.md", "self.md"]  # link.md is a.md
    deep = collect_files(input_dir=tmp_path, recursive=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in deep) == [
        "a.md",
        "gone.md",
        "knot",
        "pipe.md",
        "self.md",
        "sub/b.md",
    ]


def test_load_names_each_problem_file_and_loads_the_rest(storage: Storage, model: LocalMiniLM, tmp_path: Path) -> None:
    shutil.copy(DATA / "test.md", tmp_path / "good.md")
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    os.mkfifo(tmp_path / "pipe.md")
    report = load(storage, model, "mixed", *collect_files(input_dir=tmp_path))
    assert report.documents == 1
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert reasons.keys() == {"loop.md", "pipe.md"}
    assert "symlink loop" in reasons["loop.md"] and "named pipe" in reasons["pipe.md"]


def test_a_file_over_a_load_limit_fails_alone(storage: Storage, model: LocalMiniLM, tmp_path: Path) -> None:
    """The limits come from [embedding] max_file_mb and max_text_mb; a real 1.2 MB one-line file."""
    big = tmp_path / "one_line.txt"
    big.write_text("the same few words again " * 50_000)
    small = DATA / "test.md"
    by_text = loader(storage, model, max_text_bytes=1_000_000).load("limits", [big, small])
    (failure,) = by_text.failures
    assert failure.path == str(big)
    assert "1.2 MB of text, over the limit of 1.0 MB per file; split it, or raise max_text_mb" in failure.reason
    assert by_text.documents == 1
    by_size = loader(storage, model, max_file_bytes=1_000_000).load("limits", [big])
    assert "max_file_mb" in by_size.failures[0].reason


def test_a_loader_from_the_embedding_settings_chunks_and_limits_as_they_say(
    storage: Storage, model: LocalMiniLM, tmp_path: Path
) -> None:
    """`memgpt load`, the server's folders and the benches make their loader from [embedding] in one place."""
    big = tmp_path / "one_line.txt"
    big.write_text("the same few words again " * 50_000)
    settings = EmbeddingSettings(chunk_size=64, chunk_overlap=8, max_text_mb=1.0)
    configured = SourceLoader.from_settings(storage, model, settings, user_id=USER)
    assert configured.signature.endswith(f"/c64/o8/l{LOADER_VERSION}")
    report = configured.load("settings", [big, DATA / "test.md"])
    assert [f.path for f in report.failures] == [str(big)] and "raise max_text_mb" in report.failures[0].reason
    assert report.documents == 1


class _InterruptAfterFirstWindow(LoadListener):
    """Ctrl-C once the first window of passages is in Milvus and the second is being embedded."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.embedded = 0
        self.written = 0

    def passages_embedded(self, count: int) -> None:
        self.embedded += count
        if self.embedded > _WRITE_WINDOW:
            source = get_source(self.storage, USER, "first")
            self.written = milvus_count(self.storage, source.id)
            raise KeyboardInterrupt


def test_ctrl_c_in_the_first_file_removes_the_new_source_and_its_passages(
    storage: Storage, model: LocalMiniLM, tmp_path: Path
) -> None:
    listener = _InterruptAfterFirstWindow(storage)
    small = SourceLoader(storage, model, user_id=USER, chunk_size=16, chunk_overlap=0, listener=listener)  # fast
    report = small.load("first", [DATA / "long_test.txt"])
    assert report.interrupted
    assert listener.written >= _WRITE_WINDOW  # passages had reached Milvus when Ctrl-C came
    with pytest.raises(NotFoundError):
        get_source(storage, USER, "first")
    assert storage.passages(model.space).count() == 0  # nothing orphaned


def test_ctrl_c_after_a_file_is_done_keeps_the_source(storage: Storage, model: LocalMiniLM) -> None:
    class InterruptSecondFile(LoadListener):
        def file_started(self, path: Path) -> None:
            if path.name == "long_test.txt":
                raise KeyboardInterrupt

    report = loader(storage, model, listener=InterruptSecondFile()).load(
        "kept", [DATA / "test.md", DATA / "long_test.txt"]
    )
    assert report.interrupted
    assert get_source(storage, USER, "kept").documents == 1


def test_passages_carry_their_section_and_a_reference_list_chunks_alone(
    storage: Storage, model: LocalMiniLM, remembering_model: LocalMiniLM
) -> None:
    report = load(storage, remembering_model, "paper", PAPER)
    source = get_source(storage, USER, "paper")
    passages = [p for batch in storage.passages(model.space).iterate(visible_passages(storage, source)) for p in batch]
    assert len(passages) == report.passages
    queue = [p for p in passages if p.metadata.get("section") == "2. MemGPT (MemoryGPT) > 2.2. Queue Manager"]
    assert {p.metadata["page"] for p in queue} == {2, 3}
    label = "Section: 2. MemGPT (MemoryGPT) > 2.2. Queue Manager (page {})\n"
    assert all(p.text.startswith(label.format(p.metadata["page"])) for p in queue)
    # Label included, no passage is longer than the chunk size.
    assert max(model.count_tokens(p.text) for p in passages) <= 250
    references = [p for p in passages if p.metadata.get("section") == "References"]
    assert len(references) >= 4
    assert not any("Conclusion" in p.text or "In this paper, we introduced MemGPT" in p.text for p in references)
    assert all(p.metadata.get("section") for p in passages)  # the paper has a heading from its first line


def test_reference_marks_are_shown_but_not_embedded(storage: Storage, model: LocalMiniLM, tmp_path: Path) -> None:
    text = "Letta joined the Democratic Party in 2007.[44][45] He later led it.[46]"
    (tmp_path / "bio.txt").write_text(text)
    load(storage, model, "bio", tmp_path / "bio.txt")
    source = get_source(storage, USER, "bio")
    store = storage.passages(model.space)
    [passage] = [p for batch in store.iterate(visible_passages(storage, source), with_embeddings=True) for p in batch]
    assert passage.text.endswith(text)  # shown (and ranked by BM25) as written
    bare = passage.text.replace("[44][45]", "").replace("[46]", "")
    assert passage.embedding is not None
    similarity = sum(a * b for a, b in zip(passage.embedding, model.embed(bare), strict=True))
    assert similarity > 0.999  # embedded without the marks


def test_files_loaded_by_an_earlier_loader_version_are_read_again(
    storage: Storage, remembering_model: LocalMiniLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passages of LOADER_VERSION 1 stay searchable; loading the same file again replaces them."""
    import memgpt.data.ingest as ingest

    current = ingest.LOADER_VERSION
    monkeypatch.setattr(ingest, "LOADER_VERSION", 1)
    old = load(storage, remembering_model, "paper", PAPER)
    monkeypatch.setattr(ingest, "LOADER_VERSION", current)
    again = load(storage, remembering_model, "paper", PAPER)
    assert old.ok and again.ok and again.files_loaded == 1 and again.unchanged == []
    source = get_source(storage, USER, "paper")
    assert milvus_count(storage, source.id) == again.passages == source.passages


def test_archival_search_results_name_the_section_once() -> None:
    from datetime import UTC, datetime

    from memgpt.memory.archival import _describe
    from memgpt.types import Passage, SearchHit

    meta = {"file_name": "paper.pdf", "page": 3, "section": "2. MemGPT > 2.2. Queue Manager"}
    text = "Section: 2. MemGPT > 2.2. Queue Manager (page 3)\nThe queue manager evicts messages."
    when = datetime(2024, 1, 2, tzinfo=UTC)
    shown = _describe(SearchHit(Passage("p1", text, USER, created_at=when, metadata=meta), 1.0))
    assert shown == (
        "[2024-01-02 00:00:00 UTC] (paper.pdf, page 3, section: 2. MemGPT > 2.2. Queue Manager)"
        " The queue manager evicts messages."
    )


def test_a_store_refusal_that_fails_the_same_way_again_is_not_storage_away(
    storage: Storage, model: LocalMiniLM
) -> None:
    """Milvus refusing what it was given (here: vectors of the wrong dimension that got past the model's own check)
    fails the same way every time: the server must not retry it as "storage away" for ~12 minutes."""

    class Truncating(LocalMiniLM):
        def embed_multi(self, texts, *, on_progress=None):  # type: ignore[no-untyped-def]
            return [v[:100] for v in model.embed_multi(texts, on_progress=on_progress)]

    broken = Truncating.__new__(Truncating)
    broken.__dict__.update(model.__dict__)
    report = loader(storage, broken).load("refused", [DATA / "test.md"])
    assert "dimension 100, expected 384 for all-MiniLM-L6-v2" in report.aborted
    assert "`memgpt configure`" in report.aborted
    assert not report.storage_away
