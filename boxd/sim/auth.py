"""Tokens the emulator issues and checks: OAuth refresh rotation, JWT, client credentials.

Access tokens expire after ``token_ttl`` seconds; refresh tokens live 60 days and are
single-use: every refresh returns a new one and invalidates the old (``box-api-contract.md``
§3). Tokens are random strings mapped to their user; nothing is derived from them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boxd.sim.errors import OAuthError

REFRESH_TTL = 60 * 24 * 3600.0
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class Grant:
    user_id: str
    expires_at: float


class Unauthorized(Exception):
    """A missing, unknown, expired or revoked bearer token."""

    def __init__(self, description: str) -> None:
        self.description = description
        super().__init__(description)

    def www_authenticate(self) -> str:
        return f'Bearer realm="Service", error="invalid_token", error_description="{self.description}"'


class TokenAuthority:
    """Issues and validates tokens for one Box app (``client_id``/``client_secret``)."""

    def __init__(
        self, client_id: str, client_secret: str, token_ttl: Callable[[], float], clock: Callable[[], float]
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self._ttl = token_ttl
        self._clock = clock
        self._access: dict[str, Grant] = {}
        self._refresh: dict[str, Grant] = {}
        self._spent: set[str] = set()

    def check_client(self, client_id: str | None, client_secret: str | None) -> None:
        if client_id != self.client_id or not secrets.compare_digest(client_secret or "", self.client_secret):
            raise OAuthError("invalid_client", "The client credentials are not valid")

    def issue(self, user_id: str, *, with_refresh: bool) -> dict[str, Any]:
        """A token response (``components.schemas.AccessToken``) for ``user_id``."""
        now = self._clock()
        ttl = self._ttl()
        access = secrets.token_urlsafe(24)
        self._access[access] = Grant(user_id, now + ttl)
        body: dict[str, Any] = {
            "access_token": access,
            "expires_in": int(ttl),
            "restricted_to": [],
            "token_type": "bearer",
            "issued_token_type": ACCESS_TOKEN_TYPE,
        }
        if with_refresh:
            refresh = secrets.token_urlsafe(48)
            self._refresh[refresh] = Grant(user_id, now + REFRESH_TTL)
            body["refresh_token"] = refresh
        return body

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Rotate ``refresh_token``: the old one is spent whatever happens next."""
        grant = self._refresh.pop(refresh_token, None)
        if grant is None or grant.expires_at <= self._clock():
            if refresh_token in self._spent or grant is not None:
                raise OAuthError("invalid_grant", "Refresh token has expired")
            raise OAuthError("invalid_grant", "Invalid refresh token")
        self._spent.add(refresh_token)
        return self.issue(grant.user_id, with_refresh=True)

    def user_for(self, authorization: str | None) -> str:
        """The user id behind an ``Authorization: Bearer`` header; raises :class:`Unauthorized`."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("The access token provided is invalid.")
        grant = self._access.get(authorization[7:].strip())
        if grant is None:
            raise Unauthorized("The access token provided is invalid.")
        if grant.expires_at <= self._clock():
            raise Unauthorized("The access token provided has expired.")
        return grant.user_id

    def revoke_all(self) -> None:
        """Invalidate every access and refresh token issued so far."""
        self._spent.update(self._refresh)
        self._access.clear()
        self._refresh.clear()

    def rclone_blob(self, response: dict[str, Any]) -> dict[str, Any]:
        """The token as ``rclone authorize "box"`` prints it (Go ``oauth2.Token`` JSON)."""
        expiry = datetime.fromtimestamp(self._clock() + response["expires_in"], UTC).astimezone()
        return {
            "access_token": response["access_token"],
            "token_type": "bearer",
            "refresh_token": response.get("refresh_token", ""),
            "expiry": expiry.isoformat(timespec="microseconds"),
            "expires_in": response["expires_in"],
        }
