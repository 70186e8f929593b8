"""A load killed or interrupted mid-way leaves nothing half-visible, and running it again finishes it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memgpt.config import load_config, save_config
from memgpt.data.sources import get_source, search_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq, is_in
from tests.conftest import DATA, PAPER, run_cli

FILES = [DATA / "long_test.txt", PAPER]


def start_load(home: Path) -> subprocess.Popen[str]:
    """The load of FILES, paused once the second file's passages are in Milvus and its documents still pending
    (the first file done: a source with nothing done yet is removed on Ctrl-C), so that a signal lands there."""
    args = ["load", "directory", "--name", "big"]
    for path in FILES:
        args += ["--input-files", str(path)]
    env = {**os.environ, "MEMGPT_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_MEMGPT, str(home), "publish2", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_pause(home, proc, "publish2")
    return proc


def check_consistent(home: Path, model: LocalMiniLM, *, complete: bool) -> None:
    config = load_config(home)
    with Storage(config, home) as storage:
        source = get_source(storage, config.user_id, "big")
        store = storage.passages(model.space)
        hidden = storage.metadata.hidden_document_ids([source.id])
        assert bool(hidden) != complete
        if not complete:  # the pending documents' passages are in Milvus: searches must not show them
            assert store.count(all_of(eq("source_id", source.id), is_in("document_id", hidden))) > 0
        for query in ("Enrico Letta prime minister", "virtual context management for LLMs"):  # each file's
            for hit in search_source(storage, source, model, query, k=50):
                assert hit.passage.document_id not in hidden
        if complete:
            assert store.count(eq("source_id", source.id)) == source.passages
            assert source.documents == 14


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_load_is_invisible_then_completed(home: Path, model: LocalMiniLM, how: signal.Signals) -> None:
    home.mkdir(parents=True)
    proc = start_load(home)
    proc.send_signal(how)
    _out, err = proc.communicate(timeout=60)
    if how == signal.SIGINT:
        assert proc.returncode == 130
        assert "Interrupted" in err and "Traceback" not in err
    elif how == signal.SIGTERM:  # taken as Ctrl-C
        assert proc.returncode == 128 + signal.SIGTERM
        assert "Interrupted" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    check_consistent(home, model, complete=False)

    again = run_cli("load", "directory", "--name", "big", *[f"--input-files={p}" for p in FILES], home=home)
    assert again.returncode == 0, again.stderr
    check_consistent(home, model, complete=True)


# `memgpt` with steps paused at known points, so that a signal lands there and not a moment earlier or later:
# argv[1] is a folder, argv[2] the steps (comma-separated); at each, the file reached-STEP is written in the folder,
# and the step waits for go-STEP to exist there before going on.
PAUSED_MEMGPT = """
import sys, time
from pathlib import Path

folder, steps = Path(sys.argv[1]), sys.argv[2].split(",")


def paused(real, step):
    def step_paused(*args, **kwargs):
        (folder / f"reached-{step}").write_text(step)
        for _ in range(1200):
            if (folder / f"go-{step}").exists():
                break
            time.sleep(0.05)
        return real(*args, **kwargs)

    return step_paused


for step in steps:
    if step == "open":  # while open_storage opens the home, before the loader starts
        from memgpt.storage import sql

        sql.MetadataStore.__init__ = paused(sql.MetadataStore.__init__, step)
    elif step.startswith("publish"):  # "publishN": the Nth file's passages are in Milvus, its documents pending
        from memgpt.storage.sql import MetadataStore

        def publish(store, ready, *rest, real=MetadataStore.publish, nth=int(step[7:]), calls=[0], step=step):
            calls[0] += bool(ready)  # a file's documents made ready, not older ones retired
            return (paused(real, step) if ready and calls[0] == nth else real)(store, ready, *rest)

        MetadataStore.publish = publish
    else:  # "cleanup": the removal of a source an interrupted load created, which holds Ctrl-C (and SIGTERM)
        from memgpt.data import ingest

        ingest.delete_source = paused(ingest.delete_source, step)
