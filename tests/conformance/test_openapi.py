"""The emulator's answers conform to Box's OpenAPI spec and to ``box-api-contract.md``.

One emulator (``boxd sim``) serves the whole module. Every endpoint boxd uses is driven with
plain ``requests``, and every answer -- success and error -- is checked against the response
schema the spec documents for that method, path and status (see :mod:`tests.conformance.openapi`
for the conversion and the documented relaxations). Assertions beyond the schema come from the
contract (section numbers in the comments).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.conformance.openapi import media_type, spec, validate_component, validate_response
from tests.simproc import Sim, running_sim

SESSION_MIN = 20_000_000  # contract §5.1: chunked sessions only for files >= 20,000,000 bytes
BIG_SIZE = SESSION_MIN + 1_048_576 + 12_345  # a short last part whatever the part size
TIMEOUT = 30
NO_AUTH: dict[str, str | None] = {"Authorization": None}  # drops the session's bearer token


# ------------------------------------------------------------------ fixtures and helpers


@dataclass
class Box:
    """A plain-HTTP client for one emulator: URLs from credentials.json and a bearer token."""

    sim: Sim
    http: requests.Session
    api: str  # http://HOST:PORT/2.0
    upload: str  # http://HOST:PORT/api/2.0
    token_url: str

    def call(
        self,
        method: str,
        url: str,
        template: str,
        expect: int,
        *,
        token: str | None = None,
        **kwargs: Any,
    ) -> tuple[requests.Response, Any]:
        """Send a request, assert its status, validate its body against the spec; return both."""
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        resp = self.http.request(method, url, headers=headers, timeout=TIMEOUT, allow_redirects=False, **kwargs)
        assert resp.status_code == expect, (
            f"{method} {url}: expected {expect}, got {resp.status_code}: {resp.text[:500]}"
        )
        return resp, conforms(resp, method, template)


def conforms(resp: requests.Response, method: str, template: str) -> Any:
    """Validate one answer against the spec; returns the decoded JSON body (None if not JSON)."""
    ctype = resp.headers.get("Content-Type")
    body: Any = None
    if resp.content and media_type(ctype) == "application/json":
        body = resp.json()
    elif resp.content and media_type(ctype) == "" and resp.content.lstrip()[:1] in (b"{", b"["):
        pytest.fail(f"{method} {template} -> {resp.status_code}: JSON body without a JSON Content-Type ({ctype!r})")
    validate_response(method, template, resp.status_code, ctype, body)
    if isinstance(body, dict) and body.get("type") == "error":
        # contract §2.1: the body's `status` is the HTTP status.
        assert body["status"] == resp.status_code, body
    return body


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def assert_retry_after(resp: requests.Response) -> int:
    """contract §8: the header is spelled exactly `Retry-After` (the SDK looks it up case-sensitively)."""
    assert "Retry-After" in dict(resp.headers), f"no exact 'Retry-After' header in {list(resp.headers)}"
    value = resp.headers["Retry-After"]
    assert value.strip().isdigit(), f"Retry-After must be whole seconds, got {value!r}"
    return int(value)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    spec()  # skip (or fail under CI=true) before starting anything when the spec is missing
    with running_sim(tmp_path_factory.mktemp("conformance-sim")) as sim, requests.Session() as http:
        creds = sim.credentials
        http.headers["Authorization"] = f"Bearer {creds['token']['access_token']}"
        yield Box(sim=sim, http=http, api=creds["api_url"], upload=creds["upload_url"], token_url=creds["token_url"])


@pytest.fixture(scope="module")
def big_data() -> bytes:
    return os.urandom(BIG_SIZE)


@pytest.fixture
def folder(box: Box) -> str:
    """A fresh folder under the root for one test."""
    return new_folder(box, unique("conf"))


@pytest.fixture
def no_faults(box: Box) -> Iterator[None]:
    """Restore the emulator's start-up settings after a test that injects faults."""
    try:
        yield
    finally:
        box.sim.reset_faults()


def new_folder(box: Box, name: str, parent: str = "0") -> str:
    _, body = box.call("POST", f"{box.api}/folders", "/folders", 201, json={"name": name, "parent": {"id": parent}})
    return str(body["id"])


