"""One ranking from two: dense (meaning) and BM25 (words) candidates, each signal's scores normalised first.

Reciprocal-rank fusion (memgpt's first hybrid) keeps only ranks, so a BM25 list whose top hits barely
matched (a short turn sharing two common words with the question) weighs as much as a decisive one, and a
passage found by one signal alone sinks under the near-misses of the other. Here each list's scores are
scaled to [0, 1] over its own candidates (best = 1, the last candidate = 0) and summed with weights: a
signal that separates its candidates clearly moves the result, one that does not barely does. Tuned on
bench/recall_bench.py --sweep (picked on one conversation, checked on the other two; see the README):
equal weights. On bench/retrieval_bench.py it also beats reciprocal-rank fusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memgpt.types import SearchHit

# How many candidates each signal offers the fusion: the normalisation spans them, so every page within
# this depth is cut from the same ranking (deeper pages widen it).
CANDIDATES = 100


@dataclass(frozen=True)
class Weights:
    """How much each signal counts; a fused score lies in [0, dense + keyword].

    ``gate`` below 1 makes a keyword hit's credit depend on its meaning: it keeps ``gate`` of its keyword
    score when the dense signal gives it nothing (not among its candidates, or its last) and all of it at
    the dense best, linearly between. Short chat messages share a common word with many questions ("Tom",
    "work"); gated, such matches no longer push out what the dense signal found, while a match that is also
    close in meaning counts in full (recall memory's ranking, ``memgpt.memory.recall``)."""

    dense: float = 1.0
    keyword: float = 1.0
    gate: float = 1.0


def _normalised(hits: Sequence[SearchHit]) -> dict[str, float]:
    """Each passage's score scaled to [0, 1] over the list (1 for every hit of a list whose scores are equal)."""
    if not hits:
        return {}
    scores = [h.score for h in hits]
    high, low = max(scores), min(scores)
    spread = high - low
    return {h.passage.id: (h.score - low) / spread if spread > 0 else 1.0 for h in hits}


def fuse(dense: Sequence[SearchHit], keyword: Sequence[SearchHit], weights: Weights = Weights()) -> list[SearchHit]:
    """Every passage of either list once, best first, scored ``dense * d + keyword * k * (gate + (1 - gate) * d)``
    for its normalised scores d and k (see ``Weights``; with the default gate 1, ``dense * d + keyword * k``).
    A passage one list lacks gets 0 from it; ties keep the dense order, then the keyword order."""
    by_dense, by_keyword = _normalised(dense), _normalised(keyword)
    passages = {h.passage.id: h.passage for h in (*keyword, *dense)}
    order = {pid: rank for rank, pid in enumerate(dict.fromkeys([*by_dense, *by_keyword]))}
    scored = []
    for pid, passage in passages.items():
        meaning = by_dense.get(pid, 0.0)
        words = by_keyword.get(pid, 0.0) * (weights.gate + (1 - weights.gate) * meaning)
        score = weights.dense * meaning + weights.keyword * words
        scored.append(SearchHit(passage, score, shares_words=pid in by_keyword))
    return sorted(scored, key=lambda hit: (-hit.score, order[hit.passage.id]))
