"""Uploading one local file to Box: simple uploads, and chunked sessions driven by the session machine.

The file is read once, sequentially, in a worker thread; each part's SHA-1 and the whole
file's SHA-1 come from that same pass. Up to ``part_concurrency`` parts are in flight, and the
bytes of parts held in memory across *all* uploads of the process stay under
``memory_limit`` (:class:`MemoryBudget`). :class:`~boxd.box.session.SessionMachine` decides
everything; this module only performs its actions and reports what happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

import anyio
import anyio.abc

from boxd.accounting import Stats
from boxd.box import session as sm
from boxd.box.client import BoxClient
from boxd.box.models import Item, User
from boxd.errors import (
    BoxRequestError,
    FileChangedError,
    LimitExceededError,
    NameConflictError,
    PermanentError,
    ProtocolError,
    TransientError,
    unwrap,
)

OnConflict = Literal["version", "skip", "fail"]
Checkpoint = Callable[[str | None], Awaitable[None]]
Progress = Callable[[int], None]
_READ = 1024 * 1024
#: How long a ``/users/me`` answer (quota, max_upload_size) is trusted before asking again.
LIMITS_TTL = 300.0


@dataclass(frozen=True)
class LocalFile:
    """What a file looked like when boxd decided to upload it; a change of any field is a change."""

    path: Path
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def stat(cls, path: Path) -> LocalFile:
        st = path.stat()
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ino)

    def changed(self) -> str | None:
        """Why the file on disk differs from this snapshot now, or None."""
        try:
            now = LocalFile.stat(self.path)
        except OSError as exc:
            return f"cannot stat it any more: {exc.strerror}"
        for name in ("size", "mtime_ns", "inode"):
            if getattr(now, name) != getattr(self, name):
                return f"its {name} changed from {getattr(self, name)} to {getattr(now, name)}"
        return None

    @property
    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC).isoformat(timespec="seconds")


def sha1_of(path: Path) -> str:
    """SHA-1 hex of a whole file (call in a worker thread)."""
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


class MemoryBudget:
    """Caps the part bytes held in memory by all uploads together, first come first served.

    A request larger than the whole budget is admitted alone, so a part bigger than the limit
    still makes progress (the bound is then that one part).
    """

    def __init__(self, limit: int, stats: Stats | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._stats = stats
        self._freed = anyio.Event()
        self._queue = anyio.Lock()  # FIFO: a big request is not starved by a stream of small ones

    async def take(self, nbytes: int) -> Reservation:
        """Wait until ``nbytes`` fit, then hold them until the reservation is released."""
        want = min(nbytes, self.limit)
        async with self._queue:
            while self.used and self.used + want > self.limit:
                await self._freed.wait()
            self.used += want
        if self._stats is not None:
            self._stats.buffer(nbytes)
        return Reservation(self, want, nbytes)

    def _release(self, want: int, nbytes: int) -> None:
        self.used -= want
        if self._stats is not None:
            self._stats.buffer(-nbytes)
        self._freed.set()
        self._freed = anyio.Event()


class Reservation:
    """Bytes held from a :class:`MemoryBudget`; :meth:`release` is idempotent and never blocks."""

    def __init__(self, budget: MemoryBudget, want: int, nbytes: int) -> None:
        self._budget, self._want, self._nbytes = budget, want, nbytes
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._budget._release(self._want, self._nbytes)


class Uploader:
    """Puts local files into Box folders for one :class:`BoxClient`."""

    def __init__(
        self,
        client: BoxClient,
        budget: MemoryBudget,
        *,
        upload_cutoff: int,
        part_concurrency: int = 4,
        limits: sm.SessionLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.budget = budget
        self.upload_cutoff = upload_cutoff
        self.part_concurrency = part_concurrency
        self.limits = limits or sm.SessionLimits(commit_retries=client.settings.commit_retries)
        self._clock = clock
        self._user: tuple[float, User] | None = None

    async def check_limits(self, size: int, name: str) -> None:
        """Refuse a file Box would refuse: over ``max_upload_size`` or the space left (from ``/users/me``)."""
        if self._user is None or self._clock() - self._user[0] > LIMITS_TTL:
            self._user = (self._clock(), await self.client.me())
        user = self._user[1]
        if size > user.max_upload_size:
            raise LimitExceededError(
                f"{name} is {size} bytes but this Box account accepts files up to {user.max_upload_size} bytes "
                "(max_upload_size; Box plans: Free 250 MB, Business 5 GB, Enterprise 15 GB and more)"
            )
        if size > user.space_left:
            raise LimitExceededError(
                f"{name} is {size} bytes but the Box account has only {user.space_left} bytes of space left"
            )

    async def upload(
        self,
        local: LocalFile,
        *,
        parent_id: str,
        name: str,
        existing: Item | None = None,
        on_conflict: OnConflict = "version",
        sha1: str | None = None,
        resume: str | None = None,
        checkpoint: Checkpoint | None = None,
        progress: Progress | None = None,
    ) -> Item | None:
        """Upload ``local`` as ``name`` into folder ``parent_id``; return the Box file, or None if skipped.

        ``existing`` is the same-named file already in the folder (from its listing): identical
        content (same SHA-1) is skipped; otherwise ``on_conflict`` decides: a new version, skip,
        or fail. ``resume`` is a saved session (``checkpoint`` receives one after every part, and
        None once the session is finished) to continue instead of starting again.
        """
        if existing is not None and not existing.is_file:
            raise PermanentError(f"cannot upload {name}: a {existing.type} of that name is in the folder")
        if local.size >= self.upload_cutoff:
            if existing is not None and on_conflict != "version":
                return self._conflict(name, existing, on_conflict)
            await self.check_limits(local.size, name)
            return await self._chunked(local, name, parent_id, existing, resume, checkpoint, progress)
        if sha1 is None:
            sha1 = await anyio.to_thread.run_sync(sha1_of, local.path)
        if existing is not None:
            if existing.sha1 == sha1:
                return None
            if on_conflict != "version":
                return self._conflict(name, existing, on_conflict)
        await self.check_limits(local.size, name)
        try:
            item = await self._simple(
                local, name, sha1, parent_id=None if existing else parent_id, file_id=existing.id if existing else None
            )
        except NameConflictError as exc:  # it appeared since the listing
            conflict = exc.conflict or {}
            if on_conflict != "version" or conflict.get("type") != "file" or not isinstance(conflict.get("id"), str):
                raise
            if conflict.get("sha1") == sha1:
                return None
            item = await self._simple(local, name, sha1, parent_id=None, file_id=conflict["id"])
        if progress is not None:
            progress(local.size)
        return item

    @staticmethod
    def _conflict(name: str, existing: Item, on_conflict: OnConflict) -> None:
        if on_conflict == "skip":
            return None
        raise PermanentError(f"{name} already exists on Box with different content (on_conflict = fail)")

    async def _simple(
        self, local: LocalFile, name: str, sha1: str, *, parent_id: str | None, file_id: str | None
    ) -> Item:
        def content() -> IO[bytes]:
            # aiohttp reads file payloads in its executor and closes them when sent.
            return local.path.open("rb")

        try:
            item = await self.client.upload(
                name=name,
                size=local.size,
                sha1_hex=sha1,
                content=content,
                modified_at=local.modified_at,
                parent_id=parent_id,
                file_id=file_id,
            )
        except BoxRequestError as exc:
            if exc.code == "bad_digest":
                raise FileChangedError(
                    f"{local.path} changed while it was being uploaded (Box saw other bytes)"
                ) from exc
            raise
        if item.sha1 not in (None, sha1):
            raise ProtocolError(f"Box stored {name} with SHA-1 {item.sha1}, boxd sent {sha1}")
        self.client.stats.file_uploaded(local.size)
        return item

    # -- chunked -----------------------------------------------------------------------------

    async def _chunked(
        self,
        local: LocalFile,
        name: str,
        parent_id: str,
        existing: Item | None,
        resume: str | None,
        checkpoint: Checkpoint | None,
        progress: Progress | None,
    ) -> Item:
        machine = sm.SessionMachine.from_json(resume) if resume else sm.SessionMachine(local.size, self.limits)
        if machine.file_size != local.size:
            machine = sm.SessionMachine(local.size, self.limits)
            resume = None
        run = _ChunkedRun(self, machine, local, name, parent_id, existing, checkpoint, progress)
        return await run.go(resumed=resume is not None)


class _ChunkedRun:
    """One attempt at a chunked upload: set up, stream parts, commit. Not reusable."""

    def __init__(
        self,
        up: Uploader,
        machine: sm.SessionMachine,
        local: LocalFile,
        name: str,
        parent_id: str,
        existing: Item | None,
        checkpoint: Checkpoint | None,
        progress: Progress | None,
    ) -> None:
        self.up, self.client, self.m = up, up.client, machine
        self.local, self.name, self.parent_id, self.existing = local, name, parent_id, existing
        self.checkpoint, self.progress = checkpoint, progress
        self.followups: list[sm.Action] = []
        self.slots = anyio.Semaphore(up.part_concurrency)

    async def go(self, *, resumed: bool) -> Item:
        actions = self.m.resume(self.up._clock()) if resumed else self.m.start()
        try:
            while True:
                await self._perform(actions)
                if self.m.finished:
                    break
                if self.m.state is sm.SessionState.UPLOADING:
                    await self._save()
                    try:
                        await self._transfer()
                    except BaseExceptionGroup as group:  # parts failed together: report the one that matters
                        raise unwrap(group) from None
                actions, self.followups = self.followups, []
                if not actions and not self.m.finished:
                    raise ProtocolError(f"upload of {self.name} stalled in state {self.m.state}")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._save()  # keep what Box holds, so a later attempt resumes instead of re-sending
            raise
        if self.m.state is not sm.SessionState.DONE:
            await self._save()
            raise self.m.error or PermanentError(f"upload of {self.name} ended in state {self.m.state}")
        await self._finish()
        return self.result

    async def _save(self) -> None:
        if self.checkpoint is not None and self.m.session is not None:
            await self.checkpoint(self.m.to_json())

    async def _finish(self) -> None:
        if self.checkpoint is not None:
            await self.checkpoint(None)

    async def _perform(self, actions: list[sm.Action]) -> None:
        for action in actions:
            if self.m.finished and not isinstance(action, sm.Abort):
                return
            match action:
                case sm.CreateSession():
                    await self._create()
                case sm.ListParts():
                    try:
                        parts = await self.client.list_parts(self._endpoint("list_parts"))
                    except BoxRequestError as exc:
                        # A checkpoint may outlive its session: expired (410), or aborted or
                        # otherwise unknown to Box (404). Either way the machine starts a new one.
                        if exc.status not in (404, 410):
                            raise
                        await self._perform(self.m.handle(sm.SessionExpired()))
                    else:
                        listed = sm.PartsListed([p.as_json() for p in parts], self.up._clock())
                        await self._perform(self.m.handle(listed))
                case sm.Commit():
                    await self._commit(action)
                case sm.Wait(seconds=seconds):
                    await anyio.sleep(seconds)
                case sm.Abort():
                    # An unaborted session expires by itself after 7 days: a failed abort is no failure.
                    with anyio.CancelScope(shield=True), contextlib.suppress(TransientError, PermanentError):
                        await self.client.abort(self._endpoint("abort"))
                case sm.UploadPart():
                    raise sm.SessionMisuseError("parts are handed out by next_parts, not as actions")

    async def _create(self) -> None:
        info = await self.client.create_session(
            size=self.local.size,
            name=self.name,
            folder_id=None if self.existing else self.parent_id,
            file_id=self.existing.id if self.existing else None,
        )
        expires = _epoch(info.expires_at, default=self.up._clock() + 7 * 86400)
        event = sm.SessionCreated(info.id, info.part_size, info.total_parts, expires, info.endpoints)
        await self._perform(self.m.handle(event))

    def _endpoint(self, name: str) -> str:
        session = self.m.session
        if session is None or name not in session.endpoints:
            raise ProtocolError(f"the upload session has no {name} endpoint")
        return session.endpoints[name]

    async def _transfer(self) -> None:
        """Read every part once in order; PUT the ones Box lacks, ``part_concurrency`` at a time."""
        session = self.m.session
        assert session is not None
        digest = hashlib.sha1()
        fh = await anyio.to_thread.run_sync(self.local.path.open, "rb")
        try:
            async with anyio.create_task_group() as tg:
                for index in range(session.total_parts):
                    if not await self._pass_part(tg, fh, index, digest):
                        return
                why = await anyio.to_thread.run_sync(self.local.changed)
                last = sm.LocalFileChanged(why) if why else sm.AllPartsHashed(digest.hexdigest())
                self._handle(last)
        finally:
            # Shielded: to_thread.run_sync checks for cancellation before it starts, so a
            # cancelled upload (shutdown, job cancelled) would otherwise leak the descriptor.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(fh.close)

    async def _pass_part(self, tg: anyio.abc.TaskGroup, fh: IO[bytes], index: int, digest: hashlib._Hash) -> bool:
        """Read part ``index`` into the pass and start its PUT if Box lacks it; False to stop reading."""
        offset, length = self.m.span(index)
        needed = index not in self.m.uploaded
        if needed:
            await self.slots.acquire()
        reservation = await self.up.budget.take(length)
        started = False
        try:
            data, sha1 = await anyio.to_thread.run_sync(_read_part, fh, offset, length, digest)
            if len(data) != length:
                self._handle(sm.LocalFileChanged(f"it is shorter than expected (short read at offset {offset})"))
                return False
            self._handle(sm.LocalPartHashed(index, sha1))
            if self.m.finished:
                return False
            if needed:
                [part] = self.m.next_parts(len(self.m.in_flight) + 1)
                if part.index != index:
                    raise sm.SessionMisuseError(f"expected part {index} next, the machine gave {part.index}")
                tg.start_soon(self._put, part, data, sha1, reservation)
                started = True
            return True
        finally:
            if not started:
                reservation.release()
                if needed:
                    self.slots.release()

    async def _put(self, part: sm.UploadPart, data: bytes, sha1: str, reservation: Reservation) -> None:
        """PUT one part whose SHA-1 the reader computed (off the loop, in the same pass)."""
        stats = self.client.stats
        stats.part_started(part.length)
        uploaded = False
        try:
            try:
                answer = await self.client.upload_part(
                    self._endpoint("upload_part"), data, part.offset, self.local.size, sha1
                )
            except BoxRequestError as exc:
                if exc.code == "range_overlaps_existing_part" and exc.context_info:
                    event: sm.Event = sm.PartConflict(part.index, exc.context_info.get("conflicting_part") or {})
                elif exc.status == 410:
                    event = sm.SessionExpired()
                else:
                    event = sm.PartFailed(part.index, transient=False, reason=exc.message)
                self._handle(event)
                if self.m.state is sm.SessionState.FAILED or isinstance(event, sm.SessionExpired):
                    raise
                answer = None
            except TransientError as exc:
                self._handle(sm.PartFailed(part.index, transient=True, reason=exc.message))
                raise  # the client already retried; the next attempt resumes the session
            if answer is not None:
                uploaded = True
                self._handle(sm.PartUploaded(part.index, answer.part_id, answer.sha1 or "", answer.size, answer.offset))
            if self.progress is not None:
                self.progress(part.length)
            await self._save()
        finally:
            stats.part_finished(part.length, uploaded)
            reservation.release()
            self.slots.release()

    def _handle(self, event: sm.Event) -> None:
        if not self.m.finished:
            self.followups += self.m.handle(event)

    async def _commit(self, action: sm.Commit) -> None:
        attributes = {"content_modified_at": self.local.modified_at}
        try:
            answer = await self.client.commit(
                self._endpoint("commit"), action.body_parts(), action.whole_sha1_hex, attributes
            )
        except BoxRequestError as exc:
            if exc.code == "parts_mismatch":
                event: sm.Event = sm.CommitPartsMismatch(exc.message)
            elif exc.status == 410:
                event = sm.SessionExpired()
            else:
                event = sm.CommitFailed(exc.message)
            await self._perform(self.m.handle(event))
            if self.m.state is sm.SessionState.FAILED and self.m.error is not None:
                raise self.m.error from exc
            return
        if answer.status == 202:
            after = answer.headers.get("Retry-After")
            retry_after = float(after) if after is not None and _is_number(after) else None
            await self._perform(self.m.handle(sm.CommitAccepted(retry_after)))
            return
        entries = answer.body.get("entries") if isinstance(answer.body, dict) else None
        if not entries:
            raise ProtocolError(f"Box answered the commit of {self.name} without the file entry")
        self.result = Item.parse(entries[0])
        if self.result.sha1 not in (None, action.whole_sha1_hex):
            raise ProtocolError(
                f"Box committed {self.name} with SHA-1 {self.result.sha1}, boxd sent {action.whole_sha1_hex}"
            )
        await self._perform(self.m.handle(sm.CommitDone(self.result.id)))


def _read_part(fh: IO[bytes], offset: int, length: int, digest: hashlib._Hash) -> tuple[bytes, str]:
    """Read one part at ``offset``; return it with its SHA-1, and feed the whole-file hash (worker thread)."""
    data = os.pread(fh.fileno(), length, offset)
    digest.update(data)
    return data, hashlib.sha1(data).hexdigest()


def _epoch(text: str, default: float) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _is_number(text: str | None) -> bool:
    try:
        return text is not None and float(text) >= 0
    except ValueError:
        return False
