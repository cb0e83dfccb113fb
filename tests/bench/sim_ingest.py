"""How fast ``boxd sim`` ingests upload-session parts over loopback HTTP.

The emulator must never be the bottleneck of a benchmark of boxd, so this measures its ingest
rate against a reference: the same client against :mod:`tests.bench.null_sink`, an aiohttp
server that reads each part's body and throws it away. Each server runs as its own subprocess
and the client as another (``python -m tests.bench.sim_ingest client ...``), so neither shares
a process (or a GIL) with the other.

The client opens one upload session for a file of ``--size`` bytes (default 512 MiB), then
PUTs the parts (the session's part size: 8 MiB by default) with ``--inflight`` requests (4) in
flight, and commits. Part contents are one random buffer per worker with the part's index
written into its first 8 bytes, so every part has its own digest while the client copies
nothing; the part and whole-file SHA-1s are computed before the clock starts. Measured:

- part phase: first PUT sent to last part answered, in MiB/s of file data;
- commit: the commit request (the emulator joins the parts on disk and hashes the file);
- the server's CPU seconds during the part phase (``/proc/PID/stat``), and its peak RSS
  (``VmHWM``), which must stay far below the file size: the emulator streams to disk.

    python -m tests.bench.sim_ingest [--size 512MiB] [--reps 3] [--inflight 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from boxd.units import parse_size
from tests.simproc import running_server, running_sim

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
DEFAULT_SIZE = 512 * MIB
DEFAULT_INFLIGHT = 4
DEFAULT_REPS = 3
CLIENT_TIMEOUT = 300.0


# --------------------------------------------------------------------------- client process


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all threads) from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@dataclass
class Plan:
    """What the client sends: part ``i`` is ``base`` with ``i`` in its first 8 bytes, cut to length."""

    base: bytes
    size: int
    part_size: int
    part_digests: list[str]  # base64 SHA-1 per part
    whole_digest: str  # base64 SHA-1 of the file

    @property
    def parts(self) -> int:
        return -(-self.size // self.part_size)

    def length(self, index: int) -> int:
        return min(self.part_size, self.size - index * self.part_size)

    @staticmethod
    def patch(buf: bytearray, index: int) -> None:
        buf[:8] = index.to_bytes(8, "big")


def make_plan(size: int, part_size: int) -> Plan:
    base = os.urandom(part_size)
    buf = bytearray(base)
    whole = hashlib.sha1()
    digests = []
    plan = Plan(base, size, part_size, [], "")
    view = memoryview(buf)
    for i in range(plan.parts):
        Plan.patch(buf, i)
        chunk = view[: plan.length(i)]
        whole.update(chunk)
        digests.append(_b64(hashlib.sha1(chunk).digest()))
    plan.part_digests = digests
    plan.whole_digest = _b64(whole.digest())
    return plan


async def _check(resp: aiohttp.ClientResponse, want: int, what: str) -> Any:
    body = await resp.read()
    if resp.status != want:
        raise RuntimeError(f"{what}: HTTP {resp.status}, expected {want}: {body[:500]!r}")
    return json.loads(body) if body else None


async def run_client(upload_url: str, token: str, size: int, inflight: int, server_pid: int | None) -> dict[str, Any]:
    """One upload through a session; returns timings (seconds) and rates (MiB/s)."""
    auth = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=inflight)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        t = time.perf_counter()
        async with http.post(
            f"{upload_url}/files/upload_sessions",
            json={"folder_id": "0", "file_size": size, "file_name": f"bench-{os.getpid()}.bin"},
            headers=auth,
        ) as resp:
            session = await _check(resp, 201, "create session")
        create_s = time.perf_counter() - t

        t = time.perf_counter()
        plan = make_plan(size, int(session["part_size"]))
        prepare_s = time.perf_counter() - t
        endpoints = session["session_endpoints"]
        parts: list[dict[str, Any]] = [{} for _ in range(plan.parts)]
        todo = iter(range(plan.parts))

        async def worker() -> None:
            buf = bytearray(plan.base)  # this worker's own buffer: patched in place, never copied
            view = memoryview(buf)
            for i in todo:
                Plan.patch(buf, i)
                length = plan.length(i)
                first = i * plan.part_size
                headers = {
                    **auth,
                    "Digest": f"sha={plan.part_digests[i]}",
                    "Content-Range": f"bytes {first}-{first + length - 1}/{size}",
                    "Content-Type": "application/octet-stream",
                }
                async with http.put(endpoints["upload_part"], data=view[:length], headers=headers) as resp:
                    parts[i] = (await _check(resp, 200, f"part {i}"))["part"]

        server_cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        client_cpu0 = time.process_time()
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(inflight, plan.parts))))
        part_s = time.perf_counter() - t
        client_cpu = time.process_time() - client_cpu0
        server_cpu = cpu_seconds(server_pid) - server_cpu0 if server_pid else None

        t = time.perf_counter()
        async with http.post(
            endpoints["commit"], json={"parts": parts}, headers={**auth, "Digest": f"sha={plan.whole_digest}"}
        ) as resp:
            await _check(resp, 201, "commit")
        commit_s = time.perf_counter() - t

    mib = size / MIB
    return {
        "size": size,
        "part_size": plan.part_size,
        "parts": plan.parts,
        "inflight": inflight,
        "create_s": create_s,
        "prepare_s": prepare_s,
        "part_s": part_s,
        "part_mib_s": mib / part_s,
        "commit_s": commit_s,
        "commit_mib_s": mib / commit_s,
        "client_cpu_s": client_cpu,
        "server_cpu_s": server_cpu,
    }


# --------------------------------------------------------------------------- orchestration


def vm_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` memory line (``VmHWM``, ``VmRSS``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Server:
    upload_url: str
    token: str
    pid: int


@contextlib.contextmanager
def running_null_sink(data_dir: Path) -> Iterator[Server]:
    cmd = [sys.executable, "-m", "tests.bench.null_sink", "--port", "0", "--data-dir", str(data_dir)]
    with running_server(cmd, data_dir, env={"PYTHONPATH": str(REPO)}) as (proc, creds):
        yield Server(creds["upload_url"], creds["token"]["access_token"], proc.pid)


@contextlib.contextmanager
def running_emulator(data_dir: Path) -> Iterator[Server]:
    with running_sim(data_dir) as sim:
        creds = sim.credentials
        yield Server(creds["upload_url"], creds["token"]["access_token"], sim.process.pid)


def client_subprocess(server: Server, size: int, inflight: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "tests.bench.sim_ingest",
        "client",
        "--upload-url",
        server.upload_url,
        "--token",
        server.token,
        "--size",
        str(size),
        "--inflight",
        str(inflight),
        "--server-pid",
        str(server.pid),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench client failed ({out.returncode}):\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def one_run(kind: str, work: Path, size: int, inflight: int) -> dict[str, Any]:
    """A fresh server (``sim`` or ``null``), one client upload, the server's memory figures."""
    start = running_emulator(work / "sim") if kind == "sim" else running_null_sink(work / "null")
    with start as server:
        rss_start = vm_kib(server.pid, "VmRSS")
        result = client_subprocess(server, size, inflight)
        result["server_rss_start_kib"] = rss_start
        result["server_peak_rss_kib"] = vm_kib(server.pid, "VmHWM")
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "part_mib_s": _median(runs, "part_mib_s"),
        "commit_mib_s": _median(runs, "commit_mib_s"),
        "part_s": _median(runs, "part_s"),
        "commit_s": _median(runs, "commit_s"),
        "server_cpu_s": _median(runs, "server_cpu_s"),
        "client_cpu_s": _median(runs, "client_cpu_s"),
        "server_peak_rss_kib": max(r["server_peak_rss_kib"] for r in runs),
        "server_rss_start_kib": max(r["server_rss_start_kib"] for r in runs),
    }


