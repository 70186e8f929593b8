"""Broken and weak LLMs through real HTTP (the scripted server): every unexpected
reply is one clear line naming the endpoint, a hung endpoint fails within the time budget, empty
replies are asked again under the tool-choice policy, and arguments come out as clean JSON."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from memgpt.agent.tools import parse_arguments
from memgpt.config import LLMSettings
from memgpt.errors import ContextWindowExceededError, LLMError, LLMRetryableError, LLMTimeoutError
from memgpt.llm import create_llm, resolve_llm
from memgpt.llm.arguments import load_arguments, normalise_arguments
from memgpt.llm.base import ToolSpec
from memgpt.llm.json_mode import JsonFunctionClient
from memgpt.llm.openai_compat import OpenAICompatible, parse_chat_completion
from tests.scripted_llm import ScriptedLLM

TOOLS = [
    ToolSpec(
        "send_message",
        "Send a message.",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    ToolSpec("archival_memory_search", "Search.", {"type": "object", "properties": {"query": {"type": "string"}}}),
]
HELLO = [{"role": "system", "content": "You are MemGPT."}, {"role": "user", "content": "hi"}]
NAMED = {"type": "function", "function": {"name": "send_message"}}


def client(server: ScriptedLLM, **settings: Any) -> OpenAICompatible:
    made = OpenAICompatible(model="scripted", context_window=8192, endpoint=server.url, timeout=10, deadline=30)
    made.backoff_seconds = 0.01
    for name, value in settings.items():
        setattr(made, name, value)
    return made


def completion(content: str = "", calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


TRUNCATED = '{"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel'
HTML = "<!DOCTYPE html><html><head><title>Open WebUI</title></head><body>\n<div id=app></div></body></html>"


@pytest.mark.parametrize(
    ("entry", "error", "message", "retried"),
    [
        (
            {"body": TRUNCATED},
            LLMRetryableError,
            "sent a reply that is not valid JSON (Unterminated string starting at: character 90 of 94)",
            True,
        ),
        ({"body": ""}, LLMRetryableError, "sent an empty reply", True),
        ({"body": HTML, "content_type": "text/html"}, LLMError, "answered with an HTML page, not JSON", False),
        ({"body": "[1, 2]"}, LLMRetryableError, "sent JSON that is not an object", True),
        ({"json": {"id": "x", "object": "chat.completion"}}, LLMRetryableError, "sent a reply without choices", True),
        ({"json": {"choices": []}}, LLMRetryableError, "sent a reply without choices", True),
        ({"json": {"choices": [{"index": 0}]}}, LLMRetryableError, "sent a choice without a message", True),
        ({"json": completion(content=7)}, LLMRetryableError, "message content that is not text", True),  # type: ignore[arg-type]
        (
            {"json": completion(calls=[{"id": "c", "type": "function", "function": {"arguments": "{}"}}])},
            LLMRetryableError,
            "sent a tool call without a function name",
            True,
        ),
        (
            {"json": completion(calls=[{"id": "c", "type": "function"}])},
            LLMRetryableError,
            "sent a tool call without a function name",
            True,
        ),
        (
            {"json": {"choices": [{"message": {"content": "", "tool_calls": "send_message"}}]}},
            LLMRetryableError,
            "sent tool_calls that are not a list",
            True,
        ),
        (
            {"json": {"error": {"message": "Upstream provider overloaded", "code": 502}}},
            LLMRetryableError,
            "answered 200 with an error (code 502): Upstream provider overloaded",
            True,
        ),
        (
            {"json": {"error": {"message": "model 'x' does not support tools", "code": 400}}},
            LLMError,
            "answered 200 with an error (code 400): model 'x' does not support tools",
            False,
        ),
        (
            {"json": {"error": "something broke"}},
            LLMRetryableError,
            "answered 200 with an error: something broke",
            True,
        ),
        (
            {"body": HTML, "content_type": "text/html", "status": 502},
            LLMRetryableError,
            "answered 502: an HTML page",
            True,
        ),
    ],
)
def test_every_unexpected_reply_is_one_clear_line(
    llm: ScriptedLLM, entry: dict[str, Any], error: type[Exception], message: str, retried: bool
) -> None:
    llm.add(entry, entry)
    with pytest.raises(error) as raised:
        client(llm, max_retries=1).complete(HELLO, TOOLS)
    text = str(raised.value)
    assert message in text
    assert text.startswith(llm.url) and "\n" not in text
    assert isinstance(raised.value, LLMRetryableError) == retried
    assert len(llm.requests) == (2 if retried else 1)


def test_a_garbled_reply_is_retried_and_the_next_good_one_used(llm: ScriptedLLM) -> None:
    llm.add({"body": TRUNCATED}, {"json": {"choices": [{"index": 0}]}})
    llm.reply("made it")
    answer = client(llm).complete(HELLO, TOOLS)
    assert json.loads(answer.tool_calls[0].arguments) == {"message": "made it"}
    assert len(llm.requests) == 3


def test_an_overflow_error_inside_a_200_is_a_context_window_error(llm: ScriptedLLM) -> None:
    llm.add({"json": {"error": {"message": "This model's maximum context length is 8192 tokens", "code": 400}}})
    with pytest.raises(ContextWindowExceededError, match="maximum context length"):
        client(llm).complete(HELLO, TOOLS)


def test_a_refused_connection_names_the_endpoint() -> None:
    dead = OpenAICompatible(model="m", context_window=8192, endpoint="http://127.0.0.1:9/v1", deadline=30)
    dead.backoff_seconds, dead.max_retries = 0.01, 1
    with pytest.raises(LLMRetryableError, match=r"^cannot reach http://127.0.0.1:9/v1: .*gave up after 2 attempts"):
        dead.complete(HELLO, TOOLS)


# -- bounded time --------------------------------------------------------------------------------
def test_a_hung_endpoint_fails_within_the_deadline_saying_so(llm: ScriptedLLM) -> None:
    llm.add(*[{"hang": True}] * 20)
    hung = create_llm(
        LLMSettings(provider="vllm", model="m", endpoint=llm.url, timeout_seconds=2.5, attempt_timeout_seconds=0.7)
    )
    hung.backoff_seconds, hung.max_retries = 0.05, 19  # retries alone would go on for 20 x 0.7 = 14 s
    started = time.monotonic()
    with pytest.raises(LLMTimeoutError) as raised:
        hung.complete(HELLO, TOOLS)
    # The budget stops it: at most the attempts 2.5 s holds (each hangs 0.7 s), and well before the retries would
    # end (a generous bound: a loaded machine only makes the attempts, not their number, longer).
    assert time.monotonic() - started < 2.5 + 4
    attempts = len(llm.requests)
    assert 2 <= attempts <= 2.5 // 0.7 + 1
    assert re.fullmatch(
        rf"{re.escape(llm.url)} did not answer within 2\.5 s \({attempts} attempts\); "
        r"check the server or raise llm\.timeout_seconds",
        str(raised.value),
    )


def test_attempts_that_each_hung_name_the_bound_of_one_attempt(
    llm: ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries given up with time left: the message names the configured bound of one attempt, not the time spent;
    so does the warning of each retry (it said "within 0 s" for a bound under a second)."""
    llm.add(*[{"hang": True}] * 3)
    hung = create_llm(
        LLMSettings(provider="vllm", model="m", endpoint=llm.url, timeout_seconds=30, attempt_timeout_seconds=0.4)
    )
    hung.backoff_seconds, hung.max_retries = 0.05, 1
    with pytest.raises(LLMTimeoutError) as raised:
        hung.complete(HELLO, TOOLS)
    assert str(raised.value) == (
        f"{llm.url} did not answer within 0.4 s at any of 2 attempts; "
        "check the server or raise llm.attempt_timeout_seconds"
    )
    assert f"LLM call failed ({llm.url} did not answer within 0.4 s); retrying" in caplog.text


