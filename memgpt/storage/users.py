"""Users of a `memgpt server` and their API keys.

A key is shown once, when it is created, and stored only as a SHA-256 digest beside a short prefix.
Keys are 256 random bits, so a plain digest is as good as a slow password hash; looking a key up by its
prefix and comparing digests with ``hmac.compare_digest`` keeps the comparison constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.errors import NotFoundError, StorageError, UserError
from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime
from memgpt.types import ApiKey, User, utc_now

KEY_PREFIX = "sk-"
_SHOWN = 12  # characters of a key kept in clear: "sk-" and 9 random ones
_MIN_START = 4  # random characters a start of a key's id or prefix needs to name it in `memgpt key revoke`
_TRUSTED_KEYS = 10_000  # keys a server remembers as checked (all are forgotten when there are more)


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def _user(row: UserRow) -> User:
    return User(id=row.id, name=row.name, created_at=row.created_at)


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def validate_user_name(name: str) -> str:
    stripped = name.strip()
    if not stripped or len(stripped) > 256 or any(ord(c) < 32 for c in stripped):
        raise UserError("a user name must be 1-256 characters on one line")
    return stripped


class UserStore:
    """Users and API keys; every method is one transaction."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata
        # A server checks a key at every request: a key found good is trusted for ``trust_seconds`` without
        # reading it again (0: always read). A revocation through this store (the admin routes) ends that at
        # once; one made by another process (`memgpt key revoke`, another server) holds within the bound.
        self.trust_seconds = 0.0
        self._trusted: dict[bytes, tuple[User, float]] = {}  # sha-256 of the key -> (its user, trusted until)
        self._trusted_guard = threading.Lock()

    def _distrust(self) -> None:
        with self._trusted_guard:
            self._trusted.clear()

    # -- users ------------------------------------------------------------------------------------
    def ensure(self, user_id: str, name: str) -> User:
        """The user with this id, created under ``name`` if it does not exist yet (the home's own user)."""
        with self._metadata.session() as s:
            row = s.get(UserRow, user_id)
            if row is None:
                taken = s.scalar(select(UserRow.id).where(UserRow.name == name))
                row = UserRow(id=user_id, name=name if taken is None else f"{name}-{user_id[:8]}", created_at=utc_now())
                s.add(row)
            return _user(row)

    def create(self, name: str) -> User:
        name = validate_user_name(name)
        user = User(id=f"user-{uuid.uuid4()}", name=name)
        try:
            with self._metadata.session() as s:
                s.add(UserRow(id=user.id, name=user.name, created_at=user.created_at))
        except StorageError as exc:  # a duplicate name is refused by the unique constraint
            if self.by_name(name) is not None:
                raise UserError(f"a user named {name!r} already exists") from exc
            raise
        return user

    def get(self, user_id: str) -> User | None:
        with self._metadata.session() as s:
            row = s.get(UserRow, user_id)
            return _user(row) if row else None

    def by_name(self, name: str) -> User | None:
        with self._metadata.session() as s:
            row = s.scalar(select(UserRow).where(UserRow.name == name.strip()))
            return _user(row) if row else None

    def find(self, name_or_id: str) -> User:
        """A user by name or id; NotFoundError naming the known users otherwise."""
        found = self.get(name_or_id.strip()) or self.by_name(name_or_id)
        if found is None:
            known = ", ".join(sorted(u.name for u in self.list())) or "none yet"
            raise NotFoundError(f"no user named {name_or_id.strip()!r} (users: {known})")
        return found

    def list(self) -> list[User]:
        with self._metadata.session() as s:
            return [_user(r) for r in s.scalars(select(UserRow).order_by(UserRow.created_at, UserRow.id))]

    def delete(self, user_id: str) -> None:
        """Remove a user and their keys (their agents and sources are the caller's to delete first)."""
        with self._metadata.session() as s:
            row = s.get(UserRow, user_id)
            if row is None:
                raise NotFoundError(f"no user with id {user_id!r}")
            s.execute(update(ApiKeyRow).where(ApiKeyRow.user_id == user_id).values(revoked_at=utc_now()))
            s.delete(row)
        self._distrust()

    # -- keys -------------------------------------------------------------------------------------
    def create_key(self, user_id: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for the user: the stored record and the secret, which is never available again."""
        if self.get(user_id) is None:
            raise NotFoundError(f"no user with id {user_id!r}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=f"key-{uuid.uuid4().hex[:16]}", user_id=user_id, name=name.strip(), prefix=secret[:_SHOWN])
        try:
            with self._metadata.session() as s:
                s.add(
                    ApiKeyRow(
                        id=key.id,
                        user_id=user_id,
                        name=key.name,
                        prefix=key.prefix,
                        digest=_digest(secret),
                        created_at=key.created_at,
                    )
                )
        except StorageError as exc:
            if self.get(user_id) is None:  # the user was deleted in between
                raise NotFoundError(f"no user with id {user_id!r}") from exc
            raise
        return key, secret

    def keys(self, user_id: str | None = None) -> list[ApiKey]:
        with self._metadata.session() as s:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            if user_id is not None:
                query = query.where(ApiKeyRow.user_id == user_id)
            return [_key(r) for r in s.scalars(query)]

    def revoke_key(self, key_id: str, *, user_id: str | None = None, starts: bool = False) -> tuple[ApiKey, bool]:
        """Revoke a key by its id or shown prefix (only the user's own when ``user_id`` is given); with ``starts``
        (the CLI, where a person reads the answer) also a unique start of either. The key, and False when it had
        been revoked already."""
        with self._metadata.session() as s:
            row = self._one_key(s, key_id, user_id, starts=starts)
            newly = row.revoked_at is None
            if newly:
                row.revoked_at = utc_now()
            key = _key(row)
        self._distrust()
        return key, newly

    @staticmethod
    def _one_key(s: Session, key_id: str, user_id: str | None, *, starts: bool) -> ApiKeyRow:
        """The one key ``key_id`` names: its id or shown prefix, or (``starts``) a start of either with at least
        ``_MIN_START`` characters after "key-" / "sk-", an active key before revoked ones (a UserError names what
        is wrong otherwise). A truncated id in a script must not revoke whichever key it happens to start."""
        key_id = key_id.removesuffix("...")  # as `memgpt key list` shows a prefix
        scope = [ApiKeyRow.user_id == user_id] if user_id is not None else []
        rows = s.scalars(select(ApiKeyRow).where((ApiKeyRow.id == key_id) | (ApiKeyRow.prefix == key_id), *scope)).all()
        if not rows and not starts:
            raise NotFoundError(f"no API key {key_id!r}: give its whole id (key-...) or its whole prefix (sk-...)")
        if not rows:
            start = next((k for k in ("key-", KEY_PREFIX) if key_id.startswith(k)), None)
            if start is None:
                raise NotFoundError(f"no API key {key_id!r}: give its id (key-...) or its prefix (sk-...)")
            if len(key_id) - len(start) < _MIN_START:
                raise UserError(
                    f"{key_id!r} is too short to name a key: give at least {_MIN_START} characters after {start!r}"
                )
            column = ApiKeyRow.id if start == "key-" else ApiKeyRow.prefix
            # LIKE ignores case on SQLite: the exact comparison is Python's.
            found = s.scalars(select(ApiKeyRow).where(column.startswith(key_id, autoescape=True), *scope)).all()
            rows = [r for r in found if (r.id if start == "key-" else r.prefix).startswith(key_id)]
            active = [r for r in rows if r.revoked_at is None]
            rows = active if len(active) == 1 else rows
        if not rows:
            raise NotFoundError(f"no API key {key_id!r}")
        if len(rows) > 1:
            shown = ", ".join(sorted(f"{r.prefix}... ({r.id})" for r in rows))
            raise UserError(f"{key_id!r} matches {len(rows)} keys: {shown}; give more of it")
        return rows[0]

    def any_active_key(self) -> bool:
        with self._metadata.session() as s:
            return s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None)).limit(1)) is not None

    def authenticate(self, secret: str) -> User | None:
        """The user a key belongs to, or None for an unknown or revoked key (see ``trust_seconds``)."""
        if not secret.startswith(KEY_PREFIX) or len(secret) < _SHOWN + 8:
            return None
        if self.trust_seconds <= 0:
            return self._authenticate(secret)
        trusted = self.trusted(secret)
        if trusted is not None:
            return trusted
        mark = hashlib.sha256(secret.encode("utf-8")).digest()
        now = time.monotonic()
        user = self._authenticate(secret)
        with self._trusted_guard:
            if user is None:
                self._trusted.pop(mark, None)
            else:
                if len(self._trusted) >= _TRUSTED_KEYS:
                    self._trusted.clear()
                self._trusted[mark] = (user, now + self.trust_seconds)
        return user

    def trusted(self, secret: str) -> User | None:
        """The user of a key checked within ``trust_seconds``, without reading the database (None: not known
        to be good, ask ``authenticate``). Cheap enough for a server's event loop."""
        if self.trust_seconds <= 0:
            return None
        mark = hashlib.sha256(secret.encode("utf-8")).digest()
        with self._trusted_guard:
            trusted = self._trusted.get(mark)
        return trusted[0] if trusted is not None and trusted[1] > time.monotonic() else None

    def _authenticate(self, secret: str) -> User | None:
        digest = _digest(secret)
        with self._metadata.session() as s:
            candidates = s.scalars(
                select(ApiKeyRow).where(ApiKeyRow.prefix == secret[:_SHOWN], ApiKeyRow.revoked_at.is_(None))
            ).all()
            match = None
            for row in candidates:  # compare every candidate: the time taken does not say which matched
                if hmac.compare_digest(row.digest, digest):
                    match = row
            if match is None:
                return None
            now = utc_now()
            if match.last_used_at is None or (now - match.last_used_at).total_seconds() > 60:
                match.last_used_at = now  # at most one write a minute per key
            user = s.get(UserRow, match.user_id)
            return _user(user) if user else None