def upload_small(
    box: Box,
    parent: str,
    name: str,
    data: bytes,
    expect: int = 201,
    *,
    digest: str | None = None,
    file_first: bool = False,
) -> tuple[requests.Response, Any]:
    """POST /api/2.0/files/content: multipart, `attributes` part first (contract §4.1)."""
    parts: list[tuple[str, tuple[str | None, bytes | str, str]]] = [
        ("attributes", (None, json.dumps({"name": name, "parent": {"id": parent}}), "application/json")),
        ("file", (name, data, "application/octet-stream")),
    ]
    if file_first:
        parts.reverse()
    headers = {"content-md5": digest if digest is not None else sha1_hex(data)}
    return box.call("POST", f"{box.upload}/files/content", "/files/content", expect, files=parts, headers=headers)


def create_session(box: Box, folder_id: str, name: str, size: int, expect: int = 201) -> Any:
    _, body = box.call(
        "POST",
        f"{box.upload}/files/upload_sessions",
        "/files/upload_sessions",
        expect,
        json={"folder_id": folder_id, "file_size": size, "file_name": name},
    )
    return body


def put_part(box: Box, session: Any, data: bytes, offset: int, length: int, expect: int = 200) -> Any:
    chunk = data[offset : offset + length]
    headers = {
        "Digest": f"sha={sha1_b64(chunk)}",
        "Content-Range": f"bytes {offset}-{offset + len(chunk) - 1}/{len(data)}",
        "Content-Type": "application/octet-stream",
    }
    url = session["session_endpoints"]["upload_part"]
    _, body = box.call("PUT", url, "/files/upload_sessions/{upload_session_id}", expect, data=chunk, headers=headers)
    return body


def upload_all_parts(box: Box, session: Any, data: bytes) -> list[dict[str, Any]]:
    size = session["part_size"]
    parts = []
    for offset in range(0, len(data), size):
        body = put_part(box, session, data, offset, size)
        part = body["part"]
        chunk = data[offset : offset + size]
        # contract §5.4 / §8: sha1 is hex; offset and size echo the request (the SDK asserts them).
        assert (part["offset"], part["size"], part["sha1"]) == (offset, len(chunk), sha1_hex(chunk)), part
        parts.append(part)
    return parts


def commit(
    box: Box, session: Any, parts: list[dict[str, Any]], data: bytes, expect: int
) -> tuple[requests.Response, Any]:
    return box.call(
        "POST",
        session["session_endpoints"]["commit"],
        "/files/upload_sessions/{upload_session_id}/commit",
        expect,
        json={"parts": parts},
        headers={"Digest": f"sha={sha1_b64(data)}"},
    )


def items(box: Box, folder_id: str, **params: Any) -> Any:
    _, body = box.call("GET", f"{box.api}/folders/{folder_id}/items", "/folders/{folder_id}/items", 200, params=params)
    return body


# ------------------------------------------------------------------ users


def test_users_me_answers_a_user_with_quota_fields(box: Box) -> None:
    _, me = box.call("GET", f"{box.api}/users/me", "/users/me", 200)
    assert me["type"] == "user"
    # contract §7: quotas as int64 bytes.
    for key in ("space_amount", "space_used", "max_upload_size"):
        assert isinstance(me[key], int | float), (key, me)


# ------------------------------------------------------------------ folders


def test_creating_a_folder_answers_201_with_a_full_folder(box: Box) -> None:
    name = unique("create")
    _, body = box.call("POST", f"{box.api}/folders", "/folders", 201, json={"name": name, "parent": {"id": "0"}})
    assert (body["type"], body["name"], body["parent"]["id"]) == ("folder", name, "0")


def test_creating_a_folder_whose_name_is_taken_in_any_case_answers_409_with_an_array_of_conflicts(box: Box) -> None:
    name = unique("Taken")
    first = new_folder(box, name)
    _, body = box.call(
        "POST", f"{box.api}/folders", "/folders", 409, json={"name": name.upper(), "parent": {"id": "0"}}
    )
    assert body["code"] == "item_name_in_use"
    conflicts = body["context_info"]["conflicts"]
    # contract §6.2: folder conflicts are an array of folder minis.
    assert isinstance(conflicts, list) and conflicts, body
    for entry in conflicts:
        validate_component("Folder--Mini", entry)
    assert conflicts[0]["id"] == first


@pytest.mark.parametrize("name", ["with/slash", "back\\slash", ".", "..", "trailing ", "x" * 256, ""])
def test_creating_a_folder_with_an_invalid_name_answers_400(box: Box, name: str) -> None:
    _, body = box.call("POST", f"{box.api}/folders", "/folders", 400, json={"name": name, "parent": {"id": "0"}})
    assert body["code"] in {"bad_request", "item_name_invalid", "item_name_too_long"}, body


