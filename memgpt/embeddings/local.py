"""all-MiniLM-L6-v2 on ONNX Runtime: offline right after ``pip install``, no PyTorch.

The ONNX file and the tokenizer (the model's own ``tokenizer.json``) ship inside memgpt, both Apache-2.0: see
``assets/all-MiniLM-L6-v2/README.md`` for where the file comes from and how ``scripts/build_embedding_model.py``
rebuilds it. Its MatMuls run in int8 (weights per channel, activations quantized at run time): about half the
CPU of the fp32 graph, vectors within cosine ~0.98-0.996 of it; same model id, so existing homes keep theirs.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memgpt.embeddings.base import EmbeddingModel, Vector
from memgpt.errors import EmbeddingError
from memgpt.interrupts import interrupts_held
from memgpt.native_calls import guarded

MODEL_ID = "all-MiniLM-L6-v2"
DIMENSIONS = 384
# sentence-transformers embeds at most 256 tokens, [CLS] and [SEP] included.
MAX_SEQUENCE = 256
_ASSETS = Path(__file__).parent / "assets" / MODEL_ID
MODEL_FILE = _ASSETS / "model.onnx"
# What scripts/build_embedding_model.py builds (onnx 1.23.2, onnxruntime 1.32.0); tests check the shipped file.
MODEL_SHA256 = "9e80251537633bab7d98c9a4f07070371d83f1d28e6994a1f5d93c53de3c5454"
# Padded tokens per batch when no batch size is configured: a passage of a full chunk (~250 tokens) goes
# alone, short texts (queries, chat messages) go many at a time. Measured on the seed paper's 82 passages
# (bench/embed_bench.py, 2 busy cores): one long passage per batch took the fewest CPU seconds, 8 took ~35%
# more and 32 ~45% more (attention's activations grow with batch x length^2, likely out of cache).
BATCH_TOKENS = 256


def _import_runtime() -> tuple[Any, Any]:
    """onnxruntime and the tokenizer class, imported in the calling thread."""
    # A Ctrl-C while onnxruntime is being imported surfaces as ImportError("import numpy failed"): its
    # C extension imports numpy, prints the KeyboardInterrupt and raises ImportError in its place. So
    # Ctrl-C is held until the imports are done and then raised as what it is.
    with interrupts_held() as held:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            failure: ImportError | None = exc
        else:
            failure = None
    if held.received:
        raise KeyboardInterrupt
    if failure is not None:
        raise EmbeddingError(f"the local embedding model is not installed ({failure}); reinstall memgpt") from failure
    # Errors only, as for the session: ONNX Runtime otherwise warns on stderr, e.g. on every start of a user
    # whose home it cannot write ("Failed to persist telemetry device ID").
    onnxruntime.set_default_logger_severity(3)
    return onnxruntime, Tokenizer


def _exact_int8_products(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies int8 without saturating (x86 VNNI: AVX-512 VNNI or AVX-VNNI), as far as
    ``cpuinfo`` tells; False when it does not say (the exact but slower way is then kept)."""
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _create_runtime(onnxruntime: Any, tokenizer_class: Any, model_file: Path | None = None) -> tuple[Any, Any]:
    """The ONNX session (of :data:`MODEL_FILE` unless given another) and tokenizer; imports nothing, so it may
    run in a thread (see :func:`load_early`)."""
    tokenizer = tokenizer_class.from_file(str(_ASSETS / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQUENCE)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # ONNX Runtime's idle intra-op threads otherwise spin waiting for work between operators: on a busy
    # machine that burnt 40–70% more CPU seconds for the same vectors and was no faster (bench/embed_bench.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The model's int8 MatMuls multiply uint8 activations by int8 weights. x86 CPUs without VNNI (AVX2 or AVX-512
    # only: Intel before Ice Lake, AMD before Zen 4) do that with an instruction that saturates the sum of two
    # products at int16: emulating it (bench/int8_model.py saturation) put vectors at cosine 0.97 of the
    # unsaturated ones. With this option ONNX Runtime converts the weights to uint8 (exact, no saturation), so
    # every machine gets the same vectors. Where VNNI multiplies exactly anyway it is not a no-op: the same
    # vectors to the last bit took ~30% more time and CPU (2.2 -> 3.0 s for the seed paper's 86 passages).
    if not _exact_int8_products():
        options.add_session_config_entry("session.x64quantprecision", "1")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    model = model_file or MODEL_FILE
    if not model.is_file():
        raise EmbeddingError(f"the local embedding model file {model} is missing; reinstall memgpt")
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session, tokenizer


class _Runtime:
    """The process's one ONNX session and tokenizer, created on first use or early in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self._loading: threading.Thread | None = None
        self._failure: BaseException | None = None

    def load_early(self) -> None:
        with self._lock:
            if self._loaded is not None or self._loading is not None:
                return
            # Imports stay in the calling thread: a thread that imports while the main thread does can be
            # left waiting on an import lock for good after a Ctrl-C (see memgpt/storage/milvus/client.py).
            modules = _import_runtime()
            # Not a daemon: the process waits for it at exit. A process that ended while ONNX Runtime was still
            # building the session (an error or Ctrl-C at start-up) aborted: "terminate called without an
            # active exception", exit code -6.
            self._loading = threading.Thread(target=self._load, args=modules, name="embedding-load")
            self._loading.start()

    def _load(self, *modules: Any) -> None:
        try:
            self._loaded = _create_runtime(*modules)
        except BaseException as exc:  # noqa: BLE001 - raised where the runtime is first used
            self._failure = exc

    def get(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loading is not None:
                self._loading.join()
                self._loading = None
                if self._failure is not None:
                    failure, self._failure = self._failure, None  # raised once; the next use tries again
                    raise failure
            if self._loaded is None:
                self._loaded = _create_runtime(*_import_runtime())
            return self._loaded


_shared_runtime = _Runtime()


def _runtime() -> tuple[Any, Any]:
    """Load the ONNX session and tokenizer once per process (or wait for :func:`load_early`'s thread)."""
    return _shared_runtime.get()


def load_early() -> None:
    """Start creating the ONNX session in a thread, for a command that will embed soon: building it
    (ONNX Runtime optimises the graph, ~0.35 CPU seconds) mostly releases the GIL, so it overlaps the
    command's own imports (pymilvus, SQLAlchemy) on the other core. Its imports happen here."""
    _shared_runtime.load_early()


@functools.cache
def _counting_tokenizer() -> Any:
    """The same vocabulary without truncation or padding, for counting tokens while chunking."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_ASSETS / "tokenizer.json"))
    tokenizer.no_truncation()  # the file truncates at 128 and pads to 128
    tokenizer.no_padding()
    return tokenizer


# BERT's tokenizer cuts text at whitespace and around every punctuation character before WordPiece sees
# it, and its normalizer works character by character, so a text's token count is the sum of the counts
# of its words and ASCII punctuation marks. Counting words once and summing from a cache makes chunking
# (which counts overlapping stretches of the same text over and over) many times faster.
_PIECES = re.compile(r"[^ \n!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")
_PIECE_CACHE_LIMIT = 200_000
_MAX_WORD = 100  # max_input_chars_per_word in tokenizer.json
_piece_counts: dict[str, int] = {}


def _count(text: str) -> int:
    global _piece_counts
    counts = _piece_counts  # a full cache is replaced, never cleared, so other threads keep theirs
    pieces = _PIECES.findall(text)
    try:
        return sum(map(counts.__getitem__, pieces))
    except KeyError:
        pass
    if len(counts) > _PIECE_CACHE_LIMIT:
        counts = _piece_counts = {}
    missing = list({piece for piece in pieces if piece not in counts})
    # WordPiece reads a word of over 100 letters and digits as one [UNK]: no need to tokenize a long blob.
    unknown = [piece for piece in missing if len(piece) > _MAX_WORD and piece.isascii() and piece.isalnum()]
    counts.update(dict.fromkeys(unknown, 1))
    missing = [piece for piece in missing if piece not in counts]
    encodings = _counting_tokenizer().encode_batch(missing, add_special_tokens=False)
    for piece, encoding in zip(missing, encodings, strict=True):
        counts[piece] = len(encoding.ids)
    return sum(map(counts.__getitem__, pieces))


class LocalMiniLM(EmbeddingModel):
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2, as sentence-transformers computes it."""

    model_id = MODEL_ID
    dimensions = DIMENSIONS
    max_input_tokens = MAX_SEQUENCE - 2

    def __init__(self, batch_size: int = 0) -> None:
        """``batch_size`` texts per batch if given; by default batches hold up to :data:`BATCH_TOKENS`
        padded tokens."""
        self.batch_size = batch_size or 8
        self.batch_tokens = 0 if batch_size else BATCH_TOKENS

    def load_early(self) -> None:
        load_early()

    def batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Texts in order of their token count, grouped while a batch padded to its longest text stays
        within ``batch_tokens`` (a text longer than that goes alone)."""
        if not self.batch_tokens:
            return super().batches(texts)
        if len(texts) == 1:
            # One text (a query, a chat message) is one batch whatever its length: counting it would load
            # the counting tokenizer, ~30 ms of a `memgpt search` that embeds nothing else.
            return [[0]]
        lengths = [min(self.count_tokens(text) + 2, MAX_SEQUENCE) for text in texts]  # + [CLS] and [SEP]
        found: list[list[int]] = []
        batch: list[int] = []
        for index in sorted(range(len(texts)), key=lengths.__getitem__):
            # Sorted, so this text is the batch's longest: the batch pads to its length.
            if batch and (len(batch) + 1) * lengths[index] > self.batch_tokens:
                found.append(batch)
                batch = []
            batch.append(index)
        if batch:
            found.append(batch)
        return found

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        import numpy as np

        if not texts:
            return []
        session, tokenizer = _runtime()
        encodings = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        with guarded():  # (a daemon thread's call, a server turn's, must not be cut by the process's exit)
            hidden = session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32).tolist()

    def count_tokens(self, text: str) -> int:
        return _count(text)
