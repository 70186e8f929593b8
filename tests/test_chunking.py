from __future__ import annotations

import base64
import random
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


def test_token_counts_are_exactly_the_tokenizers(model: LocalMiniLM) -> None:
    """count_tokens sums cached counts of words and punctuation; it must equal one full tokenization."""
    from memgpt.embeddings.local import _counting_tokenizer

    rng = random.Random(7)
    real = [normalize(parse(p, read_bytes(p)).units[0].text) for p in (DATA / "long_test.txt", DATA / "test.json")]
    tricky = "ab cd\n\t\x1c\x1f\x85\u00a0\u2003\u3000\u200b\u0301é中文,.!?-_'\"()[]{}ÉİSS\r\x00\ufffd\U0001f600"
    samples = [text[i : i + rng.randint(1, 3000)] for text in real for i in rng.sample(range(len(text)), 100)]
    samples += ["".join(rng.choice(tricky) for _ in range(rng.randint(1, 300))) for _ in range(500)]
    samples += ["x" * 5000, "ab1" * 40, "a+b/" * 300, "naïve" * 30, "é" * 101, "word " * 600]
    tokenizer = _counting_tokenizer()
    for text in samples:
        assert model.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False).ids), repr(text[:80])


@pytest.mark.parametrize("kind", ["hex", "base64", "letters"])
def test_text_without_spaces_is_cut_short_enough_to_store(chunker: Chunker, model: LocalMiniLM, kind: str) -> None:
    """A blob counts as one [UNK] token per 100+ characters, so tokens alone would make one huge chunk."""
    rng = random.Random(1)
    blob = {
        "hex": rng.randbytes(100_000).hex(),
        "base64": base64.b64encode(rng.randbytes(150_000)).decode(),
        "letters": "a" * 200_000,
    }[kind]
    chunks = chunker.split(f"A note before the blob. {blob} And a note after it.")
    assert max(len(c) for c in chunks) <= 250 * 10  # at most 10 KB of UTF-8: Milvus keeps 64 KiB
    assert max(model.count_tokens(c) for c in chunks) <= 250
    assert "".join(chunks).count(blob[:1000]) >= 1 and chunks[-1].endswith("And a note after it.")


def test_text_longer_than_a_block_is_cut_at_paragraph_ends(
    chunker: Chunker, model: LocalMiniLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memgpt.data import chunking

    monkeypatch.setattr(chunking, "_BLOCK_CHARS", 3000)
    paragraphs = [f"Paragraph {i} says something about topic {i}." for i in range(400)]
    text = "\n\n".join(paragraphs)
    blocks = chunking._blocks(text)
    assert "".join(blocks) == text
    assert len(blocks) > 5 and all(len(b) <= 3000 for b in blocks)
    assert all(b.endswith("\n\n") for b in blocks[:-1])
    chunks = chunker.split(text)
    assert max(model.count_tokens(c) for c in chunks) <= 250
    assert all(any(p in c for c in chunks) for p in paragraphs)


def test_a_check_is_called_all_along_a_split_and_its_error_ends_it(chunker: Chunker) -> None:
    """A stopping server's insert checks while its text is split: a 1.5 MB text took 3.8 s to split at load 26 (more
    than server.shutdown_seconds in a test), with no check before its first embedding batch."""
    text = " ".join(f"Sentence {i} about the harbour and the weather." for i in range(3_000))  # 150 kB
    calls: list[None] = []
    chunks = chunker.split(text, check=lambda: calls.append(None))
    assert chunks == chunker.split(text)  # the check changes nothing of the chunks
    assert len(calls) > 2 * len(chunks)  # many times a chunk: never long between two

    class Stop(Exception):
        pass

    def stop_at_the_tenth() -> None:
        calls.append(None)
        if len(calls) == 10:
            raise Stop

    calls.clear()
    with pytest.raises(Stop):
        chunker.split(text, check=stop_at_the_tenth)
    assert len(calls) == 10
