"""conversation_search (issue 11): messages indexed with their day and the message before them, ranked by
meaning and stemmed words, shown with their neighbours, scoped by dates and role; the tool says so."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from memgpt.agent.manager import create_agent
from memgpt.agent.tools import builtin_tools
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import ToolError
from memgpt.memory.messages import readable
from memgpt.memory.paging import RankedPage
from memgpt.memory.recall import (
    NEIGHBOUR_SHARE,
    WORD_SEARCH_NOTE,
    RecallIndex,
    RecallMemory,
    with_neighbour_scores,
)
from memgpt.memory.results import keyword_query
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq
from memgpt.types import AgentState, Message, Passage, Role, SearchHit, ToolCall
from tests.agent_rig import Rig, tool_results
from tests.conftest import USER
from tests.scripted_llm import ScriptedLLM
from tests.test_embeddings import SAME_TEXT_OTHER_BATCH, cosine

START = datetime(2024, 3, 12, 19, 0, tzinfo=UTC)
# (day offset from START, role, words): a short answer, a dated cooking distractor, small talk.
CHAT = [
    (0, "user", "Back from the bouldering wall, my arms are done."),
    (0, "assistant", "Nice. How long have you been climbing?"),
    (0, "user", "About five years now."),
    (0, "assistant", "That's a good while. Do you climb with friends?"),
    (0, "user", "Mostly with Jonty, a physics student."),
    (1, "user", "I cooked a mushroom risotto tonight, it was lovely."),
    (1, "assistant", "Risotto takes patience. What mushrooms?"),
    (1, "user", "Chestnut ones from the market."),
    (2, "user", "Tonight I made a green curry with tofu."),
    (2, "assistant", "Green curry sounds great."),
    (3, "user", "The weather was grim all day."),
    (3, "assistant", "Sorry to hear it. Anything planned for the weekend?"),
    (3, "user", "Probably a long run on Sunday."),
]


def _message(agent_id: str, index: int, day: int, role: str, text: str) -> Message:
    when = START + timedelta(days=day, minutes=index)
    if role == "user":
        return Message(f"m{index:02d}", agent_id, Role.USER, text, when)
    call = ToolCall(f"c{index}", "send_message", json.dumps({"message": text}))
    return Message(f"m{index:02d}", agent_id, Role.ASSISTANT, "", when, tool_calls=(call,))


@dataclass
class Chat:
    recall: RecallMemory
    index: RecallIndex
    messages: list[Message]

    def ids(self, page: RankedPage) -> list[list[str]]:
        """The messages each result shows, by id (read back from the rendered text)."""
        by_text = {readable(m): m.id for m in self.messages}
        said = [[line.split("] ", 1)[1].split(": ", 1)[1] for line in item.splitlines()] for item in page.items]
        return [[by_text[words] for words in item] for item in said]


def _agent(storage: Storage, model: LocalMiniLM, name: str) -> AgentState:
    return create_agent(
        storage,
        user_id=USER,
        name=name,
        persona="sam_pov",
        human="basic",
        model="scripted",
        context_window=8192,
        embedding=model.space,
    )


@pytest.fixture
def chat(storage: Storage, model: LocalMiniLM) -> Chat:
    state = _agent(storage, model, "climber")
    index = RecallIndex(storage.passages(model.space), model)
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER, index=index)
    messages = [_message(state.id, i, *turn) for i, turn in enumerate(CHAT)]
    for message in messages:  # as a chat writes them: indexed after every reply
        recall.append([message])
        if message.role is Role.ASSISTANT:
            assert recall.sync()
    assert recall.sync()
    return Chat(recall, index, messages)


def test_a_short_answer_is_found_through_the_question_it_answers_and_shown_with_it(chat: Chat) -> None:
    page = chat.recall.search("How long have I been climbing?")
    assert isinstance(page, RankedPage)
    top = chat.ids(page)[0]
    # The reply shares no word with the question; indexed after the question it answers, it is found, and
    # whichever of the two ranks first, the result shows both.
    assert {"m01", "m02"} <= set(top)
    first = page.items[0].splitlines()
    assert first[0].startswith("[2024-03-12 ")
    assert all(line.startswith(("  before: ", "  after: ")) for line in first[1:])
    rendered = page.render("results")
    assert rendered.startswith("Showing results 1-5, best first (page 0; more on page 1). Ranked by meaning")


def test_no_message_is_shown_twice_and_pages_continue_the_same_ranking(chat: Chat) -> None:
    first, second = chat.recall.search("climbing", 0), chat.recall.search("climbing", 1)
    shown = [m for item in chat.ids(first) + chat.ids(second) for m in item]
    assert len(shown) == len(set(shown))
    assert set(shown) == {m.id for m in chat.messages}  # 13 messages fit in two pages of results with neighbours
    assert chat.recall.search("climbing", 3).render("results") == "No more results: page 3 is past the last one."


def test_a_day_in_the_question_matches_the_messages_of_that_day(chat: Chat) -> None:
    page = chat.recall.search("What did I cook on 14 March?")
    assert chat.ids(page)[0][0] in {"m08", "m09"}  # the curry, not the risotto of the 13th
    assert chat.ids(chat.recall.search("What did I cook on the 13th of March?"))[0][0] in {"m05", "m06", "m07"}


def test_dates_and_role_narrow_the_search(chat: Chat) -> None:
    page = chat.recall.search("food", start_date="2024-03-14", end_date="2024-03-14")
    assert {m for item in chat.ids(page) for m in item} <= {"m07", "m08", "m09", "m10"}  # neighbours may cross the day
    assert all(ids[0] in {"m08", "m09"} for ids in chat.ids(page))
    assert "only from 2024-03-14 to 2024-03-14" in page.render("results")
    mine = chat.recall.search("climbing", role="assistant")
    assert all(ids[0] in {"m01", "m03", "m06", "m09", "m11"} for ids in chat.ids(mine))
    assert "only assistant messages" in mine.render("results")
    with pytest.raises(ToolError, match="role must be 'user' or 'assistant'"):
        chat.recall.search("climbing", role="system")
    with pytest.raises(ToolError, match="end_date is before start_date"):
        chat.recall.search("climbing", start_date="2024-03-14", end_date="2024-03-13")
    with pytest.raises(ToolError, match="is not a date"):
        chat.recall.search("climbing", start_date="last tuesday")


def test_the_sql_fallback_honours_dates_and_role(storage: Storage, chat: Chat) -> None:
    plain = RecallMemory(storage, agent_id=chat.recall.agent_id, user_id=USER)  # no index: SQL word search
    assert [m.id for m in storage.messages.search(plain.agent_id, "tonight", offset=0, limit=9)[0]] == ["m05", "m08"]
    page = plain.search("tonight", start_date="2024-03-14")
    assert page.total == 1 and page.items[0].endswith("user: Tonight I made a green curry with tofu.")
    assert plain.search("tonight", role="assistant").total == 0


def test_the_sql_fallback_says_it_is_a_word_search(storage: Storage, chat: Chat) -> None:
    """The tool's description tells how the ranked search works; the fallback says that it is not that one."""
    plain = RecallMemory(storage, agent_id=chat.recall.agent_id, user_id=USER)
    header = plain.search("tonight").render("results").splitlines()[0]
    assert header == f"Showing 2 of 2 results (page 0 of 0). {WORD_SEARCH_NOTE}"
    assert plain.search("Which film did I watch?").render("results") == f"No results found. {WORD_SEARCH_NOTE}"
    assert "Word search only" not in chat.recall.search("tonight").render("results")


