"""Tokens without a network: the rclone blob, the file store, token answers, JWT assertions, provider policy."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import jwt
import pytest
import structlog.testing
from blockbuster import blockbuster_ctx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from boxd.accounting import Stats
from boxd.box.auth import (
    JWT_GRANT,
    TOKEN_AUDIENCE,
    ClientCredentialsProvider,
    JwtProvider,
    OAuthProvider,
    StaticTokenProvider,
    TokenProvider,
    auth_headers,
    jwt_assertion,
    load_jwt_config,
    provider_from_settings,
    send_authorized,
)
from boxd.box.tokens import (
    GO_ZERO_TIME,
    FileTokenStore,
    GrantRejectedError,
    TokenBlob,
    TokenBlobError,
    TokenResponse,
    TokenStoreWriteError,
    format_go_time,
    parse_go_time,
    parse_token_response,
    read_token_file,
    write_token_file,
)
from boxd.errors import AuthNeedsHumanError, ConfigError, ProtocolError, RateLimitedError, TransientError
from boxd.settings import BoxSettings

ACCESS, REFRESH, SECRET = "acc-SECRET-0123456789", "ref-SECRET-abcdefghij", "client-SECRET-zyxw"
GO_BLOB = (
    f'{{"access_token":"{ACCESS}","token_type":"bearer","refresh_token":"{REFRESH}",'
    '"expiry":"2017-07-23T12:22:29.259137901+01:00"}'
)
Z_BLOB = (
    f'{{"access_token":"{ACCESS}","token_type":"bearer","refresh_token":"{REFRESH}",'
    '"expiry":"2026-01-02T03:04:05Z","expires_in":3599}'
)


def blob_text(**fields: object) -> str:
    return json.dumps(fields)


def assert_no_secrets(*texts: object, secrets: tuple[str, ...] = (ACCESS, REFRESH, SECRET)) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in str(text), f"secret leaked into {text!r}"
            assert secret not in repr(text), f"secret leaked into {text!r}"


# -- the rclone token blob -------------------------------------------------------------------


def test_a_go_blob_with_nanoseconds_and_an_offset_round_trips_exactly() -> None:
    blob = TokenBlob.from_json(GO_BLOB)
    assert (blob.access_token, blob.refresh_token, blob.token_type) == (ACCESS, REFRESH, "bearer")
    expected = datetime.fromisoformat("2017-07-23T12:22:29.259137+01:00").timestamp() + 0.000000901
    assert blob.expires_at == pytest.approx(expected, abs=1e-6)
    assert blob.expiry_ns is not None and blob.expiry_ns % 1000 == 901  # nanoseconds kept
    assert blob.expires_in is None
    assert blob.to_json() == GO_BLOB


def test_a_utc_blob_with_expires_in_round_trips_exactly() -> None:
    blob = TokenBlob.from_json(Z_BLOB)
    assert blob.expires_at == datetime.fromisoformat("2026-01-02T03:04:05+00:00").timestamp()
    assert blob.expires_in == 3599
    assert blob.to_json() == Z_BLOB


def test_pythons_isoformat_with_plus_zero_offset_is_read_and_its_offset_kept() -> None:
    # What the emulator's credentials.json holds: six fraction digits and "+00:00".
    blob = TokenBlob.from_mapping({"access_token": ACCESS, "expiry": "2026-11-29T01:45:00.123000+00:00"})
    assert blob.expiry_text == "2026-11-29T01:45:00.123+00:00"


def test_gos_zero_time_means_no_expiry_and_is_written_back() -> None:
    blob = TokenBlob.from_mapping({"access_token": ACCESS, "refresh_token": "", "expiry": GO_ZERO_TIME})
    assert blob.expires_at is None
    assert blob.to_dict()["expiry"] == GO_ZERO_TIME


def test_the_whole_output_of_rclone_authorize_is_accepted() -> None:
    output = f"Paste the following into your remote machine --->\n{GO_BLOB}\n<---End paste\n"
    assert TokenBlob.from_json(output).refresh_token == REFRESH


def test_unknown_keys_are_kept_when_written_back() -> None:
    blob = TokenBlob.from_mapping({"access_token": ACCESS, "refresh_token": REFRESH, "id_token": "x"})
    assert blob.to_dict()["id_token"] == "x"


def test_a_rotated_blob_keeps_the_written_form() -> None:
    blob = TokenBlob.from_json(GO_BLOB).rotated("new-access", "new-refresh", 3600, now=1_800_000_000.5)
    assert blob.expiry_text == "2027-01-15T10:00:00.5+01:00"  # the +01:00 offset of the original
    assert (blob.access_token, blob.refresh_token, blob.expires_in) == ("new-access", "new-refresh", None)
    z = TokenBlob.from_json(Z_BLOB).rotated("a", None, 60, now=1_800_000_000)
    assert z.expiry_text.endswith("Z") and z.expires_in == 60 and z.refresh_token == REFRESH


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        (blob_text(access_token=ACCESS)[:-1] + ", ", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (blob_text(access_token=5, refresh_token=REFRESH), "'access_token' must be a string"),
        ('{"token_type": "bearer"}', "neither 'access_token' nor 'refresh_token'"),
        (blob_text(access_token=ACCESS, refresh_token=REFRESH, expiry=ACCESS), "'expiry'"),
        (blob_text(access_token=ACCESS, expiry="2017-13-45T00:00:00Z"), "'expiry'"),
        (blob_text(access_token=ACCESS, token_type="mac"), "'token_type' must be 'bearer'"),
        (blob_text(access_token=ACCESS, expires_in="3599"), "'expires_in'"),
        (blob_text(access_token=ACCESS, expires_in=True), "'expires_in'"),
    ],
)
def test_invalid_blobs_name_the_problem_without_echoing_tokens(text: str, problem: str) -> None:
    with pytest.raises(TokenBlobError) as info:
        TokenBlob.from_json(text, source="stdin")
    message = str(info.value)
    assert message.startswith("stdin: ") and problem in message
    assert isinstance(info.value, ConfigError)
    # No chained decoder error that holds the text:
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    assert_no_secrets(message)


def test_token_import_requires_a_refresh_token() -> None:
    with pytest.raises(TokenBlobError, match="'refresh_token' is missing"):
        TokenBlob.from_json(blob_text(access_token=ACCESS), require_refresh=True)


def test_a_blob_shows_no_token_in_its_repr_or_str() -> None:
    blob = TokenBlob.from_json(GO_BLOB)
    assert "has_refresh_token=True" in repr(blob)
    assert_no_secrets(blob, [blob])


@given(
    st.integers(min_value=-62_000_000_000 * 10**9, max_value=253_000_000_000 * 10**9),  # years 5..9986
    st.one_of(st.none(), st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: m * 60)),
)
def test_go_timestamps_round_trip(unix_ns: int, offset: int | None) -> None:
    text = format_go_time(unix_ns, offset)
    assert parse_go_time(text) == (unix_ns, offset)
    assert format_go_time(*parse_go_time(text)) == text


# -- the store -------------------------------------------------------------------------------


def test_the_store_file_is_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_token_file(tmp_path / "token.json", TokenBlob.from_json(GO_BLOB))
    finally:
        os.umask(old)
    st_ = os.stat(tmp_path / "token.json")
    assert stat.S_IMODE(st_.st_mode) == 0o600
    assert os.listdir(tmp_path) == ["token.json"]  # no temp file left behind
    found = read_token_file(tmp_path / "token.json")
    assert found is not None and found[0].to_json() == GO_BLOB


def test_the_store_is_replaced_by_rename_never_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    write_token_file(path, TokenBlob.from_json(GO_BLOB))
    before = os.stat(path).st_ino
    write_token_file(path, TokenBlob.from_json(Z_BLOB))
    assert os.stat(path).st_ino != before


def test_a_failed_write_leaves_the_old_token_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "token.json"
    write_token_file(path, TokenBlob.from_json(GO_BLOB))

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_token_file(path, TokenBlob.from_json(Z_BLOB))
    assert path.read_text().strip() == GO_BLOB
    assert os.listdir(tmp_path) == ["token.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the file to another owner")
def test_written_as_root_the_store_belongs_to_the_owner_of_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4343)
    write_token_file(state / "token.json", TokenBlob.from_json(GO_BLOB))
    st_ = os.stat(state / "token.json")
    assert (st_.st_uid, st_.st_gid) == (4242, 4343)


def test_a_corrupt_store_names_the_file_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    path.write_text(GO_BLOB[:40])
    with pytest.raises(TokenBlobError, match=f"token store {path}: not valid JSON") as info:
        read_token_file(path)
    assert_no_secrets(info.value)


@pytest.mark.anyio
async def test_the_store_notices_a_replacement_but_not_its_own_writes(tmp_path: Path) -> None:
    store = FileTokenStore.in_state_dir(tmp_path)
    assert await store.load() is None
    with blockbuster_ctx("boxd"):  # file I/O must stay off the event loop
        await store.save(TokenBlob.from_json(GO_BLOB))
        assert await store.reload_if_changed() is None
        # `boxd token import` in another process:
        await anyio.to_thread.run_sync(write_token_file, store.path, TokenBlob.from_json(Z_BLOB))
        replaced = await store.reload_if_changed()
        assert replaced is not None and replaced.expires_in == 3599
        assert await store.reload_if_changed() is None
        loaded = await store.load()
        assert loaded is not None and loaded.to_json() == Z_BLOB


@pytest.mark.anyio
async def test_a_half_written_store_is_skipped_with_one_warning_until_it_changes(tmp_path: Path) -> None:
    store = FileTokenStore.in_state_dir(tmp_path)
    await store.save(TokenBlob.from_json(GO_BLOB))
    with structlog.testing.capture_logs() as logs:
        store.path.write_text(GO_BLOB[:30])  # a non-atomic writer, caught mid-way
        assert await store.reload_if_changed() is None
        assert await store.reload_if_changed() is None
        store.path.write_text(Z_BLOB)
        replaced = await store.reload_if_changed()
    assert replaced is not None and replaced.to_json() == Z_BLOB
    assert [e["event"] for e in logs] == ["token_store_invalid", "token_store_reloaded"]
    assert_no_secrets(logs)


@pytest.mark.anyio
async def test_an_unwritable_store_is_a_transient_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "token.json").mkdir()  # rename onto a directory fails whoever we are
    store = FileTokenStore.in_state_dir(tmp_path)
    with pytest.raises(TokenStoreWriteError, match="cannot write token store") as info:
        await store.save(TokenBlob.from_json(GO_BLOB))
    assert isinstance(info.value, TransientError)
    assert os.listdir(tmp_path) == ["token.json"]


# -- token-endpoint answers ------------------------------------------------------------------


def answer(status: int, body: object, headers: Mapping[str, str] | None = None) -> TokenResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, headers or {}, raw, redact=(REFRESH, SECRET))


def test_a_refresh_answer_is_read() -> None:
    r = answer(200, {"access_token": "a", "expires_in": 4123, "token_type": "bearer", "refresh_token": "r"})
    assert (r.access_token, r.expires_in, r.refresh_token) == ("a", 4123.0, "r")
    assert "4123" in repr(r) and "'a'" not in repr(r)
    assert answer(200, {"access_token": "a"}).expires_in == 3600.0  # expires_in is only RECOMMENDED


@pytest.mark.parametrize("body", [b"<html>", {"expires_in": 5}, {"access_token": "a", "expires_in": -1}])
def test_a_malformed_success_is_a_protocol_error(body: object) -> None:
    with pytest.raises(ProtocolError):
        answer(200, body)


def test_429_is_rate_limited_with_retry_after() -> None:
    body = {"error": "temporarily_unavailable", "error_description": "overloaded"}
    with pytest.raises(RateLimitedError) as info:
        answer(429, body, {"Retry-After": "7"})
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_failures_are_transient(status: int) -> None:
    with pytest.raises(TransientError) as info:
        answer(status, b"", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert info.value.retry_after == 0.0  # a date in the past: go again at once


def test_invalid_grant_is_a_rejected_grant_and_echoed_secrets_are_redacted() -> None:
    with pytest.raises(GrantRejectedError) as info:
        answer(400, {"error": "invalid_grant", "error_description": f"Refresh token {REFRESH} has expired"})
    assert info.value.error == "invalid_grant" and "<redacted>" in info.value.description
    assert isinstance(info.value, AuthNeedsHumanError)
    assert_no_secrets(info.value)


def test_a_4xx_without_an_oauth_error_points_at_the_token_url() -> None:
    with pytest.raises(ProtocolError, match=r"box\.token_url"):
        answer(404, b"<html>not here</html>")


# -- JWT ---------------------------------------------------------------------------------------

PASSPHRASE = "pass-SECRET-8765"


@dataclass
class JwtKey:
    key: rsa.RSAPrivateKey
    config: dict[str, Any]


@pytest.fixture(scope="module")
def jwt_key() -> JwtKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    ).decode()
    config = {
        "boxAppSettings": {
            "clientID": "jwt-client",
            "clientSecret": SECRET,
            "appAuth": {"publicKeyID": "kid12345", "privateKey": pem, "passphrase": PASSPHRASE},
        },
        "enterpriseID": "1234567",
        "webhooks": {},
    }
    return JwtKey(key, config)


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_the_jwt_assertion_carries_boxs_claims_and_verifies_with_the_public_key(
    tmp_path: Path, jwt_key: JwtKey
) -> None:
    config = load_jwt_config(write_config(tmp_path, jwt_key.config))
    assertion = jwt_assertion(config, now=1_800_000_000.7)
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "kid12345"}
    claims = jwt.decode(
        assertion,
        jwt_key.key.public_key(),
        algorithms=["RS256"],
        audience="https://api.box.com/oauth2/token",
        options={"verify_exp": False},
    )
    assert claims["iss"] == "jwt-client"
    assert (claims["sub"], claims["box_sub_type"], claims["aud"]) == ("1234567", "enterprise", TOKEN_AUDIENCE)
    assert claims["exp"] == 1_800_000_045
    assert 16 <= len(claims["jti"]) <= 128
    assert jwt_assertion(config, now=1_800_000_000) != jwt_assertion(config, now=1_800_000_000)  # fresh jti


def test_a_user_id_in_the_config_makes_the_user_the_subject(tmp_path: Path, jwt_key: JwtKey) -> None:
    config = load_jwt_config(write_config(tmp_path, {**jwt_key.config, "userID": "20000002"}))
    claims = jwt.decode(jwt_assertion(config, now=0), options={"verify_signature": False})
    assert (claims["sub"], claims["box_sub_type"]) == ("20000002", "user")


def test_a_wrong_passphrase_is_a_config_error_naming_the_file(tmp_path: Path, jwt_key: JwtKey) -> None:
    bad = json.loads(json.dumps(jwt_key.config))
    bad["boxAppSettings"]["appAuth"]["passphrase"] = "wrong-SECRET-pass"
    path = write_config(tmp_path, bad)
    with pytest.raises(ConfigError, match="cannot decrypt") as info:
        load_jwt_config(path)
    assert str(path) in str(info.value)
    assert_no_secrets(info.value, secrets=("wrong-SECRET-pass", PASSPHRASE, SECRET))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: c["boxAppSettings"]["appAuth"].pop("publicKeyID"), "boxAppSettings.appAuth.publicKeyID"),
        (lambda c: c.pop("enterpriseID"), "neither enterpriseID nor userID"),
        (lambda c: c["boxAppSettings"].update(clientID=7.5), "boxAppSettings.clientID"),
    ],
)
def test_an_incomplete_jwt_config_names_the_key(
    tmp_path: Path, jwt_key: JwtKey, edit: Callable[[dict[str, Any]], object], problem: str
) -> None:
    config = json.loads(json.dumps(jwt_key.config))
    edit(config)
    with pytest.raises(ConfigError, match=problem):
        load_jwt_config(write_config(tmp_path, config))


def test_the_jwt_config_shows_no_secret(tmp_path: Path, jwt_key: JwtKey) -> None:
    config = load_jwt_config(write_config(tmp_path, jwt_key.config))
    assert_no_secrets(config, secrets=(SECRET, PASSPHRASE, "PRIVATE KEY"))


# -- provider policy with a fake token endpoint ----------------------------------------------


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeEndpoint:
    """Answers grants from ``answers`` (a TokenResponse or an exception each); may hold them at a gate."""

    answers: list[TokenResponse | Exception] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    gate: anyio.Event | None = None
    serial: int = 0

    def next_token(self, expires_in: float = 3600) -> TokenResponse:
        self.serial += 1
        return TokenResponse(f"access-{self.serial}", expires_in, f"refresh-{self.serial}")

    async def grant(self, form: Mapping[str, str]) -> TokenResponse:
        self.forms.append(dict(form))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else self.next_token()
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class MemoryStore:
    blob: TokenBlob | None = None
    saved: list[TokenBlob] = field(default_factory=list)
    fail_saves: int = 0
    replaced: TokenBlob | None = None

    async def load(self) -> TokenBlob | None:
        return self.blob

    async def save(self, blob: TokenBlob) -> None:
        if self.fail_saves:
            self.fail_saves -= 1
            raise TokenStoreWriteError("cannot write token store memory: No space left on device")
        self.blob = blob
        self.saved.append(blob)

    async def reload_if_changed(self) -> TokenBlob | None:
        blob, self.replaced = self.replaced, None
        if blob is not None:
            self.blob = blob
        return blob

    def import_token(self, blob: TokenBlob) -> None:
        self.replaced = blob


@dataclass
class GatedStore(MemoryStore):
    """Holds each save at ``gate`` (when set), exposing the blob being written."""

    gate: anyio.Event | None = None
    writing: TokenBlob | None = None

    async def save(self, blob: TokenBlob) -> None:
        self.writing = blob
        if self.gate is not None:
            await self.gate.wait()
        await super().save(blob)


def blob_expiring_at(expires_at: float | None, access: str = ACCESS, refresh: str = REFRESH) -> TokenBlob:
    ns = None if expires_at is None else int(expires_at * 1e9)
    return TokenBlob(access_token=access, refresh_token=refresh, expiry_ns=ns)


async def oauth(
    store: MemoryStore, endpoint: FakeEndpoint, clock: Clock, stats: Stats | None = None, margin: float = 300
) -> OAuthProvider:
    return await OAuthProvider.open(
        endpoint,
        store,
        client_id="the-client-id",
        client_secret=SECRET,
        stats=stats or Stats(),
        margin=margin,
        clock=clock,
    )


@pytest.mark.anyio
async def test_a_fresh_token_is_handed_out_without_a_grant() -> None:
    clock, endpoint = Clock(), FakeEndpoint()
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now + 3600)), endpoint, clock)
    assert await provider.token() == ACCESS
    assert endpoint.forms == [] and provider.expires_at == Clock.now + 3600


@pytest.mark.anyio
async def test_within_the_margin_the_token_is_refreshed_and_stored_before_it_is_handed_out() -> None:
    clock, stats, endpoint = Clock(), Stats(), FakeEndpoint()
    store = GatedStore(blob_expiring_at(Clock.now + 299))
    provider = await oauth(store, endpoint, clock, stats)
    store.gate = anyio.Event()
    tokens: list[str] = []

    async def caller() -> None:
        tokens.append(await provider.token())

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        # Box has rotated the token and the store is writing it: nobody has the new token yet.
        assert store.writing is not None and store.writing.refresh_token == "refresh-1"
        assert tokens == [] and provider.expires_at == Clock.now + 299
        store.gate.set()
    assert tokens == ["access-1", "access-1"]
    assert endpoint.forms == [
        {"grant_type": "refresh_token", "refresh_token": REFRESH, "client_id": "the-client-id", "client_secret": SECRET}
    ]
    assert store.blob is not None and (store.blob.access_token, store.blob.refresh_token) == ("access-1", "refresh-1")
    assert provider.expires_at == clock.now + 3600
    assert stats.token_refreshes == {"ok": 1} and stats.token_expiry == clock.now + 3600 and stats.auth_ok


@pytest.mark.anyio
async def test_a_rotated_token_that_cannot_be_stored_is_not_handed_out_and_is_not_lost() -> None:
    clock, endpoint = Clock(), FakeEndpoint()
    store = MemoryStore(blob_expiring_at(Clock.now - 1), fail_saves=1)
    provider = await oauth(store, endpoint, clock)
    with pytest.raises(TokenStoreWriteError):
        await provider.token()
    assert store.blob is not None and store.blob.refresh_token == REFRESH  # nothing written yet
    assert await provider.token() == "access-1"  # written now, without asking Box again
    assert len(endpoint.forms) == 1
    assert store.blob.refresh_token == "refresh-1"


@pytest.mark.anyio
async def test_twenty_callers_after_expiry_share_one_refresh() -> None:
    clock, endpoint = Clock(), FakeEndpoint(gate=anyio.Event())
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now - 1)), endpoint, clock)
    tokens: list[str] = []

    async def caller() -> None:
        tokens.append(await provider.token())

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert endpoint.gate is not None
        endpoint.gate.set()
    assert tokens == ["access-1"] * 20
    assert len(endpoint.forms) == 1


@pytest.mark.anyio
async def test_callers_that_saw_the_same_refused_token_share_one_refresh() -> None:
    clock, endpoint = Clock(), FakeEndpoint()
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now + 3600)), endpoint, clock)
    stale = await provider.token()
    results: list[str] = []

    async def refused_caller() -> None:
        await provider.invalidate(stale)
        results.append(await provider.token())

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(refused_caller)
    assert results == ["access-1"] * 10
    assert len(endpoint.forms) == 1
    await provider.invalidate(stale)  # a late report about the old token changes nothing
    assert await provider.token() == "access-1" and len(endpoint.forms) == 1


@pytest.mark.anyio
async def test_a_margin_longer_than_the_token_life_does_not_refresh_on_every_call() -> None:
    clock = Clock()
    endpoint = FakeEndpoint(answers=[TokenResponse("short", 60, "r2")])
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now - 1)), endpoint, clock, margin=300)
    assert await provider.token() == "short"
    clock.now += 29
    assert await provider.token() == "short"
    clock.now += 2  # 31 s old: within half its life of expiry
    assert await provider.token() == "access-1"
    assert len(endpoint.forms) == 2


@pytest.mark.anyio
async def test_a_token_of_unknown_expiry_is_refreshed_once_before_use() -> None:
    clock, endpoint = Clock(), FakeEndpoint()
    provider = await oauth(MemoryStore(blob_expiring_at(None)), endpoint, clock)
    assert await provider.token() == "access-1"
    assert await provider.token() == "access-1"
    assert len(endpoint.forms) == 1


@pytest.mark.anyio
async def test_invalid_grant_tells_the_operator_what_to_run_and_stops_calling_box() -> None:
    clock, stats = Clock(), Stats()
    endpoint = FakeEndpoint(answers=[GrantRejectedError("invalid_grant", "Refresh token has expired")])
    store = MemoryStore(blob_expiring_at(Clock.now - 1))
    provider = await oauth(store, endpoint, clock, stats)
    with structlog.testing.capture_logs() as logs, pytest.raises(AuthNeedsHumanError) as info:
        await provider.token()
    message = str(info.value)
    assert 'rclone authorize "box" the-client-id <client_secret>' in message
    assert "boxd token import" in message and "Refresh token has expired" in message
    assert_no_secrets(message, logs, provider)
    assert stats.token_refreshes == {"invalid_grant": 1} and not stats.auth_ok
    with pytest.raises(AuthNeedsHumanError, match="boxd token import"):
        await provider.token()
    assert len(endpoint.forms) == 1  # Box is not asked again with a dead refresh token

    store.import_token(blob_expiring_at(clock.now + 3600, access="imported"))
    assert await provider.token() == "imported"
    assert stats.auth_ok


@pytest.mark.anyio
async def test_without_any_token_the_provider_asks_for_an_import() -> None:
    store = MemoryStore()
    provider = await oauth(store, FakeEndpoint(), Clock())
    with pytest.raises(AuthNeedsHumanError, match="there is no token in the token store"):
        await provider.token()
    store.import_token(blob_expiring_at(Clock.now + 3600, access="imported"))
    assert await provider.reload_if_changed()
    assert await provider.token() == "imported"


@pytest.mark.anyio
async def test_a_bad_client_secret_says_so_rather_than_asking_for_a_new_login() -> None:
    endpoint = FakeEndpoint(answers=[GrantRejectedError("invalid_client", "The client credentials are not valid")])
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now - 1)), endpoint, Clock())
    with pytest.raises(AuthNeedsHumanError, match=r"check box\.client_id and box\.client_secret"):
        await provider.token()


@pytest.mark.anyio
async def test_while_refresh_fails_transiently_a_still_valid_token_is_used_with_backoff() -> None:
    clock, stats = Clock(), Stats()
    endpoint = FakeEndpoint(answers=[TransientError("503", retry_after=30.0)])
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now + 200)), endpoint, clock, stats)
    assert await provider.token() == ACCESS  # within the margin, refresh failed, token still good
    clock.now += 29
    assert await provider.token() == ACCESS and len(endpoint.forms) == 1  # not retried before Retry-After
    clock.now += 2
    assert await provider.token() == "access-1" and len(endpoint.forms) == 2
    assert stats.token_refreshes == {"error": 1, "ok": 1}


@pytest.mark.anyio
async def test_when_no_valid_token_is_left_a_transient_failure_is_raised() -> None:
    endpoint = FakeEndpoint(answers=[TransientError("cannot reach the token endpoint", retry_after=5.0)])
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now - 1)), endpoint, Clock())
    with pytest.raises(TransientError) as info:
        await provider.token()
    assert info.value.retry_after == 5.0


@pytest.mark.anyio
async def test_a_caller_cancelled_mid_refresh_does_not_lose_the_rotated_token() -> None:
    clock, endpoint = Clock(), FakeEndpoint(gate=anyio.Event())
    store = MemoryStore(blob_expiring_at(Clock.now - 1))
    provider = await oauth(store, endpoint, clock)
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                await provider.token()

        tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        assert endpoint.gate is not None
        endpoint.gate.set()
    assert store.blob is not None and store.blob.refresh_token == "refresh-1"
    assert await provider.token() == "access-1" and len(endpoint.forms) == 1


@pytest.mark.anyio
async def test_ccg_sends_its_subject_and_re_runs_the_grant_before_expiry() -> None:
    clock, endpoint = Clock(), FakeEndpoint(answers=[TokenResponse("c1", 600), TokenResponse("c2", 600)])
    provider = ClientCredentialsProvider(
        endpoint,
        client_id="cid",
        client_secret=SECRET,
        subject_type="user",
        subject_id="20000002",
        stats=Stats(),
        margin=120,
        clock=clock,
    )
    assert await provider.token() == "c1"
    assert endpoint.forms[0] == {
        "grant_type": "client_credentials",
        "client_id": "cid",
        "client_secret": SECRET,
        "box_subject_type": "user",
        "box_subject_id": "20000002",
    }
    clock.now += 479
    assert await provider.token() == "c1"
    clock.now += 2
    assert await provider.token() == "c2"
    assert_no_secrets(provider)


@pytest.mark.anyio
async def test_a_refused_jwt_grant_is_retried_only_after_a_pause(tmp_path: Path, jwt_key: JwtKey) -> None:
    clock = Clock()
    refused = GrantRejectedError("invalid_grant", "Please check the 'jti' claim.")
    endpoint = FakeEndpoint(answers=[refused, TokenResponse("j1", 3600)])
    config = load_jwt_config(write_config(tmp_path, jwt_key.config))
    provider = JwtProvider(endpoint, config, stats=Stats(), clock=clock)
    for _ in range(2):
        with pytest.raises(AuthNeedsHumanError, match=r"box\.config_file") as info:
            await provider.token()
    assert len(endpoint.forms) == 1
    assert_no_secrets(info.value, provider, secrets=(SECRET, PASSPHRASE))
    clock.now += 61
    assert await provider.token() == "j1"
    form = endpoint.forms[1]
    assert form["grant_type"] == JWT_GRANT and form["client_id"] == "jwt-client"
    assert jwt.decode(form["assertion"], options={"verify_signature": False})["exp"] == int(clock.now) + 45


@pytest.mark.anyio
async def test_a_static_token_is_never_refreshed_and_a_401_needs_a_human() -> None:
    stats = Stats()
    provider = StaticTokenProvider(ACCESS, stats=stats)
    assert await provider.token() == ACCESS and provider.expires_at is None
    await provider.invalidate("some-other-token")
    assert await provider.token() == ACCESS
    await provider.invalidate(ACCESS)
    with pytest.raises(AuthNeedsHumanError, match=r"box\.access_token") as info:
        await provider.token()
    assert not stats.auth_ok
    assert_no_secrets(info.value, provider)


@pytest.mark.anyio
async def test_send_authorized_resends_once_with_a_new_token_after_a_401() -> None:
    clock, endpoint = Clock(), FakeEndpoint()
    provider = await oauth(MemoryStore(blob_expiring_at(Clock.now + 3600)), endpoint, clock)
    sent: list[str] = []

    async def send(token: str) -> int:
        sent.append(token)
        return 401 if token == ACCESS else 200

    assert await send_authorized(provider, send, lambda status: status == 401) == 200
    assert sent == [ACCESS, "access-1"]
    sent.clear()

    async def always_refused(token: str) -> int:
        sent.append(token)
        return 401

    assert await send_authorized(provider, always_refused, lambda status: status == 401) == 401
    assert len(sent) == 2  # once more, not forever
    assert auth_headers("t", as_user="20000002") == {"Authorization": "Bearer t", "As-User": "20000002"}


# -- choosing a provider from settings -------------------------------------------------------


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:  # never used for a request here
        yield session


def settings(**values: Any) -> BoxSettings:
    return BoxSettings(**values)


@pytest.mark.anyio
async def test_settings_choose_static_then_jwt_then_ccg_then_oauth(
    tmp_path: Path, http: aiohttp.ClientSession, jwt_key: JwtKey
) -> None:
    config = write_config(tmp_path, jwt_key.config)
    everything = {
        "client_id": "cid",
        "client_secret": SECRET,
        "token": GO_BLOB,
        "config_file": config,
        "client_credentials": True,
        "subject_id": "1234567",
        "access_token": ACCESS,
    }
    chosen: list[TokenProvider] = []
    for drop in (
        (),
        ("access_token",),
        ("access_token", "config_file"),
        ("access_token", "config_file", "client_credentials"),
    ):
        box = settings(**{k: v for k, v in everything.items() if k not in drop})
        chosen.append(await provider_from_settings(box, tmp_path / "state", http, Stats()))
    assert [p.name for p in chosen] == ["static", "jwt", "ccg", "oauth"]
    assert_no_secrets(*chosen, secrets=(ACCESS, REFRESH, SECRET, PASSPHRASE))


@pytest.mark.anyio
async def test_oauth_seeds_an_empty_store_from_box_token_once(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    state = tmp_path / "state"
    provider = await provider_from_settings(
        settings(client_id="cid", client_secret=SECRET, token=GO_BLOB), state, http, Stats()
    )
    assert provider.name == "oauth"
    assert (state / "token.json").read_text().strip() == GO_BLOB
    assert stat.S_IMODE(os.stat(state / "token.json").st_mode) == 0o600
    # Once the store holds a token, box.token is ignored.
    again = await provider_from_settings(
        settings(client_id="cid", client_secret=SECRET, token=Z_BLOB), state, http, Stats()
    )
    assert again.expires_at == TokenBlob.from_json(GO_BLOB).expires_at


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"client_credentials": True, "client_id": "cid", "client_secret": SECRET}, "box.subject_id must be set"),
        ({"client_credentials": True, "subject_id": "1"}, "box.client_id and box.client_secret must be set"),
        ({"client_secret": SECRET, "token": GO_BLOB}, "box.client_id must be set for OAuth"),
        ({"client_id": "cid", "client_secret": SECRET, "token": GO_BLOB[:50]}, "box.token: not valid JSON"),
        ({"config_file": "/nonexistent/config.json"}, "box.config_file /nonexistent/config.json: cannot read"),
    ],
)
@pytest.mark.anyio
async def test_incomplete_settings_are_config_errors(
    tmp_path: Path, http: aiohttp.ClientSession, values: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        await provider_from_settings(settings(**values), tmp_path, http, Stats())
    assert_no_secrets(info.value)


@pytest.mark.anyio
async def test_an_unwritable_state_dir_is_a_config_error(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, blob: TokenBlob) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("boxd.box.tokens.write_token_file", read_only)
    with pytest.raises(ConfigError, match=r"daemon\.state_dir"):
        await provider_from_settings(
            settings(client_id="cid", client_secret=SecretStr(SECRET), token=GO_BLOB), tmp_path, http, Stats()
        )
