"""Realistic 384-dim text-embedding vectors for the search benchmark, cached in bench/results/.

Embedding 100k real passages takes over an hour here, and random Gaussian vectors are misleading
(ANN indexes behave far worse on them than on text). So: real paragraphs from this Python's
standard library (docstrings and pydoc topics) are embedded with memgpt's local model, and the set
is filled up with noisy variants of them (cosine 0.85-0.90 to their parent), which keeps the
clustered shape of real embeddings. 100 held-out real paragraphs are the queries.

Usage: python bench/vectors.py --count 100000   (prints the two .npy paths)
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"
SKIP = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
QUERIES = 100


def paragraphs(limit: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for block in (ast.get_docstring(node) or "").split("\n\n"):
                    text = re.sub(r"\s+", " ", block).strip()
                    if 100 <= len(text) <= 1000:
                        found.add(text)
    ordered = sorted(found)
    random.Random(0).shuffle(ordered)
    return ordered[:limit]


def build(count: int, real: int = 4000) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data_path, query_path = RESULTS / f"vectors-{count}.npy", RESULTS / "queries.npy"
    if data_path.exists() and query_path.exists():
        return data_path, query_path
    embedded_path = RESULTS / "real-embeddings.npy"
    if embedded_path.exists():
        embedded = np.load(embedded_path)
    else:
        from memgpt.embeddings.local import LocalMiniLM

        texts = paragraphs(real + QUERIES)
        print(f"embedding {len(texts)} real paragraphs from the standard library...", file=sys.stderr)
        embedded = np.asarray(LocalMiniLM(batch_size=32).embed_multi(texts), dtype=np.float32)
        np.save(embedded_path, embedded)
    queries, pool = embedded[-QUERIES:], embedded[:-QUERIES]
    rng = np.random.default_rng(1)
    parents = pool[rng.integers(0, len(pool), max(0, count - len(pool)))]
    noise = rng.standard_normal(parents.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    variants = parents + noise * rng.uniform(0.48, 0.62, (len(parents), 1)).astype(np.float32)
    data = np.concatenate([pool, variants])[:count]
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    data = data[np.random.default_rng(2).permutation(len(data))]
    np.save(data_path, data)
    np.save(query_path, queries)
    return data_path, query_path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    for path in build(args.count):
        print(path)