def test_one_request_may_use_the_whole_budget_by_default(llm: ScriptedLLM) -> None:
    llm.add({"hang": True})
    hung = create_llm(LLMSettings(provider="vllm", model="m", endpoint=llm.url, timeout_seconds=1.5))
    with pytest.raises(LLMTimeoutError, match=r"did not answer within 1\.5 s \(1 attempt\); check the server"):
        hung.complete(HELLO, TOOLS)
    defaults = create_llm(LLMSettings(), env={"OPENAI_API_KEY": "k"})
    assert defaults.deadline <= 120 and defaults.timeout <= defaults.deadline


def test_retries_stop_when_the_budget_is_spent(llm: ScriptedLLM) -> None:
    llm.add(*[{"status": 503, "delay": 0.3}] * 40)
    busy = client(llm, deadline=3.0, max_retries=39)  # retries alone would go on for 40 x 0.3 = 12 s
    started = time.monotonic()
    with pytest.raises(LLMRetryableError, match=r"answered 503: scripted error \(gave up after \d+ attempts in \d s\)"):
        busy.complete(HELLO, TOOLS)
    assert time.monotonic() - started < 3.0 + 4  # generous: a loaded machine makes each attempt longer, not more
    assert 2 <= len(llm.requests) <= 3.0 // 0.3 + 1  # each takes 0.3 s at least


