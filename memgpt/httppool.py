"""One pooled client per API endpoint and key (``Endpoint``), shared by every caller in the process.

Making an ``httpx.Client`` loads the certificate store (tens of ms of CPU) and a new client opens new
connections, so the LLM and embedding adapters ask here for one per endpoint and reuse it: a server that
opens an agent for each turn still sends every request over a kept-alive connection. A forked child
starts with none (a parent's connections are no use to it).

``plain(endpoint)`` sends an endpoint's plain POSTs through the standard library's http.client instead
(``KeptAlive``); its httpx client is made only when something needs it (a redirect, a proxy from the
environment, an embedding request): importing httpx and making a client cost a new `memgpt run` ~0.1 CPU s
before its first LLM request to a local http:// server.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import http.client

    import httpx

USER_AGENT = "memgpt"
# The headers httpx sends with every request unless told otherwise (its user agent replaced by ours).
_HTTPX_HEADERS = {"accept": "*/*", "accept-encoding": "gzip, deflate", "connection": "keep-alive"}


class Endpoint:
    """An API endpoint and the headers sent with every request: its httpx client (``httpx()``, made on first
    use) and, where http.client sends what that client would, its ``KeptAlive`` POSTs."""

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


class KeptAlive:
    """POSTs to one endpoint over the standard library's http.client, on connections kept open between requests
    and shared by every thread. httpx spent ~0.65 ms more CPU a request here (under one GIL, in a server that
    makes one a step), mostly in its connection pool's bookkeeping. It sends what the httpx client would (its
    headers, its certificate checks) and is only made where httpx would add nothing: no proxy from the
    environment. A redirect is not followed here: ``post`` returns None and the caller sends it through httpx."""

    def __init__(self, base_url: urllib.parse.SplitResult, headers: Mapping[str, str]) -> None:
        self._https = base_url.scheme == "https"
        self._host = base_url.hostname or ""
        self._port = base_url.port or (443 if self._https else 80)
        self._prefix = base_url.path.rstrip("/")
        # The body is never compressed: nothing to decode (http.client does not).
        self._headers = {**headers, "accept-encoding": "identity"}
        self._ssl = None
        if self._https:
            import httpx

            self._ssl = httpx.create_ssl_context()  # the certificates httpx would trust
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._guard = threading.Lock()

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str], params: Mapping[str, str] | None, timeout: float
    ) -> tuple[int, str] | None:
        """The reply's status and text, or None for a redirect. A connection the server closed while it was idle
        is replaced once; otherwise OSError (TimeoutError when ``timeout`` passes) or http.client.HTTPException."""
        from http.client import BadStatusLine

        stale = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, BadStatusLine)
        target = self._prefix + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        sending = {**self._headers, **headers}
        while True:
            connection, reused = self._connection(timeout)
            try:
                connection.request("POST", target, body=body, headers=sending)
                reply = connection.getresponse()
                data = reply.read()
            except stale:
                connection.close()
                if reused:  # closed by the server while idle, as this request went out: once more on a new one
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            if reply.will_close:
                connection.close()
            else:
                self._keep(connection)
            if reply.status in REDIRECTS:
                return None
            return reply.status, data.decode(reply.headers.get_content_charset() or "utf-8", errors="replace")

    def _keep(self, connection: http.client.HTTPConnection) -> None:
        """Back among the idle ones; those idle past KEEP_IDLE (oldest first), and any beyond MAX_IDLE, are
        closed: after a burst, connections the newest-first reuse never reaches again hold no descriptors."""
        now = time.monotonic()
        with self._guard:
            self._idle.append((connection, now))
            cut = next((i for i, (_, since) in enumerate(self._idle) if now - since <= KEEP_IDLE), len(self._idle))
            cut = max(cut, len(self._idle) - MAX_IDLE)
            closing, self._idle[:cut] = self._idle[:cut], []
        for old, _ in closing:
            old.close()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection still open (newest first), or a new one."""
        now = time.monotonic()
        while True:
            with self._guard:
                if not self._idle:
                    break
                connection, since = self._idle.pop()
            sock = connection.sock
            # Readable while idle: the server closed it (or sent what nobody asked for).
            if sock is None or now - since > KEEP_IDLE or _readable(sock):
                connection.close()
                continue
            sock.settimeout(timeout)
            connection.timeout = timeout
            return connection, True
        import http.client

        if self._ssl is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl), False
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout), False


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
