"""The upload-session state machine, driven by hand: no sockets, no event loop, no clock."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boxd.box.session import (
    Abort,
    Action,
    AllPartsHashed,
    Commit,
    CommitAccepted,
    CommitDone,
    CommitFailed,
    CommitPartsMismatch,
    CreateSession,
    Event,
    ListParts,
    LocalFileChanged,
    LocalPartHashed,
    PartConflict,
    PartFailed,
    PartRecord,
    PartsListed,
    PartUploaded,
    SessionCreated,
    SessionExpired,
    SessionLimits,
    SessionMachine,
    SessionMisuseError,
    SessionState,
    UploadPart,
    Wait,
)
from boxd.errors import FileChangedError, PermanentError, ProtocolError, TransientError

ENDPOINTS = {"upload_part": "https://u/s", "commit": "https://u/s/commit", "abort": "https://u/s"}
EXPIRES = 1_000.0


def sha(i: int, salt: str = "") -> str:
    """The SHA-1 of part ``i`` of the test file (``salt`` gives other content)."""
    return hashlib.sha1(f"{salt}part{i}".encode()).hexdigest()


WHOLE = sha(-1)


def created(file_size: int, part_size: int, sid: str = "S1", expires_at: float = EXPIRES) -> SessionCreated:
    return SessionCreated(sid, part_size, -(-file_size // part_size), expires_at, ENDPOINTS)


def fresh(file_size: int = 100, part_size: int = 30, limits: SessionLimits | None = None) -> SessionMachine:
    m = SessionMachine(file_size, limits)
    assert m.start() == [CreateSession()]
    assert m.handle(created(file_size, part_size)) == []
    return m


def uploaded(part: UploadPart, sha1: str | None = None, part_id: str | None = None) -> PartUploaded:
    return PartUploaded(part.index, part_id or f"P{part.index}", sha1 or sha(part.index), part.length, part.offset)


def hash_all(m: SessionMachine, salt: str = "") -> list[Action]:
    total = m.session.total_parts if m.session else 0
    for i in range(total):
        assert m.handle(LocalPartHashed(i, sha(i, salt))) == []
    return m.handle(AllPartsHashed(WHOLE))


def upload_all(m: SessionMachine) -> list[Action]:
    """Upload every part still missing, one at a time; the actions of the last one."""
    actions: list[Action] = []
    while parts := m.next_parts(1):
        actions = m.handle(uploaded(parts[0]))
    return actions


def listed(m: SessionMachine, indices: set[int], prefix: str = "P") -> list[dict[str, Any]]:
    return [
        {"part_id": f"{prefix}{i}", "offset": m.span(i)[0], "size": m.span(i)[1], "sha1": sha(i)}
        for i in sorted(indices)
    ]


def committing(m: SessionMachine) -> Commit:
    hash_all(m)
    [commit] = upload_all(m)
    assert isinstance(commit, Commit)
    return commit


def roundtrip(m: SessionMachine) -> SessionMachine:
    twin = SessionMachine.from_json(m.to_json())
    assert twin.to_json() == m.to_json()
    return twin


# ---- a new upload ----


def test_a_new_upload_starts_by_creating_a_session_and_then_uploads() -> None:
    assert SessionMachine(100).session is None
    m = SessionMachine(100)
    assert m.start() == [CreateSession()]
    assert m.handle(created(100, 30)) == []
    assert m.state is SessionState.UPLOADING
    assert m.session is not None and m.session.session_id == "S1" and dict(m.session.endpoints) == ENDPOINTS


def test_parts_cover_the_file_on_boxs_grid_with_a_short_last_part() -> None:
    m = fresh(100, 30)
    assert [m.span(i) for i in range(4)] == [(0, 30), (30, 30), (60, 30), (90, 10)]
    assert m.next_parts(10) == [
        UploadPart(0, 0, 30),
        UploadPart(1, 30, 30),
        UploadPart(2, 60, 30),
        UploadPart(3, 90, 10),
    ]


def test_parts_are_handed_out_in_offset_order_never_beyond_the_in_flight_limit() -> None:
    m = fresh(100, 30)
    assert [p.index for p in m.next_parts(2)] == [0, 1]
    assert m.next_parts(2) == []
    m.handle(uploaded(UploadPart(1, 30, 30)))
    assert [p.index for p in m.next_parts(2)] == [2]
    assert m.in_flight == {0, 2}
    assert [p.index for p in m.next_parts(3)] == [3]
    assert m.next_parts(10) == []


def test_a_grid_that_does_not_fit_the_file_fails_with_a_protocol_error_and_aborts() -> None:
    m = SessionMachine(100)
    m.start()
    assert m.handle(SessionCreated("S1", 30, 3, EXPIRES, ENDPOINTS)) == [Abort()]
    assert m.state is SessionState.FAILED and isinstance(m.error, ProtocolError)


def test_progress_counts_the_bytes_box_holds() -> None:
    m = fresh(100, 30)
    parts = m.next_parts(4)
    m.handle(uploaded(parts[3]))
    m.handle(uploaded(parts[0]))
    assert m.progress == 40


# ---- commit ----


@pytest.mark.parametrize("hashes_first", [True, False])
def test_commit_comes_once_every_part_is_uploaded_and_the_whole_sha1_is_known(hashes_first: bool) -> None:
    m = fresh(100, 30)
    if hashes_first:
        assert hash_all(m) == []
        [commit] = upload_all(m)
    else:
        for i in range(4):
            m.handle(LocalPartHashed(i, sha(i)))
        assert upload_all(m) == []
        assert m.state is SessionState.UPLOADING
        [commit] = m.handle(AllPartsHashed(WHOLE))
    assert m.state is SessionState.COMMITTING
    assert commit == Commit(
        (
            PartRecord("P0", 0, 30, sha(0)),
            PartRecord("P1", 30, 30, sha(1)),
            PartRecord("P2", 60, 30, sha(2)),
            PartRecord("P3", 90, 10, sha(3)),
        ),
        WHOLE,
    )
    assert commit.body_parts()[3] == {"part_id": "P3", "offset": 90, "size": 10, "sha1": sha(3)}


def test_commit_lists_parts_sorted_by_offset_whatever_order_they_finished_in() -> None:
    m = fresh(100, 30)
    hash_all(m)
    parts = m.next_parts(4)
    actions: list[Action] = []
    for p in (parts[2], parts[0], parts[3], parts[1]):
        actions = m.handle(uploaded(p))
    [commit] = actions
    assert isinstance(commit, Commit) and [p.offset for p in commit.parts] == [0, 30, 60, 90]


def test_a_202_waits_retry_after_then_repeats_the_same_commit() -> None:
    m = fresh(100, 30, SessionLimits(commit_wait=7.0))
    commit = committing(m)
    assert m.handle(CommitAccepted(3.0)) == [Wait(3.0), commit]
    assert m.handle(CommitAccepted(None)) == [Wait(7.0), commit]
    assert m.handle(CommitAccepted(float("nan"))) == [Wait(7.0), commit]
    assert m.state is SessionState.COMMITTING


def test_commit_gives_up_after_commit_retries_and_says_how_many() -> None:
    m = fresh(100, 30, SessionLimits(commit_retries=3))
    committing(m)
    for _ in range(3):
        assert isinstance(m.handle(CommitAccepted(1.0))[0], Wait)
    # All parts are on Box: the session stays open so a later attempt can resume and commit.
    assert m.handle(CommitAccepted(1.0)) == []
    assert m.state is SessionState.FAILED and isinstance(m.error, TransientError)
    assert "3 commit retries" in str(m.error) and "commit_retries" in str(m.error)


def test_parts_mismatch_is_retried_with_a_growing_backoff_then_given_up() -> None:
    m = fresh(100, 30, SessionLimits(mismatch_retries=3, mismatch_backoff=0.5))
    commit = committing(m)
    waits = [m.handle(CommitPartsMismatch("No matching part"))[0] for _ in range(3)]
    assert waits == [Wait(0.5), Wait(1.0), Wait(2.0)]
    assert m.handle(CommitPartsMismatch("No matching part")) == []
    assert m.state is SessionState.FAILED and isinstance(m.error, TransientError)
    assert commit.whole_sha1_hex == WHOLE


def test_commit_done_finishes_and_any_later_event_is_a_programming_error() -> None:
    m = fresh(100, 30)
    committing(m)
    assert m.handle(CommitDone("F1")) == []
    assert m.state is SessionState.DONE and m.finished and m.file_id == "F1"
    with pytest.raises(SessionMisuseError):
        m.handle(CommitDone("F1"))
    with pytest.raises(SessionMisuseError):
        m.resume(0)
    assert m.cancel() == [] and m.state is SessionState.DONE


def test_a_refused_commit_fails_and_aborts() -> None:
    m = fresh(100, 30)
    committing(m)
    assert m.handle(CommitFailed("digest_mismatch")) == [Abort()]
    assert isinstance(m.error, PermanentError) and "digest_mismatch" in str(m.error)


# ---- parts ----


@pytest.mark.parametrize(
    "event",
    [
        PartUploaded(1, "P1", sha(1), 29, 30),  # size
        PartUploaded(1, "P1", sha(1), 30, 60),  # offset
        PartUploaded(1, "P1", "not-a-sha1", 30, 30),
        PartUploaded(1, "", sha(1), 30, 30),
        PartUploaded(1, "P1", sha(9), 30, 30),  # not what boxd sent
    ],
)
def test_box_echoing_another_part_than_boxd_sent_is_a_protocol_error(event: PartUploaded) -> None:
    m = fresh(100, 30)
    m.handle(LocalPartHashed(1, sha(1)))
    m.next_parts(2)
    assert m.handle(event) == [Abort()]
    assert isinstance(m.error, ProtocolError)


def test_a_local_hash_arriving_after_the_upload_must_match_it() -> None:
    m = fresh(100, 30)
    [p] = m.next_parts(1)
    m.handle(uploaded(p))
    assert m.handle(LocalPartHashed(0, sha(0, "other"))) == [Abort()]
    assert isinstance(m.error, FileChangedError)


def test_a_part_read_twice_with_different_content_is_a_file_change() -> None:
    m = fresh(100, 30)
    assert m.handle(LocalPartHashed(2, sha(2))) == []
    assert m.handle(LocalPartHashed(2, sha(2))) == []
    assert m.handle(LocalPartHashed(2, sha(2, "x"))) == [Abort()]
    assert isinstance(m.error, FileChangedError)


def test_a_transient_part_failure_makes_the_part_uploadable_again() -> None:
    m = fresh(100, 30)
    assert [p.index for p in m.next_parts(2)] == [0, 1]
    assert m.handle(PartFailed(0, True, "reset")) == []
    assert m.in_flight == {1}
    assert [p.index for p in m.next_parts(3)] == [0, 2]


def test_a_part_that_keeps_failing_fails_the_upload_and_leaves_the_session_resumable() -> None:
    m = fresh(100, 30, SessionLimits(max_part_attempts=3))
    for _ in range(2):
        [p] = m.next_parts(1)
        assert m.handle(PartFailed(p.index, True, "503")) == []
    [p] = m.next_parts(1)
    assert m.handle(PartFailed(p.index, True, "503")) == []
    assert m.finished and isinstance(m.error, TransientError)  # FAILED, without an Abort
    assert "3 times" in str(m.error)
    assert m.cancel() == [Abort()]
    assert m.cancel() == []
    assert m.state is SessionState.ABORTED


def test_a_permanent_part_failure_fails_and_aborts() -> None:
    m = fresh(100, 30)
    m.next_parts(2)
    assert m.handle(PartFailed(1, False, "403 forbidden")) == [Abort()]
    assert isinstance(m.error, PermanentError) and "403" in str(m.error)
    with pytest.raises(SessionMisuseError):
        m.handle(PartUploaded(0, "P0", sha(0), 30, 0))


def test_an_identical_conflicting_part_counts_as_uploaded() -> None:
    m = fresh(100, 30)
    m.handle(LocalPartHashed(1, sha(1)))
    m.next_parts(2)
    existing = {"part_id": "OLD1", "offset": 30, "size": 30, "sha1": sha(1).upper()}
    assert m.handle(PartConflict(1, existing)) == []
    assert m.uploaded[1] == PartRecord("OLD1", 30, 30, sha(1))


@pytest.mark.parametrize(
    "existing",
    [
        {"part_id": "OLD1", "offset": 30, "size": 30, "sha1": sha(7)},
        {"part_id": "OLD1", "offset": 30, "size": 20, "sha1": sha(1)},
        {"part_id": "OLD1", "offset": 30, "size": 30, "sha1": None},
    ],
)
def test_a_different_conflicting_part_fails_and_aborts(existing: dict[str, Any]) -> None:
    m = fresh(100, 30)
    m.handle(LocalPartHashed(1, sha(1)))
    m.next_parts(2)
    assert m.handle(PartConflict(1, existing)) == [Abort()]
    assert isinstance(m.error, PermanentError)


def test_a_malformed_conflicting_part_is_a_protocol_error() -> None:
    m = fresh(100, 30)
    m.next_parts(1)
    assert m.handle(PartConflict(0, {"offset": "0"})) == [Abort()]
    assert isinstance(m.error, ProtocolError)


def test_the_shell_reporting_a_changed_file_fails_and_aborts() -> None:
    m = fresh(100, 30)
    assert m.handle(LocalFileChanged("mtime moved")) == [Abort()]
    assert isinstance(m.error, FileChangedError) and "mtime moved" in str(m.error)


# ---- resume ----


def crashed_with(recorded: set[int], file_size: int = 100, part_size: int = 30) -> SessionMachine:
    """A machine restored after a crash that happened once ``recorded`` parts were uploaded."""
    m = fresh(file_size, part_size)
    hash_all(m)
    for p in m.next_parts(file_size):
        if p.index in recorded:
            m.handle(uploaded(p))
    return SessionMachine.from_json(m.to_json())


def test_resume_lists_parts_then_uploads_only_what_box_lacks() -> None:
    m = crashed_with({0, 1, 3})
    assert m.resume(now=10) == [ListParts()]
    assert m.state is SessionState.LISTING and m.next_parts(4) == []
    # Box lacks recorded part 1: it becomes uploadable again.
    assert m.handle(PartsListed(listed(m, {0, 3}), now=10)) == []
    assert [p.index for p in m.next_parts(4)] == [1, 2]


def test_resume_counts_on_grid_parts_box_has_even_if_they_were_never_recorded() -> None:
    m = crashed_with(set())
    m.resume(now=10)
    m.handle(PartsListed(listed(m, {2}, prefix="B"), now=10))
    assert m.uploaded == {2: PartRecord("B2", 60, 30, sha(2))}
    assert [p.index for p in m.next_parts(4)] == [0, 1, 3]


def test_a_listed_part_without_sha1_takes_the_recorded_one() -> None:
    m = crashed_with({1})
    m.resume(now=10)
    m.handle(PartsListed([{"part_id": "P1", "offset": 30, "size": 30, "sha1": None}], now=10))
    assert m.uploaded[1].sha1 == sha(1)


@pytest.mark.parametrize(
    "entry",
    [
        {"part_id": "B", "offset": 31, "size": 30, "sha1": sha(1)},
        {"part_id": "B", "offset": 90, "size": 30, "sha1": sha(3)},
        {"part_id": "B", "offset": 120, "size": 10, "sha1": sha(4)},
        {"part_id": "B", "offset": 30, "size": 30, "sha1": None},
        {"part_id": 5, "offset": 30, "size": 30, "sha1": sha(1)},
    ],
)
def test_a_listing_off_the_grid_or_unreadable_is_a_protocol_error(entry: dict[str, Any]) -> None:
    m = crashed_with(set())
    m.resume(now=10)
    assert m.handle(PartsListed([entry], now=10)) == [Abort()]
    assert isinstance(m.error, ProtocolError)


def test_resume_never_commits_before_this_pass_rehashed_every_part() -> None:
    m = crashed_with({0, 1, 2, 3})
    m.resume(now=10)
    # Every part is on Box and the previous pass knew the whole SHA-1, but that pass is over.
    assert m.handle(PartsListed(listed(m, {0, 1, 2, 3}), now=10)) == []
    for i in range(4):
        assert m.handle(LocalPartHashed(i, sha(i))) == []
    [commit] = m.handle(AllPartsHashed(WHOLE))
    assert isinstance(commit, Commit) and len(commit.parts) == 4


def test_a_resumed_part_whose_local_bytes_changed_fails_as_file_changed_and_aborts() -> None:
    m = crashed_with({0, 1})
    m.resume(now=10)
    assert m.handle(LocalPartHashed(0, sha(0))) == []
    assert m.handle(LocalPartHashed(1, sha(1, "edited"))) == []  # checked once Box's listing is known
    assert m.handle(PartsListed(listed(m, {0, 1}), now=10)) == [Abort()]
    assert isinstance(m.error, FileChangedError) and "part 1" in str(m.error)


def test_resume_after_expiry_starts_over_with_a_new_session() -> None:
    m = crashed_with({0, 1})
    assert m.resume(now=EXPIRES) == [CreateSession()]
    assert m.session is None and m.uploaded == {} and m.progress == 0
    assert m.handle(created(100, 50, sid="S2")) == []
    assert [p.index for p in m.next_parts(5)] == [0, 1]


def test_expiry_seen_in_the_listing_starts_over() -> None:
    m = crashed_with({0})
    assert m.resume(now=10) == [ListParts()]
    assert m.handle(PartsListed(listed(m, {0}), now=EXPIRES + 1)) == [CreateSession()]
    assert m.state is SessionState.CREATING


def test_session_expired_starts_over_at_most_max_restarts_times() -> None:
    m = fresh(100, 30, SessionLimits(max_restarts=2))
    m.next_parts(2)
    for sid in ("S2", "S3"):
        assert m.handle(SessionExpired()) == [CreateSession()]
        assert m.in_flight == frozenset() and m.uploaded == {}
        m.handle(created(100, 30, sid=sid))
    assert m.handle(SessionExpired()) == []
    assert isinstance(m.error, TransientError) and "expired 3 times" in str(m.error)


def test_resume_before_the_session_existed_creates_it() -> None:
    m = SessionMachine.from_json(SessionMachine(100).to_json())
    assert m.resume(now=0) == [CreateSession()]


def test_resume_during_a_commit_lists_and_commits_again() -> None:
    m = fresh(100, 30)
    committing(m)
    m.handle(CommitAccepted(1.0))
    m = SessionMachine.from_json(m.to_json())
    assert m.resume(now=10) == [ListParts()]
    m.handle(PartsListed(listed(m, {0, 1, 2, 3}), now=10))
    [commit] = hash_all(m)
    assert isinstance(commit, Commit)


# ---- cancel, misuse, persistence ----


def test_cancel_aborts_an_open_session_and_nothing_without_one() -> None:
    m = fresh(100, 30)
    m.next_parts(2)
    assert m.cancel() == [Abort()]
    assert m.state is SessionState.ABORTED
    with pytest.raises(SessionMisuseError):
        m.handle(PartUploaded(0, "P0", sha(0), 30, 0))
    assert SessionMachine(100).cancel() == []


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        (lambda m: None, CommitDone("F")),
        (lambda m: None, PartsListed([], now=0)),
        (lambda m: None, PartUploaded(0, "P0", sha(0), 30, 0)),  # not in flight
        (lambda m: m.next_parts(1), PartUploaded(1, "P1", sha(1), 30, 30)),
        (lambda m: None, LocalPartHashed(4, sha(4))),  # outside the grid
        (lambda m: None, LocalPartHashed(0, "xyz")),
        (lambda m: None, AllPartsHashed(WHOLE)),  # before every part was hashed
        (lambda m: m.handle(SessionExpired()), SessionExpired()),
    ],
)
def test_events_the_state_cannot_receive_are_programming_errors(
    setup: Callable[[SessionMachine], object], event: Event
) -> None:
    m = fresh(100, 30)
    setup(m)
    before = m.to_json()
    with pytest.raises(SessionMisuseError):
        m.handle(event)
    assert m.to_json() == before


def test_a_failed_machine_round_trips_its_error() -> None:
    m = fresh(100, 30)
    m.handle(LocalFileChanged("size"))
    twin = roundtrip(m)
    assert twin.state is SessionState.FAILED
    assert type(twin.error) is FileChangedError and str(twin.error) == str(m.error)


@pytest.mark.parametrize("text", ["", "[]", '{"version": 2}', '{"version": 1}'])
def test_from_json_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        SessionMachine.from_json(text)


# ---- properties ----


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_interleavings_keep_every_invariant(data: st.DataObject) -> None:
    """Parts finishing, failing and conflicting in any order, 202s, parts_mismatch and JSON round
    trips at any point: a part is never out twice, a commit comes only once everything is
    uploaded and hashed, and it is complete and sorted. A twin restored from JSON after every
    step behaves identically."""
    file_size = data.draw(st.integers(1, 300), label="file_size")
    part_size = data.draw(st.integers(1, 64), label="part_size")
    total = -(-file_size // part_size)
    limits = SessionLimits(
        max_part_attempts=data.draw(st.integers(1, 4)),
        commit_retries=data.draw(st.integers(0, 3)),
        mismatch_retries=data.draw(st.integers(0, 3)),
    )
    m, twin = SessionMachine(file_size, limits), SessionMachine(file_size, limits)

    def both(step: Callable[[SessionMachine], list[Any]]) -> list[Any]:
        nonlocal twin
        ours, theirs = step(m), step(twin)
        assert ours == theirs
        twin = SessionMachine.from_json(twin.to_json())
        assert twin.to_json() == m.to_json()
        return ours

    def feed(event: Event) -> list[Action]:
        return both(lambda x: x.handle(event))

    def ask(limit: int) -> list[UploadPart]:
        return both(lambda x: x.next_parts(limit))

    assert both(lambda x: x.start()) == [CreateSession()]
    both(lambda x: x.handle(created(file_size, part_size)))
    reader, whole_sent, done = 0, False, set[int]()
    in_flight: set[int] = set()
    commit: Commit | None = None

    def check(actions: list[Action]) -> None:
        nonlocal commit
        assert Abort() not in actions  # nothing here is a permanent failure
        for action in actions:
            if isinstance(action, Commit):
                assert done == set(range(total)) and not in_flight
                assert reader == total and whole_sent
                assert [p.offset for p in action.parts] == [i * part_size for i in range(total)]
                assert sum(p.size for p in action.parts) == file_size
                assert [(p.part_id, p.sha1) for p in action.parts] == [(f"P{i}", sha(i)) for i in range(total)]
                assert action.whole_sha1_hex == WHOLE
                commit = action
            else:
                assert isinstance(action, Wait) and actions[-1] == commit

    for _ in range(300):
        if m.finished:
            break
        moves = ["ask", "roundtrip"]
        if reader < total or not whole_sent:
            moves.append("hash")
        if in_flight:
            moves.append("finish")
        if commit is not None:
            moves.append("reply")
        move = data.draw(st.sampled_from(moves))
        if move == "ask":
            limit = data.draw(st.integers(1, 4))
            before = len(in_flight)
            parts = ask(limit)
            indices = [p.index for p in parts]
            assert indices == sorted(indices) and not set(indices) & (in_flight | done)
            assert len(in_flight) + len(parts) <= max(limit, before)
            assert all((p.offset, p.length) == m.span(p.index) for p in parts)
            in_flight |= set(indices)
        elif move == "roundtrip":
            m = SessionMachine.from_json(m.to_json())
        elif move == "hash":
            event: Event = LocalPartHashed(reader, sha(reader)) if reader < total else AllPartsHashed(WHOLE)
            reader, whole_sent = (reader + 1, whole_sent) if reader < total else (reader, True)
            check(feed(event))
        elif move == "finish":
            index = data.draw(st.sampled_from(sorted(in_flight)))
            offset, length = m.span(index)
            outcome = data.draw(st.sampled_from(["ok", "ok", "transient", "conflict"]))
            if outcome == "ok":
                event = PartUploaded(index, f"P{index}", sha(index), length, offset)
            elif outcome == "conflict":
                event = PartConflict(
                    index, {"part_id": f"P{index}", "offset": offset, "size": length, "sha1": sha(index)}
                )
            else:
                event = PartFailed(index, True, "reset")
            in_flight.discard(index)
            if outcome != "transient":
                done.add(index)
            check(feed(event))
        else:
            replies: list[Event] = [CommitAccepted(1.0), CommitPartsMismatch(), CommitDone("F1")]
            reply = data.draw(st.sampled_from(replies))
            check(feed(reply))
        assert m.progress == sum(m.span(i)[1] for i in done)
        assert m.in_flight == in_flight or m.finished

    if m.state is SessionState.DONE:
        assert commit is not None and m.file_id == "F1"
    elif m.state is SessionState.FAILED:
        assert isinstance(m.error, TransientError)  # a retry budget ran out


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_resume_with_any_subset_listed_uploads_exactly_the_missing_parts(data: st.DataObject) -> None:
    file_size = data.draw(st.integers(1, 300))
    part_size = data.draw(st.integers(1, 64))
    total = -(-file_size // part_size)
    recorded = data.draw(st.sets(st.integers(0, total - 1)))
    on_box = data.draw(st.sets(st.integers(0, total - 1)))
    m = crashed_with(recorded, file_size, part_size)
    assert m.resume(now=10) == [ListParts()]
    entries = listed(m, on_box & recorded) + listed(m, on_box - recorded, prefix="B")
    data.draw(st.randoms()).shuffle(entries)
    hash_early = data.draw(st.integers(0, total))
    for i in range(hash_early):  # the reader may run ahead of the listing
        assert m.handle(LocalPartHashed(i, sha(i))) == []
    assert m.handle(PartsListed(entries, now=10)) == []
    handed: list[int] = []
    actions: list[Action] = []
    reader, whole_sent = hash_early, False
    while True:
        parts = m.next_parts(data.draw(st.integers(1, 3)))
        if reader < total:
            actions += m.handle(LocalPartHashed(reader, sha(reader)))
            reader += 1
        elif not whole_sent:
            actions += m.handle(AllPartsHashed(WHOLE))
            whole_sent = True
        for p in parts:
            handed.append(p.index)
            actions += m.handle(uploaded(p))
        if not parts and whole_sent:
            break
    assert sorted(handed) == sorted(set(range(total)) - on_box)
    [commit] = actions
    assert isinstance(commit, Commit)
    assert [p.part_id for p in commit.parts] == [
        f"{'P' if i in recorded or i not in on_box else 'B'}{i}" for i in range(total)
    ]
