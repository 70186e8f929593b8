"""Recall quality on LoCoMo (snap-research/locomo, data/locomo10.json): a public hold-out for issue 11.

Usage: python bench/locomo_bench.py --data PATH [--sample ID ...] [--no-names] [--misses VARIANT] [--json PATH]

PATH is locomo10.json or any file in its layout: a list of samples, each with "qa" (question, answer,
evidence dia_ids such as "D1:3", category 1-5) and "conversation" (speaker_a, speaker_b, session_N_date_time
such as "1:56 pm on 8 May, 2023", session_N: turns with speaker, dia_id, text and, for a shared photo,
blip_caption). The data is CC BY-NC 4.0: keep it out of this repository.

Each sample is written into its own memgpt home through recall_bench's path (bench/recall_adapter.py): a
message per turn, speaker_a as the user and speaker_b as the agent's send_message, each turn one minute after
the one before from its session's date and time (read as UTC), the index synced after every agent turn. A
turn's text is "Name: text" (``--no-names``: the text alone), and a shared photo adds
" [shares a photo: <blip_caption>]". Every question with evidence is asked as its own words, pages 0 and 1
(the top 10); each evidence dia_id is one item to find (recall_bench's scoring: any@k, all@k, MRR@10).
Evidence ids that name no turn are dropped and listed; questions left without evidence are not asked.
The rows run from memgpt's index before issue 11 (each message alone: dense, BM25, hybrid RRF k=60; but with
today's English analyzer) to conversation_search, so the issue's own baseline can be checked on this data.

Measure only: nothing in conversation_search may be tuned on this data (it is a hold-out).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.recall_adapter import Turn, local_model
from bench.recall_bench import (
    TOP,
    VARIANTS,
    Conversation,
    DataError,
    Question,
    Run,
    Scores,
    _table,
    console,
    print_overall,
    run_conversation,
    write_json,
)

# LoCoMo's category numbers, named after their questions (the paper's order differs from the file's numbers).
CATEGORIES = {1: "1 multi-hop", 2: "2 temporal", 3: "3 open-domain", 4: "4 single-hop", 5: "5 adversarial"}
GOAL = {"any@5": 0.70, "all@5": 0.55, "any@10": 0.85, "all@10": 0.72}  # issue 11, through conversation_search
# recall_bench's rankings: memgpt's index before issue 11 (each message alone: dense, BM25, hybrid RRF k=60, the
# issue's "memgpt today" row) to calibrate against the issue's own figures; memgpt's index (each message with its
# day and the message before it), dense or BM25 alone, one message per result and shown with neighbours; then
# conversation_search as the model calls it.
CHOSEN = (
    "dense-single",
    "bm25-single",
    "rrf-single",
    "dense-context",
    "bm25-context",
    "dense-shown",
    "bm25-shown",
    "search",
)
TURN_GAP = timedelta(minutes=1)
_DIA = re.compile(r"D\d+:\d+")
_SESSION = re.compile(r"session_(\d+)")


@dataclass
class Sample:
    conversation: Conversation
    questions: list[Question]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (question, evidence id naming no turn)
    unasked: int = 0  # questions without evidence (left after dropping)


def parse_when(text: str) -> datetime:
    """LoCoMo's "1:56 pm on 8 May, 2023", read as UTC."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def turn_text(turn: dict[str, object], names: bool) -> str:
    text = str(turn["text"])
    caption = turn.get("blip_caption")
    if caption:
        text += f" [shares a photo: {caption}]"
    return f"{turn['speaker']}: {text}" if names else text


