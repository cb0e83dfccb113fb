"""Configuration: TOML, environment and overrides, validated with one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from boxd.errors import ConfigError
from boxd.settings import MIB, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "boxd.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_design(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""))
    assert (s.box.upload_cutoff, s.box.commit_retries, s.box.list_chunk) == (50 * MIB, 100, 1000)
    assert (s.box.api_calls_per_minute, s.box.uploads_per_minute, s.box.root_folder_id) == (1000, 240, "0")
    assert s.daemon.socket == Path("/run/boxd/boxd.sock") and s.daemon.socket_mode == 0o660
    assert s.http.listen == "127.0.0.1:9464"


def test_sizes_durations_and_modes_accept_human_forms(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            '[box]\nupload_cutoff = "64MiB"\n[daemon]\nmemory_limit = "1GiB"\n'
            'shutdown_grace = "2m"\nsocket_mode = "0640"\n',
        )
    )
    assert s.box.upload_cutoff == 64 * MIB and s.daemon.memory_limit == 1024 * MIB
    assert s.daemon.shutdown_grace == 120.0 and s.daemon.socket_mode == 0o640


def test_environment_overrides_the_file_and_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[box]\nclient_id = "from-file"\ncommit_retries = 5\n')
    monkeypatch.setenv("BOXD_BOX__COMMIT_RETRIES", "7")
    s = load_settings(path)
    assert (s.box.client_id, s.box.commit_retries) == ("from-file", 7)
    assert load_settings(path, {"box": {"commit_retries": 9}}).box.commit_retries == 9


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[box]\nupload_cutoff = "10MiB"\n', "box", "upload_cutoff must be at least 50MiB"),
        ("[box]\nlist_chunk = 0\n", "box.list_chunk", "greater than or equal to 1"),
        ("[box]\nlist_chunk = 1001\n", "box.list_chunk", "less than or equal to 1000"),
        ('[box]\nroot_folder_id = "abc"\n', "box.root_folder_id", "not a Box folder id"),
        ('[box]\nclient_idd = "typo"\n', "box.client_idd", "unknown key"),
        ('[daemon]\nsocket_mode = "rw"\n', "daemon.socket_mode", "octal"),
        ('[daemon]\nallowed_sources = ["relative/path"]\n', "daemon", "absolute"),
        ('[daemon]\nshutdown_grace = "soon"\n', "daemon.shutdown_grace", "not a duration"),
        ('[http]\nlisten = "9464"\n', "http.listen", "HOST:PORT"),
        ('[box]\napi_url = "ftp://x"\n', "box", "api_url must be an http(s) URL"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message and f": {key}:" in message and words in message, message


def test_secrets_come_from_files_and_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    s = load_settings(write(tmp_path, f'[box]\nclient_secret_file = "{secret}"\n'))
    assert s.box.client_secret is not None and s.box.client_secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    with pytest.raises(ConfigError, match="cannot read client_secret_file"):
        load_settings(write(tmp_path, f'[box]\nclient_secret_file = "{tmp_path / "missing"}"\n'))


def test_an_explicit_missing_file_or_broken_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"boxd\.toml"):
        load_settings(write(tmp_path, "[box\nclient_id = 1"))


def test_the_example_configuration_loads_as_it_is() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "boxd.example.toml"
    s = load_settings(example)
    assert s.box.upload_cutoff == 50 * MIB and s.daemon.allowed_sources == [Path("/srv/backups")]
    assert s.box.token_refresh_margin == 300.0 and s.http.listen == "127.0.0.1:9464"
