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
