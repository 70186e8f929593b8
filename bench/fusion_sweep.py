"""Fusion variants side by side: how dense and BM25 candidates are combined, on every labelled set.

Usage: python bench/fusion_sweep.py [--collect] [--cache PATH] [--set tuning|held-out|all] [--recall-held-out]
``--collect`` loads the recall conversations (bench/recall; with ``--recall-held-out`` also the held-out
conversation of bench/recall_heldout, reported on its own rows) and the archival files (tests/data) as
bench/recall_bench.py and bench/retrieval_bench.py do, and keeps each question's dense and BM25
candidates (100 each, ids and scores) in a cache file; without it the cached candidates are fused by
every variant in ``VARIANTS`` and scored, which takes seconds, so many fusions can be compared on the
same candidates. Recall results are shown with their neighbours, as conversation_search shows them
(every benchmark message has words, so a hit's neighbours are the messages right before and after it).

Prints, per variant, recall any@5 / all@5 / any@10 / all@10 / MRR@10 per conversation and overall, and
archival recall@5 / @10 / MRR@10 per set (the held-out set also split into its first 40 questions and the 88
written later, ``held2-*``); a variant "beats both sides" on a row when it is above
dense and above BM25 at every k of that row.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "memgpt-fusion-sweep.json"
Scored = list[tuple[str, float]]  # candidate ids with their scores, best first
Fusion = Callable[[Scored, Scored, str], list[str]]


# -- collecting candidates ------------------------------------------------------------------------------
HELD_OUT = ROOT / "bench" / "recall_heldout"  # conversations nothing in recall's ranking was chosen on
HELD_OUT_KEY = "recall held-out"


def collect_recall(cache: dict, data: Path | None = None, key: str = "recall") -> None:
    """Each question's candidates for the conversations in ``data`` (default bench/recall), kept under ``key``."""
    from bench.recall_adapter import RecallHome, local_model
    from bench.recall_bench import DATA, load_conversation, load_questions
    from memgpt.memory.results import keyword_query
    from memgpt.storage.fusion import CANDIDATES

    data = data or DATA
    conversations = {c.id: c for c in (load_conversation(p) for p in sorted((data / "conversations").glob("*.json")))}
    questions = load_questions(data / "questions.json", conversations)
    model = local_model()
    cache[key] = {}
    for name, conversation in conversations.items():
        order = [t.id for t in conversation.turns]
        rows = []
        with tempfile.TemporaryDirectory() as tmp, RecallHome(Path(tmp), model) as home:
            home.load(conversation.turns)
            for q in (q for q in questions if q.conversation == name):
                vector = model.embed(q.question)
                dense = home.store.search(vector, limit=CANDIDATES, where=home.where, with_text=False)
                words = home.store.keyword_search(keyword_query(q.question), limit=CANDIDATES, where=home.where)
                rows.append(
                    {
                        "id": q.id,
                        "question": q.question,
                        "category": q.category,
                        "evidence": [list(g) for g in q.evidence],
                        "dense": [(h.passage.id, h.score) for h in dense],
                        "bm25": [(h.passage.id, h.score) for h in words],
                        "search": home.conversation_search(q.question),  # to check the emulation below
                    }
                )
        cache[key][name] = {"order": order, "questions": rows}
        print(f"{key} {name}: {len(rows)} questions", file=sys.stderr)


def collect_archival(cache: dict, sets: dict[str, Path]) -> None:
    from bench.retrieval_bench import flat, labelled_documents
    from memgpt.embeddings.local import LocalMiniLM
    from memgpt.storage.fusion import CANDIDATES

    model = LocalMiniLM()
    chosen = {name: json.loads(path.read_text()) for name, path in sets.items()}
    cache["archival"] = {}
    with labelled_documents(model, chosen) as loaded:
        store, where = loaded.store, loaded.where
        for name, queries in chosen.items():
            rows = []
            for q in queries:
                vector = model.embed(q["question"])
                dense = store.search(vector, limit=CANDIDATES, where=where, with_text=False)
                words = store.keyword_search(q["question"], limit=CANDIDATES, where=where)
                answer = flat(q["answer"])
                rows.append(
                    {
                        "id": q["id"],
                        "question": q["question"],
                        "relevant": [pid for pid, text in loaded.texts.items() if answer in text],
                        "dense": [(h.passage.id, h.score) for h in dense],
                        "bm25": [(h.passage.id, h.score) for h in words],
                        "search": [
                            h.passage.id for h in store.search(vector, text=q["question"], limit=10, where=where)
                        ],
                    }
                )
            cache["archival"][name] = rows
            print(f"archival {name}: {len(rows)} questions", file=sys.stderr)


