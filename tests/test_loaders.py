"""Real files in, text out; every bad file is one clear InputFileError naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memgpt.data.loaders import parse, read_bytes, reflow_pdf_text
from memgpt.data.pdftext import Line, _line_runs, pdf_sections, reflow_lines
from memgpt.errors import InputFileError
from tests.conftest import DATA, PAPER, REPO


def read(path: Path):
    return parse(path, read_bytes(path))


def test_pdf_gives_one_unit_per_page_with_clean_text() -> None:
    parsed = read(PAPER)
    assert [u.unit for u in parsed.units] == list(range(1, 14))
    first = parsed.units[0].text
    assert first.startswith("MemGPT: Towards LLMs as Operating Systems")
    assert "revolutionized AI" in first  # PDFium's soft hyphen removed, the line joined
    assert "\x02" not in "".join(u.text for u in parsed.units)


def test_reflow_joins_lines_and_keeps_sentence_breaks() -> None:
    raw = "The quick brown\r\nfox jumps.\r\nstate-of-the-\r\nart models\r\n\r\nNew para"
    assert reflow_pdf_text(raw) == "The quick brown fox jumps.\nstate-of-the-art models\nNew para"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test.md", "h1 Heading"),
        ("long_test.txt", "Enrico Letta"),
        ("philosophical_question.txt", "unexamined assumptions"),
        ("test.json", "glossary.GlossDiv.GlossList.GlossEntry.GlossTerm: Standard Generalized Markup Language"),
        ("test.csv", "Index: 1; Name: Smart Fan Iron Cooker Go Wireless Portable; Description: Catch enough role"),
    ],
)
def test_text_formats(name: str, expected: str) -> None:
    parsed = read(DATA / name)
    assert len(parsed.units) == 1
    assert expected in parsed.units[0].text
    assert not parsed.warnings


def test_html_drops_scripts_and_keeps_text(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><style>p{}</style><script>var x=1</script></head>"
        "<body><h1>Title</h1><p>Hello <b>world</b>.</p></body></html>"
    )
    text = read(page).units[0].text
    assert "Title" in text and "Hello" in text and "world" in text
    assert "var x" not in text and "p{}" not in text


def test_docx_paragraphs_and_tables(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_paragraph("Virtual context management pages memory.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "tier"
    table.rows[0].cells[1].text = "archival"
    path = tmp_path / "notes.docx"
    document.save(str(path))
    text = read(path).units[0].text
    assert "Virtual context management" in text
    assert "tier | archival" in text


def test_jsonl_records(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "what", "a": 1}\n\n{"q": "why", "tags": ["x", "y"]}\n')
    assert read(path).units[0].text == "q: what\na: 1\n\nq: why\ntags: x, y"


@pytest.mark.parametrize(
    ("text", "encoding"),
    [("Café crème, naïve façade — déjà vu. ", "cp1252"), ("Привет, как дела? Это тест кодировки. ", "cp1251")],
)
def test_non_utf8_text_is_read_with_a_warning(tmp_path: Path, text: str, encoding: str) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes((text * 20).encode(encoding))
    parsed = read(path)
    assert parsed.units[0].text.startswith(text)
    assert parsed.warnings and "legacy.txt is not UTF-8; read it as" in parsed.warnings[0]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"   \n\n  ", "no text in it"),
        ("junk.txt", bytes(range(256)) * 40, "binary data"),
        ("junk.pdf", b"%PDF-1.4 this is not really a pdf" * 10, "not a valid PDF"),
        ("broken.json", b'{"a": 1,', "invalid JSON at line 1"),
        ("broken.docx", b"PK\x03\x04 not a zip", "not a valid .docx"),
        ("deep.json", b"[" * 6000 + b"]" * 6000, "nested too deeply to read"),
        ("deep.jsonl", b'{"ok": 1}\n' + b'{"a":' * 6000 + b"1" + b"}" * 6000, "line 2 is nested too deeply"),
    ],
)
def test_bad_files_fail_with_a_named_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputFileError) as caught:
        read(path)
    assert str(path) in str(caught.value)
    assert reason in caught.value.reason


def test_encrypted_pdf() -> None:
    with pytest.raises(InputFileError, match="encrypted PDF"):
        read(DATA / "encrypted.pdf")


def test_truncated_pdf(tmp_path: Path) -> None:
    path = tmp_path / "cut.pdf"
    path.write_bytes(PAPER.read_bytes()[:5000])
    with pytest.raises(InputFileError, match="not a valid PDF"):
        read(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_bytes(tmp_path / "nope.pdf")
    with pytest.raises(InputFileError, match="is a directory"):
        read_bytes(tmp_path)


def test_unreadable_file_names_the_permission_problem(open_tmp: Path) -> None:
    """Run as an unprivileged user when we are root, since root reads any file."""
    tmp_path = open_tmp
    secret = tmp_path / "secret.txt"
    secret.write_text("hidden")
    secret.chmod(0o000)
    code = (
        "import sys; from pathlib import Path; from memgpt.data.loaders import read_bytes\n"
        "try:\n    read_bytes(Path(sys.argv[1]))\nexcept Exception as e:\n    print(e)"
    )
    command = [sys.executable, "-c", code, str(secret)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    out = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert f"{secret}: permission denied; make it readable" in out.stdout, out.stderr


def test_json_nested_hundreds_deep_is_flattened(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' * 600 + '"bottom"' + "}" * 600)
    (line,) = read(path).units[0].text.splitlines()
    assert line == ".".join(["a"] * 600) + ": bottom"


def test_a_csv_field_over_the_csv_modules_limit_is_loaded(tmp_path: Path) -> None:
    field = "long text " * 20_000  # 200,000 characters: the csv module's default limit is 131,072
    path = tmp_path / "big.csv"
    path.write_text(f'title,body\nfirst,"{field}"\nsecond,short\n')
    text = read(path).units[0].text
    assert f"title: first; body: {field.strip()}" in text
    assert "title: second; body: short" in text


def test_csv_with_old_mac_line_ends_is_read(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(b"name,role\rada,engineer\rbob,writer\r")
    assert read(path).units[0].text == "name: ada; role: engineer\nname: bob; role: writer"


def test_docx_with_junk_xml_is_named(tmp_path: Path) -> None:
    import zipfile

    import docx

    good = tmp_path / "good.docx"
    document = docx.Document()
    document.add_paragraph("fine")
    document.save(str(good))
    junk = tmp_path / "junk.docx"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(junk, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, b"<<<not xml" if item.filename == "word/document.xml" else data)
    with pytest.raises(InputFileError, match=r"damaged \.docx: its XML is not valid") as caught:
        read(junk)
    assert caught.value.path == str(junk)


def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    """Reading a FIFO with no writer blocks forever; run it in a child so a regression fails, not hangs."""
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    code = (
        "import sys; from pathlib import Path; from memgpt.data.loaders import read_bytes\n"
        "try:\n    read_bytes(Path(sys.argv[1]))\nexcept Exception as e:\n    print(e)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert f"{fifo}: is a named pipe (FIFO), not a regular file" in out.stdout, out.stderr


def test_devices_and_symlink_loops_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="is a character device, not a regular file"):
        read_bytes(Path("/dev/null"))
    loop = tmp_path / "loop.txt"
    loop.symlink_to(tmp_path / "back.txt")
    (tmp_path / "back.txt").symlink_to(loop)
    with pytest.raises(InputFileError, match="is a symlink loop"):
        read_bytes(loop)
    dangling = tmp_path / "gone.txt"
    dangling.symlink_to(tmp_path / "missing.txt")
    with pytest.raises(InputFileError, match="is a broken symlink"):
        read_bytes(dangling)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * 300_000)  # 1.5 MB
    with pytest.raises(InputFileError, match=r"1\.5 MB, over the limit of 1\.0 MB per file; .* max_file_mb"):
        read_bytes(path, max_bytes=1_000_000)
    assert read_bytes(path, max_bytes=2_000_000).startswith(b"word ")


def test_whatever_a_parser_raises_costs_only_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from memgpt.data import loaders

    def broken(path: Path, data: bytes) -> loaders.ParsedFile:
        raise AssertionError("a parser bug met by hostile input")

    monkeypatch.setitem(loaders.READERS, ".html", broken)
    path = tmp_path / "page.html"
    path.write_text("<p>x</p>")
    with pytest.raises(InputFileError, match=r"cannot read it as \.html \(AssertionError: a parser bug"):
        read(path)


def test_an_unreadable_subfolder_is_named(open_tmp: Path) -> None:
    """A folder that --input-dir cannot list is one failure naming it (as an unprivileged user)."""
    top = open_tmp / "docs"
    (top / "private").mkdir(parents=True)
    (top / "a.md").write_text("readable")
    (top / "private").chmod(0o000)
    code = (
        "import sys; from pathlib import Path; from memgpt.data.ingest import collect_files\n"
        "from memgpt.data.loaders import read_bytes\n"
        "for path in collect_files(input_dir=Path(sys.argv[1]), recursive=True):\n"
        "    try:\n        read_bytes(path); print(path.name, 'ok')\n    except Exception as e:\n        print(e)"
    )
    command = [sys.executable, "-c", code, str(top)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    out = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert out.stdout.splitlines() == [
        "a.md ok",
        f"{top / 'private'}: is a folder that cannot be read (permission denied); make it readable",
    ], out.stderr


# -- sections: every unit split by the headings it falls under (issue 11) -------------------------
def _headings(path: Path) -> list[str]:
    return [s.heading for unit in read(path).units for s in unit.parts()]


def test_pdf_sections_follow_the_papers_numbered_and_bold_headings() -> None:
    units = read(PAPER).units
    assert [s.heading for s in units[1].parts()] == [
        "1. Introduction",  # runs on from page 1
        "2. MemGPT (MemoryGPT)",
        "2. MemGPT (MemoryGPT) > 2.1. Main context (prompt tokens)",
        "2. MemGPT (MemoryGPT) > 2.2. Queue Manager",
    ]
    queue = units[1].parts()[-1]
    assert queue.title == "2.2. Queue Manager" and queue.text.startswith("The queue manager manages messages")
    headings = _headings(PAPER)
    assert headings[:3] == ["MemGPT: Towards LLMs as Operating Systems", "Abstract", "1. Introduction"]
    # A title in small capitals that wraps onto a second line is one heading.
    deep = "3. Experiments > 3.1. MemGPT for conversational agents > 3.1.1. DEEP MEMORY RETRIEVAL TASK (CONSISTENCY)."
    assert deep in headings
    assert [s.heading for s in units[9].parts()] == ["References"]  # the reference list, on its own


def test_a_pdf_footnote_no_longer_cuts_the_sentence_it_interrupts() -> None:
    first = read(PAPER).units[0].text
    # The affiliation footnote sits at the foot of the first column, inside a sentence that goes on at the
    # top of the second: the sentence is whole and the footnote a paragraph of its own after it.
    assert "the most widely used open-source LLMs can only support a few dozen back-and-forth messages" in first
    assert "\n1 University of California, Berkeley. Correspondence to:" in first  # the footnote mark unglued
    later = "".join(u.text for u in read(PAPER).units[1:])
    assert "MemGPT: Towards LLMs as Operating Systems" not in later  # the running head, after page 1
    assert "\ufffe" not in later and "\x02" not in later


def test_pdf_figure_text_and_asides_atop_a_page_wait_for_the_sentence_it_continues() -> None:
    # Page 7 opens with the end of a sentence begun on page 6, under a chart whose ticks and legend are
    # body-sized text in a font without a weight: the sentence comes first, the chart's text after it.
    page = read(PAPER).units[6].text
    assert page.startswith("Izacard et al., 2021), and sampled a subset of 50 questions for evaluation.")
    assert "\n0 1 2 3 Nesting Level 0.0 0.2 0.4 0.6 0.8 1.0 Accuracy GPT-3.5 GPT-4 GPT-4 Turbo" in page


def test_a_figure_label_on_a_body_line_no_longer_cuts_a_word_in_two() -> None:
    # PDFium puts a chart's label on the baseline of the body line it sits next to, after the line's
    # soft hyphen ("sub-optimal re<soft hyphen>Who won the first Nobel Prize..."): the label is a line of
    # its own (its font is a tenth of the body's) and the hyphenated word is whole again.
    page = read(PAPER).units[6].text
    assert "is theoretically not limited by sub-optimal retriever performance (even if" in page
    assert "\nWho won the first Nobel Prize in physics?\n" in page
    assert reflow_lines(["sub-optimal re\ufffe", "triever performance."]) == ["sub-optimal retriever performance."]


def test_only_a_run_of_text_in_a_far_other_size_splits_a_pdf_line() -> None:
    def runs(text: str, sizes: dict[int, float]) -> list[tuple[str, float]]:
        lines = _line_runs(lambda i: (sizes.get(i, 10.0), 400), text, 0, len(text))
        return [(line.text, line.size) for line in lines]

    label = "sub-optimal re\ufffeWho won the first Nobel Prize?"
    at = label.index("Who")
    assert runs(label, dict.fromkeys(range(at, len(label)), 1.0)) == [
        ("sub-optimal re\ufffe", 10.0),
        ("Who won the first Nobel Prize?", 1.0),
    ]
    assert runs("The quick brown fox.", {0: 30.0}) == [("The quick brown fox.", 10.0)]  # a drop cap
    assert runs("Packer 1 Sarah Wooders", {7: 4.0}) == [("Packer 1 Sarah Wooders", 10.0)]  # a mark


def test_pdf_flow_sets_asides_and_figure_text_apart_from_the_body() -> None:
    def body(text: str) -> Line:
        return Line(text, 10.0, 400)

    prose = "The method was tested on a benchmark that many earlier systems used as well, by"
    first = [body(prose)] * 3
    second = [
        Line("0 1 2 3 Nesting Level", 8.0, 400),  # a figure's axis, smaller than the body
        Line("0.0 0.5 1.0", 10.0, 0),  # its ticks, body-sized but weightless
        Line("GPT-4 Turbo", 10.0, 0),
        body("Smith et al., 2021), and sampled fifty questions."),
        Line("1University of Somewhere. Correspondence to: a@b.c", 8.0, 400),
    ]
    pages = pdf_sections([first, second])
    assert pages[1][0].text.split("\n") == [
        "Smith et al., 2021), and sampled fifty questions.",
        "0 1 2 3 Nesting Level 0.0 0.5 1.0 GPT-4 Turbo",
        "1 University of Somewhere. Correspondence to: a@b.c",
    ]


def test_a_pdf_affiliation_footnote_joins_the_title_block_it_annotates() -> None:
    # The paper's affiliation footnote sits at the foot of the introduction's first column; its mark follows
    # each author's name in the title block, so it is read there ("which university are the authors from?").
    sections = read(PAPER).units[0].parts()
    title, introduction = sections[0], next(s for s in sections if s.heading == "1. Introduction")
    assert title.heading == "MemGPT: Towards LLMs as Operating Systems"
    assert title.text.endswith(
        "Joseph E. Gonzalez 1\n1 University of California, Berkeley. Correspondence to:\n"
        "Charles Packer <cpacker@berkeley.edu>."
    )
    assert "University of California" not in introduction.text


def test_only_a_first_page_footnote_marked_in_the_title_block_moves_to_it() -> None:
    def body(text: str) -> Line:
        return Line(text, 10.0, 400)

    prose = "The method was tested on a benchmark that many earlier systems used as well, by"
    first = [
        Line("A Study of Things", 16.0, 700),
        body("Ann Smith 1 Bob Jones 1"),
        Line("1. Introduction", 10.0, 700),
        body(prose),
        Line("1University of Somewhere. Correspondence to:", 8.0, 400),
        Line("Ann Smith <ann@some.where>.", 8.0, 400),
        Line("2Code at a site.", 8.0, 400),  # a footnote, but not the title block's: it stays in place
        body("sampling fifty questions."),
        *[body(prose + " more.")] * 4,
    ]
    pages = pdf_sections([first, [body(prose + " end.")] * 3])
    title, introduction = pages[0]
    assert title.text.split("\n") == [
        "Ann Smith 1 Bob Jones 1",
        "1 University of Somewhere. Correspondence to:",
        "Ann Smith <ann@some.where>.",
    ]
    assert introduction.text.split("\n")[:2] == [f"{prose} sampling fifty questions.", "2 Code at a site."]
    # The same footnote on a later page is an ordinary footnote.
    later = pdf_sections([[body(prose + " end.")] * 3, first[3:]])
    assert "1 University of Somewhere. Correspondence to:" in later[1][0].text.split("\n")


def test_markdown_headings_outside_code_fences(tmp_path: Path) -> None:
    headings = _headings(DATA / "test.md")
    assert "h1 Heading 8-) > Lists" in headings
    assert "h1 Heading 8-) > Plugins > Footnotes" in headings  # the link in "## [Footnotes](https://...)"
    path = tmp_path / "notes.md"
    path.write_text(
        "Intro line.\n\nSetext Title\n============\n\nBody.\n\n```sh\n# not a heading\n```\n\n## Sub\nMore.\n"
    )
    sections = read(path).units[0].parts()
    assert [(s.heading, s.text) for s in sections] == [
        ("", "Intro line."),
        ("Setext Title", "Body.\n\n```sh\n# not a heading\n```"),
        ("Setext Title > Sub", "More."),
    ]


def test_plain_text_titles_before_prose_are_headings() -> None:
    headings = _headings(DATA / "long_test.txt")
    for title in ("Early life and education", "Government formation", "Immigration policies", "Personal life"):
        assert title in headings
    assert "References" in headings
    # Lines of a list or table are not headings, nor are indented lines (the reference list's entries).
    assert not any("Minister for the Community Policies" in h or "Quirinale" in h for h in headings)


def test_rst_titles(tmp_path: Path) -> None:
    path = tmp_path / "guide.rst"
    path.write_text("=====\nGuide\n=====\n\nIntro.\n\nInstall\n-------\n\nRun pip.\n\nUsage\n-----\n\nCall it.\n")
    assert [(s.heading, s.text) for s in read(path).units[0].parts()] == [
        ("Guide", "Intro."),
        ("Guide > Install", "Run pip."),
        ("Guide > Usage", "Call it."),
    ]


def test_docx_heading_styles(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Memory tiers", level=1)
    document.add_paragraph("Main context is the prompt.")
    document.add_heading("Archival storage", level=2)
    document.add_paragraph("Passages live in Milvus.")
    path = tmp_path / "tiers.docx"
    document.save(str(path))
    unit = read(path).units[0]
    assert [(s.heading, s.text) for s in unit.parts()] == [
        ("Memory tiers", "Main context is the prompt."),
        ("Memory tiers > Archival storage", "Passages live in Milvus."),
    ]
    assert unit.text.startswith("Memory tiers\nMain context is the prompt.")
