"""A new home's set-up killed at any point leaves a home the next command opens, loads into and searches.

The collection is made in the connecting thread of `memgpt load` (MilvusConnection.warm) while the command
goes on; a kill -9 there (tests/crash_child.py) stops the whole process at that point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memgpt.config import load_config
from memgpt.data.sources import get_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.storage.filters import MATCH_ALL
from tests.conftest import DATA, REPO, run_cli

NOTES = DATA / "long_test.txt"


def killed_load(home: Path, point: str) -> None:
    env = {**os.environ, "MEMGPT_HOME": str(home), "CRASH_AT": point, "NO_COLOR": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "tests.crash_child", "load", "directory", "--name", "notes", f"--input-files={NOTES}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}: {child.returncode}\n{child.stderr}"


@pytest.mark.parametrize("point", ["collection_made", "collection_primed"])
def test_a_first_load_killed_while_its_collection_is_made_leaves_a_working_home(
    home: Path, model: LocalMiniLM, point: str
) -> None:
    killed_load(home, point)
    done = run_cli("load", "directory", "--name", "notes", "--input-files", str(NOTES), home=home)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    found = run_cli("search", "notes", "Enrico Letta prime minister", home=home)
    assert found.returncode == 0 and "error" not in found.stderr.lower(), found.stderr
    assert "Letta" in found.stdout
    config = load_config(home)
    with Storage(config, home) as storage:
        source = get_source(storage, config.user_id, "notes")
        assert source.passages > 0
        assert storage.passages(model.space).count(MATCH_ALL) == source.passages  # no primer row left
