"""Token providers against the Box emulator over loopback: rotation, single-flight, 401s, revocation, JWT, CCG."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestServer
from blockbuster import blockbuster_ctx

from boxd.accounting import Stats
from boxd.box.auth import TokenProvider, auth_headers, provider_from_settings, send_authorized
from boxd.box.tokens import TokenBlob, TokenEndpoint, write_token_file
from boxd.errors import AuthNeedsHumanError, RateLimitedError, TransientError
from boxd.settings import BoxSettings
from boxd.sim.config import Knobs
from tests.integration.simfix import Box, running_box
from tests.simproc import Sim, running_sim

pytestmark = pytest.mark.anyio


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    async with running_box(tmp_path / "sim") as b:
        yield b


@pytest.fixture
async def short_lived_box(tmp_path: Path) -> AsyncIterator[Box]:
    async with running_box(tmp_path / "sim", Knobs(token_ttl=120)) as b:
        yield b


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def secrets_of(box: Box, *more: str) -> list[str]:
    app = box.state.box_config["boxAppSettings"]
    return [box.state.authority.client_secret, app["appAuth"]["passphrase"], "PRIVATE KEY", *more]


def assert_no_secrets(secrets: list[str], *things: object) -> None:
    for thing in things:
        for secret in secrets:
            assert secret not in str(thing) and secret not in repr(thing), f"a secret leaked into {thing!r}"


def oauth_settings(box: Box, **values: Any) -> BoxSettings:
    return BoxSettings.model_validate(
        {
            "client_id": box.state.authority.client_id,
            "client_secret": box.state.authority.client_secret,
            "token_url": f"{box.base}/oauth2/token",
            "api_url": f"{box.base}/2.0",
            "upload_url": f"{box.base}/api/2.0",
            **values,
        }
    )


def auth_ok(stats: Stats) -> bool:
    return stats.auth_ok


async def new_blob(box: Box) -> dict[str, Any]:
    """A fresh rclone-style token, as `rclone authorize "box"` would print it."""
    r = await box.call("POST", "/_sim/tokens", auth=False)
    assert r.status == 200
    return dict(r.body)


async def sim_stats(box: Box) -> dict[str, Any]:
    r = await box.call("GET", "/_sim/stats", auth=False)
    return dict(r.body)


async def users_me(box: Box, token: str, as_user: str = "") -> tuple[int, Any]:
    r = await box.call("GET", "/2.0/users/me", headers=auth_headers(token, as_user))
    return r.status, r.body


async def refresh_directly(box: Box, refresh_token: str) -> tuple[int, Any]:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": box.state.authority.client_id,
        "client_secret": box.state.authority.client_secret,
    }
    async with box.http.post(f"{box.base}/oauth2/token", data=form) as resp:
        return resp.status, await resp.json()


def on_disk(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / "token.json").read_text()))


# -- OAuth -------------------------------------------------------------------------------------


async def test_a_refresh_rotates_the_token_and_persists_it_before_it_is_used(
    box: Box, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    seed = await new_blob(box)
    state, stats = tmp_path / "state", Stats()
    provider = await provider_from_settings(
        oauth_settings(box, token=json.dumps(seed)), state, box.http, stats, clock=box.clock
    )
    assert provider.name == "oauth"
    assert await provider.token() == seed["access_token"]  # still fresh: no grant
    assert (await sim_stats(box))["token_grants"]["refresh_token"] == 0

    used_with_disk: list[dict[str, Any]] = []

    async def send(token: str) -> int:
        used_with_disk.append(await anyio.to_thread.run_sync(on_disk, state))
        status, _ = await users_me(box, token)
        return status

    box.clock.advance(3600 - 299)  # inside the 300 s margin
    with blockbuster_ctx("boxd.box"):  # the token store's I/O stays off the event loop
        assert await send_authorized(provider, send, lambda status: status == 401) == 200
    disk = used_with_disk[0]
    assert disk["refresh_token"] != seed["refresh_token"] and disk["access_token"] != seed["access_token"]
    assert TokenBlob.from_mapping(disk).expires_at == pytest.approx(box.clock() + 3600, abs=1)
    assert (await sim_stats(box))["token_grants"]["refresh_token"] == 1
    assert stats.token_refreshes == {"ok": 1} and stats.auth_ok

    # Box spent the old refresh token; the one on disk is the one that works.
    status, body = await refresh_directly(box, seed["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    box.clock.advance(3600)
    restarted = await provider_from_settings(oauth_settings(box), state, box.http, Stats(), clock=box.clock)
    token = await restarted.token()
    assert (await users_me(box, token))[0] == 200
    assert on_disk(state)["refresh_token"] not in (disk["refresh_token"], seed["refresh_token"])
    assert [e["event"] for e in logs].count("token_renewed") == 2
    assert_no_secrets(secrets_of(box, seed["refresh_token"], disk["refresh_token"]), provider, restarted, logs)


async def test_twenty_callers_after_expiry_cause_exactly_one_refresh_grant(box: Box, tmp_path: Path) -> None:
    seed = await new_blob(box)
    provider = await provider_from_settings(
        oauth_settings(box, token=json.dumps(seed)), tmp_path / "state", box.http, Stats(), clock=box.clock
    )
    box.clock.advance(3601)
    tokens: list[str] = []

    async def caller() -> None:
        tokens.append(await provider.token())

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(caller)
    assert len(tokens) == 20 and len(set(tokens)) == 1 and tokens[0] != seed["access_token"]
    assert (await users_me(box, tokens[0]))[0] == 200
    assert (await sim_stats(box))["token_grants"]["refresh_token"] == 1


async def test_a_401_makes_the_callers_that_saw_it_share_one_refresh(box: Box, tmp_path: Path) -> None:
    seed = await new_blob(box)
    # The stored access token looks valid for hours but Box does not know it.
    stale = {**seed, "access_token": "not-a-token-box-knows"}
    provider = await provider_from_settings(
        oauth_settings(box, token=json.dumps(stale)), tmp_path / "state", box.http, Stats(), clock=box.clock
    )
    statuses: list[int] = []

    async def send(token: str) -> int:
        return (await users_me(box, token))[0]

    async def request() -> None:
        statuses.append(await send_authorized(provider, send, lambda status: status == 401))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(request)
    assert statuses == [200] * 10
    stats = await sim_stats(box)
    assert stats["token_grants"]["refresh_token"] == 1
    assert stats["unauthorized"] == 10


async def test_revoked_tokens_need_a_human_and_an_imported_token_resumes(
    box: Box, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    seed = await new_blob(box)
    state, stats = tmp_path / "state", Stats()
    provider = await provider_from_settings(
        oauth_settings(box, token=json.dumps(seed)), state, box.http, stats, clock=box.clock
    )
    await box.call("POST", "/_sim/revoke", auth=False)

    async def send(token: str) -> int:
        return (await users_me(box, token))[0]

    with pytest.raises(AuthNeedsHumanError) as info:
        await send_authorized(provider, send, lambda status: status == 401)
    message = str(info.value)
    assert f'rclone authorize "box" {box.state.authority.client_id} <client_secret>' in message
    assert "boxd token import" in message and "invalid_grant" in message
    assert stats.token_refreshes == {"invalid_grant": 1} and not stats.auth_ok
    with pytest.raises(AuthNeedsHumanError):
        await provider.token()
    token_posts = (await sim_stats(box))["requests"]["POST /oauth2/token"]
    assert token_posts == {"400": 1}  # the dead refresh token was not tried again

    # What `boxd token import` does, from another process:
    fresh = await new_blob(box)
    blob = TokenBlob.from_json(json.dumps(fresh), require_refresh=True, source="stdin")
    await anyio.to_thread.run_sync(write_token_file, state / "token.json", blob)
    assert await provider.reload_if_changed()
    assert await send_authorized(provider, send, lambda status: status == 401) == 200
    assert auth_ok(stats)
    assert [e["instruction"] for e in logs if e["event"] == "auth_needs_human"] == [message]
    assert_no_secrets(secrets_of(box, seed["refresh_token"], fresh["refresh_token"]), info.value, provider, logs)


async def test_the_emulator_subprocess_token_from_credentials_json_works(tmp_path: Path) -> None:
    with running_sim(tmp_path / "sim") as sim:
        await _subprocess_flow(sim, tmp_path / "state")


async def _subprocess_flow(sim: Sim, state: Path) -> None:
    creds = sim.credentials
    settings = BoxSettings.model_validate(
        {
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
            "token": json.dumps(creds["token"]),  # Python isoformat expiry with the local offset
            "token_url": creds["token_url"],
        }
    )
    async with aiohttp.ClientSession() as http:
        provider = await provider_from_settings(settings, state, http, Stats())
        token = await provider.token()
        assert token == creds["token"]["access_token"]
        await provider.invalidate(token)  # as after a 401
        renewed = await provider.token()
        async with http.get(creds["api_url"] + "/users/me", headers=auth_headers(renewed)) as resp:
            assert resp.status == 200
        assert on_disk(state)["access_token"] == renewed
        stats = await anyio.to_thread.run_sync(sim.stats)
        assert stats["token_grants"]["refresh_token"] == 1


# -- JWT and client credentials ----------------------------------------------------------------


async def test_jwt_obtains_a_token_and_re_runs_the_grant_before_expiry(
    short_lived_box: Box, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    box, stats = short_lived_box, Stats()
    settings = oauth_settings(box, config_file=box.state.data_dir / "box_config.json")
    provider = await provider_from_settings(settings, tmp_path / "state", box.http, stats, clock=box.clock)
    assert provider.name == "jwt"
    first = await provider.token()
    status, me = await users_me(box, first)
    assert (status, me["id"]) == (200, box.state.service_account.id)
    box.clock.advance(59)  # token_ttl 120: renewed in its last 60 s
    assert await provider.token() == first
    box.clock.advance(2)
    second = await provider.token()
    assert second != first and (await users_me(box, second))[0] == 200
    assert (await sim_stats(box))["token_grants"]["jwt"] == 2
    assert stats.token_refreshes == {"ok": 2}
    assert [e["event"] for e in logs].count("token_renewed") == 2
    assert_no_secrets(secrets_of(box, first, second), provider, logs)


async def test_jwt_with_a_user_id_acts_as_that_user(box: Box, tmp_path: Path) -> None:
    config = {**box.state.box_config, "userID": box.state.member.id}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    provider = await provider_from_settings(
        oauth_settings(box, config_file=path), tmp_path / "state", box.http, Stats(), clock=box.clock
    )
    status, me = await users_me(box, await provider.token())
    assert (status, me["id"]) == (200, box.state.member.id)


@pytest.mark.parametrize("subject", ["enterprise", "user"])
async def test_ccg_obtains_a_token_and_re_runs_the_grant_before_expiry(
    short_lived_box: Box, tmp_path: Path, subject: str
) -> None:
    box = short_lived_box
    subject_id = box.state.account.enterprise_id if subject == "enterprise" else box.state.member.id
    expected_user = box.state.service_account.id if subject == "enterprise" else box.state.member.id
    settings = oauth_settings(box, client_credentials=True, subject_type=subject, subject_id=subject_id)
    provider = await provider_from_settings(settings, tmp_path / "state", box.http, Stats(), clock=box.clock)
    assert provider.name == "ccg"
    first = await provider.token()
    status, me = await users_me(box, first)
    assert (status, me["id"]) == (200, expected_user)
    box.clock.advance(61)
    second = await provider.token()
    assert second != first
    assert (await sim_stats(box))["token_grants"]["client_credentials"] == 2
    assert_no_secrets(secrets_of(box, first, second), provider)


async def test_as_user_with_a_service_account_token_reaches_the_member(box: Box, tmp_path: Path) -> None:
    settings = oauth_settings(box, config_file=box.state.data_dir / "box_config.json", impersonate=box.state.member.id)
    provider: TokenProvider = await provider_from_settings(
        settings, tmp_path / "state", box.http, Stats(), clock=box.clock
    )
    status, me = await users_me(box, await provider.token(), as_user=settings.impersonate)
    assert (status, me["id"]) == (200, box.state.member.id)


async def test_a_refused_ccg_subject_needs_a_human(box: Box, tmp_path: Path) -> None:
    settings = oauth_settings(box, client_credentials=True, subject_type="enterprise", subject_id="999")
    provider = await provider_from_settings(settings, tmp_path / "state", box.http, Stats(), clock=box.clock)
    with pytest.raises(AuthNeedsHumanError, match="Grant credentials are invalid") as info:
        await provider.token()
    assert_no_secrets(secrets_of(box), info.value)


# -- the token endpoint's failures ------------------------------------------------------------


@pytest.fixture
async def flaky_endpoint() -> AsyncIterator[tuple[str, anyio.Event]]:
    """A token endpoint that answers 503, 429, then hangs until the event is set."""
    answers = [
        web.json_response({"error": "server_error"}, status=503, headers={"Retry-After": "3"}),
        web.json_response(
            {"error": "temporarily_unavailable", "error_description": "overloaded"},
            status=429,
            headers={"Retry-After": "9"},
        ),
    ]
    release = anyio.Event()

    async def token(request: web.Request) -> web.StreamResponse:
        await request.post()
        if answers:
            return answers.pop(0)
        await release.wait()
        return web.json_response({"access_token": "late", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/oauth2/token")), release
    finally:
        release.set()
        await server.close()


async def test_5xx_429_timeouts_and_refused_connections_are_transient(
    flaky_endpoint: tuple[str, anyio.Event],
) -> None:
    url, _ = flaky_endpoint
    stats = Stats()
    form = {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}
    async with aiohttp.ClientSession() as http:
        endpoint = TokenEndpoint(http, url, timeout=0.5, stats=stats)
        with pytest.raises(TransientError) as info:
            await endpoint.grant(form)
        assert info.value.retry_after == 3.0 and not isinstance(info.value, RateLimitedError)
        with pytest.raises(RateLimitedError) as limited:
            await endpoint.grant(form)
        assert limited.value.retry_after == 9.0
        with pytest.raises(TransientError, match="TimeoutError"):
            await endpoint.grant(form)  # the endpoint hangs; the request's own timeout ends it

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}/oauth2/token"
        with pytest.raises(TransientError, match="cannot reach the token endpoint"):
            await TokenEndpoint(http, closed, stats=stats).grant(form)
    assert stats.requests[("token", "503")] == 1 and stats.requests[("token", "429")] == 1
    assert stats.requests[("token", "error")] == 2
