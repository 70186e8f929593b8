"""bench/server_bench.py's command line: options that need a tool it does not install say so in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import server_bench


@pytest.mark.parametrize("option", [["--threads"], ["--profile", "spy"]])
def test_py_spy_missing_is_one_line_before_any_load(
    option: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No py-spy on PATH nor next to the Python: exit at once, saying what to install (was: a FileNotFoundError
    traceback after the whole load had run)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(sys, "argv", ["server_bench.py", "--clients", "1", "--turns", "1", *option])
    with pytest.raises(SystemExit) as exited:
        server_bench.main()
    assert exited.value.code == "server_bench: --threads and --profile need py-spy: pip install py-spy"