# -- tool-choice policy --------------------------------------------------------------------------
def test_an_empty_reply_is_asked_again_naming_send_message(llm: ScriptedLLM) -> None:
    llm.add({"content": ""})
    llm.reply("Hello Chad!")
    answer = client(llm, tool_choice="auto_then_send_message").complete(HELLO, TOOLS)
    assert [c.name for c in answer.tool_calls] == ["send_message"]
    assert answer.empty_replies == 1 and not answer.empty
    assert [r["tool_choice"] for r in llm.requests] == ["auto", NAMED]


def test_without_the_recovering_policy_an_empty_reply_is_reported(llm: ScriptedLLM) -> None:
    llm.add({"content": "  "})
    answer = client(llm).complete(HELLO, TOOLS)
    assert answer.empty and answer.empty_replies == 1
    assert len(llm.requests) == 1
    llm.add({"content": ""}, {"content": ""})
    twice = client(llm, tool_choice="auto_then_send_message").complete(HELLO, TOOLS)
    assert twice.empty and twice.empty_replies == 2


def test_a_failed_second_ask_leaves_the_empty_reply_to_show(llm: ScriptedLLM) -> None:
    llm.add({"content": ""}, {"status": 400, "message": "tool_choice must be auto"})
    answer = client(llm, tool_choice="auto_then_send_message").complete(HELLO, TOOLS)
    assert answer.empty and answer.empty_replies == 1


def test_required_and_always_send_message(llm: ScriptedLLM) -> None:
    llm.add({"status": 500, "message": ""})
    with pytest.raises(LLMError, match=r'may not support tool_choice "required": set llm\.tool_choice to auto_then'):
        client(llm, tool_choice="required").complete(HELLO, TOOLS)
    assert len(llm.requests) == 1  # not retried: the same request fails the same way
    llm.reply("hi")
    client(llm, tool_choice="send_message").complete(HELLO, TOOLS)
    assert llm.requests[-1]["tool_choice"] == NAMED
    llm.add({"content": "no tools, no choice"})
    client(llm, tool_choice="send_message").complete(HELLO)
    assert "tool_choice" not in llm.requests[-1]


def test_local_presets_recover_and_hosted_ones_keep_auto() -> None:
    for provider in ("llamacpp", "ollama", "lmstudio", "vllm"):
        assert resolve_llm(LLMSettings(provider=provider, model="m")).tool_choice == "auto_then_send_message"
    assert resolve_llm(LLMSettings(), {"OPENAI_API_KEY": "k"}).tool_choice == "auto"
    assert resolve_llm(LLMSettings(provider="llamacpp", model="m", tool_choice="auto")).tool_choice == "auto"
    made = create_llm(LLMSettings(provider="ollama", function_calling="json"))
    assert isinstance(made, JsonFunctionClient) and made.tool_choice == "auto_then_send_message"


def test_json_mode_asks_again_for_send_message_in_words(llm: ScriptedLLM) -> None:
    llm.add({"content": "I am not sure."})  # no JSON: no call, but text, so not empty
    llm.add({"content": ""}, {"content": '{"function": "send_message", "params": {"message": "Hi!"}}'})
    wrapped = JsonFunctionClient(client(llm))
    wrapped.tool_choice = "auto_then_send_message"
    assert wrapped.complete(HELLO, TOOLS).content == "I am not sure."
    answer = wrapped.complete(HELLO, TOOLS)
    assert answer.empty_replies == 1 and answer.tool_calls[0].name == "send_message"
    assert 'This answer must call "send_message".' in llm.requests[-1]["messages"][0]["content"]
    assert "must call" not in llm.requests[-2]["messages"][0]["content"]


