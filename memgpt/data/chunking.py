"""Token-aware chunking that prefers paragraph, then sentence, then word boundaries.

Tokens are counted with the embedding model's own tokenizer, so no passage is ever cut short by the
model; the file's path is never part of what is counted (the archived MemGPT counted it, so the
same PDF chunked differently depending on where it lay).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise
from typing import Any

_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


def normalize(text: str) -> str:
    """Collapse runs of spaces and of blank lines; keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
# Reference marks set against a word ("The Daisy.[44][45]", as text copied from Wikipedia has them).
_REFERENCE_MARKS = re.compile(r"(?<=[^\s\[])(?:\[\d{1,3}\])+")


def embedding_text(text: str) -> str:
    """What of a passage is embedded: its text without reference marks, which carry no meaning and took ~1-3%
    of a Wikipedia passage's tokens (bench/retrieval_bench.py: dense MRR@10 0.634 -> 0.652 on the tuning
    set). The passage keeps them, so what is shown and what BM25 ranks are unchanged."""
    return _REFERENCE_MARKS.sub("", text)

# A chunk holds at most this many characters per token of its budget. The MiniLM tokenizer counts any
# word over 100 characters (a hash, base64, a minified blob) as a single [UNK] token, so by tokens alone
# a 100 kB blob is one "token": the chunk would be longer than Milvus stores (64 KiB), and semchunk's
# size estimates (characters per token) would go so far astray that it probes almost every cut point.
_MAX_CHARS_PER_TOKEN = 10
# Text longer than this is chunked block by block, cut at paragraph, line or word ends: semchunk keeps
# a list entry per split, which for a long run without spaces is one per character.
_BLOCK_CHARS = 1_000_000
_BLOCK_CUTS = ("\n\n", "\n", " ")


class Chunker:
    """Splits text into chunks of at most ``chunk_size`` tokens.

    semchunk cuts the text at the best boundary it can find (paragraph, sentence, clause, word) into
    pieces of ``chunk_size - overlap`` tokens; each piece is then prefixed with the end of the piece
    before it (whole sentences when they fit, else words), so a fact near a cut is whole in one chunk
    and every chunk still starts cleanly at a boundary of its own.
    """

    def __init__(self, count_tokens: Callable[[str], int], chunk_size: int, overlap: int = 0) -> None:
        import semchunk

        if chunk_size < 16:
            raise ValueError("chunk_size must be at least 16 tokens")
        if not 0 <= overlap < chunk_size // 2:
            raise ValueError("chunk_overlap must be at least 0 and under half the chunk size")
        self.count_tokens = count_tokens
        self.chunk_size = chunk_size
        self.overlap = overlap
        # Not memoized by semchunk: its cache is global and keyed by the counter, so it would keep every
        # chunker alive; the local model caches counts per word itself.
        self._chunkers: dict[int, Any] = {}
        self._semchunk = semchunk

    def _chunk(self, text: str, size: int, check: Callable[[], None] | None) -> list[str]:
        if check is not None:  # a chunker of its own, whose every size estimate calls ``check`` first (~1 us to make)

            def measure(piece: str) -> int:
                check()
                return self.measure(piece)

            return self._semchunk.chunkerify(measure, size - self.overlap, memoize=False)(text)
        if size not in self._chunkers:
            self._chunkers[size] = self._semchunk.chunkerify(self.measure, size - self.overlap, memoize=False)
        return self._chunkers[size](text)

    def measure(self, text: str) -> int:
        """Tokens of ``text``, or more for text longer than ``_MAX_CHARS_PER_TOKEN`` characters a token:
        what must fit in ``chunk_size``. Text already too long by its length is never tokenized."""
        by_length = -(-len(text) // _MAX_CHARS_PER_TOKEN)
        if by_length > self.chunk_size:
            return by_length
        return max(self.count_tokens(text), by_length)

    def split(self, text: str, reserve: int = 0, *, check: Callable[[], None] | None = None) -> list[str]:
        """``text`` in chunks of at most ``chunk_size - reserve`` tokens (``reserve``: room kept for a
        label the caller puts in front of each chunk; at most half the chunk size is given up to it).
        ``check`` is called all along (before each of the many token counts: a 1.5 MB text takes seconds to
        split on a busy machine, ~0.3 s at most between two calls at load 26); an error it raises ends the split."""
        text = normalize(text)
        if not text:
            return []
        size = self.chunk_size - min(max(reserve, 0), self.chunk_size // 2)
        pieces = [
            piece.strip() for block in _blocks(text) for piece in self._chunk(block, size, check) if piece.strip()
        ]
        chunks = pieces[:1]
        for previous, piece in pairwise(pieces):
            if check is not None:
                check()
            tail = self._tail(previous)
            joined = f"{tail} {piece}" if tail else piece
            chunks.append(joined if self.measure(joined) <= size else piece)
        return chunks

    def _tail(self, text: str) -> str:
        """The longest end of ``text`` within ``overlap`` tokens: sentences if any fit, else words."""
        if not self.overlap:
            return ""
        for units, sep in ((_SENTENCE_SPLIT.split(text), " "), (text.split(), " ")):
            tail: list[str] = []
            for unit in reversed(units[1:]):
                if self.measure(sep.join([unit, *tail])) > self.overlap:
                    break
                tail.insert(0, unit)
            if tail:
                return sep.join(tail)
        return ""


def _blocks(text: str) -> list[str]:
    """``text`` in pieces of at most ``_BLOCK_CHARS``, each cut after the last paragraph, line or word end
    in it (or hard, when there is none); a text within the bound is one block."""
    blocks: list[str] = []
    start = 0
    while len(text) - start > _BLOCK_CHARS:
        limit = start + _BLOCK_CHARS
        cut = next((at + len(sep) for sep in _BLOCK_CUTS if (at := text.rfind(sep, start + 1, limit)) > start), limit)
        blocks.append(text[start:cut])
        start = cut
    blocks.append(text[start:])
    return blocks
