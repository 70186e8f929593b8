"""What an agent step produces, for the CLI (and later the REST server) to show."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Thought:
    text: str


@dataclass(frozen=True)
class FunctionCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FunctionResult:
    name: str
    ok: bool
    text: str


@dataclass(frozen=True)
class Reply:
    text: str


@dataclass(frozen=True)
class SystemNotice:
    text: str
    failed: bool = False  # the turn ended without an answer for the user (the step limit, an empty reply)


Event = Thought | FunctionCall | FunctionResult | Reply | SystemNotice
