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
        self._chunk: Any = semchunk.chunkerify(count_tokens, chunk_size - overlap, cache_maxsize=100_000)

    def split(self, text: str) -> list[str]:
        text = normalize(text)
        if not text:
            return []
        pieces = [piece.strip() for piece in self._chunk(text) if piece.strip()]
        chunks = pieces[:1]
        for previous, piece in pairwise(pieces):
            tail = self._tail(previous)
            joined = f"{tail} {piece}" if tail else piece
            chunks.append(joined if self.count_tokens(joined) <= self.chunk_size else piece)
        return chunks

    def _tail(self, text: str) -> str:
        """The longest end of ``text`` within ``overlap`` tokens: sentences if any fit, else words."""
        if not self.overlap:
            return ""
        for units, sep in ((_SENTENCE_SPLIT.split(text), " "), (text.split(), " ")):
            tail: list[str] = []
            for unit in reversed(units[1:]):
                if self.count_tokens(sep.join([unit, *tail])) > self.overlap:
                    break
                tail.insert(0, unit)
            if tail:
                return sep.join(tail)
        return ""
