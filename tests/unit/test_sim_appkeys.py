"""The emulator's JWT app: config.json key material and Box's assertion rules (contract 3.2).

Assertions are signed with PyJWT, an independent implementation, using the private key a
client would decrypt from the generated config.json.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from boxd.sim.appkeys import (
    JwtClaims,
    JwtError,
    JwtVerifier,
    load_box_config_keys,
    make_box_config,
)

CLIENT_ID = "k2hc0kqy8bq1l1hxo2ugybxrx3xfpl0a"
CLIENT_SECRET = "s3cr3ts3cr3ts3cr3ts3cr3ts3cr3t00"
ENTERPRISE_ID = "1234567"
AUD = "https://api.box.com/oauth2/token"
NOW = 1_700_000_000
JTI = "a" * 16

EXPIRED = "Current date/time MUST be before the expiration date/time listed in the 'exp' claim"
NOT_YET_VALID = (
    "Current date/time MUST be after or equal to the not-before date/time listed in the 'nbf' or 'iat' claim"
)


@dataclass
class App:
    """A generated app: its config.json, trusted keys, and the key a client would sign with."""

    config: dict[str, Any]
    public_keys: dict[str, rsa.RSAPublicKey]
    private_key: rsa.RSAPrivateKey

    @property
    def kid(self) -> str:
        return str(self.config["boxAppSettings"]["appAuth"]["publicKeyID"])


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _client_private_key(config: dict[str, Any]) -> rsa.RSAPrivateKey:
    auth = config["boxAppSettings"]["appAuth"]
    key = serialization.load_pem_private_key(auth["privateKey"].encode(), password=auth["passphrase"].encode())
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _new_app() -> App:
    config, public_keys = make_box_config(CLIENT_ID, CLIENT_SECRET, ENTERPRISE_ID)
    return App(config, public_keys, _client_private_key(config))


@pytest.fixture(scope="module")
def app() -> App:
    return _new_app()


@pytest.fixture(scope="module")
def other_app() -> App:
    return _new_app()


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": ENTERPRISE_ID,
        "box_sub_type": "enterprise",
        "aud": AUD,
        "jti": JTI,
        "exp": NOW + 45,
        "iat": NOW,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(app: App, claims: dict[str, Any], *, alg: str = "RS256", kid: str | None = "") -> str:
    """Sign like a client; ``kid=""`` means the app's own key ID, ``None`` means no kid header."""
    headers = None if kid is None else {"kid": kid or app.kid}
    return jwt.encode(claims, app.private_key, algorithm=alg, headers=headers)


def _verifier(app: App, clock: Clock | None = None) -> JwtVerifier:
    return JwtVerifier(app.public_keys, clock=clock or Clock())


def _rejects(verifier: JwtVerifier, assertion: str, description: str) -> None:
    with pytest.raises(JwtError) as info:
        verifier.verify(assertion, CLIENT_ID)
    assert info.value.description == description
    assert str(info.value) == description


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# config.json


