"""`memgpt configure` at a real terminal (a pty), answered like the seed's transcript."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import pexpect

from tests.conftest import TERMINAL

PROMPT_TIMEOUT = 60
_ESCAPES = r"(?:\x1b\[[0-9;?]*[A-Za-z]|\s)*"


def question(text: str) -> str:
    """The prompt "? text" as prompt_toolkit draws it, with colour codes between the parts."""
    return r"\?" + _ESCAPES + _ESCAPES.join(re.escape(word) for word in text.split(" "))


def test_prompts_in_the_seeds_words(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "MEMGPT_HOME": str(tmp_path / ".memgpt"), **TERMINAL}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "memgpt", "configure", "--no-llm-check"],  # no Ollama runs here; test_llm_check covers the check
        env=env,
        encoding="utf-8",
        timeout=PROMPT_TIMEOUT,
        dimensions=(40, 200),
    )
    try:
        child.expect(question("Select storage backend for archival data:"))
        child.send("\r")
        child.expect(question("Enter the Milvus connection URI (Default: ~/.memgpt/milvus.db):"))
        child.send("\r")  # accept the default, as in the seed
        child.expect(question("Select embedding provider:"))
        child.send("\r")
        child.expect(question("Select LLM provider:"))
        child.send("\x1b[B\x1b[B\x1b[B\r")  # down to "ollama"
        child.expect(question("Enter the LLM model:"))
        child.send("\r")
        child.expect(question("Enter the LLM endpoint:"))
        child.send("\r")
        child.expect(question("Enter the model's context window (tokens):"))
        child.send("\r")
        child.expect_exact("Saved ~/.memgpt/config.toml")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = tomllib.loads((tmp_path / ".memgpt" / "config.toml").read_text())
    assert saved["milvus"]["uri"] == "~/.memgpt/milvus.db"
    assert saved["embedding"]["provider"] == "local"
    assert (saved["llm"]["provider"], saved["llm"]["endpoint"]) == ("ollama", "http://localhost:11434/v1")
    assert (tmp_path / ".memgpt" / "milvus.db").exists()
