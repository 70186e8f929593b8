"""Shipped system prompt, personas and humans (package data); user-added ones live in SQL."""

from __future__ import annotations

from importlib import resources

KINDS = ("persona", "human")


def system_prompt() -> str:
    return resources.files(__package__).joinpath("system.txt").read_text(encoding="utf-8")


def shipped(kind: str) -> dict[str, str]:
    """Name → text of the shipped personas or humans."""
    folder = resources.files(__package__).joinpath(f"{kind}s")
    return {
        entry.name.removesuffix(".txt"): entry.read_text(encoding="utf-8").strip()
        for entry in folder.iterdir()
        if entry.name.endswith(".txt")
    }
