"""A deterministic text corpus of a given size built from the real documents in tests/data.

Paragraphs of the MemGPT paper and the other test files are shuffled into files of ~64 KB, each
file a different permutation, so every file is new content to the loader but reads like real text.
"""

from __future__ import annotations

import random
from pathlib import Path

from memgpt.data.loaders import parse, read_bytes

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SOURCES = ["memgpt_research_paper.pdf", "long_test.txt", "philosophical_question.txt", "test.md"]


def paragraphs() -> list[str]:
    found: list[str] = []
    for name in SOURCES:
        path = DATA / name
        for unit in parse(path, read_bytes(path)).units:
            found.extend(p.strip() for p in unit.text.split("\n") if len(p.strip()) > 80)
    return found


def build(target: Path, total_bytes: int, file_bytes: int = 64_000) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    pool = paragraphs()
    files: list[Path] = []
    written = 0
    rng = random.Random(42)
    while written < total_bytes:
        rng.shuffle(pool)
        body: list[str] = []
        size = 0
        for paragraph in pool:
            body.append(paragraph)
            size += len(paragraph.encode()) + 2
            if size >= file_bytes:
                break
        path = target / f"corpus_{len(files):04d}.txt"
        path.write_text("\n\n".join(body), encoding="utf-8")
        files.append(path)
        written += size
    return files
