"""Access tokens for Box: one :class:`TokenProvider` interface over OAuth, JWT, client credentials, static.

Every Box request asks its provider for a token and, when Box answers 401, reports that token
with ``invalidate``; the next ``token()`` then renews once, however many requests saw the same
stale token (:func:`send_authorized` is that flow). Renewal is single-flight (one ``anyio.Lock``
per provider) and proactive: ``token()`` renews once the token is within ``margin`` of expiry.

- :class:`OAuthProvider` refreshes with the single-use refresh token (``box-api-contract.md``
  §3.2) and writes the rotated token to the :class:`~boxd.box.tokens.TokenStore` *before*
  handing out the new access token; losing the newest refresh token would need a human.
  ``invalid_grant`` raises :class:`AuthNeedsHumanError` telling the operator what to run, and
  stays raised (without calling Box) until ``boxd token import`` replaces the store.
- :class:`JwtProvider` and :class:`ClientCredentialsProvider` re-run their grant.
- :class:`StaticTokenProvider` hands out a configured access token; a 401 needs a human.

The token endpoint and the token store live in :mod:`boxd.box.tokens`. Secrets (tokens, client
secret, private key, passphrase) never appear in logs, messages or reprs.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import aiohttp
import anyio
import anyio.to_thread
import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from boxd.accounting import Stats
from boxd.box.tokens import (
    FileTokenStore,
    GrantEndpoint,
    GrantRejectedError,
    TokenBlob,
    TokenBlobError,
    TokenEndpoint,
    TokenStore,
    TokenStoreWriteError,
)
from boxd.errors import AuthNeedsHumanError, ConfigError, ProtocolError, TransientError
from boxd.settings import BoxSettings

log = structlog.get_logger("boxd.auth")

#: Box's fixed JWT audience, whatever ``token_url`` is (contract §3.2).
TOKEN_AUDIENCE = "https://api.box.com/oauth2/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Seconds a JWT assertion lives (Box allows at most 60; its docs and rclone use 45).
JWT_LIFETIME = 45
#: While renewal fails transiently, a token is still handed out until this close to expiry.
MIN_VALIDITY = 10.0
#: Pause before renewing again after a transient failure (unless the answer said Retry-After).
TRANSIENT_BACKOFF = 10.0
#: JWT/CCG grants refused by Box are tried again after this long (OAuth waits for a new token).
HUMAN_RETRY_INTERVAL = 60.0

T = TypeVar("T")


# -- JWT -------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class JwtAppConfig:
    """A Box JWT app's ``config.json`` with the private key decrypted; the subject is the user or the enterprise."""

    path: Path
    client_id: str
    client_secret: str
    key_id: str
    private_key: rsa.RSAPrivateKey
    enterprise_id: str
    user_id: str = ""

    def __repr__(self) -> str:
        return f"JwtAppConfig(path={str(self.path)!r}, client_id={self.client_id!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    @property
    def subject(self) -> tuple[str, str]:
        """``(box_sub_type, sub)``: a configured ``userID`` wins over the enterprise (service account)."""
        return ("user", self.user_id) if self.user_id else ("enterprise", self.enterprise_id)