def test_creating_a_folder_in_a_missing_parent_answers_404(box: Box) -> None:
    _, body = box.call(
        "POST", f"{box.api}/folders", "/folders", 404, json={"name": unique("orphan"), "parent": {"id": "987654321"}}
    )
    assert body["code"] == "not_found"


def test_getting_a_folder_answers_200_with_its_item_collection(box: Box, folder: str) -> None:
    new_folder(box, "child", parent=folder)
    _, body = box.call("GET", f"{box.api}/folders/{folder}", "/folders/{folder_id}", 200)
    assert body["id"] == folder
    # contract §6.3: item_collection is a standard field, in the Items shape.
    assert [e["name"] for e in body["item_collection"]["entries"]] == ["child"]
    assert body["path_collection"]["entries"][0]["id"] == "0"


def test_getting_the_root_folder_answers_200_with_no_parent(box: Box) -> None:
    _, body = box.call("GET", f"{box.api}/folders/0", "/folders/{folder_id}", 200)
    assert body["id"] == "0"
    assert body.get("parent") is None
    assert body["path_collection"]["total_count"] == 0


def test_getting_a_missing_folder_answers_404(box: Box) -> None:
    _, body = box.call("GET", f"{box.api}/folders/987654321", "/folders/{folder_id}", 404)
    assert body["code"] == "not_found"


@pytest.mark.parametrize(
    ("suffix", "template"), [("", "/folders/{folder_id}"), ("/items", "/folders/{folder_id}/items")]
)
def test_a_malformed_folder_id_answers_405(box: Box, suffix: str, template: str) -> None:
    box.call("GET", f"{box.api}/folders/abc{suffix}", template, 405)


# ------------------------------------------------------------------ folder listings


@pytest.fixture
def populated(box: Box, folder: str) -> tuple[str, set[str]]:
    """A folder holding three sub-folders and two files."""
    names = set()
    for i in range(3):
        new_folder(box, f"sub-{i}", parent=folder)
        names.add(f"sub-{i}")
    for i in range(2):
        upload_small(box, folder, f"file-{i}.bin", f"content {i}".encode())
        names.add(f"file-{i}.bin")
    return folder, names


def test_listing_items_in_offset_mode_pages_by_limit_up_to_total_count(
    box: Box, populated: tuple[str, set[str]]
) -> None:
    folder, names = populated
    seen: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = items(box, folder, limit=2, offset=offset, fields="name,size,sha1,modified_at")
        assert page["total_count"] == len(names)
        assert (page["offset"], page["limit"]) == (offset, 2)
        seen.extend(page["entries"])
        offset += page["limit"]  # contract §6.1: by limit, not by len(entries)
        if offset >= page["total_count"]:
            break
    assert {e["name"] for e in seen} == names
    # contract §6.1: folders before files.
    assert [e["type"] for e in seen] == ["folder"] * 3 + ["file"] * 2
    for entry in seen:
        # contract §1: with `fields`, the base set (id, type, etag) comes along.
        assert {"id", "type", "etag", "name"} <= entry.keys(), entry
        if entry["type"] == "file":
            assert {"size", "sha1", "modified_at"} <= entry.keys(), entry


def test_listing_items_in_marker_mode_follows_next_marker_to_the_end(box: Box, populated: tuple[str, set[str]]) -> None:
    folder, names = populated
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"usemarker": "true", "limit": 2, "fields": "name,size,sha1"}
    for _ in range(10):
        page = items(box, folder, **params)
        assert page["limit"] == 2
        seen.extend(page["entries"])
        if not page.get("next_marker"):
            break
        params["marker"] = page["next_marker"]
    else:
        pytest.fail("marker pagination did not end")
    assert sorted(e["name"] for e in seen) == sorted(names)
    assert all("size" in e and "sha1" in e for e in seen if e["type"] == "file"), seen


def test_listing_a_missing_folder_answers_404(box: Box) -> None:
    box.call("GET", f"{box.api}/folders/987654321/items", "/folders/{folder_id}/items", 404)


# ------------------------------------------------------------------ simple uploads


