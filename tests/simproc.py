"""Run the Box emulator (``boxd sim``) as a real subprocess for tests.

Tests that drive the emulator with real clients (Box's SDK, rclone, plain HTTP) start it
through :func:`running_sim`, which waits for ``credentials.json`` (written only once the
socket is bound) instead of sleeping, and always stops the process afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Sim:
    """A running emulator: its base URL, data dir, and the credentials it wrote."""

    base: str
    data_dir: Path
    credentials: dict[str, Any]
    process: subprocess.Popen[bytes]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the admin API (``/_sim/...``) and return the decoded JSON (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30, context=_insecure_ctx()) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def state(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/_sim/state"))

    def stats(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/_sim/stats"))

    def set_faults(self, **knobs: Any) -> Any:
        return self.admin("POST", "/_sim/faults", knobs)

    def reset_faults(self) -> None:
        self.admin("DELETE", "/_sim/faults")

    def new_token(self) -> dict[str, Any]:
        return dict(self.admin("POST", "/_sim/tokens"))


def _insecure_ctx() -> Any:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@contextlib.contextmanager
def running_server(
    cmd: list[str], data_dir: Path, *, env: dict[str, str] | None = None, timeout: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """Run ``cmd``, a server that writes ``data_dir/credentials.json`` once it listens; stop it after.

    Yields the process and the decoded credentials; its output goes to ``data_dir/server.log``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    creds_path = data_dir / "credentials.json"
    creds_path.unlink(missing_ok=True)
    log_path = data_dir / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while not creds_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd} did not start within {timeout}s")
            time.sleep(0.05)
        yield proc, json.loads(creds_path.read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@contextlib.contextmanager
def running_sim(
    data_dir: Path,
    *flags: str,
    host: str = "127.0.0.1",
    port: int = 0,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Sim]:
    """Start ``python -m boxd sim`` on ``host:port`` (0 = any free port) and yield it.

    ``prefix`` runs the emulator under another command (e.g. ``box-netns exec --``).
    """
    cmd = [
        *(prefix or []),
        sys.executable,
        "-m",
        "boxd",
        "sim",
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *flags,
    ]
    with running_server(cmd, data_dir, env=env, timeout=timeout) as (proc, creds):
        base = creds["api_url"].removesuffix("/2.0")
        yield Sim(base=base, data_dir=data_dir, credentials=creds, process=proc)
