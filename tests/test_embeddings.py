from __future__ import annotations

import math

import pytest

from memgpt.embeddings.local import LocalMiniLM


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_unit_length_and_meaningful(model: LocalMiniLM) -> None:
    cat, kitten, stocks = model.embed_multi(
        ["The cat sat on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    )
    assert len(cat) == 384
    assert math.sqrt(sum(v * v for v in cat)) == pytest.approx(1.0, abs=1e-4)
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3


def test_batching_and_padding_do_not_change_vectors(model: LocalMiniLM) -> None:
    texts = ["short", "a much longer sentence about virtual context management in operating systems " * 3]
    together = model.embed_multi(texts)
    alone = [model.embed(t) for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert cosine(a, b) == pytest.approx(1.0, abs=1e-4)


def test_token_counts_are_not_truncated(model: LocalMiniLM) -> None:
    # The shipped tokenizer.json truncates at 128; counting must see every token.
    assert model.count_tokens("word " * 600) == 600


def test_matches_sentence_transformers_reference(model: LocalMiniLM) -> None:
    """Values of all-MiniLM-L6-v2 (PyTorch, sentence-transformers) for this sentence: int8 stays close."""
    vector = model.embed("This is an example sentence")
    reference_head = [0.0677, 0.0634, 0.0488, 0.0793, 0.0374]
    assert vector[:5] == pytest.approx(reference_head, abs=0.02)
