"""kill -9 of `memgpt server` at points of a turn the other crash tests leave out (tests/test_server_messages.py kills
it while the LLM is asked, in the first step and after a stored one): after the LLM answered but before the step
was stored, and after the turn's last step was stored but before its run was recorded as finished. letta-client's
own retry of the send, to the restarted server, gets exactly one answer, and no message is stored twice."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import Letta

from memgpt.config import load_config, save_config
from memgpt.server.state import OWNER_NAME
from memgpt.storage import Storage
from memgpt.types import Role
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import ServerProcess, use_scripted_llm

pytestmark = pytest.mark.usefixtures("metadata_url")

HANDLE = "openai-compatible/scripted"


class CrashingServer(ServerProcess):
    """`memgpt server` through tests/crash_child.py: it kills itself (SIGKILL) at ``point``."""

    point: str = ""

    def start(self) -> None:
        env = {**os.environ, "MEMGPT_HOME": str(self.home), "CRASH_AT": self.point, "CRASH_AFTER": "0"}
        command = [sys.executable, "-m", "tests.crash_child", "server", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


# step_committed: the last step's commit recorded the run's end too (the retry gets the stored answer); end_unrecorded:
# it did not (a shared recall index): the retry finds the run unfinished, and the steps stored are its answer.
@pytest.mark.parametrize("point", ["llm_answered", "step_committed", "end_unrecorded"])
def test_a_kill_at_a_point_of_a_turn_then_letta_clients_retry_answers_once(
    home: Path, llm: ScriptedLLM, point: str
) -> None:
    config = use_scripted_llm(home, llm.url)
    config.server.lease_seconds = 600  # so only its dead owner, not an expiry, frees the agent
    save_config(config, home)
    with Storage(config, home) as storage:
        owner = storage.users.ensure(config.user_id, OWNER_NAME)
        key = storage.users.create_key(owner.id)[1]
    first = ServerProcess(home)  # makes the agent (the crash points would fire on its creation's writes)
    first.wait_ready()
    try:
        agent_id = Letta(base_url=first.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
    finally:
        first.stop()
    CrashingServer.point = point
    crashing = CrashingServer(home, port=first.port)
    crashing.wait_ready()
    llm.reply("Answered once.")
    statuses: list[int] = []
    hooks: dict[str, Any] = {"response": [lambda r: statuses.append(r.status_code)]}
    letta = Letta(base_url=crashing.url, api_key=key, max_retries=30, http_client=httpx.Client(event_hooks=hooks))
    answers: list[Any] = []

    def send() -> None:
        try:
            answers.append(letta.agents.messages.create(agent_id, input="keep me once"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            answers.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        assert crashing.process.wait(60) == -9, crashing.log.read_text()[-3000:]
    finally:
        if crashing.process.poll() is None:
            crashing.process.kill()
    assert statuses == []  # the connection died with the server
    llm.script.clear()
    llm.reply("Answered once.")
    again = ServerProcess(home, port=first.port)  # letta-client's next try reaches it
    try:
        again.wait_ready()
        sender.join(timeout=120)
    finally:
        again.stop()
    assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
    assert [m.content for m in answers[0].messages if m.message_type == "assistant_message"] == ["Answered once."]
    with Storage(load_config(home), home) as storage:
        stored = [(m.role, m.content) for m in storage.messages.last(agent_id, 100)]
    print(point, [(r.value, c[:40]) for r, c in stored], statuses, f"{len(llm.requests)} LLM requests")
    assert [c for r, c in stored if r is Role.USER and "keep me once" in c] == ["keep me once"]
    assert sum(1 for r, _ in stored if r is Role.ASSISTANT) == 1, stored