def load_jwt_config(path: Path) -> JwtAppConfig:
    """Read and decrypt a Box ``config.json`` (blocking: run it in a thread); :class:`ConfigError` names the file."""
    try:
        obj = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"box.config_file {path}: cannot read it: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"box.config_file {path}: not valid JSON") from None

    def get(*keys: str, required: bool = True) -> str:
        value: Any = obj
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            raise ConfigError(f"box.config_file {path}: {'.'.join(keys)} is missing or not a string")
        return value

    settings = ("boxAppSettings",)
    auth = (*settings, "appAuth")
    client_id, client_secret = get(*settings, "clientID"), get(*settings, "clientSecret")
    key_id, pem, passphrase = get(*auth, "publicKeyID"), get(*auth, "privateKey"), get(*auth, "passphrase")
    enterprise_id, user_id = get("enterpriseID", required=False), get("userID", required=False)
    if not enterprise_id and not user_id:
        raise ConfigError(f"box.config_file {path}: neither enterpriseID nor userID is set")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=passphrase.encode())
    except (TypeError, ValueError):
        raise ConfigError(
            f"box.config_file {path}: cannot decrypt boxAppSettings.appAuth.privateKey "
            "(wrong passphrase or not a PKCS#8 PEM key)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"box.config_file {path}: boxAppSettings.appAuth.privateKey is not an RSA key")
    return JwtAppConfig(path, client_id, client_secret, key_id, key, enterprise_id, user_id)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_assertion(config: JwtAppConfig, now: float, *, jti: str | None = None) -> str:
    """An RS256-signed JWT-bearer assertion for ``config``'s app and subject, valid for :data:`JWT_LIFETIME` s."""
    sub_type, sub = config.subject
    header = {"alg": "RS256", "typ": "JWT", "kid": config.key_id}
    claims = {
        "iss": config.client_id,
        "sub": sub,
        "box_sub_type": sub_type,
        "aud": TOKEN_AUDIENCE,
        "jti": jti or secrets.token_urlsafe(32),  # 43 characters; Box wants 16–128
        "exp": int(now) + JWT_LIFETIME,
    }
    signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    signature = config.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


# -- providers -------------------------------------------------------------------------------


class TokenProvider(Protocol):
    """Hands out access tokens for Box requests."""

    @property
    def name(self) -> str:
        """``oauth``, ``jwt``, ``ccg`` or ``static``."""
        ...

    @property
    def expires_at(self) -> float | None:
        """Unix time the current access token expires, or None when unknown or not yet obtained."""
        ...

    async def token(self) -> str:
        """An access token valid for at least the margin; renews first when needed (one renewal at a time).

        Raises :class:`AuthNeedsHumanError` when only a human can restore access, and
        :class:`TransientError` when the token endpoint fails and no valid token is left.
        """
        ...

    async def invalidate(self, token: str) -> None:
        """Box answered 401 to ``token``: the next :meth:`token` renews (once, whoever else saw it)."""
        ...

    async def reload_if_changed(self) -> bool:
        """Adopt credentials replaced from outside (``boxd token import``); True if there were any."""
        ...


async def send_authorized(
    provider: TokenProvider, send: Callable[[str], Awaitable[T]], refused: Callable[[T], bool]
) -> T:
    """``send(token)``; if Box refused the token (``refused(answer)``: a 401), invalidate it and send once more."""
    token = await provider.token()
    answer = await send(token)
    if not refused(answer):
        return answer
    await provider.invalidate(token)
    return await send(await provider.token())


def auth_headers(token: str, as_user: str = "") -> dict[str, str]:
    """Request headers for ``token``, acting as ``as_user`` (Box ``As-User``, contract §3.3) when set."""
    headers = {"Authorization": f"Bearer {token}"}
    if as_user:
        headers["As-User"] = as_user
    return headers


@dataclass(frozen=True)
class _Issued:
    access_token: str = field(repr=False)
    expires_at: float
    lifetime: float


class _GrantProvider:
    """Renewal policy shared by the providers that can obtain new tokens; subclasses implement :meth:`_grant`."""

    name: ClassVar[str]
    human_retry_interval: ClassVar[float] = HUMAN_RETRY_INTERVAL

    def __init__(self, *, stats: Stats, margin: float, clock: Callable[[], float]) -> None:
        self._stats = stats
        self._margin = margin
        self._clock = clock
        self._lock = anyio.Lock()
        self._access = ""
        self._expires_at: float | None = None
        self._lifetime: float | None = None
        self._renew_unknown = True  # whether a token of unknown expiry is renewed before use
        self._refused: str | None = None  # the access token Box answered 401 to
        self._failure: AuthNeedsHumanError | None = None
        self._failure_until = 0.0
        self._backoff_until = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, expires_at={self._expires_at!r})"

    __str__ = __repr__

    @property
    def expires_at(self) -> float | None:
        return self._expires_at if self._access else None

    async def token(self) -> str:
        if self._fresh(self._clock()):
            return self._access
        async with self._lock:
            return await self._renew()

    async def invalidate(self, token: str) -> None:
        if token and token == self._access and self._refused != token:
            self._refused = token
            log.info("token_refused", provider=self.name)

    async def reload_if_changed(self) -> bool:
        return False

    # Subclass hooks ------------------------------------------------------------------------

    async def _grant(self) -> _Issued:
        """Obtain a new token from Box (called under the lock)."""
        raise NotImplementedError

    async def _before_renew(self) -> None:
        """Called under the lock before deciding to renew."""

    def _instruction(self, exc: GrantRejectedError) -> str:
        """The operator-facing message for a refused grant."""
        raise NotImplementedError

    # Policy --------------------------------------------------------------------------------

    def _effective_margin(self) -> float:
        # A margin longer than the token's life would renew on every call.
        return self._margin if self._lifetime is None else min(self._margin, self._lifetime / 2)

    def _fresh(self, now: float) -> bool:
        if not self._access or self._access == self._refused:
            return False
        if self._expires_at is None:
            return not self._renew_unknown
        return now < self._expires_at - self._effective_margin()

    def _still_valid(self, now: float) -> bool:
        """Good enough to use while renewal is failing for a passing reason."""
        if not self._access or self._access == self._refused:
            return False
        if self._expires_at is None:
            return True
        return now < self._expires_at - min(MIN_VALIDITY, self._effective_margin())

    def _adopt(self, access: str, expires_at: float | None, lifetime: float | None) -> None:
        self._access, self._expires_at, self._lifetime = access, expires_at, lifetime
        self._refused = None
        self._backoff_until = 0.0
        if self._failure is not None:
            self._failure = None
            self._stats.set_auth_ok(True)

    async def _renew(self) -> str:
        if self._fresh(self._clock()):  # someone renewed while we waited for the lock
            return self._access
        await self._before_renew()
        now = self._clock()
        if self._fresh(now):
            return self._access
        if self._failure is not None and now < self._failure_until:
            raise AuthNeedsHumanError(str(self._failure))
        if now < self._backoff_until and self._still_valid(now):
            return self._access
        try:
            issued = await self._grant()
        except GrantRejectedError as exc:
            self._failure = AuthNeedsHumanError(self._instruction(exc))
            self._failure_until = now + self.human_retry_interval
            if exc.status:
                self._stats.token_refresh("invalid_grant" if exc.error == "invalid_grant" else "error")
            self._stats.set_auth_ok(False)
            log.error("auth_needs_human", provider=self.name, error=exc.error, instruction=str(self._failure))
            raise AuthNeedsHumanError(str(self._failure)) from None
        except (TransientError, ProtocolError) as exc:
            self._stats.token_refresh("error")
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            log.warning("token_renewal_failed", provider=self.name, error=str(exc), retry_after=retry_after)
            now = self._clock()
            if self._still_valid(now):
                # Keep working with the current token; try again after a pause, not on every call.
                self._backoff_until = now + (retry_after or TRANSIENT_BACKOFF)
                return self._access
            raise
        self._adopt(issued.access_token, issued.expires_at, issued.lifetime)
        self._stats.token_refresh("ok", self._expires_at)
        self._stats.set_auth_ok(True)
        log.info("token_renewed", provider=self.name, expires_in=issued.lifetime)
        return self._access


