"""Provider adapters: JSON-mode function calling over the scripted server, Anthropic's wire format
against a local Messages-API stand-in, and how settings and environment pick a provider."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memgpt.config import LLMSettings
from memgpt.errors import ConfigError, ContextWindowExceededError, LLMError, LLMRetryableError
from memgpt.llm import create_llm, resolve_llm
from memgpt.llm.anthropic import AnthropicClient, to_anthropic
from memgpt.llm.base import EncodedChat, ToolChoice, ToolSpec
from memgpt.llm.json_mode import JsonFunctionClient, extract_json
from memgpt.llm.openai_compat import OpenAICompatible
from tests.http_json import read_json, send_json, send_raw
from tests.scripted_llm import Raw, ScriptedLLM

TOOLS = [
    ToolSpec(
        "send_message",
        "Send a message.",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    )
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"function": "send_message", "params": {"message": "hi"}}',
            {"function": "send_message", "params": {"message": "hi"}},
        ),
        ('Sure!\n```json\n{"function": "f", "params": {"a": 1,},}\n```', {"function": "f", "params": {"a": 1}}),
        ("{'function': 'f', 'params': {'a': 'b'}}", {"function": "f", "params": {"a": "b"}}),
        ('text {"not": "closed"', None),
        (
            '{"function": "f", "params": {"message": "a } brace"}}',
            {"function": "f", "params": {"message": "a } brace"}},
        ),
    ],
)
def test_extract_json_is_tolerant(text: str, expected: dict[str, Any] | None) -> None:
    assert extract_json(text) == expected


def test_json_mode_turns_text_into_a_tool_call() -> None:
    server = ScriptedLLM()
    try:
        server.add(
            {
                "content": 'OK: {"function": "send_message", "params": {"inner_thoughts": "be nice", '
                '"message": "Hello!"}}'
            }
        )
        client = JsonFunctionClient(OpenAICompatible(model="tiny", context_window=4096, endpoint=server.url))
        history = [
            {"role": "system", "content": "You are MemGPT."},
            {
                "role": "assistant",
                "content": "thinking",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "send_message", "arguments": '{"message": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"status": "OK"}'},
            {"role": "user", "content": "hi"},
        ]
        completion = client.complete(history, TOOLS)
        assert completion.content == "be nice"
        assert completion.tool_calls[0].name == "send_message"
        assert json.loads(completion.tool_calls[0].arguments) == {"message": "Hello!"}
        sent = server.requests[0]
        assert "tools" not in sent
        assert "- send_message: Send a message." in sent["messages"][0]["content"]
        assert [m["role"] for m in sent["messages"]] == ["system", "assistant", "user", "user"]
        assert json.loads(sent["messages"][1]["content"])["params"]["inner_thoughts"] == "thinking"
    finally:
        server.close()


class AnthropicStandIn(ThreadingHTTPServer):
    replies: list[tuple[int, Any]]
    bodies: list[dict[str, Any]]
    headers_seen: list[dict[str, str]]


@pytest.fixture
def anthropic() -> Iterator[AnthropicStandIn]:
    class Handler(BaseHTTPRequestHandler):
        server: AnthropicStandIn

        def do_POST(self) -> None:
            self.server.bodies.append(read_json(self))
            self.server.headers_seen.append(dict(self.headers))
            status, payload = self.server.replies.pop(0)
            if isinstance(payload, Raw):
                send_raw(self, status, payload.body.encode(), payload.content_type)
            else:
                send_json(self, status, payload)

        def log_message(self, *args: object) -> None: ...

    server = AnthropicStandIn(("127.0.0.1", 0), Handler)
    server.replies, server.bodies, server.headers_seen = [], [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_anthropic_messages_and_tool_use(anthropic: AnthropicStandIn) -> None:
    anthropic.replies.append(
        (
            200,
            {
                "content": [
                    {"type": "text", "text": "Let me answer."},
                    {"type": "tool_use", "id": "tu_1", "name": "send_message", "input": {"message": "Hi!"}},
                ],
                "usage": {"input_tokens": 10, "output_tokens": 5},
            },
        )
    )
    client = AnthropicClient(
        model="claude-x",
        context_window=200_000,
        api_key="k",
        endpoint=f"http://127.0.0.1:{anthropic.server_address[1]}",
    )
    history = [
        {"role": "system", "content": "You are MemGPT."},
        {"role": "user", "content": "one"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "archival_memory_search", "arguments": '{"query": "q"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "results"},
        {"role": "user", "content": "two"},
    ]
    completion = client.complete(history, TOOLS)
    assert completion.content == "Let me answer."
    assert (completion.tool_calls[0].name, json.loads(completion.tool_calls[0].arguments)) == (
        "send_message",
        {"message": "Hi!"},
    )
    body = anthropic.bodies[0]
    assert body["system"] == "You are MemGPT." and body["model"] == "claude-x"
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": "c1", "content": "results"}
    assert body["tools"][0]["input_schema"]["required"] == ["message"]
    assert anthropic.headers_seen[0]["x-api-key"] == "k"


def test_anthropic_errors(anthropic: AnthropicStandIn) -> None:
    client = AnthropicClient(
        model="m", context_window=1000, api_key="k", endpoint=f"http://127.0.0.1:{anthropic.server_address[1]}"
    )
    anthropic.replies.append((529, {"error": {"message": "Overloaded"}}))
    with pytest.raises(LLMRetryableError, match="529: Overloaded"):
        client.request([{"role": "user", "content": "x"}], ())
    anthropic.replies.append((400, {"error": {"message": "prompt is too long: 300000 tokens > 200000 maximum"}}))
    with pytest.raises(ContextWindowExceededError):
        client.request([{"role": "user", "content": "x"}], ())


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        ((200, Raw('{"content": [{"type": "text", "text": "Hel', "text/plain")), LLMRetryableError, "not valid JSON"),
        ((200, Raw("<html><body>Welcome</body></html>", "text/html")), LLMError, "answered with an HTML page"),
        (
            (200, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            LLMRetryableError,
            "answered 200 with an error: Overloaded",
        ),
        ((200, {"id": "msg_1", "content": "just a string"}), LLMRetryableError, "without content blocks"),
        (
            (200, {"content": [{"type": "tool_use", "id": "tu_1", "input": {}}]}),
            LLMRetryableError,
            "a tool_use block without a name",
        ),
        ((500, ["not", "an", "object"]), LLMRetryableError, 'answered 500: ["not", "an", "object"]'),
        ((502, Raw("<html>Bad Gateway</html>", "text/html")), LLMRetryableError, "answered 502: an HTML page"),
        ((400, {"error": {"type": "invalid_request_error"}}), LLMError, "answered 400: invalid_request_error"),
    ],
)
def test_anthropic_unexpected_replies_are_one_line(
    anthropic: AnthropicStandIn, reply: tuple[int, Any], error: type[Exception], message: str
) -> None:
    endpoint = f"http://127.0.0.1:{anthropic.server_address[1]}"
    client = AnthropicClient(model="m", context_window=1000, api_key="k", endpoint=endpoint)
    anthropic.replies.append(reply)
    with pytest.raises(error) as raised:
        client.request([{"role": "user", "content": "x"}], TOOLS)
    assert message in str(raised.value) and str(raised.value).startswith(endpoint)
    assert "\n" not in str(raised.value)


def test_anthropic_tool_choice_usage_and_arguments(anthropic: AnthropicStandIn) -> None:
    endpoint = f"http://127.0.0.1:{anthropic.server_address[1]}"
    client = AnthropicClient(model="m", context_window=1000, api_key="k", endpoint=endpoint)
    client.tool_choice = "auto_then_send_message"
    anthropic.replies.append((200, {"content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 5}}))
    anthropic.replies.append(
        (
            200,
            {
                "content": [{"type": "tool_use", "id": "tu_1", "name": "send_message", "input": {"message": "Hi!"}}],
                "stop_reason": "tool_use",
                "usage": {
                    "input_tokens": 12,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 2000,
                    "output_tokens": 7,
                },
            },
        )
    )
    answer = client.complete([{"role": "user", "content": "x"}], TOOLS)
    assert [b["tool_choice"] for b in anthropic.bodies] == [{"type": "auto"}, {"type": "tool", "name": "send_message"}]
    assert answer.empty_replies == 1 and answer.finish_reason == "tool_use"
    assert (answer.prompt_tokens, answer.cached_tokens, answer.completion_tokens) == (2112, 2000, 7)
    assert json.loads(answer.tool_calls[0].arguments) == {"message": "Hi!"}
    client.tool_choice = "required"
    anthropic.replies.append((200, {"content": [{"type": "text", "text": "ok"}]}))
    client.complete([{"role": "user", "content": "x"}], TOOLS)
    assert anthropic.bodies[-1]["tool_choice"] == {"type": "any"}


def test_alternation_is_repaired_for_anthropic() -> None:
    system, turns = to_anthropic(
        [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )
    assert system == ""
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert len(turns[2]["content"]) == 2


def test_environment_fills_in_only_what_the_config_leaves_open() -> None:
    assert resolve_llm(LLMSettings(), {"OPENAI_API_KEY": "sk"}).provider == "openai"
    assert resolve_llm(LLMSettings(), {"ANTHROPIC_API_KEY": "a"}).provider == "anthropic"
    local = resolve_llm(LLMSettings(), {"OPENAI_BASE_URL": "http://localhost:8000/v1"})
    assert (local.provider, local.endpoint, local.api_key) == ("openai", "http://localhost:8000/v1", "")
    explicit = LLMSettings(provider="ollama", model="llama3.1")
    resolved = resolve_llm(explicit, {"OPENAI_BASE_URL": "http://elsewhere/v1", "OPENAI_API_KEY": "sk"})
    assert (resolved.endpoint, resolved.model, resolved.context_window) == (
        "http://localhost:11434/v1",
        "llama3.1",
        8192,
    )
    pinned = LLMSettings(provider="openai", endpoint="http://mine/v1", model="m", context_window=4096)
    assert resolve_llm(pinned, {"OPENAI_BASE_URL": "http://env/v1"}).endpoint == "http://mine/v1"
    with pytest.raises(ConfigError, match="no LLM configured"):
        resolve_llm(LLMSettings(), {})
    with pytest.raises(ConfigError, match="anthropic needs an API key: set ANTHROPIC_API_KEY"):
        resolve_llm(LLMSettings(provider="anthropic"), {})
    azure = LLMSettings(provider="azure", endpoint="https://mine.openai.azure.com", model="gpt-4o-mini")
    with pytest.raises(ConfigError, match="azure needs an API key: set AZURE_OPENAI_API_KEY"):
        resolve_llm(azure, {})
    assert resolve_llm(azure, {"AZURE_OPENAI_API_KEY": "az"}).api_key == "az"
    assert isinstance(create_llm(LLMSettings(function_calling="json"), env={"OPENAI_API_KEY": "k"}), JsonFunctionClient)


def test_requests_name_the_deployment_on_azure_and_the_organization_on_openai(llm: ScriptedLLM) -> None:
    root = llm.url.removesuffix("/v1")
    azure = create_llm(LLMSettings(provider="azure", endpoint=root, model="gpt-4o-mini", api_key="az-key"))
    llm.reply("hi")
    assert azure.complete([{"role": "user", "content": "hi"}]).content == ""
    path, headers = llm.posts[-1]
    assert path == "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    assert headers["api-key"] == "az-key" and "authorization" not in headers
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": llm.url, "OPENAI_ORG_ID": "org-1"}
    openai = create_llm(LLMSettings(provider="openai", model="gpt-4o-mini"), env=env)
    llm.reply("hi")
    openai.complete([{"role": "user", "content": "hi"}])
    path, headers = llm.posts[-1]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test" and headers["openai-organization"] == "org-1"
    assert llm.requests[-1]["model"] == "gpt-4o-mini"


def test_clients_of_one_endpoint_share_a_connection_pool(llm: ScriptedLLM) -> None:
    from memgpt import httppool

    first, second = (OpenAICompatible(model="m", context_window=4096, endpoint=llm.url) for _ in range(2))
    other_key = OpenAICompatible(model="m", context_window=4096, endpoint=llm.url, api_key="k")
    assert first._route()[0] is second._route()[0] is httppool.client(llm.url, {"authorization": "Bearer not-needed"})
    assert other_key._route()[0] is not first._route()[0]


class _RawStandIn(ThreadingHTTPServer):
    raw_bodies: list[bytes]


def test_a_request_body_is_the_whole_payload_encoded_even_with_kept_message_texts() -> None:
    """The body is made of each message's JSON text, kept on an EncodedChat from earlier requests: it must be the
    bytes encoding the whole payload gives (a provider's prompt cache matches a prefix to the byte), and a kept
    text must not outlive a change to its message."""

    class Handler(BaseHTTPRequestHandler):
        server: _RawStandIn

        def do_POST(self) -> None:
            self.server.raw_bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            reply = {"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
            send_json(self, 200, reply)

        def log_message(self, *args: object) -> None: ...

    server = _RawStandIn(("127.0.0.1", 0), Handler)
    server.raw_bodies = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OpenAICompatible(
            model="mödel", context_window=4096, endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1"
        )
        call = {"id": "c1", "type": "function", "function": {"name": "send_message", "arguments": '{"message":"é"}'}}
        system = EncodedChat(role="system", content='Persona: "Sam" — naïve\n\u2028 tab\t')
        messages: list[dict[str, Any]] = [
            system,
            {"role": "user", "content": "hi ☃"},
            EncodedChat(role="assistant", content=None, tool_calls=[call]),  # sent with content ""
            EncodedChat(role="tool", tool_call_id="c1", content='{"status":"OK"}'),
        ]

        def expected(choice: Any) -> bytes:
            payload = {
                "model": "mödel",
                "messages": [{**m, "content": m["content"] or ""} for m in messages],
                "tool_choice": choice,
                "tools": [t.openai() for t in TOOLS],
            }
            return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

        client.request(messages, TOOLS, choice=ToolChoice.function("send_message"), timeout=10)
        assert server.raw_bodies[-1] == expected({"type": "function", "function": {"name": "send_message"}})
        system["content"] = "Persona: changed"  # core memory edited: the kept text goes with it
        del messages[3]["tool_call_id"]
        messages[1] = EncodedChat(role="user", content="again")
        client.request(messages, TOOLS, choice=ToolChoice(), timeout=10)
        assert server.raw_bodies[-1] == expected("auto")
        client.request(messages[:2], (), choice=ToolChoice(), timeout=10)
        assert json.loads(server.raw_bodies[-1]) == {"model": "mödel", "messages": messages[:2]}
    finally:
        server.shutdown()
        server.server_close()
