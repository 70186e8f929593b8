"""Milvus Lite allows one process per file: the second gets one actionable line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from memgpt.errors import StorageLockedError
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from tests.conftest import PAPER, run_cli

HOLDER = """
import sys, time
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
conn = MilvusConnection(MilvusTarget(sys.argv[1]))
conn.ping()
print("holding", flush=True)
time.sleep(120)
"""


def hold(db: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.stdout.readline().strip() == "holding":
            return proc
    proc.kill()
    pytest.fail("the holder process never opened the database")


def test_second_process_gets_the_lock_message(home: Path) -> None:
    db = home / "milvus.db"
    home.mkdir(parents=True)
    holder = hold(db)
    try:
        with pytest.raises(
            StorageLockedError,
            match=r"another memgpt process (\(pid \d+\) )?is using .*milvus\.db — close it or use a Milvus server",
        ):
            MilvusConnection(MilvusTarget(str(db)))
        result = run_cli("load", "directory", "--name", "paper", "--input-files", str(PAPER), home=home)
        assert result.returncode == 1
        assert "another memgpt process" in result.stderr and "is using" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()


def test_closing_releases_the_lock_for_other_processes(home: Path) -> None:
    db = home / "milvus.db"
    home.mkdir(parents=True)
    conn = MilvusConnection(MilvusTarget(str(db)))
    conn.ping()
    conn.close()
    holder = hold(db)  # would fail to open if our process still held the lock
    holder.kill()
    holder.wait()
