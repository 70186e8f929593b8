"""What a server's client is told for one of memgpt's errors (``public_message``)."""

import pytest

from memgpt.errors import (
    BackendError,
    MemGPTError,
    MetadataBusyError,
    NotFoundError,
    SchemaMismatchError,
    StorageError,
    StorageLockedError,
    UserError,
    WrongDimensionError,
    public_message,
)


@pytest.mark.parametrize("kind", [StorageLockedError, SchemaMismatchError, WrongDimensionError, NotFoundError])
def test_a_user_error_is_told_its_own_message(kind: type[UserError]) -> None:
    # Also a StorageError: its message (what to fix) wins over StorageError's general line.
    assert public_message(kind("embedding_dim 384 does not match the collection's 768")) == (
        "embedding_dim 384 does not match the collection's 768"
    )


@pytest.mark.parametrize("kind", [BackendError, StorageError, MetadataBusyError, MemGPTError])
def test_other_errors_are_told_their_class_line(kind: type[MemGPTError]) -> None:
    exc = kind("metadata.db at /srv/secret/path held by pid 42: python -m memgpt server")
    assert public_message(exc) == kind.public
    assert "/srv/secret" not in public_message(exc)
