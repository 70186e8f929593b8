"""`memgpt configure`: the seed's prompts, and a flag for every prompt."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import typer

from memgpt.cli import startup_over
from memgpt.cli.common import YesOption, console, home_and_config, interactive
from memgpt.errors import ConfigError

if TYPE_CHECKING:
    # memgpt.config is imported where it is used: it brings pydantic, which `memgpt --help` need not load.
    from pathlib import Path

    from memgpt.config import Config
    from memgpt.llm.probe import LLMCheck


def _ask(prompt: Any) -> Any:
    """Run a questionary prompt; Ctrl-C or Esc cancels configure without saving."""
    answer = prompt.ask()
    if answer is None:
        raise typer.Exit(1)
    return answer


def _milvus(config: Config, uri: str | None, token: str | None, ask: bool, home_default: str) -> None:
    import questionary

    from memgpt.config import is_server_uri

    if uri is None and ask:
        shown = config.milvus.uri or home_default
        uri = (
            _ask(questionary.text(f"Enter the Milvus connection URI (Default: {home_default}):", default=shown)).strip()
            or home_default
        )
    if uri is not None:
        config.milvus.uri = uri.strip()
    resolved_is_server = is_server_uri(config.milvus.uri)
    if token is None and ask and resolved_is_server:
        token = _ask(questionary.password("Enter the Milvus token (user:password or API key; empty for none):"))
    if token is not None:
        config.milvus.token = token


def _embedding(
    config: Config, provider: str | None, model: str | None, endpoint: str | None, dim: int | None, ask: bool
) -> None:
    import questionary

    from memgpt.embeddings.openai import KNOWN_DIMENSIONS

    settings = config.embedding
    if provider is None and ask:
        provider = _ask(
            questionary.select(
                "Select embedding provider:",
                choices=[
                    questionary.Choice("local (all-MiniLM-L6-v2, offline, no API key)", value="local"),
                    questionary.Choice("openai (or any OpenAI-compatible endpoint: Ollama, vLLM...)", value="openai"),
                ],
                default="local" if settings.provider == "local" else "openai",
            )
        )
    if provider is not None and provider != settings.provider:
        if provider not in ("local", "openai"):
            raise ConfigError(f"--embedding-provider must be local or openai, not {provider!r}")
        settings.provider = provider  # type: ignore[assignment]
        settings.model = "all-MiniLM-L6-v2" if provider == "local" else "text-embedding-3-small"
        settings.endpoint = ""
    if settings.provider == "local":
        settings.model, settings.dimensions, settings.endpoint = "all-MiniLM-L6-v2", 384, ""
        return
    if model is None and ask:
        model = _ask(questionary.text("Enter the embedding model:", default=settings.model)).strip()
    if endpoint is None and ask:
        endpoint = _ask(
            questionary.text("Enter the embedding endpoint (empty for api.openai.com):", default=settings.endpoint)
        ).strip()
    settings.model = model or settings.model
    if endpoint is not None:
        settings.endpoint = endpoint
    settings.dimensions = dim or KNOWN_DIMENSIONS.get(settings.model) or _probe_dimensions(config)


def _probe_dimensions(config: Config) -> int:
    """Ask the endpoint once; its answer is the dimension every collection of this model gets."""
    from memgpt.embeddings.openai import OpenAIEmbeddings
    from memgpt.errors import EmbeddingError
    from memgpt.httppool import openai_headers

    settings = config.embedding
    try:
        probe = OpenAIEmbeddings(
            settings.model,
            dimensions=1,
            endpoint=settings.endpoint,
            api_key=settings.api_key,
            headers=openai_headers(os.environ),
        )
        return len(probe.embed_batch(["dimension probe"])[0])
    except EmbeddingError as exc:
        raise ConfigError(f"{exc}; check the endpoint, or pass --embedding-dim to skip this check") from exc


def _llm(
    config: Config,
    provider: str | None,
    model: str | None,
    endpoint: str | None,
    window: int | None,
    ask: bool,
    *,
    check: bool = False,
) -> LLMCheck | None:
    import questionary

    from memgpt.llm.presets import PRESETS

    settings = config.llm
    if provider is None and ask:
        provider = _ask(
            questionary.select("Select LLM provider:", choices=list(PRESETS), default=settings.provider or "openai")
        )
    if provider is not None and provider != settings.provider:
        if provider not in PRESETS:
            raise ConfigError(f"--llm-provider must be one of {', '.join(PRESETS)}, not {provider!r}")
        preset = PRESETS[provider]
        settings.provider, settings.endpoint = provider, preset.endpoint
        settings.model, settings.context_window = preset.default_model, preset.context_window
    if model is None and ask:
        model = _ask(questionary.text("Enter the LLM model:", default=settings.model)).strip()
    if endpoint is None and ask:
        endpoint = _ask(questionary.text("Enter the LLM endpoint:", default=settings.endpoint)).strip()
    settings.model = model or settings.model
    if endpoint is not None:
        settings.endpoint = endpoint
        if window is None and settings.provider in PRESETS and endpoint != PRESETS[settings.provider].endpoint:
            # Another server than the provider's own: its hosted models' window would be a guess (the check
            # below takes the server's word where it gives one).
            unknown = PRESETS["openai-compatible"].context_window
            settings.context_window = min(settings.context_window or unknown, unknown)
    checked = _check_llm(config, window_given=window is not None) if check else None
    if window is None and ask:
        window = int(
            _ask(
                questionary.text(
                    "Enter the model's context window (tokens):",
                    default=str(settings.context_window),
                    validate=lambda v: (v.isdigit() and int(v) >= 1024) or "a whole number of at least 1024",
                )
            )
        )
    if window is not None:
        if window < 1024:
            raise ConfigError("--llm-context-window must be at least 1024 tokens")
        settings.context_window = window
    return checked


def _check_llm(config: Config, *, window_given: bool) -> LLMCheck:
    """Ask the LLM endpoint what it serves, so a server that is down or a wrong model fails here and
    not at the first message; take the model and the context window from it where it says them."""
    from memgpt.errors import LLMError
    from memgpt.llm import resolve_llm
    from memgpt.llm.probe import check_llm

    skip = "pass --no-llm-check to save without checking"
    try:
        checked = check_llm(resolve_llm(config.llm, require_model=False))
    except ConfigError as exc:  # e.g. a hosted provider without its API key
        raise ConfigError(f"{exc}, or {skip}") from exc
    except LLMError as exc:
        raise ConfigError(f"{exc}; start the server or fix --llm-endpoint, or {skip}") from exc
    if checked.problem:
        raise ConfigError(f"{checked.problem}; choose one with --llm-model, or {skip}")
    config.llm.model = config.llm.model or checked.model
    if checked.context_window and not window_given:
        config.llm.context_window = checked.context_window
    return checked


# A window this many tokens over the UTF-8 bytes of a new agent's texts (system prompt, persona, human) surely fits
# the rest of its fixed prompt (MemGPT's function schemas, core memory's markup, the memory statistics) with the
# room `memgpt run` asks for: ~9,300 for the shipped ones (tests/test_startup.py checks it on each). Configure then
# neither imports the agent's code (~1 CPU s, SQLAlchemy with it) nor creates metadata.sqlite.
SURE_FIT_MARGIN = 12_000


def _surely_fits(config: Config, home: Path) -> bool:
    """Whether the configured window fits a new agent's fixed prompt by :data:`SURE_FIT_MARGIN`, told without
    opening the metadata database: only with the shipped persona and human (a home without its database has no
    others) and no user tools."""
    from memgpt.agent import prompts

    window = config.llm.context_window
    if not window or config.metadata_url or (home / "metadata.sqlite").exists() or any((home / "tools").glob("*.py")):
        return False
    persona, human = (
        prompts.shipped("persona").get(config.default_persona),
        prompts.shipped("human").get(config.default_human),
    )
    if persona is None or human is None:
        return False
    texts = (prompts.system_prompt(), persona, human)
    return window >= sum(len(t.encode("utf-8")) for t in texts) + SURE_FIT_MARGIN


def _check_window(config: Config, home: Path, *, given: bool) -> None:
    """A context window too small for the first agent `memgpt run` makes is refused here, with run's minimum and
    words, when it was given (--llm-context-window, or typed in); one the LLM server said is only warned of."""
    if _surely_fits(config, home):
        return
    from memgpt.agent.manager import NewAgent, check_new_window, default_agent_settings
    from memgpt.cli.common import warn
    from memgpt.errors import UserError
    from memgpt.storage import Storage
    from memgpt.types import EmbeddingSpace

    try:
        model, window = default_agent_settings(config, None)
    except ConfigError:  # a hosted provider without its API key yet: the window as configured
        model, window = config.llm.model, config.llm.context_window
    if not window:
        return
    emb = config.embedding
    new = NewAgent(
        persona=config.default_persona,
        human=config.default_human,
        model=model,
        context_window=window,
        embedding=EmbeddingSpace(emb.model, emb.dimensions),
        tools_folder=home / "tools",
    )
    fix = "--llm-context-window N, with a model that has that much"
    with Storage(config, home) as storage:
        try:
            check_new_window(storage, config.user_id, new, fix=fix)
        except UserError as exc:
            if given:
                raise ConfigError(str(exc)) from None
            warn(f"{exc}; `memgpt run` will refuse it")


def _llm_options(config: Config, function_calling: str | None, tool_choice: str | None) -> None:
    from memgpt.config import TOOL_CHOICES

    if function_calling is not None:
        if function_calling not in ("native", "json"):
            raise ConfigError(f"--function-calling must be native or json, not {function_calling!r}")
        config.llm.function_calling = function_calling  # type: ignore[assignment]
    if tool_choice is not None:
        if tool_choice not in TOOL_CHOICES:
            raise ConfigError(f"--tool-choice must be one of {', '.join(TOOL_CHOICES)}, not {tool_choice!r}")
        config.llm.tool_choice = tool_choice  # type: ignore[assignment]


def configure(
    archival_storage: str | None = typer.Option(
        None, "--archival-storage", help="Storage backend for archival data: milvus."
    ),
    milvus_uri: str | None = typer.Option(
        None,
        "--milvus-uri",
        help="A Milvus Lite file (~/.memgpt/milvus.db) or a server URI (http://host:19530).",
    ),
    milvus_token: str | None = typer.Option(
        None, "--milvus-token", help="Token or user:password for a secured Milvus server."
    ),
    milvus_database: str | None = typer.Option(
        None, "--milvus-database", help="Database on the Milvus server (default: default)."
    ),
    embedding_provider: str | None = typer.Option(
        None, "--embedding-provider", help="local (offline) or openai (any OpenAI-compatible endpoint)."
    ),
    embedding_model: str | None = typer.Option(
        None, "--embedding-model", help="Embedding model name (openai provider)."
    ),
    embedding_endpoint: str | None = typer.Option(
        None, "--embedding-endpoint", help="OpenAI-compatible base URL for embeddings."
    ),
    embedding_dim: int | None = typer.Option(
        None, "--embedding-dim", min=1, help="Embedding dimension (skips probing the endpoint)."
    ),
    llm_provider: str | None = typer.Option(
        None,
        "--llm-provider",
        help="openai, anthropic, azure, ollama, vllm, lmstudio, llamacpp, groq, openrouter, openai-compatible.",
    ),
    llm_model: str | None = typer.Option(None, "--llm-model", help="LLM model name."),
    llm_endpoint: str | None = typer.Option(None, "--llm-endpoint", help="LLM base URL."),
    llm_context_window: int | None = typer.Option(
        None, "--llm-context-window", help="The model's context window in tokens (default: as the server says)."
    ),
    function_calling: str | None = typer.Option(
        None, "--function-calling", help="native (the API's tool calls) or json (for models without them)."
    ),
    tool_choice: str | None = typer.Option(
        None,
        "--tool-choice",
        help="auto, required, auto_then_send_message (local servers' default: asks again when a reply is "
        "empty) or send_message.",
    ),
    no_llm_check: bool = typer.Option(
        False, "--no-llm-check", help="Save the LLM settings without asking the endpoint (e.g. offline)."
    ),
    no_prompt: bool = typer.Option(False, "--no-prompt", help="Never ask; keep current values for options not given."),
) -> None:
    """Choose storage (Milvus Lite or a Milvus server), the embedding model and the LLM."""
    import questionary

    from memgpt.config import display_path, is_server_uri, resolve_milvus_uri, save_config
    from memgpt.storage import check_milvus, milvus_target

    home, config = home_and_config()
    ask = interactive() and not no_prompt
    if archival_storage is None and ask:
        archival_storage = _ask(
            questionary.select("Select storage backend for archival data:", choices=["milvus"], default="milvus")
        )
    if archival_storage not in (None, "milvus"):
        raise ConfigError(f"--archival-storage must be milvus, not {archival_storage!r}")
    default_uri = display_path(home / "milvus.db")
    _milvus(config, milvus_uri, milvus_token, ask, default_uri)
    if milvus_database is not None:
        config.milvus.database = milvus_database.strip()
    resolve_milvus_uri(config.milvus.uri or str(home / "milvus.db"))  # a bad file name fails before any prompt below
    if config.milvus.database and not is_server_uri(config.milvus.uri):
        raise ConfigError(
            "--milvus-database needs a Milvus server URI (http://host:19530); Milvus Lite has a single database"
        )
    _embedding(config, embedding_provider, embedding_model, embedding_endpoint, embedding_dim, ask)
    _llm_options(config, function_calling, tool_choice)
    llm_flags = (llm_provider, llm_model, llm_endpoint, llm_context_window, function_calling, tool_choice)
    check = not no_llm_check and (ask or any(flag is not None for flag in llm_flags))
    checked = _llm(config, llm_provider, llm_model, llm_endpoint, llm_context_window, ask, check=check)
    if llm_context_window is not None or ask or (checked is not None and checked.context_window):
        _check_window(config, home, given=llm_context_window is not None or ask)

    target = milvus_target(config, home)
    check_milvus(target)  # a bad URI or token fails here, not in the middle of a load
    uri = target.uri
    path = save_config(config, home)
    kind = "Milvus server" if is_server_uri(uri) else "Milvus Lite"
    console.print(f"Saved {display_path(path)}", markup=False)
    database = f", database {config.milvus.database}" if config.milvus.database else ""
    console.print(f"  archival storage: milvus at {display_path(uri)} ({kind}{database})", markup=False)
    emb = config.embedding
    where = f" at {emb.endpoint}" if emb.endpoint else ""
    console.print(f"  embeddings: {emb.provider} {emb.model}{where} ({emb.dimensions} dims)", markup=False)
    llm = config.llm
    console.print(
        f"  LLM: {llm.provider or 'from the environment'} {llm.model or '(default model)'} at "
        f"{llm.endpoint or 'the default endpoint'}, context window {llm.context_window or 'the default'}",
        markup=False,
    )
    if checked is not None:
        said = (
            f"{checked.context_window} from {checked.window_source}"
            if checked.context_window
            else f"not given (using {llm.context_window}; --llm-context-window sets it)"
        )
        console.print(f"  LLM check: {checked.endpoint} answered; context window {said}", markup=False)


def migrate(
    to: str = typer.Option(..., "--to", help="The Milvus server to move to, e.g. http://localhost:19530."),
    token: str = typer.Option("", "--token", help="Token or user:password for the target server."),
    database: str = typer.Option("", "--database", help="Database on the target server (default: default)."),
    yes: YesOption = False,
) -> None:
    """Copy every passage to another Milvus (e.g. from Milvus Lite to a server), then switch to it."""
    startup_over()  # a long copy collects its garbage as it goes
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from memgpt.cli.common import command_name, confirm, err_console, lock_wait
    from memgpt.config import display_path, resolve_milvus_uri, save_config
    from memgpt.storage import milvus_target
    from memgpt.storage.milvus.client import command_holding
    from memgpt.storage.transfer import Transfer

    home, config = home_and_config()
    resolve_milvus_uri(to)  # empty, or a file name Milvus Lite refuses: one line before anything opens
    moved = config.model_copy(deep=True)
    moved.milvus.uri, moved.milvus.token, moved.milvus.database = to, token, database
    here, there = milvus_target(config, home), milvus_target(moved, home)
    if (there.uri, there.database) == (here.uri, here.database):
        raise ConfigError(f"memgpt already uses {display_path(there.uri)}")
    with command_holding(command_name(), lock_wait()), Transfer(here, there) as transfer:
        total = sum(transfer.plan().values())
        question = f"Copy {total} passages from {display_path(here.uri)} to {display_path(there.uri)} and switch to it?"
        if not confirm(question, assume_yes=yes):
            console.print("Nothing copied.")
            return
        columns = (TextColumn("Migrating passages"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console) as progress:
            task = progress.add_task("migrate", total=total)
            report = transfer.run(on_progress=lambda n: progress.advance(task, n))
    for space, (before, after) in report.counts.items():
        console.print(f"  {space}: {before} passages here, {after} at the target", markup=False)
    if not report.complete:
        raise ConfigError("the target has fewer passages than the source; config unchanged — run migrate again")
    save_config(moved, home)
    console.print(
        f"Copied {report.copied} passages ({report.skipped} were there already); memgpt now uses "
        f"{display_path(there.uri)}. The old data stays at {display_path(here.uri)}.",
        markup=False,
    )
