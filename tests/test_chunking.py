from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import pytest

from memgpt.data.chunking import Chunker, normalize
from memgpt.data.loaders import parse, read_bytes
from memgpt.embeddings.local import LocalMiniLM
from tests.conftest import DATA, PAPER


@pytest.fixture(scope="module")
def chunker(model: LocalMiniLM) -> Chunker:
    return Chunker(model.count_tokens, 250, 25)


def chunks_of(chunker: Chunker, path: Path) -> list[str]:
    return [c for unit in parse(path, read_bytes(path)).units for c in chunker.split(unit.text)]


@pytest.mark.parametrize("name", ["memgpt_research_paper.pdf", "long_test.txt", "test.csv", "test.md", "test.json"])
def test_no_chunk_exceeds_the_size_or_the_model_limit(chunker: Chunker, model: LocalMiniLM, name: str) -> None:
    chunks = chunks_of(chunker, DATA / name)
    assert chunks
    counts = [model.count_tokens(c) for c in chunks]
    assert max(counts) <= 250 <= model.max_input_tokens


def test_chunks_end_at_sentence_or_line_boundaries_and_overlap(chunker: Chunker) -> None:
    path = DATA / "long_test.txt"
    text = normalize(parse(path, read_bytes(path)).units[0].text)
    chunks = chunks_of(chunker, path)

    def at_boundary(chunk: str) -> bool:
        end = text.find(chunk[-60:]) + 60
        return chunk[-1] in ".!?" or end >= len(text) or text[end] == "\n"

    assert sum(map(at_boundary, chunks)) / len(chunks) > 0.95
    # Each chunk after the first repeats a little of the one before it.
    overlapping = sum(1 for a, b in pairwise(chunks) if b.split()[0] in a.split()[-60:])
    assert overlapping / (len(chunks) - 1) > 0.8


def test_location_of_the_file_does_not_change_chunking(chunker: Chunker, tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-directory-name-" * 8) / "nested"
    deep.mkdir(parents=True)
    copy = deep / "paper.pdf"
    shutil.copy(PAPER, copy)
    assert chunks_of(chunker, PAPER) == chunks_of(chunker, copy)


def test_a_single_huge_word_is_split_to_fit(model: LocalMiniLM) -> None:
    chunker = Chunker(model.count_tokens, 64, 8)
    chunks = chunker.split("x" * 5000)
    assert all(model.count_tokens(c) <= 64 for c in chunks)
    assert "".join(chunks).replace(" ", "").count("x") >= 5000


def test_normalize_collapses_whitespace() -> None:
    assert normalize("a  \t b\r\n\r\n\r\n\r\nc \u00a0d") == "a b\n\nc d"


def test_invalid_sizes_are_refused(model: LocalMiniLM) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Chunker(model.count_tokens, 8)
    with pytest.raises(ValueError, match="under half"):
        Chunker(model.count_tokens, 100, 60)
