"""A Box chunked upload session as a pure, serialisable state machine (sans-IO).

No I/O, no asyncio, no clock: time arrives as arguments. The shell (``box/uploader.py``) feeds
events to :meth:`SessionMachine.handle`, asks for work with :meth:`SessionMachine.next_parts`, and
performs the returned actions in order (``box-api-contract.md`` §5)::

    start()          ─► CreateSession ─► SessionCreated ─► UploadPart… ─► Commit ─► CommitDone
    resume(now)      ─► ListParts ─► PartsListed ─► UploadPart (missing ones only) ─► Commit

Reading passes. Every ``SessionCreated`` and every ``resume()`` begins a new pass: the shell reads
the file once from offset 0, reports each part's SHA-1 with ``LocalPartHashed`` (before it PUTs that
part; again whenever it re-reads a part) and then the whole-file SHA-1 with ``AllPartsHashed``. A
``Commit`` is emitted only when every uploaded part's SHA-1 equals the one this pass computed for
its range and the whole SHA-1 came from this pass, so a file that changed mid-upload is never
committed with mixed content (DESIGN §4).

Failures never raise. The machine moves to ``FAILED``, keeps a :mod:`boxd.errors` instance in
``error`` and returns ``Abort`` unless that error is a ``TransientError`` (a retry budget ran out):
then the session is left open so a later attempt can resume it from the last checkpoint taken
before the failure (or ``cancel()`` aborts it). An event the current state cannot receive raises
:class:`SessionMisuseError`: a bug in the shell, not a Box failure. Before performing
``CreateSession`` after a restart, or ``Abort``, the shell stops its in-flight parts and delivers
nothing more from them; once ``finished`` is true it delivers no events at all.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeAlias

from boxd.errors import BoxdError, FileChangedError, PermanentError, ProtocolError, TransientError

_SHA1_HEX = re.compile(r"[0-9a-f]{40}")
_ERRORS: dict[str, type[BoxdError]] = {
    e.__name__: e for e in (BoxdError, TransientError, PermanentError, FileChangedError, ProtocolError)
}


class SessionMisuseError(RuntimeError):
    """The shell drove the session machine wrongly (an event its state cannot receive)."""


class SessionState(StrEnum):
    CREATING = "creating"  # CreateSession is outstanding
    LISTING = "listing"  # resumed; ListParts is outstanding
    UPLOADING = "uploading"
    COMMITTING = "committing"  # a Commit is outstanding (possibly behind a Wait)
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"


_TERMINAL = frozenset({SessionState.DONE, SessionState.FAILED, SessionState.ABORTED})


@dataclass(frozen=True)
class SessionLimits:
    """Retry budgets. ``commit_retries`` mirrors rclone's option of that name (``[box]`` setting)."""

    max_part_attempts: int = 5  # failures of one part before the upload gives up
    commit_retries: int = 100  # 202 answers tolerated
    commit_wait: float = 10.0  # seconds to wait after a 202 without Retry-After (rclone's default)
    mismatch_retries: int = 5  # parts_mismatch answers tolerated
    mismatch_backoff: float = 1.0  # first wait after parts_mismatch; doubles each time
    max_restarts: int = 3  # new sessions after expiry, per machine


@dataclass(frozen=True)
class PartRecord:
    """A part Box holds: one entry of a commit body (``UploadPart`` in the spec)."""

    part_id: str
    offset: int
    size: int
    sha1: str  # hex, lower case

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies: a checkpoint lists every part.
        return {"part_id": self.part_id, "offset": self.offset, "size": self.size, "sha1": self.sha1}


# ---- events (shell → machine) ----


@dataclass(frozen=True)
class SessionCreated:
    """Box created the session (201 ``UploadSession``); ``expires_at`` in epoch seconds."""

    session_id: str
    part_size: int
    total_parts: int
    expires_at: float
    endpoints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalPartHashed:
    """The reader passed part ``index``; its bytes have this SHA-1."""

    index: int
    sha1_hex: str


