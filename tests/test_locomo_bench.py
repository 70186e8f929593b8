"""bench/locomo_bench.py: a hand-made file in locomo10.json's layout is read as LoCoMo means it (speakers, session
dates, photos, evidence ids) and scored through conversation_search in a real memgpt home."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.locomo_bench import load_samples, main, measure
from bench.recall_bench import DataError, Scores

SAMPLE = [
    {
        "qa": [
            {"question": "When did Ana adopt a tortoise?", "answer": "7 May 2023", "evidence": ["D1:3"], "category": 2},
            {
                "question": "Which instruments does Ben play?",
                "answer": "cello, banjo",
                "evidence": ["D1:4", "D2:2; D9:9", "D"],
                "category": 1,
            },
            {"question": "Would Ana like a zoo?", "answer": "Likely yes", "evidence": [], "category": 3},
            {
                "question": "Where did Ana see a lighthouse?",
                "evidence": ["D2:3"],
                "category": 5,
                "adversarial_answer": "a lighthouse",
            },
        ],
        "conversation": {
            "speaker_a": "Ana",
            "speaker_b": "Ben",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Ana", "dia_id": "D1:1", "text": "Hi Ben! How was your week?"},
                {"speaker": "Ben", "dia_id": "D1:2", "text": "Busy with work. Anything new with you?"},
                {"speaker": "Ana", "dia_id": "D1:3", "text": "I adopted a tortoise yesterday, his name is Pebble."},
                {"speaker": "Ben", "dia_id": "D1:4", "text": "Lovely! I practised my cello all evening."},
            ],
            "session_2_date_time": "10:05 am on 20 May, 2023",
            "session_2": [
                {"speaker": "Ana", "dia_id": "D2:1", "text": "Morning! Did you play anything this week?"},
                {"speaker": "Ben", "dia_id": "D2:2", "text": "I bought a banjo and learnt three chords."},
                {
                    "speaker": "Ana",
                    "dia_id": "D2:3",
                    "text": "Look what I saw on my walk.",
                    "img_url": ["https://example.invalid/x.jpg"],
                    "blip_caption": "a photo of a lighthouse at a harbour",
                },
                {"speaker": "Ben", "dia_id": "D2:4", "text": "Beautiful, the weather looks great."},
            ],
            "session_3_date_time": "9:00 am on 1 June, 2023",
        },
        "sample_id": "tiny",
    }
]


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_reads_speakers_dates_photos_and_evidence(tmp_path: Path) -> None:
    [sample] = load_samples(_write(tmp_path / "tiny.json", SAMPLE))
    turns = sample.conversation.turns
    assert [t.id for t in turns][:3] == ["tiny:D1:1", "tiny:D1:2", "tiny:D1:3"]
    assert [t.role for t in turns] == ["user", "assistant"] * 4
    assert turns[0].at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert turns[3].at == datetime(2023, 5, 8, 13, 59, tzinfo=UTC)
    assert turns[4].at == datetime(2023, 5, 20, 10, 5, tzinfo=UTC)
    assert turns[2].text == "Ana: I adopted a tortoise yesterday, his name is Pebble."
    assert turns[6].text == "Ana: Look what I saw on my walk. [shares a photo: a photo of a lighthouse at a harbour]"
    assert sample.conversation.sessions == 2  # session_3 has a date and no turns
    asked = {q.question: q for q in sample.questions}
    assert set(asked) == {
        "When did Ana adopt a tortoise?",
        "Which instruments does Ben play?",
        "Where did Ana see a lighthouse?",
    }
    # "D2:2; D9:9" is two ids in one entry; D9:9 names no turn and "D" no id: dropped and listed.
    assert asked["Which instruments does Ben play?"].evidence == (("tiny:D1:4",), ("tiny:D2:2",))
    assert sample.dropped == [("Which instruments does Ben play?", "D"), ("Which instruments does Ben play?", "D9:9")]
    assert sample.unasked == 1
    assert asked["Where did Ana see a lighthouse?"].category == "5 adversarial"
    assert asked["Where did Ana see a lighthouse?"].answer == "a lighthouse"
    [plain] = load_samples(tmp_path / "tiny.json", names=False)
    assert plain.conversation.turns[2].text == "I adopted a tortoise yesterday, his name is Pebble."
    # A session dated before the last one ended continues a minute after it: times keep increasing.
    early = json.loads(json.dumps(SAMPLE))
    early[0]["conversation"]["session_2_date_time"] = "1:57 pm on 8 May, 2023"
    [overlap] = load_samples(_write(tmp_path / "early.json", early))
    assert overlap.conversation.turns[4].at == datetime(2023, 5, 8, 14, 0, tzinfo=UTC)


def test_bad_file_names_the_sample_and_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = json.loads(json.dumps(SAMPLE))
    broken[0]["conversation"]["session_2"][1]["speaker"] = "Cleo"
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(_write(tmp_path / "broken.json", broken))])
    assert str(exit_.value) == f"error: {tmp_path / 'broken.json'}: tiny: turn D2:2 is by 'Cleo', not Ana or Ben"
    del broken[0]["conversation"]["session_2_date_time"]
    broken[0]["conversation"]["session_2"][1]["speaker"] = "Ben"
    broken[0]["conversation"]["session_9"] = broken[0]["conversation"].pop("session_2")
    _write(tmp_path / "broken.json", broken)
    with pytest.raises(DataError, match="session_9_date_time"):
        load_samples(tmp_path / "broken.json")


def test_conversation_search_finds_the_evidence(tmp_path: Path) -> None:
    samples = load_samples(_write(tmp_path / "tiny.json", SAMPLE))
    run = measure(samples, ["search", "bm25-context"])
    by_question = {o.question.question: o for o in run.outcomes["search"]}
    tortoise = by_question["When did Ana adopt a tortoise?"]
    assert tortoise.ranks == [1]  # shown first, mapped back to its dia_id
    assert "tiny:D1:3" in tortoise.shown[0]
    # Only the photo's caption says "lighthouse"; the BM25 index holds each turn with the one before it, so the
    # caption's turn or the reply after it ranks first.
    words = {o.question.question: o for o in run.outcomes["bm25-context"]}
    photo = words["Where did Ana see a lighthouse?"]
    assert photo.shown[0][0] in ("tiny:D2:3", "tiny:D2:4")
    instruments = by_question["Which instruments does Ben play?"]
    assert len(instruments.ranks) == 2 and instruments.all_at(10)
    assert Scores(run.outcomes["search"]).row()[:2] == ["3", "1.000"]


def test_report_has_the_rows_before_issue_11(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The rows issue 11's own baseline is compared with: each message indexed alone, dense, BM25 and hybrid RRF."""
    main(["--data", str(_write(tmp_path / "tiny.json", SAMPLE))])
    out = capsys.readouterr().out
    alone = ("dense", "BM25 (english analyzer)", "hybrid RRF k=60")
    for label in alone:
        assert f"| {label}, messages alone" in out
    assert "| conversation_search" in out
