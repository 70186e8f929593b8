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


def test_lost_counts_only_what_the_bench_sent_past_a_memory_pressure_alert(home: Path) -> None:
    """An agent whose context filled up has, besides each message the bench sent and its reply, the server's
    memory-pressure alert shown as a user message with no reply of its own: nothing is lost (was: one lost per
    alert, so 50 clients x 100 turns reported 50 lost and an empty "server log:" error). Then a sent message
    the history does not hold, and one whose reply is gone, are each named."""
    import asyncio
    import contextlib
    import sqlite3

    import httpx2

    llm = server_bench.FixedLLM(0.0, words=200)  # ~500 tokens a turn: the 16k window's alert after ~20 turns
    try:
        with server_bench.deployment("default", home, llm) as (server, key):
            agents = server_bench._make_agents(server.url, key, 1)
            loading = server_bench._warm_and_load(server.url, key, agents, 30, False, "httpcore2", lambda: None, 200)
            assert asyncio.run(loading).errors == []
            headers = {"Authorization": f"Bearer {key}"}
            with httpx2.Client(base_url=server.url, headers=headers) as http:
                items = server_bench._history(http, agents[0])
            alerts = [i for i in items if i["message_type"] == "user_message" and "system_alert" in i["content"]]
            assert alerts, "the load never filled the context: the case is not covered"
            assert server_bench._lost(server.url, key, agents, "bench", 30, 200) == []

            text = {n: server_bench.message_text("bench", n, agents[0], 200) for n in (7, 8, 9)}
            with contextlib.closing(sqlite3.connect(home / "metadata.sqlite")) as db, db:
                seq = {
                    n: db.execute("SELECT seq FROM messages WHERE content = ?", (t,)).fetchone()[0]
                    for n, t in text.items()
                }
                db.execute("DELETE FROM messages WHERE seq = ?", (seq[7],))  # sent, never stored
                gone = "DELETE FROM messages WHERE role = 'assistant' AND seq > ? AND seq < ?"  # its reply lost
                db.execute(gone, (seq[8], seq[9]))
            lost = server_bench._lost(server.url, key, agents, "bench", 30, 200)
    finally:
        llm.close()
    assert lost == [f"{agents[0]} {text[7]!r}: not stored", f"{agents[0]} {text[8]!r}: stored, no reply after it"]


def test_the_server_log_excerpt_says_what_went_wrong_or_that_nothing_did(tmp_path: Path) -> None:
    """What the bench prints of the server's log when a send failed or a message was lost: uvicorn's ERROR lines
    and the traceback under them, and the requests answered 4xx/5xx, not the 2xx ones; never an empty excerpt
    (was: the lines holding "Error", which a log of 2xx answers has none of, and ERROR or a traceback's lines
    need not hold)."""
    log = tmp_path / "server.log"
    log.write_text(
        "memgpt server on http://127.0.0.1:1 (API docs at http://127.0.0.1:1/docs)\n"
        "INFO:     Started server process [1]\n"
        'INFO:     127.0.0.1:2 - "POST /v1/agents/a/messages HTTP/1.1" 200 OK\n'
        'INFO:     127.0.0.1:2 - "POST /v1/agents/a/messages HTTP/1.1" 503 Service Unavailable\n'
        "ERROR:    Exception in ASGI application\n"
        "Traceback (most recent call last):\n"
        "  sqlite3.OperationalError: database is locked\n"
    )
    excerpt = server_bench._log_errors(log)
    assert excerpt.split(" / ") == [
        'INFO:     127.0.0.1:2 - "POST /v1/agents/a/messages HTTP/1.1" 503 Service Unavailable',
        "ERROR:    Exception in ASGI application",
        "Traceback (most recent call last):",
        "  sqlite3.OperationalError: database is locked",
    ]
    log.write_text("memgpt server on http://127.0.0.1:1\n" + 'INFO:     1 - "GET / HTTP/1.1" 200 OK\n' * 3)
    assert server_bench._log_errors(log) == "nothing but INFO lines, no request answered 4xx or 5xx"


def test_the_floor_from_two_client_processes_counts_every_turn_and_says_where_its_time_goes() -> None:
    """``--floor`` with the clients spread over two processes (each its own event loop, the observer in the
    first): every agent's turns are counted once, none failed, the observer sampled, and the lines under the row
    split the added time into its parts (the stand-in's times paired with the clients') and say how long the
    clients' loops waited for a core."""
    row = server_bench.run("default", 5, 3, 50, floor=True, client_processes=2)
    cells = [cell.strip() for cell in row.split("\n", 1)[0].split("|")[1:-1]]
    assert cells[1:3] == ["5", "15"]  # clients, turns
    assert cells[6:8] == ["0", "-"]  # errors, lost (no server to lose any)
    assert cells[8] != "- / -"  # list agents: the observer ran
    assert float(cells[12]) > 0  # the clients' CPU, counted in their own processes
    parts, clients = row.split("\n\n")[1].split("; clients' loops late")
    assert parts.startswith("floor's added ms p50/p95: request ")
    assert "answer " in parts and "the stand-in's loop late" in parts
    assert "waiting for a core" in clients
