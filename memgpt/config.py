"""The one typed configuration, stored as TOML in the memgpt home folder.

Read at the edges (CLI, server) and passed down; nothing below the CLI calls ``load_config``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
import uuid
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator

from memgpt.errors import ConfigError

HOME_ENV = "MEMGPT_HOME"
CONFIG_FILE = "config.toml"
DEFAULT_MILVUS_FILE = "milvus.db"
# pymilvus treats only "*.db" paths as Milvus Lite, and milvus-lite 2.5 refuses other file names.
_LITE_NAME = re.compile(r"^[A-Za-z0-9.\-_]{1,33}\.db$")
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
ToolChoicePolicy = Literal["auto", "required", "auto_then_send_message", "send_message"]
TOOL_CHOICES: tuple[str, ...] = get_args(ToolChoicePolicy)


def memgpt_home() -> Path:
    """``$MEMGPT_HOME`` or ``~/.memgpt``: every piece of user state lives under it."""
    raw = os.environ.get(HOME_ENV)
    return Path(raw).expanduser().resolve() if raw else Path.home() / ".memgpt"


def display_path(path: Path | str) -> str:
    """Show paths under the user's home with ``~`` as the seed's prompts do."""
    text = str(path)
    home = str(Path.home())
    return "~" + text[len(home) :] if text == home or text.startswith(home + os.sep) else text


def read_only_part(path: Path) -> Path | None:
    """What stops this process from writing ``path`` if it is read-only: the file itself, or the folder
    it is (or would be created) in. None when both are writable, or ``path`` is not writable for some
    other reason."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    folder = existing if existing.is_dir() else existing.parent
    for candidate in dict.fromkeys([existing, folder]):
        if not os.access(candidate, os.W_OK):
            return candidate
    return None


def read_only_message(path: Path, what: str, remedy: str) -> str | None:
    """One line saying that ``what`` at ``path`` cannot be written because something is read-only."""
    blocked = read_only_part(path)
    if blocked is None:
        return None
    kind = "folder" if blocked.is_dir() else "file"
    return f"cannot write {what} at {display_path(path)}: the {kind} {display_path(blocked)} is read-only; {remedy}"


HOME_REMEDY = f"make it writable, or set {HOME_ENV} to a writable folder"


def is_server_uri(uri: str) -> bool:
    return uri.strip().lower().startswith(_SERVER_SCHEMES)


def resolve_milvus_uri(uri: str) -> str:
    """Expand ``~`` and variables in a Milvus Lite path; pass server URIs through.

    Raises ConfigError for a Lite file name that milvus-lite cannot open.
    """
    uri = uri.strip()
    if not uri:
        raise ConfigError("the Milvus URI is empty: give a file path such as ~/.memgpt/milvus.db or http://host:19530")
    if is_server_uri(uri):
        return uri
    path = Path(os.path.expandvars(uri)).expanduser().resolve()
    if not _LITE_NAME.match(path.name):
        raise ConfigError(
            f"Milvus Lite file name {path.name!r} is not allowed: it must end in .db and use at most 36 "
            "letters, digits, '.', '-' or '_' (e.g. ~/.memgpt/milvus.db)"
        )
    return str(path)


class MilvusSettings(BaseModel):
    uri: str = ""  # empty means <home>/milvus.db
    token: str = ""  # "user:password" or an API key, for secured servers and Zilliz Cloud
    database: str = ""  # a Milvus database on a server; empty means "default"


class EmbeddingSettings(BaseModel):
    provider: Literal["local", "openai"] = "local"
    model: str = "all-MiniLM-L6-v2"
    endpoint: str = ""  # OpenAI-compatible base URL for provider "openai"; empty means api.openai.com
    api_key: str = ""  # empty means $OPENAI_API_KEY
    dimensions: int = Field(default=384, gt=0)
    max_tokens: int = Field(default=0, ge=0)  # 0 means the model's own input limit
    chunk_size: int = Field(default=250, ge=16)  # tokens of the embedding model's tokenizer
    chunk_overlap: int = Field(default=25, ge=0)
    batch_size: int = Field(default=0, ge=0, le=2048)  # 0 means the model's own best batch size
    # Per-file load limits, so a stray huge file fails at once instead of embedding for hours: the local
    # model embeds ~25 passages/s on 2 cores, and 1 MB of text makes ~1,450 passages (~1 minute).
    max_file_mb: float = Field(default=100, gt=0)  # size on disk; a bigger file is not read
    max_text_mb: float = Field(default=10, gt=0)  # text extracted from one file, in UTF-8


