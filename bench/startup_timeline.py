"""Where the main thread of one `memgpt` command spends its start-up: CPU, waiting for a CPU, or asleep.

Usage: python bench/startup_timeline.py [--runs 3] [--tree PATH] [--top 25] [--fresh | --home PATH] [-- ARGS...]

Without ARGS it times `memgpt run --agent bench --message hello` against the scripted LLM of the tests (which
answers at once), on a new home whose agent is made first, untimed (the command is run once first); with
--fresh every run has a new home and nothing runs first (e.g. `-- load directory --name paper
--input-files=tests/data/memgpt_research_paper.pdf`). Each run is a new `memgpt` process (the
executable, as a user starts it); a thread of its own samples the main thread every 2 ms: its stack, and from
/proc (Linux) its CPU time and its time spent runnable but waiting for a CPU (the run queue). What is left,
``asleep`` = wall − CPU − run queue, is time the main thread waited for something: the GIL held by another
thread, a lock, a socket (Milvus, the LLM), the disk. On a shared machine the run-queue column grows with the
load and CPU much less; asleep grows too wherever the main thread waits for another thread that itself waits
for a CPU (a thread's start, the GIL, the recall indexer at exit), so only a quiet machine gives its true size.
(The sampling thread takes the GIL every 2 ms itself, a little of the asleep time.)

Samples are labelled by what the main thread was doing: importing (the package being imported, and the memgpt
module that imported it) or else memgpt's innermost function; the table sums each label over the runs and
divides by their number. Totals cover the process from the sampler's start to the command's end.

A second table gives the CPU seconds of each thread of the process by its Python name (ONNX Runtime's and
gRPC's own threads are "not a Python thread"; the sampler's is "timeline"), read from /proc every 50 ms and at
the end (a thread that ends between two reads loses up to 50 ms), and of the child processes (Milvus Lite's
server): what burns CPU beside the main thread, e.g. rich's refresh thread drawing the progress bars.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.scripted_llm import ScriptedLLM  # noqa: E402 - the bench runs from a checkout

# Runs in the timed process: argv[1] is where the samples go, the rest is the command.
SAMPLER = r"""
import atexit, json, os, resource, sys, threading, time

out = sys.argv[1]
main_id = threading.get_ident()
stat = f"/proc/self/task/{threading.get_native_id()}/schedstat"


def sched():
    with open(stat) as f:
        cpu, queued, _ = f.read().split()
    return int(cpu) / 1e9, int(queued) / 1e9


samples, running = [], [True]
threads, names = {}, {}  # CPU seconds last read of each thread (by native id), and its Python name