@dataclass(frozen=True)
class AllPartsHashed:
    """The reader finished the pass (after a LocalPartHashed for every part)."""

    whole_sha1_hex: str


@dataclass(frozen=True)
class LocalFileChanged:
    """The shell saw the file change (size, mtime, short read)."""

    reason: str


@dataclass(frozen=True)
class PartUploaded:
    """Box stored the part (200 ``UploadedPart``), echoing these values."""

    index: int
    part_id: str
    sha1_hex: str
    size: int
    offset: int


@dataclass(frozen=True)
class PartFailed:
    """The PUT of a part failed; ``transient`` once the shell's per-request retries are spent."""

    index: int
    transient: bool
    reason: str


@dataclass(frozen=True)
class PartConflict:
    """416 ``range_overlaps_existing_part``; ``existing`` is ``context_info.conflicting_part``."""

    index: int
    existing: Mapping[str, Any]


@dataclass(frozen=True)
class PartsListed:
    """All entries of the list-parts answer (every page), and the time it was received."""

    parts: Sequence[Mapping[str, Any]]
    now: float


@dataclass(frozen=True)
class SessionExpired:
    """Box answered 410 ``session_expired`` to any call of this session."""


@dataclass(frozen=True)
class CommitAccepted:
    """202: the parts are not processed yet; ``retry_after`` from the header, if any."""

    retry_after: float | None = None


@dataclass(frozen=True)
class CommitPartsMismatch:
    """400 ``parts_mismatch``; transient right after the last part (rclone retries it)."""

    message: str = ""


@dataclass(frozen=True)
class CommitDone:
    """201: the file exists on Box."""

    file_id: str


@dataclass(frozen=True)
class CommitFailed:
    """The commit was refused for good (digest_mismatch, name conflict, …)."""

    reason: str


Event: TypeAlias = (
    SessionCreated
    | LocalPartHashed
    | AllPartsHashed
    | LocalFileChanged
    | PartUploaded
    | PartFailed
    | PartConflict
    | PartsListed
    | SessionExpired
    | CommitAccepted
    | CommitPartsMismatch
    | CommitDone
    | CommitFailed
)


# ---- actions (machine → shell) ----


@dataclass(frozen=True)
class CreateSession:
    """Create a new upload session, then report SessionCreated (a new reading pass starts)."""


@dataclass(frozen=True)
class ListParts:
    """List every part of the session (all pages), then report PartsListed."""


