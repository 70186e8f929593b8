"""Plain HTTP requests from the tests to the servers they start, with one generous timeout.

httpx's own default (5 s for each of connect, read, write) is a time limit no test means to check: on a loaded
machine (load 15-28 with other work) an answer that is right can take longer (the OpenAPI schema built on a first
GET /openapi.json, an agent created) and the test failed on a ReadTimeout. A test whose point is time passes its
own ``timeout=``, which wins over this one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(120.0)  # long enough for any answer under load; a hung server still fails the test


def request(method: str, url: str, **options: Any) -> httpx.Response:
    return httpx.request(method, url, **{"timeout": TIMEOUT, **options})


def get(url: str, **options: Any) -> httpx.Response:
    return request("GET", url, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return request("POST", url, **options)


def put(url: str, **options: Any) -> httpx.Response:
    return request("PUT", url, **options)


def patch(url: str, **options: Any) -> httpx.Response:
    return request("PATCH", url, **options)


def delete(url: str, **options: Any) -> httpx.Response:
    return request("DELETE", url, **options)


@contextmanager
def stream(method: str, url: str, **options: Any) -> Iterator[httpx.Response]:
    with httpx.stream(method, url, **{"timeout": TIMEOUT, **options}) as response:
        yield response
