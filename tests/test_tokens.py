from pathlib import Path

import pytest

from memgpt.tokens import count_tokens, encoding


def test_tiktoken_works_from_an_empty_cache_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    # Any download attempt would fail loudly instead of silently using the network.
    monkeypatch.setattr("tiktoken.load.read_file", lambda blobpath: pytest.fail(f"tried to download {blobpath}"))
    encoding.cache_clear()
    try:
        assert count_tokens("hello world", "gpt-4") == 2
        assert count_tokens("hello world", "gpt-4o") == 2
        assert count_tokens("hello world", "some-local-model") == 2
    finally:
        encoding.cache_clear()
