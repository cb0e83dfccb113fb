"""``boxd check`` and ``boxd token import`` as an operator runs them, against the emulator."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.simproc import Sim, running_sim


def write_config(tmp_path: Path, sim: Sim, **box: str) -> Path:
    creds = sim.credentials
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    values = {
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "api_url": creds["api_url"],
        "upload_url": creds["upload_url"],
        "token_url": creds["token_url"],
        **box,
    }
    lines = ["[box]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()), "[daemon]", f'state_dir = "{state}"']
    path = tmp_path / "boxd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def boxd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "boxd", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    with running_sim(tmp_path / "sim") as s:
        yield s


def test_check_reports_user_space_and_upload_limit(tmp_path: Path, sim: Sim) -> None:
    config = write_config(tmp_path, sim, token=json.dumps(sim.credentials["token"]))
    proc = boxd("check", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "user:            Backup Admin <backup@example.com>" in proc.stdout
    assert "max_upload_size: 5.0 GiB" in proc.stdout and "root folder:     All Files (0)" in proc.stdout
    assert sim.credentials["client_secret"] not in proc.stdout + proc.stderr


def test_check_works_with_the_jwt_app_config(tmp_path: Path, sim: Sim) -> None:
    config = write_config(tmp_path, sim, config_file=str(sim.data_dir / "box_config.json"))
    proc = boxd("check", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "auth:            jwt" in proc.stdout and "boxd sim service account" in proc.stdout


def test_check_fails_clearly_when_the_token_was_revoked(tmp_path: Path, sim: Sim) -> None:
    config = write_config(tmp_path, sim, token=json.dumps(sim.credentials["token"]))
    sim.admin("POST", "/_sim/revoke")
    proc = boxd("check", "--config", str(config))
    assert proc.returncode == 1
    assert "boxd token import" in proc.stderr and "Traceback" not in proc.stderr


def test_check_names_a_bad_config_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[box]\nlist_chunk = 5000\n")
    proc = boxd("check", "--config", str(config))
    assert proc.returncode == 2 and "box.list_chunk" in proc.stderr


def test_token_import_validates_stores_0600_and_check_then_uses_it(tmp_path: Path, sim: Sim) -> None:
    config = write_config(tmp_path, sim)
    bad = boxd("token", "import", "-", "--config", str(config), stdin='{"access_token": "x"}')
    assert bad.returncode == 1 and "refresh" in bad.stderr
    assert not (tmp_path / "state" / "token.json").exists()
    blob = sim.new_token()
    ok = boxd("token", "import", "-", "--config", str(config), stdin=json.dumps(blob))
    assert ok.returncode == 0, ok.stderr
    stored = tmp_path / "state" / "token.json"
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600
    assert blob["refresh_token"] not in ok.stdout + ok.stderr
    assert boxd("check", "--config", str(config)).returncode == 0
