"""Uploads against the emulator's faults and limits: the proof list of the Box client's issue.

429 storms, 5xx bursts, dropped connections, slow commits, expiring tokens, other identities,
big part sizes, a killed process, a 1 GiB file, a file changing under the upload, and account
limits. Each test checks the outcome on the emulator (``/_sim/state``, ``/_sim/stats``,
``/_sim/log``), not only what the client says.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from boxd.box.session import SessionLimits
from boxd.box.uploader import LocalFile
from boxd.errors import FileChangedError, LimitExceededError
from boxd.settings import MIB, BoxSettings
from boxd.sim.config import GIB, Knobs
from tests.conftest import REPO
from tests.integration.boxfix import Kit, box_kit, settings_kit
from tests.integration.simfix import Box, Clock, running_box
from tests.integration.upload_child import PART_CONCURRENCY
from tests.simproc import running_sim

pytestmark = pytest.mark.anyio

PART_ROUTE = "PUT /api/2.0/files/upload_sessions/{session_id}"
COMMIT_ROUTE = "POST /api/2.0/files/upload_sessions/{session_id}/commit"
SESSION_ROUTE = "POST /api/2.0/files/upload_sessions"
#: Files from 50 MiB up take a session (``upload_cutoff``'s minimum): 7 parts of 8 MiB.
CHUNKED = 50 * MIB + 4321
#: An mtime far in the past, so that any write during the test moves it (coarse timestamp clocks).
OLD_MTIME_NS = 1_600_000_000 * 10**9


def _stamped(path: Path, size: int) -> LocalFile:
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset in [*range(0, size, MIB), size - 64]:
            fh.seek(offset)
            fh.write(os.urandom(64))
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return LocalFile.stat(path)


async def stamped_file(path: Path, size: int) -> LocalFile:
    """A sparse file of ``size`` bytes with random bytes in every MiB: each part differs, and it is cheap."""
    return await anyio.to_thread.run_sync(_stamped, path, size)


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


async def sha1(path: Path) -> str:
    return await anyio.to_thread.run_sync(_sha1, path)


async def sim_state(box: Box, user_id: str | None = None) -> dict[str, Any]:
    query = f"?user_id={user_id}" if user_id else ""
    reply = await box.call("GET", "/_sim/state" + query, auth=False)
    assert reply.status == 200, reply.body
    return dict(reply.body)


async def sim_stats(box: Box) -> dict[str, Any]:
    return dict((await box.call("GET", "/_sim/stats", auth=False)).body)


async def sim_log(box: Box) -> list[dict[str, Any]]:
    return list((await box.call("GET", "/_sim/log", auth=False)).body["requests"])


async def set_faults(box: Box, **knobs: Any) -> None:
    reply = await box.call("POST", "/_sim/faults", json_body=knobs, auth=False)
    assert reply.status == 200, reply.body


async def stored(box: Box, path: str, user_id: str | None = None) -> dict[str, Any]:
    """The emulator's row of the file at ``path`` (relative to the user's root)."""
    files = {f["path"]: f for f in (await sim_state(box, user_id))["files"]}
    assert path in files, f"{path} is not on the emulator; it holds {sorted(files)}"
    return dict(files[path])


async def upload_chunked(kit: Kit, local: LocalFile, folder: str = "Backups", **kwargs: Any) -> str:
    """Upload ``local`` into ``folder``; return the committed file's SHA-1 as the client saw it."""
    parent = await kit.folders.resolve(folder)
    item = await kit.uploader.upload(local, parent_id=parent, name=local.path.name, **kwargs)
    assert item is not None and item.size == local.size and item.sha1 is not None
    return item.sha1


# -- rate limits and failures ------------------------------------------------------------------

RETRY_AFTER = 2
#: Requests already on their way when Box answered a 429 arrive within this; they are no retries.
IN_FLIGHT = 0.2
#: Wall clock (the log) against the loop's monotonic clock (the pacer) over a few seconds.
SLACK = 0.05


