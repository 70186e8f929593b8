"""One pooled client per API endpoint and key (``Endpoint``), shared by every caller in the process.

Making an ``httpx.Client`` loads the certificate store (tens of ms of CPU) and a new client opens new
connections, so the LLM and embedding adapters ask here for one per endpoint and reuse it: a server that
opens an agent for each turn still sends every request over a kept-alive connection. A forked child
starts with none (a parent's connections are no use to it).

``plain(endpoint)`` sends an endpoint's plain POSTs on kept-alive sockets of its own, their responses read by
httptools (``KeptAlive``), instead; its httpx client is made only when something needs it (a redirect, a proxy from the
environment, an embedding request): importing httpx and making a client cost a new `memgpt run` ~0.1 CPU s
before its first LLM request to a local http:// server.
"""

from __future__ import annotations

import codecs
import os
import re
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    import httpx

USER_AGENT = "memgpt"
# The headers httpx sends with every request unless told otherwise (its user agent replaced by ours).
_HTTPX_HEADERS = {"accept": "*/*", "accept-encoding": "gzip, deflate", "connection": "keep-alive"}


class Endpoint:
    """An API endpoint and the headers sent with every request: its httpx client (``httpx()``, made on first
    use) and, where ``KeptAlive`` sends what that client would, its POSTs there."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        self.base_url = base_url
        self.headers = {"user-agent": USER_AGENT, **headers}
        self.plain = _plain_for(base_url, {**_HTTPX_HEADERS, **self.headers})
        self._client: httpx.Client | None = None
        self._guard = threading.Lock()

    def httpx(self) -> httpx.Client:
        """The httpx client (timeouts are given per request). Redirects are followed, as the openai SDK did."""
        with self._guard:
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    base_url=self.base_url,
                    headers=self.headers,
                    follow_redirects=True,
                    timeout=httpx.Timeout(120.0),
                    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),  # the SDK's
                )
            return self._client


_clients: dict[tuple[str, tuple[tuple[str, str], ...]], Endpoint] = {}
_guard = threading.Lock()


def client(base_url: str, headers: Mapping[str, str]) -> Endpoint:
    """The process's endpoint for ``base_url`` sending ``headers`` with every request."""
    key = (base_url, tuple(sorted(headers.items())))
    with _guard:
        made = _clients.get(key)
        if made is None:
            made = _clients[key] = Endpoint(base_url, headers)
        return made


REDIRECTS = frozenset({301, 302, 303, 307, 308})
KEEP_IDLE = 5.0  # seconds an idle connection is kept (httpx's keep-alive expiry; servers close theirs after about that)
MAX_IDLE = 100  # idle connections kept at most (httpx's pool keeps as many)


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read (or was closed) now; poll, not select: a descriptor past 1023,
    common in a busy server, is beyond select's reach."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


