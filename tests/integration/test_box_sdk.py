"""Box's official Python SDK (``box_sdk_gen``), unchanged, against the emulator.

The SDK is an independent client: it was written by Box against the real service, so
whatever it needs from the emulator (URLs, headers, body shapes, status codes, 202 +
``Retry-After``, 401 → refresh) is what real Box does. Every test drives the emulator
through the SDK only and then checks the outcome through the emulator's admin API
(``/_sim/state``, ``/_sim/stats``), never through the SDK's own answers alone.

Pointing the SDK at the emulator needs only its public knobs (contract §8): ``BaseUrls``
for the API (``base_url + /2.0``), uploads (``upload_url + /2.0``) and token
(``base_url + /oauth2/token``) hosts, carried by the ``NetworkSession`` that every request,
including token requests made while retrying a 401, uses.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from box_sdk_gen import (
    AccessToken,
    BaseUrls,
    BoxAPIError,
    BoxCCGAuth,
    BoxClient,
    BoxJWTAuth,
    BoxOAuth,
    CCGConfig,
    InMemoryTokenStorage,
    JWTConfig,
    NetworkSession,
    OAuthConfig,
)
from box_sdk_gen.managers.folders import CreateFolderParent
from box_sdk_gen.managers.uploads import (
    PreflightFileUploadCheckParent,
    UploadFileVersionAttributes,
    UploadWithPreflightCheckAttributes,
    UploadWithPreflightCheckAttributesParentField,
)
from box_sdk_gen.networking.box_network_client import BoxNetworkClient

from tests.simproc import Sim, running_sim

MIB = 1024 * 1024
#: A "~25 MB" file: above the 20,000,000-byte session minimum, three 8 MiB parts (the last short).
BIG_FILE_SIZE = 25 * 1_000_000 + 4321
#: Access-token lifetime for the refresh test (see there why not shorter).
TOKEN_TTL_S = 5


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """One ``requests`` session for every SDK client of a test, closed afterwards.

    The SDK would otherwise open its own and leave pooled sockets for the garbage collector
    (a ``ResourceWarning``, which this suite turns into an error).
    """
    with requests.Session() as session:
        yield session


def base_urls(sim: Sim) -> Any:
    """The SDK's three hosts, all on the emulator (contract §8)."""
    return BaseUrls(base_url=sim.base, upload_url=sim.base + "/api", oauth_2_url=sim.base + "/api/oauth2")


def network_session(sim: Sim, http: requests.Session) -> Any:
    return NetworkSession(network_client=BoxNetworkClient(requests_session=http), base_urls=base_urls(sim))


def token_blob(sim: Sim) -> dict[str, Any]:
    """``credentials.json``'s rclone-style token (an object; tolerate rclone.conf's string form)."""
    token = sim.credentials["token"]
    return dict(json.loads(token) if isinstance(token, str) else token)


def oauth_client(sim: Sim, http: requests.Session) -> tuple[Any, Any]:
    """An OAuth client preloaded with the access/refresh token the emulator wrote, and its storage.

    Built as the contract documents: ``BoxClient(auth).with_custom_base_urls(...)``; that
    client's session is the one a 401-triggered refresh goes through.
    """
    blob = token_blob(sim)
    storage = InMemoryTokenStorage(
        token=AccessToken(access_token=blob["access_token"], refresh_token=blob["refresh_token"])
    )
    config = OAuthConfig(
        client_id=sim.credentials["client_id"],
        client_secret=sim.credentials["client_secret"],
        token_storage=storage,
    )
    client = BoxClient(
        BoxOAuth(config), network_session=NetworkSession(network_client=BoxNetworkClient(requests_session=http))
    ).with_custom_base_urls(base_urls(sim))
    return client, storage


def box_config(sim: Sim) -> dict[str, Any]:
    return dict(json.loads((sim.data_dir / "box_config.json").read_text()))


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    """Deterministic, incompressible test bytes."""
    return random.Random(seed).randbytes(size)


