"""``boxd demo``: the Box emulator, boxd's daemon, a generated sample backup, a verified result.

Everything runs in one process (``make demo``), on the real code paths:

1. A sample backup in a temp dir (:func:`generate_sample`): a restic-like repository
   (``config``, ``keys/``, ``index/``, ``snapshots/``, ``data/xx/`` with 40 packs of random
   bytes, 64 KiB–1 MiB, each named by its SHA-256 as restic does) and one ~65 MiB archive,
   above the daemon's ``upload_cutoff`` (50 MiB), so it takes the chunked-upload path.
2. The emulator (:func:`boxd.sim.server.running`) on 127.0.0.1, a free port, with Box's real
   per-user limits: 1,000 API calls and 240 uploads a minute, as token buckets of
   :data:`RATE_BURST` = 10. The daemon paces itself below them (95 %, small bursts), so the
   sample's 46 uploads take ~11 s: the limit and not bandwidth sets the pace, as with Box.
   Access tokens are shortened to :data:`DEMO_TOKEN_TTL` seconds for the run
   (``POST /_sim/faults``), so the run also shows refresh-token rotation (the daemon renews
   ahead of expiry, within half the token's lifetime); ``DELETE /_sim/faults`` restores
   Box's hour afterwards.
3. The daemon (:func:`boxd.daemon.run`, exactly what ``boxd serve`` runs) as a task of this
   process, configured by a ``boxd.toml`` written to the temp dir: the emulator's URLs and
   credentials, a fresh token blob, the control socket in a short ``/tmp`` path (``AF_UNIX``
   paths are limited to ~100 bytes), ``allowed_sources`` = the sample, health and metrics on
   a free loopback port. Its JSON log lines go to ``daemon.log`` in the temp dir, not to the
   terminal.
4. The sample is enqueued through the control socket into ``Backups/demo-host/`` and followed
   with ``boxd enqueue --wait``'s progress views (:mod:`boxd.client`): a progress bar on a
   terminal, plain lines otherwise.
5. A summary (files, bytes, time, throughput, 429s honoured and token refreshes as the
   emulator counted them) and a verification of every file by size and SHA-1 through
   ``GET /_sim/state``; the exit status is 0 only if the job succeeded and all files match.

The daemon stops by cancellation once the result is in; with ``--keep`` the emulator and the
daemon stay up until Ctrl-C, which the daemon handles as it would SIGINT under ``boxd serve``
(drain, then exit), so ``boxd jobs --socket ...`` and friends can be tried against them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import random
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import aiohttp
import anyio
import structlog

from boxd import logs
from boxd.client import EXIT_INTERRUPTED, ControlClient, DaemonUnreachableError, wait_for
from boxd.errors import BoxdError
from boxd.render import PlainView, ProgressView, RichView, enqueued_text, final_line
from boxd.sim.config import Knobs
from boxd.sim.server import SimOptions, running

if TYPE_CHECKING:
    from boxd.settings import Settings

KIB = 1024
MIB = 1024 * KIB

#: Box's documented per-user limits, enforced by the emulator and paced under by the daemon.
API_CALLS_PER_MINUTE = 1000
UPLOADS_PER_MINUTE = 240
#: Token-bucket capacity of the emulator's limits: short bursts pass, the rest is really paced.
RATE_BURST = 10
#: Access-token lifetime during the run (Box: 3600 s), so that the demo refreshes tokens.
DEMO_TOKEN_TTL = 8
#: Where the sample lands, relative to the account's root folder.
DESTINATION = ("Backups", "demo-host")
#: The sample: restic packs and one large archive (above the daemon's 50 MiB upload_cutoff:
#: a chunked upload).
PACKS = 40
PACK_SIZES = (64 * KIB, 1 * MIB)
ARCHIVE_NAME = "demo-host-etc-2024-06-01.tar.zst"
ARCHIVE_SIZE = 64 * MIB + 1_234_567  # not a multiple of the part size: the last part is short
#: Seconds between plain progress lines (``boxd enqueue --wait`` prints one every 5 s).
PLAIN_PROGRESS_INTERVAL = 2.0
#: How long the daemon may take to answer on its control socket after it was started.
READY_TIMEOUT = 30.0
#: Lines of the daemon's log shown when the demo fails (the log goes with the temp dir).
LOG_TAIL = 20


# ---------------------------------------------------------------------------------- sample


def generate_sample(
    root: Path, *, packs: int = PACKS, archive_size: int = ARCHIVE_SIZE, seed: int | None = None
) -> None:
    """Write a restic-like repository under ``root/restic`` and one archive under ``root``.

    Blocking (call it in a worker thread). Contents are random, as restic's encrypted packs
    are; ``seed`` makes them reproducible.
    """
    rng = random.Random(seed)
    repo = root / "restic"

    def put(directory: Path, data: bytes, name: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / (name or hashlib.sha256(data).hexdigest())).write_bytes(data)

    put(repo, rng.randbytes(155), "config")
    key = {
        "created": "2024-06-01T02:00:00.000000000Z",
        "username": "root",
        "hostname": "demo-host",
        "kdf": "scrypt",
        "N": 32768,
        "r": 8,
        "p": 7,
        "salt": base64.b64encode(rng.randbytes(64)).decode(),
        "data": base64.b64encode(rng.randbytes(128)).decode(),
    }
    put(repo / "keys", json.dumps(key, indent=2).encode())
    for _ in range(2):
        put(repo / "index", rng.randbytes(rng.randint(2 * KIB, 24 * KIB)))
    put(repo / "snapshots", rng.randbytes(rng.randint(300, 700)))
    for _ in range(packs):
        data = rng.randbytes(rng.randint(*PACK_SIZES))
        name = hashlib.sha256(data).hexdigest()
        put(repo / "data" / name[:2], data, name)
    with (root / ARCHIVE_NAME).open("wb") as fh:
        left = archive_size
        while left:
            n = min(left, 4 * MIB)
            fh.write(rng.randbytes(n))
            left -= n


@dataclass(frozen=True)
class LocalFile:
    path: Path
    rel: tuple[str, ...]  # path parts relative to the source directory
    size: int
    mtime: float


def scan(source: Path) -> list[LocalFile]:
    """The regular files under ``source``, largest first (the chunked upload starts early)."""
    found = [
        LocalFile(p, p.relative_to(source).parts, st.st_size, st.st_mtime)
        for p in source.rglob("*")
        if p.is_file() and not p.is_symlink()
        for st in [p.stat()]
    ]
    return sorted(found, key=lambda f: (-f.size, f.rel))


def sha1_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha1").hexdigest()


def remote_path(dest: tuple[str, ...], rel: tuple[str, ...]) -> str:
    return "/".join([*dest, *rel])


# ------------------------------------------------------------------------------ the daemon


@dataclass(frozen=True)
class DaemonFiles:
    """Where the demo's daemon keeps its configuration, state, socket and log."""

    config: Path
    state_dir: Path
    socket: Path
    log: Path
    listen: str


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    root: Path, socket_dir: Path, credentials: Mapping[str, Any], token: Mapping[str, Any], source: Path
) -> DaemonFiles:
    """A ``boxd.toml`` for a daemon that talks to the emulator of ``credentials`` with ``token``
    (an rclone-style blob) and may upload from ``source``; the socket goes to ``socket_dir``
    (keep it short: ``AF_UNIX`` paths hold ~100 bytes)."""
    files = DaemonFiles(
        config=root / "boxd.toml",
        state_dir=root / "state",
        socket=socket_dir / "boxd.sock",
        log=root / "daemon.log",
        listen=f"127.0.0.1:{free_port()}",
    )
    sections: dict[str, dict[str, Any]] = {
        "box": {
            "client_id": credentials["client_id"],
            "client_secret": credentials["client_secret"],
            "token": json.dumps(token),
            "api_url": credentials["api_url"],
            "upload_url": credentials["upload_url"],
            "token_url": credentials["token_url"],
            "api_calls_per_minute": API_CALLS_PER_MINUTE,
            "uploads_per_minute": UPLOADS_PER_MINUTE,
        },
        "daemon": {
            "socket": str(files.socket),
            "state_dir": str(files.state_dir),
            "allowed_sources": [str(source)],
            "shutdown_grace": "2s",
        },
        "http": {"listen": files.listen},
    }
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]  # JSON values are TOML too
    files.config.write_text("\n".join(lines) + "\n")
    return files