def test_uploading_a_small_file_answers_201_with_the_file(box: Box, folder: str) -> None:
    data = b"hello box\n" * 100
    _, body = upload_small(box, folder, "hello.txt", data)
    assert body["total_count"] == 1
    entry = body["entries"][0]
    assert (entry["name"], entry["size"], entry["sha1"]) == ("hello.txt", len(data), sha1_hex(data))
    assert entry["parent"]["id"] == folder
    assert entry["file_version"]["sha1"] == sha1_hex(data)


def test_uploading_a_taken_name_in_any_case_answers_409_with_a_conflict_object(box: Box, folder: str) -> None:
    _, first = upload_small(box, folder, "Report.TXT", b"one")
    _, body = upload_small(box, folder, "report.txt", b"two", expect=409)
    assert body["code"] == "item_name_in_use"
    conflict = body["context_info"]["conflicts"]
    # contract §4.1: a file conflict is a single FileConflict object.
    assert isinstance(conflict, dict), body
    validate_component("FileConflict", conflict)
    assert (conflict["id"], conflict["sha1"]) == (first["entries"][0]["id"], sha1_hex(b"one"))


def test_uploading_with_a_wrong_content_md5_answers_400_bad_digest(box: Box, folder: str) -> None:
    _, body = upload_small(box, folder, "bad.bin", b"payload", expect=400, digest=sha1_hex(b"other"))
    assert body["code"] == "bad_digest"


def test_uploading_the_file_part_before_the_attributes_answers_400_metadata_after_file_contents(
    box: Box, folder: str
) -> None:
    _, body = upload_small(box, folder, "late.bin", b"payload", expect=400, file_first=True)
    assert body["code"] == "metadata_after_file_contents"


def test_uploading_into_a_missing_folder_answers_404(box: Box) -> None:
    upload_small(box, "987654321", "lost.bin", b"payload", expect=404)


def test_uploading_a_new_version_answers_200_with_the_new_content(box: Box, folder: str) -> None:
    _, first = upload_small(box, folder, "versioned.bin", b"v1")
    file_id = first["entries"][0]["id"]
    parts = [
        ("attributes", (None, json.dumps({"name": "versioned.bin"}), "application/json")),
        ("file", ("versioned.bin", b"version two", "application/octet-stream")),
    ]
    _, body = box.call(
        "POST",
        f"{box.upload}/files/{file_id}/content",
        "/files/{file_id}/content",
        200,  # contract §4.2: the spec answers a new version with 200 Files
        files=parts,
        headers={"content-md5": sha1_hex(b"version two")},
    )
    entry = body["entries"][0]
    assert (entry["id"], entry["sha1"], entry["size"]) == (file_id, sha1_hex(b"version two"), 11)
    assert entry["file_version"]["id"] != first["entries"][0]["file_version"]["id"]
    state = box.sim.state()
    assert [f["versions"] for f in state["files"] if f["id"] == file_id] == [2]


def test_uploading_a_new_version_with_a_stale_if_match_answers_412(box: Box, folder: str) -> None:
    _, first = upload_small(box, folder, "guarded.bin", b"v1")
    file_id = first["entries"][0]["id"]
    parts = [
        ("attributes", (None, json.dumps({"name": "guarded.bin"}), "application/json")),
        ("file", ("guarded.bin", b"v2", "application/octet-stream")),
    ]
    box.call(
        "POST",
        f"{box.upload}/files/{file_id}/content",
        "/files/{file_id}/content",
        412,
        files=parts,
        headers={"if-match": "not-the-etag"},
    )


# ------------------------------------------------------------------ preflight


def test_preflight_for_a_free_name_answers_200_with_an_upload_url_on_the_emulator(box: Box, folder: str) -> None:
    _, body = box.call(
        "OPTIONS",
        f"{box.api}/files/content",
        "/files/content",
        200,
        json={"name": "fresh.bin", "size": 5, "parent": {"id": folder}},
    )
    # contract §4.3: the SDK POSTs the multipart to upload_url verbatim.
    url = body["upload_url"]
    assert url.startswith(box.sim.base + "/"), body
    data = b"fresh"
    parts = [
        ("attributes", (None, json.dumps({"name": "fresh.bin", "parent": {"id": folder}}), "application/json")),
        ("file", ("fresh.bin", data, "application/octet-stream")),
    ]
    _, files = box.call("POST", url, "/files/content", 201, files=parts)
    assert files["entries"][0]["sha1"] == sha1_hex(data)


