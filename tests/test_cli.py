"""The seed's commands through the real `memgpt` executable, with no terminal attached."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import DATA, PAPER, REPO, cli, run_cli
from tests.test_embeddings import CTRL_C_DURING_IMPORT


def test_help_and_version(home: Path) -> None:
    result = run_cli("--help", home=home)
    assert result.returncode == 0
    for command in ("configure", "load", "list", "delete", "search"):
        assert command in result.stdout
    assert run_cli("--version", home=home).stdout.startswith("memgpt ")


def test_configure_with_flags_as_in_the_seed(home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # so "~" is a temporary folder
    result = cli(
        "configure",
        "--archival-storage",
        "milvus",
        "--milvus-uri",
        "~/.memgpt/milvus.db",
        "--llm-provider",
        "ollama",
        "--llm-model",
        "llama3.1",
        "--llm-context-window",
        "8192",
        "--no-llm-check",  # no Ollama runs here; tests/test_llm_check.py covers the check
        home=home,
    )
    assert result.returncode == 0, result.stderr
    assert "archival storage: milvus at ~/.memgpt/milvus.db (Milvus Lite)" in result.stdout
    saved = tomllib.loads((home / "config.toml").read_text())
    assert saved["milvus"]["uri"] == "~/.memgpt/milvus.db"
    llm = saved["llm"]
    assert (llm["provider"], llm["model"], llm["endpoint"], llm["context_window"]) == (
        "ollama",
        "llama3.1",
        "http://localhost:11434/v1",
        8192,
    )
    assert (tmp_path / ".memgpt" / "milvus.db").exists()  # opened at configure time, "~" expanded


def test_configure_refuses_what_cannot_work(home: Path) -> None:
    for args, message in [
        (["--milvus-uri", "http://127.0.0.1:1"], "cannot connect to Milvus at http://127.0.0.1:1"),
        (["--milvus-uri", str(home / "no-suffix")], "must end in .db"),
        (["--archival-storage", "chroma"], "--archival-storage must be milvus"),
        (["--milvus-database", "team"], "--milvus-database needs a Milvus server URI"),
        (["--llm-provider", "nope"], "--llm-provider must be one of"),
        (
            [
                "--embedding-provider",
                "openai",
                "--embedding-model",
                "x",
                "--embedding-endpoint",
                "http://127.0.0.1:1/v1",
            ],
            "check the endpoint, or pass --embedding-dim",
        ),
    ]:
        result = cli("configure", *args, home=home)
        assert result.returncode == 1, args
        assert message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
        if (home / "config.toml").exists():
            assert "127.0.0.1:1" not in (home / "config.toml").read_text()


def test_the_seed_load_list_search_delete(home: Path, tmp_path: Path, monkeypatch) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(PAPER, workdir / "memgpt_research_paper.pdf")
    monkeypatch.chdir(workdir)
    result = cli(
        "load", "directory", "--name", "memgpt_research_paper", "--input-files=memgpt_research_paper.pdf", home=home
    )
    assert result.returncode == 0, result.stderr
    loaded = re.fullmatch(r"Loaded (\d+) passages and 13 documents from memgpt_research_paper\n", result.stdout)
    assert loaded, result.stdout
    passages = int(loaded[1])
    assert "Loading files" in result.stderr

    listed = json.loads(cli("list", "sources", "--json", home=home).stdout)
    assert [(s["name"], s["documents"], s["passages"], s["embedding_model"]) for s in listed] == [
        ("memgpt_research_paper", 13, passages, "all-MiniLM-L6-v2")
    ]
    table = cli("list", "sources", home=home).stdout
    assert "memgpt_research_paper" in table and str(passages) in table

    found = json.loads(
        cli("search", "memgpt_research_paper", "deep memory retrieval", "-k", "5", "--json", home=home).stdout
    )
    assert len(found) == 5
    assert found[0]["file_name"] == "memgpt_research_paper.pdf" and 1 <= found[0]["page"] <= 13
    assert any("deep memory retrieval" in row["text"].lower() for row in found)
    shown = cli("search", "memgpt_research_paper", "deep memory retrieval", home=home).stdout
    assert "memgpt_research_paper.pdf p." in shown

    again = cli(
        "load", "directory", "--name", "memgpt_research_paper", "--input-files=memgpt_research_paper.pdf", home=home
    )
    assert again.returncode == 0
    assert "Loaded 0 passages and 0 documents" in again.stdout and "unchanged" in again.stdout

    refused = cli("delete", "source", "memgpt_research_paper", home=home)
    assert refused.returncode == 1 and "pass -y" in refused.stderr
    deleted = cli("delete", "source", "memgpt_research_paper", "-y", home=home)
    assert deleted.returncode == 0
    assert f"Deleted source 'memgpt_research_paper' and {passages} passages" in deleted.stdout
    assert json.loads(cli("list", "sources", "--json", home=home).stdout) == []


def test_load_reports_failures_in_the_exit_code(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"not a pdf at all")
    result = cli(
        "load",
        "directory",
        "--name",
        "docs",
        "--input-files",
        str(DATA / "test.md"),
        "--input-files",
        str(bad),
        home=home,
    )
    assert result.returncode == 1
    assert "Loaded" in result.stdout and "and 1 documents from docs" in result.stdout
    assert f"warning: {bad}: not a valid PDF" in result.stderr
    assert "1 file(s) could not be loaded" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_load_that_loads_nothing_says_so_and_makes_no_source(home: Path, tmp_path: Path) -> None:
    """An empty file and a blank one, alone: it said "Loaded 0 passages and 0 documents from e" of a source that
    `list sources` then did not show. Now one line says nothing was loaded and no source made; exit 1."""
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "blank.md").write_text("\n  \n")
    files = [f"--input-files={tmp_path / name}" for name in ("empty.md", "blank.md")]
    result = cli("load", "directory", "--name", "e", *files, home=home)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith(("warning: ", "Loading files"))]
    assert errors == [
        "error: nothing loaded: 2 file(s) could not be loaded (warnings above), so source 'e' was not created"
    ]
    assert json.loads(cli("list", "sources", "--json", home=home).stdout) == []

    # Into a source that exists, the same files leave it as it was, and the usual summary says so.
    assert cli("load", "directory", "--name", "e", f"--input-files={DATA / 'test.md'}", home=home).returncode == 0
    again = cli("load", "directory", "--name", "e", *files, home=home)
    assert again.returncode == 1 and "Loaded 0 passages and 0 documents from e" in again.stdout
    assert "2 file(s) could not be loaded (warnings above)" in again.stderr


def test_input_dir_with_extensions(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(DATA / "test.md", folder / "a.md")
    shutil.copy(DATA / "test.json", folder / "b.json")
    shutil.copy(DATA / "philosophical_question.txt", folder / "nested" / "c.txt")
    result = cli(
        "load",
        "directory",
        "--name",
        "dir",
        "--input-dir",
        str(folder),
        "--recursive",
        "--extensions",
        ".md,.txt",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"and 2 documents from dir", result.stdout)
    missing = cli("load", "directory", "--name", "dir", "--input-dir", str(tmp_path / "nope"), home=home)
    assert missing.returncode == 1 and "not a directory" in missing.stderr


def test_unknown_source_is_one_line(home: Path) -> None:
    result = cli("search", "ghost", "anything", home=home)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no source named 'ghost' (sources: none yet); create it with `memgpt load`"


@pytest.mark.parametrize(
    ("module", "command"),
    [
        ("memgpt.interrupts", ["list", "sources"]),  # the first thing main() imports
        ("typer", ["list", "sources"]),  # while the command modules load, before any command runs
        ("sqlalchemy", ["list", "sources"]),  # inside a command, where Typer turns it into a silent exit
        ("pymilvus", ["load", "directory", "--name", "s", f"--input-files={DATA / 'test.md'}"]),
        ("onnxruntime", ["load", "directory", "--name", "s", f"--input-files={DATA / 'test.md'}"]),
    ],
)
def test_ctrl_c_at_start_up_says_interrupted(home: Path, module: str, command: list[str]) -> None:
    code = CTRL_C_DURING_IMPORT + "sys.argv = ['memgpt', *sys.argv[2:]]\nfrom memgpt.cli import main\nmain()\n"
    env = {**os.environ, "MEMGPT_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", code, module, *command], env=env, capture_output=True, text=True, timeout=300
    )
    assert f"sending SIGINT while importing {module}" in result.stderr
    assert result.returncode == 130, result.stderr
    assert "Interrupted" in result.stderr
    assert "Traceback" not in result.stderr and "reinstall" not in result.stderr


def test_search_where_milvus_holds_nothing_is_quiet(home: Path) -> None:
    """As after a fresh Milvus file: `[]` without Milvus Lite's C++ assertion or pymilvus's traceback."""
    loaded = cli("load", "directory", "--name", "notes", f"--input-files={DATA / 'test.md'}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    (home / "milvus.db").unlink()
    result = cli("search", "notes", "heading", home=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "No passages in 'notes' match.\n"
    assert result.stderr == ""


def run_at_width(*args: str, home: Path, columns: int) -> str:
    """The command's output as an 80-column terminal or a pipe would get it."""
    env = {**os.environ, "MEMGPT_HOME": str(home), "COLUMNS": str(columns), "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "memgpt", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tables_never_cut_the_names_people_type(home: Path) -> None:
    source = "memgpt_research_paper_with_appendix_2024"  # 40 characters: "memgpt_research…" before
    persona = "a_persona_with_quite_a_long_name_indeed"
    huge = "n" * 120  # wider than the terminal: folded over lines, never cut
    for name in (source, huge):
        loaded = cli("load", "directory", "--name", name, f"--input-files={DATA / 'test.md'}", home=home)
        assert loaded.returncode == 0, loaded.stderr
    assert cli("add", "persona", "--name", persona, "--text", "I help.", home=home).returncode == 0

    sources = run_at_width("list", "sources", home=home, columns=80)
    assert "…" not in sources
    assert any(f"│ {source} " in line for line in sources.splitlines())  # whole, on one line
    assert "".join(line.split("│")[1].strip() for line in sources.splitlines() if line.startswith("│ n")) == huge
    personas = run_at_width("list", "personas", home=home, columns=80)
    assert "…" not in personas and f"│ {persona} " in personas
    found = run_at_width("search", source, "heading", home=home, columns=80).splitlines()
    assert column(found, 1) and set(column(found, 1)) == {"test.md"}, found  # passages end in "…"; names never
    assert all(len(line) <= 80 for line in found) and any(cell.endswith("…") for cell in column(found, 2)), found

    (home.parent / "notes.txt").write_text("The lighthouse keeper\n\n  wrote\r\nthree lines\n", encoding="utf-8")
    loaded = cli("load", "directory", "--name", "nl", f"--input-files={home.parent / 'notes.txt'}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    table = cli("search", "nl", "lighthouse", home=home).stdout.splitlines()  # in this process, at COLUMNS=200
    assert column(table, 2) == ["The lighthouse keeper ↵ wrote ↵ three lines"], table
    found_json = json.loads(cli("search", "nl", "lighthouse", "--json", home=home).stdout)
    assert "\n" in found_json[0]["text"] and "↵" not in found_json[0]["text"]  # --json keeps the text as it is


def run_unprivileged(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """`memgpt` as a user that file modes bind: root writes anywhere, so as root it runs as nobody
    (``home`` must then be in ``open_tmp``)."""
    command = [sys.executable, "-m", "memgpt", *args]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {**os.environ, "MEMGPT_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)


def make_read_only(*paths: Path) -> None:
    """Readable by anyone (as the owner's own files are to the owner), writable by no one."""
    for path in paths:
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            item.chmod(0o555 if item.is_dir() else 0o444)


def test_a_read_only_home_says_which_path_and_what_to_do(open_tmp: Path) -> None:
    home = open_tmp / "home"
    loaded = run_cli("load", "directory", "--name", "notes", f"--input-files={DATA / 'test.md'}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    make_read_only(home)
    for args in (["list", "sources"], ["search", "notes", "heading"]):
        result = run_unprivileged(*args, home=home)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"error: cannot write the metadata database at {home / 'metadata.sqlite'}: ")
        assert "is read-only; make it writable, or set MEMGPT_HOME to a writable folder" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    fresh = open_tmp / "locked" / "home"
    fresh.parent.mkdir()
    make_read_only(fresh.parent)
    result = run_unprivileged("list", "sources", home=fresh)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot write the configuration at {fresh / 'config.toml'}: the folder {fresh.parent} is read-only; "
        "make it writable, or set MEMGPT_HOME to a writable folder\n"
    )


def test_a_read_only_milvus_lite_file_says_so(open_tmp: Path) -> None:
    home = open_tmp / "home"
    loaded = run_cli("load", "directory", "--name", "notes", f"--input-files={DATA / 'test.md'}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    for item in [home, *home.iterdir()]:  # the home stays writable for whoever runs the command
        item.chmod(0o777 if item.is_dir() else 0o666)
    make_read_only(home / "milvus.db")
    result = run_unprivileged("search", "notes", "heading", home=home)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot write the Milvus Lite database at {home / 'milvus.db'}: the file {home / 'milvus.db'} is "
        "read-only; make it writable, or choose another Milvus Lite file with `memgpt configure`\n"
    )


def test_hostile_file_names_are_named_in_one_line_and_cost_only_themselves(home: Path, tmp_path: Path) -> None:
    """A name with a newline and a terminal escape is written out in its one warning line (it split the line,
    and the raw ESC recoloured the terminal); a name that is not UTF-8 (Latin-1 bytes) is refused alone (its
    name crashed the whole load with a UnicodeEncodeError traceback, and nothing loaded)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "test.md", folder / "good.md")
    (folder / "bad\nname\x1b[31m.json").write_text("{not json")
    Path(os.fsdecode(bytes(folder) + b"/caf\xe9.md")).write_text("a note about the cafe")
    result = cli("load", "directory", "--name", "hostile", f"--input-dir={folder}", home=home)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr
    warnings = sorted(line for line in result.stderr.splitlines() if line.startswith("warning: "))
    assert warnings == [
        f"warning: {folder}/bad\\nname\\x1b[31m.json: invalid JSON at line 1, column 2: Expecting property name "
        "enclosed in double quotes",
        f"warning: {folder}/caf\\xe9.md: its name is not valid UTF-8; rename it (e.g. `convmv -f latin1 -t utf-8`)",
    ]
    assert "2 file(s) could not be loaded" in result.stderr
    [source] = json.loads(cli("list", "sources", "--json", home=home).stdout)
    assert source["name"] == "hostile" and source["documents"] == 1  # good.md


def test_bad_files_in_a_folder_cost_only_themselves(home: Path, tmp_path: Path) -> None:
    """The fault suite's crashers through the real command: each is one line, the rest loads, exit 1."""
    import zipfile

    import docx

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "test.md", folder / "good.md")
    (folder / "deep.json").write_text("[" * 6000 + "]" * 6000)
    (folder / "big.csv").write_text('title,body\nlong,"' + "x" * 140_000 + '"\n')  # over 131,072
    document = docx.Document()
    document.add_paragraph("fine")
    document.save(str(tmp_path / "ok.docx"))
    with zipfile.ZipFile(tmp_path / "ok.docx") as source, zipfile.ZipFile(folder / "junk.docx", "w") as target:
        for item in source.infolist():
            target.writestr(item, b"<<<junk" if item.filename == "word/document.xml" else source.read(item))
    (folder / "loop.txt").symlink_to(folder / "loop.txt")
    os.mkfifo(folder / "pipe.txt")
    result = cli("load", "directory", "--name", "mixed", f"--input-dir={folder}", home=home)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "Loaded" in result.stdout and "and 2 documents from mixed" in result.stdout  # good.md, big.csv
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert sorted(Path(line.split(": ")[1]).name for line in warnings) == [
        "deep.json",
        "junk.docx",
        "loop.txt",
        "pipe.txt",
    ]
    assert "4 file(s) could not be loaded" in result.stderr


def test_json_output_escapes_c1_controls(home: Path, tmp_path: Path) -> None:
    """`--json` writes DEL and C1 controls (0x9b is CSI to a terminal) as JSON escapes, as it does C0 ones (was:
    raw), and still decodes to the text as loaded."""
    text = "The lighthouse keeper \x9b31m wrote\nabout the lighthouse \x85 and the sea, café"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "c1.txt").write_text(text, encoding="utf-8")
    loaded = cli("load", "directory", "--name", "c1", f"--input-dir={tmp_path / 'docs'}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    result = cli("search", "c1", "lighthouse", "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stdout), result.stdout
    assert "\\u009b31m" in result.stdout and "café" in result.stdout  # other non-ASCII text stays as it is
    assert json.loads(result.stdout)[0]["text"] == text


def test_a_console_prints_at_the_width_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """memgpt's consoles are made once, as memgpt.cli.common is imported, and rich fixed their width from the
    COLUMNS of that moment: a pytest-xdist worker inherits COLUMNS=80 (GNU readline sets it in the controller
    when pytest imports it), so every in-process ``cli()`` there printed at 80 columns though it sets 200."""
    from memgpt.cli.common import TerminalConsole

    monkeypatch.setenv("COLUMNS", "80")
    made = TerminalConsole(highlight=False, soft_wrap=True)
    monkeypatch.setenv("COLUMNS", "200")
    assert made.width == 200
    assert TerminalConsole(width=50).width == 50  # a width given stays


def rendered(table: object, width: int) -> list[str]:
    """``table`` as memgpt's console prints it at ``width`` columns, line by line."""
    import io

    from memgpt.cli.common import TerminalConsole

    out = io.StringIO()
    TerminalConsole(file=out, width=width, highlight=False, soft_wrap=True).print(table)
    return out.getvalue().splitlines()


def column(lines: list[str], index: int) -> list[str]:
    """The cells of a table's column ``index``, one per line of the table's body."""
    return [line.split("│")[index + 1].strip() for line in lines if line.startswith("│")]


def test_search_table_shows_each_passage_on_one_line_and_each_file_name_whole() -> None:
    """A passage is one line of the table, its line breaks marked (↵) and its end cut with "…" at the table's
    edge (a passage a screen tall made a row as tall, the Document column empty beside it); the file name is
    never cut: on one line while the table leaves the passages a few characters, folded over lines, whole, at
    any narrower width. Control characters and rich markup in a passage are shown as written."""
    from memgpt.cli.sources import hits_table
    from memgpt.types import Passage, SearchHit

    long_name = "memgpt_research_paper_with_appendix_2024.pdf"
    text = "The lighthouse keeper\n\n  wrote\r\nthree [bold]lines[/bold]\tand \x1b[31m" + " more" * 100 + "\n"
    hits = [
        SearchHit(Passage("a", text, "u", metadata={"file_name": long_name, "page": 12}), 0.912),
        SearchHit(Passage("b", "short\none", "u", metadata={"file_name": "a.md"}), 0.5),
    ]
    one_line = "The lighthouse keeper ↵ wrote ↵ three [bold]lines[/bold] and \\x1b[31m more more"
    for width in (200, 120, 80, 60, 40, 24):
        lines = rendered(hits_table(hits, width=width), width)
        assert all(len(line) <= width for line in lines), (width, lines)
        names, texts = column(lines, 1), column(lines, 2)
        if width >= 80:  # the name fits beside 8 characters of passage: one line per hit
            assert names == [f"{long_name} p.12", "a.md"] and len(texts) == 2, lines
            assert texts[0].startswith(one_line[: len(texts[0]) - 1]) and texts[0].endswith("…"), lines
            assert texts[1] == "short ↵ one", lines
        else:  # folded, whole
            assert "".join(names) == f"{long_name}p.12a.md", (width, lines)  # its space wraps
            assert texts[0].endswith("…") and [cell for cell in texts if cell] == [texts[0], texts[-1]], lines
        assert "…" not in "".join(names) and "\x1b" not in "\n".join(lines)
    assert one_line in "".join(column(rendered(hits_table(hits, width=500), 500), 2))


@pytest.mark.parametrize("width", [12, 30, 50, 80, 200])
def test_list_tables_never_cut_a_name_at_any_width(width: int) -> None:
    from memgpt.cli.common import names_table

    names = ["memgpt_research_paper_with_appendix_2024", "n" * 120, "s"]
    table = names_table("Name", "Documents", "Created", names=names, width=width)
    for name in names:
        table.add_row(name, "3", "2026-11-28 14:35")
    lines = rendered(table, width)
    cells = column(lines, 0)
    assert "…" not in "".join(cells) and "".join(cells) == "".join(names), lines
    if width >= 80:
        assert cells[0] == names[0], lines  # fits: on one line
