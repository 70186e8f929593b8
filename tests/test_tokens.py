from pathlib import Path

import pytest

from memgpt.tokens import (
    bound_message,
    bound_text,
    bound_tools,
    count_message,
    count_text,
    count_tools,
    encoding,
)
from tests.conftest import DATA


def test_tiktoken_works_from_an_empty_cache_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    # Any download attempt would fail loudly instead of silently using the network.
    monkeypatch.setattr("tiktoken.load.read_file", lambda blobpath: pytest.fail(f"tried to download {blobpath}"))
    encoding.cache_clear()
    try:
        assert count_text("gpt-4", "hello world") == 2
        assert count_text("gpt-4o", "hello world") == 2
        assert count_text("some-local-model", "hello world") == 2
    finally:
        encoding.cache_clear()


def test_a_damaged_vocabulary_file_in_tiktokens_cache_is_replaced_from_the_shipped_copy_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiktoken checks the file it finds against the SHA-256 it expects and downloads it again when they differ:
    a truncated or changed file (a full disk, an interrupted copy) must not send an offline run to the network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr("tiktoken.load.read_file", lambda blobpath: pytest.fail(f"tried to download {blobpath}"))
    encoding.cache_clear()
    try:
        reference = encoding("cl100k_base").encode(SAMPLE, disallowed_special=())
        (vocabulary,) = (p for p in cache.iterdir() if p.suffix != ".marshal")
        whole = vocabulary.read_bytes()
        for damaged in (whole[: len(whole) // 2], whole.replace(b"aGVsbG8", b"aGVsbG9", 1), b""):
            assert damaged != whole
            vocabulary.write_bytes(damaged)
            for kept in cache.glob("*.marshal"):  # a new tiktoken or Python version: the vocabulary is read again
                kept.unlink()
            encoding.cache_clear()
            assert encoding("cl100k_base").encode(SAMPLE, disallowed_special=()) == reference
            assert vocabulary.read_bytes() == whole
    finally:
        encoding.cache_clear()


def test_threads_seeding_an_empty_cache_at_once_all_get_the_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's threads count tokens for the first time together (creating agents): each writes the shipped
    file to a temporary file of its own and moves it into place; one moved another's away once."""
    import threading

    from memgpt.tokens import _seed

    def seed(barrier: threading.Barrier, errors: list[OSError]) -> None:
        barrier.wait()
        try:
            _seed("cl100k_base")
        except OSError as exc:
            errors.append(exc)

    for attempt in range(3):
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / f"cache{attempt}"))
        barrier, errors = threading.Barrier(8), []
        threads = [threading.Thread(target=seed, args=(barrier, errors)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(list((tmp_path / f"cache{attempt}").iterdir())) == 1  # the file, no temporary one left


SAMPLE = "MemGPT's window: 8,192 tokens — naïve façade, 東京, emoji 🙂, code `x += 1`\n\n<|endoftext|> as text."


def test_a_decoded_encoding_is_kept_and_counts_as_tiktoken_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second process reads the decoded vocabulary (no base64 lines decoded again); tokens are identical."""
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    encoding.cache_clear()
    try:
        first = encoding("o200k_base")
        reference = tiktoken.get_encoding("o200k_base")  # tiktoken's own, from the file memgpt seeded
        kept = list((tmp_path / "cache").glob("o200k_base.*.marshal"))
        assert len(kept) == 1
        encoding.cache_clear()
        monkeypatch.setattr(
            "tiktoken_ext.openai_public.load_tiktoken_bpe", lambda *a, **k: pytest.fail("decoded the file again")
        )
        second = encoding("o200k_base")
        assert second is not first
        for found in (first, second):
            assert found.encode(SAMPLE, disallowed_special=()) == reference.encode(SAMPLE, disallowed_special=())
            assert found.n_vocab == reference.n_vocab
            assert found.special_tokens_set == reference.special_tokens_set
    finally:
        encoding.cache_clear()


def test_a_damaged_decoded_encoding_is_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    encoding.cache_clear()
    try:
        reference = encoding("cl100k_base").encode(SAMPLE, disallowed_special=())
        (kept,) = (tmp_path / "cache").glob("cl100k_base.*.marshal")
        whole = kept.read_bytes()
        for damaged in (whole[: len(whole) // 2], b"", b"\x00not marshal"):
            kept.write_bytes(damaged)
            encoding.cache_clear()
            assert encoding("cl100k_base").encode(SAMPLE, disallowed_special=()) == reference
            assert kept.read_bytes() == whole  # replaced by a good one
    finally:
        encoding.cache_clear()


def test_a_decoded_encoding_damaged_so_that_it_still_loads_is_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipped byte inside a token still parses, and would count tokens wrongly in every later process: the
    file's checksum says it is damaged, and it is decoded again and replaced."""
    import marshal

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    encoding.cache_clear()
    text = "hello world, hello again"
    try:
        reference = encoding("cl100k_base").encode(text)
        (kept,) = (tmp_path / "cache").glob("cl100k_base.*.marshal")
        whole = kept.read_bytes()
        damaged = whole.replace(b"hello", b"jello")
        assert damaged != whole

        def parses(data: bytes) -> bool:
            try:
                return isinstance(marshal.loads(data), dict)
            except (EOFError, ValueError, TypeError):
                return False

        assert parses(damaged) or parses(damaged.partition(b"\n")[2])  # whole, or after a first line of checks
        kept.write_bytes(damaged)
        encoding.cache_clear()
        assert encoding("cl100k_base").encode(text) == reference
        assert kept.read_bytes() == whole  # replaced by a good one
    finally:
        encoding.cache_clear()


HOSTILE = [
    "",
    " ",
    SAMPLE,
    "lone surrogates \ud800 and \udfff, a split pair \ud83d\ude42, 🙂🙂🙂",
    "<|endoftext|><|fim_prefix|><|im_start|>",
    "1 2 3 4 5 6 7 8 9 0 " * 50,
    "\n\n\n\t\t  " * 40,
    "東京の天気は晴れです。" * 30,
    "ﷺ𒐫𒈙👩‍👩‍👧‍👦 " * 20,
    "".join(chr(c) for c in range(32, 0x3000, 7)),
]


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o", "some-local-model"])
def test_the_bound_is_at_least_the_count(model: str) -> None:
    """The bound (UTF-8 bytes) decides without the tokenizer whether a context is far from its limit, so it
    must never be under tiktoken's count: for real documents, hostile strings, messages with tool calls and
    the tool schemas. The reason it holds: no token of either encoding is shorter than one byte."""
    from memgpt.agent.tools import builtin_tools

    vocabulary = encoding("o200k_base" if model == "gpt-4o" else "cl100k_base").token_byte_values()
    assert min(map(len, vocabulary)) >= 1
    documents = [p for p in sorted(DATA.glob("*")) if p.suffix in {".md", ".txt", ".csv", ".json"}]
    texts = [*HOSTILE, *(p.read_text(encoding="utf-8") for p in documents)]
    assert len(texts) > len(HOSTILE)
    for text in texts:
        assert bound_text(text) >= count_text(model, text), text[:60]
        message = {"role": "assistant", "content": text, "tool_calls": [{"function": {"arguments": text}}]}
        assert bound_message(message) >= count_message(model, message), text[:60]
    specs = [tool.spec() for tool in builtin_tools()]
    assert bound_tools(specs) >= count_tools(model, specs) > 0
    assert bound_tools([]) == count_tools(model, []) == 0