class LLMSettings(BaseModel):
    """Empty values mean "not chosen": the provider's preset or the conventional environment
    variables (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY) fill them in at run time."""

    provider: str = ""
    model: str = ""
    endpoint: str = ""
    api_key: str = ""
    context_window: int = Field(default=0, ge=0)
    function_calling: Literal["native", "json"] = "native"  # "json" for models without tool calling
    # What the model may answer with: "auto" (text or a function call), "required" (a call; llama.cpp
    # refuses it), "auto_then_send_message" (auto, and on a reply with neither text nor a call ask once
    # more naming send_message: for small local models) or "send_message" (always; the agent only talks).
    tool_choice: ToolChoicePolicy | Literal[""] = ""  # empty: the provider's preset
    timeout_seconds: float = Field(default=120.0, gt=0)  # the most one LLM call may take, retries included
    attempt_timeout_seconds: float = Field(default=0.0, ge=0)  # one request; 0 means all of timeout_seconds
    azure_api_version: str = "2024-10-21"


class ServerSettings(BaseModel):
    """`memgpt server`: where it listens by default and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=8283, ge=1, le=65535)
    max_upload_mb: float = Field(default=50, gt=0)  # largest request body (file uploads, agent files)
    # The most text one archival insert (Letta's passages.create) takes, in UTF-8. It is embedded within the
    # request (the local model does ~1 MB a minute on 2 cores) and letta-client gives up after 60 s: a longer
    # text belongs in a folder, whose file loads run as jobs.
    max_passage_mb: float = Field(default=0.5, gt=0)
    # How long a stopping server waits for requests still running (an insert being embedded, a turn) before it
    # cuts them; a cut insert stores nothing and a cut turn is crash-safe as a killed process is.
    shutdown_seconds: float = Field(default=10, gt=0)
    busy_wait_seconds: float = Field(default=5, ge=0)  # a send waits this long for the agent's running turn, then 409
    # A turn's hold on its agent, renewed while it runs; a server that vanished holds its agents this long at
    # most (a dead process on the same host is noticed at once).
    lease_seconds: float = Field(default=30, ge=3)


class Config(BaseModel):
    """Everything ``memgpt configure`` asks for."""

    user_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    archival_storage: Literal["milvus"] = "milvus"
    milvus: MilvusSettings = Field(default_factory=MilvusSettings)
    metadata_url: str = ""  # SQLAlchemy URL; empty means SQLite in the home folder
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    default_persona: str = "sam_pov"
    default_human: str = "basic"

    @field_validator("user_id")
    @classmethod
    def _user_id_is_plain(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", value):
            raise ValueError("user_id must be 1-64 letters, digits, '-' or '_'")
        return value

    def milvus_uri(self, home: Path) -> str:
        return resolve_milvus_uri(self.milvus.uri or str(home / DEFAULT_MILVUS_FILE))

    def metadata_database_url(self, home: Path) -> str:
        return self.metadata_url or f"sqlite:///{home / 'metadata.sqlite'}"


def config_path(home: Path) -> Path:
    return home / CONFIG_FILE


def load_config(home: Path | None = None) -> Config:
    """The saved config; on first use, the defaults, saved so the user id stays the same."""
    home = home or memgpt_home()
    path = config_path(home)
    if not path.exists():
        _create_first_config(home)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Config.model_validate(data)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it or run `memgpt configure`") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}; fix it or run `memgpt configure`") from exc


def _create_first_config(home: Path) -> None:
    """Save the defaults unless another process got there first: two commands started together on a
    new home must end up with one user id, so the file is linked into place, which never replaces."""
    import tempfile

    import tomli_w

    try:
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".config-", suffix=".tmp")  # owner-only, like save_config
    except OSError as exc:
        raise _cannot_write(config_path(home), "the configuration", exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            tomli_w.dump(Config().model_dump(mode="json"), handle)
        try:
            os.link(tmp, config_path(home))
        except FileExistsError:
            pass  # another process's defaults won: read those
        except OSError:  # a file system without hard links
            if not config_path(home).exists():
                os.replace(tmp, config_path(home))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _cannot_write(path: Path, what: str, exc: OSError) -> ConfigError:
    reason = read_only_message(path, what, HOME_REMEDY)
    return ConfigError(reason or f"cannot write {display_path(path)}: {exc.strerror or exc}")


def save_config(config: Config, home: Path | None = None) -> Path:
    """Write atomically with owner-only permissions: the file may hold API keys."""
    import tomli_w

    home = home or memgpt_home()
    path = config_path(home)
    write_private(path, tomli_w.dumps(config.model_dump(mode="json")).encode("utf-8"), what="the configuration")
    return path


def write_private(path: Path, data: bytes, *, what: str = "the file") -> None:
    """Replace ``path`` atomically with a file only its owner can read (0600): it may hold secrets."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a leftover file would keep its own, maybe wider, permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise _cannot_write(path, what, exc) from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
