"""The agent loop over real HTTP against the scripted LLM, with real Milvus Lite and SQLite."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from memgpt.agent.agent import FAILED, STOPPED_NOTE, Agent
from memgpt.agent.events import FunctionCall, FunctionResult, Reply, SystemNotice, Thought
from memgpt.agent.manager import attach_source, detach_source, open_agent
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import LLMError, UserError
from memgpt.storage import Storage
from memgpt.storage.filters import Filter, all_of, eq
from tests.agent_rig import Rig, replies, tool_results
from tests.conftest import DATA, PAPER, load
from tests.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL


@pytest.fixture
def rig(storage: Storage, model: LocalMiniLM, llm: ScriptedLLM) -> Iterator[Rig]:
    made = Rig(storage, model, llm)
    yield made
    made.close()


@pytest.fixture
def any_rig(any_storage: Storage, model: LocalMiniLM, llm: ScriptedLLM) -> Iterator[Rig]:
    """The agent on Milvus Lite and on the real Milvus server."""
    made = Rig(any_storage, model, llm)
    yield made
    made.close()


def test_a_turn_reaches_the_user_and_everything_is_recorded(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.reply("Hello Chad!", thought="A new user. Greet them.")
    events = list(agent.send("hi there"))
    assert [type(e) for e in events] == [Thought, Reply]
    assert replies(events) == ["Hello Chad!"]

    request = rig.llm.requests[0]
    assert request["model"] == "scripted"
    names = {t["function"]["name"] for t in request["tools"]}
    assert names == {
        "send_message",
        "pause_heartbeats",
        "core_memory_append",
        "core_memory_replace",
        "conversation_search",
        "conversation_search_date",
        "archival_memory_insert",
        "archival_memory_search",
    }
    system = request["messages"][0]["content"]
    assert "My name is Sam." in system and "First name: Chad" in system
    assert "1 previous messages between you and the user are stored in recall memory" in system  # this one
    user = json.loads(request["messages"][-1]["content"])
    assert user["type"] == "user_message" and user["message"] == "hi there"
    assert rig.storage.messages.count(agent.state.id) == 3  # user, assistant call, tool result


def test_heartbeats_chain_steps_and_core_memory_persists(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add(
        {
            "tool": "core_memory_append",
            "args": {"name": "human", "content": "Loves sailing.", "request_heartbeat": True},
            "content": "Note that.",
        }
    )
    rig.llm.reply("Sailing, nice!")
    events = list(agent.send("I love sailing"))
    assert replies(events) == ["Sailing, nice!"]
    assert len(rig.llm.requests) == 2
    assert "Loves sailing." in rig.llm.requests[1]["messages"][0]["content"]  # the new core memory is in the prompt
    heartbeat = json.loads(rig.llm.requests[1]["messages"][-1]["content"])
    assert heartbeat["type"] == "heartbeat"

    reopened = rig.open()
    assert "Loves sailing." in reopened.core.get("human").value


def test_core_memory_limits_are_enforced_before_anything_changes(rig: Rig) -> None:
    agent = rig.create()
    before = agent.core.get("human").value
    rig.llm.add(
        {"tool": "core_memory_append", "args": {"name": "human", "content": "x" * 5000, "request_heartbeat": True}}
    )
    rig.llm.add(
        {
            "tool": "core_memory_replace",
            "args": {"name": "human", "old_content": "not there", "new_content": "y", "request_heartbeat": True},
        }
    )
    rig.llm.reply("Sorry, my notes are full.")
    events = list(agent.send("remember this essay"))
    failures = [e for e in events if isinstance(e, FunctionResult) and not e.ok]
    assert len(failures) == 2
    assert "over its limit of 2000" in failures[0].text and "Nothing was changed" in failures[0].text
    assert "old_content was not found" in failures[1].text
    assert tool_results(rig.llm.requests[1])[-1]["status"] == "Failed"
    assert rig.open().core.get("human").value == before


def test_archival_insert_and_search_page_without_caching(any_rig: Rig) -> None:
    rig = any_rig
    agent = rig.create()
    rig.llm.add({"tool": "archival_memory_search", "args": {"query": "favourite colour", "request_heartbeat": True}})
    rig.llm.add(
        {
            "tool": "archival_memory_insert",
            "args": {"content": "Chad's favourite colour is teal.", "request_heartbeat": True},
        }
    )
    rig.llm.add({"tool": "archival_memory_search", "args": {"query": "favourite colour", "request_heartbeat": True}})
    rig.llm.reply("Teal!")
    list(agent.send("what is my favourite colour? it is teal"))
    first = tool_results(rig.llm.requests[1])[-1]["message"]
    again = tool_results(rig.llm.requests[3])[-1]["message"]
    assert first == "No results found."
    assert again.startswith("Showing results 1-1, best first (page 0; this is the last page). Ranked by meaning")
    assert "Chad's favourite colour is teal." in again
    assert "1 total memories are stored in archival memory" in rig.llm.requests[3]["messages"][0]["content"]


def test_attached_source_is_searched_and_paged_then_detached(
    any_rig: Rig, model: LocalMiniLM, remembering_model: LocalMiniLM
) -> None:
    rig, storage = any_rig, any_rig.storage
    report = load(storage, remembering_model, "memgpt_research_paper", PAPER)
    agent = rig.create(persona="memgpt_doc")
    _source, fresh = attach_source(storage, agent.state, "memgpt_research_paper")
    assert fresh and not attach_source(storage, agent.state, "memgpt_research_paper")[1]
    assert agent.archival.count() == report.passages  # linked, not copied

    rig.llm.add(
        {"tool": "archival_memory_search", "args": {"query": "deep memory retrieval", "request_heartbeat": True}}
    )
    rig.llm.add(
        {
            "tool": "archival_memory_search",
            "args": {"query": "deep memory retrieval", "page": 1, "request_heartbeat": True},
        }
    )
    rig.llm.reply("MemGPT is evaluated on deep memory retrieval.")
    list(agent.send("What does the paper evaluate?"))
    page0 = tool_results(rig.llm.requests[1])[-1]["message"]
    page1 = tool_results(rig.llm.requests[2])[-1]["message"]
    assert report.passages > 11
    assert page0.startswith("Showing results 1-5, best first (page 0; more on page 1). Ranked by meaning")
    assert page1.startswith("Showing results 6-10, best first (page 1; more on page 2). Ranked by meaning")
    assert "memgpt_research_paper.pdf, page" in page0
    assert "deep memory retrieval" in (page0 + page1).lower()
    assert (
        "Data sources attached to your archival memory: memgpt_research_paper"
        in (rig.llm.requests[1]["messages"][0]["content"])
    )

    detach_source(storage, agent.state, "memgpt_research_paper")
    assert agent.archival.count() == 0
    source_passages = storage.passages(model.space).count(eq("kind", "archival"))
    assert source_passages == report.passages  # the source is intact


def test_archival_search_header_counts_word_matches_not_every_passage(any_rig: Rig) -> None:
    """Issue 11: every passage in scope has a rank by meaning, so the header says how many of the ranked
    passages share words with the query (any word form) and whether there is more, never "5 of <all>"."""
    agent = any_rig.create()
    for text in ["Chad likes teal.", "Teal is a colour.", "The cat sleeps.", "Rain fell all day.", "Bread rises."]:
        agent.archival.insert(text)
    agent.archival.insert("A sixth note about nothing much.")
    first = agent.archival.search("teal", 0).render("results").splitlines()
    hybrid = agent.archival._store.supports_hybrid
    assert first[0].startswith("Showing results 1-5, best first (page 0; more on page 1). Ranked by meaning")
    if hybrid:
        assert first[0].endswith("2 of the 6 best-ranked passages share words with the query.")
        assert {first[1].split("] ", 1)[1], first[2].split("] ", 1)[1]} == {"Chad likes teal.", "Teal is a colour."}
    else:
        assert first[0].endswith("Ranked by meaning (this Milvus has no word search).")
    second = agent.archival.search("teal", 1).render("results").splitlines()
    assert second[0].startswith("Showing results 6-6, best first (page 1; this is the last page).")
    assert len(second) == 2
    assert agent.archival.search("teal", 2).render("results") == "No more results: page 2 is past the last one."
    huge = agent.archival.search("teal", 10**12).render("results")
    assert huge == f"No more results: page {10**12} is past the last one."


def test_archival_pages_past_the_search_window_keep_one_page_ranked_by_meaning(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past Milvus's search window (16,384 results; 20 here) the store ranks by meaning alone through a search
    iterator: archival search asks it for one page (and a hit more) at its offset, never every hit before it,
    and the header says the page is ranked by meaning, not how many best-ranked passages share words."""
    import memgpt.storage.milvus.store as milvus_store

    monkeypatch.setattr(milvus_store, "MAX_WINDOW", 20)
    agent = rig.create()
    for i in range(30):
        agent.archival.insert(f"Note {i}: the teal kettle number {i} sits on shelf {i % 7}.")
    store = agent.archival._store
    asked: list[tuple[int, int, int]] = []
    search = store.search

    def spy(vector: list[float], *, limit: int, offset: int = 0, **kwargs: object) -> object:
        found = search(vector, limit=limit, offset=offset, **kwargs)  # type: ignore[arg-type]
        asked.append((limit, offset, len(found)))
        return found

    monkeypatch.setattr(store, "search", spy)
    within = agent.archival.search("teal kettle", 2).render("results").splitlines()  # results 11-15: 11+5 <= 20
    assert asked == [(20, 0, 20)]
    if store.supports_hybrid:
        assert within[0].endswith("of the 20 best-ranked passages share words with the query.")
    asked.clear()
    deep = agent.archival.search("teal kettle", 3).render("results").splitlines()  # results 16-20, 21 > 20
    assert asked == [(6, 15, 6)]  # one page and one hit more, not the 21 best with their texts
    assert deep[0].startswith("Showing results 16-20, best first (page 3; more on page 4). Ranked by meaning (")
    if store.supports_hybrid:
        assert deep[0].endswith(
            "(this Milvus ranks by shared words only among its 20 best-ranked passages; this page is past them)."
        )
    else:
        assert deep[0].endswith("Ranked by meaning (this Milvus has no word search).")
    assert "share words" not in deep[0]
    assert len(deep) == 6 and all("teal kettle" in line for line in deep[1:])
    last = agent.archival.search("teal kettle", 5).render("results").splitlines()
    assert last[0].startswith("Showing results 26-30, best first (page 5; this is the last page). Ranked by meaning (")
    shown = [line.split("Note ", 1)[1].split(":")[0] for page in (deep, last) for line in page[1:]]
    assert len(set(shown)) == 10  # no passage twice


