"""A null-sink upload server: the reference the emulator's ingest rate is compared with.

It answers the same three upload-session requests as ``boxd sim`` (create, PUT part, commit)
with the same aiohttp server stack, but a part's body is only read (in the emulator's 1 MiB
reads) and thrown away: no hashing, no disk, no auth, no bookkeeping. What it reaches is what
loopback HTTP with aiohttp allows on this machine.

    python -m tests.bench.null_sink --port 0 --data-dir DIR [--part-size BYTES]

Like the emulator it writes ``DIR/credentials.json`` (``upload_url``, a dummy ``token``) once
its socket is bound, and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

CHUNK = 1024 * 1024  # the emulator's read size (boxd.sim.streams.CHUNK)
PART_SIZE = 8 * 1024 * 1024
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_PART_SIZE: web.AppKey[int] = web.AppKey("part_size", int)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def create_session(request: web.Request) -> web.Response:
    body: dict[str, Any] = await request.json()
    size = int(body["file_size"])
    part_size = request.app[_PART_SIZE]
    sid = secrets.token_hex(8)
    url = f"{_base(request)}/api/2.0/files/upload_sessions/{sid}"
    session = {
        "id": sid,
        "type": "upload_session",
        "part_size": part_size,
        "total_parts": -(-size // part_size),
        "num_parts_processed": 0,
        "session_endpoints": {"upload_part": url, "commit": f"{url}/commit"},
    }
    return web.json_response(session, status=201)


async def upload_part(request: web.Request) -> web.Response:
    match = _RANGE.match(request.headers.get("Content-Range", ""))
    first = int(match.group(1)) if match else 0
    size = 0
    while buf := await request.content.read(CHUNK):
        size += len(buf)
    part = {"part_id": secrets.token_hex(4).upper(), "offset": first, "size": size, "sha1": ""}
    return web.json_response({"part": part})


async def commit(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"total_count": 1, "entries": [{"type": "file", "id": "1"}]}, status=201)


def create_app(part_size: int = PART_SIZE) -> web.Application:
    app = web.Application()
    app[_PART_SIZE] = part_size
    app.router.add_post("/api/2.0/files/upload_sessions", create_session)
    app.router.add_put("/api/2.0/files/upload_sessions/{session_id}", upload_part)
    app.router.add_post("/api/2.0/files/upload_sessions/{session_id}/commit", commit)
    return app


def _write_ready(data_dir: Path, creds: dict[str, Any]) -> None:
    """Write ``credentials.json`` atomically: a waiting caller never reads half a file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / ".credentials.json.tmp"
    tmp.write_text(json.dumps(creds))
    os.replace(tmp, data_dir / "credentials.json")


async def serve(host: str, port: int, data_dir: Path, part_size: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    runner = web.AppRunner(create_app(part_size), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _write_ready(data_dir, {"upload_url": f"http://{host}:{bound}/api/2.0", "token": {"access_token": "null-sink"}})
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.null_sink", description="A null-sink upload server (benchmark reference)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--part-size", type=int, default=PART_SIZE)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.data_dir, args.part_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