def thread_cpu():
    for t in threading.enumerate():
        # A thread a library left unnamed ("Thread-6") goes by its class (rich.live._RefreshThread) if it has one.
        kind = type(t)
        unnamed = t.name.startswith("Thread-") and kind is not threading.Thread
        names.setdefault(t.native_id, f"{kind.__module__}.{kind.__qualname__}" if unnamed else t.name)
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        threads[int(task)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample():
    n = 0
    while running[0]:
        frame, stack = sys._current_frames().get(main_id), []
        while frame is not None:
            stack.append((frame.f_code.co_filename, frame.f_code.co_name))
            frame = frame.f_back
        samples.append((time.perf_counter(), *sched(), stack[::-1]))
        n += 1
        if n % 25 == 0:
            thread_cpu()
        time.sleep(0.002)


def write():
    running[0] = False
    samples.append((time.perf_counter(), *sched(), []))
    thread_cpu()
    per_thread = {}
    for task, cpu in threads.items():
        name = names.get(task) or ("MainThread" if task == os.getpid() else "(not a Python thread)")
        per_thread[name] = per_thread.get(name, 0.0) + cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    per_thread["(child processes: Milvus Lite's server)"] = children.ru_utime + children.ru_stime
    with open(out, "w") as f:
        json.dump({"samples": list(samples), "threads": per_thread}, f)


atexit.register(write)
threading.Thread(target=sample, daemon=True, name="timeline").start()
import memgpt.cli

sys.argv = ["memgpt", *sys.argv[2:]]
memgpt.cli.executable()
"""


def label(stack: list[list[str]]) -> str:
    """What a sample's main thread was doing."""
    ours = [f"{Path(path).stem}.{name}" for path, name in stack if f"{os.sep}memgpt{os.sep}" in path]
    if any("importlib._bootstrap" in path for path, _ in stack):
        importing = [path for path, name in stack if name == "<module>"][1:]  # the first is the sampler
        theirs = next((p for p in importing if f"{os.sep}memgpt{os.sep}" not in p), None)
        if theirs is None:
            return f"import memgpt modules (from {ours[-1] if ours else '?'})"
        package = theirs.split("site-packages" + os.sep)[-1].split(os.sep)[0] if "site-packages" in theirs else theirs
        package = Path(package).stem if "site-packages" in theirs else f"stdlib {Path(theirs).stem}"
        return f"import {package} (from {ours[-1] if ours else 'start'})"
    if ours:
        return ours[-1]
    return f"({stack[-1][1]})" if stack else "(end)"


def timeline(samples: list[list]) -> dict[str, list[float]]:
    """Wall, CPU and run-queue seconds of each label, from one process's samples."""
    found: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for before, after in itertools.pairwise(samples):
        row = found[label(after[3])]
        for i in range(3):
            row[i] += after[i] - before[i]
    return found


def run_once(
    tree: Path, env: dict[str, str], scratch: Path, args: list[str], n: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    out = scratch / f"samples-{n}.json"
    done = subprocess.run(
        [sys.executable, "-c", SAMPLER, str(out), *args],
        env={**env, "PYTHONPATH": str(tree)},
        cwd=scratch,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"`memgpt {' '.join(args)}` failed ({done.returncode}): {done.stderr[-2000:]}")
    found = json.loads(out.read_text())
    return timeline(found["samples"]), found["threads"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="folder holding the memgpt package to measure")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--fresh", action="store_true", help="a new home for each run, none made first (for load)")
    parser.add_argument(
        "--home", type=Path, help="an existing home to run in, as it is (e.g. one holding the seed paper, for search)"
    )
    parser.add_argument("args", nargs="*", help="the command (default: run --agent bench --message hello)")
    options = parser.parse_args()
    args = options.args or ["run", "--agent", "bench", "--message", "hello"]
    llm = ScriptedLLM()
    llm.add(*({"tool": "send_message", "args": {"message": "hi"}} for _ in range(options.runs + 1)))
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    per_thread: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        home = options.home.resolve() if options.home else scratch / "home"
        env = {**os.environ, "MEMGPT_HOME": str(home), "OPENAI_BASE_URL": llm.url, "NO_COLOR": "1"}
        env.pop("OPENAI_API_KEY", None)
        if not options.fresh and not options.home:
            subprocess.run(  # the agent, and the home's first start (migrations, the collection), untimed
                [sys.executable, "-m", "memgpt", *args],
                env={**env, "PYTHONPATH": str(options.tree)},
                cwd=scratch,
                capture_output=True,
                check=True,
            )
        for n in range(options.runs):
            fresh = {"MEMGPT_HOME": str(scratch / f"home-{n}")} if options.fresh else {}
            rows, cpu = run_once(options.tree, {**env, **fresh}, scratch, args, n)
            for name, row in rows.items():
                for i in range(3):
                    totals[name][i] += row[i] / options.runs
            for name, seconds in cpu.items():
                per_thread[name] += seconds / options.runs
    llm.close()
    wall, cpu, queued = (sum(row[i] for row in totals.values()) for i in range(3))
    print(f"\n### Main thread of `memgpt {' '.join(args)}` ({options.runs} runs, mean ms a run)\n")
    print("| doing | CPU ms | asleep ms | run queue ms | wall ms |")
    print("|---|---|---|---|---|")
    ranked = sorted(totals.items(), key=lambda item: -(item[1][0] - item[1][2]))  # CPU + asleep
    for name, (w, c, q) in [("**all**", (wall, cpu, queued)), *ranked[: options.top]]:
        print(f"| {name} | {1000 * c:.0f} | {1000 * (w - c - q):.0f} | {1000 * q:.0f} | {1000 * w:.0f} |")
    print(f"\n### CPU of each thread, and of the child processes (mean ms a run, {options.runs} runs)\n")
    print("| thread | CPU ms |")
    print("|---|---|")
    print(f"| **all** | {1000 * sum(per_thread.values()):.0f} |")
    for name, seconds in sorted(per_thread.items(), key=lambda item: -item[1]):
        print(f"| {name} | {1000 * seconds:.0f} |")


if __name__ == "__main__":
    main()
