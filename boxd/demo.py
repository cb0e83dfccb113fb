"""``boxd demo``: the Box emulator, a generated sample backup, a live upload, a verified result.

Everything runs in one process (``make demo``):

1. The emulator (:func:`boxd.sim.server.running`) on 127.0.0.1, a free port, with Box's real
   per-user limits: 1,000 API calls and 240 uploads a minute, as token buckets of
   :data:`RATE_BURST` = 10. The uploader paces itself at 95 % of those limits with half that
   burst (slack for scheduling jitter), so a handful of uploads leave at once and the rest are
   held to ~4 a second: the sample's 46 uploads (45 simple, 1 session) take ~11 s, the limit
   and not bandwidth setting the pace, as with Box. Access tokens are shortened to
   :data:`DEMO_TOKEN_TTL` seconds for the run (``POST /_sim/faults``), so it also shows
   refresh-token rotation; ``DELETE /_sim/faults`` restores Box's hour afterwards.
2. A sample backup in a temp dir (:func:`generate_sample`): a restic-like repository
   (``config``, ``keys/``, ``index/``, ``snapshots/``, ``data/xx/`` with 40 packs of random
   bytes, 64 KiB–1 MiB, each named by its SHA-256 as restic does) and one ~65 MiB archive that
   takes the chunked-upload path.
3. The upload into ``Backups/demo-host/``, with a progress bar on a terminal and plain lines
   otherwise.
4. A summary and a verification of every file by size and SHA-1 through ``GET /_sim/state``;
   the exit status is 0 only if all match.

INTERIM: the daemon (``boxd/daemon.py``) and the Box client (``boxd/box/``) do not exist yet,
so step 3 is done by the small uploader in the section "Interim uploader" below. A later issue
replaces that section with the real path (start the daemon against the emulator, enqueue the
sample, wait for the job); sample generation, emulator settings, summary and verification stay.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from boxd.sim.config import SESSION_MIN_SIZE, Knobs
from boxd.sim.server import SimOptions, running

KIB = 1024
MIB = 1024 * KIB

#: Box's documented per-user limits, used both by the emulator and by the uploader's pacing.
API_CALLS_PER_MINUTE = 1000
UPLOADS_PER_MINUTE = 240
#: Token-bucket capacity of the emulator's limits: short bursts pass, the rest is really paced.
RATE_BURST = 10
#: Access-token lifetime during the run (Box: 3600 s), so that the demo refreshes tokens.
DEMO_TOKEN_TTL = 8
#: Where the sample lands, relative to the account's root folder.
DESTINATION = ("Backups", "demo-host")
#: The sample: restic packs and one large archive (≥ SESSION_MIN_SIZE: a chunked upload).
PACKS = 40
PACK_SIZES = (64 * KIB, 1 * MIB)
ARCHIVE_NAME = "demo-host-etc-2024-06-01.tar.zst"
ARCHIVE_SIZE = 64 * MIB + 1_234_567  # not a multiple of the part size: the last part is short


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


# ------------------------------------------------------------------------ interim uploader
#
# INTERIM -- replaced by the daemon + boxd/box in a later issue. Deliberately minimal: folders
# created as needed, simple multipart uploads below CHUNKED_CUTOFF, an upload session above it,
# pacing below Box's per-minute limits, 429/Retry-After, 5xx/network retries, 202 commits and
# OAuth refresh-token rotation. No resume, no conflict handling (the account starts empty),
# no durable token store; small files are read into memory whole.

#: Files of at least this size go through an upload session (boxd's ``upload_cutoff``
#: default; Box accepts sessions from SESSION_MIN_SIZE and simple uploads up to 50 MB).
CHUNKED_CUTOFF = max(SESSION_MIN_SIZE, 50 * MIB)
FILE_CONCURRENCY = 4
PART_CONCURRENCY = 4
ATTEMPTS = 6  # per request, for 5xx, network errors and 401s
MAX_429 = 50  # per request
COMMIT_RETRIES = 100  # as rclone's commit_retries
#: The uploader paces at this share of the limits, with half the emulator's burst, so that
#: scheduling jitter does not run into the server's buckets.
PACE_SHARE = 0.95


class UploadError(Exception):
    """A request that failed for good (its message names the file or call)."""


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any  # decoded JSON, or None


def box_error(what: str, reply: Reply) -> UploadError:
    body = reply.body if isinstance(reply.body, dict) else {}
    code = body.get("code") or body.get("error") or "?"
    message = body.get("message") or body.get("error_description") or ""
    return UploadError(f"{what}: HTTP {reply.status} {code} {message}".rstrip())


class Bucket:
    """Client-side token bucket: waits until a request may go (``per_minute`` a minute)."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = anyio.Lock()

    async def take(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await anyio.sleep((1.0 - self.tokens) / self.rate)


class Pacing:
    """Paces calls below the limits; after a 429 holds *every* call for ``Retry-After``."""

    def __init__(self, api_per_minute: int, uploads_per_minute: int, burst: int) -> None:
        self.api = Bucket(api_per_minute * PACE_SHARE, burst)
        self.uploads = Bucket(uploads_per_minute * PACE_SHARE, burst)
        self.paused_until = 0.0
        self.rate_limited = 0

    async def before(self, upload: bool) -> None:
        while True:  # a 429 seen meanwhile may extend the pause
            delay = self.paused_until - time.monotonic()
            if delay <= 0:
                break
            await anyio.sleep(delay)
        if upload:  # Box counts an upload against both limits
            await self.uploads.take()
        await self.api.take()

    def pause(self, seconds: float) -> None:
        self.rate_limited += 1
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


def retry_after(reply: Reply, default: float = 1.0) -> float:
    try:
        return max(0.0, float(reply.headers.get("Retry-After", default)))
    except ValueError:
        return default


class Tokens:
    """The OAuth token: refreshed before it expires and on 401, one refresh at a time.

    Box's refresh tokens are single-use, so a refresh that another task already did is not
    repeated (``refresh(stale)`` only acts while ``stale`` is still the current token).
    """

    def __init__(self, http: aiohttp.ClientSession, credentials: Mapping[str, Any], blob: Mapping[str, Any]) -> None:
        self.http = http
        self.token_url = str(credentials["token_url"])
        self.client_id = str(credentials["client_id"])
        self.client_secret = str(credentials["client_secret"])
        self.lock = anyio.Lock()
        self.refreshes = 0
        expiry = datetime.fromisoformat(str(blob["expiry"]).replace("Z", "+00:00")).timestamp()
        self._set(str(blob["access_token"]), str(blob["refresh_token"]), expiry - time.time())

    def _set(self, access: str, refresh: str, lifetime: float) -> None:
        self.access, self.refresh_token = access, refresh
        self.expires_at = time.time() + lifetime
        self.margin = min(60.0, lifetime / 4)

    async def bearer(self) -> str:
        if time.time() >= self.expires_at - self.margin:
            await self.refresh(self.access)
        return self.access

    async def refresh(self, stale: str) -> None:
        async with self.lock:
            if self.access != stale:
                return
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self.refresh_token,
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }
            async with self.http.post(self.token_url, data=form) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(body, dict):
                    raise UploadError(f"token refresh: HTTP {resp.status} {body}")
            self._set(str(body["access_token"]), str(body["refresh_token"]), float(body["expires_in"]))
            self.refreshes += 1