def download(client: Any, file_id: str) -> bytes:
    stream = client.downloads.download_file(file_id)
    assert stream is not None, "download_file returned None (the emulator answered 202)"
    data = stream.read()
    assert isinstance(data, bytes)
    return data


def state_file(sim: Sim, file_id: str) -> dict[str, Any]:
    files = [f for f in sim.state()["files"] if f["id"] == file_id]
    assert len(files) == 1, f"file {file_id} not in /_sim/state: {sim.state()['files']}"
    return dict(files[0])


def state_folder(sim: Sim, folder_id: str) -> dict[str, Any]:
    folders = [f for f in sim.state()["folders"] if f["id"] == folder_id]
    assert len(folders) == 1, f"folder {folder_id} not in /_sim/state: {sim.state()['folders']}"
    return dict(folders[0])


def grants(sim: Sim, kind: str) -> int:
    return int(sim.stats()["token_grants"].get(kind, 0))


def requests_with_status(sim: Sim, status: int, route_contains: str = "") -> int:
    """How many requests the emulator answered with ``status`` (on routes containing the text)."""
    counts = sim.stats()["requests"]
    return sum(int(by_status.get(str(status), 0)) for route, by_status in counts.items() if route_contains in route)


def wait_until(deadline_s: float, condition: Any, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail after ``deadline_s`` seconds."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval)


def create_folder(client: Any, name: str, parent_id: str = "0") -> Any:
    return client.folders.create_folder(name, CreateFolderParent(id=parent_id))


# --------------------------------------------------------------------------- folders


def test_folders_are_created_and_listed_and_a_name_differing_only_in_case_is_refused_with_409(
    sim: Sim, http: requests.Session
) -> None:
    client, _ = oauth_client(sim, http)

    backups = create_folder(client, "Backups")
    host = create_folder(client, "host1", backups.id)
    assert backups.name == "Backups"
    assert host.name == "host1"
    assert host.parent.id == backups.id

    root_names = {(e.type, e.id, e.name) for e in client.folders.get_folder_items("0").entries}
    assert ("folder", backups.id, "Backups") in root_names
    items = client.folders.get_folder_items(backups.id)
    assert items.total_count == 1
    assert [(e.type, e.id, e.name) for e in items.entries] == [("folder", host.id, "host1")]

    with pytest.raises(BoxAPIError) as caught:
        create_folder(client, "BACKUPS")
    info = caught.value.response_info
    assert info.status_code == 409
    assert info.code == "item_name_in_use"
    # Folder conflicts are an array of the existing item(s) (contract §6.2).
    conflicts = info.context_info["conflicts"]
    assert isinstance(conflicts, list), conflicts
    assert [c["id"] for c in conflicts] == [backups.id]

    state = sim.state()
    by_id = {f["id"]: f for f in state["folders"]}
    assert by_id[backups.id]["path"] == "Backups"
    assert by_id[backups.id]["parent_id"] == "0"
    assert by_id[host.id]["path"] == "Backups/host1"
    assert by_id[host.id]["parent_id"] == backups.id
    assert not [f for f in state["folders"] if f["name"] == "BACKUPS"]


# --------------------------------------------------------------------------- simple uploads


def test_a_small_file_uploaded_after_a_preflight_check_downloads_byte_for_byte_and_takes_a_new_version(
    sim: Sim, http: requests.Session
) -> None:
    client, _ = oauth_client(sim, http)
    folder = create_folder(client, "small")
    first = payload(300_000, seed=1)

    uploaded = client.uploads.upload_with_preflight_check(
        UploadWithPreflightCheckAttributes(
            name="notes.bin", parent=UploadWithPreflightCheckAttributesParentField(id=folder.id), size=len(first)
        ),
        io.BytesIO(first),
        file_file_name="notes.bin",
        content_md_5=sha1_hex(first),
    )
    assert uploaded.total_count == 1
    entry = uploaded.entries[0]
    assert entry.name == "notes.bin"
    assert entry.size == len(first)
    assert entry.sha_1 == sha1_hex(first)
    assert entry.parent.id == folder.id

    stored = state_file(sim, entry.id)
    assert stored["path"] == "small/notes.bin"
    assert stored["sha1"] == sha1_hex(first)
    assert stored["size"] == len(first)
    assert stored["versions"] == 1
    assert download(client, entry.id) == first

    second = payload(123_457, seed=2)
    versioned = client.uploads.upload_file_version(
        entry.id,
        UploadFileVersionAttributes(name="notes.bin"),
        io.BytesIO(second),
        file_file_name="notes.bin",
        content_md_5=sha1_hex(second),
    )
    new = versioned.entries[0]
    assert new.id == entry.id
    assert new.sha_1 == sha1_hex(second)
    assert new.size == len(second)
    assert new.file_version.id != entry.file_version.id

    stored = state_file(sim, entry.id)
    assert stored["sha1"] == sha1_hex(second)
    assert stored["size"] == len(second)
    assert stored["versions"] == 2
    assert download(client, entry.id) == second
    # The SDK sent the preflight to the API host and the multipart to the URL it returned.
    assert requests_with_status(sim, 200, "OPTIONS") == 1


def test_a_preflight_check_for_a_name_already_in_the_folder_is_refused_with_409(
    sim: Sim, http: requests.Session
) -> None:
    client, _ = oauth_client(sim, http)
    folder = create_folder(client, "pre")
    data = b"already here\n"
    existing = client.uploads.upload_with_preflight_check(
        UploadWithPreflightCheckAttributes(
            name="Report.txt", parent=UploadWithPreflightCheckAttributesParentField(id=folder.id), size=len(data)
        ),
        io.BytesIO(data),
    ).entries[0]

    with pytest.raises(BoxAPIError) as caught:
        client.uploads.preflight_file_upload_check(
            name="report.TXT", size=10, parent=PreflightFileUploadCheckParent(id=folder.id)
        )
    info = caught.value.response_info
    assert info.status_code == 409
    assert info.code == "item_name_in_use"
    # File conflicts are a single object (contract §4.1).
    assert info.context_info["conflicts"]["id"] == existing.id
    assert [f["name"] for f in sim.state()["files"]] == ["Report.txt"]


# --------------------------------------------------------------------------- chunked uploads


def _upload_big_file_and_verify(sim: Sim, http: requests.Session) -> None:
    client, _ = oauth_client(sim, http)
    folder = create_folder(client, "big")
    data = payload(BIG_FILE_SIZE, seed=25)

    entry = client.chunked_uploads.upload_big_file(io.BytesIO(data), "pack.bin", len(data), folder.id)

    assert entry.name == "pack.bin"
    assert entry.size == len(data)
    assert entry.sha_1 == sha1_hex(data)
    stored = state_file(sim, entry.id)
    assert stored["path"] == "big/pack.bin"
    assert stored["size"] == len(data)
    assert stored["sha1"] == sha1_hex(data)
    assert stored["versions"] == 1
    sessions = sim.state()["sessions"]
    assert len(sessions) == 1, sessions
    session = sessions[0]
    assert session["state"] == "committed"
    assert session["part_size"] == 8 * MIB
    assert session["total_parts"] == 3
    assert session["parts_uploaded"] == 3
    assert session["file_size"] == len(data)
    assert download(client, entry.id) == data


def test_upload_big_file_sends_a_25_mb_file_in_8_mib_parts_that_downloads_intact(
    sim: Sim, http: requests.Session
) -> None:
    _upload_big_file_and_verify(sim, http)
    assert requests_with_status(sim, 201, "commit") == 1
    assert requests_with_status(sim, 202, "commit") == 0


def test_upload_big_file_waits_out_two_commit_202_answers_and_the_file_downloads_intact(
    tmp_path: Path, http: requests.Session
) -> None:
    with running_sim(tmp_path / "sim", "--commit-202", "2") as sim:
        _upload_big_file_and_verify(sim, http)
        # The SDK retried the same commit after each 202 + Retry-After (networking/retries.py).
        assert requests_with_status(sim, 202, "commit") == 2
        assert requests_with_status(sim, 201, "commit") == 1


# --------------------------------------------------------------------------- OAuth refresh


def test_an_expired_access_token_gets_a_401_and_the_sdk_refreshes_it_through_the_emulator(
    tmp_path: Path, http: requests.Session
) -> None:
    # The SDK refreshes inside its retry strategy and then sleeps its default backoff before
    # retrying (``2**1 * 1 s * U(0.5, 1.5)`` = 1-3 s, networking/retries.py ``retry_after``)
    # with the new token; a TTL of 2 s lets that fresh token expire during the sleep about half
    # the time (then every later attempt backs off longer still, and the call fails after five
    # 401s). 5 s outlives the longest first backoff.
    with running_sim(tmp_path / "sim", "--token-ttl", str(TOKEN_TTL_S)) as sim:
        blob = token_blob(sim)
        client, storage = oauth_client(sim, http)

        me = client.users.get_user_me()
        assert me.id
        assert grants(sim, "refresh_token") == 0
        unauthorized_before = requests_with_status(sim, 401)

        expiry = datetime.fromisoformat(blob["expiry"])
        wait_until(10, lambda: datetime.now(UTC) > expiry, f"the access token to expire at {blob['expiry']}")

        again = client.users.get_user_me()
        assert again.id == me.id
        # The SDK saw a 401, refreshed once through the emulator's token endpoint, and retried.
        assert requests_with_status(sim, 401) == unauthorized_before + 1
        assert grants(sim, "refresh_token") == 1
        rotated = storage.get()
        assert rotated.access_token != blob["access_token"]
        assert rotated.refresh_token
        assert rotated.refresh_token != blob["refresh_token"]

        # Refresh tokens are single-use: the one the SDK just spent is now refused.
        reused = http.post(
            sim.credentials["token_url"],
            data={
                "grant_type": "refresh_token",
                "client_id": sim.credentials["client_id"],
                "client_secret": sim.credentials["client_secret"],
                "refresh_token": blob["refresh_token"],
            },
            timeout=30,
        )
        assert reused.status_code == 400, reused.text
        assert reused.json()["error"] == "invalid_grant"
        assert grants(sim, "refresh_token") == 1


# --------------------------------------------------------------------------- JWT, CCG, As-User


def test_jwt_auth_from_the_emulators_box_config_json_gets_a_token_and_reads_users_me(
    sim: Sim, http: requests.Session
) -> None:
    config = JWTConfig.from_config_file(str(sim.data_dir / "box_config.json"))
    assert config.enterprise_id == box_config(sim)["enterpriseID"]
    client = BoxClient(BoxJWTAuth(config), network_session=network_session(sim, http))

    me = client.users.get_user_me()

    assert me.id
    assert me.type == "user"
    assert isinstance(me.space_amount, int)
    assert isinstance(me.max_upload_size, int)
    assert grants(sim, "jwt") == 1
    # The service account is not the OAuth user of credentials.json.
    oauth, _ = oauth_client(sim, http)
    assert oauth.users.get_user_me().id != me.id


def test_client_credentials_for_the_enterprise_and_for_the_oauth_user_both_read_users_me(
    sim: Sim, http: requests.Session
) -> None:
    cfg = box_config(sim)
    oauth, _ = oauth_client(sim, http)
    user_id = oauth.users.get_user_me().id

    enterprise = BoxClient(
        BoxCCGAuth(
            CCGConfig(
                client_id=cfg["boxAppSettings"]["clientID"],
                client_secret=cfg["boxAppSettings"]["clientSecret"],
                enterprise_id=cfg["enterpriseID"],
            )
        ),
        network_session=network_session(sim, http),
    )
    service_account = enterprise.users.get_user_me()
    assert service_account.id
    assert service_account.id != user_id
    assert grants(sim, "client_credentials") == 1

    as_user = BoxClient(
        BoxCCGAuth(
            CCGConfig(
                client_id=sim.credentials["client_id"],
                client_secret=sim.credentials["client_secret"],
                user_id=user_id,
            )
        ),
        network_session=network_session(sim, http),
    )
    assert as_user.users.get_user_me().id == user_id
    assert grants(sim, "client_credentials") == 2


def test_the_jwt_service_account_acts_as_the_oauth_user_with_the_as_user_header(
    sim: Sim, http: requests.Session
) -> None:
    oauth, _ = oauth_client(sim, http)
    user_id = oauth.users.get_user_me().id
    service = BoxClient(
        BoxJWTAuth(JWTConfig.from_config_json_string((sim.data_dir / "box_config.json").read_text())),
        network_session=network_session(sim, http),
    )
    service_id = service.users.get_user_me().id
    assert service_id != user_id

    impersonated = service.with_as_user_header(user_id)
    assert impersonated.users.get_user_me().id == user_id

    # Content created As-User belongs to that user: the OAuth user sees it in its own root.
    folder = create_folder(impersonated, "made-as-user")
    assert folder.owned_by.id == user_id
    assert folder.id in {e.id for e in oauth.folders.get_folder_items("0").entries}
    assert state_folder(sim, folder.id)["path"] == "made-as-user"


#: The emulator's second managed user (besides the OAuth admin and the service account). No
#: Box endpoint (``GET /users`` is not served) or admin endpoint lists users, and neither
#: credentials.json nor box_config.json names it, so its id is taken from the emulator's
#: source (boxd/sim/state.py, ``SimState.create``).
MEMBER_USER_ID = "20000002"


def test_the_oauth_admin_acts_as_another_managed_user_whose_content_stays_separate(
    sim: Sim, http: requests.Session
) -> None:
    oauth, _ = oauth_client(sim, http)
    admin_id = oauth.users.get_user_me().id
    member = oauth.with_as_user_header(MEMBER_USER_ID)

    assert member.users.get_user_me().id == MEMBER_USER_ID
    folder = create_folder(member, "member-only")
    data = b"member data\n"
    uploaded = member.uploads.upload_with_preflight_check(
        UploadWithPreflightCheckAttributes(
            name="m.txt", parent=UploadWithPreflightCheckAttributesParentField(id=folder.id), size=len(data)
        ),
        io.BytesIO(data),
    ).entries[0]
    assert download(member, uploaded.id) == data

    # The admin's own tree does not hold it; the member's does.
    assert folder.id not in {e.id for e in oauth.folders.get_folder_items("0").entries}
    assert not [f for f in sim.state()["folders"] if f["id"] == folder.id]
    member_state = sim.admin("GET", f"/_sim/state?user_id={MEMBER_USER_ID}")
    assert [f["path"] for f in member_state["folders"]] == ["member-only"]
    assert [(f["path"], f["sha1"]) for f in member_state["files"]] == [("member-only/m.txt", sha1_hex(data))]
    # The header applies only to the client made with it.
    assert oauth.users.get_user_me().id == admin_id


def test_as_user_naming_the_service_account_is_refused_with_403(sim: Sim, http: requests.Session) -> None:
    service = BoxClient(
        BoxJWTAuth(JWTConfig.from_config_file(str(sim.data_dir / "box_config.json"))),
        network_session=network_session(sim, http),
    )
    service_id = service.users.get_user_me().id
    oauth, _ = oauth_client(sim, http)

    with pytest.raises(BoxAPIError) as caught:
        oauth.with_as_user_header(service_id).users.get_user_me()
    assert caught.value.response_info.status_code == 403
