"""Load time for the seed PDF and a larger corpus, split into parse / embed / insert.

Usage: python bench/load_bench.py [--corpus-mb 5]
Overhead is the load's wall time over the time the same passages take to embed on their own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import build
from memgpt.config import Config
from memgpt.data.ingest import SourceLoader
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.storage.filters import eq

PAPER = Path(__file__).resolve().parent.parent / "tests" / "data" / "memgpt_research_paper.pdf"


def measure(name: str, files: list[Path], home: Path, model: LocalMiniLM, repeats: int) -> dict[str, float | int | str]:
    """Median of ``repeats`` full loads (each into a new source) against the median of as many
    plain embedding runs over the same passages: this machine's timings vary by 10-20% run to run."""
    config = Config()
    loads: list[tuple[float, dict[str, float], int]] = []
    with Storage(config, home) as storage:
        loader = SourceLoader.from_settings(storage, model, config.embedding, user_id=config.user_id)
        for attempt in range(repeats):
            began = time.perf_counter()
            report = loader.load(f"{name} #{attempt}", files)
            loads.append((time.perf_counter() - began, report.seconds, report.passages))
            assert report.ok, report.failures
        source = storage.metadata.get_source(config.user_id, f"{name} #0")
        assert source is not None
        store = storage.passages(model.space)
        texts = [p.text for batch in store.iterate(eq("source_id", source.id)) for p in batch]
        raw: list[float] = []
        for _ in range(repeats):
            began = time.perf_counter()
            model.embed_multi(texts)
            raw.append(time.perf_counter() - began)
    total, seconds, passages = sorted(loads)[len(loads) // 2]
    raw_embed = statistics.median(raw)
    size = sum(f.stat().st_size for f in files)
    return {
        "input": name,
        "runs": repeats,
        "MB": round(size / 1e6, 2),
        "passages": passages,
        "parse+chunk s": round(seconds["parse"], 2),
        "embed s": round(seconds["embed"], 2),
        "insert s": round(seconds["insert"], 2),
        "load total s": round(total, 2),
        "raw embed s": round(raw_embed, 2),
        "passages/s": round(passages / total, 1),
        "load vs raw embed": f"{(total / raw_embed - 1) * 100:+.1f}%",
    }


def table(rows: list[dict[str, float | int | str]]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus-mb", type=float, default=5.0, help="size of the larger corpus (MB of text)")
    args = parser.parse_args()
    model = LocalMiniLM()
    model.embed("warm up")  # model load is paid once per process, not per load
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows.append(measure("seed PDF (13 pages)", [PAPER], root / "home-paper", model, repeats=5))
        files = build(root / "corpus", int(args.corpus_mb * 1e6))
        rows.append(measure(f"text corpus ({args.corpus_mb:g} MB)", files, root / "home-corpus", model, repeats=1))
    print("\n### Load (all-MiniLM-L6-v2 int8 on ONNX Runtime, Milvus Lite)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
