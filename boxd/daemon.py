"""The composition root: build the real parts, run them as named services, shut down in phases.

Start: take the state-dir lock, open the queue, put interrupted jobs back (``recover``),
connect to Box, start the control socket, the health/metrics server, the scheduler, the
watchdog and the token watcher; only then ``READY=1``. SIGTERM/SIGINT: ``STOPPING=1``, stop
accepting, stop claiming, give running transfers ``shutdown_grace``, cancel the rest (their
sessions stay resumable), exit 0. SIGHUP: look at the token store now. A service that fails
stops the daemon with an error, and systemd restarts it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO

import anyio
import anyio.abc
from aiohttp import web

from boxd import __version__, logs, systemd
from boxd.accounting import Stats
from boxd.box.auth import TokenProvider
from boxd.box.connect import open_box
from boxd.errors import BoxdError, ConfigError
from boxd.jobs.scheduler import Scheduler
from boxd.jobs.store import Store
from boxd.metrics import Metrics
from boxd.server.control import create_control_app, serve_control
from boxd.server.health import Liveness, create_health_app
from boxd.settings import Settings
from boxd.transfer.runner import JobRunner

log = logs.get("daemon")
#: How often the token store is checked for `boxd token import` (SIGHUP checks at once).
TOKEN_WATCH = 3.0


def _lock_state_dir(settings: Settings) -> IO[str]:
    state = settings.daemon.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        fh = open(state / "boxd.lock", "w")  # noqa: SIM115 - held for the daemon's lifetime
    except OSError as exc:
        raise ConfigError(f"invalid configuration: daemon.state_dir: cannot use {state}: {exc.strerror}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(f"another boxd is running with state_dir {state} (it holds {state / 'boxd.lock'})") from None
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


@asynccontextmanager
async def _tcp_site(app: web.Application, listen: str) -> AsyncIterator[None]:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"invalid configuration: http.listen: cannot listen on {listen}: {exc.strerror}"
            ) from None
        yield
    finally:
        await runner.cleanup()


async def _serve_health(
    app: web.Application, listen: str, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    async with _tcp_site(app, listen):
        task_status.started()
        await anyio.sleep_forever()


async def _watchdog(liveness: Liveness) -> None:
    interval = systemd.watchdog_interval()
    while True:
        liveness.stamp()
        if interval is not None:
            systemd.notify("WATCHDOG=1")
        await anyio.sleep(min(interval or 5.0, 5.0))


async def _watch_tokens(tokens: TokenProvider, scheduler: Scheduler, hup: anyio.Event) -> None:
    """Adopt a token stored by ``boxd token import``; resume jobs that waited for it."""
    while True:
        with anyio.move_on_after(TOKEN_WATCH):
            await hup.wait()
        try:
            changed = await tokens.reload_if_changed()
        except BoxdError as exc:
            log.warning("token_reload_failed", error=str(exc))
            continue
        if changed:
            log.info("token_reloaded")
            if not scheduler.auth_ok:
                await scheduler.auth_restored()


async def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit status."""
    started = time.time()
    lock = await anyio.to_thread.run_sync(_lock_state_dir, settings)
    stats, liveness = Stats(), Liveness()
    metrics = Metrics(stats)
    store = await Store.open(settings.daemon.state_dir / "queue.db")
    try:
        recovered = await store.recover()
        log.info("queue_recovered", jobs=len(recovered))
        async with open_box(settings, stats) as box:
            runner = JobRunner(store, box, settings, stats)

            def details() -> dict[str, object]:
                paused = box.pacer.paused_until is not None
                auth_state = "ok" if stats.auth_ok else "needs_reauthorization"
                return {
                    "auth": {"state": auth_state, "method": box.tokens.name, "detail": None},
                    "paused": paused,
                    "pause_reason": "Box answered 429; all requests wait" if paused else None,
                    "transfers": runner.in_flight_transfers(),
                }

            scheduler = Scheduler(store, runner, max_jobs=settings.daemon.transfers, details=details)

            async def store_ok() -> str:
                await store.counts()
                return "ok"

            async def auth_ok() -> str:
                return "ok" if scheduler.auth_ok and stats.auth_ok else "auth_needs_reauthorization"

            async def box_ok() -> str:
                return stats.box_reachable()

            control = create_control_app(store, scheduler, settings, started_at=started, version=__version__)
            health = create_health_app(
                metrics, store.counts, {"store": store_ok, "auth": auth_ok, "box": box_ok}, liveness
            )
            hup = anyio.Event()
            async with anyio.create_task_group() as tg:
                control_scope = anyio.CancelScope()

                async def control_service(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    with control_scope:
                        await serve_control(control, settings, task_status=task_status)

                await tg.start(control_service, name="control")
                await tg.start(_serve_health, health, settings.http.listen, name="health")
                await tg.start(scheduler.run, name="scheduler")
                tg.start_soon(_watchdog, liveness, name="watchdog")
                tg.start_soon(_watch_tokens, box.tokens, scheduler, hup, name="tokens")
                systemd.notify("READY=1", f"STATUS=serving; {len(recovered)} job(s) recovered")
                log.info(
                    "daemon_ready",
                    socket=str(settings.daemon.socket),
                    listen=settings.http.listen,
                    auth=box.tokens.name,
                    version=__version__,
                )
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            hup.set()
                            hup = anyio.Event()
                            continue
                        break
                systemd.notify("STOPPING=1", "STATUS=draining")
                log.info("daemon_stopping", grace=settings.daemon.shutdown_grace)
                control_scope.cancel()  # 1. stop accepting
                scheduler.stop_claiming()  # 2. stop claiming
                with anyio.CancelScope(shield=True):
                    await scheduler.drain(settings.daemon.shutdown_grace)  # 3–5. grace, cancel, requeue
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
        lock.close()
    log.info("daemon_stopped")
    return 0