async def test_a_429_storm_stops_every_request_for_retry_after_and_the_upload_completes(
    box: Box, kit: Kit, tmp_path: Path
) -> None:
    # One rng draw per Box request, in arrival order: with this seed the 4th, 5th and 11th
    # requests (all part PUTs, the later two among parts in flight) are refused. A part takes
    # 0.5 s at 16 MiB/s, so a client that held back only the refused request would send the
    # next part, as a slot frees, well inside the Retry-After window.
    box.state.rng = random.Random(6)
    await set_faults(box, rate_429=0.3, retry_after=RETRY_AFTER, bandwidth=16 * MIB)
    local = await stamped_file(tmp_path / "pack", CHUNKED)
    assert await upload_chunked(kit, local) == await sha1(local.path)
    assert (await stored(box, "Backups/pack"))["sha1"] == await sha1(local.path)

    log = await sim_log(box)
    refused = [e for e in log if e["status"] == 429]
    assert len(refused) >= 3 and all(e["route"] == PART_ROUTE for e in refused)
    assert kit.stats.rate_limited == len(refused) == (await sim_stats(box))["rate_limited"]
    assert kit.stats.retries["rate_limited"] == len(refused)
    for hit in refused:
        # Every caller waits, not only the one that got the 429: nothing new reaches Box until
        # Retry-After has passed.
        early = [e for e in log if hit["t"] + IN_FLIGHT <= e["t"] < hit["t"] + RETRY_AFTER - SLACK]
        assert not early, f"requests {early} arrived within Retry-After of the 429 {hit}"


