"""Files to text: one ``TextUnit`` per PDF page, one per file for everything else.

Every failure is an ``InputFileError`` naming the file and what to do; a file that loads with a
caveat (not UTF-8, some pages without text) carries a warning instead.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memgpt.errors import InputFileError

# Bump when extraction changes, so already loaded files are re-read on the next load.
LOADER_VERSION = 1


@dataclass(frozen=True)
class TextUnit:
    text: str
    unit: int | None = None  # PDF page number, 1-based


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
_SENTENCE_END = re.compile(r"[.!?:;]['\")\]]?$")


def reflow_pdf_text(raw: str) -> str:
    """Join a PDF page's hard line breaks into paragraphs, breaking only after sentence ends.

    PDFium marks soft hyphens at line ends as U+0002 ("revolution\x02ized"); a hard hyphen at a
    line end ("state-of-the-") is kept and joined without a space.
    """
    text = raw.replace("\x02", "").replace("\r\n", "\n").replace("\r", "\n")
    paragraphs: list[str] = []
    current = ""
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if not line:
            if current:
                paragraphs.append(current)
            current = ""
            continue
        current = f"{current}{line}" if current.endswith("-") or not current else f"{current} {line}"
        if _SENTENCE_END.search(line):
            paragraphs.append(current)
            current = ""
    if current:
        paragraphs.append(current)
    return "\n".join(paragraphs)


def _pdf(path: Path, data: bytes) -> ParsedFile:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise _fail(path, "encrypted PDF (needs a password); decrypt it first") from exc
        raise _fail(path, "not a valid PDF (corrupt or truncated)") from exc
    units: list[TextUnit] = []
    empty_pages = 0
    try:
        for number in range(len(pdf)):
            page = pdf[number]
            try:
                text = reflow_pdf_text(page.get_textpage().get_text_bounded())
            finally:
                page.close()
            if text.strip():
                units.append(TextUnit(text, unit=number + 1))
            else:
                empty_pages += 1
    except pdfium.PdfiumError as exc:
        raise _fail(path, f"cannot read page {len(units) + empty_pages + 1} ({exc})") from exc
    finally:
        pdf.close()
    if not units:
        raise _fail(path, "no extractable text (a scanned PDF? run OCR on it first)")
    warnings = [f"{path.name}: {empty_pages} page(s) without text were skipped"] if empty_pages else []
    return ParsedFile(units, warnings)


def _plain(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    return ParsedFile([TextUnit(text)], [warning] if warning else [])


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

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise _fail(path, "not a valid .docx file (corrupt, or an old .doc saved under a new name)") from exc
    parts = [p.text for p in document.paragraphs if p.text.strip()]
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells]
            if any(cells):
                parts.append(" | ".join(cells))
    return ParsedFile([TextUnit("\n\n".join(parts))])


def _csv(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
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


def _flatten(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        lines: list[str] = []
        for key, item in value.items():
            lines.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return lines
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        return [f"{prefix}: {', '.join(str(v) for v in value)}" if prefix else ", ".join(str(v) for v in value)]
    if isinstance(value, list):
        lines = []
        for index, item in enumerate(value):
            lines.extend(_flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]"))
        return lines
    return [f"{prefix}: {value}" if prefix else str(value)]


def _records_to_text(records: list[Any]) -> str:
    return "\n\n".join("\n".join(_flatten(record)) for record in records)


def _json(path: Path, data: bytes) -> ParsedFile:
    text, warning = decode_text(data, path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
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
    parsed = reader_for(path)(path, data)
    if not any(unit.text.strip() for unit in parsed.units):
        raise _fail(path, "no text in it")
    return parsed


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise _fail(path, "no such file") from exc
    except IsADirectoryError as exc:
        raise _fail(path, "is a directory; use --input-dir") from exc
    except PermissionError as exc:
        raise _fail(path, "permission denied; make it readable") from exc
    except OSError as exc:
        raise _fail(path, f"cannot read it ({exc.strerror or exc})") from exc
    if not data:
        raise _fail(path, "empty file")
    return data