def test_each_entry_is_indexed_with_its_day_and_the_message_before_it(
    storage: Storage, chat: Chat, model: LocalMiniLM
) -> None:
    store = chat.index.store
    where = all_of(eq("kind", "recall"), eq("agent_id", chat.recall.agent_id))
    entries = {p.id: p for batch in store.iterate(where, with_embeddings=True) for p in batch}
    assert entries["m02"].text.splitlines() == [
        "Tuesday 12 March 2024",
        "said: Nice. How long have you been climbing?",
        "About five years now.",
    ]
    assert entries["m00"].text == "Tuesday 12 March 2024\nBack from the bouldering wall, my arms are done."
    # The vector is the normalised sum of the two messages' own embeddings, whether the one before was
    # embedded in the same batch (m01, m02 here were not) or cached or embedded again after a restart. The int8
    # model gives a text a slightly different vector in another batch (cosine >= 0.98, tests/test_embeddings.py),
    # so "the same" is cosine >= 0.98 here; the reply's own vector alone is at ~0.83 of the sum.
    own = model.embed_multi(["said: Nice. How long have you been climbing?", "About five years now."])
    expected = [a + b for a, b in zip(*own, strict=True)]
    norm = math.sqrt(sum(v * v for v in expected))
    assert cosine(entries["m02"].embedding, [v / norm for v in expected]) >= SAME_TEXT_OTHER_BATCH
    fresh = RecallIndex(store, model)  # nothing cached: the message before is embedded again
    fresh.add(USER, [chat.messages[2]], {"m02": chat.messages[1]})
    again = store.query(eq("id", "m02"), limit=1)
    assert again and again[0].text == entries["m02"].text
    vector = next(p for b in store.iterate(eq("id", "m02"), with_embeddings=True) for p in b).embedding
    assert cosine(vector, entries["m02"].embedding) >= SAME_TEXT_OTHER_BATCH