# -- fusions --------------------------------------------------------------------------------------------
def _minmax(scored: Scored) -> dict[str, float]:
    if not scored:
        return {}
    high, low = scored[0][1], min(s for _, s in scored)
    spread = high - low
    return {pid: (s - low) / spread if spread > 0 else 1.0 for pid, s in scored}


def _from_zero_when_short(depth: int = 100) -> Callable[[Scored], dict[str, float]]:
    """Min-max, but a list that ended before ``depth`` (BM25 found no more passages sharing a word) is scaled
    down to 0 rather than to its last hit: the next candidate would have scored 0."""

    def norm(scored: Scored) -> dict[str, float]:
        if not scored or len(scored) >= depth:
            return _minmax(scored)
        high = scored[0][1]
        return {pid: s / high if high > 0 else 1.0 for pid, s in scored}

    return norm


def _over_best(scored: Scored) -> dict[str, float]:
    high = scored[0][1] if scored else 0.0
    return {pid: s / high if high > 0 else 1.0 for pid, s in scored}


def _zscore(scored: Scored) -> dict[str, float]:
    if len(scored) < 2:
        return {pid: 0.0 for pid, _ in scored}
    values = [s for _, s in scored]
    mean, spread = statistics.fmean(values), statistics.pstdev(values) or 1.0
    return {pid: (s - mean) / spread for pid, s in scored}


def _ranked(scores: dict[str, float], dense: Scored, bm25: Scored) -> list[str]:
    order = {pid: i for i, pid in enumerate(dict.fromkeys([p for p, _ in dense] + [p for p, _ in bm25]))}
    return sorted(scores, key=lambda pid: (-scores[pid], order[pid]))


def weighted(
    wd: float = 1.0,
    wk: float = 1.0,
    norm: Callable[[Scored], dict[str, float]] = _minmax,
    knorm: Callable[[Scored], dict[str, float]] | None = None,
) -> Fusion:
    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        d, k = norm(dense), (knorm or norm)(bm25)
        floor_d, floor_k = min(d.values(), default=0.0), min(k.values(), default=0.0)
        ids = set(d) | set(k)
        return _ranked({p: wd * d.get(p, floor_d) + wk * k.get(p, floor_k) for p in ids}, dense, bm25)

    return fuse


def rrf(kd: float = 60, kk: float = 60, wd: float = 1.0, wk: float = 1.0) -> Fusion:
    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        scores: dict[str, float] = {}
        for ranking, k, w in ((dense, kd, wd), (bm25, kk, wk)):
            for rank, (pid, _) in enumerate(ranking, 1):
                scores[pid] = scores.get(pid, 0.0) + w / (k + rank)
        return _ranked(scores, dense, bm25)

    return fuse


def combmnz(wd: float = 1.0, wk: float = 1.0) -> Fusion:
    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        d, k = _minmax(dense), _minmax(bm25)
        ids = set(d) | set(k)
        return _ranked({p: (wd * d.get(p, 0) + wk * k.get(p, 0)) * ((p in d) + (p in k)) for p in ids}, dense, bm25)

    return fuse


def dense_floor(gap: float, wk: float = 1.0) -> Fusion:
    """Dense scored from its best (1) down to ``gap`` below it (0), BM25 min-max."""

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        best = dense[0][1] if dense else 0.0
        d = {p: max(0.0, 1 - (best - s) / gap) for p, s in dense}
        k = _minmax(bm25)
        return _ranked({p: d.get(p, 0) + wk * k.get(p, 0) for p in set(d) | set(k)}, dense, bm25)

    return fuse


_WORD = re.compile(r"\w+")
_FUNCTION_WORDS = (
    "a an the of to in on at for by with from and or but is are was were be been do does did have has had i my "
    "me we our you your he she his her it its they their what which who whom when where why how that this these "
    "those there any some all about as into than then so not no can could would should will"
)
_FUNCTION = set(_FUNCTION_WORDS.split())


def content_words(query: str) -> int:
    return sum(1 for w in _WORD.findall(query.lower()) if w not in _FUNCTION)


