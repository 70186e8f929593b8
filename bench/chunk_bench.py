"""Chunking time for pathological text: one long line of prose, words without line breaks, blobs.

Usage: python bench/chunk_bench.py [--mb 2]
Embedding is not timed: this is the step that ran before the first progress bar moved (a 20 MB
single-line file was still chunking after 150 s). The local model's chunk size and overlap are used.
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memgpt.config import EmbeddingSettings
from memgpt.data.chunking import Chunker
from memgpt.embeddings.local import LocalMiniLM

PROSE = Path(__file__).resolve().parent.parent / "tests" / "data" / "long_test.txt"


def texts(size: int) -> dict[str, str]:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    prose = PROSE.read_text(encoding="utf-8").replace("\n", " ")
    return {
        "prose on one line": (prose * (size // len(prose) + 1))[:size],
        "random words, one line": " ".join(rng.choice(words) for _ in range(size // 5))[:size],
        "base64 blob": base64.b64encode(rng.randbytes(size * 3 // 4)).decode()[:size],
        "hex blob": rng.randbytes(size // 2 + 1).hex()[:size],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=2.0, help="size of each text in millions of characters")
    args = parser.parse_args()
    settings = EmbeddingSettings()
    model = LocalMiniLM()
    chunker = Chunker(model.count_tokens, settings.chunk_size, settings.chunk_overlap)
    chunker.split("warm up the tokenizer")
    print(f"| text ({args.mb:g} M chars) | chunks | longest chunk (chars) | seconds | M chars/s |")
    print("|---|---|---|---|---|")
    for name, text in texts(int(args.mb * 1_000_000)).items():
        began = time.perf_counter()
        chunks = chunker.split(text)
        took = time.perf_counter() - began
        longest = max(len(c) for c in chunks)
        print(f"| {name} | {len(chunks):,} | {longest:,} | {took:.1f} | {len(text) / 1e6 / took:.2f} |", flush=True)


if __name__ == "__main__":
    main()
