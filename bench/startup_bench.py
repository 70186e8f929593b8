"""Whole-command wall time of the everyday commands, beside the work each one does.

Usage: python bench/startup_bench.py [--runs 5] [--skip-load] [--tree [LABEL=]PATH ...]

Every run is a new `memgpt` process (`python -m memgpt`), as a user starts it; the commands take turns
(run 1 of each, then run 2 of each, ...) so a burst of load on a shared machine hits them all alike.
`load` starts from a new home each time; `search`, `list sources` and `run --message` use a home that
already holds the seed paper and an agent. `run` talks to the scripted LLM server of the tests, which
answers at once, so its time is memgpt's own.

The work a command cannot avoid is measured warm (bench/_startup_work.py): parsing, chunking, embedding
and inserting the paper for `load`; embedding the query and searching for `search`; for `run --message`,
the turn on an open agent (the prompt, the scripted LLM's answer, the step stored, its messages indexed in
recall). "start-up" is the whole command's median minus the work's median: imports, opening SQLite and
Milvus Lite, loading the embedding model, and whatever else a new process pays. The work is measured in a
new process (and a new home) after each round of the commands, so it is sampled as they are: `load`'s work,
measured in one process per tree, moved by 0.2-0.5 s between two processes of the same loading code on a
quiet machine, so its start-up was a median less a single draw.

`--tree PATH` measures the memgpt package found in PATH (e.g. an older checkout exported with
`git archive`); given twice, the two take turns run by run, for a before/after table. The parts table
(bench/_startup_parts.py) times start-up's pieces in new processes of the last tree.

pymemgpt 0.3.25 is not measured here: it needs lancedb<0.4, which this machine's package index no
longer offers (its oldest is 0.14), so it cannot be installed; the README quotes the issue's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scripted_llm import ScriptedLLM  # noqa: E402 - the bench runs from a checkout

PAPER = ROOT / "tests" / "data" / "memgpt_research_paper.pdf"
QUERY = "How does MemGPT manage its context window?"


@dataclass
class Command:
    name: str
    args: list[str]
    fresh_home: bool = False  # a new, empty home for every run
    work: str = ""  # which measured work the command contains
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + system seconds of the process and its children


def commands() -> list[Command]:
    return [
        Command("--help", ["--help"]),
        Command("list sources", ["list", "sources"]),
        Command("search", ["search", "paper", QUERY], work="search"),
        Command("run --message", ["run", "--agent", "bench", "--message", "hello"], work="step"),
        Command(
            "load (seed paper)", ["load", "directory", "--name", "paper", f"--input-files={PAPER}"], True, "load"
        ),
    ]


class Runner:
    def __init__(self, tree: Path, scratch: Path, llm: ScriptedLLM) -> None:
        self.tree = tree
        compile_tree(tree)
        self.scratch = scratch
        self.env = {**os.environ, "PYTHONPATH": str(tree), "OPENAI_BASE_URL": llm.url, "NO_COLOR": "1"}
        self.env.pop("OPENAI_API_KEY", None)
        self.home = scratch / "home"
        self._fresh = 0

    def run(self, args: list[str], home: Path) -> tuple[float, float]:
        # Run from the scratch folder: the working directory comes first on sys.path and must not
        # shadow the tree under test.
        before = _children_cpu()
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "memgpt", *args],
            env={**self.env, "MEMGPT_HOME": str(home)},
            cwd=self.scratch,
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(f"`memgpt {' '.join(args)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return took, _children_cpu() - before

    def time(self, command: Command) -> None:
        home = self.home
        if command.fresh_home:
            self._fresh += 1
            home = self.scratch / f"fresh-{self._fresh}"
        took, cpu = self.run(command.args, home)
        command.times.append(took)
        command.cpu.append(cpu)


def compile_tree(tree: Path) -> None:
    """Byte-compile the tree's memgpt package once, as installing it does. Without it, a tree exported with
    `git archive`, a read-only one, or any tree in a shell with PYTHONDONTWRITEBYTECODE set (as this
    machine's sessions have) compiles its ~75 modules from source in every timed process: ~0.1 CPU s of
    `run --message` that no installed memgpt pays. The files go to the tree's own __pycache__ folders."""
    import compileall

    if not compileall.compile_dir(tree / "memgpt", quiet=1):
        raise SystemExit(f"cannot byte-compile {tree / 'memgpt'}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def work(runner: Runner, *, with_load: bool, round_: int) -> dict[str, float]:
    """The unavoidable work, measured warm in a new process (and home) of the tree under test."""
    extra = ["1"] if with_load else ["search-only"]
    done = subprocess.run(
        [sys.executable, str(runner.tree / "bench" / "_startup_work.py"), str(PAPER), QUERY, *extra],  # the tree's own
        env={**runner.env, "MEMGPT_HOME": str(runner.scratch / f"work-home-{round_}")},
        cwd=runner.scratch,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"the work of {runner.tree} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(name: str, times: list[float], cpu: list[float], works: list[float] | None) -> str:
    median = statistics.median(times)
    spread = f"{min(times):.2f} – {max(times):.2f}"
    cpu_s = f"{statistics.median(cpu):.2f}" if cpu else "–"
    if not works:
        return f"| {name} | {median:.2f} | {spread} | {cpu_s} | – | – |"
    work_s = statistics.median(works)
    return f"| {name} | {median:.2f} | {spread} | {cpu_s} | {work_s:.2f} | {median - work_s:.2f} |"


PARTS = ["cli", "milvus", "model", "sequential", "overlapped"]
PART_NAMES = {
    "cli": "import the CLI (all `--help` loads)",
    "milvus": "open Milvus Lite (import pymilvus, start, connect)",
    "model": "load the embedding model (import onnxruntime, session)",
    "sequential": "Milvus, then the model (one after the other)",
    "overlapped": "model session in a thread while Milvus opens (now)",
}


def parts(runner: Runner, runs: int) -> dict[str, list[float]]:
    """Each part of start-up in a new process of the tree under test, the parts taking turns."""
    found: dict[str, list[float]] = {part: [] for part in PARTS}
    script = str(ROOT / "bench" / "_startup_parts.py")
    for _ in range(runs):
        for part in PARTS:
            done = subprocess.run(
                [sys.executable, script, part, str(runner.home)],
                env=runner.env,
                cwd=runner.scratch,
                capture_output=True,
                text=True,
                check=True,
            )
            found[part].append(float(done.stdout.strip().splitlines()[-1]))
    return found


def parse_tree(value: str) -> tuple[str, Path]:
    label, _, path = value.rpartition("=")
    return label or Path(path).name, Path(path).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--tree",
        type=parse_tree,
        action="append",
        help="[LABEL=]folder holding the memgpt package to measure; repeat it to compare checkouts, run by run",
    )
    parser.add_argument("--skip-load", action="store_true", help="leave out `load` (the slowest to repeat)")
    args = parser.parse_args()
    trees: list[tuple[str, Path]] = args.tree or [("memgpt", ROOT)]
    llm = ScriptedLLM()
    # A reply for each run of `run --message`, the home's first turn and the four turns of each work process.
    replies = len(trees) * (args.runs * 5 + 9)
    llm.add(*({"tool": "send_message", "args": {"message": "hi"}} for _ in range(replies)))
    with tempfile.TemporaryDirectory() as tmp:
        plans: list[tuple[str, Runner, list[Command], dict[str, list[float]]]] = []
        for index, (label, tree) in enumerate(trees):
            scratch = Path(tmp) / f"tree-{index}"
            scratch.mkdir()
            runner = Runner(tree, scratch, llm)
            cmds = commands()
            runner.run(cmds[-1].args, runner.home)  # the home the other commands use: the paper and an agent
            runner.run(cmds[3].args, runner.home)
            plans.append((label, runner, cmds[:-1] if args.skip_load else cmds, {}))
        for round_ in range(args.runs):
            for position in range(len(plans[0][2])):
                for _label, runner, timed, _work in plans:
                    runner.time(timed[position])
            for _label, runner, _timed, measured in plans:
                for key, took in work(runner, with_load=not args.skip_load, round_=round_).items():
                    measured.setdefault(key, []).append(took)
        pieces = parts(plans[-1][1], args.runs)
    llm.close()

    print(f"\n### Start-up: whole commands ({args.runs} alternating runs each, new process each)\n")
    print("| command | median s | min – max s | CPU s | work s | start-up s |")
    print("|---|---|---|---|---|---|")
    for position in range(len(plans[0][2])):
        for label, _runner, timed, measured in plans:
            command = timed[position]
            name = f"memgpt {command.name}" + (f" ({label})" if len(plans) > 1 else "")
            print(row(name, command.times, command.cpu, measured.get(command.work)))
    for label, _runner, _timed, measured in plans:
        done = ", ".join(
            f"{k} {statistics.median(v):.3f} s ({min(v):.3f} – {max(v):.3f})" for k, v in measured.items()
        )
        print(f"\nwork of {label}, measured warm, median (min – max) of {args.runs} processes: {done}")
    print(f"\n### Start-up parts ({plans[-1][0]}; {args.runs} alternating runs, each in a new process)\n")
    print("| part | median s | min – max s |")
    print("|---|---|---|")
    for part, times in pieces.items():
        print(f"| {PART_NAMES[part]} | {statistics.median(times):.2f} | {min(times):.2f} – {max(times):.2f} |")


if __name__ == "__main__":
    main()
