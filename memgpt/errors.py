"""One exception tree, split by who must act.

``UserError``: the person running memgpt must fix something (input, config, another process).
``BackendError``: something we depend on failed while running (storage, embedding endpoint).
The CLI prints either as one line; neither should ever surface as a traceback.

A server's client is told a ``BackendError`` (or any other failure of the server's own) by its class's ``public``
line, not by its message: that names hosts, paths, a process's command line, an upstream service's reply, which are
for the server's log and its owner. A ``UserError``'s message is the client's (it names the field to fix).
"""

from typing import ClassVar

# The response header in which `memgpt server` names the class of one of these it answers with, so that memgpt's
# REST client raises the very class the local client raises (an AlreadyExistsError, not just the ConflictError a
# 409 stands for).
ERROR_CLASS_HEADER = "x-memgpt-error"


class MemGPTError(Exception):
    """Root of every error memgpt raises on purpose."""

    # What a server tells its client in place of the message (see the module); None: the message is for the client.
    public: ClassVar[str | None] = "the server failed; its log has the details"

    def public_line(self) -> str | None:
        """``public``, for this error (a class may say more, what its client may know: see ``LLMRequestError``)."""
        return self.public


def public_message(exc: MemGPTError) -> str:
    """The line a server's client is told for ``exc``: a UserError's own message (it names what to fix, even when
    the class is a StorageError too), else its class's ``public`` line, else its message."""
    if isinstance(exc, UserError):
        return str(exc)
    return exc.public_line() or str(exc)


class UserError(MemGPTError):
    """The user can fix this: the message says how."""

    public = None


class ConfigError(UserError):
    """The configuration is missing, unreadable or inconsistent."""


class NotFoundError(UserError):
    """A named thing (source, agent, file) does not exist."""


class ConflictError(UserError):
    """The request clashes with what exists: a taken name, or an agent busy with another turn."""


class AlreadyExistsError(ConflictError):
    """A name (or file) that exists already: another try cannot help, unlike a busy agent."""


class AgentBusyError(ConflictError):
    """The agent is running another turn; another try after ``retry_after`` seconds may succeed."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LeaseLostError(ConflictError):
    """Another server process took the agent over (this one stalled past its lease): what it was doing for the
    agent is not stored."""


class InputFileError(UserError):
    """One input file cannot be loaded; other files still can."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedFileTypeError(UserError):
    """A file of a kind memgpt cannot read (an upload is refused before anything is stored)."""


class BackendError(MemGPTError):
    """A dependency failed while running."""

    public = "a service this server depends on failed; its log has the details"


class UnavailableError(BackendError):
    """The server cannot take the request now (it is stopping, or opening too many turns): a line for the client."""

    public = None


class StorageError(BackendError):
    """Milvus or the metadata database refused or failed an operation."""

    public = "the server's storage (its metadata database or Milvus) failed or is out of reach; its log has the details"


class StorageUnavailable(StorageError):
    """Milvus or the metadata database could not be reached (refused, timed out, disconnected, locked by another
    writer): the same operation may succeed later. Every other StorageError fails the same way again."""


class MetadataBusyError(StorageUnavailable):
    """SQLite's metadata database stayed locked past the wait. The message names a process holding it (its pid
    and command line): fit for the CLI's user, not for an API caller, whom the server answers in general."""

    public = "metadata database busy, try again"


class StorageLockedError(StorageError, UserError):
    """Milvus Lite allows one process per database file."""


class SchemaMismatchError(StorageError, UserError):
    """Stored data was written with a schema or embedding model this build cannot use."""


class WrongDimensionError(StorageError, UserError):
    """A vector of another size than its collection's: the embedding model's configured dimensions are wrong."""


class EmbeddingError(BackendError):
    """The embedding model failed or returned vectors of the wrong shape."""

    public = "the server's embedding model failed; its log has the details"


class MCPServerError(BackendError):
    """An MCP server could not be started or reached, or broke the protocol."""

    public = "an MCP server could not be started or reached, or answered wrongly; the server's log has the details"


class LLMError(BackendError):
    """The LLM endpoint failed in a way retrying did not fix."""

    public = "the server's LLM endpoint failed; the server's log has the details"


class LLMKeyError(LLMError):
    """The LLM endpoint refused the API key (401, 403)."""

    public = "the server's LLM endpoint refused the API key it was given; the server's log has the details"


class LLMRequestError(LLMError):
    """The LLM endpoint refused the request itself (a 4xx other than 401, 403 and 429: a model it does not know, a
    parameter it does not take): the client may be the one to fix it (the model set on its agent), so it is told the
    status and the model, not the endpoint's URL or reply."""

    def __init__(self, message: str, *, status: int, model: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.model = model

    def public_line(self) -> str:
        model = f" for model {self.model!r}" if self.model else ""
        return (
            f"the server's LLM endpoint answered {self.status}{model}: check the agent's model; "
            "the server's log has the details"
        )


class LLMRetryableError(LLMError):
    """Rate limits, timeouts, 5xx and garbled answers: worth another try after a pause."""


class LLMTimeoutError(LLMRetryableError):
    """The endpoint did not answer in time."""

    public = "the server's LLM endpoint did not answer in time"


class ContextWindowExceededError(LLMError):
    """The provider refused the request as longer than the model's context window."""

    public = "the LLM refused the request as longer than the model's context window"


class ToolError(MemGPTError):
    """A tool call the model made cannot be carried out; the message is sent back to the model."""
