"""Files to text: one ``TextUnit`` per PDF page, one per file for everything else.

Every failure is an ``InputFileError`` naming the file and what to do; a file that loads with a
caveat (not UTF-8, some pages without text) carries a warning instead.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memgpt.data.pdftext import Line, page_lines, pdf_sections
from memgpt.data.pdftext import reflow_pdf_text as reflow_pdf_text
from memgpt.data.sections import Section, SectionBuilder, markdown_sections, plain_sections, rst_sections, unit_text
from memgpt.errors import InputFileError

logger = logging.getLogger(__name__)

# Bump when extraction changes, so already loaded files are re-read on the next load. 2: sections
# (passages carry their heading), PDF text by font (asides no longer cut sentences, running heads gone). 3: PDF
# figure text at body size or on a body line set aside, asides atop a page after its first paragraph, footnote
# marks unglued; reference marks ("[44]") left out of what is embedded. 4: a PDF's affiliation footnote (its mark
# follows the author names) joins the title block on page 1.
LOADER_VERSION = 4


@dataclass(frozen=True)
class TextUnit:
    text: str
    unit: int | None = None  # PDF page number, 1-based
    sections: tuple[Section, ...] = ()  # the text by heading; none when the reader found no headings

    def parts(self) -> tuple[Section, ...]:
        """The unit's sections; the whole text as one section without a heading when it has none."""
        return self.sections or (Section("", self.text),)


def _sectioned(sections: list[Section]) -> TextUnit:
    """One unit from a file's sections (without them when no heading was found)."""
    if all(not s.heading for s in sections):
        return TextUnit(unit_text(sections))
    return TextUnit(unit_text(sections), sections=tuple(sections))


@dataclass
class ParsedFile:
    units: list[TextUnit]
    warnings: list[str] = field(default_factory=list)


def _fail(path: Path, reason: str) -> InputFileError:
    return InputFileError(str(path), reason)


# -- text decoding ----------------------------------------------------------------------------
def _looks_binary(text: str) -> bool:
    if not text:
        return False
    sample = text[:20_000]
    control = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    return "\x00" in sample or control / len(sample) > 0.01


def _mostly_latin(text: str) -> bool:
    """Western text has a few accented letters; other scripts read as cp1252 are almost all accents."""
    letters = [ch for ch in text[:20_000] if ch.isalpha()]
    return bool(letters) and sum(1 for ch in letters if ord(ch) > 127) / len(letters) <= 0.3


def _legacy_decode(data: bytes) -> tuple[str, str] | None:
    """Text and encoding for non-UTF-8 data. cp1252 first: it is what most such files are, and
    charset detection often mistakes it for a Baltic or Central European code page."""
    try:
        text = data.decode("cp1252")
        if _mostly_latin(text):
            return text, "cp1252"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    return (str(best), best.encoding) if best is not None else None


