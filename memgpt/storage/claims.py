"""Which process writes an agent's recall index entries now, for indexes other processes write too (a Milvus
server, a served Milvus Lite file).

An indexing pass deletes the entries of the messages it indexes, then inserts them anew (Milvus Lite's upsert
costs a scan). Two processes indexing one agent's new messages at once (a server turn's pass and a search
outside its lease: MCP's conversation_search, another server process's search) both read the same unindexed
messages; both deleting before either inserts left two entries of each message, which took two of a search's
places. So a pass on a shared index first claims its agents here, in one statement, and gives the claims back
when it ends: an agent another pass holds is left to that pass. A claim expires (a process killed mid-pass),
and one whose owner process on this host is gone is taken at once, as a lease is: the rule of every claim with
an expiry (``memgpt.storage.expiring``).
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import String, delete, select, update
from sqlalchemy import insert as sql_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.errors import StorageError
from memgpt.storage.expiring import claim_statement, database_now, owner_gone
from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime


class IndexClaimRow(Base):
    __tablename__ = "recall_index_claims"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))  # as a lease's: host, pid, process start, a token
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


CLAIMS = IndexClaimRow.__table__


def forget_agent(c: Session | Connection, agent_id: str) -> None:
    """In the transaction that deletes the agent: its claim (a pass's that its process left behind when it died)."""
    c.execute(delete(CLAIMS).where(CLAIMS.c.agent_id == agent_id))


@functools.lru_cache(maxsize=4)
def _claim_statement(dialect: str) -> Any:
    """Insert each agent's claim, or take one that expired; returns the agents claimed (None: no ON CONFLICT)."""
    return claim_statement(dialect, CLAIMS, CLAIMS.c.agent_id, fresh={"owner": None, "expires_at": None})


class IndexClaims:
    """Claims on agents' recall indexing; every method is one transaction (but for databases without ON
    CONFLICT, where each agent's claim is its own)."""

    def __init__(self, metadata: MetadataStore, seconds: float = 60.0) -> None:
        """``seconds``: how long its users' claims last (the ``ttl`` they give ``claim`` and ``renew``)."""
        self._metadata = metadata
        self.seconds = seconds

    @property
    def _dialect(self) -> str:
        return str(self._metadata.engine.dialect.name)

    def claim(self, agent_ids: Collection[str], owner: str, ttl: float) -> set[str]:
        """Claim the indexing of these agents for ``ttl`` seconds as ``owner``; returns the agents claimed (the
        others are another live pass's)."""
        wanted = sorted(set(agent_ids))  # rows locked in one order: two claims never wait on each other
        if not wanted:
            return set()
        statement = _claim_statement(self._dialect)
        if statement is None:
            claimed = {agent_id for agent_id in wanted if self._claim_one(agent_id, owner, ttl)}
        else:
            expires = database_now(self._dialect, ttl)
            rows = [{"agent_id": agent_id, "owner": owner, "expires_at": expires} for agent_id in wanted]
            with self._metadata.connection() as c:
                claimed = set(c.execute(statement.values(rows)).scalars())
        return claimed | self._from_the_dead([a for a in wanted if a not in claimed], owner, ttl)

    def _claim_one(self, agent_id: str, owner: str, ttl: float) -> bool:
        fresh = {"owner": owner, "expires_at": database_now(self._dialect, ttl)}
        with self._metadata.connection() as c:
            expired = CLAIMS.c.expires_at <= database_now(self._dialect)
            if c.execute(update(CLAIMS).where(CLAIMS.c.agent_id == agent_id, expired).values(**fresh)).rowcount:
                return True
        try:
            with self._metadata.connection() as c:
                c.execute(sql_insert(CLAIMS).values(agent_id=agent_id, **fresh))
            return True
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise

    def _from_the_dead(self, agent_ids: list[str], owner: str, ttl: float) -> set[str]:
        """Those of these agents whose claim's owner process on this host is gone, claimed now."""
        if not agent_ids:
            return set()
        taken = set()
        with self._metadata.connection() as c:
            held = c.execute(select(CLAIMS.c.agent_id, CLAIMS.c.owner).where(CLAIMS.c.agent_id.in_(agent_ids)))
            for agent_id, dead in [(row[0], row[1]) for row in held if owner_gone(row[1])]:
                fresh = {"owner": owner, "expires_at": database_now(self._dialect, ttl)}
                mine = (CLAIMS.c.agent_id == agent_id, CLAIMS.c.owner == dead)
                if c.execute(update(CLAIMS).where(*mine).values(**fresh)).rowcount:
                    taken.add(agent_id)
        return taken

    def renew(self, agent_ids: Collection[str], owner: str, ttl: float) -> set[str]:
        """Extend ``owner``'s claims on these agents by ``ttl`` seconds from now; returns the agents it still holds
        (one it no longer holds was taken by another pass once it expired, or that pass gave it back already)."""
        wanted = sorted(set(agent_ids))
        if not wanted:
            return set()
        mine = (CLAIMS.c.agent_id.in_(wanted), CLAIMS.c.owner == owner)
        with self._metadata.connection() as c:
            c.execute(update(CLAIMS).where(*mine).values(expires_at=database_now(self._dialect, ttl)))
            return set(c.execute(select(CLAIMS.c.agent_id).where(*mine)).scalars())

    def release(self, agent_ids: Collection[str], owner: str) -> None:
        if agent_ids:
            with self._metadata.connection() as c:
                c.execute(delete(CLAIMS).where(CLAIMS.c.agent_id.in_(sorted(agent_ids)), CLAIMS.c.owner == owner))
