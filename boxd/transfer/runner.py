"""Running one job: plan it (scan, list the destination, compare), then move every file.

A job is (re)planned each time it starts, so files that changed while the daemon was down
are noticed; the store keeps the session checkpoints of unchanged files, so an interrupted
chunked upload resumes where it stopped. Files run ``daemon.transfers`` at a time across all
jobs (one limiter shared by every runner). Transient failures are retried with backoff up to
``daemon.max_attempts``; a lost authorisation stops the job and hands it back to the queue.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from boxd import logs
from boxd.accounting import Stats
from boxd.box.connect import BoxStack
from boxd.box.folders import fold
from boxd.box.models import Item
from boxd.box.retry import Backoff
from boxd.box.session import SessionMachine
from boxd.box.uploader import LocalFile, OnConflict, sha1_of
from boxd.errors import AuthNeedsHumanError, BoxdError, PermanentError, TransientError
from boxd.jobs.models import ErrorInfo, FileAction, FileState, FileTask, InvalidTransition, Job
from boxd.jobs.scheduler import AuthLostError
from boxd.jobs.store import JobStore
from boxd.settings import Settings
from boxd.transfer.plan import RemoteFile, make_plan
from boxd.transfer.scan import LocalEntry, scan

log = logs.get("runner")


def error_info(exc: BaseException) -> ErrorInfo:
    """A stable code (the error class in snake_case) and the message, for the API and the store."""
    name = type(exc).__name__.removesuffix("Error") or "Error"
    code = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return ErrorInfo(code=code, message=str(exc) or name)


@dataclass
class Transfer:
    """A file being uploaded now, for ``GET /v1/status``."""

    job_id: str
    path: str
    size: int
    bytes_done: int = 0


class JobRunner:
    """Runs jobs against one Box account; shared by the scheduler's job tasks."""

    def __init__(
        self, store: JobStore, box: BoxStack, settings: Settings, stats: Stats, *, rng: random.Random | None = None
    ) -> None:
        self.store, self.box, self.settings, self.stats = store, box, settings, stats
        self.transfers = anyio.CapacityLimiter(settings.daemon.transfers)
        self.backoff = Backoff(base=2.0, cap=120.0, max_attempts=settings.daemon.max_attempts)
        self.rng = rng or random.Random()
        self.in_flight: dict[int, Transfer] = {}  # file task id -> transfer

    def in_flight_transfers(self) -> list[dict[str, object]]:
        """The files being uploaded now (``job_id``, ``path``, ``size``, ``bytes_done``)."""
        return [vars(t).copy() for t in self.in_flight.values()]

    async def run(self, job: Job) -> Job:
        """Plan and run a claimed (running) job to its end; raises :class:`AuthLostError` if it had to stop."""
        bound = log.bind(job_id=job.id)
        try:
            dest_id = await self._plan(job)
        except AuthNeedsHumanError:
            await self.store.requeue_job(job.id, reason="auth_needs_reauthorization")
            raise AuthLostError from None
        except PermanentError as exc:
            bound.warning("job_plan_failed", error=str(exc))
            done = await self.store.finish_job(job.id, time.time(), error=error_info(exc))
            self.stats.job_finished(done.state.value)
            return done
        await self._run_files(job, dest_id)
        done = await self.store.finish_job(job.id, time.time())
        self.stats.job_finished(done.state.value)
        bound.info("job_finished", state=done.state.value, files_failed=done.files_failed)
        return done

    # -- planning ----------------------------------------------------------------------------

    async def _plan(self, job: Job) -> str:
        req = job.request
        allowed = list(self.settings.daemon.allowed_sources)
        local = await anyio.to_thread.run_sync(scan, Path(req.source), allowed)
        folders = self.box.folders
        dest_id = req.folder_id or await folders.resolve(req.destination or "/")
        wanted_dirs = {fold(d) for d in local.dirs}
        remote = await self._list_tree(dest_id, "", lambda rel: req.mode == "mirror" or fold(rel) in wanted_dirs)
        by_name = {fold(r.rel): r for r in remote}
        hashes: dict[str, str] = {}
        for entry in local.files:
            other = by_name.get(fold(entry.rel))
            if other is not None and other.size == entry.size:
                hashes[entry.rel] = await self._sha1(entry)
        plan = make_plan(
            local.files,
            remote,
            mode="mirror" if req.mode == "mirror" else "copy",
            max_delete_percent=self.settings.daemon.mirror_max_delete_percent,
            local_sha1=lambda e: hashes[e.rel],
        )
        tasks = [
            FileTask(
                rel_path=e.rel,
                size=e.size,
                mtime_ns=e.mtime_ns,
                inode=e.inode,
                sha1=hashes.get(e.rel),
                remote_id=r.id if r else None,
            )
            for e, r in plan.upload
        ]
        tasks += [
            FileTask(
                rel_path=e.rel,
                size=e.size,
                mtime_ns=e.mtime_ns,
                inode=e.inode,
                sha1=hashes.get(e.rel),
                state=FileState.SKIPPED,
            )
            for e in plan.skip
        ]
        tasks += [
            FileTask(rel_path=r.rel, size=r.size or 0, action=FileAction.TRASH, remote_id=r.id) for r in plan.trash
        ]
        for clash in plan.clashes:
            tasks.append(
                FileTask(
                    rel_path=clash.split(" (")[0],
                    size=0,
                    state=FileState.FAILED,
                    error=ErrorInfo("name_clash", f"{clash}: Box names are case-insensitive"),
                )
            )
        await self.store.set_plan(job.id, tasks)
        log.info(
            "job_planned",
            job_id=job.id,
            upload=len(plan.upload),
            skip=len(plan.skip),
            trash=len(plan.trash),
            left_out=len(local.left_out),
        )
        return dest_id

    async def _list_tree(self, folder_id: str, prefix: str, descend: Callable[[str], bool]) -> list[RemoteFile]:
        """Files under ``folder_id`` with paths relative to it, entering sub-folders ``descend`` accepts.

        Listing also caches the folders' ids in :class:`Folders`, so uploads resolve them for free.
        """
        files: list[RemoteFile] = []
        for item in await self.box.folders.list(folder_id):
            rel = prefix + item.name
            if item.is_file:
                files.append(RemoteFile(rel, item.id, item.size, item.sha1))
            elif item.is_folder and descend(rel):
                files += await self._list_tree(item.id, rel + "/", descend)
        return files

    async def _sha1(self, entry: LocalEntry) -> str:
        path = str(entry.path)
        cached = await self.store.cached_sha1(path, entry.size, entry.mtime_ns, entry.inode)
        if cached is not None:
            return cached
        digest = await anyio.to_thread.run_sync(sha1_of, entry.path)
        await self.store.remember_sha1(path, entry.size, entry.mtime_ns, entry.inode, digest)
        return digest

    # -- running files -----------------------------------------------------------------------

    async def _run_files(self, job: Job, dest_id: str) -> None:
        """Run every pending file, ``daemon.transfers`` at a time, until none is left.

        Files are handed to the shared limiter as slots free up (no batch barrier: a large file
        does not hold back the small ones queued behind it); a file put back to pending by a
        transient failure is picked up again on the next look.
        """
        auth_lost = False
        scheduled: set[int] = set()  # handed to the limiter, not yet finished
        finished = anyio.Event()

        async def one(task: FileTask) -> None:
            nonlocal auth_lost
            try:
                async with self.transfers:
                    if auth_lost:
                        return
                    try:
                        await self._run_file(job, task, dest_id)
                    except AuthNeedsHumanError:
                        auth_lost = True
            finally:
                scheduled.discard(task.id)
                finished.set()

        lookahead = max(1, self.settings.daemon.transfers * 2)
        async with anyio.create_task_group() as tg:
            while not auth_lost:
                pending = await self.store.pending_files(job.id, limit=lookahead + len(scheduled))
                fresh = [t for t in pending if t.id not in scheduled][: max(0, lookahead - len(scheduled))]
                if not fresh and not scheduled:
                    break
                for task in fresh:
                    scheduled.add(task.id)
                    tg.start_soon(one, task)
                await finished.wait()  # look again once any file ended
                finished = anyio.Event()
        if auth_lost:
            await self.store.requeue_job(job.id, reason="auth_needs_reauthorization")
            raise AuthLostError

    async def _run_file(self, job: Job, task: FileTask, dest_id: str) -> None:
        bound = log.bind(job_id=job.id, file=task.rel_path)
        task = await self.store.start_file(task.id)
        if task.attempts:  # a retry: wait out the backoff first (no wait on the first try)
            await anyio.sleep(self.backoff.next_delay(task.attempts, None, self.rng))
        try:
            if task.action is FileAction.TRASH:
                assert task.remote_id is not None
                await self.box.client.trash(task.remote_id)
                await self.store.finish_file(task.id, FileState.DONE)
                self.stats.file_finished("trashed")
                return
            item = await self._upload(job, task, dest_id)
        except AuthNeedsHumanError:
            await self.store.finish_file(task.id, FileState.PENDING)
            raise
        except TransientError as exc:
            bound.warning("file_retry", error=str(exc), attempts=task.attempts + 1)
            after = await self.store.finish_file(
                task.id, FileState.PENDING, error=error_info(exc), max_attempts=self.settings.daemon.max_attempts
            )
            if after.state is FileState.FAILED:
                self.stats.file_finished("failed")
            return
        except BoxdError as exc:
            bound.warning("file_failed", error=str(exc))
            await self.store.finish_file(task.id, FileState.FAILED, error=error_info(exc))
            self.stats.file_finished("failed")
            return
        except Exception as exc:  # a bug fails this file, not the job or the daemon
            bound.exception("file_crashed")
            await self.store.finish_file(
                task.id, FileState.FAILED, error=ErrorInfo("internal_error", f"{type(exc).__name__}: {exc}")
            )
            self.stats.file_finished("failed")
            return
        state = FileState.DONE if item is not None else FileState.SKIPPED
        await self.store.finish_file(task.id, state, box_file_id=item.id if item else None, bytes_done=task.size)
        self.stats.file_finished("uploaded" if item is not None else "skipped")
        bound.info("file_done", state=state.value, box_file_id=item.id if item else None)

    async def _upload(self, job: Job, task: FileTask, dest_id: str) -> Item | None:
        source = Path(job.request.source)

        def locate() -> LocalFile:  # a single-file source is the file itself; paths as the scan saw them
            base = source.resolve()
            return LocalFile.stat(base if base.is_file() else base / task.rel_path)

        local = await anyio.to_thread.run_sync(locate)
        uploaded = await self._put(job, task, dest_id, local)
        if uploaded is not None and uploaded.sha1:
            # Box confirmed this content (Content-MD5 / commit digest): the next plan of an unchanged
            # file compares by this cached SHA-1 and reads nothing.
            await self.store.remember_sha1(str(local.path), local.size, local.mtime_ns, local.inode, uploaded.sha1)
        return uploaded

    async def _put(self, job: Job, task: FileTask, dest_id: str, local: LocalFile) -> Item | None:
        *dirs, name = task.rel_path.split("/")
        parent = await self.box.folders.resolve(dirs, parent_id=dest_id) if dirs else dest_id
        existing = Item(type="file", id=task.remote_id, name=name) if task.remote_id else None
        transfer = self.in_flight[task.id] = Transfer(job.id, task.rel_path, task.size)
        sent = 0

        def on_progress(n: int) -> None:
            nonlocal sent
            sent += n
            transfer.bytes_done = sent

        async def checkpoint(state: str | None) -> None:
            # Every part's checkpoint matters for resume; the store write is cheap (one row).
            try:
                await self.store.save_checkpoint(task.id, state, bytes_done=sent)
            except InvalidTransition:
                # The job was cancelled under this upload (the store cancelled its files); the
                # cancel scope stops it, and raising here would mask that as a failed file.
                log.debug("checkpoint_after_cancel", job_id=job.id, file=task.rel_path)

        on_conflict: OnConflict = job.request.on_conflict.value
        try:
            return await self.box.uploader.upload(
                local,
                parent_id=parent,
                name=name,
                existing=existing,
                on_conflict=on_conflict,
                sha1=task.sha1 or None,
                resume=task.checkpoint,
                checkpoint=checkpoint,
                progress=on_progress,
            )
        finally:
            del self.in_flight[task.id]

    async def abort_sessions(self, job_id: str) -> None:
        """Abort the Box sessions a cancelled job left open (irreversible; parts are discarded)."""
        for task in await self.store.job_files(job_id):
            if not task.checkpoint:
                continue
            try:
                session = SessionMachine.from_json(task.checkpoint).session
                if session is not None and "abort" in session.endpoints:
                    await self.box.client.abort(session.endpoints["abort"])
            except (ValueError, BoxdError) as exc:  # it expires by itself after 7 days
                log.warning("session_abort_failed", job_id=job_id, file=task.rel_path, error=str(exc))
            if task.state in (FileState.PENDING, FileState.RUNNING):
                await self.store.save_checkpoint(task.id, None)
            # A cancelled file keeps its (now aborted) session in the store: it is never resumed.
