"""Running ``boxd sim``: bind, optional TLS, write the credential files, serve until SIGTERM.

On start the emulator writes, atomically and only once its socket is bound (so a waiting
test or script can poll for it):

- ``DATA/box_config.json``: a Box JWT app config with an RSA key the emulator trusts. It is
  kept across restarts, so the same ``clientID``/``clientSecret``/key keep working.
- ``DATA/credentials.json``: ``client_id``, ``client_secret``, a fresh rclone-style
  ``token`` blob and the ``api_url``/``upload_url``/``token_url`` that boxd's ``[box]`` keys take.

Content lives in memory and under ``DATA/blobs``; a restart starts with an empty account.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from boxd.sim.app import create_app
from boxd.sim.appkeys import TOKEN_AUDIENCE, JwtVerifier, load_box_config_keys, make_box_config
from boxd.sim.config import Knobs
from boxd.sim.state import SimState


@dataclass
class SimOptions:
    host: str = "127.0.0.1"
    port: int = 8089
    data_dir: Path = Path("boxd-sim-data")
    tls_cert: Path | None = None
    tls_key: Path | None = None


def write_json_atomic(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a temp file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_or_create_app_config(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "box_config.json"
    if path.exists():
        config: dict[str, Any] = json.loads(path.read_text())
        return config
    config, _ = make_box_config(
        client_id=secrets.token_hex(16), client_secret=secrets.token_hex(16), enterprise_id="1234567"
    )
    write_json_atomic(path, config)
    return config


def build_state(options: SimOptions, knobs: Knobs) -> SimState:
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("blobs", "sessions"):  # content of an earlier run is not in memory any more
        shutil.rmtree(data_dir / stale, ignore_errors=True)
    config = load_or_create_app_config(data_dir)
    verifier = JwtVerifier(load_box_config_keys(config), audiences=(TOKEN_AUDIENCE,))
    return SimState.create(data_dir, knobs, config, verifier)


def credentials(state: SimState, base: str) -> dict[str, Any]:
    settings = state.box_config["boxAppSettings"]
    token = state.authority.rclone_blob(state.authority.issue(state.user.id, with_refresh=True))
    return {
        "client_id": settings["clientID"],
        "client_secret": settings["clientSecret"],
        "token": token,
        "api_url": f"{base}/2.0",
        "upload_url": f"{base}/api/2.0",
        "token_url": f"{base}/oauth2/token",
    }


class SimStartError(Exception):
    """The emulator cannot start (address in use, unreadable certificate, ...); the message says why."""


def _ssl_context(options: SimOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(options.tls_cert), str(options.tls_key or options.tls_cert))
    except OSError as exc:  # ssl.SSLError and FileNotFoundError alike
        raise SimStartError(f"cannot load --tls-cert {options.tls_cert} / --tls-key {options.tls_key}: {exc}") from None
    return ctx


@contextlib.asynccontextmanager
async def running(options: SimOptions, knobs: Knobs) -> AsyncIterator[tuple[SimState, str]]:
    """Serve the emulator while the ``async with`` block runs.

    Yields ``(state, base_url)`` once the socket is bound and ``credentials.json`` written;
    ``state`` is the live emulator (its knobs may be changed in place). ``options.port`` 0
    picks a free port, visible in ``base_url``. The server stops when the block ends.
    """
    state = build_state(options, knobs)
    tls = _ssl_context(options)
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options.host, options.port))
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise SimStartError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]
    host = "127.0.0.1" if options.host in ("0.0.0.0", "") else options.host
    host = f"[{host}]" if ":" in host else host
    base = f"{'https' if tls else 'http'}://{host}:{port}"
    state.jwt.add_audience(f"{base}/oauth2/token")

    runner = web.AppRunner(create_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock, ssl_context=tls)
        await site.start()
        write_json_atomic(options.data_dir / "credentials.json", credentials(state, base))
        yield state, base
    finally:
        await runner.cleanup()
        sock.close()


async def serve(options: SimOptions, knobs: Knobs) -> None:
    """Serve until SIGTERM or SIGINT."""
    try:
        async with running(options, knobs) as (_, base):
            print(
                f"boxd sim: serving Box at {base} (data in {options.data_dir}, "
                f"credentials in {options.data_dir / 'credentials.json'})",
                flush=True,
            )
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
    finally:
        sys.stdout.flush()


def run(options: SimOptions, knobs: Knobs) -> None:
    anyio.run(serve, options, knobs)
