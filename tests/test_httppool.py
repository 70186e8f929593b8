"""The LLM's POSTs on sockets of their own, responses read by httptools (``httppool.KeptAlive``): kept-alive
connections, one the server closed while idle replaced, chunked and read-to-the-end bodies, replies cut off or not
HTTP refused as such, redirects followed through httpx, and httpx alone where a proxy from the environment applies."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memgpt import httppool
from memgpt.errors import LLMRetryableError
from memgpt.llm.replies import post
from tests.http_json import read_json, send_json


class Endpoint:
    """A JSON endpoint on loopback that counts the connections it accepted; ``close_after_reply`` makes it close
    each connection after answering without saying so (as a server whose keep-alive timer ran out does)."""

    def __init__(self) -> None:
        self.connections = 0
        self.close_after_reply = False
        self.seen: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                endpoint.connections += 1

            def do_POST(self) -> None:
                if self.path.startswith("/old/"):  # moved: a 307 keeps the method and the body
                    self.rfile.read(int(self.headers["Content-Length"]))
                    self.send_response(307)
                    self.send_header("Location", "/v1/" + self.path.removeprefix("/old/"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = read_json(self)
                endpoint.seen.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                send_json(self, 200, {"echo": body})
                if endpoint.close_after_reply:
                    self.close_connection = True

            def log_message(self, *args: object) -> None: ...

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    yield served
    served.close()


def _client(base_url: str, monkeypatch: pytest.MonkeyPatch | None = None) -> Any:
    """A fresh pooled client (the process's pool keeps one per endpoint and headers)."""
    return httppool.client(base_url, {"authorization": f"Bearer test-{id(monkeypatch)}-{base_url}"})


def test_posts_go_over_one_kept_alive_connection_with_the_clients_headers(endpoint: Endpoint) -> None:
    http = _client(f"{endpoint.url}/v1")
    assert httppool.plain(http) is not None
    for number in range(3):
        status, text = post(http, "/chat/completions", {"n": number}, timeout=10, where="the endpoint")
        assert status == 200 and json.loads(text) == {"echo": {"n": number}}
    assert endpoint.connections == 1
    assert [seen["path"] for seen in endpoint.seen] == ["/v1/chat/completions"] * 3
    headers = {name.lower(): value for name, value in endpoint.seen[0]["headers"].items()}
    assert headers["authorization"].startswith("Bearer test-") and headers["user-agent"] == "memgpt"
    assert headers["content-type"] == "application/json"


def test_a_connection_the_server_closed_while_idle_is_replaced(endpoint: Endpoint) -> None:
    endpoint.close_after_reply = True
    http = _client(f"{endpoint.url}/v1")
    for number in range(3):
        assert post(http, "/chat/completions", {"n": number}, timeout=10, where="the endpoint")[0] == 200
    assert endpoint.connections == 3


def test_a_connection_closed_as_the_request_goes_out_is_retried_once_on_a_new_one(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server closed it after the idle check (here: the check is told it is fine): the request fails on the
    reused connection before any reply, and goes again on a new one."""
    endpoint.close_after_reply = True
    http = _client(f"{endpoint.url}/v1", monkeypatch)
    assert post(http, "/chat/completions", {"n": 0}, timeout=10, where="the endpoint")[0] == 200
    monkeypatch.setattr(httppool, "_readable", lambda _sock: False)
    status, text = post(http, "/chat/completions", {"n": 1}, timeout=10, where="the endpoint")
    assert status == 200 and json.loads(text) == {"echo": {"n": 1}}
    assert [seen["body"] for seen in endpoint.seen] == [{"n": 0}, {"n": 1}]  # sent once each


def test_a_redirect_is_followed_through_httpx(endpoint: Endpoint) -> None:
    http = _client(f"{endpoint.url}/old")
    status, text = post(http, "/chat/completions", {"n": 7}, timeout=10, where="the endpoint")
    assert status == 200 and json.loads(text) == {"echo": {"n": 7}}
    assert [seen["path"] for seen in endpoint.seen] == ["/v1/chat/completions"]


def test_a_proxy_from_the_environment_leaves_the_endpoint_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert httppool.plain(_client("https://llm.example.com/v1", monkeypatch)) is None
    monkeypatch.setenv("NO_PROXY", "llm.example.com")
    assert httppool.plain(_client("https://llm.example.com/v1/", monkeypatch)) is not None


def test_urls_httpx_would_rewrite_are_left_to_it(endpoint: Endpoint) -> None:
    """http.client sends the URL as written: credentials in it, a query, a path httpx would percent-encode or a
    host it would IDNA-encode go through httpx, which the endpoint makes only then."""
    for url in (
        "http://user:secret@127.0.0.1:9/v1",
        "http://127.0.0.1:9/v1?api-version=1",
        "http://127.0.0.1:9/my models/v1",
        "http://bücher.example/v1",
        "ftp://127.0.0.1/v1",
    ):
        assert httppool.plain(_client(url)) is None, url
    assert post(_client(f"{endpoint.url}/v1"), "/x", {}, timeout=10, where="the endpoint")[0] == 200
    assert _client(f"{endpoint.url}/v1")._client is None  # no httpx client made for a plain POST


def test_the_idle_check_works_for_a_descriptor_past_1023(endpoint: Endpoint) -> None:
    """A busy server holds more than 1,024 descriptors: select() refuses those with ValueError, poll() does not."""
    with socket.create_connection(endpoint.server.server_address) as near:
        high = socket.socket(fileno=os.dup2(near.fileno(), 1500))
        try:
            assert high.fileno() == 1500
            assert httppool._readable(high) is False  # open, nothing sent: not readable
            near.shutdown(socket.SHUT_WR)
            endpoint.close()  # the server side goes away: readable (end of file)
            assert httppool._readable(high) is True
        finally:
            high.close()


def _connected(endpoint: Endpoint) -> socket.socket:
    return socket.create_connection(endpoint.server.server_address, timeout=5)


def test_idle_connections_past_their_time_or_beyond_the_cap_are_closed(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst, the older idle connections (never reached again: the newest is reused first) are closed
    when any connection comes back, not kept open until the process ends."""
    pool = httppool.plain(_client(f"{endpoint.url}/v1", monkeypatch))
    assert pool is not None
    monkeypatch.setattr(httppool, "KEEP_IDLE", 0.2)
    burst = [_connected(endpoint) for _ in range(3)]
    for connection in burst:
        pool._keep(connection)
    time.sleep(0.3)
    last = _connected(endpoint)
    pool._keep(last)
    assert [c for c, _ in pool._idle] == [last]
    assert all(c.fileno() == -1 for c in burst)  # closed
    monkeypatch.setattr(httppool, "MAX_IDLE", 2)
    more = [_connected(endpoint) for _ in range(2)]
    for connection in more:
        pool._keep(connection)
    assert [c for c, _ in pool._idle] == more and last.fileno() == -1


class Raw:
    """A loopback server answering each request (read up to its body's end) with the next of ``replies``, bytes
    as given; None closes the connection instead. It counts the connections it accepted."""

    def __init__(self, replies: list[bytes | None]) -> None:
        self.replies = replies
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.replies:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        got = conn.recv(65536)
                        if not got:
                            break
                        head += got
                    if not head:
                        break
                    top, _, rest = head.partition(b"\r\n\r\n")
                    length = int(top.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    reply = self.replies.pop(0)
                    if reply is None:
                        break
                    conn.sendall(reply)
                    sized = b"content-length" in reply.lower() or b"chunked" in reply.lower()
                    if b"connection: close" in reply.lower() or not sized:
                        break

    def close(self) -> None:
        self.listener.close()


def test_chunked_read_to_the_end_and_latin_1_bodies_are_read_whole() -> None:
    raw = Raw(
        [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n',
            b'HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset="ISO-8859-1"\r\nContent-Length: 4\r\n\r\ncaf\xe9',
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nto the end",
        ]
    )
    try:
        http = _client(f"{raw.url}/v1")
        assert post(http, "/x", {}, timeout=10, where="the endpoint") == (200, '{"a": 1}')
        assert post(http, "/x", {}, timeout=10, where="the endpoint") == (200, "caf\u00e9")
        assert raw.connections == 1  # kept alive through the chunked and the sized replies
        assert post(http, "/x", {}, timeout=10, where="the endpoint") == (500, "to the end")
        assert httppool.plain(http)._idle == []  # type: ignore[union-attr]  # ended with the connection: not kept
    finally:
        raw.close()


@pytest.mark.parametrize(
    "reply",
    [
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"cut',
        b"SSH-2.0-OpenSSH_9.2\r\n",
        None,
    ],
    ids=["cut-off", "not-http", "closed"],
)
def test_a_reply_cut_off_not_http_or_missing_on_a_new_connection_is_a_retryable_error(reply: bytes | None) -> None:
    raw = Raw([reply])
    try:
        with pytest.raises(LLMRetryableError, match="cannot reach the endpoint"):
            post(_client(f"{raw.url}/v1"), "/x", {}, timeout=10, where="the endpoint")
    finally:
        raw.close()


def test_a_reply_read_leaves_no_cycle_for_the_garbage_collector(endpoint: Endpoint) -> None:
    """The parser and the reply it fills refer to each other while a response is read: once read, nothing of the
    exchange is left for the cyclic collector (a server's young collections walked ~9 objects an LLM call)."""
    import gc

    http = _client(f"{endpoint.url}/v1")
    post(http, "/chat/completions", {"n": 0}, timeout=10, where="the endpoint")  # the connection made
    gc.collect()
    debug = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage, to look at
    try:
        for number in range(3):
            post(http, "/chat/completions", {"n": number}, timeout=10, where="the endpoint")
        gc.collect()
        left = [type(item).__qualname__ for item in gc.garbage]
    finally:
        gc.set_debug(debug)
        gc.garbage.clear()
    assert not [name for name in left if name in ("_Reply", "HttpResponseParser")], left