def test_preflight_for_a_taken_name_answers_409_with_a_conflict_error(box: Box, folder: str) -> None:
    _, first = upload_small(box, folder, "exists.bin", b"here")
    _, body = box.call(
        "OPTIONS",
        f"{box.api}/files/content",
        "/files/content",
        409,
        json={"name": "EXISTS.bin", "size": 4, "parent": {"id": folder}},
    )
    assert body["code"] == "item_name_in_use"
    assert body["context_info"]["conflicts"]["id"] == first["entries"][0]["id"]  # contract §4.3: object form


# ------------------------------------------------------------------ files and downloads


def test_getting_a_file_answers_200_with_a_full_file(box: Box, folder: str) -> None:
    data = b"abc" * 1000
    _, up = upload_small(box, folder, "info.bin", data)
    file_id = up["entries"][0]["id"]
    _, body = box.call("GET", f"{box.api}/files/{file_id}", "/files/{file_id}", 200)
    assert (body["id"], body["size"], body["sha1"], body["name"]) == (file_id, len(data), sha1_hex(data), "info.bin")


def test_getting_a_missing_file_answers_404(box: Box) -> None:
    _, body = box.call("GET", f"{box.api}/files/987654321", "/files/{file_id}", 404)
    assert body["code"] == "not_found"


def test_downloading_a_file_returns_its_bytes(box: Box, folder: str) -> None:
    data = os.urandom(70_000)
    _, up = upload_small(box, folder, "download.bin", data)
    file_id = up["entries"][0]["id"]
    resp = box.http.get(f"{box.api}/files/{file_id}/content", timeout=TIMEOUT, allow_redirects=False)
    conforms(resp, "GET", "/files/{file_id}/content")
    if resp.status_code == 302:  # DESIGN §3.5: a redirect is optional
        resp = box.http.get(resp.headers["Location"], timeout=TIMEOUT)
    assert resp.status_code == 200
    assert resp.content == data


def test_downloading_a_missing_file_answers_404(box: Box) -> None:
    box.call("GET", f"{box.api}/files/987654321/content", "/files/{file_id}/content", 404)


# ------------------------------------------------------------------ chunked upload sessions


def test_creating_an_upload_session_answers_201_with_absolute_session_endpoints(box: Box, folder: str) -> None:
    session = create_session(box, folder, "big.bin", BIG_SIZE)
    assert session["type"] == "upload_session"
    assert session["num_parts_processed"] == 0  # contract §5.2 (the SDK asserts it)
    assert session["total_parts"] == math.ceil(BIG_SIZE / session["part_size"])
    # DESIGN §3.5 / contract §1: absolute URLs pointing at the emulator itself.
    for name in ("upload_part", "commit", "abort", "list_parts", "status"):
        assert session["session_endpoints"][name].startswith(box.sim.base + "/"), session["session_endpoints"]


def test_creating_an_upload_session_below_20000000_bytes_answers_400_file_size_too_small(box: Box, folder: str) -> None:
    body = create_session(box, folder, "small.bin", SESSION_MIN - 1, expect=400)
    assert body["code"] == "file_size_too_small"


def test_creating_an_upload_session_for_a_taken_name_answers_409_with_a_conflict_object(box: Box, folder: str) -> None:
    upload_small(box, folder, "occupied.bin", b"x")
    body = create_session(box, folder, "occupied.bin", BIG_SIZE, expect=409)
    assert isinstance(body["context_info"]["conflicts"], dict), body  # contract §5.2
    validate_component("FileConflict", body["context_info"]["conflicts"])


def test_creating_an_upload_session_in_a_missing_folder_answers_404(box: Box) -> None:
    create_session(box, "987654321", "nowhere.bin", BIG_SIZE, expect=404)


def test_uploaded_parts_answer_200_and_show_up_in_the_parts_list_and_status(
    box: Box, folder: str, big_data: bytes
) -> None:
    session = create_session(box, folder, "parts.bin", BIG_SIZE)
    parts = upload_all_parts(box, session, big_data)
    assert len(parts) == session["total_parts"]

    _, listing = box.call(
        "GET", session["session_endpoints"]["list_parts"], "/files/upload_sessions/{upload_session_id}/parts", 200
    )
    assert listing["total_count"] == session["total_parts"]  # contract §5.6 (the SDK asserts it)
    assert sorted(listing["entries"], key=lambda p: p["offset"]) == parts

    _, status = box.call(
        "GET", session["session_endpoints"]["status"], "/files/upload_sessions/{upload_session_id}", 200
    )
    assert status["id"] == session["id"]
    assert status["num_parts_processed"] == session["total_parts"]


