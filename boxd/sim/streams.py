"""Streaming request bodies to disk and responses from disk, hashing and throttling on the way.

The emulator never holds a whole file in memory: bodies are copied in chunks of at most
:data:`CHUNK` bytes, hashed with SHA-1 and written by a worker thread, so a benchmark measures
the client, not the emulator. ``bandwidth`` (bytes/s, 0 = unlimited) throttles one transfer,
which is one connection's worth since HTTP/1.1 carries one request at a time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

import anyio
from aiohttp import web

CHUNK = 1024 * 1024


class Throttle:
    """Paces a transfer to ``rate`` bytes a second (no-op when 0)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def chunk_size(self) -> int:
        """Smaller chunks when throttled, so pacing is smooth rather than a burst then a pause."""
        return CHUNK if not self.rate else max(16 * 1024, min(CHUNK, self.rate // 10))

    async def account(self, nbytes: int) -> None:
        if not self.rate:
            return
        self.sent += nbytes
        delay = self.start + self.sent / self.rate - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)


async def receive(
    chunks: Callable[[int], Awaitable[bytes]],
    dest: Path,
    *,
    bandwidth: int = 0,
    limit: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """Copy a body to ``dest`` via ``chunks(n)`` (returns b"" at the end).

    Returns (size, SHA-1 hex). Stops reading after ``limit`` bytes (the caller then drops the
    connection); a partial file is removed on any error.
    """
    digest = hashlib.sha1()
    throttle = Throttle(bandwidth)
    size = 0

    def sink(fh: IO[bytes], buf: bytes) -> None:
        digest.update(buf)
        fh.write(buf)

    fh = await anyio.to_thread.run_sync(dest.open, "wb")
    try:
        while limit is None or size < limit:
            want = throttle.chunk_size() if limit is None else min(throttle.chunk_size(), limit - size)
            buf = await chunks(want)
            if not buf:
                break
            size += len(buf)
            if on_bytes is not None:
                on_bytes(len(buf))
            await anyio.to_thread.run_sync(sink, fh, buf)
            await throttle.account(len(buf))
    except BaseException:
        # Shielded: a cancelled handler (client gone, server stopping) must still close and remove.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(fh.close)
            await anyio.to_thread.run_sync(lambda: dest.unlink(missing_ok=True))
        raise
    await anyio.to_thread.run_sync(fh.close)
    return size, digest.hexdigest()


async def iter_file(path: Path, bandwidth: int = 0) -> AsyncIterator[bytes]:
    """Yield a file's bytes in chunks, read by a worker thread."""
    throttle = Throttle(bandwidth)
    fh = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        while chunk := await anyio.to_thread.run_sync(fh.read, throttle.chunk_size()):
            # Pace before handing the chunk over: the client has the body once the last one is sent.
            await throttle.account(len(chunk))
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(fh.close)


async def send_file(request: web.Request, path: Path, size: int, bandwidth: int = 0) -> web.StreamResponse:
    """Stream ``path`` as ``application/octet-stream``."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    await resp.prepare(request)
    async for chunk in iter_file(path, bandwidth):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def concatenate(parts: list[Path], dest: Path) -> str:
    """Join ``parts`` into ``dest`` in a worker thread; return the whole file's SHA-1 hex."""

    def run() -> str:
        digest = hashlib.sha1()
        with dest.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while buf := src.read(CHUNK):
                        digest.update(buf)
                        out.write(buf)
        return digest.hexdigest()

    return await anyio.to_thread.run_sync(run)
