"""Serve the control API the way systemd starts boxd with ``boxd.socket``: the listening socket
arrives as fd 3 with ``LISTEN_PID``/``LISTEN_FDS``. Stops when stdin closes.

Usage: ``control_child.py FD DB UNUSED_SOCKET ALLOWED_SOURCE``.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    fd = int(sys.argv[1])
    if fd != 3:  # what systemd does: the passed sockets start at fd 3
        os.dup2(fd, 3)
        os.close(fd)
    os.environ["LISTEN_PID"], os.environ["LISTEN_FDS"] = str(os.getpid()), "1"

    import time
    from typing import Any

    import anyio
    import anyio.to_thread

    from boxd.jobs.store import Store
    from boxd.server.control import create_control_app, serve_control
    from boxd.settings import DaemonSettings, Settings

    class Control:
        def wake(self) -> None:
            pass

        async def cancel(self, job_id: str) -> None:
            pass

        def status(self) -> dict[str, Any]:
            return {}

    async def run() -> None:
        daemon = DaemonSettings.model_validate({"socket": sys.argv[3], "allowed_sources": [sys.argv[4]]})
        settings = Settings(daemon=daemon)
        store = await Store.open(sys.argv[2])
        app = create_control_app(store, Control(), settings, started_at=time.time(), version="child")
        async with anyio.create_task_group() as tg:
            await tg.start(serve_control, app, settings)
            await anyio.to_thread.run_sync(sys.stdin.read)
            tg.cancel_scope.cancel()
        await store.close()

    anyio.run(run)


if __name__ == "__main__":
    main()