def by_length(short: float, long: float, cut: int) -> Fusion:
    """Min-max with BM25 weight ``short`` for queries of at most ``cut`` content words, else ``long``."""

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        return weighted(1.0, short if content_words(query) <= cut else long)(dense, bm25, query)

    return fuse


def sides_agree(bonus: float) -> Fusion:
    """Min-max sum plus ``bonus`` for a candidate both signals found."""

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        d, k = _minmax(dense), _minmax(bm25)
        both = set(d) & set(k)
        return _ranked({p: d.get(p, 0) + k.get(p, 0) + bonus * (p in both) for p in set(d) | set(k)}, dense, bm25)

    return fuse


def gated(floor: float, wk: float = 1.0) -> Fusion:
    """Min-max sum, but a BM25 hit's credit shrinks towards ``floor`` of itself as its dense score falls."""

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        d, k = _minmax(dense), _minmax(bm25)
        return _ranked(
            {p: d.get(p, 0) + wk * k.get(p, 0) * (floor + (1 - floor) * d.get(p, 0)) for p in set(d) | set(k)},
            dense,
            bm25,
        )

    return fuse


def softmax(td: float, tk: float, wk: float = 1.0) -> Fusion:
    """Each list's scores as a probability distribution over its candidates (softmax, temperature ``t``):
    a list whose best hits stand out gives them most of its mass, a flat one spreads it thin."""

    def probabilities(scored: Scored, t: float) -> dict[str, float]:
        if not scored:
            return {}
        high = scored[0][1]
        weights = {pid: math.exp((s - high) / t) for pid, s in scored}
        total = sum(weights.values())
        return {pid: w / total for pid, w in weights.items()}

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        d, k = probabilities(dense, td), probabilities(bm25, tk)
        return _ranked({p: d.get(p, 0) + wk * k.get(p, 0) for p in set(d) | set(k)}, dense, bm25)

    return fuse


def truncated(depth: int, inner: Fusion) -> Fusion:
    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        return inner(dense[:depth], bm25[:depth], query)

    return fuse


_ORDER: dict[str, int] = {}  # recall: each message's place in the conversation (set per conversation)


def windowed(
    lam: float,
    wk: float = 1.0,
    mode: str = "sum",
    knorm: Callable[[Scored], dict[str, float]] = _minmax,
    gate: float = 1.0,
    cut: int = 0,
    top: int = 0,
) -> Fusion:
    """Recall only: a message's min-max fused score plus ``lam`` x its neighbours' (what its result shows)."""

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        d, k = _minmax(dense), knorm(bm25)
        fused = {p: d.get(p, 0) + wk * k.get(p, 0) * (gate + (1 - gate) * d.get(p, 0)) for p in set(d) | set(k)}
        if cut:  # only the fused top ``cut`` reach the caller (what store.search(limit=cut) returns)
            fused = {p: fused[p] for p in _ranked(fused, dense, bm25)[:cut]}
        if not _ORDER:
            return _ranked(fused, dense, bm25)
        at = {i: p for p, i in _ORDER.items()}
        scores = dict(fused)
        for p in _ranked(fused, dense, bm25)[:top] if top else fused:
            f = fused[p]
            i = _ORDER.get(p)
            around = [fused.get(at.get(j, ""), 0.0) for j in (i - 1, i + 1)] if i is not None else [0.0]
            scores[p] = f + lam * (sum(around) if mode == "sum" else max(around))
        return _ranked(scores, dense, bm25)

    return fuse


def protected(keep: int, within: int, inner: Fusion | None = None) -> Fusion:
    """``inner``'s ranking (default min-max 1:1), but each signal's best ``keep`` candidates are never ranked
    below ``within``: a passage one signal ranks near the top and the other does not find is not pushed off the
    first page by passages both rank moderately."""
    base = inner or weighted()

    def fuse(dense: Scored, bm25: Scored, query: str) -> list[str]:
        ranking = base(dense, bm25, query)
        for side in (dense, bm25):
            for pid, _ in side[:keep]:
                at = ranking.index(pid)
                if at >= within:
                    ranking.insert(within - 1, ranking.pop(at))
        return ranking

    return fuse


def dense_only(dense: Scored, bm25: Scored, query: str) -> list[str]:
    return [p for p, _ in dense]


def bm25_only(dense: Scored, bm25: Scored, query: str) -> list[str]:
    return [p for p, _ in bm25]


