from pathlib import Path

import pytest

from memgpt.tokens import count_text, encoding


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