def test_the_query_reads_days_the_way_they_are_indexed() -> None:
    assert keyword_query("What did I cook on March 14th?") == "What did I cook on March 14?"
    assert keyword_query("what happened on 2024-03-14") == "what happened on 14 March 2024"
    assert keyword_query("version 2024-13-45 and the 1st") == "version 2024-13-45 and the 1"


def test_the_tool_says_how_it_ranks_and_takes_dates_and_a_role() -> None:
    tool = next(t for t in builtin_tools() if t.name == "conversation_search")
    assert "containing all the given words" not in tool.description
    assert "by meaning and by the words it shares" in tool.description
    assert "just before and after" in tool.description
    properties = tool.parameters["properties"]
    assert {"start_date", "end_date", "role"} <= set(properties)
    assert tool.parameters["required"] == ["query", "request_heartbeat"]


def test_the_archival_tool_says_it_ranks_by_words_too() -> None:
    tool = next(t for t in builtin_tools() if t.name == "archival_memory_search")
    assert "by meaning and by the words it shares" in tool.description


def test_recall_entries_of_an_earlier_schema_are_indexed_again_with_their_context(
    storage: Storage, model: LocalMiniLM
) -> None:
    from memgpt.storage.filters import KEYED_FIELDS, key_of
    from memgpt.storage.milvus.schema import collection_name
    from tests.test_milvus_store import create_schema_3_collection

    state = _agent(storage, model, "old")
    messages = [_message(state.id, i, *turn) for i, turn in enumerate(CHAT[:4])]
    RecallMemory(storage, agent_id=state.id, user_id=USER).append(messages)
    storage.messages.mark_indexed(state.id, [m.id for m in messages])
    # A schema-3 home: each message indexed alone, by its own words.
    client = storage.vectors.client
    old = collection_name(model.space).replace("memgpt_v4_", "memgpt_v3_")
    create_schema_3_collection(
        client, old, hybrid=storage.vectors.capabilities.bm25, model=model.model_id, dim=model.dimensions
    )
    rows = []
    for m, vector in zip(messages, model.embed_multi([readable(m) for m in messages]), strict=True):
        row = {
            "id": m.id,
            "kind": "recall",
            "text": readable(m),
            "embedding": vector,
            "user_id": USER,
            "source_id": "",
            "document_id": "",
            "agent_id": state.id,
            "chunk_index": 0,
            "created_at": int(m.created_at.timestamp() * 1000),
            "metadata": {"role": m.role.value},
        }
        rows.append({**row, **{key: key_of(str(row[name])) for name, key in KEYED_FIELDS.items()}})
    client.insert(old, rows)

    store = storage.passages(model.space)  # upgrades the collection: the messages are to be indexed again
    assert not client.has_collection(old) and store.count() == 4
    assert len(storage.messages.unindexed(state.id, 10)) == 4
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER, index=RecallIndex(store, model))
    assert recall.sync()
    reindexed = store.query(eq("id", "m02"), limit=1)[0].text
    assert reindexed.splitlines()[1] == "said: Nice. How long have you been climbing?"


