"""Request and response shapes of the HTTP API. These are API shapes only: never stored, never reused
as database rows; ``memgpt.types`` records are converted into them at the edge."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from memgpt.types import ApiKey, User


class UserOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    is_owner: bool = False

    @classmethod
    def of(cls, user: User, owner_id: str) -> UserOut:
        return cls(id=user.id, name=user.name, created_at=user.created_at, is_owner=user.id == owner_id)


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=256)


class KeyOut(BaseModel):
    id: str
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            user_id=key.user_id,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


class KeyCreate(BaseModel):
    name: str = Field(default="", max_length=256)


class CreatedKey(KeyOut):
    key: str = Field(description="The API key itself. It is shown this once and never stored.")


class CreatedUser(UserOut):
    key: CreatedKey
