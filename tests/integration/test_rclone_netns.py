"""Real rclone against the Box emulator, inside a network namespace where Box's hosts are local.

rclone's Box backend hard-codes ``https://api.box.com/2.0``, ``https://upload.box.com/api/2.0``
and ``https://app.box.com/api/oauth2/token``. ``box-netns`` (from ``../shared/tools``) makes a
namespace whose hosts file maps those names to 127.0.0.1 and a throwaway CA that rclone trusts
through ``SSL_CERT_FILE``; the emulator listens on 127.0.0.1:443 inside it with the matching
server certificate. rclone is then an independent client: whatever it accepts, Box's real
answers looked like to its authors.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BOX_NETNS, REPO, require
from tests.simproc import running_sim

pytestmark = pytest.mark.netns

MIB = 1024 * 1024
BIG_SIZE = 60 * MIB  # above rclone's 50 MiB upload_cutoff: chunked upload session
SMALL_FILES = 20
REMOTE = "box:backup/host1"
RCLONE_FLAGS = ["--retries", "1", "--low-level-retries", "3", "-vv", "--contimeout", "10s", "--timeout", "30s"]
LOG_TAIL = 30_000  # characters of rclone's log kept in a failure message
# rclone prints a Box error's context_info as a Go byte slice: "([123 34 101 ...])".
_GO_BYTES = re.compile(r"\[(\d{1,3}(?: \d{1,3})+)\]")


@dataclass
class Netns:
    name: str
    certs: Path

    def prefix(self) -> list[str]:
        """Command prefix that runs the rest of the command inside the namespace."""
        return [str(BOX_NETNS), "exec", self.name, str(self.certs), "--"]

    def run(self, *cmd: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Netns]:
    require(BOX_NETNS.exists(), f"box-netns script not found at {BOX_NETNS} (../shared is not in a fresh clone)")
    require(hasattr(os, "geteuid") and os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    require(shutil.which("rclone") is not None, "rclone is not installed")
    ns = Netns(name=f"boxdt{os.getpid()}", certs=tmp_path / "certs")
    try:
        up = subprocess.run(
            [str(BOX_NETNS), "up", ns.name, str(ns.certs)], capture_output=True, text=True, timeout=60, check=False
        )
        assert up.returncode == 0, f"box-netns up failed ({up.returncode}): {up.stdout}{up.stderr}"
        yield ns
    finally:
        subprocess.run([str(BOX_NETNS), "down", ns.name], capture_output=True, timeout=30, check=False)


def _readable(log: str) -> str:
    """Decode the byte slices rclone prints for Box's ``context_info`` so failures show the JSON."""

    def decode(m: re.Match[str]) -> str:
        try:
            return bytes(int(b) for b in m.group(1).split()).decode()
        except (ValueError, UnicodeDecodeError):
            return m.group(0)

    return _GO_BYTES.sub(decode, log)


