"""The server's access log (memgpt/server/access_log.py): uvicorn's lines, made without uvicorn's formatting."""

from __future__ import annotations

import logging
import logging.config

import pytest
import uvicorn.config
import uvicorn.logging

from memgpt.server.access_log import LOG_CONFIG, AccessFormatter

REQUESTS = [
    ("127.0.0.1:50312", "POST", "/v1/agents/agent-1/messages", "1.1", 200),
    ("[::1]:8283", "GET", "/v1/agents/?limit=5&after=agent-2", "1.1", 404),
    ("10.0.0.7:1", "DELETE", "/v1/agents/agent-%C3%A9", "1.0", 503),
    ("127.0.0.1:2", "GET", "/v1/health/", "1.1", 599),  # no phrase for it
    ("127.0.0.1:3", "GET", "/", "2", 201),
]


def _record(args: tuple[object, ...], level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", level, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


@pytest.mark.parametrize("args", REQUESTS)
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_the_access_line_is_uvicorns_word_for_word_and_made_without_its_formatting(
    args: tuple[object, ...], level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt = uvicorn.config.LOGGING_CONFIG["formatters"]["access"]["fmt"]
    theirs = uvicorn.logging.AccessFormatter(fmt, use_colors=False).format(_record(args, level))
    ours = AccessFormatter(fmt, use_colors=False)

    def copied(*_: object) -> str:
        raise AssertionError("uvicorn's formatting (a copy of the record, formatted twice) ran")

    monkeypatch.setattr(uvicorn.logging.AccessFormatter, "formatMessage", copied)
    assert ours.format(_record(args, level)) == theirs


def test_in_colour_or_in_another_format_uvicorn_formats() -> None:
    fmt = uvicorn.config.LOGGING_CONFIG["formatters"]["access"]["fmt"]
    args = REQUESTS[0]
    for formatter in (AccessFormatter(fmt, use_colors=True), AccessFormatter("%(client_addr)s %(status_code)s")):
        theirs = uvicorn.logging.AccessFormatter(formatter._fmt, use_colors=formatter.use_colors)
        assert formatter.format(_record(args)) == theirs.format(_record(args))


def test_the_servers_log_config_is_uvicorns_with_the_access_formatter_in_place() -> None:
    theirs = uvicorn.config.LOGGING_CONFIG
    assert {k: v for k, v in LOG_CONFIG.items() if k != "formatters"} == {
        k: v for k, v in theirs.items() if k != "formatters"
    }
    assert LOG_CONFIG["formatters"] == {
        "default": theirs["formatters"]["default"],
        "access": {**theirs["formatters"]["access"], "()": "memgpt.server.access_log.AccessFormatter"},
    }
    made = logging.config.DictConfigurator(LOG_CONFIG).configure_formatter(dict(LOG_CONFIG["formatters"]["access"]))
    assert type(made) is AccessFormatter
