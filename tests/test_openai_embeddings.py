"""The OpenAI-compatible embedding provider against a local HTTP server the test starts."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from memgpt.config import EmbeddingSettings
from memgpt.embeddings import embedding_model
from memgpt.embeddings.openai import OpenAIEmbeddings
from memgpt.errors import EmbeddingError
from tests.conftest import DATA, cli
from tests.http_json import read_json, send_json


class EmbeddingServer(ThreadingHTTPServer):
    dimension = 16
    fail_with: int | None = None
    failures = 0  # answer this many requests with fail_with, then as usual (0: every one)
    garbled = False  # answer 200 with no embeddings
    requests: list[dict]
    headers: list[dict[str, str]]


class Handler(BaseHTTPRequestHandler):
    server: EmbeddingServer

    def do_POST(self) -> None:
        body = read_json(self)
        self.server.requests.append(body)
        self.server.headers.append({name.lower(): value for name, value in self.headers.items()})
        if self.server.fail_with and (not self.server.failures or len(self.server.requests) <= self.server.failures):
            send_json(self, self.server.fail_with, {"error": {"message": "model not found", "type": "invalid_request"}})
            return
        if self.server.garbled:
            send_json(self, 200, {"object": "list", "detail": "try again later"})
            return
        data = []
        for index, text in enumerate(body["input"]):
            vector = [0.0] * self.server.dimension
            vector[len(text) % self.server.dimension] = 1.0
            # As OpenAI does: base64 of little-endian float32s when asked for, else a list of numbers.
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index,
                         "embedding": packed if body.get("encoding_format") == "base64" else vector})  # fmt: skip
        send_json(
            self,
            200,
            {
                "object": "list",
                "data": data[::-1],
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    httpd = EmbeddingServer(("127.0.0.1", 0), Handler)
    httpd.requests, httpd.headers = [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def endpoint(server: EmbeddingServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def configure_endpoint(server: EmbeddingServer, model: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`memgpt configure` for ``model`` at the test's embedding server."""
    args = ["--embedding-provider", "openai", "--embedding-model", model, "--embedding-endpoint", endpoint(server)]
    return cli("configure", *args, home=home)


def test_vectors_come_back_in_input_order(server: EmbeddingServer) -> None:
    model = OpenAIEmbeddings("nomic-embed-text", dimensions=16, endpoint=endpoint(server), batch_size=2)
    vectors = model.embed_multi(["a", "bbb", "cc", "dddd", "e"])
    assert [v.index(1.0) for v in vectors] == [1, 3, 2, 4, 1]
    assert sum(len(r["input"]) for r in server.requests) == 5 and max(len(r["input"]) for r in server.requests) == 2


def test_wrong_dimension_and_errors_are_clear(server: EmbeddingServer) -> None:
    model = OpenAIEmbeddings("nomic-embed-text", dimensions=768, endpoint=endpoint(server))
    with pytest.raises(EmbeddingError, match="dimension 16, expected 768"):
        model.embed("x")
    server.fail_with = 404
    with pytest.raises(EmbeddingError, match="answered 404: model not found"):
        OpenAIEmbeddings("missing", dimensions=16, endpoint=endpoint(server)).embed("x")


def test_busy_answers_are_retried_and_garbled_ones_are_one_clear_line(server: EmbeddingServer) -> None:
    model = OpenAIEmbeddings("nomic-embed-text", dimensions=16, endpoint=endpoint(server))
    model.sleep = lambda seconds: None  # type: ignore[method-assign]
    server.fail_with, server.failures = 503, 2
    assert model.embed("abc").index(1.0) == 3
    assert len(server.requests) == 3
    server.requests.clear()
    server.failures = 0
    with pytest.raises(EmbeddingError, match=r"answered 503: model not found"):
        model.embed("abc")
    assert len(server.requests) == model.max_retries + 1
    server.fail_with, server.garbled = None, True
    with pytest.raises(EmbeddingError, match=r"sent a reply that is not a list of embeddings: .*try again later"):
        model.embed("abc")


def test_requests_name_the_openai_organization_and_project_as_the_llm_does(
    server: EmbeddingServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-1")
    configured = configure_endpoint(server, "org-model", home)
    assert configured.returncode == 0, configured.stderr
    settings = EmbeddingSettings(provider="openai", model="org-model", endpoint=endpoint(server), dimensions=16)
    embedding_model(settings).embed("x")
    assert len(server.headers) == 2  # configure's dimension probe, then the model the config describes
    for headers in server.headers:
        assert (headers["openai-organization"], headers["openai-project"]) == ("org-1", "proj-1")


def test_configure_probes_the_dimension_and_load_uses_the_endpoint(server: EmbeddingServer, home: Path) -> None:
    configured = configure_endpoint(server, "nomic-embed-text", home)
    assert configured.returncode == 0, configured.stderr
    assert f"embeddings: openai nomic-embed-text at {endpoint(server)} (16 dims)" in configured.stdout
    loaded = cli("load", "directory", "--name", "remote", "--input-files", str(DATA / "test.md"), home=home)
    assert loaded.returncode == 0, loaded.stderr
    listed = json.loads(cli("list", "sources", "--json", home=home).stdout)
    assert listed[0]["embedding_model"] == "nomic-embed-text" and listed[0]["embedding_dim"] == 16