def test_make_box_config_writes_the_developer_console_layout(app: App) -> None:
    settings = app.config["boxAppSettings"]
    assert app.config["enterpriseID"] == ENTERPRISE_ID
    assert settings["clientID"] == CLIENT_ID
    assert settings["clientSecret"] == CLIENT_SECRET
    auth = settings["appAuth"]
    assert set(auth) == {"publicKeyID", "privateKey", "passphrase"}
    assert re.fullmatch(r"[a-z0-9]{8}", auth["publicKeyID"])
    assert re.fullmatch(r"[0-9a-f]{32}", auth["passphrase"])
    assert auth["privateKey"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert auth["privateKey"].endswith("-----END ENCRYPTED PRIVATE KEY-----\n")
    assert json.loads(json.dumps(app.config)) == app.config


def test_the_config_private_key_is_rsa_2048_matching_the_returned_public_key(app: App) -> None:
    assert list(app.public_keys) == [app.kid]
    assert app.private_key.key_size == 2048
    assert app.private_key.public_key().public_numbers() == app.public_keys[app.kid].public_numbers()


def test_the_config_private_key_needs_the_passphrase(app: App) -> None:
    pem = app.config["boxAppSettings"]["appAuth"]["privateKey"].encode()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(pem, password=b"wrong passphrase")


def test_two_generated_configs_have_different_keys_and_passphrases(app: App, other_app: App) -> None:
    assert app.kid != other_app.kid
    assert (
        app.config["boxAppSettings"]["appAuth"]["passphrase"]
        != (other_app.config["boxAppSettings"]["appAuth"]["passphrase"])
    )


def test_load_box_config_keys_recovers_the_same_public_key_after_a_json_round_trip(app: App) -> None:
    keys = load_box_config_keys(json.loads(json.dumps(app.config)))
    assert list(keys) == [app.kid]
    assert keys[app.kid].public_numbers() == app.public_keys[app.kid].public_numbers()


def test_a_verifier_built_from_reloaded_keys_accepts_assertions_signed_with_the_config_key(app: App) -> None:
    verifier = JwtVerifier(load_box_config_keys(app.config), clock=Clock())
    assert verifier.verify(_sign(app, _claims()), CLIENT_ID).sub == ENTERPRISE_ID


def test_load_box_config_keys_rejects_a_wrong_passphrase(app: App) -> None:
    config = json.loads(json.dumps(app.config))
    config["boxAppSettings"]["appAuth"]["passphrase"] = "0" * 32
    with pytest.raises(ValueError):
        load_box_config_keys(config)


@pytest.mark.parametrize(
    "config",
    [{}, {"boxAppSettings": {}}, {"boxAppSettings": {"appAuth": {"publicKeyID": "abcd1234"}}}, {"boxAppSettings": 3}],
)
def test_load_box_config_keys_rejects_a_config_without_complete_app_auth(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        load_box_config_keys(config)


# accepted assertions


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
@pytest.mark.parametrize("with_kid", [True, False])
def test_a_valid_assertion_is_accepted_for_each_rs_algorithm_with_or_without_kid(
    app: App, alg: str, with_kid: bool
) -> None:
    assertion = _sign(app, _claims(), alg=alg, kid="" if with_kid else None)
    claims = _verifier(app).verify(assertion, CLIENT_ID)
    assert claims == JwtClaims(sub=ENTERPRISE_ID, box_sub_type="enterprise", jti=JTI, exp=NOW + 45)


def test_a_user_subject_is_accepted_without_iat(app: App) -> None:
    assertion = _sign(app, _claims(sub="33333", box_sub_type="user", iat=None))
    assert _verifier(app).verify(assertion, CLIENT_ID).box_sub_type == "user"


def test_the_kid_header_selects_among_several_keys(app: App, other_app: App) -> None:
    verifier = JwtVerifier({**app.public_keys, **other_app.public_keys}, clock=Clock())
    assert verifier.verify(_sign(app, _claims(jti="x" * 16)), CLIENT_ID).jti == "x" * 16
    assert verifier.verify(_sign(other_app, _claims(jti="y" * 16)), CLIENT_ID).jti == "y" * 16


def test_an_added_audience_is_accepted(app: App) -> None:
    verifier = _verifier(app)
    assertion = _sign(app, _claims(aud="https://127.0.0.1:8443/oauth2/token"))
    _rejects(verifier, assertion, "Please check the 'aud' claim.")
    verifier.add_audience("https://127.0.0.1:8443/oauth2/token")
    assert verifier.verify(assertion, CLIENT_ID).jti == JTI


def test_custom_audiences_replace_the_default(app: App) -> None:
    verifier = JwtVerifier(app.public_keys, audiences=["https://sim/oauth2/token"], clock=Clock())
    _rejects(verifier, _sign(app, _claims()), "Please check the 'aud' claim.")
    assert verifier.verify(_sign(app, _claims(aud="https://sim/oauth2/token")), CLIENT_ID).jti == JTI


# header and signature


@pytest.mark.parametrize(
    "assertion",
    [
        "",
        "abc.def",
        "a.b.c.d",
        "!!!.e30.sig",
        f"{_b64(b'not json')}.{_b64(b'{}')}.c2ln",
        f"{_b64(b'[1]')}.{_b64(b'{}')}.c2ln",
        f"{_b64(json.dumps({'alg': 'RS256'}).encode())}.{_b64(b'[]')}.c2ln",
        f"{_b64(json.dumps({'alg': 'RS256'}).encode())}.{_b64(b'{}')}=.c2ln",
        f"{_b64(json.dumps({'alg': 'RS256'}).encode())}.{_b64(b'{}')}.c2l+",
        f"{_b64(json.dumps({'alg': 'RS256'}).encode())}.{_b64(b'{}')}.abcde",
    ],
)
def test_a_malformed_assertion_is_rejected(app: App, assertion: str) -> None:
    _rejects(_verifier(app), assertion, "Invalid JWT assertion")


@pytest.mark.parametrize("alg", ["PS256", "HS256", "none", None])
def test_an_algorithm_other_than_rs256_rs384_rs512_is_rejected(app: App, alg: str | None) -> None:
    if alg == "PS256":
        assertion = _sign(app, _claims(), alg="PS256")
    elif alg == "HS256":
        assertion = jwt.encode(_claims(), CLIENT_SECRET, algorithm="HS256", headers={"kid": app.kid})
    else:
        header = {"kid": app.kid} if alg is None else {"alg": alg, "kid": app.kid}
        assertion = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}."
    _rejects(_verifier(app), assertion, "Please check the 'alg' header.")


def test_an_unknown_kid_is_rejected(app: App) -> None:
    _rejects(_verifier(app), _sign(app, _claims(), kid="zzzz9999"), '"kid" invalid, unable to lookup correct key')


def test_a_missing_kid_is_rejected_when_several_keys_are_known(app: App, other_app: App) -> None:
    verifier = JwtVerifier({**app.public_keys, **other_app.public_keys}, clock=Clock())
    _rejects(verifier, _sign(app, _claims(), kid=None), '"kid" invalid, unable to lookup correct key')


SIGNATURE_ERROR = (
    "Signature verification error. The public key identified by the 'kid' header may not be the key used to sign "
    "the assertion."
)


def test_an_assertion_signed_with_another_key_is_rejected(app: App, other_app: App) -> None:
    _rejects(_verifier(app), _sign(other_app, _claims(), kid=app.kid), SIGNATURE_ERROR)


def test_a_tampered_payload_is_rejected(app: App) -> None:
    header, _, signature = _sign(app, _claims()).split(".")
    forged = _b64(json.dumps(_claims(sub="1")).encode())
    _rejects(_verifier(app), f"{header}.{forged}.{signature}", SIGNATURE_ERROR)


def test_a_signature_made_with_another_hash_is_rejected(app: App) -> None:
    header = _b64(json.dumps({"alg": "RS512", "kid": app.kid}).encode())
    _, payload, signature = _sign(app, _claims(), alg="RS256").split(".")
    _rejects(_verifier(app), f"{header}.{payload}.{signature}", SIGNATURE_ERROR)


def test_an_empty_signature_is_rejected(app: App) -> None:
    header, payload, _ = _sign(app, _claims()).split(".")
    _rejects(_verifier(app), f"{header}.{payload}.", SIGNATURE_ERROR)


# claims


@pytest.mark.parametrize("iss", ["someone-else", None])
def test_an_iss_other_than_the_client_id_is_rejected(app: App, iss: str | None) -> None:
    _rejects(_verifier(app), _sign(app, _claims(iss=iss)), "Please check the 'iss' claim.")


def test_the_iss_is_compared_with_the_client_id_given_to_verify(app: App) -> None:
    with pytest.raises(JwtError, match="'iss'"):
        _verifier(app).verify(_sign(app, _claims()), "another-client-id")


@pytest.mark.parametrize(
    "aud", ["https://api.box.com/oauth2/token/", "https://account.box.com/api/oauth2/token", [AUD], None]
)
def test_a_wrong_aud_is_rejected(app: App, aud: Any) -> None:
    _rejects(_verifier(app), _sign(app, _claims(aud=aud)), "Please check the 'aud' claim.")


@pytest.mark.parametrize("box_sub_type", ["admin", "Enterprise", 1, None])
def test_an_invalid_box_sub_type_is_rejected(app: App, box_sub_type: Any) -> None:
    _rejects(_verifier(app), _sign(app, _claims(box_sub_type=box_sub_type)), "Please check the 'box_sub_type' claim.")


@pytest.mark.parametrize("sub", ["", 1234567, None])
def test_an_empty_missing_or_non_string_sub_is_rejected(app: App, sub: Any) -> None:
    _rejects(
        _verifier(app), _sign(app, _claims(sub=sub)), "Please check the 'sub' claim. The 'sub' specified is invalid."
    )


@pytest.mark.parametrize("exp", [NOW, NOW - 1])
def test_an_expired_assertion_is_rejected(app: App, exp: int) -> None:
    _rejects(_verifier(app), _sign(app, _claims(exp=exp, iat=NOW - 30)), EXPIRED)


def test_an_assertion_is_rejected_once_the_clock_reaches_its_exp(app: App) -> None:
    clock = Clock()
    assertion = _sign(app, _claims(jti="late" * 4))
    clock.now = NOW + 45
    _rejects(_verifier(app, clock), assertion, EXPIRED)


@pytest.mark.parametrize("exp", [None, "1700000045", 1_700_000_045.5, True])
def test_a_missing_or_non_integer_exp_is_rejected(app: App, exp: Any) -> None:
    _rejects(_verifier(app), _sign(app, _claims(exp=exp)), "Please check the 'exp' claim.")


def test_an_exp_more_than_60_seconds_ahead_is_rejected(app: App) -> None:
    _rejects(_verifier(app), _sign(app, _claims(exp=NOW + 62, iat=None)), "Please check the 'exp' claim.")


def test_an_exp_60_seconds_ahead_is_accepted_with_a_second_of_rounding_slack(app: App) -> None:
    verifier = _verifier(app, Clock(NOW + 0.9))
    assert verifier.verify(_sign(app, _claims(exp=NOW + 61, iat=None)), CLIENT_ID).exp == NOW + 61
    assert verifier.verify(_sign(app, _claims(exp=NOW + 60, jti="b" * 16)), CLIENT_ID).exp == NOW + 60


def test_an_exp_more_than_60_seconds_after_iat_is_rejected(app: App) -> None:
    _rejects(_verifier(app), _sign(app, _claims(iat=NOW - 20, exp=NOW + 41)), "Please check the 'exp' claim.")


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_an_iat_or_nbf_in_the_future_is_rejected(app: App, claim: str) -> None:
    claims = _claims(**{claim: NOW + 2}, exp=NOW + 50)
    _rejects(_verifier(app), _sign(app, claims), NOT_YET_VALID)


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_an_iat_or_nbf_one_second_ahead_is_forgiven_as_rounding(app: App, claim: str) -> None:
    claims = _claims(**{claim: NOW + 1}, exp=NOW + 50)
    assert _verifier(app).verify(_sign(app, claims), CLIENT_ID).jti == JTI


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_a_non_numeric_iat_or_nbf_is_rejected(app: App, claim: str) -> None:
    _rejects(_verifier(app), _sign(app, _claims(**{claim: "yesterday"})), f"Please check the '{claim}' claim.")


@pytest.mark.parametrize("jti", [None, "", "a" * 15, "a" * 129, 1234567890123456789])
def test_a_missing_short_long_or_non_string_jti_is_rejected(app: App, jti: Any) -> None:
    _rejects(_verifier(app), _sign(app, _claims(jti=jti)), "Please check the 'jti' claim.")


@pytest.mark.parametrize("length", [16, 128])
def test_a_jti_of_16_or_128_chars_is_accepted(app: App, length: int) -> None:
    assert _verifier(app).verify(_sign(app, _claims(jti="j" * length)), CLIENT_ID).jti == "j" * length


def test_a_reused_jti_is_rejected(app: App) -> None:
    verifier = _verifier(app)
    verifier.verify(_sign(app, _claims()), CLIENT_ID)
    _rejects(verifier, _sign(app, _claims(exp=NOW + 50)), "Please check the 'jti' claim.")


def test_a_replayed_assertion_is_rejected(app: App) -> None:
    verifier = _verifier(app)
    assertion = _sign(app, _claims())
    verifier.verify(assertion, CLIENT_ID)
    _rejects(verifier, assertion, "Please check the 'jti' claim.")


def test_a_jti_can_be_used_again_after_the_assertion_that_used_it_expires(app: App) -> None:
    clock = Clock()
    verifier = _verifier(app, clock)
    verifier.verify(_sign(app, _claims()), CLIENT_ID)
    clock.now = NOW + 45
    again = _sign(app, _claims(iat=NOW + 45, exp=NOW + 90))
    assert verifier.verify(again, CLIENT_ID).exp == NOW + 90
    _rejects(verifier, again, "Please check the 'jti' claim.")


def test_a_rejected_assertion_does_not_use_up_its_jti(app: App) -> None:
    verifier = _verifier(app)
    _rejects(verifier, _sign(app, _claims(aud="https://example.com")), "Please check the 'aud' claim.")
    _rejects(verifier, _sign(app, _claims(iat=NOW + 5, exp=NOW + 30)), NOT_YET_VALID)
    _rejects(verifier, _sign(app, _claims(), kid="zzzz9999"), '"kid" invalid, unable to lookup correct key')
    assert verifier.verify(_sign(app, _claims()), CLIENT_ID).jti == JTI


def test_jtis_are_tracked_per_verifier(app: App) -> None:
    assertion = _sign(app, _claims())
    assert _verifier(app).verify(assertion, CLIENT_ID).jti == JTI
    assert _verifier(app).verify(assertion, CLIENT_ID).jti == JTI


def test_jwt_error_carries_the_description() -> None:
    error = JwtError("Please check the 'jti' claim.")
    assert error.description == "Please check the 'jti' claim."
    assert str(error) == "Please check the 'jti' claim."
