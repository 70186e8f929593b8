"""Sections of a text: the heading each part of a document falls under.

A passage cut from the middle of section 2.2 reads "the queue manager evicts a specific count of
messages"; a question about "the queue manager in MemGPT" finds it far more easily when the passage
also says where it stands. Readers split each unit of text into ``Section``s, each with the path of
headings in force ("2. MemGPT > 2.2. Queue Manager"); the loader puts that path in front of every
passage. Detection is by layout only (Markdown ``#``, underlined titles, short title lines before
prose, Word heading styles, PDF fonts): a missed heading costs nothing but the label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# A heading path longer than this is cut (the deepest headings kept): it is repeated in every passage.
MAX_HEADING_CHARS = 160


@dataclass(frozen=True)
class Section:
    """Text under one heading path; ``heading`` is "" before a document's first heading. ``title`` is
    the heading line itself when the section starts here (not when it runs on from an earlier page)."""

    heading: str
    text: str
    title: str = ""


_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")  # a Markdown link in a title: its text only


class HeadingPath:
    """The headings in force, by level: a level-2 heading replaces the previous level-2 one and drops
    everything deeper."""

    def __init__(self) -> None:
        self._levels: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> str:
        self._levels = [(lvl, text) for lvl, text in self._levels if lvl < level]
        self._levels.append((level, " ".join(_LINK.sub(r"\1", title).split())))
        return self.path

    def retitle(self, title: str) -> str:
        """Replace the deepest heading's title (a title that wrapped onto a second line)."""
        if self._levels:
            self._levels[-1] = (self._levels[-1][0], " ".join(title.split()))
        return self.path

    @property
    def path(self) -> str:
        path = " > ".join(text for _, text in self._levels)
        if len(path) > MAX_HEADING_CHARS:
            path = "…" + path[-(MAX_HEADING_CHARS - 1) :]
        return path


def section_label(heading: str, page: int | None = None) -> str:
    """The line put in front of each passage under ``heading``: "Section: 2.2. Queue Manager (page 3)";
    "" when there is no heading."""
    if not heading:
        return ""
    return f"Section: {heading}" + (f" (page {page})" if page is not None else "")


def strip_label(text: str, heading: str, page: int | None = None) -> str:
    """``text`` without the label line ``section_label`` put in front of it."""
    label = section_label(heading, page)
    return text[len(label) + 1 :] if label and text.startswith(f"{label}\n") else text


def unit_text(sections: Iterable[Section]) -> str:
    """The unit's whole text, headings included, as the reader found it."""
    return "\n\n".join("\n".join(part for part in (s.title, s.text) if part) for s in sections).strip()


class SectionBuilder:
    """Collects lines into sections as headings are met."""

    def __init__(self) -> None:
        self.path = HeadingPath()
        self.sections: list[Section] = []
        self._heading = ""
        self._title = ""
        self._lines: list[str] = []

    def line(self, text: str) -> None:
        self._lines.append(text)

    def heading(self, level: int, title: str) -> None:
        self._close()
        self._title = title.strip()
        self._heading = self.path.enter(level, title)

    def _close(self) -> None:
        text = "\n".join(self._lines).strip()
        if text or self._title:
            self.sections.append(Section(self._heading, text, self._title))
        self._lines = []
        self._title = ""

    def finish(self) -> list[Section]:
        self._close()
        return self.sections


# -- Markdown and reStructuredText -----------------------------------------------------------------
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_UNDERLINE = re.compile(r"^ {0,3}([=\-~^\"'`#*+])\1{2,}\s*$")


def markdown_sections(text: str) -> list[Section]:
    """ATX (``## Title``) and setext (a title underlined with ``===`` or ``---``) headings outside code
    fences; ``---`` after a blank line is a rule, not a heading."""
    builder = SectionBuilder()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fenced = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if _FENCE.match(line):
            fenced = not fenced
        atx = None if fenced else _ATX.match(line)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if atx:
            builder.heading(len(atx.group(1)), atx.group(2))
        elif not fenced and line.strip() and re.match(r"^ {0,3}(=+|-+)\s*$", following) and _is_title(line):
            builder.heading(1 if following.strip()[0] == "=" else 2, line)
            index += 1
        else:
            builder.line(line)
        index += 1
    return builder.finish()


def rst_sections(text: str) -> list[Section]:
    """reStructuredText titles: a line underlined (and maybe overlined) with punctuation; the level is
    the order in which each underline style first appears."""
    builder = SectionBuilder()
    styles: list[str] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        underline = _UNDERLINE.match(following)
        if line.strip() and not _UNDERLINE.match(line) and underline and len(following.strip()) >= len(line.strip()):
            style = underline.group(1)
            if style not in styles:
                styles.append(style)
            builder.heading(styles.index(style) + 1, line)
            index += 2
            continue
        if not _UNDERLINE.match(line):  # an overline belongs to the title below it
            builder.line(line)
        index += 1
    return builder.finish()


# -- plain text ----------------------------------------------------------------------------------
_MAX_TITLE_WORDS = 8
_MAX_TITLE_CHARS = 60
_MAX_TITLE_RUN = 3


def _is_title(line: str) -> bool:
    """A short line that reads like a title: starts with a capital or a number, has no sentence or
    clause punctuation at its end, no comma, tab or colon-label inside."""
    text = line.strip()
    if not text or line[0].isspace() or len(text) > _MAX_TITLE_CHARS or len(text.split()) > _MAX_TITLE_WORDS:
        return False
    if "\t" in line or "," in text or ": " in text or text[-1] in ".!?:;,)]\"'" or text.startswith(("-", "*", "^")):
        return False
    return text[0].isupper() or text[0].isdigit()


def _is_prose(line: str) -> bool:
    text = line.strip()
    return len(text) >= _MAX_TITLE_CHARS or (len(text.split()) >= 4 and text[-1] in ".!?")


def _ends_block(line: str) -> bool:
    """Whether a title may follow ``line``: blank, or not the middle of a hard-wrapped paragraph."""
    text = line.strip()
    return not text or len(text) < _MAX_TITLE_CHARS or text[-1] in ".!?:;"


def _runs(lines: list[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of title-like lines (blank lines between them allowed)."""
    index = 0
    while index < len(lines):
        if not _is_title(lines[index]) or (index and not _ends_block(lines[index - 1])):
            index += 1
            continue
        end = index + 1
        while end < len(lines) and (not lines[end].strip() or _is_title(lines[end])):
            end += 1
        yield index, end
        index = end


def plain_sections(text: str) -> list[Section]:
    """Headings in plain text: title-like lines (see ``_is_title``) that start a block and are followed by
    prose. A run of up to three (a heading and its subheading) is one heading path; a longer run is a list
    or a table, not headings."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    headings: dict[int, int] = {}  # line index -> level
    for start, end in _runs(lines):
        titles = [i for i in range(start, end) if lines[i].strip()]
        after = [line for line in lines[end : end + 4] if line.strip()][:2]  # a "See also" line may come first
        if len(titles) <= _MAX_TITLE_RUN and any(_is_prose(line) for line in after):
            headings.update((i, level) for level, i in enumerate(titles, start=1))
    if not headings:
        return [Section("", text.strip())] if text.strip() else []
    builder = SectionBuilder()
    for index, line in enumerate(lines):
        if index in headings:
            # Each run starts a new path: the first line of a run is a top-level heading.
            builder.heading(headings[index], line)
        else:
            builder.line(line)
    return builder.finish()
