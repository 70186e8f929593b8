"""Shared fixtures: every test gets its own memgpt home; Milvus Lite, SQLite and PostgreSQL are real."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

# Before anything loads pymilvus: memgpt turns gRPC's fork support off there (see memgpt/storage/milvus),
# and this process forks too (pexpect, in the terminal tests) while holding Milvus clients of other tests.
import memgpt.storage.milvus  # noqa: F401
from memgpt.config import Config, load_config, save_config
from memgpt.data.ingest import LoadReport, SourceLoader
from memgpt.embeddings.base import Vector
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage

pytest_plugins = ["tests.milvus_server", "tests.postgres", "tests.local_llm"]
from tests.milvus_server import TOKEN  # noqa: E402
from tests.scripted_llm import ScriptedLLM  # noqa: E402
from tests.server_rig import LiveServer, use_scripted_llm  # noqa: E402

# The user of the library-level tests; storage serves any user, the CLI passes the config's.
USER = "tester"
DATA = Path(__file__).parent / "data"
PAPER = DATA / "memgpt_research_paper.pdf"
REPO = Path(__file__).parent.parent
# The environment of a child in a pexpect terminal. pexpect never answers the cursor position report (CPR) that
# prompt_toolkit asks for at every prompt, so each prompt waited for it as it ended (up to 1 s, until the 2 s it gives
# a terminal to answer at all ran out); terminals people use answer at once. PROMPT_TOOLKIT_NO_CPR=1 is prompt_toolkit's
# own switch for a terminal that does not answer (its vt100 output's responds_to_cpr).
TERMINAL = {"TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}


def pytest_configure(config: pytest.Config) -> None:
    """Tests press Ctrl-C in child processes, which inherit an ignored SIGINT and would then never see it.
    A suite started in the background by a shell without job control (`nohup pytest &`, some CI steps)
    ignores SIGINT; Python then leaves it ignored, so memgpt's Ctrl-C handling would go untested."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers", "long(seconds): a test that takes about that long on a quiet machine; the longest run first"
    )


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the developer's ~/.memgpt or a shared tiktoken cache."""
    monkeypatch.setenv("MEMGPT_HOME", str(tmp_path_factory.mktemp("unused-home")))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path_factory.mktemp("tiktoken")))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MEMGPT_HOME", str(path))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def metadata_url(request: pytest.FixtureRequest, home: Path) -> str:
    """Run the test with the metadata database on SQLite and on the real PostgreSQL; returns its URL.

    Tests and modules opt in (``pytest.mark.usefixtures("metadata_url")``); the home's config says
    which, so the CLI in a child process uses it too."""
    if request.param == "sqlite":
        return Config().metadata_database_url(home)  # the default: the home stays new
    config = load_config(home)
    config.metadata_url = request.getfixturevalue("postgres_url")
    save_config(config, home)
    return config.metadata_url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test run on both Milvus backends pairs PostgreSQL with the Milvus server only, as a deployment
    that scales out would: the metadata code is the same beside Milvus Lite, and it saves the time."""
    paired, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        redundant = bool(params) and params.get("metadata_url") == "postgres" and params.get("backend") == "lite"
        (dropped if redundant else paired).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = paired
    _long_ones_first(items)


def _long_ones_first(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` start first, one at the head of each worker's share, the longest first, so that
    they run beside the short ones instead of being a minute-long tail at the end.

    pytest-xdist's worksteal (scripts/test.sh) gives the first of W workers the first n // W tests, the next
    (n - that) // (W - 1), and so on; a worker that runs dry takes tests from the END of another's queue. Under
    another scheduler the long tests still come early."""

    def expected(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return float(marker.args[0]) if marker and marker.args else 0.0

    longest = sorted((item for item in items if expected(item) > 0), key=expected, reverse=True)
    if not longest:
        return
    rest = [item for item in items if expected(item) == 0]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for worker in range(workers):
        share = remaining // (workers - worker)
        remaining -= share
        heads = longest[worker::workers]
        taken = max(share - len(heads), 0)
        ordered += heads + rest[:taken]
        rest = rest[taken:]
    items[:] = ordered + rest


def _opened_on_metadata_backend(request: pytest.FixtureRequest) -> None:
    """Storage fixtures open after ``metadata_url`` has chosen the database, whatever the fixture order."""
    if "metadata_url" in request.fixturenames:
        request.getfixturevalue("metadata_url")


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    """The scripted OpenAI-compatible LLM server (tests/scripted_llm.py), for tests that talk to one; modules
    that also point the environment at it define their own."""
    server = ScriptedLLM()
    yield server
    server.close()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder anyone may enter, for tests that run a command as another user (file modes do
    not bind root). Not under pytest's own: every pytest session started as root resets that to 0o700,
    which on a machine running several suites at once locks the other user out mid-test."""
    path = Path(tempfile.mkdtemp(prefix="memgpt-open-"))
    path.chmod(0o755)
    yield path
    for folder, _dirs, _files in os.walk(path):
        os.chmod(folder, 0o755)  # tests leave folders read-only
    shutil.rmtree(path)


@pytest.fixture
def storage(request: pytest.FixtureRequest, home: Path) -> Iterator[Storage]:
    _opened_on_metadata_backend(request)
    opened = Storage(load_config(home), home)
    yield opened
    opened.close()


@pytest.fixture(params=["lite", "server"])
def backend(request: pytest.FixtureRequest, home: Path) -> str:
    """Run the test on Milvus Lite and on the real Milvus server; returns which."""
    if request.param == "server":
        config = load_config(home)
        config.milvus.uri = request.getfixturevalue("milvus_server")
        config.milvus.database = request.getfixturevalue("server_database")
        config.milvus.token = TOKEN
        save_config(config, home)
    return str(request.param)


@pytest.fixture
def any_storage(request: pytest.FixtureRequest, backend: str, home: Path) -> Iterator[Storage]:
    """Storage on the backend under test (see ``backend``)."""
    _opened_on_metadata_backend(request)
    opened = Storage(load_config(home), home)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def model() -> LocalMiniLM:
    return LocalMiniLM()


class RememberingMiniLM(LocalMiniLM):
    """The local model, but a batch of texts it embedded before (the very same batch, in the same order) is
    answered with the vectors it computed then: the model's own vectors, computed once a session."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, ...], list[Vector]] = {}

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        key = tuple(texts)
        if key not in self._seen:
            self._seen[key] = super().embed_batch(texts)
        return [list(vector) for vector in self._seen[key]]


@pytest.fixture(scope="session")
def remembering_model() -> LocalMiniLM:
    """For tests that load the same files again and again (the seed paper: ~20 loads, on each backend), where
    the vectors are not what is tested: embedding them, most of a load's CPU, is done once a session."""
    return RememberingMiniLM()


def loader(storage: Storage, model: LocalMiniLM, *, user_id: str = USER, **kwargs: object) -> SourceLoader:
    config = load_config(Path(os.environ["MEMGPT_HOME"]))
    return SourceLoader(
        storage,
        model,
        user_id=user_id,
        chunk_size=config.embedding.chunk_size,
        chunk_overlap=config.embedding.chunk_overlap,
        **kwargs,  # type: ignore[arg-type]
    )


def load(storage: Storage, model: LocalMiniLM, name: str, *paths: Path, user_id: str = USER) -> LoadReport:
    return loader(storage, model, user_id=user_id).load(name, list(paths))


def run_cli(
    *args: str, home: Path, timeout: float = 300, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `memgpt` command in a child process, with no terminal; ``env``: variables set for it besides."""
    return subprocess.run(
        [sys.executable, "-m", "memgpt", *args],
        env={**cli_env(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def cli_env(home: Path) -> dict[str, str]:
    """The environment the `memgpt` command runs in (run_cli), with ``home`` as its MEMGPT_HOME."""
    return {**os.environ, "MEMGPT_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}


class _LastResort(logging.StreamHandler):  # type: ignore[type-arg]
    """``logging.lastResort`` as a process of its own has it (pytest's handlers on the root logger displace it):
    a warning or worse that no handler on the way from its logger to the root took (memgpt gives the MCP SDK's
    logger a NullHandler, for one) goes to stderr as its bare message."""

    def __init__(self, stream: object) -> None:
        super().__init__(stream)  # type: ignore[arg-type]
        self.setLevel(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return
            logger = logger.parent if logger.propagate else None
        super().emit(record)


def cli(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The `memgpt` command run in this process: the same ``main()`` as the executable, with its own stdin,
    stdout, stderr, arguments and environment (typer's CliRunner isolation), without a start-up that imports
    everything again (seconds of CPU each). For tests of what a command does; tests of the process itself
    (signals, a terminal, a kill, start-up, file modes as another user) use ``run_cli``.

    Its stderr also holds what a process of its own would show there: file descriptors 1 and 2 are captured
    too (the child processes the command starts, native libraries), and a warning that no logging handler
    took (``_LastResort``)."""
    from typer.testing import CliRunner

    from memgpt.cli import main

    env = {"MEMGPT_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    code: int = 0
    with (
        tempfile.TemporaryFile() as native_out,
        tempfile.TemporaryFile() as native_err,
        CliRunner().isolation(input=stdin, env=env) as (out, err, _mixed),
    ):
        last_resort = _LastResort(sys.stderr)
        root = logging.getLogger()
        root.addHandler(last_resort)
        argv, sys.argv = sys.argv, ["memgpt", *args]
        saved = os.dup(1), os.dup(2)
        os.dup2(native_out.fileno(), 1)
        os.dup2(native_err.fileno(), 2)
        try:
            main()
        except SystemExit as exc:
            if isinstance(exc.code, str):
                sys.stderr.write(exc.code + "\n")
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sys.argv = argv
            root.removeHandler(last_resort)
            sys.stdout.flush()
            sys.stderr.flush()
        native_out.seek(0)
        native_err.seek(0)
        stdout = out.getvalue().decode() + native_out.read().decode(errors="replace")
        stderr = err.getvalue().decode() + native_err.read().decode(errors="replace")
    return subprocess.CompletedProcess(["memgpt", *args], code, stdout, stderr)


@pytest.fixture
def live_server(home: Path) -> Iterator[LiveServer]:
    """A real server (uvicorn, loopback) on this test's home; see tests/server_rig.py."""
    server = LiveServer(home, load_config(home))
    yield server
    server.stop()


@pytest.fixture
def scripted_server(request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM) -> Iterator[LiveServer]:
    """A real server (as ``live_server``) whose agents' LLM is this test's scripted one (``llm``); on the metadata
    database the test chose, if it uses ``metadata_url``."""
    _opened_on_metadata_backend(request)
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    yield server
    server.stop()