def _make_source(src: Path) -> None:
    """~20 small files in a sub-folder, one at the top, and a 60 MiB random file."""
    docs = src / "docs"
    docs.mkdir(parents=True)
    for i in range(SMALL_FILES):
        name = f"note {i:02d}.txt" if i % 5 == 0 else f"note_{i:02d}.txt"
        (docs / name).write_bytes(os.urandom(100 + 97 * i))
    (src / "README.txt").write_text("boxd rclone interoperability check\n")
    with open(src / "big.bin", "wb") as f:
        for _ in range(BIG_SIZE // MIB):
            f.write(os.urandom(MIB))


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def _write_rclone_conf(path: Path, creds: dict[str, Any]) -> None:
    token = creds["token"]
    token_json = token if isinstance(token, str) else json.dumps(token, separators=(",", ":"))
    path.write_text(
        "[box]\n"
        "type = box\n"
        f"client_id = {creds['client_id']}\n"
        f"client_secret = {creds['client_secret']}\n"
        f"token = {token_json}\n"
        "box_sub_type = user\n"
    )


# Read the emulator's admin API from inside the namespace (127.0.0.1:443 is not reachable outside).
_ADMIN_SNIPPET = textwrap.dedent(
    """
    import json, ssl, urllib.request
    ctx = ssl.create_default_context()
    out = {}
    for name in ("state", "stats"):
        with urllib.request.urlopen("https://127.0.0.1:443/_sim/" + name, timeout=10, context=ctx) as r:
            out[name] = json.load(r)
    print(json.dumps(out))
    """
)


def test_rclone_copies_checks_and_restores_a_tree_with_a_chunked_upload_through_the_emulator_as_api_box_com(
    netns: Netns, tmp_path: Path
) -> None:
    started = time.monotonic()
    src, back = tmp_path / "src", tmp_path / "back"
    _make_source(src)
    conf = tmp_path / "rclone.conf"
    logs: list[str] = []

    def rclone(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        proc = netns.run("rclone", "--config", str(conf), *RCLONE_FLAGS, *args, timeout=timeout)
        logs.append(f"$ rclone {' '.join(args)}  -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def log() -> str:
        text = _readable("\n".join(logs))
        return text if len(text) <= LOG_TAIL else "...\n" + text[-LOG_TAIL:]

    with running_sim(
        tmp_path / "sim",
        "--tls-cert",
        str(netns.certs / "server.pem"),
        "--tls-key",
        str(netns.certs / "server.key"),
        "--commit-202",
        "2",
        host="127.0.0.1",
        port=443,
        prefix=netns.prefix(),
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    ) as sim:
        _write_rclone_conf(conf, sim.credentials)

        up = rclone("copy", str(src), REMOTE)
        assert up.returncode == 0, f"rclone copy up failed:\n{log()}"

        check = rclone("check", str(src), REMOTE)
        assert check.returncode == 0, f"rclone check found differences:\n{log()}"

        down = rclone("copy", REMOTE, str(back))
        assert down.returncode == 0, f"rclone copy down failed:\n{log()}"

        listing = rclone("lsjson", "-R", "--files-only", "--hash", REMOTE)
        assert listing.returncode == 0, f"rclone lsjson failed:\n{log()}"

        about = rclone("about", "--json", "box:")
        assert about.returncode == 0, f"rclone about failed:\n{log()}"

        admin = netns.run(sys.executable, "-c", _ADMIN_SNIPPET, timeout=30)
        assert admin.returncode == 0, f"reading /_sim/state inside the namespace failed: {admin.stderr}"
        sim_view = json.loads(admin.stdout)

    # Every file came back byte for byte.
    assert _files(back) == _files(src), f"restored tree differs: {_files(back) ^ _files(src)}\n{log()}"
    _, mismatch, errors = filecmp.cmpfiles(src, back, sorted(_files(src)), shallow=False)
    assert not mismatch and not errors, f"content differs: {mismatch} unreadable: {errors}\n{log()}"

    # rclone's own view of the remote: names, sizes and Box's SHA-1s.
    entries = {e["Path"]: e for e in json.loads(listing.stdout)}
    assert set(entries) == _files(src), f"lsjson paths differ: {set(entries) ^ _files(src)}\n{log()}"
    for rel, e in entries.items():
        assert e["Size"] == (src / rel).stat().st_size, f"{rel}: size {e['Size']}\n{log()}"
        assert e.get("Hashes", {}).get("sha1") == _sha1(src / rel), f"{rel}: hashes {e.get('Hashes')}\n{log()}"

    # rclone parsed /users/me into a quota (space_used may lag on real Box, so only the shape).
    usage = json.loads(about.stdout)
    assert usage.get("total", 0) > 0 and usage.get("used", -1) >= 0, f"about reports {usage}\n{log()}"

    # The big file really took the chunked path, and its commit was answered 202 twice first.
    state, stats = sim_view["state"], sim_view["stats"]
    sessions = [s for s in state["sessions"] if s["file_name"] == "big.bin"]
    assert [s["state"] for s in sessions] == ["committed"], f"sessions: {state['sessions']}\n{log()}"
    assert sessions[0]["file_size"] == BIG_SIZE
    assert sessions[0]["parts_uploaded"] == sessions[0]["total_parts"] > 1, sessions[0]
    commits = {k: v for k, v in stats["requests"].items() if k.startswith("POST ") and "commit" in k}
    assert sum(v.get("202", 0) for v in commits.values()) == 2, f"commit answers: {commits}"
    assert sum(v.get("201", 0) + v.get("200", 0) for v in commits.values()) == 1, f"commit answers: {commits}"
    big = [f for f in state["files"] if f["path"] == "backup/host1/big.bin"]
    assert len(big) == 1 and big[0]["size"] == BIG_SIZE and big[0]["sha1"] == _sha1(src / "big.bin"), big

    assert time.monotonic() - started < 90, f"took {time.monotonic() - started:.0f}s\n{log()}"
