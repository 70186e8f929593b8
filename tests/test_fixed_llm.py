"""bench/fixed_llm.py, the server bench's LLM in a process of its own: memgpt's own LLM client reads its answers
as a send_message call, it counts them, ``--standin`` answers a send as `memgpt server` does (the bench's floor),
and closing it ends the process."""

from __future__ import annotations

import json

import httpx2

from bench.fixed_llm import FixedLLM
from memgpt.llm.openai_compat import OpenAICompatible


def test_memgpt_reads_a_send_message_of_the_asked_words_and_the_stub_counts_it() -> None:
    llm = FixedLLM(0.0, words=7)
    try:
        client = OpenAICompatible(model="scripted", context_window=8192, endpoint=llm.url)
        answer = client.request([{"role": "user", "content": "hello"}], [])
        (call,) = answer.tool_calls
        assert call.name == "send_message"
        assert len(json.loads(call.arguments)["message"].split()) == 7
        assert llm.calls == 1
    finally:
        llm.close()
    assert llm.process.poll() is not None


def test_the_standin_answers_a_send_as_the_server_and_the_routes_the_bench_uses() -> None:
    llm = FixedLLM(0.05, standin=True)
    try:
        with httpx2.Client(base_url=llm.base, timeout=30) as http:
            agent = http.post("/v1/agents/", json={"name": "a"}).json()["id"]
            sent = http.post(f"/v1/agents/{agent}/messages", json={"input": "bench message 0"})
            assert sent.status_code == 200
            kinds = [m["message_type"] for m in sent.json()["messages"]]
            assert kinds == ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]
            assert sent.json()["messages"][-1]["content"] == "Noted."
            assert http.get("/v1/agents/", params={"limit": 50}).json() == []
            assert http.get(f"/v1/agents/{agent}/archival-memory/search", params={"query": "tea"}).status_code == 200
            assert http.post(f"/v1/agents/{agent}/archival-memory", json={"text": "x"}).status_code == 200
        assert llm.calls == 1  # the send, not the other routes
        times = httpx2.get(f"{llm.base}/times", timeout=30).json()  # where the floor's time goes
        ((received, woke, answered),) = times["sends"][agent]
        # uvloop's timers count whole milliseconds: a sleep can end up to 1 ms early (0.3 ms seen under load)
        assert received + 0.049 <= woke <= answered
        assert all(isinstance(late, float) for _, late in times["lag"])
    finally:
        llm.close()


def test_the_stub_ends_when_the_bench_that_started_it_is_gone() -> None:
    llm = FixedLLM(0.0)
    try:
        assert llm.calls == 0
        assert llm.process.stdin is not None
        llm.process.stdin.close()  # as when the bench's process ends, killed or not: its end of the pipe closes
        llm.process.wait(30)  # uvicorn ends on the SIGTERM it sent itself (TimeoutExpired if not)
    finally:
        llm.close()