async def test_5xx_bursts_and_connections_dropped_mid_part_are_retried_and_the_file_is_intact(
    box: Box, kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministic phases, switched by the client's own retry count: every part dropped
    # mid-body until 2 drops were retried, then every request answered 5xx until 3 of those
    # were, then calm. No request fails more than 5 times, within the client's 6 attempts.
    drops, errors = 2, 3
    seen: Counter[str] = Counter()
    count = kit.stats.retry

    def retry(reason: str) -> None:
        count(reason)
        seen[reason] += 1
        if (reason, seen[reason]) == ("network", drops):
            box.state.knobs = box.state.knobs.updated({"drop_mid_part": 0, "rate_5xx": 1})
        elif (reason, seen[reason]) == ("server_error", errors):
            box.state.knobs = box.state.knobs.updated({"rate_5xx": 0})

    monkeypatch.setattr(kit.stats, "retry", retry)
    await set_faults(box, drop_mid_part=1)
    local = await stamped_file(tmp_path / "pack", CHUNKED)
    assert await upload_chunked(kit, local) == await sha1(local.path)
    assert (await stored(box, "Backups/pack"))["sha1"] == await sha1(local.path)

    log = await sim_log(box)
    dropped = [e for e in log if e["status"] == 0]  # the emulator closed the connection mid-body
    failed = [e for e in log if e["status"] >= 500]
    assert len(dropped) >= drops and {e["route"] for e in dropped} == {PART_ROUTE}
    assert len(failed) >= errors
    # Every attempt Box saw went through boxd's loop (paced and counted): none was resent
    # behind its back by the HTTP library.
    assert kit.stats.retries["server_error"] == len(failed) and kit.stats.retries["network"] == len(dropped)
    sent = sum(n for (op, _), n in kit.stats.requests.items() if op == "upload_part")
    assert sent == len([e for e in log if e["route"] == PART_ROUTE])
    assert kit.stats.buffered_bytes == 0 and kit.stats.parts_in_flight == 0


async def test_a_commit_answered_202_five_times_then_parts_mismatch_twice_still_commits(
    box: Box, kit: Kit, tmp_path: Path
) -> None:
    await set_faults(box, commit_202=5, commit_mismatch=2)
    # Short mismatch backoff: the waits after 202 are Box's (Retry-After: 1); these are ours.
    kit.uploader.limits = SessionLimits(commit_retries=10, mismatch_backoff=0.2)
    local = await stamped_file(tmp_path / "pack", CHUNKED)
    await upload_chunked(kit, local)
    assert (await stored(box, "Backups/pack"))["sha1"] == await sha1(local.path)

    commits = [e for e in await sim_log(box) if e["route"] == COMMIT_ROUTE]
    assert [e["status"] for e in commits] == [202] * 5 + [400] * 2 + [201]
    for before, then in itertools.pairwise(commits[:6]):
        assert then["t"] - before["t"] >= 1 - SLACK  # each 202 said Retry-After: 1
    assert [s["state"] for s in (await sim_state(box))["sessions"]] == ["committed"]


# -- tokens and identities ---------------------------------------------------------------------


async def test_an_access_token_expiring_mid_upload_is_refreshed_once_and_no_401_reaches_the_caller(
    box: Box, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    # The provider's clock stands still while the emulator's moves on: Box expires the token
    # while boxd still believes it valid, as after a suspend or with a skewed clock.
    provider_clock = Clock(box.clock.now)
    async with box_kit(box, state_dir, clock=provider_clock) as kit:
        assert kit.settings.token is not None
        seed = json.loads(kit.settings.token.get_secret_value())
        local = await stamped_file(tmp_path / "pack", 60 * MIB + 99)
        expired: list[int] = []

        def progress(nbytes: int) -> None:
            if not expired:
                expired.append(nbytes)
                box.clock.advance(3600 + 60)

        assert await upload_chunked(kit, local, progress=progress) == await sha1(local.path)

    stats = await sim_stats(box)
    assert stats["unauthorized"] >= 1 and stats["token_grants"]["refresh_token"] == 1
    assert kit.stats.token_refreshes == {"ok": 1}
    assert sum(n for (op, status), n in kit.stats.requests.items() if status == "401") == stats["unauthorized"]
    assert (await stored(box, "Backups/pack"))["sha1"] == await sha1(local.path)

    # The refresh token Box handed out in the rotation is on disk, and it works.
    on_disk = json.loads(await anyio.Path(state_dir / "token.json").read_text())
    assert on_disk["refresh_token"] != seed["refresh_token"]
    status, body = await refresh_directly(box, seed["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await refresh_directly(box, on_disk["refresh_token"])
    assert status == 200 and body["access_token"]


async def refresh_directly(box: Box, refresh_token: str) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": box.state.authority.client_id,
        "client_secret": box.state.authority.client_secret,
    }
    async with box.http.post(f"{box.base}/oauth2/token", data=form) as resp:
        return resp.status, dict(await resp.json())


@pytest.mark.parametrize("identity", ["jwt", "client_credentials", "jwt_as_user"])
async def test_jwt_and_client_credentials_upload_to_the_service_account_and_as_user_to_the_member(
    box: Box, tmp_path: Path, identity: str
) -> None:
    jwt: dict[str, Any] = {"config_file": box.state.data_dir / "box_config.json"}
    settings = {
        "jwt": jwt,
        "client_credentials": {
            "client_credentials": True,
            "subject_type": "enterprise",
            "subject_id": box.state.account.enterprise_id,
        },
        "jwt_as_user": {**jwt, "impersonate": box.state.member.id},
    }[identity]
    owner = box.state.member if identity == "jwt_as_user" else box.state.service_account
    small = tmp_path / "index.json"
    await anyio.Path(small).write_bytes(os.urandom(5000))
    big = await stamped_file(tmp_path / "pack", CHUNKED)
    async with box_kit(box, tmp_path / "state", **settings) as kit:
        folder = await kit.folders.resolve("Backups/host1")
        await kit.uploader.upload(LocalFile.stat(small), parent_id=folder, name="index.json")
        await upload_chunked(kit, big, "Backups/host1")

    assert (await stored(box, "Backups/host1/index.json", owner.id))["sha1"] == await sha1(small)
    assert (await stored(box, "Backups/host1/pack", owner.id))["sha1"] == await sha1(big.path)
    for other in {box.state.user.id, box.state.service_account.id, box.state.member.id} - {owner.id}:
        assert (await sim_state(box, other))["files"] == []
    grant = "client_credentials" if identity == "client_credentials" else "jwt"
    assert (await sim_stats(box))["token_grants"][grant] == 1


# -- part sizes and memory ---------------------------------------------------------------------


@pytest.mark.parametrize(("part_size", "file_size"), [(32 * MIB, 100 * MIB + 7), (64 * MIB, 150 * MIB + 1)])
async def test_big_part_size_policies_upload_intact_within_the_memory_limit(
    tmp_path: Path, part_size: int, file_size: int
) -> None:
    async with running_box(tmp_path / "sim", Knobs(part_size=part_size)) as box:
        async with box_kit(box, tmp_path / "state", memory_limit=64 * MIB) as kit:
            local = await stamped_file(tmp_path / "archive.tar", file_size)
            assert await upload_chunked(kit, local) == await sha1(local.path)
        [session] = (await sim_state(box))["sessions"]
        assert (session["part_size"], session["total_parts"]) == (part_size, -(-file_size // part_size))
        assert (await sim_stats(box))["requests"][PART_ROUTE] == {"200": session["total_parts"]}
        assert (await stored(box, "Backups/archive.tar"))["sha1"] == await sha1(local.path)
    assert 0 < kit.stats.peak_buffered_bytes <= 64 * MIB


async def test_a_1_gib_upload_keeps_buffered_part_bytes_under_the_memory_limit(box: Box, tmp_path: Path) -> None:
    limit = 32 * MIB
    # Pacing is not under test here: at 1000 calls/min its 142 parts alone would take 9 s.
    async with box_kit(
        box, tmp_path / "state", memory_limit=limit, part_concurrency=4, api_calls_per_minute=60_000
    ) as kit:
        big = await stamped_file(tmp_path / "disk.img", 1 * GIB + 12345)
        # A second upload at the same time: 4 + 4 parts of 8 MiB in flight would need 64 MiB,
        # so only the shared budget, not part_concurrency, keeps the bound.
        other = await stamped_file(tmp_path / "pack", 100 * MIB)
        async with anyio.create_task_group() as tg:
            for local in (big, other):
                tg.start_soon(upload_chunked, kit, local)
    for local in (big, other):
        assert (await stored(box, f"Backups/{local.path.name}"))["sha1"] == await sha1(local.path)
    sessions = {s["file_name"]: s for s in (await sim_state(box))["sessions"]}
    assert (sessions["disk.img"]["part_size"], sessions["disk.img"]["total_parts"]) == (8 * MIB, 129)
    assert 0 < kit.stats.peak_buffered_bytes <= limit
    assert kit.stats.buffered_bytes == 0 and kit.stats.uploaded_bytes == big.size + other.size


# -- a killed process --------------------------------------------------------------------------


async def wait_for_parts(checkpoint: anyio.Path, parts: int, child: Process, log: anyio.Path) -> dict[str, Any]:
    """Poll the child's checkpoint file until it records ``parts`` uploaded parts."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.returncode is not None:
            output = await log.read_text()
            raise AssertionError(f"the uploader exited ({child.returncode}) before it was killed: {output}")
        if await checkpoint.exists():
            state: dict[str, Any] = json.loads(await checkpoint.read_text())
            if len(state["uploaded"]) >= parts:
                return state
        await anyio.sleep(0.02)
    raise AssertionError(f"no checkpoint with {parts} parts within 60 s: {await log.read_text()}")


async def test_an_upload_killed_mid_session_resumes_from_its_checkpoint_and_sends_no_part_twice(
    tmp_path: Path,
) -> None:
    local = await stamped_file(tmp_path / "pack.bin", 50 * MIB + 777)
    # 2 MiB parts at 4 MiB/s per connection: the session takes seconds, so it is surely still
    # open when the test has seen 3 parts and kills the process.
    with running_sim(tmp_path / "sim", "--part-size", str(2 * MIB), "--bandwidth", str(4 * MIB)) as sim:
        creds = sim.credentials
        values = {k: creds[k] for k in ("client_id", "client_secret", "api_url", "upload_url", "token_url")}
        values["token"] = json.dumps(creds["token"])
        settings_path = anyio.Path(tmp_path / "settings.json")
        await settings_path.write_text(json.dumps(values))
        state_dir, checkpoint = tmp_path / "state", anyio.Path(tmp_path / "checkpoint.json")
        child_log = anyio.Path(tmp_path / "child.log")
        args = [settings_path, state_dir, local.path, checkpoint]
        async with await child_log.open("wb") as out:
            child = await anyio.open_process(
                [sys.executable, "-m", "tests.integration.upload_child", *map(str, args)],
                cwd=REPO,
                stdout=out.wrapped,
                stderr=subprocess.STDOUT,
            )
        try:
            seen = await wait_for_parts(checkpoint, 3, child, child_log)
        finally:
            child.kill()  # SIGKILL: no cleanup, no abort, no last checkpoint
            await child.wait()
        assert child.returncode == -signal.SIGKILL
        await anyio.to_thread.run_sync(lambda: sim.set_faults(bandwidth=0))

        last = await checkpoint.read_text()
        total_parts = seen["session"]["total_parts"]
        assert len(json.loads(last)["uploaded"]) < total_parts
        async with settings_kit(BoxSettings.model_validate(values), state_dir) as kit:
            assert kit.uploader.part_concurrency == PART_CONCURRENCY
            assert await upload_chunked(kit, local, resume=last) == await sha1(local.path)

        state, stats = await anyio.to_thread.run_sync(lambda: (sim.state(), sim.stats()))
    [file] = state["files"]
    assert (file["path"], file["sha1"]) == ("Backups/pack.bin", await sha1(local.path))
    [session] = state["sessions"]
    assert (session["state"], session["total_parts"]) == ("committed", total_parts)
    requests = stats["requests"]
    assert requests[SESSION_ROUTE] == {"201": 1}  # the session was resumed, not replaced
    assert sum(requests["GET /api/2.0/files/upload_sessions/{session_id}/parts"].values()) >= 1
    # Parts are immutable on Box, so each offset is stored once; a PUT beyond that is a part
    # that was in flight when the process died, and there are at most part_concurrency of those.
    assert requests[PART_ROUTE].get("200") == total_parts
    assert sum(requests[PART_ROUTE].values()) <= total_parts + PART_CONCURRENCY


@pytest.mark.parametrize("gone", ["expired", "aborted"])
async def test_a_checkpoint_whose_session_expired_or_vanished_starts_a_new_session_and_commits(
    box: Box, kit: Kit, tmp_path: Path, gone: str
) -> None:
    local = await stamped_file(tmp_path / "pack", CHUNKED)
    saved: list[str | None] = []

    async def checkpoint(state: str | None) -> None:
        saved.append(state)

    def parts_saved() -> int:
        return len(json.loads(saved[-1] or "{}").get("uploaded", []))

    # Stopped as a shutdown would stop it, after 3 parts. One part at a time, so that no PUT is
    # cut off mid-body: the emulator leaks a file when its handler is cancelled inside a body.
    kit.uploader.part_concurrency = 1
    with anyio.CancelScope() as interrupted:

        def progress(nbytes: int) -> None:
            if parts_saved() >= 2:  # the checkpoint of this third part is yet to come
                interrupted.cancel()

        await upload_chunked(kit, local, checkpoint=checkpoint, progress=progress)
    assert interrupted.cancelled_caught and parts_saved() == 3
    kit.uploader.part_concurrency = 4
    [first] = (await sim_state(box))["sessions"]
    if gone == "expired":
        box.clock.advance(8 * 86400)  # Box's sessions live 7 days; boxd's own clock has not moved
    else:
        abort = json.loads(saved[-1] or "")["session"]["endpoints"]["abort"]
        assert (await box.call("DELETE", abort.removeprefix(box.base))).status == 204

    assert await upload_chunked(kit, local, resume=saved[-1]) == await sha1(local.path)
    sessions = {s["id"]: s["state"] for s in (await sim_state(box))["sessions"]}
    assert sessions.pop(first["id"]) in ("expired", "aborted")
    assert list(sessions.values()) == ["committed"]


# -- changed files and account limits ----------------------------------------------------------


def _rewrite(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.write(b"changed!")


def _truncate(path: Path) -> None:
    os.truncate(path, 20 * MIB)


@pytest.mark.parametrize("change", [_rewrite, _truncate], ids=["rewritten", "truncated"])
async def test_a_file_that_changes_during_the_upload_is_never_committed(
    box: Box, kit: Kit, tmp_path: Path, change: Callable[[Path], None]
) -> None:
    local = await stamped_file(tmp_path / "pack", CHUNKED)

    def progress(nbytes: int) -> None:
        if not changed:
            changed.append(nbytes)
            change(local.path)  # after the first part, while later ones are still to be read

    changed: list[int] = []
    with pytest.raises(FileChangedError, match="changed"):
        await upload_chunked(kit, local, progress=progress)
    assert changed
    state = await sim_state(box)
    assert state["files"] == []
    assert [s["state"] for s in state["sessions"]] == ["aborted"]
    assert COMMIT_ROUTE not in (await sim_stats(box))["requests"]


@pytest.mark.parametrize(
    ("knob", "size", "message"),
    [
        ("max_upload_size", 1000, "accepts files up to 1000 bytes (max_upload_size"),
        ("space_amount", 1000, "has only 1000 bytes of space left"),
        ("max_upload_size", 50 * MIB, f"accepts files up to {50 * MIB} bytes (max_upload_size"),
    ],
    ids=["max_upload_size", "space", "max_upload_size_chunked"],
)
async def test_a_file_over_an_account_limit_fails_before_any_upload_naming_the_limit(
    box: Box, kit: Kit, tmp_path: Path, knob: str, size: int, message: str
) -> None:
    await set_faults(box, **{knob: size})
    local = await stamped_file(tmp_path / "pack", CHUNKED if size == 50 * MIB else 2000)
    folder = await kit.folders.resolve("Backups")
    with pytest.raises(LimitExceededError) as info:
        await kit.uploader.upload(local, parent_id=folder, name="pack")
    assert message in str(info.value)
    requests = (await sim_stats(box))["requests"]
    assert not {"POST /api/2.0/files/content", SESSION_ROUTE} & set(requests)
