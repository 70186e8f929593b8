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


def test_an_llm_4xx_tells_its_status_and_model_but_not_the_endpoint() -> None:
    from memgpt.errors import LLMError, LLMKeyError, LLMRequestError
    from memgpt.llm.replies import status_error

    where = "http://10.1.2.3:8000/v1/chat/completions"
    for status in (400, 404, 422):
        error = status_error(status, "no such model gpt-nope", where, model="gpt-nope")
        assert isinstance(error, LLMRequestError) and where in str(error)
        told = public_message(error)
        assert f"answered {status} for model 'gpt-nope'" in told and "10.1.2.3" not in told
    # A refused key, a rate limit, a 5xx: the class's general line, as before.
    for status, kind in ((401, LLMKeyError), (500, LLMError), (429, LLMError)):
        error = status_error(status, "detail", where, model="gpt-nope")
        assert isinstance(error, kind) and not isinstance(error, LLMRequestError)
        assert public_message(error) == type(error).public