def _sample(raw: object, number: int, names: bool) -> Sample:
    if not isinstance(raw, dict):
        raise DataError(f"sample {number} is not an object")
    name = str(raw.get("sample_id") or f"sample-{number}")
    try:
        conv = raw["conversation"]
        roles = {conv["speaker_a"]: "user", conv["speaker_b"]: "assistant"}
        sessions = sorted(
            (int(m.group(1)), value)
            for key, value in conv.items()
            if (m := _SESSION.fullmatch(key)) and isinstance(value, list) and value
        )
        turns: list[Turn] = []
        for session, rows in sessions:
            at = parse_when(conv[f"session_{session}_date_time"])
            if turns and at <= turns[-1].at:
                at = turns[-1].at + TURN_GAP  # a session dated before the last one ended continues after it
            for row in rows:
                if row["speaker"] not in roles:
                    raise DataError(f"{name}: turn {row['dia_id']} is by {row['speaker']!r}, not {' or '.join(roles)}")
                turns.append(Turn(f"{name}:{row['dia_id']}", roles[row["speaker"]], turn_text(row, names), at))
                at += TURN_GAP
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{name}: not in locomo10.json's layout ({type(exc).__name__}: {exc})") from exc
    if not turns:
        raise DataError(f"{name}: no session turns")
    if len({t.id for t in turns}) != len(turns):
        raise DataError(f"{name}: dia_ids repeat")
    known = {t.id for t in turns}
    sample = Sample(Conversation(name, f"{conv['speaker_a']} and {conv['speaker_b']}", turns, len(sessions)), [])
    for index, qa in enumerate(raw.get("qa") or [], 1):
        try:
            category = CATEGORIES[int(qa["category"])]
            entries = [str(entry) for entry in qa.get("evidence") or []]
            answer = qa.get("answer", qa.get("adversarial_answer", ""))
            question = str(qa["question"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{name}: question {index} is not in locomo10.json's layout ({exc!r})") from exc
        evidence: list[str] = []
        sample.dropped += [(question, entry) for entry in entries if not _DIA.search(entry)]
        for dia in (d for entry in entries for d in _DIA.findall(entry)):
            if f"{name}:{dia}" not in known:
                sample.dropped.append((question, dia))
            elif f"{name}:{dia}" not in evidence:
                evidence.append(f"{name}:{dia}")
        if not evidence:
            sample.unasked += 1
            continue
        sample.questions.append(
            Question(f"{name}-q{index:03d}", name, category, question, str(answer), tuple((e,) for e in evidence))
        )
    return sample


def load_samples(path: Path, names: bool = True) -> list[Sample]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a list of samples, as in locomo10.json")
    try:
        return [_sample(raw, number, names) for number, raw in enumerate(data, 1)]
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


# -- report -------------------------------------------------------------------------------------------
_METRICS = ["questions", "any@5", "all@5", "any@10", "all@10", "MRR@10"]
_SUBSETS: list[tuple[str, Callable[[Question], bool]]] = [
    ("all", lambda q: True),
    ("all but 5 (adversarial)", lambda q: not q.category.startswith("5")),
    ("all but 3 and 5", lambda q: q.category[0] not in "35"),
    *((label, lambda q, label=label: q.category == label) for label in CATEGORIES.values()),
]


def report(run: Run, samples: Sequence[Sample], labels: dict[str, str]) -> None:
    turns = sum(len(s.conversation.turns) for s in samples)
    title = (
        f"LoCoMo {', '.join(s.conversation.id for s in samples)}: {turns} turns, "
        f"{run.sessions} sessions, questions with evidence"
    )
    print_overall(run, title, labels, "after each agent turn; a turn")
    console.print("Goal (issue 11, conversation_search): " + ", ".join(f"{k} {v:.2f}" for k, v in GOAL.items()) + "\n")
    for name in run.outcomes:
        table = _table(f"{labels[name]}: by category", "questions", _METRICS)
        for label, keep in _SUBSETS:
            chosen = [o for o in run.outcomes[name] if keep(o.question)]
            if chosen:
                table.add_row(label, *Scores(chosen).row())
        console.print(table)
        console.print()
    if len(samples) > 1:
        table = _table("conversation_search by sample", "sample", _METRICS)
        for sample in samples:
            chosen = [o for o in run.outcomes["search"] if o.question.conversation == sample.conversation.id]
            if chosen:
                table.add_row(sample.conversation.id, *Scores(chosen).row())
        console.print(table)
        console.print()


def show_misses(run: Run, variant: str, samples: Sequence[Sample]) -> None:
    """Every question whose evidence is not all in the top 10, with what was shown instead."""
    text = {t.id: t.text for s in samples for t in s.conversation.turns}
    for outcome in run.outcomes[variant]:
        if outcome.all_at(TOP):
            continue
        q = outcome.question
        console.rule(f"{q.id} [{q.category}]")
        console.print(f"Q: {q.question}   (answer: {q.answer})", markup=False)
        for group, rank in zip(q.evidence, outcome.ranks, strict=True):
            console.print(f"  evidence {group[0]} rank {rank}: {text[group[0]]}", markup=False)
        for rank, ids in enumerate(outcome.shown[:5], 1):
            console.print(f"  shown #{rank} {','.join(ids)}: {text[ids[0]][:120]}", markup=False)


def measure(samples: Sequence[Sample], chosen: Sequence[str] = CHOSEN) -> Run:
    run = Run([v for v in VARIANTS if v.name in chosen])
    model = local_model()
    for sample in samples:
        run_conversation(sample.conversation, sample.questions, model, run)
    return run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="locomo10.json, or a file in its layout")
    parser.add_argument("--sample", action="append", help="run only this sample_id (repeatable)")
    parser.add_argument("--no-names", action="store_true", help="turn text without the speaker's name in front")
    parser.add_argument("--misses", metavar="VARIANT", help=f"list the questions it misses ({', '.join(CHOSEN)})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every ranking to this file")
    args = parser.parse_args(argv)
    try:
        samples = load_samples(args.data, names=not args.no_names)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if args.sample:
        unknown = set(args.sample) - {s.conversation.id for s in samples}
        if unknown:
            sys.exit(f"error: no sample {', '.join(sorted(unknown))} in {args.data}")
        samples = [s for s in samples if s.conversation.id in args.sample]
    if args.misses and args.misses not in CHOSEN:
        sys.exit(f"error: no variant {args.misses!r} (have: {', '.join(CHOSEN)})")
    for s in samples:
        console.print(
            f"{s.conversation.id}: {len(s.conversation.turns)} turns in {s.conversation.sessions} sessions, "
            f"{len(s.questions)} questions with evidence, {s.unasked} without"
            + (f"; evidence ids naming no turn (dropped): {', '.join(d for _, d in s.dropped)}" if s.dropped else ""),
            markup=False,
        )
    labels = {v.name: v.label for v in VARIANTS}
    run = measure(samples)
    report(run, samples, labels)
    if args.misses:
        show_misses(run, args.misses, samples)
    if args.json:
        write_json(run, args.json)


if __name__ == "__main__":
    main()