# -- arguments ---------------------------------------------------------------------------------
# The shapes llama-cpp-python 0.3.36 (chatml-function-calling, SmolLM2-135M) wrote: its prompt template
# HTML-escapes everything, and the model copies the escapes into its arguments.
LLAMA_CPP_SHAPES = [
    (
        '{"message": "Hello Chad! I&#39;m Sam. &#34;MemGPT&#34; is a system."}',
        {"message": 'Hello Chad! I\'m Sam. "MemGPT" is a system.'},
    ),
    ('{ "query": "&#34;", "request_heartbeat": false }', {"query": '"', "request_heartbeat": False}),
    ("{&#34;message&#34;: &#34;fixed&#34;}", {"message": "fixed"}),
    ('{"message": "two\nlines\tand a tab"}', {"message": "two\nlines\tand a tab"}),  # raw control characters
    ('"{\\"message\\": \\"double-encoded\\"}"', {"message": "double-encoded"}),
    ('{"message": "Tom &amp; Jerry say &#39;hi&#39; &lt;3"}', {"message": "Tom & Jerry say 'hi' <3"}),
    ('{"message": "write &quot; for a quote in HTML"}', {"message": "write &quot; for a quote in HTML"}),
    ("", {}),
]


@pytest.mark.parametrize(("raw", "expected"), LLAMA_CPP_SHAPES)
def test_arguments_come_out_as_clean_json(llm: ScriptedLLM, raw: str, expected: dict[str, Any]) -> None:
    llm.add({"raw_tool": "send_message", "raw_arguments": raw})
    call = client(llm).complete(HELLO, TOOLS).tool_calls[0]
    assert json.loads(call.arguments) == expected  # strict JSON now
    assert parse_arguments(call.arguments) == expected
    assert parse_arguments(raw) == expected  # arguments stored before this change still read right


def test_arguments_that_are_no_object_stay_as_written_for_the_model_to_fix() -> None:
    for raw in ('{"message": "unterminated', "[1, 2]", "not json"):
        assert normalise_arguments(raw) == raw
        assert load_arguments(raw) is None
    assert normalise_arguments({"message": "as an object"}) == '{"message": "as an object"}'
    assert load_arguments("[" * 5000 + "]" * 5000) is None


def test_reply_text_and_usage(llm: ScriptedLLM) -> None:
    body = completion("I&#39;m here &amp; listening")
    body["usage"] = {"prompt_tokens": 2524, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 2048}}
    answer = parse_chat_completion(json.dumps(body), "here")
    assert answer.content == "I'm here & listening"
    assert (answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens) == (2524, 9, 2048)
    assert answer.finish_reason == "stop"
    for usage in (None, {}, {"prompt_tokens": "many", "completion_tokens": -1}, "lots"):
        odd = parse_chat_completion(json.dumps({**completion("x"), "usage": usage}), "here")
        assert (odd.prompt_tokens, odd.completion_tokens, odd.cached_tokens) == (0, 0, 0)
    legacy = {"choices": [{"message": {"content": None, "function_call": {"name": "f", "arguments": "{}"}}}]}
    assert parse_chat_completion(json.dumps(legacy), "here").tool_calls[0].name == "f"


def test_lone_surrogate_escapes_in_a_reply_become_replacement_characters(llm: ScriptedLLM) -> None:
    """JSON allows "\\ud800" alone, which decodes to no Unicode text: stored, it failed the step (no database
    takes it). In the reply's text and in its arguments it becomes U+FFFD; a pair still makes one character."""
    body = json.dumps(completion("half \ud800 and whole \U0001f600"))
    assert "\\ud800" in body and "\\ud83d\\ude00" in body
    answer = parse_chat_completion(body, "here")
    assert answer.content == "half \ufffd and whole \U0001f600"
    llm.add({"raw_tool": "send_message", "raw_arguments": '{"message": "odd \\udc00 one"}'})
    call = client(llm).complete(HELLO, TOOLS).tool_calls[0]
    assert json.loads(call.arguments) == {"message": "odd \ufffd one"}
    call.arguments.encode("utf-8")  # storable
    assert normalise_arguments("not json \udc80") == "not json \ufffd"  # no object: as written, but whole