class _Reply:
    """One response as httptools' parser hands it over (its callbacks), the body kept whole."""

    __slots__ = ("body", "done", "headers", "keep_alive", "parser", "status", "until_close")

    def __init__(self) -> None:
        self.parser: Any = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.keep_alive = False
        self.status = 0
        self.until_close = False  # no length and not chunked: the body ends with the connection
        self.done = False

    def on_message_begin(self) -> None:  # again after an interim (1xx) response: that one is dropped
        self.headers, self.body, self.until_close = {}, [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        status = self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.until_close = (
            status >= 200
            and status not in (204, 304)
            and b"content-length" not in self.headers
            and b"chunked" not in self.headers.get(b"transfer-encoding", b"").lower()
        )

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.done = True

    def charset(self) -> str:
        """The content type's charset if Python knows it, else UTF-8 (what JSON is)."""
        kind = self.headers.get(b"content-type", b"").decode("latin-1")
        for parameter in kind.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset":
                try:
                    return codecs.lookup(value.strip().strip('"')).name
                except LookupError:
                    break
        return "utf-8"


_URL_CONTROL = re.compile("[\x00-\x20\x7f]")  # what http.client refuses in a request's target
_HEADER_CONTROL = re.compile("[\r\n\x00]")  # what would end a header line early


class KeptAlive:
    """POSTs to one endpoint on sockets kept open between requests and shared by every thread, each response read
    by httptools' parser (uvicorn's C HTTP parser, already a dependency). httpx spent ~0.65 ms more CPU a request
    here (under one GIL, in a server that makes one a step), mostly in its connection pool's bookkeeping, and the
    standard library's http.client ~0.25 ms parsing the response's headers through the email package. It sends
    what the httpx client would (its headers, its certificate checks) and is only made where httpx would add
    nothing: no proxy from the environment. A redirect is not followed here: ``post`` returns None and the caller
    sends it through httpx."""

    def __init__(self, base_url: urllib.parse.SplitResult, headers: Mapping[str, str]) -> None:
        self._https = base_url.scheme == "https"
        self._host = base_url.hostname or ""
        self._port = base_url.port or (443 if self._https else 80)
        self._prefix = base_url.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address in brackets
        # The Host header as http.client sends it: the port only when it is not the scheme's.
        self._host_header = host if self._port == (443 if self._https else 80) else f"{host}:{self._port}"
        # The body is never compressed: nothing to decode.
        self._headers = {**headers, "accept-encoding": "identity"}
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            import httpx

            self._ssl = httpx.create_ssl_context()  # the certificates httpx would trust
        self._idle: list[tuple[socket.socket, float]] = []
        self._guard = threading.Lock()

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str], params: Mapping[str, str] | None, timeout: float
    ) -> tuple[int, str] | None:
        """The reply's status and text, or None for a redirect. A connection the server closed while it was idle
        is replaced once; otherwise OSError (TimeoutError when ``timeout`` passes) or http.client.HTTPException
        (a reply that is not HTTP, or cut off)."""
        import http.client

        stale = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.BadStatusLine)
        target = self._prefix + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = self._request(target, body, headers)
        while True:
            sock, reused = self._connection(timeout)
            try:
                reply = _exchange(sock, request)
            except stale:
                sock.close()
                if reused:  # closed by the server while idle, as this request went out: once more on a new one
                    continue
                raise
            except BaseException:
                sock.close()
                raise
            if reply.keep_alive and not reply.until_close:
                self._keep(sock)
            else:
                sock.close()
            status = reply.status
            if status in REDIRECTS:
                return None
            return status, b"".join(reply.body).decode(reply.charset(), errors="replace")

    def _request(self, target: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        """The request's bytes; what http.client refuses is refused here too (InvalidURL, ValueError)."""
        import http.client

        if _URL_CONTROL.search(target):
            raise http.client.InvalidURL(f"URL can't contain control characters. {target!r}")
        lines = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}"]
        for name, value in {**self._headers, **headers}.items():
            if _HEADER_CONTROL.search(name) or _HEADER_CONTROL.search(value) or ":" in name:
                raise ValueError(f"Invalid header {name!r}")
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _keep(self, sock: socket.socket) -> None:
        """Back among the idle ones; those idle past KEEP_IDLE (oldest first), and any beyond MAX_IDLE, are
        closed: after a burst, connections the newest-first reuse never reaches again hold no descriptors."""
        now = time.monotonic()
        with self._guard:
            self._idle.append((sock, now))
            cut = next((i for i, (_, since) in enumerate(self._idle) if now - since <= KEEP_IDLE), len(self._idle))
            cut = max(cut, len(self._idle) - MAX_IDLE)
            closing, self._idle[:cut] = self._idle[:cut], []
        for old, _ in closing:
            old.close()

    def _connection(self, timeout: float) -> tuple[socket.socket, bool]:
        """An idle connection still open (newest first), or a new one."""
        now = time.monotonic()
        while True:
            with self._guard:
                if not self._idle:
                    break
                sock, since = self._idle.pop()
            # Readable while idle: the server closed it (or sent what nobody asked for).
            if sock.fileno() < 0 or now - since > KEEP_IDLE or _readable(sock):
                sock.close()
                continue
            sock.settimeout(timeout)
            return sock, True
        sock = socket.create_connection((self._host, self._port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client: the request goes at once
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return sock, False


def _exchange(sock: socket.socket, request: bytes) -> _Reply:
    """Send ``request`` on ``sock`` and read its whole response."""
    import http.client

    import httptools

    sock.sendall(request)
    reply = _Reply()
    parser = reply.parser = httptools.HttpResponseParser(reply)
    received = False
    try:
        while not reply.done:
            chunk = sock.recv(65536)
            if not chunk:
                if not received:
                    raise http.client.RemoteDisconnected("Remote end closed connection without response")
                if reply.until_close:
                    return reply
                raise http.client.IncompleteRead(b"".join(reply.body))
            received = True
            try:
                parser.feed_data(chunk)
            except httptools.HttpParserError as exc:
                raise http.client.HTTPException(f"not an HTTP reply: {exc}") from exc
        return reply
    finally:
        # The parser holds the reply (its callbacks) and the reply the parser: a cycle, only the cyclic garbage
        # collector freed it (~9 objects an LLM call, a third of what a server's young collections found as garbage
        # at 50 clients). Broken here, they go when the last reference does.
        reply.parser = None


def plain(endpoint: Endpoint) -> KeptAlive | None:
    """The POSTs of an endpoint over http.client (``KeptAlive``); None where a proxy from the environment applies
    to it (httpx goes through it) or its URL is one httpx would have to rewrite first."""
    return endpoint.plain


def _plain_for(base_url: str, headers: Mapping[str, str]) -> KeptAlive | None:
    import urllib.request

    try:
        base = urllib.parse.urlsplit(base_url)
        base.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    if base.scheme not in ("http", "https") or not base.hostname or not base.hostname.isascii():
        return None
    # httpx would encode this path, send a query or credentials the URL holds: left to it.
    if base.query or base.username or base.path != urllib.parse.quote(base.path, safe="/%:@!$&'()*+,;="):
        return None
    proxies = urllib.request.getproxies()  # what httpx reads from the environment when it makes the client
    if proxies and not urllib.request.proxy_bypass(base.hostname):
        return None
    return KeptAlive(base, headers)


def openai_headers(env: Mapping[str, str]) -> dict[str, str]:
    """OpenAI's organization and project, from the variables the openai SDK reads: the chat and the
    embedding requests both send them."""
    named = {"openai-organization": env.get("OPENAI_ORG_ID", ""), "openai-project": env.get("OPENAI_PROJECT_ID", "")}
    return {header: value for header, value in named.items() if value}


def _forget_in_child() -> None:
    global _guard
    _guard = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_in_child)
