"""``boxd sim`` as users run it: a real subprocess, real TLS, real signals."""

from __future__ import annotations

import datetime
import json
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.simproc import running_sim


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_sim_writes_credentials_and_a_jwt_app_config_then_serves_them(tmp_path: Path) -> None:
    with running_sim(tmp_path / "d") as sim:
        creds = sim.credentials
        assert set(creds) == {"client_id", "client_secret", "token", "api_url", "upload_url", "token_url"}
        assert creds["api_url"] == sim.base + "/2.0" and creds["upload_url"] == sim.base + "/api/2.0"
        assert creds["token_url"] == sim.base + "/oauth2/token"
        token = creds["token"]
        assert token["token_type"] == "bearer" and token["refresh_token"]
        assert datetime.datetime.fromisoformat(token["expiry"]) > datetime.datetime.now(datetime.UTC)
        config = json.loads((sim.data_dir / "box_config.json").read_text())
        app = config["boxAppSettings"]
        assert (app["clientID"], app["clientSecret"]) == (creds["client_id"], creds["client_secret"])
        assert "ENCRYPTED PRIVATE KEY" in app["appAuth"]["privateKey"] and config["enterpriseID"]
        assert (sim.data_dir / "credentials.json").stat().st_mode & 0o077 == 0  # holds secrets
        req = urllib.request.Request(
            creds["api_url"] + "/users/me", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp)["type"] == "user"
        sim.process.send_signal(signal.SIGTERM)
        assert sim.process.wait(timeout=10) == 0


def test_sim_keeps_its_app_identity_across_restarts(tmp_path: Path) -> None:
    with running_sim(tmp_path / "d") as first:
        ident = first.credentials["client_id"]
    with running_sim(tmp_path / "d") as second:
        assert second.credentials["client_id"] == ident
        assert second.credentials["token"]["access_token"] != first.credentials["token"]["access_token"]


def test_sim_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with running_sim(tmp_path / "d", "--tls-cert", str(cert), "--tls-key", str(key)) as sim:
        assert sim.credentials["api_url"].startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        req = urllib.request.Request(
            sim.credentials["api_url"] + "/users/me",
            headers={"Authorization": f"Bearer {sim.credentials['token']['access_token']}"},
        )
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            assert json.load(resp)["id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--part-size", "lots"], "size"),
        (["--token-ttl", "soon"], "duration"),
        (["--tls-cert", "/nonexistent"], "--tls-cert and --tls-key go together"),
        (["--rate-window", "0"], "rate_window"),
    ],
)
def test_sim_refuses_bad_flags_with_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "boxd", "sim", "--port", "0", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sim_says_clearly_when_its_port_is_taken_or_its_certificate_unreadable(tmp_path: Path) -> None:
    with running_sim(tmp_path / "first") as first:
        port = first.base.rsplit(":", 1)[1]
        proc = subprocess.run(
            [sys.executable, "-m", "boxd", "sim", "--port", port, "--data-dir", str(tmp_path / "second")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    missing = tmp_path / "missing.pem"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "boxd",
            "sim",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "third"),
            "--tls-cert",
            str(missing),
            "--tls-key",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "cannot load --tls-cert" in proc.stderr and "Traceback" not in proc.stderr
