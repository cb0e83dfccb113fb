"""The emulator's Box rules over real loopback HTTP: every answer a client can get, 4xx included."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from boxd.sim.config import Knobs
from tests.integration.simfix import Box, b64sha1, running_box

pytestmark = pytest.mark.anyio

BIG = os.urandom(20_000_000)  # exactly Box's session minimum
PART = 4 * 1024 * 1024


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    async with running_box(tmp_path / "sim", Knobs(part_size=PART)) as b:
        yield b


def error_code(reply: object) -> str:
    body = getattr(reply, "body", None)
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert set(body) >= {"type", "status", "code", "message", "request_id"}
    return str(body["code"])


# -- auth ------------------------------------------------------------------------------------


async def test_a_request_without_a_token_gets_401_with_www_authenticate(box: Box) -> None:
    r = await box.call("GET", "/2.0/users/me", auth=False)
    assert r.status == 401
    assert error_code(r) == "unauthorized"
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_an_access_token_expires_after_its_ttl(box: Box) -> None:
    assert (await box.call("GET", "/2.0/users/me")).status == 200
    box.clock.advance(3601)
    r = await box.call("GET", "/2.0/users/me")
    assert r.status == 401
    assert "expired" in r.headers["WWW-Authenticate"]
    assert box.state.stats.unauthorized == 1


async def test_a_refresh_token_rotates_and_cannot_be_reused(box: Box) -> None:
    creds = box.state.authority
    form = {
        "grant_type": "refresh_token",
        "refresh_token": box.refresh_token,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    }
    first = await box.call("POST", "/oauth2/token", data=form, auth=False)
    assert first.status == 200
    assert first.headers["Cache-Control"] == "no-store"
    assert first.body["refresh_token"] != box.refresh_token
    assert first.body["token_type"] == "bearer"
    again = await box.call("POST", "/api/oauth2/token", data=form, auth=False)
    assert again.status == 400
    assert again.body == {"error": "invalid_grant", "error_description": "Refresh token has expired"}
    box.token = first.body["access_token"]
    assert (await box.call("GET", "/2.0/users/me")).status == 200
    assert box.state.stats.token_grants["refresh_token"] == 1


async def test_the_token_endpoint_rejects_bad_clients_grants_and_unknown_tokens(box: Box) -> None:
    a = box.state.authority
    bad_client = {
        "grant_type": "refresh_token",
        "refresh_token": box.refresh_token,
        "client_id": a.client_id,
        "client_secret": "wrong",
    }
    r = await box.call("POST", "/oauth2/token", data=bad_client, auth=False)
    assert (r.status, r.body["error"]) == (400, "invalid_client")
    r = await box.call("POST", "/oauth2/token", data={"grant_type": "password"}, auth=False)
    assert (r.status, r.body["error"]) == (400, "invalid_request")
    unknown = {**bad_client, "client_secret": a.client_secret, "refresh_token": "nope"}
    r = await box.call("POST", "/oauth2/token", data=unknown, auth=False)
    assert r.body == {"error": "invalid_grant", "error_description": "Invalid refresh token"}
    # Nothing was spent by the failed attempts: the real refresh token still works.
    good = {**unknown, "refresh_token": box.refresh_token}
    assert (await box.call("POST", "/oauth2/token", data=good, auth=False)).status == 200


async def test_revoke_invalidates_every_issued_token(box: Box) -> None:
    r = await box.call("POST", "/_sim/revoke", auth=False)
    assert r.status == 204
    assert (await box.call("GET", "/2.0/users/me")).status == 401
    a = box.state.authority
    form = {
        "grant_type": "refresh_token",
        "refresh_token": box.refresh_token,
        "client_id": a.client_id,
        "client_secret": a.client_secret,
    }
    assert (await box.call("POST", "/oauth2/token", data=form, auth=False)).body["error"] == "invalid_grant"


async def test_client_credentials_grant_for_the_enterprise_and_for_a_user(box: Box) -> None:
    a = box.state.authority
    base = {"grant_type": "client_credentials", "client_id": a.client_id, "client_secret": a.client_secret}
    ent = await box.call(
        "POST",
        "/oauth2/token",
        auth=False,
        data={**base, "box_subject_type": "enterprise", "box_subject_id": box.state.account.enterprise_id},
    )
    assert ent.status == 200 and "refresh_token" not in ent.body
    box.token = ent.body["access_token"]
    me = await box.call("GET", "/2.0/users/me")
    assert me.body["id"] == box.state.service_account.id
    usr = await box.call(
        "POST",
        "/oauth2/token",
        auth=False,
        data={**base, "box_subject_type": "user", "box_subject_id": box.state.member.id},
    )
    box.token = usr.body["access_token"]
    assert (await box.call("GET", "/2.0/users/me")).body["id"] == box.state.member.id
    wrong = await box.call(
        "POST", "/oauth2/token", auth=False, data={**base, "box_subject_type": "enterprise", "box_subject_id": "999"}
    )
    assert wrong.body == {"error": "invalid_grant", "error_description": "Grant credentials are invalid"}
    bad_type = await box.call("POST", "/oauth2/token", auth=False, data={**base, "box_subject_type": "group"})
    assert bad_type.body["error"] == "unauthorized_client"
    assert box.state.stats.token_grants["client_credentials"] == 2


async def test_as_user_acts_for_a_managed_user_and_is_refused_otherwise(box: Box) -> None:
    member = box.state.member.id
    r = await box.call("GET", "/2.0/users/me", headers={"As-User": member})
    assert r.body["id"] == member
    folder = await box.folder("member-only")
    # The admin's own tree does not hold the member's content, and vice versa.
    r = await box.call("GET", f"/2.0/folders/{folder}", headers={"As-User": member})
    assert r.status == 404
    r = await box.call("GET", "/2.0/users/me", headers={"As-User": box.state.service_account.id})
    assert (r.status, error_code(r)) == (403, "access_denied_insufficient_permissions")
    r = await box.call("GET", "/2.0/users/me", headers={"As-User": "424242"})
    assert r.status == 403
    a = box.state.authority
    box.token = a.issue(member, with_refresh=False)["access_token"]  # a plain user may not impersonate
    r = await box.call("GET", "/2.0/users/me", headers={"As-User": box.state.user.id})
    assert r.status == 403


# -- folders -----------------------------------------------------------------------------------


async def test_folder_names_are_unique_case_insensitively_with_an_array_conflict(box: Box) -> None:
    fid = await box.folder("Backups")
    r = await box.call("POST", "/2.0/folders", json_body={"name": "BACKUPS", "parent": {"id": "0"}})
    assert (r.status, error_code(r)) == (409, "item_name_in_use")
    conflicts = r.body["context_info"]["conflicts"]
    assert isinstance(conflicts, list) and conflicts[0]["id"] == fid


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("a/b", "item_name_invalid"),
        ("a\\b", "item_name_invalid"),
        ("..", "item_name_invalid"),
        (".", "item_name_invalid"),
        ("trailing ", "item_name_invalid"),
        ("tab\there", "item_name_invalid"),
        ("x" * 256, "item_name_too_long"),
        ("", "bad_request"),
    ],
)
async def test_invalid_folder_names_are_refused(box: Box, name: str, code: str) -> None:
    r = await box.call("POST", "/2.0/folders", json_body={"name": name, "parent": {"id": "0"}})
    assert (r.status, error_code(r)) == (400, code)
    assert box.state.account.items(box.state.account.folders[box.state.account.roots[box.state.user.id]]) == []


async def test_folder_create_errors_name_the_parameter(box: Box) -> None:
    r = await box.call("POST", "/2.0/folders", json_body={"name": "x"})
    assert (r.status, error_code(r)) == (400, "bad_request")
    assert r.body["context_info"]["errors"][0] == {
        "reason": "missing_parameter",
        "name": "parent",
        "message": "'parent' is required",
    }
    r = await box.call("POST", "/2.0/folders", json_body={"name": "x", "parent": {"id": "123"}})
    assert (r.status, error_code(r)) == (404, "not_found")
    assert r.body["context_info"]["errors"][0]["name"] == "parent"
    r = await box.call("POST", "/2.0/folders", data=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status, error_code(r)) == (400, "bad_request")


async def test_get_folder_answers_404_for_unknown_and_405_for_malformed_ids(box: Box) -> None:
    assert (await box.call("GET", "/2.0/folders/987654")).status == 404
    r = await box.call("GET", "/2.0/folders/abc")
    assert (r.status, error_code(r)) == (405, "method_not_allowed")
    root = await box.call("GET", "/2.0/folders/0")
    assert root.body["id"] == "0" and root.body["name"] == "All Files"
    assert root.body["item_collection"]["total_count"] == 0


async def test_listing_pages_by_offset_and_by_marker_with_fields(box: Box) -> None:
    parent = await box.folder("many")
    for i in range(5):
        await box.folder(f"sub{i}", parent)
    for i in range(4):
        assert (await box.upload(f"f{i}.bin", b"x" * i, parent)).status == 201
    r = await box.call("GET", f"/2.0/folders/{parent}/items?limit=3&offset=3&fields=name,size")
    assert r.body["total_count"] == 9 and r.body["offset"] == 3 and r.body["limit"] == 3
    assert [e["name"] for e in r.body["entries"]] == ["sub3", "sub4", "f0.bin"]
    assert set(r.body["entries"][2]) == {"type", "id", "etag", "name", "size"}
    names: list[str] = []
    marker = ""
    while True:
        r = await box.call("GET", f"/2.0/folders/{parent}/items?usemarker=true&limit=4&marker={marker}")
        assert "total_count" not in r.body
        names += [e["name"] for e in r.body["entries"]]
        if not r.body["next_marker"]:
            break
        marker = r.body["next_marker"]
    assert names == [*(f"sub{i}" for i in range(5)), *(f"f{i}.bin" for i in range(4))]
    mini = (await box.call("GET", f"/2.0/folders/{parent}/items")).body["entries"][-1]
    assert set(mini) == {"type", "id", "file_version", "sequence_id", "etag", "sha1", "name"}
    r = await box.call("GET", f"/2.0/folders/{parent}/items?limit=5000")
    assert r.body["limit"] == 1000  # Box clamps, it does not fail
    r = await box.call("GET", f"/2.0/folders/{parent}/items?offset=10001")
    assert (r.status, error_code(r)) == (400, "invalid_offset")
    r = await box.call("GET", f"/2.0/folders/{parent}/items?limit=0")
    assert (r.status, error_code(r)) == (400, "invalid_limit")


# -- simple uploads ------------------------------------------------------------------------


async def test_a_simple_upload_is_stored_and_downloads_identically(box: Box) -> None:
    content = os.urandom(300_000)
    r = await box.upload("pack.bin", content)
    assert r.status == 201
    entry = r.body["entries"][0]
    assert entry["sha1"] == hashlib.sha1(content).hexdigest() and entry["size"] == len(content)
    got = await box.call("GET", f"/2.0/files/{entry['id']}/content")
    assert got.status == 200 and got.raw == content
    info = await box.call("GET", f"/2.0/files/{entry['id']}")
    assert info.body["parent"]["id"] == "0"


async def test_a_wrong_content_md5_is_refused_and_nothing_is_stored(box: Box) -> None:
    r = await box.upload("bad.bin", b"data", sha1="0" * 40)
    assert (r.status, error_code(r)) == (400, "bad_digest")
    assert box.state.account.files == {}
    assert list((box.state.data_dir / "blobs").iterdir()) == []


async def test_file_before_attributes_is_refused(box: Box) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", b"data", filename="x")
    form.add_field("attributes", '{"name": "x", "parent": {"id": "0"}}')
    r = await box.call("POST", "/api/2.0/files/content", data=form)
    assert (r.status, error_code(r)) == (400, "metadata_after_file_contents")


async def test_a_same_name_upload_conflicts_with_an_object_and_a_version_replaces(box: Box) -> None:
    first = (await box.upload("Index.json", b"v1")).body["entries"][0]
    r = await box.upload("index.JSON", b"v2")
    assert (r.status, error_code(r)) == (409, "item_name_in_use")
    conflict = r.body["context_info"]["conflicts"]
    assert isinstance(conflict, dict) and conflict["id"] == first["id"] and conflict["sha1"] == first["sha1"]
    v2 = await box.upload("Index.json", b"v2", file_id=first["id"])
    assert v2.status == 200 and v2.body["entries"][0]["sha1"] == hashlib.sha1(b"v2").hexdigest()
    stale = await box.upload("Index.json", b"v3", file_id=first["id"], headers={"If-Match": first["etag"]})
    assert (stale.status, error_code(stale)) == (412, "precondition_failed")
    files = box.state.account.files
    assert len(files) == 1 and len(files[first["id"]].versions) == 2


async def test_quota_and_file_size_limits_answer_403(box: Box) -> None:
    await box.call("POST", "/_sim/faults", json_body={"max_upload_size": 10}, auth=False)
    r = await box.upload("big.bin", b"x" * 11)
    assert (r.status, error_code(r)) == (403, "file_size_limit_exceeded")
    await box.call("POST", "/_sim/faults", json_body={"max_upload_size": 100, "space_amount": 15}, auth=False)
    assert (await box.upload("a.bin", b"x" * 10)).status == 201
    r = await box.upload("b.bin", b"x" * 10)
    assert (r.status, error_code(r)) == (403, "storage_limit_exceeded")
    me = (await box.call("GET", "/2.0/users/me")).body
    assert (me["space_amount"], me["space_used"], me["max_upload_size"]) == (15, 10, 100)


async def test_preflight_answers_an_upload_url_or_the_error_the_upload_would_get(box: Box) -> None:
    for path in ("/2.0/files/content", "/2.0/files/content/"):
        ok = await box.call("OPTIONS", path, json_body={"name": "new.bin", "size": 10, "parent": {"id": "0"}})
        assert ok.status == 200 and ok.body["upload_url"].startswith(box.base + "/api/2.0/files/content")
    await box.upload("taken.bin", b"x")
    r = await box.call(
        "OPTIONS", "/2.0/files/content", json_body={"name": "TAKEN.bin", "size": 1, "parent": {"id": "0"}}
    )
    assert (r.status, error_code(r)) == (409, "item_name_in_use")
    r = await box.call("OPTIONS", "/2.0/files/content", json_body={"name": "x", "size": 10**13, "parent": {"id": "0"}})
    assert (r.status, error_code(r)) == (403, "file_size_limit_exceeded")


async def test_trashing_a_file_frees_its_name(box: Box) -> None:
    fid = (await box.upload("old.bin", b"x")).body["entries"][0]["id"]
    assert (await box.call("DELETE", f"/2.0/files/{fid}")).status == 204
    assert (await box.call("GET", f"/2.0/files/{fid}")).body["code"] == "trashed"
    assert (await box.upload("old.bin", b"y")).status == 201
    state = (await box.call("GET", "/_sim/state", auth=False)).body
    assert [f["name"] for f in state["trash"]] == ["old.bin"]


# -- upload sessions -----------------------------------------------------------------------


async def test_a_chunked_upload_commits_and_matches_byte_for_byte(box: Box) -> None:
    folder = await box.folder("Backups")
    r = await box.upload_chunked("archive.tar", BIG, folder)
    assert r.status == 201, r.body
    entry = r.body["entries"][0]
    assert entry["sha1"] == hashlib.sha1(BIG).hexdigest()
    assert (await box.call("GET", f"/2.0/files/{entry['id']}/content")).raw == BIG
    state = (await box.call("GET", "/_sim/state", auth=False)).body
    assert state["files"][0]["path"] == "Backups/archive.tar"
    assert state["sessions"][0]["state"] == "committed"


async def test_sessions_need_20_million_bytes_and_valid_parameters(box: Box) -> None:
    cases = [
        ({"file_size": 20_000_000, "file_name": "x"}, "missing_destination"),
        ({"folder_id": "zz", "file_size": 20_000_000, "file_name": "x"}, "invalid_folder_id"),
        ({"folder_id": "0", "file_name": "x"}, "missing_file_size"),
        ({"folder_id": "0", "file_size": "big", "file_name": "x"}, "invalid_file_size"),
        ({"folder_id": "0", "file_size": 19_999_999, "file_name": "x"}, "file_size_too_small"),
        ({"folder_id": "0", "file_size": 20_000_000}, "missing_file_name"),
        ({"folder_id": "0", "file_size": 20_000_000, "file_name": "a/b"}, "item_name_invalid"),
    ]
    for body, code in cases:
        r = await box.call("POST", "/api/2.0/files/upload_sessions", json_body=body)
        assert (r.status, error_code(r)) == (400, code), body
    r = await box.call(
        "POST",
        "/api/2.0/files/upload_sessions",
        json_body={"folder_id": "555", "file_size": 20_000_000, "file_name": "x"},
    )
    assert (r.status, error_code(r)) == (404, "invalid_parameter")
    assert box.state.account.sessions == {}


async def test_session_endpoints_are_absolute_and_point_at_the_emulator(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    assert s["part_size"] == PART and s["total_parts"] == 5 and s["num_parts_processed"] == 0
    for url in s["session_endpoints"].values():
        assert url.startswith(box.base + "/api/2.0/files/upload_sessions/" + s["id"])


async def test_parts_must_fit_the_grid_and_carry_a_matching_digest(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    part = BIG[:PART]
    r = await box.put_part(s, BIG[1 : PART + 1], 1, len(BIG))  # not on a part boundary
    assert r.status == 416
    r = await box.put_part(s, part[:-1], 0, len(BIG))  # short of the part size
    assert r.status == 416
    r = await box.put_part(s, part, 0, len(BIG) + 1)  # wrong total
    assert r.status == 416
    r = await box.put_part(s, part, 0, len(BIG), digest=f"sha={b64sha1(b'other')}")
    assert (r.status, error_code(r)) == (412, "precondition_failed")
    r = await box.put_part(s, part, 0, len(BIG), digest="md5=abc")
    assert (r.status, error_code(r)) == (400, "bad_request")
    ok = await box.put_part(s, part, 0, len(BIG), digest=f"SHA={b64sha1(part)}")  # algorithm case-insensitive
    assert ok.status == 200 and ok.body["part"]["sha1"] == hashlib.sha1(part).hexdigest()
    last = BIG[4 * PART :]
    assert (await box.put_part(s, last, 4 * PART, len(BIG))).status == 200


async def test_parts_are_immutable_and_an_overlap_names_the_stored_part(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    first = (await box.put_part(s, BIG[:PART], 0, len(BIG))).body["part"]
    r = await box.put_part(s, BIG[:PART], 0, len(BIG))
    assert (r.status, error_code(r)) == (416, "range_overlaps_existing_part")
    assert r.body["context_info"]["conflicting_part"] == first
    listed = await box.call("GET", s["session_endpoints"]["list_parts"].removeprefix(box.base))
    assert listed.body["total_count"] == 1 and listed.body["entries"] == [first]
    status = await box.call("GET", s["session_endpoints"]["status"].removeprefix(box.base))
    assert status.body["num_parts_processed"] == 1


async def test_commit_checks_parts_and_the_whole_file_digest(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    parts = [(await box.put_part(s, BIG[o : o + PART], o, len(BIG))).body["part"] for o in range(0, len(BIG), PART)]
    r = await box.commit(s, parts[:-1], BIG)
    assert (r.status, error_code(r)) == (400, "parts_mismatch")
    r = await box.commit(s, [*parts[:-1], {**parts[-1], "part_id": "DEADBEEF"}], BIG)
    assert (r.status, error_code(r)) == (400, "parts_mismatch")
    assert "DEADBEEF" in r.body["message"]
    r = await box.commit(s, parts, b"not the file")
    assert (r.status, error_code(r)) == (400, "digest_mismatch")
    assert box.state.account.files == {}
    # The session survives a refused commit; the right one succeeds (sha1 of parts is optional).
    r = await box.commit(s, [{k: v for k, v in p.items() if k != "sha1"} for p in parts], BIG)
    assert r.status == 201


async def test_commit_answers_202_with_retry_after_as_configured(box: Box) -> None:
    await box.call("POST", "/_sim/faults", json_body={"commit_202": 2}, auth=False)
    s = await box.session("a.bin", len(BIG))
    parts = [(await box.put_part(s, BIG[o : o + PART], o, len(BIG))).body["part"] for o in range(0, len(BIG), PART)]
    for _ in range(2):
        r = await box.commit(s, parts, BIG)
        assert r.status == 202 and r.headers["Retry-After"] == "1"
    assert (await box.commit(s, parts, BIG)).status == 201


async def test_an_aborted_session_is_gone(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    await box.put_part(s, BIG[:PART], 0, len(BIG))
    url = s["session_endpoints"]["abort"].removeprefix(box.base)
    assert (await box.call("DELETE", url)).status == 204
    assert (await box.call("GET", url)).status == 404
    assert not (box.state.data_dir / "sessions" / s["id"]).exists()


async def test_a_session_expires_after_seven_days(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    box.clock.advance(7 * 24 * 3600 + 1)
    box.token = box.state.authority.issue(box.state.user.id, with_refresh=False)["access_token"]
    r = await box.put_part(s, BIG[:PART], 0, len(BIG))
    assert (r.status, error_code(r)) == (410, "session_expired")
    state = (await box.call("GET", "/_sim/state", auth=False)).body
    assert state["sessions"][0]["state"] == "expired"


async def test_another_users_session_is_forbidden(box: Box) -> None:
    s = await box.session("a.bin", len(BIG))
    r = await box.call(
        "GET", s["session_endpoints"]["status"].removeprefix(box.base), headers={"As-User": box.state.member.id}
    )
    assert (r.status, error_code(r)) == (403, "forbidden")


async def test_a_version_session_replaces_the_file_content(box: Box) -> None:
    fid = (await box.upload("a.bin", b"small")).body["entries"][0]["id"]
    r = await box.call("POST", f"/api/2.0/files/{fid}/upload_sessions", json_body={"file_size": len(BIG)})
    assert r.status == 201
    s = r.body
    parts = [(await box.put_part(s, BIG[o : o + PART], o, len(BIG))).body["part"] for o in range(0, len(BIG), PART)]
    done = await box.commit(s, parts, BIG)
    assert done.status == 201 and done.body["entries"][0]["id"] == fid
    assert len(box.state.account.files[fid].versions) == 2


# -- limits, faults, unknown routes --------------------------------------------------------


async def test_rate_limits_answer_429_with_retry_after_per_user(box: Box) -> None:
    await box.call("POST", "/_sim/faults", json_body={"api_calls_per_minute": 60}, auth=False)
    assert (await box.call("GET", "/2.0/users/me")).status == 200
    r = await box.call("GET", "/2.0/users/me")
    assert (r.status, error_code(r)) == (429, "rate_limit_exceeded")
    assert r.headers["Retry-After"] == "1"
    # Another user has a bucket of their own.
    assert (await box.call("GET", "/2.0/users/me", headers={"As-User": box.state.member.id})).status == 200
    box.clock.advance(1.0)
    assert (await box.call("GET", "/2.0/users/me")).status == 200
    assert box.state.stats.rate_limited == 1


async def test_uploads_have_their_own_smaller_budget(box: Box) -> None:
    await box.call("POST", "/_sim/faults", json_body={"uploads_per_minute": 2, "rate_burst": 2}, auth=False)
    assert (await box.upload("1", b"1")).status == 201
    assert (await box.upload("2", b"2")).status == 201
    r = await box.upload("3", b"3")
    assert r.status == 429 and r.headers["Retry-After"] == "30"
    assert (await box.call("GET", "/2.0/folders/0/items")).status == 200  # API calls still flow


async def test_injected_429_and_5xx_faults_and_their_reset(box: Box) -> None:
    await box.call("POST", "/_sim/faults", json_body={"rate_429": 1.0, "retry_after": 7}, auth=False)
    r = await box.call("GET", "/2.0/users/me")
    assert r.status == 429 and r.headers["Retry-After"] == "7"
    await box.call("POST", "/_sim/faults", json_body={"rate_429": 0, "rate_5xx": 1.0}, auth=False)
    r = await box.call("GET", "/2.0/users/me")
    assert r.status in (500, 502, 503) and r.body["type"] == "error"
    await box.call("DELETE", "/_sim/faults", auth=False)
    assert (await box.call("GET", "/2.0/users/me")).status == 200


async def test_bad_fault_settings_are_refused_by_name(box: Box) -> None:
    for body, word in [
        ({"rate_429": 2}, "rate_429"),
        ({"nope": 1}, "nope"),
        ({"latency_ms": "x"}, "latency_ms"),
        ({"commit_202": 1.5}, "commit_202"),
    ]:
        r = await box.call("POST", "/_sim/faults", json_body=body, auth=False)
        assert r.status == 400 and word in r.body["error"]["message"]
    assert box.state.knobs == box.state.startup


async def test_a_dropped_part_closes_the_connection_and_stores_nothing(box: Box) -> None:
    import aiohttp

    await box.call("POST", "/_sim/faults", json_body={"drop_mid_part": 1.0}, auth=False)
    s = await box.session("a.bin", len(BIG))
    with pytest.raises(aiohttp.ClientError):
        await box.put_part(s, BIG[:PART], 0, len(BIG))
    await box.call("DELETE", "/_sim/faults", auth=False)
    assert box.state.account.sessions[s["id"]].parts == {}
    assert (await box.put_part(s, BIG[:PART], 0, len(BIG))).status == 200


async def test_unknown_routes_and_methods_answer_in_box_shape(box: Box) -> None:
    r = await box.call("GET", "/2.0/nothing-here")
    assert (r.status, error_code(r)) == (404, "not_found")
    r = await box.call("PATCH", "/2.0/users/me")
    assert (r.status, error_code(r)) == (405, "method_not_allowed")
    stats = (await box.call("GET", "/_sim/stats", auth=False)).body
    assert stats["requests"]["GET <unmatched>"] == {"404": 1}


async def test_a_jwt_assertion_from_box_config_gets_a_service_account_token(box: Box) -> None:
    import time
    import uuid

    import jwt as pyjwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    settings = box.state.box_config["boxAppSettings"]
    auth = settings["appAuth"]
    key = load_pem_private_key(auth["privateKey"].encode(), auth["passphrase"].encode())
    claims = {
        "iss": settings["clientID"],
        "sub": box.state.account.enterprise_id,
        "box_sub_type": "enterprise",
        "aud": "https://api.box.com/oauth2/token",
        "jti": str(uuid.uuid4()),
        "exp": int(time.time()) + 30,
    }
    box.state.jwt._clock = time.time  # the verifier checks exp against real time here
    assertion = pyjwt.encode(claims, key, algorithm="RS512", headers={"kid": auth["publicKeyID"]})  # type: ignore[arg-type]
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": assertion,
        "client_id": settings["clientID"],
        "client_secret": settings["clientSecret"],
    }
    r = await box.call("POST", "/oauth2/token", data=form, auth=False)
    assert r.status == 200 and "refresh_token" not in r.body
    box.token = r.body["access_token"]
    assert (await box.call("GET", "/2.0/users/me")).body["id"] == box.state.service_account.id
    replay = await box.call("POST", "/oauth2/token", data=form, auth=False)
    assert replay.body == {"error": "invalid_grant", "error_description": "Please check the 'jti' claim."}
    wrong_sub = {**claims, "sub": "999", "jti": str(uuid.uuid4())}
    form["assertion"] = pyjwt.encode(wrong_sub, key, algorithm="RS256", headers={"kid": auth["publicKeyID"]})  # type: ignore[arg-type]
    r = await box.call("POST", "/oauth2/token", data=form, auth=False)
    assert r.body["error_description"].startswith("Please check the 'sub' claim")
    assert box.state.stats.token_grants["jwt"] == 1


async def test_admin_tokens_are_fresh_rclone_blobs(box: Box) -> None:
    blob = (await box.call("POST", "/_sim/tokens", auth=False)).body
    assert set(blob) >= {"access_token", "token_type", "refresh_token", "expiry"}
    from datetime import datetime

    assert datetime.fromisoformat(blob["expiry"]).tzinfo is not None
    box.token = blob["access_token"]
    assert (await box.call("GET", "/2.0/users/me")).status == 200


async def test_the_latency_knob_delays_every_request(box: Box) -> None:
    import time

    await box.call("POST", "/_sim/faults", json_body={"latency_ms": 200}, auth=False)
    start = time.monotonic()
    assert (await box.call("GET", "/2.0/users/me")).status == 200
    assert time.monotonic() - start >= 0.2  # a lower bound only: the knob cannot make a call faster


async def test_the_bandwidth_knob_paces_uploads_and_downloads(box: Box) -> None:
    import time

    content = os.urandom(1024 * 1024)
    fid = (await box.upload("slow.bin", content)).body["entries"][0]["id"]
    await box.call("POST", "/_sim/faults", json_body={"bandwidth": 4 * 1024 * 1024}, auth=False)
    start = time.monotonic()
    assert (await box.call("GET", f"/2.0/files/{fid}/content")).raw == content
    assert time.monotonic() - start >= 0.24  # 1 MiB at 4 MiB/s: lower bound only
    start = time.monotonic()
    assert (await box.upload("slow2.bin", content)).status == 201
    assert time.monotonic() - start >= 0.24


async def test_the_file_part_may_have_any_name_after_the_attributes(box: Box) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("attributes", '{"name": "r.bin", "parent": {"id": "0"}}')
    form.add_field("contents", b"from rclone", filename="r.bin")  # rclone's part name
    r = await box.call("POST", "/api/2.0/files/content", data=form)
    assert r.status == 201 and r.body["entries"][0]["size"] == len(b"from rclone")
    form = aiohttp.FormData()
    form.add_field("attributes", '{"name": "only-attrs", "parent": {"id": "0"}}')
    r = await box.call("POST", "/api/2.0/files/content", data=form)
    assert (r.status, error_code(r)) == (400, "bad_request")


async def test_commit_mismatch_answers_parts_mismatch_first_as_configured(box: Box) -> None:
    await box.call("POST", "/_sim/faults", json_body={"commit_mismatch": 1}, auth=False)
    s = await box.session("a.bin", len(BIG))
    parts = [(await box.put_part(s, BIG[o : o + PART], o, len(BIG))).body["part"] for o in range(0, len(BIG), PART)]
    r = await box.commit(s, parts, BIG)
    assert (r.status, error_code(r)) == (400, "parts_mismatch")
    assert (await box.commit(s, parts, BIG)).status == 201


async def test_the_request_log_records_box_calls_in_order(box: Box) -> None:
    await box.call("GET", "/2.0/users/me")
    await box.call("GET", "/2.0/folders/0/items", auth=False)
    log = (await box.call("GET", "/_sim/log", auth=False)).body["requests"]
    assert [(e["route"], e["status"]) for e in log] == [
        ("GET /2.0/users/me", 200),
        ("GET /2.0/folders/{folder_id}/items", 401),
    ]
    assert log[0]["user"] == box.state.user.id and log[1]["user"] is None
    assert log[0]["t"] <= log[1]["t"]