def recall_default() -> Fusion:
    """conversation_search's ranking (memgpt.memory.recall): gated fusion, then the neighbours' share."""
    from memgpt.memory.recall import NEIGHBOUR_SHARE, RECALL_WEIGHTS, RESCORED
    from memgpt.storage.fusion import CANDIDATES

    w = RECALL_WEIGHTS
    return windowed(NEIGHBOUR_SHARE, w.keyword, gate=w.gate, cut=CANDIDATES, top=RESCORED)


VARIANTS: dict[str, Fusion] = {
    "dense": dense_only,
    "BM25": bm25_only,
    "minmax 1:1 (memgpt)": weighted(),
    "recall: memgpt's conversation_search": recall_default(),
    "RRF k=60": rrf(),
}
for _kd, _kk in ((10, 10), (30, 30), (10, 60), (60, 10), (20, 60), (60, 20), (5, 60), (100, 20)):
    VARIANTS[f"RRF kd={_kd} kk={_kk}"] = rrf(_kd, _kk)
for _wk in (0.6, 0.8, 1.25):
    VARIANTS[f"minmax BM25 x{_wk:g}"] = weighted(1.0, _wk)
for _wk in (0.75, 1.0, 1.25):
    VARIANTS[f"z-score BM25 x{_wk:g}"] = weighted(1.0, _wk, _zscore)
for _wk in (0.75, 1.0, 1.25):
    VARIANTS[f"CombMNZ BM25 x{_wk:g}"] = combmnz(1.0, _wk)
for _gap in (0.1, 0.2, 0.3):
    VARIANTS[f"dense floor {_gap:g}"] = dense_floor(_gap)
for _short, _long, _cut in ((1.25, 0.8, 2), (0.8, 1.25, 2), (1.25, 0.8, 3), (0.8, 1.25, 3), (1.5, 1.0, 2)):
    VARIANTS[f"BM25 x{_short:g} if <= {_cut} words else x{_long:g}"] = by_length(_short, _long, _cut)
for _wk in (0.8, 1.0, 1.25):
    VARIANTS[f"minmax, short BM25 list from 0, BM25 x{_wk:g}"] = weighted(1.0, _wk, knorm=_from_zero_when_short())
    VARIANTS[f"minmax dense, BM25 / best, BM25 x{_wk:g}"] = weighted(1.0, _wk, knorm=_over_best)