@dataclass(frozen=True)
class UploadPart:
    """PUT bytes ``[offset, offset + length)`` as part ``index``."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True)
class Commit:
    """Commit these parts (sorted by offset) with the whole-file SHA-1 as ``Digest``."""

    parts: tuple[PartRecord, ...]
    whole_sha1_hex: str

    def body_parts(self) -> list[dict[str, Any]]:
        """The ``parts`` array of the commit body."""
        return [p.to_dict() for p in self.parts]


@dataclass(frozen=True)
class Wait:
    """Sleep this long (cancellably) before the next action."""

    seconds: float


@dataclass(frozen=True)
class Abort:
    """Abort the session (DELETE its ``abort`` endpoint); irreversible."""


Action: TypeAlias = CreateSession | ListParts | UploadPart | Commit | Wait | Abort


class _Failure(Exception):
    """Internal: unwinds ``handle`` into the FAILED state."""

    def __init__(self, error: BoxdError) -> None:
        self.error = error


def _box_part(raw: Mapping[str, Any], what: str) -> tuple[str, int, int, str | None]:
    """Validate a part as Box describes it; the SHA-1 may be missing (null)."""
    part_id, offset, size, sha1 = (raw.get(k) for k in ("part_id", "offset", "size", "sha1"))
    if (
        not isinstance(part_id, str)
        or not part_id
        or type(offset) is not int
        or type(size) is not int
        or not (sha1 is None or (isinstance(sha1, str) and _SHA1_HEX.fullmatch(sha1.lower())))
    ):
        raise _Failure(ProtocolError(f"{what} is malformed: {dict(raw)!r}"))
    return part_id, offset, size, sha1.lower() if sha1 is not None else None


def _hex(value: str) -> str:
    if not _SHA1_HEX.fullmatch(value.lower()):
        raise SessionMisuseError(f"not a hex SHA-1: {value!r}")
    return value.lower()


class SessionMachine:
    """The upload of one file of ``file_size`` bytes through one session (a new one after expiry)."""

    _state: SessionState
    _session: SessionCreated | None
    _error: BoxdError | None
    _file_id: str | None
    _whole: str | None  # whole-file SHA-1, this pass
    _uploaded: dict[int, PartRecord]  # index → part Box holds
    _in_flight: set[int]
    _attempts: dict[int, int]  # index → transient failures
    _local: dict[int, str]  # index → SHA-1 of the local bytes, this pass
    _pending: list[int]  # heap of parts neither uploaded nor in flight

    def __init__(self, file_size: int, limits: SessionLimits | None = None) -> None:
        if file_size < 1:
            raise ValueError("a chunked upload needs a non-empty file")
        self.file_size, self.limits = file_size, limits or SessionLimits()
        self._state, self._session, self._error, self._file_id = SessionState.CREATING, None, None, None
        self._restarts, self._abort_sent = 0, False
        self._new_pass()
        self._new_session()

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def finished(self) -> bool:
        """DONE, FAILED or ABORTED: no event may be delivered any more."""
        return self._state in _TERMINAL

    @property
    def session(self) -> SessionCreated | None:
        """The current session as Box described it (id, grid, expiry, endpoints)."""
        return self._session

    @property
    def progress(self) -> int:
        """Bytes Box holds as parts of the current session (back to 0 when a session is replaced)."""
        return self._bytes

    @property
    def uploaded(self) -> dict[int, PartRecord]:
        """Part index → the part Box holds (after a restore: as recorded, until PartsListed)."""
        return dict(self._uploaded)

    @property
    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    @property
    def error(self) -> BoxdError | None:
        """Why the upload failed (FAILED, or ABORTED after a failure)."""
        return self._error

    @property
    def file_id(self) -> str | None:
        return self._file_id

    def span(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of part ``index``: ``[i*part_size, min((i+1)*part_size, file_size))``."""
        s = self._need_session()
        if not 0 <= index < s.total_parts:
            raise SessionMisuseError(f"part {index} is outside 0..{s.total_parts - 1}")
        return index * s.part_size, min(s.part_size, self.file_size - index * s.part_size)

    def start(self) -> list[Action]:
        """First actions of a new machine: create the session."""
        if self._state is not SessionState.CREATING or self._session is not None:
            raise SessionMisuseError(f"start() in state {self._state}")
        return [CreateSession()]

    def resume(self, now: float) -> list[Action]:
        """First actions after ``from_json`` (or whenever the shell lost its in-flight work).

        In-flight parts are forgotten and a new reading pass begins. A valid session is listed
        (ListParts); an expired or never-created one is replaced (CreateSession).
        """
        self._require_live("resume()")
        self._in_flight.clear()
        self._new_pass()
        if self._session is None:
            self._state = SessionState.CREATING
            return [CreateSession()]
        if self._session.expires_at <= now:
            return self._guarded(self._restart)
        self._state = SessionState.LISTING
        self._rebuild_pending()
        return [ListParts()]

    def next_parts(self, limit: int) -> list[UploadPart]:
        """Hand out parts, lowest offset first, until ``limit`` are in flight (none outside UPLOADING).

        A part is never handed out while it is in flight or once it is uploaded.
        """
        out: list[UploadPart] = []
        while self._state is SessionState.UPLOADING and self._pending and len(self._in_flight) < limit:
            index = heapq.heappop(self._pending)
            self._in_flight.add(index)
            out.append(UploadPart(index, *self.span(index)))
        return out

    def cancel(self) -> list[Action]:
        """Stop for good: Abort if a session is still open. Harmless once finished."""
        if self._state in (SessionState.DONE, SessionState.ABORTED):
            return []
        self._state = SessionState.ABORTED
        return self._abort()

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions to perform next, in order."""
        self._require_live(type(event).__name__)
        return self._guarded(lambda: self._dispatch(event))

    # ---- transitions ----

    def _dispatch(self, event: Event) -> list[Action]:
        S = SessionState
        match event:
            case SessionCreated():
                self._expect(event, S.CREATING)
                return self._on_created(event)
            case LocalPartHashed(index=index, sha1_hex=sha1):
                self._expect(event, S.LISTING, S.UPLOADING)
                self.span(index)
                if self._local.setdefault(index, _hex(sha1)) != _hex(sha1):
                    raise _Failure(FileChangedError(f"part {index} read twice with different content"))
                self._verify(index)
                return self._maybe_commit()
            case AllPartsHashed(whole_sha1_hex=whole):
                self._expect(event, S.LISTING, S.UPLOADING)
                if len(self._local) != self._need_session().total_parts:
                    raise SessionMisuseError("AllPartsHashed before a LocalPartHashed for every part")
                if self._whole not in (None, _hex(whole)):
                    raise _Failure(FileChangedError("the whole-file SHA-1 changed within one reading pass"))
                self._whole = _hex(whole)
                return self._maybe_commit()
            case LocalFileChanged(reason=reason):
                raise _Failure(FileChangedError(f"the local file changed: {reason}"))
            case PartUploaded():
                return self._on_uploaded(event)
            case PartFailed(index=index, transient=transient, reason=reason):
                self._take_in_flight(event, index)
                if not transient:
                    raise _Failure(PermanentError(f"part {index} failed: {reason}"))
                n = self._attempts[index] = self._attempts.get(index, 0) + 1
                if n >= self.limits.max_part_attempts:
                    raise _Failure(TransientError(f"part {index} failed {n} times (max_part_attempts); last: {reason}"))
                heapq.heappush(self._pending, index)
                return []
            case PartConflict():
                return self._on_conflict(event)
            case PartsListed():
                self._expect(event, S.LISTING)
                return self._on_listed(event)
            case SessionExpired():
                self._expect(event, S.LISTING, S.UPLOADING, S.COMMITTING)
                return self._restart()
            case CommitAccepted(retry_after=after):
                self._expect(event, S.COMMITTING)
                self._commit_accepted += 1
                if self._commit_accepted > (limit := self.limits.commit_retries):
                    raise _Failure(
                        TransientError(f"Box still answered 202 after {limit} commit retries (commit_retries)")
                    )
                if after is None or not math.isfinite(after) or after < 0:
                    after = self.limits.commit_wait
                return [Wait(after), self._commit()]
            case CommitPartsMismatch(message=message):
                self._expect(event, S.COMMITTING)
                self._mismatches += 1
                if self._mismatches > self.limits.mismatch_retries:
                    raise _Failure(TransientError(f"Box answered parts_mismatch {self._mismatches} times: {message}"))
                return [Wait(self.limits.mismatch_backoff * 2 ** (self._mismatches - 1)), self._commit()]
            case CommitDone(file_id=file_id):
                self._expect(event, S.COMMITTING)
                self._state, self._file_id = S.DONE, file_id
                return []
            case CommitFailed(reason=reason):
                self._expect(event, S.COMMITTING)
                raise _Failure(PermanentError(f"commit failed: {reason}"))
        raise SessionMisuseError(f"unknown event {event!r}")

    def _on_created(self, event: SessionCreated) -> list[Action]:
        self._session = replace(event, endpoints=dict(event.endpoints))
        self._state, self._abort_sent = SessionState.UPLOADING, False
        # Box chooses the grid (contract §5.1); one that does not fit the file makes every range wrong.
        if not event.session_id or event.part_size < 1 or event.total_parts != -(-self.file_size // event.part_size):
            raise _Failure(ProtocolError(f"the session's part grid does not fit {self.file_size} bytes: {event!r}"))
        self._new_session()
        return []

    def _on_uploaded(self, event: PartUploaded) -> list[Action]:
        index = self._take_in_flight(event, event.index)
        offset, length = self.span(index)
        sha1 = event.sha1_hex.lower()
        if not event.part_id or (event.offset, event.size) != (offset, length) or not _SHA1_HEX.fullmatch(sha1):
            raise _Failure(ProtocolError(f"Box's answer does not describe part {index} ({offset}+{length}): {event}"))
        if self._local.get(index, sha1) != sha1:
            raise _Failure(ProtocolError(f"Box stored part {index} with SHA-1 {sha1}, boxd sent {self._local[index]}"))
        self._record(index, PartRecord(event.part_id, offset, length, sha1))
        return self._maybe_commit()

    def _on_conflict(self, event: PartConflict) -> list[Action]:
        index = self._take_in_flight(event, event.index)
        part_id, offset, size, sha1 = _box_part(event.existing, f"conflicting part {index}")
        # Parts are immutable. Box's Android client takes an identical existing part as uploaded;
        # if our SHA-1 is not known yet, LocalPartHashed checks it when it arrives.
        if (offset, size) != self.span(index) or sha1 is None or self._local.get(index, sha1) != sha1:
            raise _Failure(PermanentError(f"part {index} conflicts with a different part on Box: {event.existing}"))
        self._record(index, PartRecord(part_id, offset, size, sha1))
        return self._maybe_commit()

    def _on_listed(self, event: PartsListed) -> list[Action]:
        s = self._need_session()
        if s.expires_at <= event.now:
            return self._restart()
        # Box's listing is the truth: a commit can only name parts Box holds, and parts are immutable,
        # so a part we never recorded (crash before the checkpoint) counts too. Each one is checked
        # against this pass's local hash before any commit.
        listed: dict[int, PartRecord] = {}
        for raw in event.parts:
            part_id, offset, size, sha1 = _box_part(raw, "listed part")
            index, rest = divmod(offset, s.part_size)
            if rest or not 0 <= index < s.total_parts or size != self.span(index)[1]:
                raise _Failure(ProtocolError(f"listed part is off the session's grid: {raw}"))
            if sha1 is None:  # fall back on what we recorded for the very same part
                mine = self._uploaded.get(index)
                if mine is None or mine.part_id != part_id:
                    raise _Failure(ProtocolError(f"listed part has no SHA-1: {raw}"))
                sha1 = mine.sha1
            if listed.setdefault(index, part := PartRecord(part_id, offset, size, sha1)) != part:
                raise _Failure(ProtocolError(f"Box listed two parts at offset {offset}"))
        self._uploaded, self._bytes = {}, 0
        for index, part in listed.items():
            self._record(index, part)
        self._state = SessionState.UPLOADING
        self._rebuild_pending()
        for index in list(self._local):
            self._verify(index)
        return self._maybe_commit()

    def _maybe_commit(self) -> list[Action]:
        if self._state is not SessionState.UPLOADING or self._whole is None:
            return []
        total = self._need_session().total_parts
        if len(self._uploaded) < total or len(self._local) < total:
            return []
        for index in range(total):  # checked as each hash arrived; again, as it is the guarantee that matters
            self._verify(index)
        self._state = SessionState.COMMITTING
        return [self._commit()]

    def _commit(self) -> Commit:
        assert self._whole is not None
        return Commit(tuple(self._uploaded[i] for i in sorted(self._uploaded)), self._whole)

    def _restart(self) -> list[Action]:
        # An expired session needs no Abort; the next one's grid may differ, so a new pass begins.
        self._session = None
        if self._restarts >= self.limits.max_restarts:
            raise _Failure(TransientError(f"the upload session expired {self._restarts + 1} times"))
        self._restarts += 1
        self._state = SessionState.CREATING
        self._new_pass()
        self._new_session()
        return [CreateSession()]

    def _guarded(self, step: Callable[[], list[Action]]) -> list[Action]:
        try:
            return step()
        except _Failure as failure:
            self._state, self._error = SessionState.FAILED, failure.error
            return [] if isinstance(failure.error, TransientError) else self._abort()

    def _abort(self) -> list[Action]:
        if self._session is None or self._abort_sent:
            return []
        self._abort_sent = True
        return [Abort()]

    # ---- helpers ----

    def _new_pass(self) -> None:
        self._local, self._whole = {}, None

    def _new_session(self) -> None:
        self._uploaded, self._in_flight, self._attempts, self._bytes = {}, set(), {}, 0
        self._commit_accepted = self._mismatches = 0
        self._rebuild_pending()

    def _rebuild_pending(self) -> None:
        total = self._session.total_parts if self._session else 0
        # Ascending order is already a valid heap.
        self._pending = [i for i in range(total) if i not in self._uploaded and i not in self._in_flight]

    def _record(self, index: int, part: PartRecord) -> None:
        self._uploaded[index] = part
        self._bytes += part.size

    def _verify(self, index: int) -> None:
        part, local = self._uploaded.get(index), self._local.get(index)
        if self._state is SessionState.LISTING or part is None or local is None or part.sha1 == local:
            return
        raise _Failure(
            FileChangedError(
                f"part {index} on Box has SHA-1 {part.sha1} but the local file now has {local}: "
                "the file changed since that part was uploaded"
            )
        )

    def _take_in_flight(self, event: Event, index: int) -> int:
        self._expect(event, SessionState.UPLOADING)
        if index not in self._in_flight:
            raise SessionMisuseError(f"{event}: part {index} is not in flight")
        self._in_flight.discard(index)
        return index

    def _expect(self, event: Event, *states: SessionState) -> None:
        if self._state not in states:
            raise SessionMisuseError(f"{type(event).__name__} cannot arrive in state {self._state}")

    def _require_live(self, what: str) -> None:
        if self._state in _TERMINAL:
            raise SessionMisuseError(f"{what} after the upload finished ({self._state})")

    def _need_session(self) -> SessionCreated:
        if self._session is None:
            raise SessionMisuseError("no session yet")
        return self._session

    # ---- persistence ----

    _SCALARS = ("_whole", "_file_id", "_commit_accepted", "_mismatches", "_restarts", "_abort_sent")

    def to_json(self) -> str:
        """Everything needed to go on, in this process or (after ``resume(now)``) another one."""
        err = self._error
        return json.dumps(
            {
                "version": 1,
                "file_size": self.file_size,
                "limits": dict(vars(self.limits)),
                "state": self._state.value,
                "session": {**vars(self._session), "endpoints": dict(self._session.endpoints)}
                if self._session
                else None,
                "uploaded": [self._uploaded[i].to_dict() for i in sorted(self._uploaded)],
                "in_flight": sorted(self._in_flight),
                "attempts": {str(i): n for i, n in self._attempts.items()},
                "local": {str(i): h for i, h in self._local.items()},
                "error": None if err is None else {"kind": type(err).__name__, "message": err.message},
            }
            | {name[1:]: getattr(self, name) for name in self._SCALARS},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SessionMachine:
        """The machine ``to_json`` described; ValueError for anything else."""
        try:
            d = json.loads(text)
            if d["version"] != 1:
                raise ValueError(f"unknown version {d['version']!r}")
            m = cls(d["file_size"], SessionLimits(**d["limits"]))
            m._state = SessionState(d["state"])
            m._session = None if d["session"] is None else SessionCreated(**d["session"])
            for part in (PartRecord(**raw) for raw in d["uploaded"]):
                m._record(part.offset // m._need_session().part_size, part)
            m._in_flight = set(d["in_flight"])
            m._attempts = {int(i): n for i, n in d["attempts"].items()}
            m._local = {int(i): h for i, h in d["local"].items()}
            for name in cls._SCALARS:
                setattr(m, name, d[name[1:]])
            if d["error"]:
                m._error = _ERRORS[d["error"]["kind"]](d["error"]["message"])
            m._rebuild_pending()
        except (KeyError, TypeError, ValueError, SessionMisuseError) as e:
            raise ValueError(f"not an upload-session checkpoint: {e}") from e
        return m
