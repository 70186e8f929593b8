"""memgpt's local embedding (LocalMiniLM.embed_multi) against raw ONNX Runtime loops on the same passages.

Usage: python bench/embed_bench.py [--repeats 3] [--chat 600]
The passages are the seed paper's, chunked as `memgpt load` chunks them. Each raw loop runs the model
file memgpt ships with the tokenizer memgpt uses, sorted by length as memgpt batches, and varies only
the batch size, ONNX Runtime's intra-op threads and whether idle threads spin
(``session.intra_op.allow_spinning``; memgpt turns it off, ONNX Runtime's default is on). Wall and CPU
seconds are medians of ``repeats``; the loops take turns, so a burst of load hits them alike.

``--chat N`` then embeds N chat messages (3-40 words) in passes of 40 as a server's recall indexer does (memgpt's
batches, idle threads not spinning) on 1 and on 2 intra-op threads (memgpt runs one per core).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def session(threads: int, spin: bool) -> Any:
    """An ONNX Runtime session of the model file memgpt ships, on ``threads`` intra-op threads."""
    import onnxruntime

    from memgpt.embeddings.local import MODEL_FILE

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return onnxruntime.InferenceSession(str(MODEL_FILE), options, providers=["CPUExecutionProvider"])


def raw_loop(threads: int, batch: int, spin: bool) -> Callable[[Sequence[str]], None]:
    _, tokenizer = _runtime()
    running = session(threads, spin)

    def run(texts: Sequence[str]) -> None:
        ordered = sorted(texts, key=len)
        for start in range(0, len(ordered), batch):
            encodings = tokenizer.encode_batch(ordered[start : start + batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = running.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    return run


def chat_messages(count: int) -> list[str]:
    """``count`` chat-like messages of 3-40 words, the same every run."""
    rng = random.Random(7)
    words = " ".join(passages(LocalMiniLM())[:20]).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(count)]


def chat_loop(model: LocalMiniLM, threads: int) -> Callable[[Sequence[str]], None]:
    """memgpt's batches of each pass of 40 messages, on ``threads`` intra-op threads."""
    _, tokenizer = _runtime()
    running = session(threads, spin=False)

    def run(texts: Sequence[str]) -> None:
        for start in range(0, len(texts), 40):
            gathered = texts[start : start + 40]
            for batch in model.batches(gathered):
                encodings = tokenizer.encode_batch([gathered[i] for i in batch])
                ids = np.array([e.ids for e in encodings], dtype=np.int64)
                mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
                running.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})

    return run


def chat(model: LocalMiniLM, count: int, repeats: int) -> None:
    texts = chat_messages(count)
    tokens = sum(min(model.count_tokens(t) + 2, MAX_SEQUENCE) for t in texts)
    loops = {threads: chat_loop(model, threads) for threads in (1, 2)}
    walls: dict[int, list[float]] = {threads: [] for threads in loops}
    cpus: dict[int, list[float]] = {threads: [] for threads in loops}
    for run in loops.values():
        run(texts[:40])  # warm up
    for _ in range(repeats):
        for threads, run in loops.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(texts)
            walls[threads].append(time.perf_counter() - wall)
            cpus[threads].append(time.process_time() - cpu)
    print(f"\n### Embedding {count} chat messages ({tokens} tokens) in passes of 40, {os.cpu_count()} cores\n")
    print("| intra-op threads | wall s | CPU s | CPU ms a message |")
    print("|---|---|---|---|")
    for threads in loops:
        wall, cpu = statistics.median(walls[threads]), statistics.median(cpus[threads])
        print(f"| {threads} | {wall:.2f} | {cpu:.2f} | {cpu * 1000 / count:.2f} |")


# (threads, batch, spinning): ONNX Runtime's defaults at memgpt's former batch of 8, then the knobs one by one.
RAW = [(2, 8, True), (2, 8, False), (2, 1, True), (2, 1, False), (2, 2, False), (2, 32, False), (1, 1, False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chat", type=int, default=0, help="also embed this many chat messages on 1 and 2 threads")
    parser.add_argument("--chat-only", action="store_true", help="only the chat messages")
    args = parser.parse_args()
    model = LocalMiniLM()
    if args.chat_only:
        chat(model, args.chat or 600, args.repeats)
        return
    texts = passages(model)
    tokens = [min(model.count_tokens(t) + 2, MAX_SEQUENCE) for t in texts]
    cores = os.cpu_count() or 1
    loops: dict[str, Callable[[Sequence[str]], object]] = {
        f"| memgpt embed_multi (≤ {model.batch_tokens} padded tokens a batch) | {len(model.batches(texts))} batches "
        f"| {cores} | off": model.embed_multi,
        f"| memgpt embed_multi, batch_size 8 | 8 | {cores} | off": LocalMiniLM(batch_size=8).embed_multi,
    }
    for threads, batch, spin in RAW:
        threads = min(threads, cores)
        loops[f"| raw ONNX Runtime | {batch} | {threads} | {'on' if spin else 'off'}"] = raw_loop(threads, batch, spin)
    for run in loops.values():
        run(texts[:8])  # warm up
    walls: dict[str, list[float]] = {name: [] for name in loops}
    cpus: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, run in loops.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(texts)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    print(f"\n### Embedding {len(texts)} passages of the seed paper ({sum(tokens)} tokens), {cores} cores\n")
    print("| loop | batch | threads | spinning | wall s | CPU s | passages/s |")
    print("|---|---|---|---|---|---|---|")
    for name in loops:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"{name} | {wall:.2f} | {cpu:.2f} | {len(texts) / wall:.0f} |")
    if args.chat:
        chat(model, args.chat, args.repeats)


if __name__ == "__main__":
    main()
