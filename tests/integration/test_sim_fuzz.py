"""Bad input never gets a 500 or a traceback from the emulator, only Box-shaped 4xx answers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simproc import Sim, running_sim

ROUTES = [
    ("GET", "/2.0/users/me"),
    ("POST", "/2.0/folders"),
    ("GET", "/2.0/folders/{id}"),
    ("GET", "/2.0/folders/{id}/items"),
    ("GET", "/2.0/files/{id}"),
    ("DELETE", "/2.0/files/{id}"),
    ("GET", "/2.0/files/{id}/content"),
    ("OPTIONS", "/2.0/files/content"),
    ("POST", "/api/2.0/files/content"),
    ("POST", "/api/2.0/files/{id}/content"),
    ("POST", "/api/2.0/files/upload_sessions"),
    ("POST", "/api/2.0/files/{id}/upload_sessions"),
    ("PUT", "/api/2.0/files/upload_sessions/{id}"),
    ("GET", "/api/2.0/files/upload_sessions/{id}/parts"),
    ("POST", "/api/2.0/files/upload_sessions/{id}/commit"),
    ("DELETE", "/api/2.0/files/upload_sessions/{id}"),
    ("POST", "/oauth2/token"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "name": json_values,
            "parent": json_values,
            "folder_id": json_values,
            "file_size": json_values,
            "file_name": json_values,
            "parts": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
)
ids = st.sampled_from(["0", "1", "abc", "99999999999999999999", "-1", "%20", "ZZ"])
headers = st.fixed_dictionaries(
    {},
    optional={
        "Digest": st.sampled_from(["sha=", "sha=AAAA", "md5=x", "sha=2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "garbage"]),
        "Content-Range": st.sampled_from(["bytes 0-0/1", "bytes 5-1/3", "bytes x", "bytes 0-99/20000000"]),
        "Content-Type": st.sampled_from(["application/json", "multipart/form-data; boundary=xx", "text/plain"]),
        "Content-MD5": st.sampled_from(["", "zz", "0" * 40]),
        "As-User": st.sampled_from(["", "1", "20000002", "x"]),
        "If-Match": st.sampled_from(["0", "*", "999"]),
    },
)
queries = st.sampled_from(
    [
        "",
        "?limit=-5",
        "?limit=abc",
        "?offset=99999",
        "?usemarker=true&marker=!!",
        "?fields=",
        "?sort=bogus",
        "?direction=sideways",
        "?version=1",
    ]
)


@pytest.fixture(scope="module")
def fuzz_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(Path(tmp_path_factory.mktemp("fuzz"))) as sim:
        yield sim


@settings(
    max_examples=int(os.environ.get("BOXD_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(route=st.sampled_from(ROUTES), ident=ids, body=bodies, extra=headers, query=queries)
def test_garbage_requests_get_box_shaped_client_errors(
    fuzz_sim: Sim, route: tuple[str, str], ident: str, body: bytes, extra: dict[str, str], query: str
) -> None:
    method, template = route
    url = fuzz_sim.base + template.replace("{id}", ident) + query
    token = fuzz_sim.credentials["token"]["access_token"]
    h: dict[str, Any] = {"Authorization": f"Bearer {token}", **extra}
    resp = requests.request(method, url, data=body, headers=h, timeout=30)
    assert resp.status_code < 500, (method, url, resp.status_code, resp.text)
    if resp.status_code >= 400:
        payload = resp.json()
        if template == "/oauth2/token":
            assert set(payload) == {"error", "error_description"}
        else:
            assert payload["type"] == "error" and payload["status"] == resp.status_code, payload
            assert payload["code"] and payload["message"] and payload["request_id"]
    # The emulator is still healthy after every request.
    assert fuzz_sim.process.poll() is None