class OAuthProvider(_GrantProvider):
    """OAuth 2 with rotating refresh tokens, persisted in a :class:`TokenStore` before use.

    Build it with :meth:`open`, which loads the store (or seeds it from ``box.token``).
    """

    name = "oauth"
    human_retry_interval = math.inf  # a refused refresh token never works again; wait for a new one

    def __init__(
        self,
        endpoint: GrantEndpoint,
        store: TokenStore,
        *,
        client_id: str,
        client_secret: str,
        stats: Stats,
        margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        store_name: str = "the token store",
    ) -> None:
        super().__init__(stats=stats, margin=margin, clock=clock)
        self._endpoint = endpoint
        self._store = store
        self._client_id = client_id
        self._client_secret = client_secret
        self._store_name = store_name
        self._blob: TokenBlob | None = None
        self._pending: TokenBlob | None = None  # rotated at Box but not yet written to the store
        self._pending_lifetime = 0.0
        self._no_token_reason = f"there is no token in {store_name}"

    @classmethod
    async def open(
        cls,
        endpoint: GrantEndpoint,
        store: TokenStore,
        *,
        client_id: str,
        client_secret: str,
        stats: Stats,
        seed: str | None = None,
        margin: float = 300.0,
        clock: Callable[[], float] = time.time,
        store_name: str = "the token store",
    ) -> OAuthProvider:
        """Load the store; if it is empty, seed it from ``seed`` (the ``box.token`` blob; invalid → ConfigError).

        An unreadable or invalid store is not fatal: ``token()`` then asks for ``boxd token import``.
        """
        self = cls(
            endpoint,
            store,
            client_id=client_id,
            client_secret=client_secret,
            stats=stats,
            margin=margin,
            clock=clock,
            store_name=store_name,
        )
        try:
            blob = await store.load()
        except TokenBlobError as exc:
            self._no_token_reason = str(exc)
            return self
        if blob is None and seed:
            blob = TokenBlob.from_json(seed, source="box.token")
            await store.save(blob)
        if blob is not None:
            self._adopt_blob(blob)
        return self

    def _adopt_blob(self, blob: TokenBlob) -> None:
        self._blob, self._pending = blob, None
        self._renew_unknown = bool(blob.refresh_token)
        self._adopt(blob.access_token, blob.expires_at, None if blob.expires_in is None else float(blob.expires_in))

    async def reload_if_changed(self) -> bool:
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> bool:
        blob = await self._store.reload_if_changed()
        if blob is None:
            return False
        self._adopt_blob(blob)
        log.info("token_imported", provider=self.name, expires_at=self._expires_at)
        return True

    async def _before_renew(self) -> None:
        # ``boxd token import`` (or another process) may have replaced the token: its refresh
        # token is then the only one that still works.
        await self._reload()

    async def _grant(self) -> _Issued:
        if self._pending is None:
            if self._blob is None or not self._blob.refresh_token:
                reason = "the stored token has no refresh token" if self._blob else self._no_token_reason
                raise GrantRejectedError("no_refresh_token", reason, status=0)
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self._blob.refresh_token,
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            }
            # Shielded: once Box has rotated the refresh token, a cancellation before the new
            # one is on disk would lose it. The endpoint's timeout bounds this.
            with anyio.CancelScope(shield=True):
                answer = await self._endpoint.grant(form)
                self._pending_lifetime = answer.expires_in
                self._pending = self._blob.rotated(
                    answer.access_token, answer.refresh_token, answer.expires_in, self._clock()
                )
                blob = await self._save_pending(self._pending)
        else:
            blob = await self._save_pending(self._pending)
        lifetime = self._pending_lifetime
        return _Issued(blob.access_token, blob.expires_at or self._clock() + lifetime, lifetime)

    async def _save_pending(self, blob: TokenBlob) -> TokenBlob:
        try:
            await self._store.save(blob)
        except TokenStoreWriteError:
            # Keep the rotated token in memory (Box has spent the old one) and hand nothing out
            # until it is on disk: the next token() writes it again.
            log.error("token_store_write_failed", provider=self.name, store=self._store_name)
            raise
        self._blob, self._pending = blob, None
        return blob

    def _instruction(self, exc: GrantRejectedError) -> str:
        reason = exc.description if exc.status == 0 else f"Box answered {exc}"
        if exc.error in ("invalid_client", "unauthorized_client"):
            return (
                f"Box refused boxd's OAuth client ({reason}): check box.client_id and box.client_secret "
                "against the Box app in the Developer Console."
            )
        return (
            f"boxd cannot refresh its Box token ({reason}); a human must authorise boxd again. Run "
            f'`rclone authorize "box" {self._client_id} <client_secret>` (<client_secret> is box.client_secret) '
            "on a machine with a web browser, then give the JSON token it prints to `boxd token import` "
            f"on this host (it replaces {self._store_name}); waiting jobs resume on their own."
        )


