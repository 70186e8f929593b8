from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from memgpt.embeddings.local import (
    BATCH_TOKENS,
    MAX_SEQUENCE,
    MODEL_FILE,
    MODEL_SHA256,
    LocalMiniLM,
    _create_runtime,
    _exact_int8_products,
    _import_runtime,
    _runtime,
)
from memgpt.errors import EmbeddingError
from tests.conftest import REPO
from tests.thread_imports import WATCH_THREAD_IMPORTS


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_unit_length_and_meaningful(model: LocalMiniLM) -> None:
    cat, kitten, stocks = model.embed_multi(
        ["The cat sat on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    )
    assert len(cat) == 384
    assert math.sqrt(sum(v * v for v in cat)) == pytest.approx(1.0, abs=1e-4)
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3


# The int8 model quantizes each MatMul's input with one scale for the whole batch, so a text's vector depends a
# little on the texts it is batched with: cosine >= 0.98 between batches (measured 0.986 at worst below), where
# the fp32 model gave the same vector to 1e-4.
SAME_TEXT_OTHER_BATCH = 0.98


def test_batching_and_padding_barely_change_vectors(model: LocalMiniLM) -> None:
    texts = ["short", "a much longer sentence about virtual context management in operating systems " * 3]
    together = model.embed_multi(texts)
    alone = [model.embed(t) for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert cosine(a, b) >= SAME_TEXT_OTHER_BATCH
    assert model.embed(texts[0]) == alone[0]  # the same batch gives the same vector


def test_batches_hold_a_token_budget_and_every_text_once(model: LocalMiniLM) -> None:
    """By default a batch padded to its longest text holds at most BATCH_TOKENS tokens: long passages go
    alone, short texts together, each text exactly once."""
    texts = ["word " * n for n in (300, 3, 120, 0, 7, 250, 60, 1, 100, 5, 30)]
    batches = model.batches(texts)
    assert sorted(i for batch in batches for i in batch) == list(range(len(texts)))
    lengths = [min(model.count_tokens(t) + 2, MAX_SEQUENCE) for t in texts]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= BATCH_TOKENS
    assert batches[0][:5] == [3, 7, 1, 9, 4]  # the shortest first, together
    assert [0] in batches and [5] in batches  # a full-length passage alone
    assert len(LocalMiniLM(batch_size=4).batches(texts)) == 3  # a configured batch size is a count


def test_token_budget_batches_give_the_vectors_fixed_batches_give(model: LocalMiniLM) -> None:
    texts = [f"passage {n} about memory tiers and paging " * n for n in (1, 2, 5, 9, 20, 40, 3, 1)]
    budget = model.embed_multi(texts)
    fixed = LocalMiniLM(batch_size=8).embed_multi(texts)
    for a, b in zip(budget, fixed, strict=True):
        assert cosine(a, b) >= SAME_TEXT_OTHER_BATCH


def test_onnx_runtime_threads_do_not_spin_while_idle() -> None:
    session, _ = _runtime()
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_the_model_file_is_the_int8_build_memgpt_ships() -> None:
    """memgpt loads its own file: the int8 one scripts/build_embedding_model.py builds (its README records the
    sha256), not the earlier file whose weights ONNX Runtime folded back into fp32 (sha256 8199be6f...)."""
    assert MODEL_FILE.parent.name == "all-MiniLM-L6-v2"
    assert hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest() == MODEL_SHA256
    assert MODEL_SHA256 in (MODEL_FILE.parent / "README.md").read_text()
    session, _ = _runtime()
    assert Path(session._model_path) == MODEL_FILE


def test_int8_matmuls_do_not_saturate_on_x86_without_vnni() -> None:
    """Without VNNI, x86's uint8 x int8 products saturate in pairs at int16 (vectors at cosine ~0.97 of the fp32
    ones, bench/int8_model.py saturation): ONNX Runtime uses exact uint8 x uint8 there when this is on."""
    session, _ = _runtime()
    options = session.get_session_options()
    if _exact_int8_products():  # VNNI multiplies exactly: the option would only cost ~30% more time
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry("session.x64quantprecision")
    else:
        assert options.get_session_config_entry("session.x64quantprecision") == "1"


def test_only_a_cpu_without_vnni_is_asked_for_exact_int8_products(tmp_path: Path) -> None:
    """/proc/cpuinfo's flags decide; a CPU that does not say keeps the exact (slower) way."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert _exact_int8_products(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx_vnni\n")
    assert _exact_int8_products(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not _exact_int8_products(cpuinfo)
    assert not _exact_int8_products(tmp_path / "missing")


def test_vectors_stay_close_to_the_fp32_model(model: LocalMiniLM) -> None:
    """Fixed sentences (one word to a full passage, code, German, numbers) against the fp32 file's vectors
    (tests/data/minilm_reference.json, from bench/int8_model.py reference): each embedded alone, as a query is,
    within cosine 0.98 (measured 0.982-0.996); all in memgpt's batches, as messages and passages are, within
    0.97 (measured 0.973 for "ok" among the short ones, 0.99 for the rest)."""
    reference = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
    expected = [[v / math.sqrt(sum(x * x for x in vector)) for v in vector] for vector in reference["vectors"]]
    batched = model.embed_multi(reference["sentences"])
    for text, batch_vector, fp32 in zip(reference["sentences"], batched, expected, strict=True):
        assert cosine(model.embed(text), fp32) >= 0.98, text
        assert cosine(batch_vector, fp32) >= 0.97, text


def test_a_missing_model_file_is_one_clear_error(tmp_path: Path) -> None:
    onnxruntime, tokenizer_class = _import_runtime()
    with pytest.raises(EmbeddingError, match=r"model file .*missing\.onnx is missing; reinstall memgpt"):
        _create_runtime(onnxruntime, tokenizer_class, tmp_path / "missing.onnx")


def test_token_counts_are_not_truncated(model: LocalMiniLM) -> None:
    # The shipped tokenizer.json truncates at 128; counting must see every token.
    assert model.count_tokens("word " * 600) == 600


def test_matches_sentence_transformers_reference(model: LocalMiniLM) -> None:
    """Values of all-MiniLM-L6-v2 (PyTorch, sentence-transformers) for this sentence: int8 stays close."""
    vector = model.embed("This is an example sentence")
    reference_head = [0.0677, 0.0634, 0.0488, 0.0793, 0.0374]
    assert vector[:5] == pytest.approx(reference_head, abs=0.02)


# Runs in a fresh interpreter: sends itself SIGINT (a real Ctrl-C) the moment a module starts to import.
CTRL_C_DURING_IMPORT = """
import os, signal, sys

class CtrlC:
    def __init__(self, name):
        self.name, self.sent = name, False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name and not self.sent:
            self.sent = True
            sys.stderr.write(f"sending SIGINT while importing {fullname}\\n")
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC(sys.argv[1]))
"""


def test_ctrl_c_while_onnxruntime_loads_is_an_interrupt_not_a_missing_install() -> None:
    """onnxruntime's C extension imports numpy and turns a KeyboardInterrupt there into
    ImportError("import numpy failed"), which read as "not installed; reinstall memgpt"."""
    code = CTRL_C_DURING_IMPORT + (
        "from memgpt.embeddings.local import _runtime\n"
        "try:\n    _runtime()\nexcept KeyboardInterrupt:\n    print('KeyboardInterrupt')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "numpy"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "sending SIGINT while importing numpy" in out.stderr
    assert out.stdout.strip() == "KeyboardInterrupt", out.stdout
    assert "Traceback" not in out.stderr  # onnxruntime no longer prints the interrupted import


LOAD_EARLY = (
    WATCH_THREAD_IMPORTS
    + """
from memgpt.embeddings.local import LocalMiniLM

model = LocalMiniLM()
model.load_early()
threads = [t.name for t in threading.enumerate()]
import pymilvus  # what a command imports meanwhile
vector = model.embed("This is an example sentence")
print("embedding-load" in threads, sorted(set(seen)))
print(" ".join(f"{v:.4f}" for v in vector[:5]))
"""
)


def test_the_model_loaded_early_in_a_thread_is_the_one_used_and_the_thread_imports_nothing() -> None:
    """`load`, `search` and `run` build the ONNX session in a thread while pymilvus is imported; the
    imports stay in the main thread (a thread importing meanwhile can hang for good after a Ctrl-C)."""
    out = subprocess.run([sys.executable, "-c", LOAD_EARLY], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().splitlines()
    assert first == "True []", out.stdout
    reference_head = [0.0677, 0.0634, 0.0488, 0.0793, 0.0374]
    assert [float(v) for v in second.split()] == pytest.approx(reference_head, abs=0.02)


def test_a_process_exiting_while_a_daemon_thread_embeds_waits_for_the_call_and_exits_cleanly() -> None:
    """A server's turn threads are daemons: a process finalizing while one was inside ONNX Runtime's ``run`` (a
    turn embedding its archival search's query, say) aborted after its work was done: "terminate called without
    an active exception", exit code 134 (the thread is ended by ``pthread_exit`` as it takes the GIL back). The
    exit waits for the call under way, and the thread begins no other."""
    script = (
        "import threading, time\n"
        "from memgpt.embeddings.local import LocalMiniLM\n"
        "model, inside = LocalMiniLM(), threading.Event()\n"
        "model.embed_batch(['warm'])\n"
        "def turn():\n"
        "    while True:\n"
        "        inside.set()\n"
        "        model.embed_batch(['some text to embed ' * 20] * 8)\n"
        "threading.Thread(target=turn, name='memgpt-turn', daemon=True).start()\n"
        "assert inside.wait(30)\n"
        "time.sleep(0.3)  # inside ONNX Runtime most of the time\n"
        "print('exiting', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "exiting\n" and "terminate called" not in done.stderr, done.stderr[-2000:]
