"""The scheduler: claims queued jobs (priority, then age) and runs each in its own cancel scope.

It knows jobs, not Box: a :class:`Runner` does the work. Up to ``max_jobs`` jobs run at once
(their files share the runner's ``transfers`` limit). A job whose runner lost Box's
authorisation goes back to the queue with ``waiting_reason``, and claiming pauses until
:meth:`Scheduler.auth_restored`. Shutdown is phased: :meth:`stop_claiming`, then
:meth:`drain` gives running jobs ``grace`` seconds and cancels the rest, putting them back in
the queue with their checkpoints (their Box sessions stay open to be resumed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from boxd import logs
from boxd.jobs.models import ErrorInfo, Job, JobState
from boxd.jobs.store import JobStore

log = logs.get("scheduler")
AUTH_WAITING = "auth_needs_reauthorization"
#: Queued jobs are also looked for this often, in case a wake-up was missed.
POLL = 5.0


class AuthLostError(Exception):
    """Raised by a runner when Box no longer accepts boxd's credentials (the job was requeued)."""


class Runner(Protocol):
    async def run(self, job: Job) -> Job: ...
    async def abort_sessions(self, job_id: str) -> None: ...


class Scheduler:
    """Claims and runs jobs; also the control API's ``JobControl``."""

    def __init__(
        self,
        store: JobStore,
        runner: Runner,
        *,
        max_jobs: int,
        on_auth_lost: Callable[[], Awaitable[None]] | None = None,
        details: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.runner, self.max_jobs = store, runner, max_jobs
        self._on_auth_lost = on_auth_lost
        self._details = details
        self._clock = clock
        self._wake = anyio.Event()
        self._running: dict[str, anyio.CancelScope] = {}
        self._user_cancelled: set[str] = set()
        self._stopping = False
        self.auth_ok = True

    # -- JobControl ----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def cancel(self, job_id: str) -> None:
        """Stop a running job's transfers; its unfinished Box sessions are aborted."""
        scope = self._running.get(job_id)
        if scope is not None:
            self._user_cancelled.add(job_id)
            scope.cancel()
        else:
            # Sessions a queued job left open (it was interrupted earlier): abort them, but do
            # not hold the API's answer hostage to a slow Box; unaborted ones expire in 7 days.
            with anyio.move_on_after(10):
                await self.runner.abort_sessions(job_id)

    def status(self) -> dict[str, Any]:
        # The daemon's details (auth, paused, pause_reason, transfers) first, then the queue's own.
        out: dict[str, Any] = dict(self._details()) if self._details is not None else {}
        out.update(
            running_jobs=sorted(self._running),
            claiming=not self._stopping and self.auth_ok,
            auth_ok=self.auth_ok,
        )
        return out

    # -- auth ----------------------------------------------------------------------------------

    async def auth_lost(self) -> None:
        if self.auth_ok:
            self.auth_ok = False
            log.error("auth_lost", action='run `rclone authorize "box"` then `boxd token import`')
        await self.store.set_waiting(None, AUTH_WAITING)
        if self._on_auth_lost is not None:
            await self._on_auth_lost()

    async def auth_restored(self) -> None:
        self.auth_ok = True
        cleared = await self.store.set_waiting(None, None)
        log.info("auth_restored", jobs_resumed=cleared)
        self.wake()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim and run jobs until cancelled (or :meth:`stop_claiming` and every job ended)."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while not self._stopping:
                if not self.auth_ok or len(self._running) >= self.max_jobs:
                    await self._sleep_until_woken(None)
                    continue
                job = await self.store.claim_next_job(self._clock())
                if job is None:
                    await self._sleep_until_woken(POLL)
                    continue
                scope = anyio.CancelScope()
                self._running[job.id] = scope
                tg.start_soon(self._run_job, job, scope, name=f"job {job.id}")

    async def _sleep_until_woken(self, at_most: float | None) -> None:
        with anyio.move_on_after(at_most):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def _run_job(self, job: Job, scope: anyio.CancelScope) -> None:
        bound = log.bind(job_id=job.id)
        bound.info("job_started", source=job.request.source)
        try:
            with scope:
                await self.runner.run(job)
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    if job.id in self._user_cancelled:
                        await self.runner.abort_sessions(job.id)
                        bound.info("job_cancelled")
                    else:  # shutdown: back to the queue, sessions kept for the next start
                        current = await self.store.get_job(job.id)
                        if current is not None and current.state is JobState.RUNNING:
                            await self.store.requeue_job(job.id)
                        bound.info("job_interrupted")
        except AuthLostError:
            await self.auth_lost()
        except Exception as exc:  # a bug must fail this job, not the daemon
            bound.exception("job_crashed")
            with anyio.CancelScope(shield=True):
                await self._settle_crashed(job, exc)
        finally:
            self._running.pop(job.id, None)
            self._user_cancelled.discard(job.id)
            self.wake()

    async def _settle_crashed(self, job: Job, exc: Exception) -> None:
        """Fail a job whose runner crashed; if its files cannot be settled now, requeue it."""
        error = ErrorInfo("internal_error", f"{type(exc).__name__}: {exc}")
        try:
            current = await self.store.get_job(job.id)
            if current is not None and current.state is JobState.RUNNING:
                await self.store.finish_job(job.id, self._clock(), error=error)
        except Exception:
            try:  # files still marked running: back to the queue (recover() would do the same)
                await self.store.requeue_job(job.id)
            except Exception:
                log.exception("job_settle_failed", job_id=job.id)

    # -- shutdown ------------------------------------------------------------------------------

    def stop_claiming(self) -> None:
        self._stopping = True
        self.wake()

    async def drain(self, grace: float) -> None:
        """Let running jobs go on for ``grace`` seconds, then cancel them (they are requeued)."""
        with anyio.move_on_after(grace):
            while self._running:
                await self._sleep_until_woken(None)
        for scope in list(self._running.values()):
            scope.cancel()
        while self._running:
            await self._sleep_until_woken(1.0)
