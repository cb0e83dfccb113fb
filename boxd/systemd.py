"""The daemon's side of systemd's protocols: sd_notify, the watchdog, socket activation.

Implemented from the documented wire formats (sd_notify(3), sd_listen_fds(3)); no libsystemd.
Everything is a no-op outside systemd, so the same code runs under a terminal or in tests,
which point ``NOTIFY_SOCKET`` at a socket of their own.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=...`` lines; False without systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WatchdogSec``), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6 / 2


def listen_fds() -> list[socket.socket]:
    """Sockets passed by socket activation (``LISTEN_FDS``), consumed so children don't inherit them."""
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if not pid or not count or not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
