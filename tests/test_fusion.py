"""Fusing dense and BM25 candidates by normalised scores (memgpt.storage.fusion)."""

from __future__ import annotations

import pytest

from memgpt.storage.fusion import Weights, fuse
from memgpt.types import Passage, SearchHit


def hits(*scored: tuple[str, float]) -> list[SearchHit]:
    return [SearchHit(Passage(id=pid, text=pid, user_id="u"), score) for pid, score in scored]


def test_each_list_is_scaled_to_its_own_range_then_summed() -> None:
    dense = hits(("a", 0.62), ("b", 0.60), ("c", 0.58))  # cosine: a narrow range
    keyword = hits(("c", 14.0), ("d", 3.0), ("b", 1.0))  # BM25: unbounded, c is decisive
    fused = fuse(dense, keyword)
    # a (best by meaning, no shared word) and c (last by meaning, best by words) tie; b is middling in both.
    assert [h.passage.id for h in fused] == ["a", "c", "b", "d"]
    scores = {h.passage.id: h.score for h in fused}
    assert scores["a"] == pytest.approx(1.0 + 0.0)
    assert scores["c"] == pytest.approx(0.0 + 1.0)
    assert scores["b"] == pytest.approx(0.5 + 0.0)
    assert scores["d"] == pytest.approx(0.0 + 2 / 13)
    assert [h.shares_words for h in fused] == [False, True, True, True]


def test_ties_keep_the_dense_order_then_the_keyword_order() -> None:
    fused = fuse(hits(("a", 0.9), ("b", 0.1)), hits(("b", 5.0), ("a", 1.0)))
    assert [h.passage.id for h in fused] == ["a", "b"]  # both 1.0: a is first by meaning
    assert [h.passage.id for h in fuse(hits(("x", 0.5)), hits(("y", 2.0)))] == ["x", "y"]


def test_weights_and_degenerate_lists() -> None:
    dense = hits(("a", 0.9), ("b", 0.1))
    keyword = hits(("b", 5.0), ("a", 1.0))
    assert [h.passage.id for h in fuse(dense, keyword, Weights(dense=1.0, keyword=2.0))] == ["b", "a"]
    alone = fuse(dense, [])
    assert [h.passage.id for h in alone] == ["a", "b"] and not any(h.shares_words for h in alone)
    assert [h.score for h in fuse(hits(("a", 0.3), ("b", 0.3)), [])] == [1.0, 1.0]  # equal scores: all best
    assert fuse([], []) == []


def test_a_gated_keyword_hit_keeps_its_full_credit_only_when_it_is_close_in_meaning_too() -> None:
    dense = hits(("a", 0.9), ("b", 0.5), ("c", 0.1))  # normalised: a 1, b 0.5, c 0
    keyword = hits(("c", 8.0), ("b", 8.0), ("d", 8.0), ("x", 0.0))  # c, b and d match equally well by words
    gated = Weights(dense=1.0, keyword=1.5, gate=0.5)
    scores = {h.passage.id: h.score for h in fuse(dense, keyword, gated)}
    assert scores["a"] == pytest.approx(1.0)  # no shared word: meaning alone
    assert scores["b"] == pytest.approx(0.5 + 1.5 * 1.0 * (0.5 + 0.5 * 0.5))
    assert scores["c"] == pytest.approx(0.0 + 1.5 * 1.0 * 0.5)  # the dense list's last: half the word credit
    assert scores["d"] == pytest.approx(1.5 * 0.5)  # not among the dense candidates at all: the same
    assert [h.passage.id for h in fuse(dense, keyword, gated)][:2] == ["b", "a"]
    # Ungated (the default), a word match far in meaning counts as much as one close in meaning.
    plain = {h.passage.id: h.score for h in fuse(dense, keyword)}
    assert plain["c"] == pytest.approx(1.0) and plain["d"] == pytest.approx(1.0)
