"""``/v1/admin/``: users and API keys, for the server's owner (the home's own user) only."""

from __future__ import annotations

from fastapi import APIRouter

from memgpt.server.schemas import CreatedKey, CreatedUser, KeyCreate, KeyOut, UserCreate, UserOut
from memgpt.server.state import AdminUser, State

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/users", response_model=list[UserOut])
def list_users(state: State, _: AdminUser) -> list[UserOut]:
    return [UserOut.of(u, state.owner.id) for u in state.users.list()]


@router.post("/users", response_model=CreatedUser, status_code=201)
def create_user(body: UserCreate, state: State, _: AdminUser) -> CreatedUser:
    """Create a user with a first API key (returned once)."""
    users = state.users
    user = users.create(body.name)
    key, secret = users.create_key(user.id, "first key")
    return CreatedUser(
        **UserOut.of(user, state.owner.id).model_dump(), key=CreatedKey(**KeyOut.of(key).model_dump(), key=secret)
    )


@router.get("/users/{user_id}/keys", response_model=list[KeyOut])
def list_keys(user_id: str, state: State, _: AdminUser) -> list[KeyOut]:
    return [KeyOut.of(k) for k in state.users.keys(state.users.find(user_id).id)]


@router.post("/users/{user_id}/keys", response_model=CreatedKey, status_code=201)
def create_key(user_id: str, body: KeyCreate, state: State, _: AdminUser) -> CreatedKey:
    key, secret = state.users.create_key(state.users.find(user_id).id, body.name)
    return CreatedKey(**KeyOut.of(key).model_dump(), key=secret)


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, state: State, _: AdminUser) -> KeyOut:
    # Its whole id or prefix only: a truncated value in a script must not revoke whichever key it starts.
    # An already revoked key answers as it is (revoked_at says when), so a retried DELETE is not an error.
    return KeyOut.of(state.users.revoke_key(key_id)[0])