for _floor, _wk in ((0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (0.5, 1.5), (0.25, 2.0), (0.5, 1.25)):
    VARIANTS[f"BM25 credit x ({_floor:g} + {1 - _floor:g} dense), BM25 x{_wk:g}"] = gated(_floor, _wk)
for _td in (0.01, 0.02, 0.04):
    for _tk in (0.5, 1.0, 2.0):
        VARIANTS[f"softmax T dense {_td:g} BM25 {_tk:g}"] = softmax(_td, _tk)
for _depth in (30, 50):
    VARIANTS[f"minmax over the top {_depth} of each"] = truncated(_depth, weighted())
for _lam in (0.1, 0.25, 0.5):
    for _mode in ("sum", "max"):
        VARIANTS[f"recall: fused + {_lam:g} x neighbours' ({_mode})"] = windowed(_lam, mode=_mode)
for _lam in (0.25, 0.5):
    VARIANTS[f"W{_lam:g} + BM25 x1.25"] = windowed(_lam, 1.25)
    VARIANTS[f"W{_lam:g} + BM25 x0.8"] = windowed(_lam, 0.8)
    VARIANTS[f"W{_lam:g} + short BM25 from 0"] = windowed(_lam, knorm=_from_zero_when_short())
    VARIANTS[f"W{_lam:g} + short BM25 from 0 x1.25"] = windowed(_lam, 1.25, knorm=_from_zero_when_short())
    VARIANTS[f"W{_lam:g} + gate 0.25 x2"] = windowed(_lam, 2.0, gate=0.25)
    VARIANTS[f"W{_lam:g} + gate 0.5 x1.5"] = windowed(_lam, 1.5, gate=0.5)
    VARIANTS[f"W{_lam:g} + gate 0.75 x1.25"] = windowed(_lam, 1.25, gate=0.75)
for _lam in (0.15, 0.2, 0.25, 0.3, 0.4):
    for _gate, _wk in ((0.5, 1.25), (0.5, 1.5), (0.5, 1.75), (0.4, 1.5), (0.6, 1.5)):
        VARIANTS[f"G W{_lam:g} gate {_gate:g} x{_wk:g} top100"] = windowed(_lam, _wk, gate=_gate, cut=100)
for _top in (10, 15, 20, 30, 50):
    VARIANTS[f"T recall default, neighbours' share for the fused top {_top} only"] = windowed(
        0.2, 1.5, gate=0.5, cut=100, top=_top
    )
for _bonus in (0.1, 0.25):
    VARIANTS[f"minmax + {_bonus:g} when both find it"] = sides_agree(_bonus)
for _keep in (1, 2, 3):
    for _within in (3, 5, 10):
        VARIANTS[f"minmax, each side's top {_keep} kept within the top {_within}"] = protected(_keep, _within)


# -- scoring --------------------------------------------------------------------------------------------
def shown_with_neighbours(ranking: Sequence[str], order: list[str], top: int = 10) -> list[list[str]]:
    """Emulates RecallMemory.with_neighbours for messages that all have words."""
    where = {m: i for i, m in enumerate(order)}
    shown: set[str] = set()
    items: list[list[str]] = []
    for hit in ranking:
        if len(items) >= top:
            break
        if hit in shown or hit not in where:
            continue
        i = where[hit]
        around = [m for m in (order[i - 1] if i else None, order[i + 1] if i + 1 < len(order) else None) if m]
        item = [hit, *(m for m in around if m not in shown)]
        shown.update(item)
        items.append(item)
    return items


@dataclass
class Row:
    values: list[float]

    def beats(self, *others: Row) -> bool:
        return all(all(v > o for v, o in zip(self.values, other.values, strict=True)) for other in others)

    def at_least(self, *others: Row) -> bool:
        return all(all(v >= o for v, o in zip(self.values, other.values, strict=True)) for other in others)


def recall_row(rows: list[dict], order: list[str], fusion: Fusion) -> Row:
    _ORDER.clear()
    _ORDER.update({m: i for i, m in enumerate(order)})
    hits = {"a5": 0, "l5": 0, "a10": 0, "l10": 0, "rr": 0.0}
    for r in rows:
        items = shown_with_neighbours(fusion(r["dense"], r["bm25"], r["question"]), order)
        ranks = [next((i for i, ids in enumerate(items, 1) if set(g) & set(ids)), None) for g in r["evidence"]]
        found = [x for x in ranks if x is not None]
        hits["a5"] += any(x <= 5 for x in found)
        hits["l5"] += len(found) == len(ranks) and all(x <= 5 for x in found)
        hits["a10"] += bool(found)
        hits["l10"] += len(found) == len(ranks)
        hits["rr"] += 1 / min(found) if found else 0.0
    n = len(rows)
    return Row([hits["a5"] / n, hits["l5"] / n, hits["a10"] / n, hits["l10"] / n, hits["rr"] / n])


def archival_row(rows: list[dict], fusion: Fusion) -> Row:
    _ORDER.clear()
    r5 = r10 = rr = 0.0
    for r in rows:
        ranking = fusion(r["dense"], r["bm25"], r["question"])[:10]
        rank = next((i for i, pid in enumerate(ranking, 1) if pid in set(r["relevant"])), None)
        r5 += rank is not None and rank <= 5
        r10 += rank is not None
        rr += 1 / rank if rank else 0.0
    n = len(rows)
    return Row([r5 / n, r10 / n, rr / n])


def check_emulation(cache: dict) -> None:
    """The cached results of memgpt's own searches must equal the emulated ones (conversation_search: its
    ranking with neighbours; archival: min-max fusion)."""
    off = 0
    for conversation in (c for key in ("recall", HELD_OUT_KEY) for c in cache.get(key, {}).values()):
        fusion = recall_default()
        for r in conversation["questions"]:
            _ORDER.clear()
            _ORDER.update({m: i for i, m in enumerate(conversation["order"])})
            mine = shown_with_neighbours(fusion(r["dense"], r["bm25"], r["question"]), conversation["order"])
            off += [sorted(x) for x in mine] != [sorted(x) for x in r["search"]]
    _ORDER.clear()
    for rows in cache.get("archival", {}).values():
        for r in rows:
            off += weighted()(r["dense"], r["bm25"], r["question"])[:10] != r["search"]
    print(f"emulation check: {off} rankings differ from memgpt's own search")


def _fmt(row: Row) -> str:
    return " ".join(f"{v:.3f}" for v in row.values)


def report(cache: dict, names: Sequence[str], recall_metric: Callable[[Row], Row] = lambda r: r) -> None:
    check_emulation(cache)
    blocks: list[tuple[str, Callable[[Fusion], Row]]] = []
    for name, conversation in cache.get("recall", {}).items():
        blocks.append((f"recall {name}", lambda f, c=conversation: recall_row(c["questions"], c["order"], f)))
    if "recall" in cache:
        everything = [(c["questions"], c["order"]) for c in cache["recall"].values()]
        blocks.append(("recall all", lambda f: _pooled(everything, f)))
    for name, conversation in cache.get(HELD_OUT_KEY, {}).items():
        blocks.append((f"{HELD_OUT_KEY} {name}", lambda f, c=conversation: recall_row(c["questions"], c["order"], f)))
    for name, rows in cache.get("archival", {}).items():
        blocks.append((f"archival {name}", lambda f, rows=rows: archival_row(rows, f)))
        if name == "held-out":  # the first 40 (still tied with BM25 at recall@5 and @10) and the 88 written later
            first = [r for r in rows if not r["id"].startswith("held2-")]
            later = [r for r in rows if r["id"].startswith("held2-")]
            blocks.append(("archival held-out, first 40", lambda f, rows=first: archival_row(rows, f)))
            blocks.append(("archival held-out, later 88", lambda f, rows=later: archival_row(rows, f)))
    table = {(v, b): score(VARIANTS[v]) for v in names for b, score in blocks}
    print("metrics: recall any@5 all@5 any@10 all@10 MRR; archival r@5 r@10 MRR. '+' beats dense and BM25 at every")
    print("metric of the row, '=' at least ties both, '-' otherwise\n")
    width = max(len(v) for v in names)
    for b, _ in blocks:
        print(f"## {b}")
        for v in names:
            row = table[(v, b)]
            sides = (table[("dense", b)], table[("BM25", b)])
            mark = "+" if row.beats(*sides) else "=" if row.at_least(*sides) else "-"
            print(f"  {v:<{width}} {mark} {_fmt(row)}")
    winners = [v for v in names if all(table[(v, b)].beats(table[("dense", b)], table[("BM25", b)]) for b, _ in blocks)]
    print("\nvariants that beat both sides on every row:", winners)
    recall, archival = "recall: memgpt's conversation_search", "minmax 1:1 (memgpt)"
    ours = {b: recall if b.startswith("recall") else archival for b, _ in blocks}
    if all((v, b) in table for b, v in ours.items()):
        met = all(table[(v, b)].beats(table[("dense", b)], table[("BM25", b)]) for b, v in ours.items())
        print(f"memgpt (recall: conversation_search's fusion; archival: min-max 1:1) beats both on every row: {met}")


def _pooled(conversations: list[tuple[list[dict], list[str]]], fusion: Fusion) -> Row:
    rows = [(recall_row(q, o, fusion), len(q)) for q, o in conversations]
    n = sum(k for _, k in rows)
    return Row([sum(r.values[i] * k for r, k in rows) / n for i in range(5)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", choices=("recall", "archival", "all"), help="gather candidates into the cache")
    parser.add_argument("--set", default="tuning", choices=("tuning", "held-out", "all"), help="archival sets")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--match", action="append", help="show only variants whose name contains this (and both sides)")
    parser.add_argument(
        "--recall-held-out", action="store_true", help=f"with --collect recall/all: also {HELD_OUT.relative_to(ROOT)}"
    )
    args = parser.parse_args()
    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    if args.collect in ("recall", "all"):
        collect_recall(cache)
        if args.recall_held_out:
            collect_recall(cache, HELD_OUT, HELD_OUT_KEY)
    if args.collect in ("archival", "all"):
        sets = {
            "tuning": ROOT / "bench" / "retrieval_queries.json",
            "held-out": ROOT / "bench" / "retrieval_heldout.json",
        }
        collect_archival(cache, sets if args.set == "all" else {args.set: sets[args.set]})
    if args.collect:
        args.cache.write_text(json.dumps(cache))
    chosen = [v for v in VARIANTS if v not in ("dense", "BM25") and (not args.match or any(m in v for m in args.match))]
    names = ["dense", "BM25", *chosen]
    report(cache, names)


if __name__ == "__main__":
    main()
