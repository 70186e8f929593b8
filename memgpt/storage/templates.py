"""Personas and human profiles a user added (the shipped ones are package data in agent/prompts)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime
from memgpt.types import utc_now


class TemplateRow(Base):
    __tablename__ = "templates"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "persona" or "human"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TemplateStore:
    """A user's own personas and humans by kind and name. Every method is one transaction."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def save(self, user_id: str, kind: str, name: str, text: str) -> None:
        """Add or replace one."""
        with self._metadata.session() as s:
            s.merge(TemplateRow(user_id=user_id, kind=kind, name=name, text=text, created_at=utc_now()))

    def get(self, user_id: str, kind: str, name: str) -> str | None:
        with self._metadata.session() as s:
            row = s.get(TemplateRow, (user_id, kind, name))
            return row.text if row else None

    def all(self, user_id: str, kind: str) -> dict[str, str]:
        """Name to text of every one of this kind the user added."""
        with self._metadata.session() as s:
            rows = s.scalars(select(TemplateRow).where(TemplateRow.user_id == user_id, TemplateRow.kind == kind))
            return {r.name: r.text for r in rows}