class JwtProvider(_GrantProvider):
    """Box JWT (server authentication): a signed assertion per grant, no refresh token."""

    name = "jwt"

    def __init__(
        self,
        endpoint: GrantEndpoint,
        config: JwtAppConfig,
        *,
        stats: Stats,
        margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(stats=stats, margin=margin, clock=clock)
        self._endpoint = endpoint
        self.config = config

    async def _grant(self) -> _Issued:
        form = {
            "grant_type": JWT_GRANT,
            "assertion": jwt_assertion(self.config, self._clock()),
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
        }
        answer = await self._endpoint.grant(form)
        return _Issued(answer.access_token, self._clock() + answer.expires_in, answer.expires_in)

    def _instruction(self, exc: GrantRejectedError) -> str:
        sub_type, sub = self.config.subject
        return (
            f"Box refused the JWT grant of box.config_file {self.config.path} ({exc}): check that the app is "
            f"authorised in the Admin Console, that the key {self.config.key_id!r} is still registered, that "
            f"{sub_type} {sub} is right, and that this host's clock is correct."
        )


class ClientCredentialsProvider(_GrantProvider):
    """Box client-credentials grant (CCG) for an enterprise or a user subject."""

    name = "ccg"

    def __init__(
        self,
        endpoint: GrantEndpoint,
        *,
        client_id: str,
        client_secret: str,
        subject_type: str,
        subject_id: str,
        stats: Stats,
        margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(stats=stats, margin=margin, clock=clock)
        self._endpoint = endpoint
        self._client_id = client_id
        self._client_secret = client_secret
        self._subject = (subject_type, subject_id)

    async def _grant(self) -> _Issued:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "box_subject_type": self._subject[0],
            "box_subject_id": self._subject[1],
        }
        answer = await self._endpoint.grant(form)
        return _Issued(answer.access_token, self._clock() + answer.expires_in, answer.expires_in)

    def _instruction(self, exc: GrantRejectedError) -> str:
        return (
            f"Box refused the client-credentials grant ({exc}): check box.client_id, box.client_secret, "
            f"box.subject_type ({self._subject[0]}) and box.subject_id ({self._subject[1]}), and that the app "
            "is authorised in the Admin Console."
        )


class StaticTokenProvider:
    """A configured access token (``box.access_token``): never renewed; once Box refuses it, a human must act."""

    name = "static"
    expires_at: float | None = None

    def __init__(self, token: str, *, stats: Stats) -> None:
        self._token = token
        self._stats = stats
        self._refused = False

    def __repr__(self) -> str:
        return f"StaticTokenProvider(refused={self._refused})"

    __str__ = __repr__

    async def token(self) -> str:
        if self._refused:
            raise AuthNeedsHumanError(
                "Box refused box.access_token, which cannot be refreshed: set a new access token or configure "
                "OAuth (boxd token import), JWT (box.config_file) or client credentials."
            )
        return self._token

    async def invalidate(self, token: str) -> None:
        if token == self._token and not self._refused:
            self._refused = True
            self._stats.set_auth_ok(False)
            log.error("auth_needs_human", provider=self.name, error="static_token_refused")

    async def reload_if_changed(self) -> bool:
        return False


async def provider_from_settings(
    box: BoxSettings,
    state_dir: Path,
    http: aiohttp.ClientSession,
    stats: Stats,
    clock: Callable[[], float] = time.time,
    *,
    request_timeout: float = 30.0,
) -> TokenProvider:
    """The provider ``[box]`` asks for: ``access_token`` > ``config_file`` (JWT) > ``client_credentials`` > OAuth.

    Reads files (the JWT config, the token store) in a worker thread. Incomplete or invalid
    settings raise :class:`ConfigError` naming the key or file.
    """
    access_token = box.access_token.get_secret_value() if box.access_token is not None else ""
    if access_token:
        return StaticTokenProvider(access_token, stats=stats)
    endpoint = TokenEndpoint(http, box.token_url, timeout=request_timeout, stats=stats)
    margin = box.token_refresh_margin
    if box.config_file is not None:
        config = await anyio.to_thread.run_sync(load_jwt_config, box.config_file)
        return JwtProvider(endpoint, config, stats=stats, margin=margin, clock=clock)
    client_secret = box.client_secret.get_secret_value() if box.client_secret is not None else ""
    grant = "box.client_credentials" if box.client_credentials else "OAuth (box.token / boxd token import)"
    required = (("box.client_id", box.client_id), ("box.client_secret", client_secret))
    missing = [name for name, value in required if not value]
    if box.client_credentials and not box.subject_id:
        missing.append("box.subject_id")
    if missing:
        raise ConfigError(f"{' and '.join(missing)} must be set for {grant}")
    if box.client_credentials:
        return ClientCredentialsProvider(
            endpoint,
            client_id=box.client_id,
            client_secret=client_secret,
            subject_type=box.subject_type,
            subject_id=box.subject_id,
            stats=stats,
            margin=margin,
            clock=clock,
        )
    store = FileTokenStore.in_state_dir(state_dir)
    try:
        return await OAuthProvider.open(
            endpoint,
            store,
            client_id=box.client_id,
            client_secret=client_secret,
            stats=stats,
            seed=box.token.get_secret_value() if box.token is not None else None,
            margin=margin,
            clock=clock,
            store_name=f"the token store {store.path}",
        )
    except TokenStoreWriteError as exc:
        raise ConfigError(f"{exc} (check daemon.state_dir)") from None