def test_uploading_over_an_existing_part_answers_416(box: Box, folder: str, big_data: bytes) -> None:
    session = create_session(box, folder, "overlap.bin", BIG_SIZE)
    size = session["part_size"]
    put_part(box, session, big_data, 0, size)
    other = bytes(reversed(big_data[:size])) + big_data[size:]
    body = put_part(box, session, other, 0, size, expect=416)
    # contract §5.4: the stored part comes back in context_info.conflicting_part.
    assert body["code"] == "range_overlaps_existing_part", body
    assert body["context_info"]["conflicting_part"]["offset"] == 0, body


def test_uploading_a_part_off_the_part_grid_answers_416(box: Box, folder: str, big_data: bytes) -> None:
    session = create_session(box, folder, "offgrid.bin", BIG_SIZE)
    put_part(box, session, big_data, 1, session["part_size"], expect=416)


def test_uploading_a_part_whose_digest_does_not_match_answers_412(box: Box, folder: str, big_data: bytes) -> None:
    session = create_session(box, folder, "baddigest.bin", BIG_SIZE)
    size = session["part_size"]
    headers = {
        "Digest": f"sha={sha1_b64(b'something else')}",  # well-formed, but not this part's SHA-1
        "Content-Range": f"bytes 0-{size - 1}/{BIG_SIZE}",
        "Content-Type": "application/octet-stream",
    }
    url = session["session_endpoints"]["upload_part"]
    # contract §5.4: 412 for a Digest that does not match the body.
    box.call("PUT", url, "/files/upload_sessions/{upload_session_id}", 412, data=big_data[:size], headers=headers)


def test_the_status_of_an_unknown_session_answers_404(box: Box) -> None:
    url = f"{box.upload}/files/upload_sessions/00000000000000000000000000000000"
    box.call("GET", url, "/files/upload_sessions/{upload_session_id}", 404)


def test_committing_all_parts_answers_201_with_the_file(box: Box, folder: str, big_data: bytes) -> None:
    session = create_session(box, folder, "committed.bin", BIG_SIZE)
    parts = upload_all_parts(box, session, big_data)
    _, body = commit(box, session, parts, big_data, 201)
    entry = body["entries"][0]
    assert (entry["name"], entry["size"], entry["sha1"]) == ("committed.bin", BIG_SIZE, sha1_hex(big_data))
    assert entry["parent"]["id"] == folder


def test_committing_while_parts_are_processing_answers_202_with_retry_after_then_201(
    box: Box, folder: str, big_data: bytes, no_faults: None
) -> None:
    box.sim.set_faults(commit_202=1)
    session = create_session(box, folder, "slow.bin", BIG_SIZE)
    parts = upload_all_parts(box, session, big_data)
    resp, body = commit(box, session, parts, big_data, 202)
    assert body is None
    assert assert_retry_after(resp) >= 0
    _, files = commit(box, session, parts, big_data, 201)
    assert files["entries"][0]["sha1"] == sha1_hex(big_data)


def test_a_new_version_session_answers_201_and_commits_onto_the_same_file(
    box: Box, folder: str, big_data: bytes
) -> None:
    _, first = upload_small(box, folder, "grows.bin", b"small first version")
    file_id = first["entries"][0]["id"]
    _, session = box.call(
        "POST",
        f"{box.upload}/files/{file_id}/upload_sessions",
        "/files/{file_id}/upload_sessions",
        201,
        json={"file_size": BIG_SIZE},  # contract §5.3: only file_size is required
    )
    parts = upload_all_parts(box, session, big_data)
    _, body = commit(box, session, parts, big_data, 201)
    entry = body["entries"][0]
    assert (entry["id"], entry["size"], entry["sha1"]) == (file_id, BIG_SIZE, sha1_hex(big_data))


def test_committing_with_a_wrong_file_digest_answers_400_digest_mismatch(
    box: Box, folder: str, big_data: bytes
) -> None:
    session = create_session(box, folder, "mismatch.bin", BIG_SIZE)
    parts = upload_all_parts(box, session, big_data)
    _, body = box.call(
        "POST",
        session["session_endpoints"]["commit"],
        "/files/upload_sessions/{upload_session_id}/commit",
        400,
        json={"parts": parts},
        headers={"Digest": f"sha={sha1_b64(b'not the file')}"},
    )
    assert body["code"] == "digest_mismatch"


