"""Box JWT apps for the emulator: ``config.json`` key material and assertion checks.

:func:`make_box_config` writes what Box's Developer Console hands out for a JWT app (an
RSA key pair whose private half is a passphrase-encrypted PKCS#8 PEM);
:func:`load_box_config_keys` recovers the public keys from such a file after a restart;
:class:`JwtVerifier` checks ``urn:ietf:params:oauth:grant-type:jwt-bearer`` assertions the
way Box does (contract section 3.2), raising :class:`JwtError` with Box's
``error_description`` texts.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

TOKEN_AUDIENCE = "https://api.box.com/oauth2/token"
MAX_LIFETIME = 60
"""Seconds an assertion may live: ``exp`` at most this far past now (and past ``iat``)."""
CLOCK_SLACK = 1
"""Seconds forgiven because clients round a float clock to whole seconds."""

MALFORMED = "Invalid JWT assertion"
BAD_ALG = "Please check the 'alg' header."
BAD_KID = '"kid" invalid, unable to lookup correct key'
BAD_SIGNATURE = (
    "Signature verification error. The public key identified by the 'kid' header may not be the key used to sign "
    "the assertion."
)
BAD_ISS = "Please check the 'iss' claim."
BAD_AUD = "Please check the 'aud' claim."
BAD_SUB = "Please check the 'sub' claim. The 'sub' specified is invalid."
BAD_SUB_TYPE = "Please check the 'box_sub_type' claim."
EXPIRED = "Current date/time MUST be before the expiration date/time listed in the 'exp' claim"
BAD_EXP = "Please check the 'exp' claim."
NOT_YET_VALID = (
    "Current date/time MUST be after or equal to the not-before date/time listed in the 'nbf' or 'iat' claim"
)
BAD_JTI = "Please check the 'jti' claim."

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits


class JwtError(Exception):
    """A rejected assertion; ``description`` is Box's error_description text."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True)
class JwtClaims:
    """The claims of an accepted assertion that decide which token is issued."""

    sub: str
    box_sub_type: str  # "enterprise" | "user"
    jti: str
    exp: int


def make_box_config(
    client_id: str, client_secret: str, enterprise_id: str
) -> tuple[dict[str, Any], dict[str, RSAPublicKey]]:
    """Generate an RSA-2048 key; return (config.json dict as Box's Developer Console writes it, {publicKeyID: key}).

    config: ``{"boxAppSettings": {"clientID", "clientSecret", "appAuth": {"publicKeyID",
    "privateKey" (PKCS#8 ENCRYPTED PEM, BestAvailableEncryption with the passphrase),
    "passphrase"}}, "enterpriseID"}``. publicKeyID: 8 lowercase alnum chars; passphrase:
    32 random hex chars.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(8))
    passphrase = secrets.token_hex(16)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase.encode()),
    )
    config: dict[str, Any] = {
        "boxAppSettings": {
            "clientID": client_id,
            "clientSecret": client_secret,
            "appAuth": {"publicKeyID": key_id, "privateKey": pem.decode("ascii"), "passphrase": passphrase},
        },
        "enterpriseID": enterprise_id,
    }
    return config, {key_id: key.public_key()}


def load_box_config_keys(config: Mapping[str, Any]) -> dict[str, RSAPublicKey]:
    """Recover {publicKeyID: public key} from a config dict written earlier (privateKey decrypted with passphrase).

    A restarted emulator with the same data dir thus trusts the same key. Raises
    ``ValueError`` when ``appAuth`` is missing or incomplete, the passphrase is wrong, or
    the key is not RSA.
    """
    try:
        auth = config["boxAppSettings"]["appAuth"]
        key_id, pem, passphrase = auth["publicKeyID"], auth["privateKey"], auth["passphrase"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"config has no complete boxAppSettings.appAuth: {exc!r}") from exc
    if not all(isinstance(v, str) for v in (key_id, pem, passphrase)):
        raise ValueError("boxAppSettings.appAuth values must be strings")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=passphrase.encode())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot decrypt boxAppSettings.appAuth.privateKey: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("boxAppSettings.appAuth.privateKey is not an RSA key")
    return {key_id: key.public_key()}


def _b64url_json(segment: str) -> dict[str, Any]:
    """Decode one unpadded base64url JSON-object segment, or raise ``JwtError(MALFORMED)``."""
    try:
        value = json.loads(_b64url_bytes(segment))
    except (UnicodeDecodeError, ValueError) as exc:
        raise JwtError(MALFORMED) from exc
    if not isinstance(value, dict):
        raise JwtError(MALFORMED)
    return value


def _b64url_bytes(segment: str) -> bytes:
    # JWS compact form forbids padding and the standard alphabet, which b64decode would let through.
    if not _B64URL.fullmatch(segment):
        raise JwtError(MALFORMED)
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtError(MALFORMED) from exc


def _optional_time(claims: Mapping[str, Any], name: str) -> float | None:
    """The numeric date claim ``name`` if present; anything else than a number is rejected."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(f"Please check the '{name}' claim.")
    return value


