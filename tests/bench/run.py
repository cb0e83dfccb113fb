"""Run the benchmarks; write ``tests/bench/results.json`` and ``BENCHMARKS.md`` (``make bench``).

python -m tests.bench.run [--size 512MiB] [--reps 3] [--inflight 4] [--compare-reps N] [--only NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from boxd.units import parse_size
from tests.bench import sim_ingest, upload_compare

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "bench" / "results.json"
MARKDOWN = REPO / "BENCHMARKS.md"


def environment() -> dict[str, Any]:
    """Where and when the numbers were taken (top-level keys of ``results.json``)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "aiohttp": version("aiohttp"),
        "load_average_start": round(os.getloadavg()[0], 2),
    }


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


def _spread(runs: list[dict[str, Any]], key: str) -> str:
    """``median (min–max)`` of a rate over the repetitions."""
    values = sorted(r[key] for r in runs)
    return f"{statistics.median(values):.0f} ({values[0]:.0f}–{values[-1]:.0f})"


def _row(name: str, r: dict[str, Any], runs: list[dict[str, Any]], commit: str) -> str:
    rss = _mib(r["server_peak_rss_kib"])
    return f"| {name} | {_spread(runs, 'part_mib_s')} | {commit} | {r['server_cpu_s']:.2f} s | {rss} |"


def render_ingest(b: dict[str, Any]) -> str:
    sim, null = b["sim"], b["null_sink"]
    size_mib = b["size"] / sim_ingest.MIB
    part_mib = b["part_size"] / sim_ingest.MIB
    ratio = b["ratio_parts_sim_vs_null"]
    rss_growth = (sim["server_peak_rss_kib"] - sim["server_rss_start_kib"]) / 1024
    return f"""## Emulator ingest (`tests/bench/sim_ingest.py`)

How fast `boxd sim` takes in upload-session parts over loopback HTTP, so that other benchmarks
know when the emulator, not boxd, is the limit (plain HTTP here; the comparison above runs over HTTPS,
which costs the emulator more per byte). Each repetition starts a fresh `boxd sim`
subprocess and, from a separate client process (aiohttp), uploads one {size_mib:.0f} MiB file through
an upload session: {b["parts"]} parts of {part_mib:.0f} MiB, {b["inflight"]} in flight, each PUT with
`Digest` and `Content-Range`, then the commit. Part contents and all SHA-1s are prepared before
the clock starts. The reference is the same client against a null sink (`tests/bench/null_sink.py`):
the same aiohttp server stack answering the same requests, reading each body in the emulator's
1 MiB reads and discarding it (no SHA-1, no disk, no auth). Medians of {b["reps"]} repetitions.

| server | parts, MiB/s (min–max) | commit, MiB/s (min–max) | server CPU in part phase | server peak RSS (VmHWM) |
|---|---:|---:|---:|---:|
{_row("`boxd sim`", sim, b["runs"]["sim"], _spread(b["runs"]["sim"], "commit_mib_s"))}
{_row("null sink", null, b["runs"]["null"], "—")}
| emulator / null sink | {ratio:.2f} | | | |

- *parts*: file size / time from the first PUT to the last part's answer.
- *commit*: file size / time of the commit request, in which the emulator joins the parts into the
  file's blob on disk and checks the whole-file SHA-1 (the null sink's commit does nothing).
- *peak RSS*: the highest of the repetitions; the emulator started at
  {_mib(sim["server_rss_start_kib"])} and grew by {rss_growth:.0f} MiB while taking in a {size_mib:.0f} MiB file.

**What it means.** On this machine the emulator ingests parts at about {sim["part_mib_s"]:.0f} MiB/s,
{ratio:.0%} of what loopback HTTP through aiohttp allows; the difference is the work a faithful
emulator must do per byte (SHA-1 of every part for the `Digest` check, and writing it to disk).
A boxd benchmark against it measures boxd as long as boxd stays well below that rate; faster
results are the emulator's limit, not boxd's. A commit takes about {sim["commit_s"]:.1f} s per {size_mib:.0f} MiB
(the emulator copies and re-hashes the whole file), which end-to-end timings of boxd include. Its
memory stays flat (it streams to disk), so a large file does not make it the bottleneck either.
"""


def render(results: dict[str, Any]) -> str:
    env, b = results, results["benchmarks"]
    sections = []
    if "upload_compare" in b:
        sections.append(upload_compare.render(b["upload_compare"]))
    if "sim_ingest" in b:
        sections.append(render_ingest(b["sim_ingest"]))
    load = f"{env.get('load_average_start', 0):.2f}, {env.get('load_average_end', 0):.2f}"
    header = f"""# Benchmarks

Written by `make bench` (`python -m tests.bench.run`) on {env["date"]} in {env["duration_s"]:.0f} s: Python
{env["python"]}, {env["cpu_count"]} CPUs, {env["platform"]}, aiohttp {env["aiohttp"]}. Machine-readable
results, every repetition included: `tests/bench/results.json`. Numbers only compare like with like on the
same machine, within one run. The 1-minute load average was {load} (start, end of the run): other work on
the machine slows every client, and the emulator with them.
"""
    return "\n".join([header, *sections])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description="Run boxd's benchmarks.")
    parser.add_argument("--size", type=parse_size, default=sim_ingest.DEFAULT_SIZE, help="file size (512MiB)")
    parser.add_argument("--reps", type=int, default=sim_ingest.DEFAULT_REPS, help="repetitions (3)")
    parser.add_argument("--inflight", type=int, default=sim_ingest.DEFAULT_INFLIGHT, help="parts in flight (4)")
    parser.add_argument("--work-dir", type=Path, help="where the emulator keeps its data (default: system temp)")
    parser.add_argument("--compare-reps", type=int, help="repetitions of upload_compare's throughput scenario (3)")
    parser.add_argument("--only", choices=["sim_ingest", "upload_compare"], help="run one benchmark only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results: dict[str, Any] = {**environment(), "benchmarks": {}}
    # Each benchmark starts with no dirty pages left by the one before (its writeback would compete).
    if args.only in (None, "sim_ingest"):
        os.sync()
        results["benchmarks"]["sim_ingest"] = sim_ingest.run(args.size, args.reps, args.inflight, args.work_dir)
    if args.only in (None, "upload_compare"):
        scenarios = list(upload_compare.SCENARIOS.values())
        if args.compare_reps:
            scenarios = [
                dataclasses.replace(s, reps=args.compare_reps) if s is upload_compare.THROUGHPUT else s
                for s in scenarios
            ]
        os.sync()
        results["benchmarks"]["upload_compare"] = upload_compare.run(scenarios, args.work_dir)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    MARKDOWN.write_text(render(results))
    print(
        f"wrote {RESULTS.relative_to(REPO)} and {MARKDOWN.relative_to(REPO)} in {results['duration_s']} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
