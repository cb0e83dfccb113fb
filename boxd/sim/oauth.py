"""``POST /oauth2/token`` (and ``/api/oauth2/token``): refresh, JWT and client-credentials grants.

Answers are ``components.schemas.AccessToken`` or ``OAuth2Error`` with ``Cache-Control:
no-store``, as Box sends them (``box-api-contract.md`` §3).
"""

from __future__ import annotations

from aiohttp import web

from boxd.sim.appkeys import JwtError
from boxd.sim.common import sim
from boxd.sim.errors import OAuthError
from boxd.sim.model import User
from boxd.sim.state import SimState

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _subject(state: SimState, sub_type: str | None, sub: str | None) -> User | None:
    """The user a JWT/CCG subject names: the service account or a managed user."""
    if sub_type == "enterprise" and sub == state.account.enterprise_id:
        return state.service_account
    if sub_type == "user" and sub in state.account.users and not state.account.users[sub].is_service_account:
        return state.account.users[sub]
    return None


async def token(request: web.Request) -> web.Response:
    state = sim(request)
    try:
        try:
            form = await request.post()
        except ValueError:  # malformed form or multipart framing
            raise OAuthError("invalid_request", "Malformed request body") from None
        grant = form.get("grant_type")
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        if not isinstance(grant, str) or grant not in ("refresh_token", "client_credentials", JWT_GRANT):
            raise OAuthError("invalid_request", "Invalid grant_type parameter or parameter missing")
        state.authority.check_client(str(client_id or ""), str(client_secret or ""))
        if grant == "refresh_token":
            refresh = form.get("refresh_token")
            if not isinstance(refresh, str) or not refresh:
                raise OAuthError("invalid_request", "Missing refresh_token parameter")
            body = state.authority.refresh(refresh)
            state.stats.token_grants["refresh_token"] += 1
        elif grant == JWT_GRANT:
            assertion = form.get("assertion")
            if not isinstance(assertion, str):
                raise OAuthError("invalid_request", "Missing assertion parameter")
            try:
                claims = state.jwt.verify(assertion, str(client_id))
            except JwtError as exc:
                raise OAuthError("invalid_grant", exc.description) from None
            subject = _subject(state, claims.box_sub_type, claims.sub)
            if subject is None:
                raise OAuthError("invalid_grant", "Please check the 'sub' claim. The 'sub' specified is invalid.")
            body = state.authority.issue(subject.id, with_refresh=False)
            state.stats.token_grants["jwt"] += 1
        else:
            sub_type = form.get("box_subject_type")
            if sub_type not in ("enterprise", "user"):
                raise OAuthError(
                    "unauthorized_client", 'The "box_subject_type" value is unauthorized for this client_id'
                )
            subject = _subject(state, str(sub_type), str(form.get("box_subject_id") or ""))
            if subject is None:
                raise OAuthError("invalid_grant", "Grant credentials are invalid")
            body = state.authority.issue(subject.id, with_refresh=False)
            state.stats.token_grants["client_credentials"] += 1
    except OAuthError as exc:
        return web.json_response(exc.body(), status=exc.status, headers={"Cache-Control": "no-store"})
    return web.json_response(body, headers={"Cache-Control": "no-store"})