def run(
    size: int = DEFAULT_SIZE, reps: int = DEFAULT_REPS, inflight: int = DEFAULT_INFLIGHT, work_dir: Path | None = None
) -> dict[str, Any]:
    """The whole benchmark: ``reps`` alternating runs against the emulator and the null sink."""
    runs: dict[str, list[dict[str, Any]]] = {"sim": [], "null": []}
    with tempfile.TemporaryDirectory(prefix="boxd-bench-", dir=work_dir) as tmp:
        for rep in range(reps):
            for kind in ("sim", "null"):
                result = one_run(kind, Path(tmp), size, inflight)
                runs[kind].append(result)
                print(
                    f"sim_ingest rep {rep + 1}/{reps} {kind:4}: parts {result['part_mib_s']:7.1f} MiB/s, "
                    f"commit {result['commit_mib_s']:7.1f} MiB/s, "
                    f"peak RSS {result['server_peak_rss_kib'] / 1024:.1f} MiB",
                    file=sys.stderr,
                )
    sim, null = summarize(runs["sim"]), summarize(runs["null"])
    return {
        "name": "sim_ingest",
        "size": size,
        "part_size": runs["sim"][0]["part_size"],
        "parts": runs["sim"][0]["parts"],
        "inflight": inflight,
        "reps": reps,
        "sim": sim,
        "null_sink": null,
        "ratio_parts_sim_vs_null": sim["part_mib_s"] / null["part_mib_s"],
        "sim_peak_rss_vs_size": sim["server_peak_rss_kib"] * 1024 / size,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.sim_ingest", description="Benchmark: the emulator's ingest rate vs a null sink."
    )
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="one upload against a running server; prints JSON")
    client.add_argument("--upload-url", required=True)
    client.add_argument("--token", required=True)
    client.add_argument("--server-pid", type=int)
    for p in (parser, client):
        p.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="file size (default 512MiB)")
        p.add_argument("--inflight", type=int, default=DEFAULT_INFLIGHT, help="parts in flight (default 4)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS)
    args = parser.parse_args(argv)
    if args.command == "client":
        result = asyncio.run(run_client(args.upload_url, args.token, args.size, args.inflight, args.server_pid))
        print(json.dumps(result))
        return 0
    print(json.dumps(run(args.size, args.reps, args.inflight), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
