"""The OpenAI-compatible endpoint (/openai/v1) driven by the official openai SDK, as a chat UI uses it:
models.list, chat completions streamed and not, a history resend, Open WebUI's background tasks, another
user's agents, errors in OpenAI's shape (401, 404, 400, busy)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from memgpt.types import Role
from tests import web
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, auth, overtaken_send, use_scripted_llm

TITLE_TASK = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Output:
JSON format: { "title": "your concise title here" }
### Chat History:
<chat_history>
USER: I like green tea.
ASSISTANT: Noted, green tea it is.
</chat_history>"""


@pytest.fixture
def server(home: Path, llm: ScriptedLLM) -> Iterator[LiveServer]:
    running = LiveServer(home, use_scripted_llm(home, llm.url))
    running.timing(busy_wait=0.5, retry_after=1, ping_every=0.3)
    yield running
    running.stop()


def openai_client(server: LiveServer, user: str | None = None, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/openai/v1", api_key=key or server.key(user), max_retries=0)


def make_agent(server: LiveServer, name: str, user: str | None = None) -> str:
    key = server.key(user)
    blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
    answer = web.post(f"{server.url}/v1/agents/", json={"name": name, "memory_blocks": blocks}, headers=auth(key))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def user_messages(server: LiveServer, agent_id: str) -> list[str]:
    stored = server.state.storage.messages.last(agent_id, 1000)
    return [m.content for m in stored if m.role is Role.USER and not m.name]


def history(*turns: tuple[str, str], last: str) -> list[dict[str, Any]]:
    said: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant."}]
    for user, assistant in turns:
        said += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return [*said, {"role": "user", "content": last}]


def test_models_lists_the_users_agents_only(server: LiveServer) -> None:
    sam = make_agent(server, "sam")
    make_agent(server, "other", user="bob")
    models = openai_client(server).models.list()
    assert [(m.id, m.agent_id) for m in models.data] == [("sam", sam)]  # type: ignore[attr-defined]
    assert openai_client(server).models.retrieve(sam).id == "sam"  # the agent id is a name for it too
    assert [m.id for m in openai_client(server, "bob").models.list().data] == ["other"]


def test_chat_completion_sends_only_the_newest_message(server: LiveServer, llm: ScriptedLLM) -> None:
    agent_id = make_agent(server, "sam")
    client = openai_client(server)
    llm.add({"tool": "conversation_search", "args": {"query": "tea", "request_heartbeat": True}, "content": "Hm."})
    llm.reply("Hello Chad!", thought="Greet him.")
    first = client.chat.completions.create(model="sam", messages=history(last="Hi, I like green tea."))  # type: ignore[arg-type]
    assert first.choices[0].message.content == "Hello Chad!"
    assert first.choices[0].message.tool_calls is None  # the agent's own tool use stays inside
    assert first.choices[0].finish_reason == "stop"
    assert first.object == "chat.completion" and first.model == "sam"
    assert first.usage is not None and first.usage.total_tokens >= 0

    llm.reply("Green tea, yes.")
    resent = history(("Hi, I like green tea.", "Hello Chad!"), last="What do I like?")
    second = client.chat.completions.create(model=agent_id, messages=resent)  # type: ignore[arg-type]
    assert second.choices[0].message.content == "Green tea, yes."
    assert user_messages(server, agent_id) == ["Hi, I like green tea.", "What do I like?"]
    # the agent's LLM saw the resent history only as its own memory: one copy of each user message
    seen = [m.get("content") for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert sum("Hi, I like green tea." in str(c) for c in seen) == 1
    assert not any("You are a helpful assistant." in str(m.get("content")) for m in llm.requests[-1]["messages"])


def test_streamed_completion_has_chunks_usage_and_done(server: LiveServer, llm: ScriptedLLM) -> None:
    agent_id = make_agent(server, "sam")
    llm.add({"calls": [("send_message", {"message": "One."}), ("send_message", {"message": "Two."})]})
    stream = openai_client(server).chat.completions.create(
        model="sam",
        messages=history(last="Count for me"),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One.\n\nTwo."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # the usage chunk comes last
    assert user_messages(server, agent_id) == ["Count for me"]

    raw = web.post(
        f"{server.url}/openai/v1/chat/completions",
        json={"model": "sam", "messages": [{"role": "user", "content": "Again"}], "stream": True},
        headers=auth(server.key()),
    )
    assert raw.text.rstrip().endswith("data: [DONE]")  # without a reply scripted the turn fails: an error event
    assert '"error"' in raw.text


def test_background_task_is_answered_statelessly(server: LiveServer, llm: ScriptedLLM) -> None:
    agent_id = make_agent(server, "sam")
    llm.add({"content": '{"title": "🍵 Green tea talk"}'})
    answer = openai_client(server).chat.completions.create(
        model="sam",
        messages=[{"role": "user", "content": TITLE_TASK}],
        max_completion_tokens=1000,
    )
    assert answer.choices[0].message.content == '{"title": "🍵 Green tea talk"}'
    asked = llm.requests[-1]
    assert asked["messages"] == [{"role": "user", "content": TITLE_TASK}]  # no memory, no system prompt
    assert not asked.get("tools")
    assert server.state.storage.messages.count(agent_id) == len(server.state.storage.messages.last(agent_id, 1000))
    assert user_messages(server, agent_id) == []
    assert not any("### Task:" in m.content for m in server.state.storage.messages.last(agent_id, 1000))

    llm.add({"content": '{"tags": ["Food"]}'})
    stream = openai_client(server).chat.completions.create(
        model="sam", messages=[{"role": "user", "content": TITLE_TASK}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == '{"tags": ["Food"]}'
    assert user_messages(server, agent_id) == []


CHAT = (("I like green tea.", "Noted, green tea it is."),)
# What other chat UIs send for their own default background prompts (their instruction's opening words as their
# sources have them, the rest of each instruction abridged), and where they put it.
UI_BACKGROUND: dict[str, list[dict[str, Any]]] = {
    "LibreChat title": [
        {
            "role": "user",
            "content": "Provide a concise, 5-word-or-less title for the conversation, using its same language. "
            "Only return the title itself.\n\nConversation:\nUser: I like green tea.\nAI: Noted, green tea it is.",
        }
    ],
    "LibreChat structured title": [
        {
            "role": "user",
            "content": "Analyze this conversation and provide:\n1. The detected language of the conversation\n"
            "2. A concise title in the detected language\n\nUser: I like green tea.\nAI: Noted.",
        }
    ],
    "LibreChat title before 0.7.6": [
        {
            "role": "system",
            "content": 'Please generate a concise, 5-word-or-less title for the conversation.\n\n||>User:\n"I like '
            'green tea."\n||>Response:\n"Noted."\n\n||>Title:',
        }
    ],
    "LobeChat topic": [
        {"role": "system", "content": "You are a professional conversation summarizer. Generate a concise title."},
        {"role": "user", "content": "user: I like green tea.\nassistant: Noted, green tea it is."},
    ],
    "Chatbox name": [
        {
            "role": "user",
            "content": "Name the conversation based on the chat records.\nPlease provide a concise name.\n\n"
            "```\nI like green tea.\n\n---------\n\nNoted, green tea it is.\n```",
        }
    ],
    "NextChat topic": history(
        *CHAT, last="Please generate a four to five word title summarizing our conversation without any lead-in."
    ),
    "NextChat summary": [
        *history(*CHAT, last="And I like it hot.")[:-1],
        {"role": "system", "content": "Summarize the discussion briefly in 200 words or less for future context."},
    ],
    "SillyTavern summary": [
        *history(*CHAT, last="And I like it hot."),
        {"role": "system", "content": "[Pause your roleplay. Summarize the most important facts so far.]"},
    ],
}


@pytest.mark.parametrize("ui", sorted(UI_BACKGROUND))
def test_other_chat_uis_background_requests_are_answered_statelessly(
    server: LiveServer, llm: ScriptedLLM, ui: str
) -> None:
    """LibreChat's, LobeChat's, Chatbox's, NextChat's and SillyTavern's titles and summaries were stored as the
    person's messages (or, with the instruction as the last, system message, refused with a 400)."""
    agent_id = make_agent(server, "sam")
    llm.add({"content": "Green Tea Talk"})
    sent = UI_BACKGROUND[ui]
    answer = openai_client(server).chat.completions.create(model="sam", messages=sent)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Green Tea Talk"
    asked = llm.requests[-1]
    assert asked["messages"] == sent and not asked.get("tools")  # the agent's LLM alone: no memory, no tools
    assert user_messages(server, agent_id) == []


def test_a_header_marks_a_background_request_either_way_and_a_look_alike_message_is_remembered(
    server: LiveServer, llm: ScriptedLLM
) -> None:
    agent_id = make_agent(server, "sam")
    client = openai_client(server)
    llm.add({"content": "Tea Questions"})
    marked = client.chat.completions.create(
        model="sam", messages=history(last="Make a title."), extra_headers={"X-Memgpt-Background": "true"}
    )  # type: ignore[arg-type]
    assert marked.choices[0].message.content == "Tea Questions" and not llm.requests[-1].get("tools")
    assert user_messages(server, agent_id) == []

    # A person's message that begins as a UI's instruction does: the client says it is one to remember.
    look_alike = "Name the conversation based on the chat records, please: what would you call it?"
    llm.reply("Tea talk.")
    kept = client.chat.completions.create(
        model="sam", messages=history(last=look_alike), extra_headers={"x-memgpt-background": "false"}
    )  # type: ignore[arg-type]
    assert kept.choices[0].message.content == "Tea talk." and llm.requests[-1].get("tools")
    # Nor is a message that only mentions a UI's words dropped.
    mentions = "How does Open WebUI's ### Task: prompt with <chat_history> work?"
    llm.reply("It sends the chat along.")
    client.chat.completions.create(model="sam", messages=history(last=mentions))  # type: ignore[arg-type]
    assert user_messages(server, agent_id) == [look_alike, mentions]

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="sam", messages=history(last="Hi"), extra_headers={"X-Memgpt-Background": "maybe"}
        )  # type: ignore[arg-type]
    said = "X-Memgpt-Background: 'maybe' is neither true nor false (true: answer without memory, store nothing)"
    assert refused.value.body["message"] == said  # type: ignore[index]
    assert user_messages(server, agent_id) == [look_alike, mentions]


def test_a_persons_message_in_a_conversation_that_begins_as_a_uis_instruction_is_remembered(
    server: LiveServer, llm: ScriptedLLM
) -> None:
    """Open WebUI's and LibreChat's instructions come alone, the chat inside them: the same words as a message
    of a conversation are the person's. Nor is LibreChat's opening followed by anything with "title" in it one."""
    agent_id = make_agent(server, "sam")
    client = openai_client(server)
    said = [
        "### Task: review my notes, pasted as <chat_history>tea, coffee</chat_history>",
        "Provide a concise, 5-word-or-less title for the conversation we had about my thesis, please.",
        "Analyze this conversation and provide: a subtitle for my essay",
    ]
    for words in said[:2]:
        llm.reply("Noted.")
        client.chat.completions.create(model="sam", messages=history(*CHAT, last=words))  # type: ignore[arg-type]
    llm.reply("Noted.")
    client.chat.completions.create(model="sam", messages=[{"role": "user", "content": said[2]}])
    assert user_messages(server, agent_id) == said


def test_errors_have_openais_shape(server: LiveServer) -> None:
    make_agent(server, "sam")
    make_agent(server, "secret", user="bob")
    bad = OpenAI(base_url=f"{server.url}/openai/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.models.list()
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    assert refused.value.body["message"] == "invalid or revoked API key"  # type: ignore[index]

    client = openai_client(server)
    with pytest.raises(openai.NotFoundError) as missing:  # bob's agent is as missing as one never made
        client.chat.completions.create(model="secret", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as last_not_user:
        client.chat.completions.create(
            model="sam", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        )
    assert "messages: the last message is 'assistant', not 'user'; end with" in last_not_user.value.message
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model="sam", messages=[])
    assert invalid.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as many:  # one answer per turn: never a silent single choice
        client.chat.completions.create(model="sam", messages=[{"role": "user", "content": "hi"}], n=2)
    assert many.value.param == "n" and "n: 2 choices asked for; an agent answers a turn once" in many.value.message
    for kind in ("json_object", "json_schema"):  # an agent's reply is its own words: never silently not JSON
        shape: Any = {"type": kind} if kind == "json_object" else {"type": kind, "json_schema": {"name": "x"}}
        with pytest.raises(openai.BadRequestError) as as_json:
            client.chat.completions.create(
                model="sam", messages=[{"role": "user", "content": "hi"}], response_format=shape
            )
        assert as_json.value.param == "response_format" and f"response_format: {kind!r} is not supported" in str(
            as_json.value.message
        )

    raw = web.get(f"{server.url}/openai/v1/models")
    assert raw.status_code == 401 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_every_error_under_the_endpoint_has_openais_shape(home: Path, llm: ScriptedLLM) -> None:
    """Also those FastAPI and the server answer before a route runs: an unknown URL, a wrong method, a body over
    the server's limit (declared or sent in chunks), a body that is not JSON or has the wrong types."""
    config = use_scripted_llm(home, llm.url)
    config.server.max_upload_mb = 0.001  # 1,000 bytes
    server = LiveServer(home, config)
    try:
        headers, url = auth(server.key()), f"{server.url}/openai/v1"
        json_headers = {**headers, "content-type": "application/json"}

        def chunks() -> Iterator[bytes]:
            yield from [b" " * 500] * 3

        answers = {
            "unknown url": web.get(f"{url}/nope", headers=headers),
            "wrong method": web.delete(f"{url}/models", headers=headers),
            "too large": web.post(f"{url}/chat/completions", content=b" " * 1500, headers=json_headers),
            "too large, chunked": web.post(f"{url}/chat/completions", content=chunks(), headers=json_headers),
            "not json": web.post(f"{url}/chat/completions", content=b"{nope", headers=json_headers),
            "wrong types": web.post(f"{url}/chat/completions", json={"model": 3, "messages": "x"}, headers=headers),
        }
        statuses = {name: answer.status_code for name, answer in answers.items()}
        assert statuses == {
            "unknown url": 404,
            "wrong method": 405,
            "too large": 413,
            "too large, chunked": 413,
            "not json": 400,
            "wrong types": 400,
        }
        for name, answer in answers.items():
            body = answer.json()
            assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, (name, body)
            assert body["error"]["type"] == "invalid_request_error", (name, body)
        assert "GET /openai/v1/nope" in answers["unknown url"].json()["error"]["message"]
        assert "server.max_upload_mb" in answers["too large"].json()["error"]["message"]
        assert "not valid JSON" in answers["not json"].json()["error"]["message"]
        # The rest of the server keeps Letta's shape.
        assert set(web.get(f"{server.url}/v1/nope", headers=headers).json()) == {"detail"}
        outside = web.post(f"{server.url}/v1/agents/", content=b" " * 1500, headers=json_headers)
        assert outside.status_code == 413 and set(outside.json()) == {"detail"}

        # And the endpoint is documented with the rest of the API.
        paths = web.get(f"{server.url}/openapi.json").json()["paths"]
        assert {"/openai/v1/models", "/openai/v1/models/{model}", "/openai/v1/chat/completions"} <= set(paths)
        assert "post" in paths["/openai/v1/chat/completions"] and "/v1/agents/" in paths
    finally:
        server.stop()


def test_a_busy_agent_is_a_409_conflict(server: LiveServer, llm: ScriptedLLM) -> None:
    agent_id = make_agent(server, "sam")
    llm.reply("Slow answer.", delay=2.0)
    client = openai_client(server)
    first: dict[str, Any] = {}

    def send() -> None:
        first["answer"] = client.chat.completions.create(model="sam", messages=[{"role": "user", "content": "one"}])

    thread = threading.Thread(target=send)
    thread.start()
    try:
        deadline = 50
        while not user_messages(server, agent_id) and deadline:  # the first turn has its lease
            threading.Event().wait(0.1)
            deadline -= 1
        with pytest.raises(openai.ConflictError) as busy:
            client.chat.completions.create(model="sam", messages=[{"role": "user", "content": "two"}])
        assert busy.value.code == "agent_busy"
        assert busy.value.response.headers["retry-after"] == "1"
    finally:
        thread.join(timeout=30)
    assert first["answer"].choices[0].message.content == "Slow answer."
    assert user_messages(server, agent_id) == ["one"]


def test_a_retried_request_joins_the_turn_it_started(server: LiveServer, llm: ScriptedLLM) -> None:
    """The openai SDK sends a timed-out request again (same body, X-Stainless-Retry-Count >= 1): the retry
    gets the first try's answer, and the message enters memory once."""
    agent_id = make_agent(server, "sam")
    llm.reply("Worth the wait.", delay=3.0)
    # the first try surely times out (the LLM alone takes 3 s); each retry joins the turn until it is over
    client = OpenAI(base_url=f"{server.url}/openai/v1", api_key=server.key(), max_retries=6, timeout=2.0)
    answer = client.chat.completions.create(model="sam", messages=[{"role": "user", "content": "slow one"}])
    assert answer.choices[0].message.content == "Worth the wait."
    assert user_messages(server, agent_id) == ["slow one"]
    assert len(llm.requests) == 1


@pytest.mark.usefixtures("metadata_url")  # the waiting run and its taking, on SQLite and on PostgreSQL
def test_a_retry_that_overtakes_its_first_try_sends_the_message_once(server: LiveServer, llm: ScriptedLLM) -> None:
    """The first try is held up before it records its run; the retry, finding none, runs the turn, and the first
    try answers with that turn rather than storing the message again. The order is set by events, not by time."""
    agent_id = make_agent(server, "sam")
    llm.reply("Only once.")
    url, headers = f"{server.url}/openai/v1/chat/completions", auth(server.key())
    body = {"model": "sam", "messages": [{"role": "user", "content": "hello"}]}
    first, again = overtaken_send(server, url, body, headers)
    said = [a.json()["choices"][0]["message"]["content"] for a in (first, again)]
    assert said == ["Only once.", "Only once."]
    assert len(llm.requests) == 1 and user_messages(server, agent_id) == ["hello"]


def test_a_client_leaving_mid_stream_does_not_break_the_agent(server: LiveServer, llm: ScriptedLLM) -> None:
    agent_id = make_agent(server, "sam")
    search_step = {"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}}
    llm.add(search_step).reply("Finished anyway.", delay=1.0)
    body = {"model": "sam", "messages": [{"role": "user", "content": "go"}], "stream": True}
    with web.stream("POST", f"{server.url}/openai/v1/chat/completions", json=body, headers=auth(server.key())) as s:
        first = next(s.iter_lines())
        assert first.startswith("data: ") and '"role": "assistant"' in first
    deadline = 600
    while deadline and "Finished anyway." not in str(server.state.storage.messages.last(agent_id, 10)):
        threading.Event().wait(0.1)
        deadline -= 1
    assert deadline, "the turn did not finish after its client went away"
    while server.state.storage.turns.running_run(agent_id) is not None and deadline:  # its lease is released
        threading.Event().wait(0.1)
        deadline -= 1
    llm.reply("Still here.")
    again = openai_client(server).chat.completions.create(model="sam", messages=[{"role": "user", "content": "hi"}])
    assert again.choices[0].message.content == "Still here."
    assert user_messages(server, agent_id) == ["go", "hi"]