def decode_text(data: bytes, path: Path) -> tuple[str, str | None]:
    """Text and an optional warning. UTF-8 (with or without BOM) and UTF-16 with BOM are exact;
    anything else is decoded by best guess and flagged."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), None
    if b"\x00" in data[:8192]:
        raise _fail(path, "binary data, not text (wrong extension?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        guess = _legacy_decode(data)
        if guess is None or _looks_binary(guess[0]):
            raise _fail(path, "binary data or an unknown text encoding; save it as UTF-8") from None
        return guess[0], f"{path.name} is not UTF-8; read it as {guess[1]}"
    if _looks_binary(text):
        raise _fail(path, "binary data, not text (wrong extension?)")
    return text, None


# -- formats ----------------------------------------------------------------------------------
def _pdf(path: Path, data: bytes) -> ParsedFile:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise _fail(path, "encrypted PDF (needs a password); decrypt it first") from exc
        raise _fail(path, "not a valid PDF (corrupt or truncated)") from exc
    pages: list[list[Line]] = []
    try:
        for number in range(len(pdf)):
            page = pdf[number]
            try:
                pages.append(page_lines(page.get_textpage()))
            finally:
                page.close()
    except pdfium.PdfiumError as exc:
        raise _fail(path, f"cannot read page {len(pages) + 1} ({exc})") from exc
    finally:
        pdf.close()
    units: list[TextUnit] = []
    for number, sections in enumerate(pdf_sections(pages), start=1):
        if any(s.text.strip() or s.title for s in sections):
            units.append(TextUnit(unit_text(sections), unit=number, sections=tuple(sections)))
    empty_pages = len(pages) - len(units)
    if not units:
        raise _fail(path, "no extractable text (a scanned PDF? run OCR on it first)")
    warnings = [f"{path.name}: {empty_pages} page(s) without text were skipped"] if empty_pages else []
    return ParsedFile(units, warnings)


def _plain(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    split = _SECTIONS.get(path.suffix.lower())
    sections = split(text) if split else []
    # The unit's text stays the file's own (what a reader of the file sees); the sections only steer chunking.
    unit = TextUnit(text, sections=tuple(sections)) if any(s.heading for s in sections) else TextUnit(text)
    return ParsedFile([unit], [warning] if warning else [])


_SECTIONS = {
    ".md": markdown_sections,
    ".markdown": markdown_sections,
    ".rst": rst_sections,
    ".txt": plain_sections,
    ".text": plain_sections,
}


def _html(path: Path, data: bytes) -> ParsedFile:
    from bs4 import BeautifulSoup

    markup, warning = decode_text(data, path)
    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    text = soup.get_text("\n")
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    return ParsedFile([TextUnit(text.strip())], [warning] if warning else [])


def _docx(path: Path, data: bytes) -> ParsedFile:
    import zipfile

    import docx
    from docx.opc.exceptions import OpcError
    from lxml.etree import XMLSyntaxError

    try:
        document = docx.Document(io.BytesIO(data))
        builder = SectionBuilder()
        for paragraph in document.paragraphs:
            if not paragraph.text.strip():
                continue
            level = _docx_heading_level(paragraph.style.name if paragraph.style is not None else "")
            if level:
                builder.heading(level, paragraph.text)
            else:
                builder.line(paragraph.text + "\n")
        for table in document.tables:
            for row in table.rows:
                cells = [cell.text.strip() for cell in row.cells]
                if any(cells):
                    builder.line(" | ".join(cells) + "\n")
    except XMLSyntaxError as exc:
        raise _fail(path, f"damaged .docx: its XML is not valid ({exc}); re-save it from a word processor") from exc
    except (zipfile.BadZipFile, OpcError, KeyError, ValueError) as exc:
        raise _fail(path, "not a valid .docx file (corrupt, or an old .doc saved under a new name)") from exc
    return ParsedFile([_sectioned(builder.finish())])


def _docx_heading_level(style: str) -> int:
    """1 for Word's "Title" and "Heading 1", N for "Heading N"; 0 for any other style."""
    if style == "Title":
        return 1
    match = re.fullmatch(r"Heading (\d)", style)
    return int(match.group(1)) if match else 0