class LogSink:
    """The file structlog's ``PrintLogger`` writes to during the demo: the log file while the
    demo runs, ``sys.stdout`` (structlog's default) once it is closed. Loggers that modules
    bind on import (``logs.get``) keep their file for good, so it must outlive the demo."""

    def __init__(self, fh: TextIO) -> None:  # print() needs only write and flush
        self._fh: TextIO | None = fh

    def write(self, text: str) -> int:
        return (self._fh or sys.stdout).write(text)

    def flush(self) -> None:
        (self._fh or sys.stdout).flush()

    def close(self) -> None:
        self._fh = None


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Send structlog (boxd's JSON lines, secrets redacted) and stdlib logging to ``path``
    instead of the terminal; the previous configuration is restored afterwards.

    Enter it *before* importing :mod:`boxd.daemon`: modules that bind a logger at import
    time (``logs.get``) keep the output configured at that moment.
    """
    saved = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    with path.open("a", encoding="utf-8") as fh:
        sink = LogSink(fh)
        logs.configure(json=True)  # boxd's processor chain ...
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(cast(TextIO, sink)), cache_logger_on_first_use=False
        )
        handler = logging.StreamHandler(fh)  # ... and aiohttp's or asyncio's complaints, if any
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.WARNING)
        try:
            yield
        finally:
            root.handlers = saved_handlers
            root.setLevel(saved_level)
            structlog.configure(**saved)
            sink.close()


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    """The last ``lines`` lines of the daemon's log, introduced. Blocking."""
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"boxd demo: cannot read the daemon's log {path}: {exc.strerror}"
    return "\n".join([f"boxd demo: the last {len(tail)} lines of the daemon's log:", *tail])


@dataclass
class DaemonTask:
    """The daemon running as a task: its scope (cancelled to stop it) and how it ended."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stopped: anyio.Event = field(default_factory=anyio.Event)
    exit_code: int | None = None
    error: Exception | None = None

    async def serve(self, settings: Settings) -> None:
        """Run :func:`boxd.daemon.run` until it returns (SIGINT/SIGTERM), fails, or is cancelled."""
        from boxd import daemon  # imported late: see logs_to

        try:
            with self.scope:
                self.exit_code = await daemon.run(settings)
        except Exception as exc:  # reported by the demo, which stops waiting for the job
            self.error = exc
        finally:
            self.stopped.set()

    def why_stopped(self) -> str:
        if self.error is not None:
            return f"the daemon failed: {'; '.join(str(e) or type(e).__name__ for e in _leaves(self.error))}"
        if self.exit_code is not None:
            return f"the daemon stopped (exit status {self.exit_code})"
        return "the daemon was stopped"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups; the daemon's task group raises those."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def wait_ready(client: ControlClient) -> None:
    """Until the daemon answers on its control socket (the caller bounds the wait)."""
    while True:
        try:
            await client.status()
            return
        except DaemonUnreachableError:
            await anyio.sleep(0.05)


@dataclass
class Upload:
    """How the enqueued job went, as the control API reported it."""

    job: dict[str, Any] | None = None
    seconds: float = 0.0
    error: str | None = None


async def upload_through_daemon(files: DaemonFiles, source: Path, tty: bool) -> Upload:
    """Enqueue ``source`` into :data:`DESTINATION` and follow the job to its end, as
    ``boxd enqueue --wait`` does (same progress views)."""
    result = Upload()
    body = {"source": str(source), "destination": "/".join(DESTINATION)}
    try:
        async with ControlClient(files.socket) as client:
            with anyio.fail_after(READY_TIMEOUT):
                await wait_ready(client)
            print(
                f"boxd demo: daemon ready: control socket {files.socket}, health and metrics on http://{files.listen}",
                flush=True,
            )
            job, created = await client.enqueue(body)
            print(enqueued_text(job, created), flush=True)
            started = time.monotonic()
            view: ProgressView = (
                RichView(str(job["id"])) if tty else PlainView(sys.stdout, interval=PLAIN_PROGRESS_INTERVAL)
            )
            try:
                job = await wait_for(client, job, view)
            finally:
                view.close()
                result.seconds = time.monotonic() - started
            result.job = job
            print(final_line(job, result.seconds), flush=True)
    except TimeoutError:
        result.error = f"the daemon did not answer on {files.socket} within {READY_TIMEOUT:.0f} s"
    except BoxdError as exc:  # the control API refused the job, or the daemon went away
        result.error = str(exc)
    return result


@dataclass
class Verification:
    checked: int
    problems: list[str]


def verify(source: Path, dest: tuple[str, ...], state: Mapping[str, Any]) -> Verification:
    """Compare every local file under ``source`` (hashed afresh) with the emulator's
    ``/_sim/state`` by path, size and SHA-1. Blocking (hashes files)."""
    remote = {row["path"]: row for row in state["files"]}
    problems: list[str] = []
    local = scan(source)
    for f in local:
        path = remote_path(dest, f.rel)
        row = remote.pop(path, None)
        if row is None:
            problems.append(f"missing on the emulator: {path}")
        elif row["size"] != f.size or row["sha1"] != sha1_file(f.path):
            problems.append(f"differs: {path} (emulator: {row['size']} bytes, SHA-1 {row['sha1']})")
    prefix = remote_path(dest, ()) + "/"
    problems += [f"unexpected on the emulator: {p}" for p in remote if p.startswith(prefix)]
    return Verification(checked=len(local), problems=problems)


# ------------------------------------------------------------------------------- the demo


async def _admin(http: aiohttp.ClientSession, base: str, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, f"{base}{path}", json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def follow_job(daemon: DaemonTask, files: DaemonFiles, source: Path, tty: bool) -> Upload | None:
    """:func:`upload_through_daemon`, given up (None) if the daemon stops first: Ctrl-C, which
    the daemon takes as it takes SIGINT under ``boxd serve``, or a failure."""
    outcome: list[Upload] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await daemon.stopped.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        outcome.append(await upload_through_daemon(files, source, tty))
        tg.cancel_scope.cancel()
    return outcome[0] if outcome else None


def report(upload: Upload, stats: Mapping[str, Any], checked: Verification, files_total: int) -> bool:
    """Print the summary; True if the job succeeded and every file verified."""
    job = upload.job or {}
    done, moved = int(job.get("files_done", 0)), int(job.get("bytes_done", 0))
    seconds = max(upload.seconds, 1e-9)
    print(
        f"boxd demo: uploaded {done}/{files_total} files, {moved / MIB:.1f} MiB in {upload.seconds:.1f} s "
        f"({moved / MIB / seconds:.1f} MiB/s)"
    )
    print(f"  429s honoured: {stats['rate_limited']}; token refreshes: {stats['token_grants']['refresh_token']}")
    if upload.error is not None:
        print(f"  error: {upload.error}")
    for problem in checked.problems:
        print(f"  {problem}")
    ok = job.get("state") == "succeeded" and not checked.problems and checked.checked == files_total
    if ok:
        print(f"  verified: all {checked.checked} files match their SHA-1 on the emulator")
    else:
        print(f"  verification FAILED: {len(checked.problems)} problem(s) in {checked.checked} files")
    sys.stdout.flush()
    return ok


def keep_text(base: str, sim_dir: Path, files: DaemonFiles, source: Path, job: Mapping[str, Any] | None) -> str:
    sock = files.socket
    lines = [
        f"boxd demo: the emulator keeps running at {base} (data in {sim_dir}) and the daemon on {sock}; try:",
        f"  boxd jobs --socket {sock}",
        *([f"  boxd show {job['id']} --socket {sock}"] if job else []),
        f"  boxd status --socket {sock}",
        f"  boxd enqueue {source} --to {'/'.join(DESTINATION)} --wait --socket {sock}  # all skipped: on Box already",
        f"  curl -s http://{files.listen}/metrics",
        f"The daemon logs to {files.log}. Ctrl-C stops both (and removes the temp dir).",
    ]
    return "\n".join(lines)


async def run_demo(
    data_dir: Path | None = None,
    keep: bool = False,
    *,
    packs: int = PACKS,
    archive_size: int = ARCHIVE_SIZE,
    faults: Mapping[str, float] | None = None,
) -> int:
    """The demo; its exit status (0 only if every file verified, 130 if interrupted).

    ``packs``, ``archive_size`` and ``faults`` (emulator knobs for the run, e.g. ``rate_429``;
    ``DELETE /_sim/faults`` lifts them before the verification) are for tests.
    """
    tty = sys.stdout.isatty()
    with (
        tempfile.TemporaryDirectory(prefix="boxd-demo-") as tmp_name,
        tempfile.TemporaryDirectory(prefix="bxd", dir="/tmp") as socket_dir,  # short: AF_UNIX
    ):
        tmp = Path(await anyio.Path(tmp_name).resolve())  # the daemon resolves links
        sim_dir = data_dir if data_dir is not None else tmp / "sim"
        sample = tmp / "sample"
        started = time.monotonic()
        await anyio.to_thread.run_sync(lambda: generate_sample(sample, packs=packs, archive_size=archive_size))
        local = scan(sample)
        print(
            f"boxd demo: generated a sample backup: {len(local)} files, {sum(f.size for f in local) / MIB:.1f} MiB "
            f"(a restic repository and a {archive_size / MIB:.0f} MiB archive) in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        knobs = Knobs(
            api_calls_per_minute=API_CALLS_PER_MINUTE, uploads_per_minute=UPLOADS_PER_MINUTE, rate_burst=RATE_BURST
        )
        options = SimOptions(host="127.0.0.1", port=0, data_dir=sim_dir)
        with logs_to(tmp / "daemon.log"):
            async with running(options, knobs) as (_, base), aiohttp.ClientSession() as admin:
                print(
                    f"boxd demo: Box emulator at {base}: {API_CALLS_PER_MINUTE} API calls and "
                    f"{UPLOADS_PER_MINUTE} uploads a minute (burst {RATE_BURST}), "
                    f"access tokens live {DEMO_TOKEN_TTL} s",
                    flush=True,
                )
                # Shorten the token lifetime for this run, then authorise as `rclone authorize` would.
                await _admin(admin, base, "POST", "/_sim/faults", {"token_ttl": DEMO_TOKEN_TTL, **(faults or {})})
                token = await _admin(admin, base, "POST", "/_sim/tokens")
                files, settings = await anyio.to_thread.run_sync(
                    _configure, tmp, Path(socket_dir), sim_dir / "credentials.json", token, sample
                )
                daemon = DaemonTask()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(daemon.serve, settings)
                    upload = await follow_job(daemon, files, sample, tty)
                    if upload is None:
                        interrupted = daemon.error is None  # Ctrl-C or SIGTERM, which the daemon took
                        why = "interrupted" if interrupted else daemon.why_stopped()
                        print(f"boxd demo: {why}; the daemon stopped before the job ended", flush=True)
                        code = EXIT_INTERRUPTED if interrupted else 1
                    else:
                        await _admin(admin, base, "DELETE", "/_sim/faults")  # Box's token lifetime again
                        stats = await _admin(admin, base, "GET", "/_sim/stats")
                        state = await _admin(admin, base, "GET", "/_sim/state")
                        checked = await anyio.to_thread.run_sync(verify, sample, DESTINATION, state)
                        code = 0 if report(upload, stats, checked, len(local)) else 1
                        if keep:
                            print(keep_text(base, sim_dir, files, sample, upload.job), flush=True)
                            await daemon.stopped.wait()  # Ctrl-C: the daemon drains and stops
                            print(f"boxd demo: {daemon.why_stopped()}", flush=True)
                    daemon.scope.cancel()
            if daemon.error is not None:
                code = 1
            if code == 1:  # the temp dir goes away with the log: show its end
                print(await anyio.to_thread.run_sync(log_tail, files.log), file=sys.stderr)
        return code


def _configure(
    root: Path, socket_dir: Path, credentials_file: Path, token: Mapping[str, Any], source: Path
) -> tuple[DaemonFiles, Settings]:
    """Write the daemon's configuration and load it as ``boxd serve --config`` would. Blocking."""
    from boxd.settings import load_settings

    files = write_config(root, socket_dir, json.loads(credentials_file.read_text()), token, source)
    return files, load_settings(files.config)


DESCRIPTION = (
    "Start the Box emulator with Box's rate limits and boxd's daemon, generate a sample backup, "
    "upload it through the daemon with live progress and verify every file by SHA-1."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``boxd demo`` (registered by :mod:`boxd.cli`)."""
    parser.add_argument(
        "--data-dir", type=Path, help="the emulator's data directory [a temporary directory, removed afterwards]"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the emulator and the daemon running after the summary, until Ctrl-C"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit status is 0 only if every file verified."""
    try:
        return anyio.run(run_demo, args.data_dir, args.keep)
    except KeyboardInterrupt:
        print("boxd demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