def test_archival_pages_past_the_fused_candidates_of_a_store_without_a_window(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passage store with no search window (``search_window`` None: PassageStore's "no such limit") ranks any
    page whole: results 101-110 are shown, not "page 20 is past the last one" because the fusion's 100
    candidates were taken for a cap."""
    from memgpt.storage.milvus.store import MilvusPassageStore

    monkeypatch.setattr(MilvusPassageStore, "search_window", property(lambda _store: None))
    agent = rig.create()
    for i in range(110):
        agent.archival.insert(f"Note {i}: the teal kettle number {i} sits on shelf {i % 7}.")
    assert agent.archival._store.search_window is None
    last_full = agent.archival.search("teal kettle", 19).render("results").splitlines()
    assert last_full[0].startswith("Showing results 96-100, best first (page 19; more on page 20).")
    deeper = agent.archival.search("teal kettle", 20).render("results").splitlines()
    assert deeper[0].startswith("Showing results 101-105, best first (page 20; more on page 21).")
    last = agent.archival.search("teal kettle", 21).render("results").splitlines()
    assert last[0].startswith("Showing results 106-110, best first (page 21; this is the last page).")
    assert [len(page) for page in (last_full, deeper, last)] == [6, 6, 6]
    assert all("teal kettle" in line for page in (last_full, deeper, last) for line in page[1:])


def test_conversation_search_by_words_and_dates(any_rig: Rig) -> None:
    rig = any_rig
    agent = rig.create()
    for text in ["the codeword is PERIWINKLE", "nothing much", "more chatter"]:
        rig.llm.reply("ok")
        list(agent.send(text))
    today = agent.state.created_at.date().isoformat()
    rig.llm.add({"tool": "conversation_search", "args": {"query": "periwinkle", "request_heartbeat": True}})
    rig.llm.add(
        {
            "tool": "conversation_search_date",
            "args": {"start_date": today, "end_date": today, "request_heartbeat": True},
        }
    )
    rig.llm.add(
        {
            "tool": "conversation_search_date",
            "args": {"start_date": "tomorrow", "end_date": today, "request_heartbeat": True},
        }
    )
    rig.llm.reply("It was periwinkle.")
    list(agent.send("what was the codeword?"))
    by_words = tool_results(rig.llm.requests[4])[-1]["message"].splitlines()
    # Ranked by meaning (and words, where Milvus has BM25) over the 7 messages of the chat so far; each result
    # shows its neighbours, so a few results show all 7, each once: 4 with the hybrid ranking (which weighs in
    # the neighbours' scores, issue 11; 3 before that), 3 by meaning alone. The header counts results and word
    # matches, not every message: the message and the reply indexed with it (issue 11).
    results = sum(1 for line in by_words[1:] if not line.startswith("  "))
    hybrid = agent.recall._index is not None and agent.recall._index.store.supports_hybrid
    assert (results, len(by_words) - 1) == (4 if hybrid else 3, 7)
    assert by_words[0].startswith(
        f"Showing results 1-{results}, best first (page 0; this is the last page). Ranked by meaning"
    )
    if hybrid:
        assert "2 of the 7 best-ranked messages share words with the query" in by_words[0]
    assert by_words[1].endswith("user: the codeword is PERIWINKLE")
    by_date = tool_results(rig.llm.requests[5])[-1]["message"]
    assert by_date.startswith("Showing 5 of 8 results (page 0 of 1):")
    bad = tool_results(rig.llm.requests[6])[-1]
    assert bad["status"] == "Failed" and "is not a date" in bad["message"]


def test_model_mistakes_come_back_as_errors_it_can_fix(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add({"raw_tool": "send_message", "raw_arguments": '{"message": "unterminated'})
    rig.llm.add({"tool": "no_such_function", "args": {}})
    rig.llm.add({"tool": "archival_memory_search", "args": {"page": "zero"}})
    rig.llm.add({"raw_tool": "send_message", "raw_arguments": "{&#34;message&#34;: &#34;fixed&#34;}"})
    events = list(agent.send("hello"))
    assert replies(events) == ["fixed"]
    results = tool_results(rig.llm.requests[3])
    assert [r["status"] for r in results] == ["Failed", "Failed", "Failed"]
    assert "not a JSON object" in results[0]["message"]
    assert "there is no function named 'no_such_function'" in results[1]["message"]
    assert "bad arguments for archival_memory_search" in results[2]["message"]


def test_rate_limits_and_server_errors_are_retried(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add({"status": 429, "message": "slow down"}, {"status": 503})
    rig.llm.reply("made it")
    assert replies(list(agent.send("hi"))) == ["made it"]
    assert len(rig.llm.requests) == 3


def test_a_timeout_is_retried(rig: Rig) -> None:
    rig.create()
    agent = rig.open(timeout=1.0)
    rig.llm.add({"delay": 2.5, "tool": "send_message", "args": {"message": "too late"}})
    rig.llm.reply("on time")
    assert replies(list(agent.send("hi"))) == ["on time"]


def test_persistent_failure_is_one_clear_error_and_the_message_is_kept(rig: Rig) -> None:
    agent = rig.create()
    agent.llm.max_retries = 1
    rig.llm.add({"status": 500}, {"status": 500})
    with pytest.raises(LLMError, match="answered 500"):
        list(agent.send("are you there?"))
    kept = rig.storage.messages.last(agent.state.id, 1)[0]
    assert kept.content == "are you there?"


def test_plain_text_answers_reach_the_user_and_runaway_chains_stop(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add({"content": "Just text, no function."})
    assert replies(list(agent.send("hi"))) == ["Just text, no function."]
    agent.max_steps = 3
    rig.llm.add(*[{"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}}] * 3)
    events = list(agent.send("loop"))
    assert isinstance(events[-1], SystemNotice) and "stopped after 3 steps" in events[-1].text


def test_the_turn_after_a_runaway_chain_sees_its_last_heartbeat_marked_stopped(rig: Rig) -> None:
    """The heartbeat the step past max_steps would have answered says the turn stopped, so the next turn's prompt
    does not hand the agent control it never took."""
    agent = rig.create()
    agent.max_steps = 2
    rig.llm.add(*[{"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}}] * 2)
    list(agent.send("loop"))
    rig.llm.reply("Back.")
    assert replies(list(agent.send("next"))) == ["Back."]
    prompt = rig.llm.requests[-1]["messages"]
    assert [m["role"] for m in prompt[-4:]] == ["assistant", "tool", "user", "user"]
    assert json.loads(prompt[-2]["content"])["reason"] == STOPPED_NOTE.format(steps=2)
    assert not any("returning control" in str(m.get("content")) for m in prompt[-4:])


def test_a_failed_call_the_turn_stops_after_keeps_its_failure_in_the_heartbeat(rig: Rig) -> None:
    """The note over a heartbeat the turn never answers (out of steps, or cancelled) keeps why the heartbeat was
    sent (a failed call), without handing the agent control it never took."""
    agent = rig.create()
    failed = FAILED.removesuffix(", returning control") + "; then the turn "
    for stop, said in (("steps", "stopped after 1 steps in a row"), ("cancel", "was cancelled before this step ran")):
        agent.max_steps = 1 if stop == "steps" else 5
        asked = len(rig.llm.requests)
        agent.stop_requested = lambda asked=asked, stop=stop: stop == "cancel" and len(rig.llm.requests) > asked
        rig.llm.add({"tool": "no_such_function", "args": {}})
        list(agent.send("go"))
        agent.stop_requested = lambda: False
        rig.llm.reply("Back.")
        assert replies(list(agent.send("next"))) == ["Back."]
        reason = json.loads(rig.llm.requests[-1]["messages"][-2]["content"])["reason"]
        assert reason.startswith(failed) and said in reason and "returning control" not in reason, reason


def test_function_calls_are_shown_with_their_arguments(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add({"tool": "archival_memory_search", "args": {"query": "cats", "request_heartbeat": True}})
    rig.llm.reply("none")
    events = list(agent.send("cats?"))
    calls = [e for e in events if isinstance(e, FunctionCall)]
    assert calls[0].name == "archival_memory_search" and calls[0].arguments["query"] == "cats"


def test_pause_heartbeats_is_recorded(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add({"tool": "pause_heartbeats", "args": {"minutes": 30}})
    list(agent.send("I'm going out"))
    assert rig.open().heartbeats_paused()
    rig.llm.add({"tool": "pause_heartbeats", "args": {"minutes": 999}})
    rig.llm.reply("I can pause for at most six hours.")
    events = list(agent.send("again"))
    assert any(isinstance(e, FunctionResult) and "between 0 and 360" in e.text for e in events)


def test_recall_index_catches_up_and_forgets_popped_messages(rig: Rig, storage: Storage, model: LocalMiniLM) -> None:
    from sqlalchemy import update

    from memgpt.storage.messages import MessageRow

    agent = rig.create()
    for text in ["one", "two"]:
        rig.llm.reply(f"reply to {text}")
        list(agent.send(text))
    store = storage.passages(model.space)
    recall = all_of_recall(agent)
    assert agent.recall.wait_indexed(timeout=60)  # indexing runs in the background, after each step
    assert store.count(recall) == 4  # two typed messages, two replies; no tool results or alerts

    with storage.metadata.session() as s:  # as if Milvus had been unreachable for these
        s.execute(update(MessageRow).values(indexed=False))
    store.delete(recall)
    reopened = rig.open()
    assert reopened.recall.wait_indexed(timeout=60)
    assert store.count(recall) == 4 and not rig.storage.messages.unindexed(agent.state.id, 10)
    assert reopened.pop(3) == 3  # "two", its call and its tool result
    assert store.count(recall) == 2


def all_of_recall(agent: Agent) -> Filter:
    return all_of(eq("kind", "recall"), eq("agent_id", agent.state.id))


def test_recall_search_falls_back_to_sql_words_while_the_index_is_unreachable(
    rig: Rig, storage: Storage, model: LocalMiniLM
) -> None:
    from sqlalchemy import update

    from memgpt.embeddings.openai import OpenAIEmbeddings
    from memgpt.memory.recall import RecallIndex, RecallMemory
    from memgpt.storage.messages import MessageRow

    agent = rig.create()
    rig.llm.reply("noted")
    list(agent.send("my cat is called Periwinkle"))
    agent.close()  # its background indexing is done before the index is taken away
    with storage.metadata.session() as s:  # a message the index never got
        s.execute(update(MessageRow).values(indexed=False))
    offline = OpenAIEmbeddings("any", dimensions=model.dimensions, endpoint="http://127.0.0.1:1/v1")
    offline.sleep = lambda seconds: None  # type: ignore[method-assign]  # its retries' backoff (~7 s a call) unwaited
    store = storage.passages(model.space)
    index = RecallIndex(store, offline)
    recall = RecallMemory(storage, agent_id=agent.state.id, user_id=agent.state.user_id, index=index)
    assert recall.sync() is False
    page = recall.search("periwinkle")
    assert page.total == 1 and "my cat is called Periwinkle" in page.items[0]


def test_an_agent_stays_in_its_embedding_space(rig: Rig, model: LocalMiniLM) -> None:
    from memgpt.agent.manager import open_agent

    class OtherModel(LocalMiniLM):
        model_id = "other-model"

    agent = rig.create()
    with pytest.raises(UserError) as opened:
        open_agent(rig.storage, agent.state, llm=rig.client(), embedding=OtherModel())
    assert str(opened.value) == (
        "the memory of agent 'tester' was embedded with all-MiniLM-L6-v2 (384 dims), but the configured model is "
        "other-model (384 dims); switch back with `memgpt configure`"
    )
    load(rig.storage, OtherModel(), "other", DATA / "test.md")
    with pytest.raises(UserError) as attached:
        attach_source(rig.storage, agent.state, "other")
    assert str(attached.value) == (
        "source 'other' was embedded with other-model (384 dims), but the model of agent 'tester' is "
        "all-MiniLM-L6-v2 (384 dims); load the files again into a new source with the agent's model"
    )
    assert rig.storage.attachments.source_ids(agent.state.id) == []


def test_resolve_agent_finds_by_name_or_id_creates_and_switches_model(rig: Rig, model: LocalMiniLM) -> None:
    from memgpt.agent.manager import NewAgent, resolve_agent, update_agent

    new = NewAgent("sam_pov", "basic", "scripted", 16_000, model.space)
    made, created = resolve_agent(rig.storage, rig.user_id, "  Ann  ", new=new)
    assert created and made.name == "Ann"
    assert resolve_agent(rig.storage, rig.user_id, "Ann", new=new) == (made, False)
    assert resolve_agent(rig.storage, rig.user_id, made.id, new=new) == (made, False)
    switched, created = resolve_agent(rig.storage, rig.user_id, "Ann", new=new, model="bigger")
    assert not created and switched.llm_model == "bigger" and switched.id == made.id
    other, created = resolve_agent(rig.storage, "someone-else", made.id, new=new)
    assert created and other.id != made.id  # another user's id is not found: a new agent gets that text as name
    friendly, created = resolve_agent(rig.storage, rig.user_id, None, new=new)
    assert created and friendly.name not in ("Ann", made.id)
    with pytest.raises(UserError, match="an agent name must be 1-256 characters"):
        resolve_agent(rig.storage, rig.user_id, "", new=new)
    renamed = update_agent(rig.storage, switched, name=" Anna ", context_window=32_000)
    assert (renamed.name, renamed.context_window, renamed.llm_model) == ("Anna", 32_000, "bigger")
    with pytest.raises(UserError, match="already exists"):
        update_agent(rig.storage, friendly, name="Anna")


def test_an_empty_reply_is_one_clear_notice_and_nothing_is_stored(rig: Rig) -> None:
    agent = rig.create()
    rig.llm.add({"content": ""})
    events = list(agent.send("hello?"))
    assert len(events) == 1 and isinstance(events[0], SystemNotice)
    assert events[0].text.startswith("the model sent an empty reply: no text and no function call")
    assert "/retry" in events[0].text
    assert [m.content for m in rig.storage.messages.last(agent.state.id, 10)][-1] == "hello?"  # nothing after it


def test_the_system_message_changes_only_when_memory_does(rig: Rig) -> None:
    """As in MemGPT, the system message is rebuilt only when memory is modified, with the statistics of that
    moment: from step to step the prompt is the same to the byte, so a provider's prompt cache reuses it,
    the tool schemas and every message after it."""
    agent = rig.create()
    rig.llm.add({"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}})
    rig.llm.reply("first")
    list(agent.send("one"))
    rig.llm.reply("second")
    list(agent.send("two"))
    append = {"name": "human", "content": "Likes sailing.", "request_heartbeat": True}
    rig.llm.add({"tool": "core_memory_append", "args": append})
    rig.llm.reply("third")
    list(agent.send("three"))
    systems = [r["messages"][0]["content"] for r in rig.llm.requests]
    assert len(set(systems[:4])) == 1  # three turns, four steps, no memory change
    assert "1 previous messages between you and the user" in systems[3]  # as of when it was built
    assert "Likes sailing." in systems[4]  # core memory changed: rebuilt, with the statistics of now
    assert "13 previous messages between you and the user" in systems[4]
    statistics = systems[4].index("### Memory statistics")
    assert "<human characters=" in systems[4][:statistics]  # what changes most often comes last
    first, later = rig.llm.requests[1]["messages"], rig.llm.requests[2]["messages"]
    assert later[: len(first)] == first  # the whole earlier prompt is sent again exactly as before


def test_a_new_open_sends_the_same_system_message_until_memory_changes(rig: Rig, model: LocalMiniLM) -> None:
    """Each `memgpt run --message` and each agent the server opens anew sends the system message the last step
    was sent, to the byte, while memory is unchanged (the LLM server's prompt cache keeps serving it and the
    tool schemas after it); a core memory edit, an attached source and a summary each change it."""

    def turn(text: str, *script: dict) -> str:
        agent = rig.open()
        rig.llm.add(*script, {"tool": "send_message", "args": {"message": "ok"}})
        list(agent.send(text))
        agent.close()
        return rig.llm.requests[-1]["messages"][0]["content"]

    rig.create().close()
    first = turn("one")
    assert turn("two") == first  # without the stored one: 3 more previous messages and a new time
    append = {"name": "human", "content": "Likes sailing.", "request_heartbeat": True}
    edited = turn("three", {"tool": "core_memory_append", "args": append})
    assert "Likes sailing." in edited and edited != first
    assert turn("four") == edited
    load(rig.storage, model, "notes", DATA / "test.md")
    attach_source(rig.storage, rig.storage.agents.get(rig.user_id, "tester"), "notes")
    attached = turn("five")
    assert "Data sources attached to your archival memory: notes" in attached
    assert turn("six") == attached
    agent = rig.open()
    list(agent.summarize(force=True))
    agent.close()
    summarized = turn("seven")
    assert rig.llm.summary_text in summarized and summarized != attached
    assert turn("eight") == summarized


def test_an_edit_of_history_rebuilds_the_stored_system_message(rig: Rig) -> None:
    """/pop (and /retry) forget messages the stored system message counts: the next open builds it anew."""
    agent = rig.create()
    for text in ("one", "two"):
        rig.llm.reply("ok")
        list(agent.send(text))
    agent.close()
    before = rig.llm.requests[-1]["messages"][0]["content"]
    popped = rig.open()
    assert popped.pop(2) == 2
    popped.close()
    rig.llm.reply("ok")
    list(rig.open().send("three"))
    after = rig.llm.requests[-1]["messages"][0]["content"]
    assert after != before and after.split("### Memory statistics")[0] == before.split("### Memory statistics")[0]


def test_a_turn_takes_few_sql_statements(rig: Rig) -> None:
    from sqlalchemy import event

    agent = rig.create()
    for text in ("warm", "up"):
        rig.llm.reply("ok")
        list(agent.send(text))
    assert agent.recall.wait_indexed(timeout=60)
    statements: list[str] = []
    mine = threading.get_ident()

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if threading.get_ident() == mine:  # not the background indexing
            statements.append(statement)

    event.listen(rig.storage.metadata.engine, "before_cursor_execute", count)
    try:
        rig.llm.reply("counted")
        list(agent.send("how many queries?"))
    finally:
        event.remove(rig.storage.metadata.engine, "before_cursor_execute", count)
    assert len(statements) <= 6, statements  # it was 18: the window, counts and sources read at every step


def test_retry_gives_core_memory_back_its_value_before_the_dropped_steps(rig: Rig) -> None:
    agent = rig.create()
    before = agent.core.get("human").value
    append = {
        "tool": "core_memory_append",
        "args": {"name": "human", "content": "Loves sailing.", "request_heartbeat": True},
    }
    rig.llm.add(append)
    rig.llm.reply("Noted.")
    list(agent.send("I love sailing"))
    rig.llm.add(append)
    rig.llm.reply("Noted again.")
    assert replies(list(agent.retry())) == ["Noted again."]
    assert agent.core.get("human").value == before + "\nLoves sailing."  # once, not twice
    assert rig.open().core.get("human").value == before + "\nLoves sailing."
    assert agent.pop(6) == 6  # the whole retried turn but the user's message... and the user's message
    assert agent.core.get("human").value == before
    assert rig.open().core.get("human").value == before


def test_opening_an_agent_with_an_unindexed_history_does_not_wait_for_it(rig: Rig) -> None:
    from memgpt.memory.messages import stored
    from memgpt.types import Message, Role

    agent = rig.create()
    agent.close()
    history = [
        Message(f"old{i:04d}", agent.state.id, Role.USER if i % 2 == 0 else Role.ASSISTANT, f"old message {i}")
        for i in range(600)
    ]
    rig.storage.messages.append(agent.state.id, [stored(m) for m in history])
    state = rig.storage.agents.get(rig.user_id, "tester")
    assert state is not None
    reopened, warnings = open_agent(rig.storage, state, llm=rig.client(), embedding=rig.model)
    rig.opened.append(reopened)
    assert rig.storage.messages.backlog(state.id) > 0  # still being indexed: open did not wait
    assert warnings == [
        "600 messages are not in the recall index yet; they are being indexed in the background "
        "(conversation_search finds them by their words until then)"
    ]
    assert reopened.recall.wait_indexed(timeout=300)
    assert rig.storage.messages.backlog(state.id) == 0


def test_a_message_too_long_for_a_milvus_row_is_indexed_and_kept_whole(rig: Rig) -> None:
    """A message over the index's 65,535-byte text field once failed its batch for good: every later
    message stayed unindexed. The index now gets the text cut to fit, SQL keeps all of it."""
    from memgpt.memory.messages import stored
    from memgpt.types import Message, Role

    agent = rig.create()
    long = "Zanzibar harbour notes. " + "é" * 80_000  # 160 kB of UTF-8
    agent.recall.append([Message("long0001", agent.state.id, Role.USER, long)])
    rig.storage.messages.append(agent.state.id, [stored(Message("next0001", agent.state.id, Role.USER, "after it"))])
    assert agent.recall.wait_indexed(timeout=300)
    assert rig.storage.messages.backlog(agent.state.id) == 0
    store = rig.storage.passages(rig.model.space)
    indexed = store.query(all_of(eq("agent_id", agent.state.id), eq("kind", "recall")), limit=10)
    assert sorted(p.id for p in indexed) == ["long0001", "next0001"]
    assert rig.storage.messages.by_id(agent.state.id, ["long0001"])["long0001"].content == long