def test_edited_messages_are_indexed_again_with_the_ones_after_them(storage: Storage, chat: Chat) -> None:
    for index, words in ((5, "I cooked a leek risotto."), (10, "The weather was lovely.")):
        edited = chat.messages[index]
        chat.recall.replace(Message(edited.id, edited.agent_id, Role.USER, words, edited.created_at))
    assert [m.id for m in storage.messages.unindexed(chat.recall.agent_id, 10)] == ["m05", "m06", "m10", "m11"]
    assert chat.recall.sync()
    store = chat.index.store
    text = {i: store.query(eq("id", i), limit=1)[0].text.splitlines()[1:] for i in ("m05", "m06", "m10", "m11")}
    # Each is indexed with the message right before it, though they were indexed in one batch with a gap.
    assert text["m05"] == ["Mostly with Jonty, a physics student.", "I cooked a leek risotto."]
    assert text["m06"] == ["I cooked a leek risotto.", "said: Risotto takes patience. What mushrooms?"]
    assert text["m10"] == ["said: Green curry sounds great.", "The weather was lovely."]
    assert text["m11"][0] == "The weather was lovely."


def test_the_role_is_filtered_in_milvus_before_ranking(chat: Chat) -> None:
    """Filtered after ranking, a page of one role's messages came back short when the other role's
    messages ranked first; in the Milvus filter, every candidate ranked is of the role asked for."""
    from memgpt.memory.results import Scope

    where = all_of(eq("agent_id", chat.recall.agent_id), Scope.of(role="user").where())
    vector = chat.index.query_vector("climbing")
    hits = chat.index.store.search(vector, text="climbing", limit=50, where=where)
    users = {m.id for m in chat.messages if m.role is Role.USER}
    assert hits and {h.passage.id for h in hits} <= users


def test_a_removed_message_is_no_longer_the_context_of_the_next(storage: Storage, chat: Chat) -> None:
    chat.recall.remove(["m05"])
    assert [m.id for m in storage.messages.unindexed(chat.recall.agent_id, 10)] == ["m06"]
    assert chat.recall.sync()
    text = chat.index.store.query(eq("id", "m06"), limit=1)[0].text.splitlines()[1:]
    assert text == ["Mostly with Jonty, a physics student.", "said: Risotto takes patience. What mushrooms?"]
    assert not chat.index.store.query(eq("id", "m05"), limit=1)


def _said(result: str) -> list[str]:
    """The words of every message a rendered result shows (after "user: " or "assistant: ")."""
    return [line.split("] ", 1)[1].split(": ", 1)[1] for line in result.splitlines() if "] " in line]


