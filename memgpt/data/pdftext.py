"""A PDF's text by page, in sections, from PDFium's text lines and their fonts.

Each line is classed by its font against the document's body text (the size most characters have):
- a heading: a numbered title ("2.2. Queue Manager") set bold, larger or in capitals, or a short bold
  line larger than the body ("Abstract", "References");
- body text, joined into paragraphs that break only after sentence ends (see ``reflow_lines``);
- an aside: smaller or larger text — footnotes, figure and table text, captions, margin stamps. An
  aside met inside a body paragraph (a footnote at the foot of a column, a figure between two
  columns) is held back and written after the paragraph ends, so it no longer cuts the sentence it
  interrupted in two.
Running heads (the same line at the top or foot of most pages) after their first appearance, and
page numbers, are dropped. A footnote on the first page whose mark follows the names in the title block
("Charles Packer 1 Sarah Wooders 1", then "1 University of California, Berkeley. Correspondence to: ...")
is the authors' affiliation: it joins the title block, not the paragraph its foot of column happened to cut.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from memgpt.data.sections import HeadingPath, Section

_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]?$")
_NUMBERED = re.compile(r"^(\d{1,2}(?:\.\d{1,2}){0,4})\.?\s+\S")
_NUMBER = re.compile(r"[∼~+\-]?\d[\d.,:/]*[%kKmMxX*]?")
# A footnote's marker is set superscript against its first word ("¹University of ..."), and PDFium gives
# it as a plain digit glued to that word ("1University"), which no search finds as "university".
_FOOTNOTE_MARK = re.compile(r"^(\d{1,2}|[*\u2020\u2021\u00a7\u00b6])(?=[A-Z][a-z])")
# A footnote's first line once its mark is unglued: "1 University of ...", "* Equal contribution".
_NOTE_START = re.compile(r"^(\d{1,2}|[*\u2020\u2021\u00a7\u00b6]) \S")
# A mark set after a name in the title block ("Packer 1 Sarah", "Wooders 1,2", "Lin *").
_TITLE_MARK = re.compile(r"(?<=\w )(\d{1,2}|[*\u2020\u2021\u00a7\u00b6])(?=[ ,]|$)")
_BOLD = 600
_SAMPLE = 12
_RUN_RATIO = 2.0  # font sizes this far apart on one line are two texts (a figure's and the body's)
_MIN_RUN = 4
_MAX_HEADING_WORDS = 14


@dataclass(frozen=True)
class Line:
    text: str
    size: float  # the font size most of its characters have
    weight: int  # likewise the font weight (400 regular, 700 bold)


def reflow_lines(lines: list[str]) -> list[str]:
    """Join hard-broken lines into paragraphs, breaking only after sentence ends. PDFium marks soft
    hyphens at line ends as U+0002 or U+FFFE ("revolution\\x02ized"); a hard hyphen at a line end
    ("state-of-the-") is kept and joined without a space."""
    paragraphs: list[str] = []
    current = ""
    joined = False  # the line before ended in a soft hyphen: this one goes on the same word
    for raw_line in lines:
        line = raw_line.replace("\x02", "").replace("\ufffe", "").strip()
        if not line:
            if current:
                paragraphs.append(current)
            current, joined = "", False
            continue
        current = f"{current}{line}" if joined or current.endswith("-") or not current else f"{current} {line}"
        joined = raw_line.rstrip().endswith(("\x02", "\ufffe"))
        if _SENTENCE_END.search(line):
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return paragraphs


def reflow_pdf_text(raw: str) -> str:
    """``reflow_lines`` over a page's raw text."""
    return "\n".join(reflow_lines(raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")))


def page_lines(textpage: Any) -> list[Line]:
    """The page's text lines with their dominant font size and weight."""
    import pypdfium2.raw as pdfium_c

    raw = textpage.raw

    def font(index: int) -> tuple[float, int]:
        return round(pdfium_c.FPDFText_GetFontSize(raw, index), 1), pdfium_c.FPDFText_GetFontWeight(raw, index)

    count = textpage.count_chars()
    text = textpage.get_text_range(0, count) if count else ""
    if len(text) != count:  # characters and text do not line up: no font information, plain lines
        return [Line(line, 0.0, 0) for line in text.replace("\r", "").split("\n")]
    lines: list[Line] = []
    start = 0
    for end in [i for i, ch in enumerate(text) if ch == "\n"] + [count]:
        lines.extend(_line_runs(font, text, start, end))
        start = end + 1
    return lines


def _dominant(text: str, fonts: list[tuple[float, int]]) -> Line:
    size, weight = Counter(f[0] for f in fonts), Counter(f[1] for f in fonts)
    return Line(text.strip(), size.most_common(1)[0][0], weight.most_common(1)[0][0])


def _line_runs(font: Callable[[int], tuple[float, int]], text: str, start: int, end: int) -> list[Line]:
    """The line ``text[start:end]`` judged by the fonts of a few characters spread over it; or, when they are
    of sizes at least twice apart (a figure's label that PDFium put on a body line's baseline), split around
    each run of at least ``_MIN_RUN`` characters of a size twice apart from the line's own, so the label can
    be set aside and the body still read as body. Shorter runs (a drop cap, a mark) stay in the line."""
    chars = [i for i in range(start, end) if not text[i].isspace()]
    if not chars:
        return []
    sample = [font(i) for i in chars[:: max(1, len(chars) // _SAMPLE)]]
    low, high = min(f[0] for f in sample), max(f[0] for f in sample)
    if high < _RUN_RATIO * low or low <= 0:
        return [_dominant(text[start:end], sample)]
    fonts = [font(i) for i in chars]
    own = Counter(f[0] for f in fonts).most_common(1)[0][0]
    other = [_apart(own, f[0]) for f in fonts]
    bounds = [0] + [n for n in range(1, len(chars)) if other[n] != other[n - 1]] + [len(chars)]
    cuts = {0, len(chars)}
    for a, b in pairwise(bounds):
        if other[a] and b - a >= _MIN_RUN:
            cuts.update((a, b))
    edges = sorted(cuts)
    return [
        _dominant(text[chars[a] : chars[b] if b < len(chars) else end], fonts[a:b]) for a, b in pairwise(edges)
    ]


def _apart(one: float, other: float) -> bool:
    return max(one, other) >= _RUN_RATIO * max(min(one, other), 0.1)


def _body_font(pages: list[list[Line]]) -> tuple[float, int]:
    """The font size most characters have, and the weight most characters of that size have."""
    sizes: Counter[float] = Counter()
    weights: Counter[tuple[float, int]] = Counter()
    for lines in pages:
        for line in lines:
            sizes[line.size] += len(line.text)
            weights[line.size, line.weight] += len(line.text)
    if not sizes:
        return 0.0, 0
    size = sizes.most_common(1)[0][0]
    return size, max((n, weight) for (s, weight), n in weights.items() if s == size)[1]


def _running_heads(pages: list[list[Line]]) -> set[str]:
    """Lines that open or close at least half the pages (three or more): running heads and feet."""
    if len(pages) < 3:
        return set()
    seen: Counter[str] = Counter()
    for lines in pages:
        ends = {re.sub(r"\d+", "#", line.text) for line in (*lines[:2], *lines[-2:])}
        seen.update(ends)
    return {text for text, n in seen.items() if n >= max(3, len(pages) // 2)}


class _Classifier:
    def __init__(self, body: float, weight: int = 0) -> None:
        self.body = body
        self.weight = weight  # the body's font weight; 0 when its fonts do not say

    def heading_level(self, line: Line) -> int:
        """The line's heading level (1 for "2.", 2 for "2.1." or an unnumbered title), 0 if it is none."""
        words = line.text.split()
        if not self.body or not 0 < len(words) <= _MAX_HEADING_WORDS or line.text[-1] in ",;":
            return 0
        bold, larger = line.weight >= _BOLD, line.size > self.body + 0.5
        numbered = _NUMBERED.match(line.text)
        if numbered:
            title = line.text[numbered.end() - 1 :]
            capitals = sum(ch.isupper() for ch in title) > 0.6 * sum(ch.isalpha() for ch in title)
            return numbered.group(1).count(".") + 1 if bold or larger or capitals else 0
        return 1 if bold and line.size >= self.body + 1.5 else 0

    def is_body(self, line: Line) -> bool:
        """Body-sized text that is not a table row (mostly numbers: "GPT-4 Turbo 0.857 0.828 0.767") nor text
        drawn inside a figure (its font gives no weight where the body's does: a chart's ticks and legend)."""
        words = line.text.split()
        numbers = sum(1 for word in words if _NUMBER.fullmatch(word))
        if self.weight and not line.weight:
            return False
        return abs(line.size - self.body) <= 0.6 and not (len(words) >= 3 and numbers >= 0.4 * len(words))


class _PageFlow:
    """Lines to sections: body paragraphs in order, asides after the paragraph they interrupt."""

    def __init__(self, path: HeadingPath, classifier: _Classifier) -> None:
        self.path = path
        self.classify = classifier
        self.sections: list[Section] = []
        self.title = ""
        self.paragraphs: list[str] = []
        self.body: list[str] = []  # lines of the body paragraph being read
        self.asides: list[str] = []  # aside lines met inside it, held back until it ends
        self.loose: list[str] = []  # aside lines met between paragraphs, kept in place
        self.opened = False  # whether the page's first body line was read
        self.heading_style: tuple[float, int] | None = None
        self.notes: list[tuple[str, list[str]]] = []  # each footnote's mark and its lines, in page order
        self._in_note = False  # whether the last aside line read belongs to a footnote

    def add(self, line: Line) -> None:
        style = (line.size, line.weight)
        if self.heading_style == style and len(line.text.split()) <= _MAX_HEADING_WORDS // 2 and not self.body:
            self.title = f"{self.title} {line.text}"  # a heading that wraps onto a second line
            self.path.retitle(self.title)
            return
        level = self.classify.heading_level(line)
        self.heading_style = style if level else None
        if level:
            self._in_note = False
            self._close()
            self.title = line.text
            self.path.enter(level, line.text)
            return
        if self.classify.is_body(line):
            self._in_note = False
            if self.opened:
                self.paragraphs.extend(reflow_lines(self.loose))
            else:  # the page's first paragraph may end a sentence the page before began: asides above it wait
                self.asides.extend(self.loose)
                self.opened = True
            self.loose = []
            self.body.append(line.text)
            if _SENTENCE_END.search(line.text):
                self._paragraph_end()
        else:
            text = _FOOTNOTE_MARK.sub(r"\1 ", line.text)
            (self.asides if self.body else self.loose).append(text)
            self._note(text)

    def _note(self, text: str) -> None:
        """Follow footnotes: one starts at an aside line that opens with a mark and runs on over the aside
        lines after it, until body text or a heading."""
        start = _NOTE_START.match(text)
        if start:
            self.notes.append((start.group(1), [text]))
        elif self._in_note:
            self.notes[-1][1].append(text)
        self._in_note = bool(start) or self._in_note

    def _paragraph_end(self) -> None:
        self.paragraphs.extend(reflow_lines(self.body))
        self.paragraphs.extend(reflow_lines(self.asides))
        self.body, self.asides = [], []

    def _close(self) -> None:
        self._paragraph_end()
        self.paragraphs.extend(reflow_lines(self.loose))
        self.loose = []
        text = "\n".join(self.paragraphs)
        if text or self.title:
            self.sections.append(Section(self.path.path, text, self.title))
        self.paragraphs, self.title = [], ""

    def finish(self) -> list[Section]:
        self._close()
        return self.sections


def pdf_sections(pages: list[list[Line]]) -> list[list[Section]]:
    """Each page's sections; a section running on from the page before keeps its heading."""
    classifier = _Classifier(*_body_font(pages))
    heads = _running_heads(pages)
    path = HeadingPath()
    seen_heads: set[str] = set()
    result: list[list[Section]] = []
    for lines in pages:
        flow = _PageFlow(path, classifier)
        for index, line in enumerate(lines):
            shape = re.sub(r"\d+", "#", line.text)
            if shape in heads and (shape in seen_heads or shape == "#"):
                continue
            seen_heads.add(shape)
            if line.text.isdigit() and index >= len(lines) - 2:
                continue  # a page number
            flow.add(line)
        sections = flow.finish()
        result.append(_affiliations_to_title(sections, flow.notes) if len(result) == 0 else sections)
    return result


def _affiliations_to_title(sections: list[Section], notes: list[tuple[str, list[str]]]) -> list[Section]:
    """The first page's sections with each footnote whose mark follows a name in the title block (the first
    section, opened by a heading) moved from where it was met to the end of the title block. A note whose
    paragraphs are not found whole in one later section stays where it is."""
    if not sections or not sections[0].title:
        return sections
    marks = set(_TITLE_MARK.findall(sections[0].text))
    moved: list[str] = []
    kept = list(sections)
    for mark, lines in notes:
        paragraphs = reflow_lines(lines)
        if mark not in marks or not paragraphs:
            continue
        for index in range(1, len(kept)):
            found = kept[index].text.split("\n")
            at = _find_run(found, paragraphs)
            if at is not None:
                rest = found[:at] + found[at + len(paragraphs) :]
                kept[index] = replace(kept[index], text="\n".join(rest))
                moved.extend(paragraphs)
                break
    if not moved:
        return sections
    title = kept[0]
    kept[0] = replace(title, text="\n".join(part for part in (title.text, *moved) if part))
    return [s for s in kept if s.text or s.title]


def _find_run(items: list[str], run: list[str]) -> int | None:
    """Where ``run`` first occurs in ``items`` as consecutive entries."""
    return next((i for i in range(len(items) - len(run) + 1) if items[i : i + len(run)] == run), None)
