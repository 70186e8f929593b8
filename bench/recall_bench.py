"""Recall quality: which evidence messages conversation_search puts in front of the model.

Usage: python bench/recall_bench.py [--quick] [--conversation ID ...] [--misses VARIANT] [--json PATH] [--data DIR]
Loads every conversation in bench/recall/conversations into its own memgpt home (Milvus Lite, SQLite,
local MiniLM; messages keep their original times and are indexed after each reply, as in a chat),
asks every question in bench/recall/questions.json (query = the question text, pages 0 and 1 = top 10)
and prints any@5 / all@5 / any@10 / all@10 and MRR@10 per category and overall for each variant, with
indexing cost per message and search latency. ``--quick`` runs the first conversation only.

A variant is one more ``Variant`` in ``VARIANTS``: a name, a search returning what the model would be
shown (``recall_adapter.Shown``), and optionally a ``prepare`` step that builds its own index once per
conversation. The rows go from memgpt's index before issue 11 (each message alone) through each step
to ``conversation_search`` as the model calls it (the last row). The data format and the scoring rules
are in bench/recall/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.recall_adapter import Model, RecallHome, Shown, Turn, local_model
from bench.retrieval_bench import archival
from memgpt.memory.recall import NEIGHBOUR_SHARE, RECALL_WEIGHTS
from memgpt.storage.fusion import Weights

DATA = Path(__file__).resolve().parent / "recall"
CATEGORIES = ("fact", "short_answer", "paraphrase", "date", "name", "aggregation", "changed")
MAX_EVIDENCE = 5  # so that all@5 can be reached
TOP = 10

console = Console(width=None if sys.stdout.isatty() else 150)  # whole tables when piped


class DataError(Exception):
    """The benchmark data is inconsistent: the message names the file and what is wrong."""


# -- data ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    turns: list[Turn]
    sessions: int

    def text(self, message_id: str) -> str:
        return next(t.text for t in self.turns if t.id == message_id)


@dataclass(frozen=True)
class Question:
    id: str
    conversation: str
    category: str
    question: str
    answer: str
    evidence: tuple[tuple[str, ...], ...]  # each item: messages that say the same thing (any one counts)
    context: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()


def load_conversation(path: Path) -> Conversation:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        turns = [
            Turn(m["id"], m["role"], m["text"], datetime.fromisoformat(m["at"]))
            for session in data["sessions"]
            for m in session["messages"]
        ]
        conversation = Conversation(data["id"], data["title"], turns, len(data["sessions"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a benchmark conversation ({type(exc).__name__}: {exc})") from exc
    for before, after in itertools.pairwise(turns):
        if after.at <= before.at:
            raise DataError(f"{path}: message {after.id} is not later than {before.id}")
    if any(t.role not in ("user", "assistant") or t.at.tzinfo is None for t in turns):
        raise DataError(f"{path}: every message needs role user/assistant and a time with a UTC offset")
    if len({t.id for t in turns}) != len(turns):
        raise DataError(f"{path}: message ids repeat")
    return conversation


def load_questions(path: Path, conversations: dict[str, Conversation]) -> list[Question]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        questions = [
            Question(
                r["id"],
                r["conversation"],
                r["category"],
                r["question"],
                r["answer"],
                tuple(tuple(e) if isinstance(e, list) else (e,) for e in r["evidence"]),
                tuple(r.get("context", ())),
                tuple(r.get("stale", ())),
            )
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a benchmark question list ({type(exc).__name__}: {exc})") from exc
    if len({q.id for q in questions}) != len(questions):
        raise DataError(f"{path}: question ids repeat")
    for q in questions:
        _check_question(path, q, conversations)
    return questions


def _check_question(path: Path, q: Question, conversations: dict[str, Conversation]) -> None:
    conversation = conversations.get(q.conversation)
    if conversation is None:
        raise DataError(f"{path}: question {q.id} names conversation {q.conversation!r}, which has no file")
    if q.category not in CATEGORIES:
        raise DataError(f"{path}: question {q.id} has category {q.category!r}; use one of {', '.join(CATEGORIES)}")
    if not 1 <= len(q.evidence) <= MAX_EVIDENCE:
        raise DataError(f"{path}: question {q.id} needs 1 to {MAX_EVIDENCE} evidence messages")
    known = {t.id for t in conversation.turns}
    cited = [m for group in q.evidence for m in group]
    for message_id in (*cited, *q.context, *q.stale):
        if message_id not in known:
            raise DataError(f"{path}: question {q.id} cites {message_id}, which is not in {q.conversation}")
    if len(set(cited)) != len(cited) or set(cited) & set((*q.context, *q.stale)):
        raise DataError(f"{path}: question {q.id} lists a message twice (evidence, context, stale)")


# -- variants -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str  # short, for --misses and the JSON
    label: str  # the table's row
    search: Callable[[RecallHome, str], Shown]
    prepare: Callable[[RecallHome], None] | None = None  # builds a variant's own index once per home


def _single(name: str, label: str, ranking: str) -> Variant:
    """A ranking over every message indexed alone (memgpt's index before issue 11), one message per result."""
    return Variant(name, label, lambda home, q: home.ranked(q, ranking, index="single"), RecallHome.prepare_single)


def _context(name: str, label: str, ranking: str, *, neighbours: bool) -> Variant:
    """A ranking over memgpt's index (each message with its day and the message before it)."""
    return Variant(name, label, lambda home, q: home.ranked(q, ranking, neighbours=neighbours))


VARIANTS = [
    _single("dense-single", "dense, messages alone", "dense"),
    _single("bm25-single", "BM25 (english analyzer), messages alone", "bm25"),
    _single("rrf-single", "hybrid RRF k=60, messages alone", "rrf"),
    _context("dense-context", "dense, messages in context", "dense", neighbours=False),
    _context("bm25-context", "BM25, messages in context", "bm25", neighbours=False),
    _context("fused-context", "hybrid normalised, messages in context", "fused", neighbours=False),
    _context("dense-shown", "dense, in context, shown with neighbours", "dense", neighbours=True),
    _context("bm25-shown", "BM25, in context, shown with neighbours", "bm25", neighbours=True),
    _context("rrf-shown", "hybrid RRF k=60, in context, with neighbours", "rrf", neighbours=True),
    _context("fused-shown", "hybrid normalised 1:1, in context, with neighbours", "fused", neighbours=True),
    Variant(
        "search",
        f"conversation_search (BM25 x{RECALL_WEIGHTS.keyword:g} gated {RECALL_WEIGHTS.gate:g}, neighbours' share "
        f"{NEIGHBOUR_SHARE:g}, context, neighbours)",
        lambda h, q: h.conversation_search(q),
    ),
]
# --sweep: the normalised pipeline with neighbours (ungated, no neighbours' share: conversation_search before
# its current fusion) with other weights (dense 1, BM25 x), per conversation; bench/fusion_sweep.py compares
# many more fusions on cached candidates.
SWEEP = [
    Variant(
        f"fused-k{x:g}",
        f"hybrid normalised, BM25 weight {x:g}, with neighbours",
        lambda home, q, x=x: home.ranked(q, "fused", neighbours=True, weights=Weights(1.0, x)),
    )
    for x in (0.5, 0.75, 1.5, 2.0)
]
LABELS = {v.name: v.label for v in (*VARIANTS, *SWEEP)}


# -- scoring ------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    question: Question
    shown: Shown
    seconds: float

    def rank(self, group: tuple[str, ...]) -> int | None:
        """1-based position of the first item showing any message of ``group``, within the top ``TOP``."""
        return next((i for i, ids in enumerate(self.shown[:TOP], 1) if set(group) & set(ids)), None)

    @property
    def ranks(self) -> list[int | None]:
        return [self.rank(group) for group in self.question.evidence]

    def any_at(self, k: int) -> bool:
        return any(r is not None and r <= k for r in self.ranks)

    def all_at(self, k: int) -> bool:
        return all(r is not None and r <= k for r in self.ranks)

    @property
    def reciprocal_rank(self) -> float:
        found = [r for r in self.ranks if r is not None]
        return 1 / min(found) if found else 0.0


@dataclass
class Scores:
    outcomes: list[Outcome] = field(default_factory=list)

    def row(self) -> list[str]:
        n = len(self.outcomes)

        def share(test: Callable[[Outcome], bool]) -> str:
            return f"{sum(1 for o in self.outcomes if test(o)) / n:.3f}"

        return [
            str(n),
            share(lambda o: o.any_at(5)),
            share(lambda o: o.all_at(5)),
            share(lambda o: o.any_at(10)),
            share(lambda o: o.all_at(10)),
            f"{sum(o.reciprocal_rank for o in self.outcomes) / n:.3f}",
        ]

    def latency(self) -> tuple[float, float]:
        millis = sorted(o.seconds * 1000 for o in self.outcomes)
        cuts = statistics.quantiles(millis, n=20, method="inclusive")
        return statistics.median(millis), cuts[18]


@dataclass
class Run:
    variants: list[Variant] = field(default_factory=lambda: list(VARIANTS))
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    index_seconds: float = 0.0
    messages: int = 0
    sessions: int = 0

    def __post_init__(self) -> None:
        self.outcomes = {v.name: [] for v in self.variants}


def run_conversation(conversation: Conversation, questions: Sequence[Question], model: Model, run: Run) -> None:
    with tempfile.TemporaryDirectory() as tmp, RecallHome(Path(tmp), model) as home:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{conversation.id}: writing and indexing", total=len(conversation.turns))
            run.index_seconds += home.load(conversation.turns, on_turn=lambda: progress.advance(task))
        if home.indexed() != len(conversation.turns):
            raise RuntimeError(f"{conversation.id}: {home.indexed()} of {len(conversation.turns)} messages indexed")
        run.messages += len(conversation.turns)
        run.sessions += conversation.sessions
        for variant in run.variants:
            if variant.prepare is not None:
                variant.prepare(home)
            variant.search(home, "warm up")
            for question in questions:
                began = time.perf_counter()
                shown = variant.search(home, question.question)
                run.outcomes[variant.name].append(Outcome(question, shown, time.perf_counter() - began))


# -- report -------------------------------------------------------------------------------------------
_METRICS = ["questions", "any@5", "all@5", "any@10", "all@10", "MRR@10"]


def _table(title: str, first: str, columns: list[str]) -> Table:
    table = Table(title=title, box=box.MARKDOWN, title_justify="left")
    table.add_column(first)
    for name in columns:
        table.add_column(name, justify="right")
    return table


def print_overall(run: Run, title: str, labels: dict[str, str], indexing: str) -> None:
    """Each variant's scores and search latency over every question, then the indexing cost ``indexing`` names."""
    overall = _table(title, "variant", [*_METRICS, "search p50 ms", "search p95 ms"])
    for name, outcomes in run.outcomes.items():
        p50, p95 = Scores(outcomes).latency()
        overall.add_row(labels[name], *Scores(outcomes).row(), f"{p50:.1f}", f"{p95:.1f}")
    console.print(overall)
    console.print(f"Indexing (embed + write, {indexing}): {run.index_seconds * 1000 / run.messages:.1f} ms")


def report(run: Run, conversations: Sequence[Conversation]) -> None:
    names = ", ".join(c.id for c in conversations)
    title = (
        f"Recall over {len(conversations)} conversations ({names}): {run.messages} messages, {run.sessions} sessions"
    )
    print_overall(run, title, LABELS, "after each reply; a message")
    console.print()
    for metric, test in (("any@10", lambda o: o.any_at(TOP)), ("all@10", lambda o: o.all_at(TOP))):
        table = _table(f"{metric} by category", "variant", list(CATEGORIES))
        for name, outcomes in run.outcomes.items():
            cells = []
            for category in CATEGORIES:
                chosen = [o for o in outcomes if o.question.category == category]
                cells.append(f"{sum(1 for o in chosen if test(o)) / len(chosen):.3f}" if chosen else "-")
            table.add_row(LABELS[name], *cells)
        console.print(table)
        console.print()
    if len(conversations) > 1:
        by_conversation(run, conversations)
    final = VARIANTS[-1].name
    table = _table(f"{LABELS[final]}: by category", "category", _METRICS)
    for category in CATEGORIES:
        chosen = [o for o in run.outcomes[final] if o.question.category == category]
        if chosen:
            table.add_row(category, *Scores(chosen).row())
    console.print(table)
    console.print()


def by_conversation(run: Run, conversations: Sequence[Conversation]) -> None:
    """any@10 / all@10 of each variant in each conversation: weights tuned on one must hold on the others."""
    table = _table("any@10 / all@10 by conversation", "variant", [c.id for c in conversations])
    for name, outcomes in run.outcomes.items():
        cells = []
        for conversation in conversations:
            chosen = [o for o in outcomes if o.question.conversation == conversation.id]
            cells.append(
                f"{sum(o.any_at(TOP) for o in chosen) / len(chosen):.3f} / "
                f"{sum(o.all_at(TOP) for o in chosen) / len(chosen):.3f}"
                if chosen
                else "-"
            )
        table.add_row(LABELS[name], *cells)
    console.print(table)
    console.print()


def show_misses(run: Run, variant: str, conversations: dict[str, Conversation]) -> None:
    """Every question whose evidence is not all in the top 10, with what was shown instead."""
    for outcome in run.outcomes[variant]:
        if outcome.all_at(TOP):
            continue
        q = outcome.question
        conversation = conversations[q.conversation]
        shown = {m for ids in outcome.shown for m in ids}
        notes = []
        if set(q.context) & shown:
            notes.append("its context message was shown")
        if set(q.stale) & shown:
            notes.append("a stale message was shown")
        console.rule(f"{q.id} [{q.category}] {'; '.join(notes)}")
        console.print(f"Q: {q.question}   (answer: {q.answer})", markup=False)
        for group, rank in zip(q.evidence, outcome.ranks, strict=True):
            console.print(f"  evidence {'/'.join(group)} rank {rank}: {conversation.text(group[0])}", markup=False)
        for rank, ids in enumerate(outcome.shown[:5], 1):
            console.print(f"  shown #{rank} {','.join(ids)}: {conversation.text(ids[0])[:110]}", markup=False)


def write_json(run: Run, path: Path) -> None:
    rows = [
        {"variant": name, "question": o.question.id, "ranks": o.ranks, "shown": o.shown, "ms": o.seconds * 1000}
        for name, outcomes in run.outcomes.items()
        for o in outcomes
    ]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the first conversation only")
    parser.add_argument("--conversation", action="append", help="run only this conversation (repeatable)")
    parser.add_argument("--misses", metavar="VARIANT", help="list the questions it does not fully answer in the top 10")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every ranking to this file")
    parser.add_argument("--data", type=Path, default=DATA, help="a folder in this format (default: bench/recall)")
    parser.add_argument("--sweep", action="store_true", help="also rank with other fusion weights (see SWEEP)")
    parser.add_argument("--no-archival", action="store_true", help="skip the archival table (bench/retrieval_bench.py)")
    args = parser.parse_args()
    try:
        files = sorted((args.data / "conversations").glob("*.json"))
        if not files:
            raise DataError(f"{args.data / 'conversations'}: no conversation files (*.json)")
        conversations = {c.id: c for c in (load_conversation(p) for p in files)}
        questions = load_questions(args.data / "questions.json", conversations)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    chosen = args.conversation or list(conversations)[: 1 if args.quick else None]
    unknown = [c for c in chosen if c not in conversations]
    if unknown:
        sys.exit(f"error: no conversation {', '.join(unknown)} (have: {', '.join(conversations)})")
    run = Run([*VARIANTS, *(SWEEP if args.sweep else [])])
    if args.misses and args.misses not in run.outcomes:
        sys.exit(f"error: no variant {args.misses!r} (have: {', '.join(run.outcomes)})")
    model = local_model()
    for name in chosen:
        run_conversation(conversations[name], [q for q in questions if q.conversation == name], model, run)
    report(run, [conversations[c] for c in chosen])
    if not args.no_archival:
        archival(model)
    if args.misses:
        show_misses(run, args.misses, conversations)
    if args.json:
        write_json(run, args.json)


if __name__ == "__main__":
    main()