def test_odd_inputs_through_an_agent_turn(
    storage: Storage, model: LocalMiniLM, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conversation_search as the model calls it: bad input is an error it can act on, odd input a page that
    says what happened, and an agent message that only called a tool (no thought, nothing said: common with
    native tool calling) is never shown, as a result or as a neighbour."""
    rig = Rig(storage, model, llm)
    try:
        agent = rig.create()
        remember = {"name": "human", "content": "Has a cat, Miso.", "request_heartbeat": True}
        llm.add({"tool": "core_memory_append", "args": remember})  # no thought: a message without words
        llm.reply("Lovely name! How old is Miso?")
        list(agent.send("I adopted a cat called Miso."))
        llm.reply("Noted.")
        list(agent.send("She is two years old and loves café crème."))
        calls = [
            {"query": ""},
            {"query": "the of and"},
            {"query": "cat", "page": 10**12},
            {"query": "cat", "page": 5},
            {"query": "cat", "start_date": "2001-01-01", "end_date": "2001-01-02"},
            {"query": "🐱 adopted a cat? 日本語 ☕"},
            {"query": "cat", "start_date": "31/01/2024"},
        ]
        for args in calls:
            llm.add({"tool": "conversation_search", "args": {**args, "request_heartbeat": True}})
        every_day = {"start_date": "2020-01-01", "end_date": "2099-12-31", "request_heartbeat": True}
        llm.add({"tool": "conversation_search_date", "args": every_day})
        llm.reply("done")
        store = agent.recall._index.store
        searches: list[int] = []
        real = store.search
        monkeypatch.setattr(store, "search", lambda *a, **k: searches.append(k["limit"]) or real(*a, **k))
        list(agent.send("search your memory"))
        first = len(llm.requests) - len(calls) - 1
        out = [tool_results(llm.requests[first + i])[-1] for i in range(len(calls) + 1)]
        empty, stop_words, huge, past, no_day, odd, bad_date, by_date = out
        assert empty["status"] == "Failed" and "query is empty" in empty["message"]
        assert stop_words["status"] == "OK" and stop_words["message"].startswith("Showing results 1-")
        assert huge["message"] == "No more results: page 1000000000000 is past the last one."
        assert past["message"] == "No more results: page 5 is past the last one."
        assert no_day["message"] == "No results found. Searched only from 2001-01-01 to 2001-01-02."
        assert odd["status"] == "OK" and "I adopted a cat called Miso." in odd["message"]
        assert bad_date["status"] == "Failed" and "'31/01/2024' is not a date: use YYYY-MM-DD" in bad_date["message"]
        for result in (stop_words, odd):
            assert all(_said(result["message"])), result["message"]  # no message without words
        # The date search lists every message, and says what one without words did.
        assert "assistant: (called core_memory_append)" in by_date["message"]
        # The user's message is shown with the reply to it, not with the bare core_memory_append call between.
        top = _said(odd["message"].split("\n[")[1])
        assert top[:2] == ["I adopted a cat called Miso.", "said: Lovely name! How old is Miso?"]
        assert len(searches) == 4  # Milvus ranked only where there was something to rank (not page 10**12)
    finally:
        rig.close()


def test_a_long_message_is_cut_in_the_word_and_date_searches_as_in_the_ranked_one(storage: Storage, chat: Chat) -> None:
    """The SQL word search (the index behind or unreachable) and the date search showed a message whole: a
    1 MB reply came back as a 1 MB tool result, over the context window, summarized away unseen."""
    day_before = START - timedelta(days=1)
    long = Message("m99", chat.recall.agent_id, Role.USER, "zanzibar " + "lorem ipsum " * 100_000, day_before)
    chat.recall.append([long])
    plain = RecallMemory(storage, agent_id=chat.recall.agent_id, user_id=USER)
    for page in (plain.search("zanzibar"), plain.search_dates("2024-03-11", "2024-03-11")):
        [shown] = page.items
        assert shown.startswith("[2024-03-11 19:00:00 UTC] user: zanzibar lorem ipsum")
        assert len(shown) <= 1_000 and shown.endswith("…"), len(shown)


def test_pages_far_past_the_end_without_an_index(storage: Storage, chat: Chat) -> None:
    """The SQL word search and the date search take any page number the model sends (SQLite's integers end
    at 2**63: a page past that raised OverflowError)."""
    plain = RecallMemory(storage, agent_id=chat.recall.agent_id, user_id=USER)
    huge = 10**20
    assert plain.search("tonight", huge).render("results") == "No more results: there are 2, on pages 0 to 0."
    dated = plain.search_dates("2024-03-12", "2024-03-15", huge).render("results")
    assert dated == "No more results: there are 13, on pages 0 to 2."


def test_a_bare_tool_call_between_a_message_and_its_reply_is_passed_over(storage: Storage, model: LocalMiniLM) -> None:
    """With native tool calling the agent often calls a tool without a thought before it answers: the answer is
    indexed with the words of the person's message, not the empty call's, and edits and removals of that
    message reach past the call to the answer."""
    state = _agent(storage, model, "cats")
    store = storage.passages(model.space)
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER, index=RecallIndex(store, model))
    said = _message(state.id, 0, 0, "user", "I adopted a cat called Miso.")
    call = ToolCall("c1", "core_memory_append", json.dumps({"name": "human", "content": "Has a cat."}))
    bare = Message("m01", state.id, Role.ASSISTANT, "", START + timedelta(minutes=1), tool_calls=(call,))
    reply = _message(state.id, 2, 0, "assistant", "Lovely name! How old is she?")
    recall.append([said, bare, reply])
    assert recall.sync()

    def indexed(message_id: str) -> list[str]:
        return store.query(eq("id", message_id), limit=1)[0].text.splitlines()

    day, answer = "Tuesday 12 March 2024", "said: Lovely name! How old is she?"
    assert indexed("m02") == [day, "I adopted a cat called Miso.", answer]
    assert not store.query(eq("id", "m01"), limit=1)  # never shown: not indexed
    assert storage.messages.backlog(state.id) == 0  # yet counted done
    recall.replace(Message("m00", state.id, Role.USER, "I adopted a kitten called Miso.", said.created_at))
    assert [m.id for m in storage.messages.unindexed(state.id, 10)] == ["m00", "m02"]
    assert recall.sync() and indexed("m02")[1] == "I adopted a kitten called Miso."
    recall.remove(["m00"])
    assert [m.id for m in storage.messages.unindexed(state.id, 10)] == ["m02"]
    assert recall.sync() and indexed("m02") == [day, answer]


def _bare(agent_id: str, index: int, when: datetime) -> Message:
    call = ToolCall(f"c{index}", "core_memory_append", json.dumps({"name": "human", "content": "A note."}))
    return Message(f"m{index:03d}", agent_id, Role.ASSISTANT, "", when, tool_calls=(call,))


def test_an_edit_reaches_past_any_number_of_bare_calls_to_the_next_message_with_words(
    storage: Storage, model: LocalMiniLM
) -> None:
    """The message with words after an edited (or removed) one is indexed with the edited words, however many
    bare tool calls sit between them (the agent may call several tools before it answers)."""
    state = _agent(storage, model, "busy")
    store = storage.passages(model.space)
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER, index=RecallIndex(store, model))
    said = _message(state.id, 0, 0, "user", "I adopted a cat called Miso.")
    calls = [_bare(state.id, i, START + timedelta(minutes=i)) for i in range(1, 7)]
    reply = Message("m099", state.id, Role.USER, "She is two years old.", START + timedelta(minutes=9))
    recall.append([said, *calls, reply])
    assert recall.sync()
    recall.replace(Message("m00", state.id, Role.USER, "I adopted a kitten called Miso.", said.created_at))
    assert [m.id for m in storage.messages.unindexed(state.id, 10)] == ["m00", "m099"]
    assert recall.sync()
    assert store.query(eq("id", "m099"), limit=1)[0].text.splitlines()[1] == "I adopted a kitten called Miso."
    recall.remove(["m00"])
    assert [m.id for m in storage.messages.unindexed(state.id, 10)] == ["m099"]


def test_a_dated_search_pages_through_every_match_though_bare_calls_share_the_day(
    storage: Storage, model: LocalMiniLM
) -> None:
    """Bare tool calls are never shown: indexed, they took the ranked candidates of a search scoped to their
    day (their entries are the day alone, which its words match best), and the pages ended early though more
    messages matched."""
    state = _agent(storage, model, "toolish")
    store = storage.passages(model.space)
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER, index=RecallIndex(store, model))
    history: list[Message] = []
    for turn in range(12):
        at = START + timedelta(seconds=30 * turn)
        history.append(Message(f"m{turn:02d}", state.id, Role.USER, f"Note number {turn} about the garden.", at))
        history += [_bare(state.id, 100 + 25 * turn + i, at + timedelta(seconds=i + 1)) for i in range(24)]
    recall.append(history)
    assert recall.sync()
    worded = {m.id for m in history if m.content}
    shown: set[str] = set()
    number, more = 0, True
    while more and number < 12:
        page = recall.search("Tuesday 12 March", number, start_date="2024-03-12", end_date="2024-03-12")
        assert isinstance(page, RankedPage)
        shown |= {f"m{int(n):02d}" for n in re.findall(r"Note number (\d+)", "\n".join(page.items))}
        number, more = number + 1, page.more
    assert shown == worded


def test_entries_earlier_versions_wrote_for_bare_calls_are_deleted(storage: Storage, model: LocalMiniLM) -> None:
    """Migration 0016 marks the bare calls an earlier version indexed as unindexed: the next pass deletes
    their entries and marks them done."""
    from memgpt.storage.migrations import _0016_recall_without_bare_entries

    state = _agent(storage, model, "upgraded")
    store = storage.passages(model.space)
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER, index=RecallIndex(store, model))
    said = _message(state.id, 0, 0, "user", "I adopted a cat called Miso.")
    bare = _bare(state.id, 1, START + timedelta(minutes=1))
    recall.append([said, bare])
    assert recall.sync()
    old = Passage(
        id=bare.id,
        text="Tuesday 12 March 2024",
        user_id=USER,
        agent_id=state.id,
        kind="recall",
        created_at=bare.created_at,
        metadata={"role": "assistant"},
        embedding=model.embed("(empty)"),
    )
    store.insert([old])  # as an earlier version indexed it, marked indexed
    assert store.query(eq("id", bare.id), limit=1)
    with storage.metadata.engine.begin() as conn:
        _0016_recall_without_bare_entries(conn)
    assert [m.id for m in storage.messages.unindexed(state.id, 10)] == [bare.id]
    assert recall.sync()
    assert not store.query(eq("id", bare.id), limit=1)
    assert store.query(eq("id", said.id), limit=1)
    assert storage.messages.backlog(state.id) == 0


def test_a_hit_shown_with_matching_neighbours_outranks_a_lone_hit_scored_a_little_higher() -> None:
    said = [f"m{i:02d}" for i in range(6)]  # one conversation, in order, every message with words
    neighbours = {m: (b, a) for b, m, a in zip([None, *said[:-1]], said, [*said[1:], None], strict=True)}
    fused = [  # m05 alone scores highest; m02 sits between two other hits (m01 asks, m03 follows up)
        SearchHit(Passage(id="m05", text="", user_id=USER), 1.0),
        SearchHit(Passage(id="m02", text="", user_id=USER), 0.9),
        SearchHit(Passage(id="m01", text="", user_id=USER), 0.6),
        SearchHit(Passage(id="m03", text="", user_id=USER), 0.5),
    ]
    ranked = with_neighbour_scores(fused, neighbours)
    assert [h.passage.id for h in ranked] == ["m02", "m05", "m01", "m03"]
    scores = {h.passage.id: h.score for h in ranked}
    assert scores["m02"] == pytest.approx(0.9 + NEIGHBOUR_SHARE * (0.6 + 0.5))
    assert scores["m05"] == pytest.approx(1.0)  # its neighbour m04 is no hit: nothing added
    assert scores["m01"] == pytest.approx(0.6 + NEIGHBOUR_SHARE * 0.9)  # m00 is no hit either


def test_worded_neighbours_are_the_messages_a_result_shows_beside_its_hit(storage: Storage, model: LocalMiniLM) -> None:
    state, other = _agent(storage, model, "cats"), _agent(storage, model, "dogs")
    recall = RecallMemory(storage, agent_id=state.id, user_id=USER)
    said = _message(state.id, 0, 0, "user", "I adopted a cat called Miso.")
    call = ToolCall("c1", "core_memory_append", json.dumps({"name": "human", "content": "Has a cat."}))
    bare = Message("m01", state.id, Role.ASSISTANT, "", START + timedelta(minutes=1), tool_calls=(call,))
    reply = _message(state.id, 2, 0, "assistant", "Lovely name! How old is she?")
    later = _message(state.id, 3, 0, "user", "Two, and very loud.")
    recall.append([said, bare, reply, later])
    RecallMemory(storage, agent_id=other.id, user_id=USER).append([_message(other.id, 9, 0, "user", "Woof.")])
    found = storage.messages.worded_neighbours(state.id, ["m00", "m01", "m02", "m03", "m09", "nope"])
    assert found == {"m00": (None, "m02"), "m01": ("m00", "m02"), "m02": ("m00", "m03"), "m03": ("m02", None)}
    shown = recall.with_neighbours([SearchHit(Passage(id="m02", text="", user_id=USER), 1.0)], 1)[0]
    assert ([m.id for m in shown.before], [m.id for m in shown.after]) == (["m00"], ["m03"])
    assert storage.messages.worded_neighbours(state.id, []) == {}