class JwtVerifier:
    """Checks JWT-bearer assertions for one app and remembers used ``jti`` values.

    ``public_keys`` maps ``publicKeyID`` to key; ``audiences`` are the accepted ``aud``
    values (a string claim; Box's SDKs never send a list). ``clock`` returns Unix seconds.
    """

    def __init__(
        self,
        public_keys: Mapping[str, RSAPublicKey],
        *,
        audiences: Collection[str] = (TOKEN_AUDIENCE,),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = dict(public_keys)
        self._audiences = set(audiences)
        self._clock = clock
        self._used: dict[str, int] = {}  # jti -> exp
        self._expiries: list[tuple[int, str]] = []  # heap of (exp, jti) for pruning

    def add_audience(self, aud: str) -> None:
        """Also accept ``aud`` (e.g. the emulator's own token URL)."""
        self._audiences.add(aud)

    def verify(self, assertion: str, client_id: str) -> JwtClaims:
        """Return the claims of a valid assertion issued by ``client_id``, recording its ``jti``.

        Raises :class:`JwtError` with Box's description on the first failed check; a
        rejected assertion does not consume its ``jti``.
        """
        parts = assertion.split(".")
        if len(parts) != 3:
            raise JwtError(MALFORMED)
        header, claims, signature = _b64url_json(parts[0]), _b64url_json(parts[1]), _b64url_bytes(parts[2])
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _HASHES:
            raise JwtError(BAD_ALG)
        self._check_signature(header, f"{parts[0]}.{parts[1]}".encode("ascii"), signature, _HASHES[alg]())

        if claims.get("iss") != client_id:
            raise JwtError(BAD_ISS)
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud not in self._audiences:
            raise JwtError(BAD_AUD)
        sub_type, sub = claims.get("box_sub_type"), claims.get("sub")
        if sub_type not in ("enterprise", "user"):
            raise JwtError(BAD_SUB_TYPE)
        if not isinstance(sub, str) or not sub:
            raise JwtError(BAD_SUB)

        now = self._clock()
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int):
            raise JwtError(BAD_EXP)
        iat, nbf = _optional_time(claims, "iat"), _optional_time(claims, "nbf")
        if exp <= now:
            raise JwtError(EXPIRED)
        if exp > now + MAX_LIFETIME + CLOCK_SLACK or (iat is not None and exp - iat > MAX_LIFETIME):
            raise JwtError(BAD_EXP)
        if any(t is not None and t > now + CLOCK_SLACK for t in (iat, nbf)):
            raise JwtError(NOT_YET_VALID)

        jti = claims.get("jti")
        if not isinstance(jti, str) or not 16 <= len(jti) <= 128:
            raise JwtError(BAD_JTI)
        self._prune(now)
        if jti in self._used:
            raise JwtError(BAD_JTI)
        self._used[jti] = exp
        heapq.heappush(self._expiries, (exp, jti))
        return JwtClaims(sub=sub, box_sub_type=sub_type, jti=jti, exp=exp)

    def _check_signature(
        self, header: Mapping[str, Any], signing_input: bytes, signature: bytes, digest: hashes.HashAlgorithm
    ) -> None:
        kid = header.get("kid")
        if kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        elif isinstance(kid, str) and kid in self._keys:
            key = self._keys[kid]
        else:
            raise JwtError(BAD_KID)
        try:
            key.verify(signature, signing_input, padding.PKCS1v15(), digest)
        except (InvalidSignature, ValueError) as exc:
            raise JwtError(BAD_SIGNATURE) from exc

    def _prune(self, now: float) -> None:
        # A jti may be reused once every assertion carrying it has expired.
        while self._expiries and self._expiries[0][0] <= now:
            del self._used[heapq.heappop(self._expiries)[1]]