def test_committing_a_part_the_server_does_not_have_answers_400_parts_mismatch(
    box: Box, folder: str, big_data: bytes
) -> None:
    session = create_session(box, folder, "partsmismatch.bin", BIG_SIZE)
    parts = upload_all_parts(box, session, big_data)
    parts[0] = {**parts[0], "part_id": "DEADBEEF" if parts[0]["part_id"] != "DEADBEEF" else "FEEDFACE"}
    _, body = commit(box, session, parts, big_data, 400)
    assert body["code"] == "parts_mismatch"  # contract §5.7


def test_aborting_an_upload_session_answers_204_and_the_session_is_gone(box: Box, folder: str) -> None:
    session = create_session(box, folder, "aborted.bin", BIG_SIZE)
    resp, _ = box.call(
        "DELETE", session["session_endpoints"]["abort"], "/files/upload_sessions/{upload_session_id}", 204
    )
    assert resp.content == b""
    resp = box.http.get(session["session_endpoints"]["status"], timeout=TIMEOUT)
    conforms(resp, "GET", "/files/upload_sessions/{upload_session_id}")
    assert resp.status_code in {404, 410}, resp.text


# ------------------------------------------------------------------ tokens and auth


@pytest.mark.parametrize("path", ["/oauth2/token", "/api/oauth2/token"])
def test_refreshing_a_token_answers_200_with_a_rotated_refresh_token(box: Box, path: str) -> None:
    creds = box.sim.credentials
    old = box.sim.new_token()
    form = {
        "grant_type": "refresh_token",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "refresh_token": old["refresh_token"],
    }
    _, token = box.call("POST", box.sim.base + path, path, 200, data=form, headers=NO_AUTH)
    assert token["token_type"] == "bearer"
    assert isinstance(token["expires_in"], int) and token["expires_in"] > 0
    assert token["refresh_token"] != old["refresh_token"]  # contract §3.1: single use, rotated
    box.call("GET", f"{box.api}/users/me", "/users/me", 200, token=token["access_token"])

    # contract §3.2: the used refresh token is now invalid_grant.
    _, error = box.call("POST", box.sim.base + path, path, 400, data=form, headers=NO_AUTH)
    assert error["error"] == "invalid_grant"


def test_a_token_request_with_a_wrong_client_secret_answers_invalid_client(box: Box) -> None:
    creds = box.sim.credentials
    form = {
        "grant_type": "refresh_token",
        "client_id": creds["client_id"],
        "client_secret": "wrong",
        "refresh_token": box.sim.new_token()["refresh_token"],
    }
    resp = box.http.post(box.token_url, data=form, headers=NO_AUTH, timeout=TIMEOUT)
    body = conforms(resp, "POST", "/oauth2/token")
    assert resp.status_code in {400, 401}, resp.text
    assert body["error"] == "invalid_client", body


@pytest.mark.parametrize("authorization", ["Bearer not-a-real-token", None])
def test_a_bad_or_missing_bearer_token_answers_401_with_www_authenticate(box: Box, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else NO_AUTH
    resp, _ = box.call("GET", f"{box.api}/users/me", "/users/me", 401, headers=headers)
    # contract §2.2: `WWW-Authenticate: Bearer realm="Service", error="invalid_token", ...`
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(resp.headers)


def test_an_expired_access_token_answers_401_with_www_authenticate(box: Box, no_faults: None) -> None:
    box.sim.set_faults(token_ttl=1)
    token = box.sim.new_token()["access_token"]
    box.sim.reset_faults()
    time.sleep(1.5)
    resp, _ = box.call("GET", f"{box.api}/users/me", "/users/me", 401, token=token)
    assert "invalid_token" in resp.headers.get("WWW-Authenticate", ""), dict(resp.headers)


# ------------------------------------------------------------------ rate limits


def test_an_injected_rate_limit_answers_429_with_retry_after_and_an_error_body(box: Box, no_faults: None) -> None:
    box.sim.set_faults(rate_429=1.0, retry_after=7)
    resp, body = box.call("GET", f"{box.api}/users/me", "/users/me", 429)
    assert body["code"] == "rate_limit_exceeded"
    assert assert_retry_after(resp) == 7
    box.sim.reset_faults()
    box.call("GET", f"{box.api}/users/me", "/users/me", 200)