class BoxCalls:
    """One authenticated, paced, retried request at a time (no Box semantics beyond that)."""

    def __init__(self, http: aiohttp.ClientSession, tokens: Tokens, pacing: Pacing) -> None:
        self.http = http
        self.tokens = tokens
        self.pacing = pacing

    async def call(
        self,
        method: str,
        url: str,
        *,
        upload: bool = False,
        json_body: Any = None,
        data: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send until the answer is final: 429 waits ``Retry-After``; 401 refreshes; 5xx and
        network errors back off (``ATTEMPTS``). Returns every other answer to the caller."""
        failures = limited = 0
        while True:
            await self.pacing.before(upload)
            token = await self.tokens.bearer()
            sent = {"Authorization": f"Bearer {token}", **(headers or {})}
            try:
                async with self.http.request(
                    method, url, json=json_body, data=data() if data else None, headers=sent
                ) as resp:
                    raw = await resp.read()
                    reply = Reply(resp.status, resp.headers, _json_or_none(raw))
            except (aiohttp.ClientError, OSError) as exc:  # OSError: resets, timeouts
                reply = Reply(0, {}, {"message": f"{type(exc).__name__}: {exc}"})
            if reply.status == 429 and limited < MAX_429:
                limited += 1
                self.pacing.pause(retry_after(reply))
                continue
            if reply.status in (0, 401) or reply.status >= 500:
                failures += 1
                if failures >= ATTEMPTS:
                    return reply
                if reply.status == 401:
                    await self.tokens.refresh(token)
                else:
                    backoff = min(8.0, 0.25 * 2**failures) * random.uniform(0.5, 1.5)
                    await anyio.sleep(retry_after(reply, backoff))
                continue
            return reply


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).isoformat()


def _read_part(path: Path, offset: int, length: int) -> tuple[bytes, bytes]:
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read(length)
    return chunk, hashlib.sha1(chunk).digest()


def _read_whole(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha1(data).hexdigest()


@dataclass
class Tally:
    """Progress shared by the uploader (writes) and the display (reads)."""

    files_total: int
    bytes_total: int
    files_done: int = 0
    bytes_done: int = 0


@dataclass
class UploadResult:
    uploaded: int = 0
    errors: list[str] = field(default_factory=list)
    rate_limited: int = 0  # 429s the uploader waited out
    token_refreshes: int = 0


class Uploader:
    """Uploads a list of local files into a Box folder path, creating folders on the way."""

    def __init__(self, calls: BoxCalls, credentials: Mapping[str, Any], tally: Tally, chunked_cutoff: int) -> None:
        self.calls = calls
        self.chunked_cutoff = chunked_cutoff
        self.api_url = str(credentials["api_url"])
        self.upload_url = str(credentials["upload_url"])
        self.tally = tally
        self.folder_ids: dict[tuple[str, ...], str] = {(): "0"}
        self.folder_locks: defaultdict[tuple[str, ...], anyio.Lock] = defaultdict(anyio.Lock)

    async def folder(self, path: tuple[str, ...]) -> str:
        """The id of folder ``path`` (from the root), created with its parents as needed."""
        if path in self.folder_ids:
            return self.folder_ids[path]
        parent = await self.folder(path[:-1])
        async with self.folder_locks[path]:
            if path not in self.folder_ids:
                body = {"name": path[-1], "parent": {"id": parent}}
                reply = await self.calls.call("POST", f"{self.api_url}/folders?fields=id", json_body=body)
                answer = reply.body if isinstance(reply.body, dict) else {}
                conflicts = answer.get("context_info", {}).get("conflicts")
                if reply.status == 201:
                    self.folder_ids[path] = str(answer["id"])
                elif reply.status == 409 and isinstance(conflicts, list):  # an existing folder: use it
                    self.folder_ids[path] = str(conflicts[0]["id"])
                else:
                    raise box_error(f"create folder {'/'.join(path)}", reply)
        return self.folder_ids[path]

    async def file(self, f: LocalFile, dest: tuple[str, ...]) -> None:
        folder_id = await self.folder((*dest, *f.rel[:-1]))
        if f.size >= self.chunked_cutoff:
            await self._chunked(f, folder_id, remote_path(dest, f.rel))
        else:
            await self._simple(f, folder_id, remote_path(dest, f.rel))
        self.tally.files_done += 1

    async def _simple(self, f: LocalFile, folder_id: str, shown: str) -> None:
        data, sha1 = await anyio.to_thread.run_sync(_read_whole, f.path)
        attributes = json.dumps(
            {"name": f.path.name, "parent": {"id": folder_id}, "content_modified_at": _rfc3339(f.mtime)}
        )

        # A fresh body for every attempt, attributes first. BytesIO, as aiohttp warns about large raw bytes.
        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("attributes", attributes)
            fd.add_field("file", io.BytesIO(data), filename=f.path.name, content_type="application/octet-stream")
            return fd

        reply = await self.calls.call(
            "POST",
            f"{self.upload_url}/files/content?fields=id,sha1",
            upload=True,
            data=form,
            headers={"Content-MD5": sha1},
        )
        if reply.status != 201:
            raise box_error(f"upload {shown}", reply)
        self.tally.bytes_done += len(data)

    async def _chunked(self, f: LocalFile, folder_id: str, shown: str) -> None:
        whole = await anyio.to_thread.run_sync(sha1_file, f.path)
        reply = await self.calls.call(
            "POST",
            f"{self.upload_url}/files/upload_sessions",
            upload=True,
            json_body={"folder_id": folder_id, "file_size": f.size, "file_name": f.path.name},
        )
        if reply.status != 201:
            raise box_error(f"create upload session for {shown}", reply)
        session = reply.body
        endpoints = session["session_endpoints"]
        try:
            parts = await self._parts(f, int(session["part_size"]), int(session["total_parts"]), endpoints, shown)
            await self._commit(f, endpoints["commit"], parts, whole, shown)
        except BaseException:
            with anyio.move_on_after(5, shield=True):  # best effort: Box expires sessions anyway
                await self.calls.call("DELETE", endpoints["abort"])
            raise

    async def _parts(
        self, f: LocalFile, part_size: int, total: int, endpoints: Mapping[str, str], shown: str
    ) -> list[Any]:
        parts: list[Any] = [None] * total
        limiter = anyio.CapacityLimiter(PART_CONCURRENCY)  # bounds the part bytes held in memory

        async def one(index: int) -> None:
            async with limiter:
                offset = index * part_size
                length = min(part_size, f.size - offset)
                chunk, digest = await anyio.to_thread.run_sync(_read_part, f.path, offset, length)
                headers = {
                    "Digest": "sha=" + base64.b64encode(digest).decode(),
                    "Content-Range": f"bytes {offset}-{offset + length - 1}/{f.size}",
                    "Content-Type": "application/octet-stream",
                }
                reply = await self.calls.call(
                    "PUT", endpoints["upload_part"], data=lambda: io.BytesIO(chunk), headers=headers
                )
                body = reply.body if isinstance(reply.body, dict) else {}
                if reply.status == 200:
                    parts[index] = body["part"]
                elif (  # an earlier attempt arrived after all (its answer was lost): the same part
                    reply.status == 416
                    and body.get("code") == "range_overlaps_existing_part"
                    and (stored := body.get("context_info", {}).get("conflicting_part", {})).get("sha1") == digest.hex()
                ):
                    parts[index] = stored
                else:
                    raise box_error(f"upload part {index + 1}/{total} of {shown}", reply)
                self.tally.bytes_done += length

        async with anyio.create_task_group() as tg:
            for index in range(total):
                tg.start_soon(one, index)
        return parts

    async def _commit(self, f: LocalFile, url: str, parts: list[Any], whole: str, shown: str) -> None:
        body = {"parts": parts, "attributes": {"content_modified_at": _rfc3339(f.mtime)}}
        headers = {"Digest": "sha=" + base64.b64encode(bytes.fromhex(whole)).decode()}
        for _ in range(COMMIT_RETRIES):
            reply = await self.calls.call("POST", url, json_body=body, headers=headers)
            if reply.status == 201:
                return
            if reply.status != 202:  # 202: parts not processed yet, retry the same commit
                raise box_error(f"commit {shown}", reply)
            await anyio.sleep(retry_after(reply))
        raise UploadError(f"commit {shown}: still 202 after {COMMIT_RETRIES} attempts")


async def upload(
    files: list[LocalFile],
    dest: tuple[str, ...],
    credentials: Mapping[str, Any],
    token: Mapping[str, Any],
    tally: Tally,
    *,
    api_calls_per_minute: int = API_CALLS_PER_MINUTE,
    uploads_per_minute: int = UPLOADS_PER_MINUTE,
    burst: int = max(1, RATE_BURST // 2),
    chunked_cutoff: int = CHUNKED_CUTOFF,
) -> UploadResult:
    """Upload ``files`` to folder path ``dest``; a file that fails is reported, the rest go on."""
    result = UploadResult()
    pacing = Pacing(api_calls_per_minute, uploads_per_minute, burst)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        tokens = Tokens(http, credentials, token)
        uploader = Uploader(BoxCalls(http, tokens, pacing), credentials, tally, max(chunked_cutoff, SESSION_MIN_SIZE))
        limiter = anyio.CapacityLimiter(FILE_CONCURRENCY)

        async def one(f: LocalFile) -> None:
            async with limiter:
                try:
                    await uploader.file(f, dest)
                    result.uploaded += 1
                except UploadError as exc:
                    result.errors.append(str(exc))

        async with anyio.create_task_group() as tg:
            for f in files:
                tg.start_soon(one, f)
        result.rate_limited = pacing.rate_limited
        result.token_refreshes = tokens.refreshes
    return result


# ------------------------------------------------------------------- progress and checking


async def show_progress(tally: Tally, tty: bool) -> None:
    """Render ``tally`` until cancelled: a rich bar on a terminal, a line a second otherwise."""
    await (_rich_progress(tally) if tty else _plain_progress(tally))


def eta(tally: Tally, elapsed: float) -> str:
    """Time left, by bytes or by files, whichever is further: small files are held back by the
    uploads-per-minute limit, not by bandwidth, so a bytes-only estimate would be far too short."""
    if elapsed <= 0 or not tally.bytes_done or not tally.files_done:
        return "-:--"
    left = max(
        (tally.bytes_total - tally.bytes_done) * elapsed / tally.bytes_done,
        (tally.files_total - tally.files_done) * elapsed / tally.files_done,
    )
    return f"{int(left) // 60}:{int(left) % 60:02d}"


async def _rich_progress(tally: Tally) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    columns = (
        TextColumn("uploading"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[files]}"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    start = time.monotonic()
    with Progress(*columns) as progress:
        task = progress.add_task("upload", total=tally.bytes_total, files="", rate="", eta="-:--")

        def update() -> None:
            elapsed = max(time.monotonic() - start, 1e-9)
            progress.update(
                task,
                completed=tally.bytes_done,
                files=f"{tally.files_done}/{tally.files_total} files",
                rate=f"{tally.bytes_done / MIB / elapsed:.1f} MiB/s",
                eta=eta(tally, elapsed),
            )

        try:
            while True:
                update()
                await anyio.sleep(0.1)
        finally:
            update()


async def _plain_progress(tally: Tally) -> None:
    start = time.monotonic()

    def line() -> None:
        elapsed = max(time.monotonic() - start, 1e-9)
        print(
            f"  {tally.files_done}/{tally.files_total} files, "
            f"{tally.bytes_done / MIB:.1f}/{tally.bytes_total / MIB:.1f} MiB, "
            f"{tally.bytes_done / MIB / elapsed:.1f} MiB/s, {elapsed:.1f} s, ETA {eta(tally, elapsed)}",
            flush=True,
        )

    try:
        while True:
            await anyio.sleep(1.0)
            line()
    finally:
        line()


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


async def run_demo(data_dir: Path | None, keep: bool) -> int:
    tty = sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="boxd-demo-") as tmp:
        sim_dir = data_dir if data_dir is not None else Path(tmp) / "sim"
        sample = Path(tmp) / "sample"
        started = time.monotonic()
        await anyio.to_thread.run_sync(generate_sample, sample)
        files = scan(sample)
        tally = Tally(len(files), sum(f.size for f in files))
        print(
            f"boxd demo: generated a sample backup: {tally.files_total} files, {tally.bytes_total / MIB:.1f} MiB "
            f"(a restic repository and a {ARCHIVE_SIZE / MIB:.0f} MiB archive) in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        knobs = Knobs(
            api_calls_per_minute=API_CALLS_PER_MINUTE, uploads_per_minute=UPLOADS_PER_MINUTE, rate_burst=RATE_BURST
        )
        options = SimOptions(host="127.0.0.1", port=0, data_dir=sim_dir)
        async with running(options, knobs) as (_, base), aiohttp.ClientSession() as admin:
            credentials = json.loads((sim_dir / "credentials.json").read_text())
            print(
                f"boxd demo: Box emulator at {base}: {API_CALLS_PER_MINUTE} API calls and "
                f"{UPLOADS_PER_MINUTE} uploads a minute (burst {RATE_BURST}), "
                f"access tokens live {DEMO_TOKEN_TTL} s",
                flush=True,
            )
            # Shorten the token lifetime for this run, then authorise as `rclone authorize` would.
            await _admin(admin, base, "POST", "/_sim/faults", {"token_ttl": DEMO_TOKEN_TTL})
            token = await _admin(admin, base, "POST", "/_sim/tokens")
            dest_shown = "/".join(DESTINATION)
            print(f"boxd demo: uploading to {dest_shown}/ (interim uploader)", flush=True)
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(show_progress, tally, tty)
                result = await upload(files, DESTINATION, credentials, token, tally)
                tg.cancel_scope.cancel()
            elapsed = time.monotonic() - started
            await _admin(admin, base, "DELETE", "/_sim/faults")  # Box's token lifetime again
            stats = await _admin(admin, base, "GET", "/_sim/stats")
            state = await _admin(admin, base, "GET", "/_sim/state")
            checked = await anyio.to_thread.run_sync(verify, sample, DESTINATION, state)

            done_bytes = tally.bytes_done
            print(
                f"boxd demo: uploaded {result.uploaded}/{tally.files_total} files, {done_bytes / MIB:.1f} MiB "
                f"in {elapsed:.1f} s ({done_bytes / MIB / max(elapsed, 1e-9):.1f} MiB/s)"
            )
            print(
                f"  429s honoured: {stats['rate_limited']} (emulator) / {result.rate_limited} (uploader); "
                f"token refreshes: {stats['token_grants']['refresh_token']}"
            )
            for error in result.errors:
                print(f"  error: {error}")
            for problem in checked.problems:
                print(f"  {problem}")
            ok = not result.errors and not checked.problems and checked.checked == tally.files_total
            if ok:
                print(f"  verified: all {checked.checked} files match their SHA-1 on the emulator")
            else:
                print(f"  verification FAILED: {len(checked.problems)} of {checked.checked} files")
            sys.stdout.flush()
            if keep:
                print(
                    f"boxd demo: the emulator keeps running at {base} (uploads under {dest_shown}/); "
                    f"credentials in {sim_dir / 'credentials.json'}. Ctrl-C stops it.",
                    flush=True,
                )
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
        return 0 if ok else 1


DESCRIPTION = (
    "Start the Box emulator with Box's rate limits, generate a sample backup, upload it "
    "with live progress and verify every file by SHA-1."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``boxd demo`` (registered by :mod:`boxd.cli`)."""
    parser.add_argument(
        "--data-dir", type=Path, help="the emulator's data directory [a temporary directory, removed afterwards]"
    )
    parser.add_argument("--keep", action="store_true", help="keep the emulator running after the summary, until Ctrl-C")


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit status is 0 only if every file verified."""
    try:
        return anyio.run(run_demo, args.data_dir, args.keep)
    except KeyboardInterrupt:
        print("boxd demo: interrupted", file=sys.stderr)
        return 130