sys.argv = ["memgpt", *sys.argv[3:]]
from memgpt.cli import executable

executable()
"""


def start_first_load(home: Path, *pauses: str) -> subprocess.Popen[str]:
    """A load of one file into a new source, in small passages (windows reach Milvus), with ``pauses`` (steps of
    PAUSED_MEMGPT), once it reached the first."""
    home.mkdir(parents=True)
    config = load_config(home)
    config.embedding.chunk_size, config.embedding.chunk_overlap = 16, 0  # small passages: windows reach Milvus
    save_config(config, home)
    env = {**os.environ, "MEMGPT_HOME": str(home)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSED_MEMGPT,
            str(home),
            ",".join(pauses),
            "load",
            "directory",
            "--name",
            "first",
            f"--input-files={DATA / 'long_test.txt'}",
        ],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    wait_for_pause(home, proc, pauses[0])
    return proc


def wait_for_pause(home: Path, proc: subprocess.Popen[str], step: str) -> None:
    deadline = time.monotonic() + 180
    while not (home / f"reached-{step}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the load never reached its pause {step}: {proc.communicate(timeout=60)[1]}")
        time.sleep(0.05)


def check_nothing_left(home: Path, model: LocalMiniLM) -> None:
    with Storage(load_config(home), home) as storage:
        assert storage.metadata.list_sources(load_config(home).user_id) == []
        with sqlite3.connect(home / "metadata.sqlite") as conn:
            assert conn.execute("select count(*) from documents").fetchone()[0] == 0
        assert storage.passages(model.space).count() == 0


def test_ctrl_c_during_the_first_file_leaves_no_source_behind(home: Path, model: LocalMiniLM) -> None:
    """Ctrl-C as a terminal sends it: to the whole process group, so the Milvus Lite server gets it too."""
    proc = start_first_load(home, "publish1")  # its passages in Milvus, its documents pending
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    check_nothing_left(home, model)


def test_sigterm_during_the_first_file_leaves_no_source_behind(home: Path, model: LocalMiniLM) -> None:
    """SIGTERM (``kill``, a service manager's stop, a CI timeout) to the load's process is taken as Ctrl-C: the
    source it created is removed, not left listed with 0 documents; the exit code is SIGTERM's (128 + 15)."""
    proc = start_first_load(home, "publish1")  # its passages in Milvus, its documents pending
    os.kill(proc.pid, signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Interrupted: nothing half-loaded is visible" in err and "Traceback" not in err
    check_nothing_left(home, model)


def test_sigterm_while_the_home_opens_exits_with_sigterms_code(home: Path, model: LocalMiniLM) -> None:
    """SIGTERM before the loader runs (open_storage takes 1-2.5 s: Milvus Lite, the metadata database) ends the
    load as Ctrl-C would, and with SIGTERM's code, not Ctrl-C's 130."""
    proc = start_first_load(home, "open")
    os.kill(proc.pid, signal.SIGTERM)
    (home / "go-open").touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Interrupted" in err and "Traceback" not in err
    check_nothing_left(home, model)


def test_sigterm_during_the_clean_up_of_a_ctrl_c_exits_with_sigterms_code(home: Path, model: LocalMiniLM) -> None:
    """A SIGTERM while the clean-up after a Ctrl-C runs is held until the clean-up is done (as a second Ctrl-C is),
    and the load then exits with SIGTERM's code."""
    proc = start_first_load(home, "publish1", "cleanup")
    os.kill(proc.pid, signal.SIGINT)
    wait_for_pause(home, proc, "cleanup")
    os.kill(proc.pid, signal.SIGTERM)
    (home / "go-cleanup").touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Interrupted: nothing half-loaded is visible" in err and "Traceback" not in err
    check_nothing_left(home, model)
