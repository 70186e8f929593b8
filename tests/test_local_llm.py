"""One real turn of the seed's scenario against a real local LLM (llama-cpp-python's server with
SmolLM2-135M, see tests/local_llm.py), through the real `memgpt configure`, `load` and `run`.

A 135M model answers the seed's question badly; what is tested is the path: configure checks the server
and takes its model, the model calls a function, and what it wrote reaches the user with llama.cpp's
HTML escapes undone. The policy "send_message" keeps the turn to exactly one request (10-90 s on two
cores); the recovering policy's second request is covered against the scripted server.
"""

from __future__ import annotations

import html
import json
import tomllib
from pathlib import Path

import pytest

from memgpt.config import load_config, save_config
from tests.conftest import PAPER, run_cli
from tests.local_llm import LocalLLM, Recorder

SEED_QUESTION = "The paper I loaded into your archival memory is called MemGPT. Can you tell me more about it?"


@pytest.mark.long(100)  # 35-150 s: llama.cpp reads a 2k-token prompt on two cores
def test_one_real_turn_reaches_the_user_unescaped(local_llm: LocalLLM, home: Path) -> None:
    recorder = Recorder(local_llm.url)
    try:
        configured = run_cli(
            "configure",
            "--llm-provider",
            "llamacpp",
            "--llm-endpoint",
            recorder.url,
            "--tool-choice",
            "send_message",
            home=home,
        )
        assert configured.returncode == 0, configured.stderr
        assert tomllib.loads((home / "config.toml").read_text())["llm"]["model"] == local_llm.model  # the server's
        config = load_config(home)
        config.llm.timeout_seconds = 900  # a loaded two-core machine needs minutes for a 2k-token prompt
        save_config(config, home)
        loaded = run_cli("load", "directory", "--name", "memgpt_research_paper", f"--input-files={PAPER}", home=home)
        assert loaded.returncode == 0, loaded.stderr
        turn = run_cli(
            "run",
            "--agent",
            "smoke",
            "--persona",
            "memgpt_doc",
            "--attach",
            "memgpt_research_paper",
            "--message",
            SEED_QUESTION,
            home=home,
            timeout=1200,
        )
    finally:
        recorder.close()
    assert turn.returncode == 0, turn.stderr
    assert len(recorder.replies) == 1, turn.stdout
    call = recorder.replies[0]["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "send_message"
    written = json.loads(call["arguments"], strict=False)["message"]
    meant = html.unescape(written)
    shown = " ".join(turn.stdout.split())
    assert f"🤖 {' '.join(meant.split())}" in shown, (written, turn.stdout)
    assert "&#34;" not in turn.stdout and "&#39;" not in turn.stdout
    print(f"the model wrote {written!r}; the user saw {meant!r}")