def _csv(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    # A long field (a whole article in a cell) is data, not damage: no field can be longer than the file,
    # whose size is bounded before it is read, so that is the limit (the csv module's default is 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=None), dialect)  # \r, \n and \r\n all end a row
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise _fail(path, f"malformed CSV on line {reader.line_num} ({exc}); fix or re-export it") from exc
    if not rows:
        return ParsedFile([TextUnit("")])
    header, body = rows[0], rows[1:]
    # One line per row, each value labelled by its column, so a row stays meaningful when chunked alone.
    lines = [
        "; ".join(f"{name}: {value}" for name, value in zip(header, row, strict=False) if value.strip()) for row in body
    ]
    if not body:
        lines = ["; ".join(header)]
    return ParsedFile([TextUnit("\n".join(line for line in lines if line))], [warning] if warning else [])


def _flatten(value: Any) -> list[str]:
    """One ``path: value`` line per leaf, in document order. A loop, not recursion: any JSON that
    parsed is flattened, however deep."""
    lines: list[str] = []
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, prefix = stack.pop()
        if isinstance(item, dict):
            children = [(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in item.items()]
        elif isinstance(item, list) and any(isinstance(v, (dict, list)) for v in item):
            children = [(v, f"{prefix}[{i}]" if prefix else f"[{i}]") for i, v in enumerate(item)]
        else:
            leaf = ", ".join(str(v) for v in item) if isinstance(item, list) else str(item)
            lines.append(f"{prefix}: {leaf}" if prefix else leaf)
            continue
        stack.extend(reversed(children))
    return lines


def _records_to_text(records: list[Any]) -> str:
    return "\n\n".join("\n".join(_flatten(record)) for record in records)


_TOO_DEEP = "nested too deeply to read (over about 1,000 levels of arrays or objects); flatten it"


def _json(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise _fail(path, _TOO_DEEP) from exc
    records = value if isinstance(value, list) else [value]
    return ParsedFile([TextUnit(_records_to_text(records))], [warning] if warning else [])


def _jsonl(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _fail(path, f"invalid JSON on line {number}: {exc.msg}") from exc
        except RecursionError as exc:
            raise _fail(path, f"line {number} is {_TOO_DEEP}") from exc
    return ParsedFile([TextUnit(_records_to_text(records))], [warning] if warning else [])


Reader = Callable[[Path, bytes], ParsedFile]
READERS: dict[str, Reader] = {
    ".pdf": _pdf,
    ".txt": _plain,
    ".text": _plain,
    ".md": _plain,
    ".markdown": _plain,
    ".rst": _plain,
    ".log": _plain,
    ".html": _html,
    ".htm": _html,
    ".docx": _docx,
    ".csv": _csv,
    ".tsv": _csv,
    ".json": _json,
    ".jsonl": _jsonl,
    ".ndjson": _jsonl,
}
SUPPORTED_EXTENSIONS = tuple(sorted(READERS))


def reader_for(path: Path) -> Reader:
    """The reader for a path's extension; unknown extensions are read as text if they are text."""
    return READERS.get(path.suffix.lower(), _plain)


def parse(path: Path, data: bytes) -> ParsedFile:
    """Parse one file's bytes. Raises ``InputFileError`` for anything that cannot give text."""
    try:
        parsed = reader_for(path)(path, data)
    except InputFileError:
        raise
    except Exception as exc:
        # The parsers (pypdfium2, python-docx, lxml, BeautifulSoup) meet hostile bytes here; whatever they
        # raise on a file must cost that file only, never the rest of the load.
        logger.debug("parsing %s failed", path, exc_info=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise _fail(path, f"cannot read it as {path.suffix or 'text'} ({detail}); check or re-save the file") from exc
    if not any(unit.text.strip() for unit in parsed.units):
        raise _fail(path, "no text in it")
    return parsed


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _not_regular(path: Path, mode: int) -> InputFileError:
    kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
    if stat.S_ISDIR(mode) and not os.access(path, os.R_OK | os.X_OK):
        return _fail(path, "is a folder that cannot be read (permission denied); make it readable")
    if stat.S_ISDIR(mode):
        return _fail(path, "is a directory; use --input-dir")
    return _fail(path, f"is {kind}, not a regular file; give the path of a file")


def _open_error(path: Path, exc: OSError) -> InputFileError:
    if exc.errno == errno.ELOOP:
        return _fail(path, "is a symlink loop (following it never reaches a file); fix or remove the link")
    if exc.errno == errno.ENOENT:
        if path.is_symlink():
            return _fail(path, f"is a broken symlink (its target {os.readlink(path)} does not exist)")
        return _fail(path, "no such file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _fail(path, "permission denied; make it readable")
    return _fail(path, f"cannot read it ({exc.strerror or exc})")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def read_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """The file's bytes. Only a regular file is opened (a named pipe or a device would block or never
    end), and one over ``max_bytes`` is refused before it is read."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        # O_NONBLOCK: if the path became a FIFO since the check above, opening it still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    with open(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        if max_bytes is not None and info.st_size > max_bytes:
            raise _fail(path, too_big(info.st_size, max_bytes, "max_file_mb"))
        try:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except OSError as exc:
            raise _open_error(path, exc) from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise _fail(path, too_big(len(data), max_bytes, "max_file_mb"))
    if not data:
        raise _fail(path, "empty file")
    return data


def too_big(size: int, limit: int, setting: str, what: str = "") -> str:
    """What to tell about a file over one of the load limits in config.toml's ``[embedding]``."""
    return (
        f"{_megabytes(size)}{what}, over the limit of {_megabytes(limit)} per file; split it, or raise "
        f"{setting} under [embedding] in config.toml"
    )
