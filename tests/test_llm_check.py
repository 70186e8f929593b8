"""`memgpt configure` asks the LLM endpoint what it serves: a server that is down or a model it does not
serve is one line at configure time, and the context window comes from the server where it says it."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import pexpect
import pytest

from memgpt.config import LLMSettings
from memgpt.errors import LLMError
from memgpt.llm import ResolvedLLM, resolve_llm
from memgpt.llm.probe import check_llm
from tests.conftest import TERMINAL, cli
from tests.scripted_llm import ScriptedLLM
from tests.test_configure_interactive import question


def check(provider: str, endpoint: str, model: str = "") -> Any:
    return check_llm(resolve_llm(LLMSettings(provider=provider, endpoint=endpoint, model=model), require_model=False))


@pytest.mark.parametrize(
    ("provider", "entry", "window", "source"),
    [
        ("vllm", {"id": "m", "max_model_len": 32768}, 32768, "max_model_len in /models"),
        ("openrouter", {"id": "m", "context_length": 200000}, 200000, "context_length in /models"),
        ("groq", {"id": "m", "context_window": 131072}, 131072, "context_window in /models"),
        ("llamacpp", {"id": "m", "owned_by": "llamacpp", "meta": {"n_ctx_train": 131072}}, 131072, "meta.n_ctx_train"),
        ("openai-compatible", {"id": "m", "owned_by": "me"}, 0, ""),
    ],
)
def test_the_window_comes_from_the_model_list(
    llm: ScriptedLLM, provider: str, entry: dict[str, Any], window: int, source: str
) -> None:
    llm.models = [entry, {"id": "other"}]
    found = check_llm(ResolvedLLM(provider, "m", llm.url, "key", 8192))
    assert (found.context_window, found.window_source.startswith(source), found.problem) == (window, True, "")
    assert found.served == ("m", "other")


def test_llama_cpp_says_the_window_it_runs_with_at_props(llm: ScriptedLLM) -> None:
    llm.models = [{"id": "model.gguf", "owned_by": "llamacpp", "meta": {"n_ctx_train": 131072}}]
    llm.props = {"default_generation_settings": {"n_ctx": 4096}, "total_slots": 1}
    found = check("llamacpp", llm.url)
    assert (found.model, found.context_window, found.window_source) == ("model.gguf", 4096, "/props n_ctx")
    assert "/props" in llm.gets


def test_ollama_counts_only_a_num_ctx_set_for_the_model(llm: ScriptedLLM) -> None:
    llm.models = [{"id": "llama3.1:latest", "object": "model", "owned_by": "library"}]
    llm.show = {"parameters": 'num_ctx                        16384\nstop "<|eot_id|>"', "model_info": {}}
    found = check("ollama", llm.url, "llama3.1")
    assert (found.problem, found.context_window, found.window_source) == ("", 16384, "num_ctx in /api/show")
    llm.show = {"parameters": 'stop "<|eot_id|>"', "model_info": {"llama.context_length": 131072}}
    assert check("ollama", llm.url, "llama3.1").context_window == 0  # Ollama would cut the prompt at its default


def test_models_it_does_not_serve(llm: ScriptedLLM) -> None:
    llm.models = [{"id": "a"}, {"id": "b"}]
    assert check("vllm", llm.url, "c").problem == f"{llm.url} does not serve the model 'c'; it serves: a, b"
    assert check("vllm", llm.url).problem == f"no model set, and {llm.url} serves several: a, b"
    assert check("llamacpp", llm.url, "anything").problem == ""  # llama.cpp answers with its one model
    llm.models = [{"id": "only"}]
    assert check("vllm", llm.url).model == "only"


def test_anthropic_lists_dated_ids_for_its_aliases(llm: ScriptedLLM) -> None:
    llm.models = [{"id": "claude-sonnet-4-5-20250929", "type": "model"}]
    root = llm.url.removesuffix("/v1")
    assert check_llm(ResolvedLLM("anthropic", "claude-sonnet-4-5", root, "k", 200_000)).problem == ""
    unknown = check_llm(ResolvedLLM("anthropic", "claude-x", root, "k", 1))
    assert "does not serve the model 'claude-x'" in unknown.problem


def test_an_endpoint_that_is_down_or_not_an_llm_api(llm: ScriptedLLM) -> None:
    with pytest.raises(LLMError, match=r"^cannot reach http://127.0.0.1:9/v1/models: "):
        check("vllm", "http://127.0.0.1:9/v1", "m")
    with pytest.raises(LLMError, match=r"/models answered 404 \(File Not Found\): is the endpoint the API's base URL"):
        check("vllm", llm.url.removesuffix("/v1"), "m")


def test_configure_checks_the_llm_and_learns_its_window(llm: ScriptedLLM, home: Path) -> None:
    llm.models = [{"id": "qwen", "max_model_len": 32768}]
    result = cli(
        "configure", "--llm-provider", "vllm", "--llm-endpoint", llm.url, "--llm-model", "qwen", home=home
    )
    assert result.returncode == 0, result.stderr
    assert f"LLM check: {llm.url} answered; context window 32768 from max_model_len in /models" in result.stdout
    saved = tomllib.loads((home / "config.toml").read_text())["llm"]
    assert (saved["model"], saved["context_window"], saved["tool_choice"]) == ("qwen", 32768, "")
    pinned = cli("configure", "--llm-model", "qwen", "--llm-context-window", "8000", home=home)
    assert pinned.returncode == 0, pinned.stderr
    assert tomllib.loads((home / "config.toml").read_text())["llm"]["context_window"] == 8000
    llm.models = [{"id": "qwen"}]  # says nothing about its window: not OpenAI's 128k either
    behind = cli(
        "configure", "--llm-provider", "openai", "--llm-endpoint", llm.url, "--llm-model", "qwen", home=home
    )
    assert behind.returncode == 0, behind.stderr
    assert "context window not given (using 8192; --llm-context-window sets it)" in behind.stdout
    assert tomllib.loads((home / "config.toml").read_text())["llm"]["context_window"] == 8192


def test_configure_refuses_an_llm_it_cannot_use(llm: ScriptedLLM, home: Path) -> None:
    llm.models = [{"id": "qwen"}]
    for args, message in [
        (["--llm-model", "nope"], f"{llm.url} does not serve the model 'nope'; it serves: qwen; choose one with --"),
        (["--llm-endpoint", "http://127.0.0.1:9/v1"], "cannot reach http://127.0.0.1:9/v1/models"),
        (["--tool-choice", "sometimes"], "--tool-choice must be one of auto, required, auto_then_send_message"),
        (["--function-calling", "xml"], "--function-calling must be native or json, not 'xml'"),
    ]:
        result = cli("configure", "--llm-provider", "vllm", "--llm-endpoint", llm.url, *args, home=home)
        assert result.returncode == 1, args
        assert result.stderr.startswith(f"error: {message}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not (home / "config.toml").exists() or "vllm" not in (home / "config.toml").read_text()
        if "check" in message or "reach" in message:
            assert result.stderr.rstrip().endswith("pass --no-llm-check to save without checking")


def test_no_llm_check_saves_offline_and_the_flags_are_kept(home: Path) -> None:
    result = cli(
        "configure",
        "--llm-provider",
        "llamacpp",
        "--llm-endpoint",
        "http://127.0.0.1:9/v1",
        "--llm-model",
        "m",
        "--function-calling",
        "json",
        "--tool-choice",
        "send_message",
        "--no-llm-check",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    assert "LLM check" not in result.stdout
    saved = tomllib.loads((home / "config.toml").read_text())["llm"]
    assert (saved["endpoint"], saved["function_calling"], saved["tool_choice"]) == (
        "http://127.0.0.1:9/v1",
        "json",
        "send_message",
    )
    assert cli("configure", "--milvus-uri", str(home / "milvus.db"), home=home).returncode == 0  # no LLM flags


def test_configure_at_a_terminal_offers_the_servers_window(llm: ScriptedLLM, tmp_path: Path) -> None:
    llm.models = [{"id": "qwen", "max_model_len": 32768}]
    env = {**os.environ, "HOME": str(tmp_path), "MEMGPT_HOME": str(tmp_path / ".memgpt"), **TERMINAL}
    child = pexpect.spawn(
        sys.executable, ["-m", "memgpt", "configure"], env=env, encoding="utf-8", timeout=60, dimensions=(40, 200)
    )
    try:
        for _ in range(3):  # storage, Milvus URI, embeddings: the defaults
            child.expect(r"\?")
            child.send("\r")
        child.expect(question("Select LLM provider:"))
        child.send("\x1b[B" * 4 + "\r")  # down to "vllm"
        child.expect(question("Enter the LLM model:"))
        child.sendline("qwen")
        child.expect(question("Enter the LLM endpoint:"))
        child.send("\x15" + llm.url + "\r")  # Ctrl-U clears the preset's endpoint
        child.expect(question("Enter the model's context window (tokens):"))
        child.expect_exact("32768")
        child.send("\r")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = tomllib.loads((tmp_path / ".memgpt" / "config.toml").read_text())["llm"]
    assert (saved["provider"], saved["endpoint"], saved["context_window"]) == ("vllm", llm.url, 32768)
