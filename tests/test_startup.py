"""What the everyday commands import. Each heavy module costs start-up CPU time in every new `memgpt` process
(pymilvus with pandas ~0.8 s, SQLAlchemy ~0.25 s, pkg_resources ~0.1 s), so a command imports only what it
uses. Checked on the modules a real `memgpt` process holds when it exits, not on timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memgpt.config import DEFAULT_MILVUS_FILE
from tests.conftest import DATA, REPO
from tests.scripted_llm import ScriptedLLM

# Runs the `memgpt` command of the remaining arguments and writes the modules it imported to argv[1].
IMPORTED_BY = """
import atexit, json, runpy, sys

out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["memgpt", *sys.argv[2:]]
runpy.run_module("memgpt", run_name="__main__", alter_sys=True)
"""

# The stores of agents, users and templates, and what only agents and the server use.
AGENTS_ONLY = {
    "memgpt.storage.agents",
    "memgpt.storage.messages",
    "memgpt.storage.turns",
    "memgpt.storage.users",
    "memgpt.storage.templates",
    "memgpt.agent",
    "memgpt.llm",
    "memgpt.server",
    "openai",
    "fastapi",
    "sqlalchemy.dialects.postgresql",
}
# milvus-lite's package runs pkg_resources when imported; memgpt starts its server without it.
MILVUS_LITE_PACKAGE = {"milvus_lite", "pkg_resources"}
VECTORS = {"pymilvus", "grpc", "onnxruntime", "numpy", "tokenizers"}
# pymilvus's ORM binds pandas names at import and uses them only for DataFrames, and it reads requests only for
# Zilliz's global clusters, dateutil only to check a timestamp string: memgpt leaves them out
# (memgpt/storage/milvus/deferred.py).
NEVER = {"pandas", "pyarrow", "requests", "urllib3", "dateutil"}


def probed(script: str, home: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """What ``script`` (run as ``python -c script OUT memgpt-args...``) wrote to ``out`` as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(out), *args],
        env={**os.environ, "MEMGPT_HOME": str(home), "NO_COLOR": "1", **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def imported(home: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    return set(probed(IMPORTED_BY, home, out, *args, env=env))


def test_commands_on_sources_import_only_what_they_use(home: Path, tmp_path: Path) -> None:
    notes = str(DATA / "test.md")
    load = imported(home, tmp_path / "load.json", "load", "directory", "--name", "notes", "--input-files", notes)
    listing = imported(home, tmp_path / "list.json", "list", "sources")
    search = imported(home, tmp_path / "search.json", "search", "notes", "what do the notes say?")
    helping = imported(home, tmp_path / "help.json", "--help")

    assert load & VECTORS == search & VECTORS == VECTORS  # the watch sees what they do import
    for name, modules in (("load", load), ("search", search), ("list sources", listing), ("--help", helping)):
        assert modules & AGENTS_ONLY == set(), name
        assert modules & MILVUS_LITE_PACKAGE == set(), name
        assert modules & NEVER == set(), name
        # Sources, documents, files and passage marks are Core tables: SQLAlchemy's ORM (~0.08 CPU s) is for agents.
        assert "sqlalchemy.orm" not in modules, name
    assert listing & VECTORS == set()  # listing reads SQL only
    assert helping & (VECTORS | {"sqlalchemy", "pydantic"}) == set()


def test_run_imports_neither_pandas_nor_requests_nor_the_tokenizer_nor_httpx(
    home: Path, tmp_path: Path, llm: ScriptedLLM
) -> None:
    llm.add(*({"tool": "send_message", "args": {"message": "hi"}} for _ in range(2)))
    env = {"OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": ""}
    first = imported(home, tmp_path / "first.json", "run", "--agent", "a", "--message", "hello", env=env)
    again = imported(home, tmp_path / "again.json", "run", "--agent", "a", "--message", "hello", env=env)
    assert not (home / DEFAULT_MILVUS_FILE).exists()  # no Milvus Lite server was started either
    for modules in (first, again):
        # A turn that neither searches nor inserts opens no Milvus (the archival count its prompt shows is read
        # from SQL: test_archival_count) and loads no embedding model: its messages are indexed in recall at the
        # next search (test_recall_indexer).
        assert modules & VECTORS == set()
        assert modules & NEVER == set()
        assert modules & MILVUS_LITE_PACKAGE == set()
        assert "sqlalchemy.dialects.postgresql" not in modules  # a SQLite home
        # A context far from its window's limit is measured by its bytes; the tokenizer (~0.2 CPU s to build) is
        # not needed, nor imported.
        assert "tiktoken" not in modules
        # POSTs to a local http:// LLM go over http.client; httpx (~0.1 CPU s with its client) stays out.
        assert "httpx" not in modules
        assert "semchunk" not in modules  # archival memory's chunker is made at its first insert
        # An agent without MCP servers reads no registry (a pydantic model) and makes no MCP tools (~5 ms).
        assert modules & {"memgpt.mcp.registry", "memgpt.mcp.tools", "mcp"} == set()


# Runs the `memgpt` command of the remaining arguments and writes the classes of the threads it started to argv[1].
THREADS_STARTED = """
import atexit, json, runpy, sys, threading

out, started, start = sys.argv[1], [], threading.Thread.start
def record(thread):
    started.append(f"{type(thread).__module__}.{type(thread).__qualname__}")
    start(thread)
threading.Thread.start = record
atexit.register(lambda: open(out, "w").write(json.dumps(started)))
sys.argv = ["memgpt", *sys.argv[2:]]
runpy.run_module("memgpt", run_name="__main__", alter_sys=True)
"""


def test_load_off_a_terminal_draws_its_bars_without_a_refresh_thread(home: Path, tmp_path: Path) -> None:
    """Off a terminal rich prints the bars once, at their end: a thread redrawing them ten times a second
    only took CPU from the embedding. (test_cli checks the bars are still printed.)"""
    notes = str(DATA / "test.md")
    started = probed(
        THREADS_STARTED, home, tmp_path / "threads.json", "load", "directory", "--name", "notes", "--input-files", notes
    )
    assert [name for name in started if name.startswith("rich.")] == []


# A command whose process also has a thread that is not a daemon, an idle thread pool never shut down (as the
# server's file-load pool is after a forced quit) and an atexit function, as libraries may.
ENDING = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

pool = ThreadPoolExecutor(1)
pool.submit(print, "pool used", flush=True).result()

atexit.register(lambda: print("atexit ran", flush=True))
import memgpt.cli

# The thread ends after the command: it waits for the command to return, however long a loaded machine takes.
returned = threading.Event()
command = memgpt.cli.main
def main():
    try:
        command()
    finally:
        returned.set()
memgpt.cli.main = main
late = threading.Thread(target=lambda: (returned.wait(), time.sleep(0.5), sys.stdout.write("thread ended\\n")))
late.start()
sys.argv = ["memgpt", *sys.argv[1:]]
memgpt.cli.executable()
"""


def test_the_executable_ends_as_python_would_without_its_teardown(home: Path) -> None:
    """`memgpt` ends its process without the interpreter's teardown (~0.4 s after a search's answer), keeping
    what Python's exit does that matters: threads waited for, atexit functions run, output flushed (the
    thread's line is written without a flush), the exit code of the command."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", ENDING, *args],
            env={**os.environ, "MEMGPT_HOME": str(home), "NO_COLOR": "1"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,  # waiting for the pool's idle worker without Python's thread-exit hooks never ends
            check=False,
        )

    fine = run("--help")
    assert fine.returncode == 0, fine.stderr[-2000:]
    assert "Usage" in fine.stdout
    assert fine.stdout.rstrip().endswith("thread ended\natexit ran"), fine.stdout[-300:]
    failed = run("search", "no-such-source", "anything")
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "no source named 'no-such-source'" in failed.stderr
    assert failed.stdout.rstrip().endswith("thread ended\natexit ran"), failed.stdout[-300:]
    unknown = run("no-such-command")
    assert unknown.returncode == 2, unknown.stderr[-2000:]


# A Ctrl-C that arrives while a finaliser runs (SQLAlchemy's weakref callbacks run often during a load).
LOST_INTERRUPT = """
import os, signal, time
from memgpt.interrupts import keep_lost_interrupts
if os.environ.get("KEEP") == "1":
    keep_lost_interrupts()

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # KeyboardInterrupt is raised here, inside the finaliser

item = Finalised()
del item
try:
    for _ in range(300):  # the interrupt comes again from a thread 10 ms after the finaliser: up to 3 s here
        time.sleep(0.01)
    print("went on")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("keep", ["0", "1"])
def test_a_ctrl_c_raised_inside_a_finaliser_is_not_lost(keep: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOST_INTERRUPT],
        env={**os.environ, "KEEP": keep},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if keep == "1":
        assert done.stdout.strip() == "interrupted", done.stdout + done.stderr
        assert "Exception ignored" not in done.stderr
    else:  # what Python does alone: the interrupt is printed and lost
        assert done.stdout.strip() == "went on", done.stdout + done.stderr


@pytest.mark.parametrize("backend", ["lite", "server"])
def test_milvus_store_contract_holds_without_pandas(backend: str, request: pytest.FixtureRequest) -> None:
    """Every pymilvus call memgpt makes (upsert, insert, search, search and query iterators, query, delete,
    flush, describe, create and drop) works with pymilvus imported as memgpt imports it, and none imports
    pandas: the store's contract, run in a new process whose plugin fails the session if pandas was imported.
    (In the whole suite other tests import pymilvus, hence pandas, first.)"""
    chosen = "lite"
    if backend == "server":
        request.getfixturevalue("milvus_server")  # started here; the child shares it
        chosen = "server and (upsert or ranks or delete or iterate or pages or first_release)"
    plugin = ["-p", "no:cacheprovider", "-p", "tests.no_pandas"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugin, "tests/test_milvus_store.py", "-k", chosen],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "pandas was never imported" in done.stdout
    assert " passed" in done.stdout and " failed" not in done.stdout


DATAFRAME = """
import sys, warnings
from pathlib import Path
from memgpt.storage.milvus import MilvusConnection, MilvusTarget

warnings.simplefilter("ignore")  # the ORM's deprecation notices
connection = MilvusConnection(MilvusTarget(str(Path(sys.argv[1]) / "milvus.db")))
assert "pandas" not in sys.modules
import pandas
from pymilvus import Collection, connections

connections.connect("frames", uri=connection.client._config.uri)
frame = pandas.DataFrame({"id": [1, 2, 3], "vector": [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], "text": ["a", "b", "c"]})
collection, inserted = Collection.construct_from_dataframe("frames", frame, primary_field="id", using="frames")
collection.create_index("vector", {"index_type": "FLAT", "metric_type": "COSINE"})
collection.load()
print(inserted.insert_count, sorted(row["text"] for row in collection.query("id > 1", output_fields=["text"])))
connections.disconnect("frames")
connection.close()
"""


def test_pymilvus_takes_dataframes_once_pandas_is_imported(tmp_path: Path) -> None:
    """pymilvus imported by memgpt (pandas left out), then pandas imported by its user: the ORM's DataFrame path
    (a collection made from a DataFrame's columns, the frame inserted, then queried) works on Milvus Lite."""
    done = subprocess.run(
        [sys.executable, "-c", DATAFRAME, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "3 ['b', 'c']"


ISOPARSE = """
import sys
from memgpt.storage.milvus.client import import_client_modules

import_client_modules()
from pymilvus.client.utils import validate_iso_timestamp

before = "dateutil" in sys.modules
print(before, validate_iso_timestamp("2026-11-27T20:15:00+00:00"), validate_iso_timestamp("not a time"))
print("dateutil" in sys.modules)
"""


def test_pymilvus_checks_timestamps_with_dateutil_imported_when_first_needed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ISOPARSE], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "False", "True"]


# Runs the `memgpt` executable of the remaining arguments and writes to argv[1] whether the garbage collector ran
# while SQLAlchemy was imported, and at exit. The timer that turns it back on is set out of reach: the command
# itself must say that its start-up is over.
COLLECTOR = """
import atexit, gc, json, sys
import memgpt.cli

memgpt.cli.STARTUP_COLLECTION_PAUSE = 3600
out, seen = sys.argv[1], {}


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "sqlalchemy":
            seen.setdefault("importing sqlalchemy", gc.isenabled())
        return None


sys.meta_path.insert(0, Watch())
state = lambda: {**seen, "at exit": gc.isenabled(), "frozen": gc.get_freeze_count()}
atexit.register(lambda: open(out, "w").write(json.dumps(state())))
sys.argv = ["memgpt", *sys.argv[2:]]
memgpt.cli.executable()
"""


def collector(home: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return dict(probed(COLLECTOR, home, out, *args, env=env))


def test_the_garbage_collector_is_paused_for_start_up_and_runs_for_the_work(
    home: Path, tmp_path: Path, llm: ScriptedLLM
) -> None:
    """Start-up's imports make objects that live as long as the process; collecting over them cost `run --message`
    ~0.13 CPU s. The executable pauses the collector until the command's stores are open, then freezes what start-up
    made and collects again: a chat or a load that runs for hours frees its cycles as before."""
    llm.add({"tool": "send_message", "args": {"message": "hi"}})
    env = {"OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": ""}
    running = collector(home, tmp_path / "run.json", "run", "--agent", "a", "--message", "hello", env=env)
    listing = collector(home, tmp_path / "list.json", "list", "sources")
    for found in (running, listing):
        assert found["importing sqlalchemy"] is False, found
        assert found["at exit"] is True, found
        assert isinstance(found["frozen"], int) and found["frozen"] > 10_000, found
    helping = collector(home, tmp_path / "help.json", "--help")  # no work: the process ends paused
    assert helping["at exit"] is False, helping


PAUSED_FOR_GOOD = """
import gc, time
import memgpt.cli

memgpt.cli.STARTUP_COLLECTION_PAUSE = 0.2
memgpt.cli._pause_collection()
paused = not gc.isenabled()
time.sleep(2)
print(paused, gc.isenabled())
"""


def test_the_collector_runs_again_even_if_a_command_never_says_its_start_up_is_over() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PAUSED_FOR_GOOD], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr


def test_main_called_in_the_callers_own_process_leaves_its_collector_alone(home: Path) -> None:
    """Tests (and any caller of ``memgpt.cli.main``) keep their collector: only the executable pauses it."""
    import gc

    from tests.conftest import cli

    assert gc.isenabled()
    done = cli("list", "sources", home=home)
    assert done.returncode == 0, done.stderr
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_command_builds_only_its_own_click_command(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """typer turns each registered command into click's form at every start: a command names itself, so only it
    (or its whole group) is built; `--help` and a misspelt command still see them all."""
    import typer.main

    from tests.conftest import cli

    built: list[str] = []
    convert = typer.main.get_command_from_info

    def recorded(command_info: Any, **kwargs: Any) -> Any:
        built.append(command_info.name)
        return convert(command_info, **kwargs)

    monkeypatch.setattr(typer.main, "get_command_from_info", recorded)
    assert cli("list", "sources", home=home).returncode == 0
    assert built == ["sources"]  # the list group whole would be agents, sources, personas, humans
    built.clear()
    assert cli("list", "--help", home=home).returncode == 0
    assert sorted(built) == ["agents", "humans", "personas", "sources"]
    built.clear()
    assert cli("--help", home=home).returncode == 0
    assert len(built) > 20


def test_the_named_command_alone_behaves_as_in_the_whole_app() -> None:
    """Help and usage errors of :func:`memgpt.cli.app.app_for`'s app are the whole app's, word for word."""
    import typer.main
    from typer.testing import CliRunner

    from memgpt.cli.app import app, app_for

    whole = typer.main.get_command(app)
    arguments = [[], ["--help"], ["--version"], ["serch"], ["load"], ["load", "dir"], ["list", "nope"], ["search"]]
    arguments += [["search", "a", "b", "-k", "0"], ["search", "--bogus"], ["search", "--version"], ["run", "--agent"]]
    arguments += [["list", "sourcs"], ["list", "sources", "--bogus"], ["load", "directory"], ["key", "revoke"]]
    for name, command in whole.commands.items():  # type: ignore[attr-defined]
        arguments.append([name, "--help"])
        arguments += [[name, sub, "--help"] for sub in getattr(command, "commands", {})]
    runner = CliRunner()
    for words in arguments:
        expected, got = runner.invoke(app, words), runner.invoke(app_for(words), words)
        assert (got.exit_code, got.output) == (expected.exit_code, expected.output), words
    assert len(typer.main.get_command(app_for(["search", "notes", "query"])).commands) == 1  # type: ignore[attr-defined]


CONFIGURE_LLM = ["--no-prompt", "--no-llm-check", "--llm-provider", "openai-compatible", "--llm-model", "m"]
CONFIGURE_LLM += ["--llm-endpoint", "http://127.0.0.1:9/v1"]


def test_configure_with_a_window_that_surely_fits_neither_imports_the_agent_nor_makes_the_database(
    home: Path, tmp_path: Path
) -> None:
    """A window given to `memgpt configure` was checked by building a new agent's prompt: the agent's code
    imported (~1 CPU s, SQLAlchemy with it) and metadata.sqlite created, for any window. One far over the
    shipped texts needs neither; a tighter one is still checked as `memgpt run` would."""
    roomy = imported(home, tmp_path / "roomy.json", "configure", *CONFIGURE_LLM, "--llm-context-window", "32000")
    assert "memgpt.agent.agent" not in roomy and "sqlalchemy" not in roomy
    assert not (home / "metadata.sqlite").exists()
    tight = imported(home, tmp_path / "tight.json", "configure", *CONFIGURE_LLM, "--llm-context-window", "8000")
    assert "memgpt.agent.agent" in tight and (home / "metadata.sqlite").exists()


def test_the_sure_fit_margin_covers_every_shipped_persona_and_human() -> None:
    """``SURE_FIT_MARGIN`` over the texts' bytes is at least the window `memgpt run` asks of a new agent (its bound:
    no tokenizer can count more), with the largest memory statistics."""
    import uuid

    from memgpt.agent import prompts
    from memgpt.agent.agent import MIN_ROOM, smallest_window
    from memgpt.agent.context import system_message
    from memgpt.agent.manager import agent_tools
    from memgpt.cli.config import SURE_FIT_MARGIN
    from memgpt.memory.core import DEFAULT_LIMIT, CoreMemory
    from memgpt.tokens import bound_message, bound_tools
    from memgpt.types import AgentState, Block, utc_now

    for persona, persona_text in prompts.shipped("persona").items():
        for human, human_text in prompts.shipped("human").items():
            state = AgentState(
                id=f"agent-{uuid.uuid4()}", name="", user_id="u", persona=persona, human=human,
                system_prompt=prompts.system_prompt(), llm_model="m", context_window=1, embedding_model="e",
                embedding_dim=384,
            )  # fmt: skip
            blocks = [Block(kind, text, max(DEFAULT_LIMIT, len(text))) for kind, text in
                      (("persona", persona_text), ("human", human_text))]  # fmt: skip
            big = 10**12
            message = system_message(
                state, CoreMemory(blocks).render(), recall_count=big, archival_count=big, sources=[], now=utc_now()
            )
            specs = [t.spec() for t in agent_tools(state)[0]]
            needed = smallest_window(bound_message(message) + bound_tools(specs) + MIN_ROOM)
            texts = sum(len(t.encode("utf-8")) for t in (prompts.system_prompt(), persona_text, human_text))
            assert needed <= texts + SURE_FIT_MARGIN, (persona, human, needed - texts)
