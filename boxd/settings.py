"""boxd's configuration: one pydantic-settings model, the only reader of files and environment.

Precedence, lowest first: built-in defaults, the TOML file (``--config``, ``BOXD_CONFIG``,
default ``/etc/boxd/boxd.toml``), environment variables ``BOXD_<SECTION>__<KEY>``, then CLI
flags. :func:`load_settings` turns any validation failure into one :class:`ConfigError` line
naming the key. Secrets are ``SecretStr`` (never shown in reprs or logs) and may be given as
``*_file`` paths instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from boxd.errors import ConfigError
from boxd.units import parse_duration, parse_size

MIB = 1024 * 1024
DEFAULT_CONFIG = Path("/etc/boxd/boxd.toml")

Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def _mode(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value.strip()):
        return int(value.strip(), 8)
    raise ValueError(f'not an octal file mode: {value!r} (use e.g. "0660")')


def _folder_id(value: str) -> str:
    if not value.isdigit():
        raise ValueError(f'not a Box folder id: {value!r} (digits; "0" is the root folder)')
    return value


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def _read_secret_files(self, *names: str) -> dict[str, Any]:
        """``<name>_file`` paths replace ``<name>`` values (e.g. for systemd ``LoadCredential=``)."""
        changes: dict[str, Any] = {}
        for name in names:
            path = getattr(self, f"{name}_file")
            if path is None:
                continue
            try:
                changes[name] = SecretStr(Path(path).read_text().strip())
            except OSError as exc:
                raise ValueError(f"cannot read {name}_file {path}: {exc.strerror}") from None
        return changes


class BoxSettings(_Section):
    """``[box]``: the same options Pluton and rclone offer for Box."""

    client_id: str = Field("", description="OAuth client ID of the Box app")
    client_secret: SecretStr | None = Field(None, description="OAuth client secret of the Box app")
    client_secret_file: Path | None = Field(None, description="file holding client_secret")
    token: SecretStr | None = Field(
        None, description='the JSON token blob of `rclone authorize "box"`; used only while the token store is empty'
    )
    token_file: Path | None = Field(None, description="file holding token")
    access_token: SecretStr | None = Field(None, description="a static access token (no refresh; for tests)")
    root_folder_id: Annotated[str, AfterValidator(_folder_id)] = Field("0", description="folder that paths start in")
    config_file: Path | None = Field(None, description="Box JWT app config.json (service account)")
    client_credentials: bool = Field(False, description="use the client-credentials grant")
    subject_type: Literal["enterprise", "user"] = Field("enterprise", description="client-credentials subject type")
    subject_id: str = Field("", description="enterprise ID or user ID for client credentials")
    upload_cutoff: Size = Field(50 * MIB, description="files from this size up use chunked sessions (≥ 50 MiB)")
    commit_retries: int = Field(100, ge=1, description="how often a commit answered 202 is retried")
    list_chunk: int = Field(1000, ge=1, le=1000, description="items per folder listing page")
    owned_by: str = Field("", description="only consider items owned by this login (email)")
    impersonate: str = Field("", description="user ID to act as (As-User)")
    api_url: str = Field("https://api.box.com/2.0", description="Box API base URL")
    upload_url: str = Field("https://upload.box.com/api/2.0", description="Box upload base URL")
    token_url: str = Field("https://api.box.com/oauth2/token", description="Box token endpoint")
    api_calls_per_minute: int = Field(1000, ge=1, description="pace API calls below this")
    uploads_per_minute: int = Field(240, ge=1, description="pace uploads below this")
    token_refresh_margin: Duration = Field(300.0, description="refresh access tokens this long before expiry")
    ca_file: Path | None = Field(None, description="extra CA bundle (e.g. a TLS-inspecting proxy)")

    @model_validator(mode="after")
    def _check(self) -> BoxSettings:
        if self.upload_cutoff < 50 * MIB:
            raise ValueError(
                f"upload_cutoff must be at least 50MiB (Box's simple-upload limit), got {self.upload_cutoff}"
            )
        for name in ("api_url", "upload_url", "token_url"):
            if not re.match(r"^https?://[^/]+", getattr(self, name)):
                raise ValueError(f"{name} must be an http(s) URL, got {getattr(self, name)!r}")
        changes = self._read_secret_files("client_secret", "token")
        return self.model_copy(update=changes) if changes else self


class DaemonSettings(_Section):
    """``[daemon]``: the local side of boxd."""

    socket: Path = Field(Path("/run/boxd/boxd.sock"), description="control socket")
    socket_mode: Annotated[int, BeforeValidator(_mode)] = Field(0o660, description="permissions of the socket")
    state_dir: Path = Field(Path("/var/lib/boxd"), description="queue database and token store")
    allowed_sources: list[Path] = Field(default_factory=list, description="only files under these may be uploaded")
    transfers: int = Field(4, ge=1, le=64, description="files uploaded in parallel")
    part_concurrency: int = Field(4, ge=1, le=32, description="parts in flight per file")
    memory_limit: Size = Field(256 * MIB, description="upper bound on buffered part bytes")
    shutdown_grace: Duration = Field(30.0, description="time in-flight parts get on SIGTERM")
    max_attempts: int = Field(5, ge=1, description="tries per file before it fails")
    mirror_max_delete_percent: float = Field(50.0, ge=0, le=100, description="refuse mirrors deleting more")

    @model_validator(mode="after")
    def _check(self) -> DaemonSettings:
        for path in self.allowed_sources:
            if not path.is_absolute():
                raise ValueError(f"allowed_sources entries must be absolute paths, got {str(path)!r}")
        return self


class HttpSettings(_Section):
    """``[http]``: health and metrics."""

    listen: Annotated[str, AfterValidator(_listen)] = Field("127.0.0.1:9464", description="HOST:PORT")


class Settings(BaseSettings):
    """All of boxd's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="BOXD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
    )

    box: BoxSettings = Field(default_factory=BoxSettings)  # type: ignore[arg-type]
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)  # type: ignore[arg-type]
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def config_path(explicit: Path | None = None) -> Path:
    """The config file to read: ``--config``, else ``BOXD_CONFIG``, else the default."""
    if explicit is not None:
        return explicit
    env = os.environ.get("BOXD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load_settings(
    path: Path | None = None, overrides: dict[str, Any] | None = None, *, require_file: bool = False
) -> Settings:
    """Read and validate the configuration; raise :class:`ConfigError` with one line naming the key.

    A missing file is fine (defaults and environment apply) unless ``require_file`` or the path
    was given explicitly.
    """
    file = config_path(path)
    if not file.exists():
        if require_file or path is not None:
            raise ConfigError(f"config file {file} does not exist")
        file = None  # type: ignore[assignment]
    loaded = type("LoadedSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": file}})
    try:
        settings: Settings = loaded(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, file)) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"config file {file}: {exc}") from None
    return settings


def _one_line(exc: ValidationError, file: Path | None) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see config/boxd.example.toml)"
    where = f" in {file}" if file else ""
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid configuration{where}: {key}: {message}{more}"
