"""Run ``boxd serve`` as a real subprocess against an emulator subprocess, for end-to-end tests.

Readiness is the daemon's own ``READY=1`` on a notify socket the test owns (the sd_notify
protocol systemd uses), so tests wait on the real signal instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.simproc import Sim


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    """A configured daemon (maybe not running): its config file, paths and notify messages."""

    sim: Sim
    root: Path
    config: Path
    socket_path: Path
    listen: str
    source: Path
    state_dir: Path
    notify_path: Path
    process: subprocess.Popen[bytes] | None = None
    messages: list[str] = field(default_factory=list)
    _notify: socket.socket | None = None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start ``boxd serve`` and wait for READY=1."""
        assert self.process is None or self.process.poll() is not None
        self.messages.clear()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path.unlink(missing_ok=True)
        self._notify.bind(str(self.notify_path))
        self._notify.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "BOXD_CONFIG": str(self.config)}
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "boxd", "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        self.wait_for_message("READY=1", timeout=timeout)

    def wait_for_message(self, wanted: str, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(wanted in m for m in self.messages):
            assert self._notify is not None and self.process is not None
            if self.process.poll() is not None and wanted != "STOPPING=1":
                raise RuntimeError(f"boxd serve exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {wanted} within {timeout}s; got {self.messages}\n{self.log()}")
            with contextlib.suppress(TimeoutError):
                self.messages.append(self._notify.recv(4096).decode())

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        if self._notify is not None:
            with contextlib.suppress(OSError):
                while True:
                    self._notify.settimeout(0.05)
                    self.messages.append(self._notify.recv(4096).decode())
            self._notify.close()
            self._notify = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def boxd(self, *args: str, stdin: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``boxd`` client command against this daemon."""
        env = {**os.environ, "BOXD_SOCKET": str(self.socket_path), "BOXD_CONFIG": str(self.config)}
        return subprocess.run(
            [sys.executable, "-m", "boxd", *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )

    def http(self, path: str) -> tuple[int, str]:
        """GET on the health/metrics listener."""
        try:
            with urllib.request.urlopen(f"http://{self.listen}{path}", timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def write_daemon_config(sim: Sim, root: Path, **daemon: Any) -> Daemon:
    """A daemon configuration for ``sim``; the socket lives in a short /tmp path (AF_UNIX limit)."""
    root.mkdir(parents=True, exist_ok=True)
    short = Path(tempfile.mkdtemp(prefix="bxd", dir="/tmp"))
    source = root / "backups"
    source.mkdir(exist_ok=True)
    state = root / "state"
    creds = sim.credentials
    listen = f"127.0.0.1:{free_port()}"
    box = {
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "token": json.dumps(creds["token"]),
        "api_url": creds["api_url"],
        "upload_url": creds["upload_url"],
        "token_url": creds["token_url"],
    }
    values = {
        "socket": str(short / "boxd.sock"),
        "state_dir": str(state),
        "allowed_sources": [str(source)],
        "shutdown_grace": "5s",
        **daemon,
    }
    lines = [
        "[box]",
        *(f"{k} = {json.dumps(v)}" for k, v in box.items()),
        "[daemon]",
        *(f"{k} = {json.dumps(v)}" for k, v in values.items()),
        "[http]",
        f'listen = "{listen}"',
    ]
    config = root / "boxd.toml"
    config.write_text("\n".join(lines) + "\n")
    return Daemon(
        sim=sim,
        root=root,
        config=config,
        socket_path=short / "boxd.sock",
        listen=listen,
        source=source,
        state_dir=state,
        notify_path=short / "notify.sock",
    )


@contextlib.contextmanager
def running_daemon(sim: Sim, root: Path, **daemon: Any) -> Iterator[Daemon]:
    d = write_daemon_config(sim, root, **daemon)
    d.start()
    try:
        yield d
    finally:
        if d.process is not None and d.process.poll() is None:
            d.stop(signal.SIGKILL)
