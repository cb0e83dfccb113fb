"""The units in ``systemd/``, checked with systemd's own tools, and boxd run inside their sandbox.

systemd is not PID 1 here, so nothing can ``systemctl start`` them. Instead:

- ``systemd-analyze verify`` reads both units in a scratch root that has the host's unit
  library and stand-ins for the programs they run, so it can resolve every dependency and
  ``ExecStart=``; it must print nothing. ``systemd-analyze security --offline=yes`` rates the
  service; the exposure must stay at 2.0 or less.
- ``systemd-sysusers`` and ``systemd-tmpfiles`` apply ``boxd.sysusers`` and ``boxd.tmpfiles``
  to a scratch root (``--root``), and what they create must match the unit.
- The notify protocol: boxd's datagrams must be byte for byte those of ``systemd-notify``, and
  come from boxd's own PID, which is what ``NotifyAccess=main`` accepts.
- The sandbox: a launcher builds, from the unit's own directives, what systemd would build
  with them (libseccomp filters as systemd's seccomp-util.c makes them, a read-only file
  system but for the state and runtime directories, a private ``/proc`` and ``/dev``, an
  unprivileged user in a user namespace, socket activation, credentials, the watchdog), then
  runs a real upload through it. Another run shows the sandbox refuses what the unit forbids.
  Directives the emulation leaves out are listed in :data:`NOT_EMULATED` with the reason; an
  unknown directive fails the test, so a new one gets a decision.

Needs the Debian packages ``systemd`` and ``python3-seccomp`` (for ``/usr/bin/python3``), root,
and ``unshare``/``mount`` (util-linux, mount).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boxd.settings import DEFAULT_CONFIG, DaemonSettings
from tests.conftest import REPO, require
from tests.simproc import Sim

UNITS = REPO / "systemd"
SERVICE = UNITS / "boxd.service"
SOCKET = UNITS / "boxd.socket"
SYSUSERS = UNITS / "boxd.sysusers"
TMPFILES = UNITS / "boxd.tmpfiles"
MAX_EXPOSURE = 2.0
#: Who runs boxd in the sandbox tests: an unprivileged user that owns nothing (the host has no
#: user boxd, and making one would change the machine).
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

Directives = dict[str, dict[str, list[str]]]


def need_systemd() -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze missing (Debian package systemd)")


def run(*cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def directives(text: str) -> Directives:
    """Section → key → values, in order (keys may repeat; an empty value resets, as in systemd)."""
    sections: Directives = {}
    section: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def unit(path: Path) -> Directives:
    return directives(path.read_text())


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert values, f"{key}= is not set"
    return values[-1]


def seconds(span: str) -> float:
    """A systemd time span (``60``, ``45s``, ``5min``, ``1min 30s``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, span
    return sum(float(n) * units[u] for n, u in parts)


def sysusers_user(path: Path) -> str:
    users = [line.split()[1] for line in path.read_text().splitlines() if line.startswith("u ")]
    assert len(users) == 1, users
    return users[0]


# --- systemd's own checks ---------------------------------------------------------------------


def unit_library() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    pytest.fail("no systemd unit library (sysinit.target) on this machine")


def commands(service: Directives) -> list[str]:
    """The programs the service runs (``ExecStart=`` and friends), prefixes such as ``-`` removed."""
    found = []
    for key, values in service.get("Service", {}).items():
        if key.startswith("Exec"):
            found += [shlex.split(v)[0].lstrip("-@:+!") for v in values]
    return found


def verify_root(tmp_path: Path, units: list[Path]) -> Path:
    """A root for ``systemd-analyze verify --root``: the host's unit library, the units under
    test in /etc/systemd/system, and an executable stand-in for each program they run."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in ("bin", "sbin", "lib"):  # merged /usr, as on Debian
        (root / name).symlink_to(f"usr/{name}")
    shutil.copytree(unit_library(), root / "usr/lib/systemd/system", symlinks=True)
    for path in units:
        shutil.copy(path, root / "etc/systemd/system" / path.name)
        for program in commands(unit(path)):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


@pytest.mark.parametrize("path", [SERVICE, SOCKET], ids=lambda p: p.name)
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path, path: Path) -> None:
    need_systemd()
    root = verify_root(tmp_path, [SERVICE, SOCKET])
    result = run("systemd-analyze", "verify", "--man=no", f"--root={root}", path.name)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    # The same check does speak up: a bad value and a missing program are reported.
    broken = root / "etc/systemd/system" / path.name
    broken.write_text(path.read_text().replace("0660", "0x660").replace("/usr/bin/boxd", "/usr/bin/boxd-missing"))
    result = run("systemd-analyze", "verify", "--man=no", f"--root={root}", path.name)
    assert result.stdout + result.stderr != ""


def test_the_service_exposure_is_at_most_2_0() -> None:
    need_systemd()
    result = run(
        "systemd-analyze",
        "security",
        "--offline=yes",
        f"--threshold={int(MAX_EXPOSURE * 10)}",
        "--no-pager",
        str(SERVICE),
    )
    found = re.search(r"Overall exposure level for boxd\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    open_items = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert exposure <= MAX_EXPOSURE, "\n".join(open_items)
    assert result.returncode == 0, result.stderr  # --threshold agrees


def test_sysusers_creates_the_system_user_and_a_group_backup_software_can_join(tmp_path: Path) -> None:
    require(shutil.which("systemd-sysusers") is not None, "systemd-sysusers missing (Debian package systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # The commented example in boxd.sysusers, as an operator would enable it.
    example = [line.lstrip("#") for line in SYSUSERS.read_text().splitlines() if line.startswith("#m ")]
    assert example == ["m pluton boxd"]
    pluton = tmp_path / "pluton.conf"
    pluton.write_text("u pluton -\n" + "\n".join(example) + "\n")
    result = run("systemd-sysusers", f"--root={root}", str(SYSUSERS), str(pluton))
    assert result.returncode == 0, result.stderr

    passwd = {e[0]: e for e in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())}
    groups = {e[0]: e for e in (line.split(":") for line in (root / "etc/group").read_text().splitlines())}
    name, _, uid, gid, _, home, shell = passwd["boxd"]
    assert 0 < int(uid) < 1000, "a system user"
    assert groups["boxd"][2] == gid, "its own group boxd"
    assert home == str(DaemonSettings.model_validate({}).state_dir)
    assert shell.endswith("nologin")
    assert "pluton" in groups["boxd"][3].split(",")
    service = unit(SERVICE)["Service"]
    sock = unit(SOCKET)["Socket"]
    assert one(service, "User") == one(service, "Group") == name == sysusers_user(SYSUSERS)
    assert one(sock, "SocketUser") == one(sock, "SocketGroup") == name


def test_tmpfiles_creates_the_directories_the_unit_and_the_daemon_expect(tmp_path: Path) -> None:
    require(shutil.which("systemd-tmpfiles") is not None, "systemd-tmpfiles missing (Debian package systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    assert run("systemd-sysusers", f"--root={root}", str(SYSUSERS)).returncode == 0
    result = run("systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES))
    assert (result.returncode, result.stderr) == (0, "")

    uid = next(
        int(e[2])
        for e in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
        if e[0] == "boxd"
    )
    service = unit(SERVICE)["Service"]
    defaults = DaemonSettings.model_validate({})
    for kind, base, path in (("Runtime", "/run", defaults.socket.parent), ("State", "/var/lib", defaults.state_dir)):
        assert Path(base, one(service, f"{kind}Directory")) == path
        st = (root / str(path).lstrip("/")).stat()
        assert (st.st_uid, st.st_gid) == (uid, uid), path
        assert f"{st.st_mode & 0o7777:04o}" == one(service, f"{kind}DirectoryMode"), path
    assert Path("/etc", one(service, "ConfigurationDirectory")) == DEFAULT_CONFIG.parent


def test_the_units_agree_with_the_daemon_and_with_each_other() -> None:
    service, sock = unit(SERVICE), unit(SOCKET)
    s = service["Service"]
    defaults = DaemonSettings.model_validate({})
    assert one(s, "Type") == "notify" and one(s, "NotifyAccess") == "main"
    assert shlex.split(one(s, "ExecStart"))[1:] == ["serve"]
    assert shlex.split(one(s, "ExecReload"))[1:] == ["-HUP", "$MAINPID"]
    assert seconds(one(s, "WatchdogSec")) >= 10
    assert seconds(one(s, "TimeoutStopSec")) > defaults.shutdown_grace
    assert one(s, "Restart") == "on-failure"
    # Socket activation: the socket outlives the service and its directory.
    assert one(sock["Socket"], "ListenStream") == str(defaults.socket)
    assert one(sock["Socket"], "SocketMode") == f"{defaults.socket_mode:04o}"
    assert one(sock["Socket"], "Service") == SERVICE.name
    assert one(s, "RuntimeDirectoryPreserve") == "yes"
    assert SOCKET.name in service["Unit"]["Wants"] and SOCKET.name in one(service["Unit"], "After")
    assert one(service["Install"], "Also") == SOCKET.name


# --- the notify protocol --------------------------------------------------------------------------


@contextlib.contextmanager
def notify_socket(tmp_path: Path, *, abstract: bool = False) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket like systemd's notify socket (credentials on); yields its NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(10)
    if abstract:
        name = f"boxd-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        os.chmod(address, 0o666)
    try:
        yield address, sock
    finally:
        sock.close()


def receive(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and the PID the kernel vouches for (what systemd checks for NotifyAccess=)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pids = [struct.unpack("3i", d)[0] for level, kind, d in ancillary if kind == socket.SCM_CREDENTIALS]
    assert len(pids) == 1
    return data, pids[0]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_boxd_sends_the_datagrams_systemd_notify_sends_from_its_own_pid(tmp_path: Path, abstract: bool) -> None:
    require(shutil.which("systemd-notify") is not None, "systemd-notify missing (Debian package systemd)")
    cases = [
        (["--ready", "--status=serving; 2 job(s) recovered"], ["READY=1", "STATUS=serving; 2 job(s) recovered"]),
        (["WATCHDOG=1"], ["WATCHDOG=1"]),
        (["STOPPING=1", "STATUS=draining"], ["STOPPING=1", "STATUS=draining"]),
    ]
    sender = "import sys; from boxd import systemd; sys.exit(0 if systemd.notify(*sys.argv[1:]) else 1)"
    with notify_socket(tmp_path, abstract=abstract) as (address, sock):
        env = {**os.environ, "NOTIFY_SOCKET": address}
        for cli, states in cases:
            # --no-block: no BARRIER=1 round trip (a reply systemd would send, and we don't).
            result = run("systemd-notify", "--no-block", *cli, env=env)
            assert result.returncode == 0, result.stderr
            theirs, their_pid = receive(sock)
            child = subprocess.Popen([sys.executable, "-c", sender, *states], env=env)
            assert child.wait(timeout=30) == 0
            ours, our_pid = receive(sock)
            assert ours == theirs == "\n".join(states).encode()
            # boxd speaks for itself, so NotifyAccess=main suffices; systemd-notify, a child,
            # has to claim its parent's PID (which only root may do).
            assert our_pid == child.pid
            assert their_pid == os.getpid()


# --- the sandbox ---------------------------------------------------------------------------------
#
# The launcher runs as root under /usr/bin/python3 (which has Debian's libseccomp binding)
# inside `unshare --mount`, builds the sandbox and execs boxd with the same PID, as systemd
# does. Its functions are shipped to that interpreter as source, so they import what they use.

#: [Service] keys the emulation reproduces.
EMULATED = {
    "User", "Group", "UMask", "Environment", "ExecStart", "WatchdogSec", "TimeoutStopSec", "ExecReload",
    "StateDirectory", "RuntimeDirectory", "LoadCredential", "NoNewPrivileges", "PrivateUsers",
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectProc", "ProcSubset",
    "RestrictAddressFamilies", "RestrictNamespaces", "MemoryDenyWriteExecute", "SystemCallFilter",
    "SystemCallErrorNumber", "SystemCallArchitectures", "CapabilityBoundingSet", "AmbientCapabilities",
}  # fmt: skip
#: [Service] keys it leaves out, and why leaving them out cannot hide a problem from the test.
NOT_EMULATED = {
    "Type": "the notify protocol is checked directly",
    "NotifyAccess": "the PID of each datagram is checked",
    "Restart": "a policy of the service manager",
    "RestartSec": "a policy of the service manager",
    "RestartPreventExitStatus": "a policy of the service manager",
    "TimeoutStartSec": "READY=1 comes within seconds",
    "SyslogIdentifier": "journald only",
    "StateDirectoryMode": "checked against boxd.tmpfiles",
    "RuntimeDirectoryMode": "checked against boxd.tmpfiles",
    "RuntimeDirectoryPreserve": "only matters between runs",
    "ConfigurationDirectory": "read-only like the rest of the file system",
    "ConfigurationDirectoryMode": "read-only like the rest of the file system",
    "DevicePolicy": "the private /dev has only the pseudo devices",
    "PrivateIPC": "boxd uses no SysV IPC",
    "PrivateMounts": "the service runs in a mount namespace of its own",
    "RemoveIPC": "boxd uses no SysV IPC",
    "KeyringMode": "boxd uses no kernel keyring",
    "ProtectKernelTunables": "/proc/sys and /sys are read-only for an unprivileged user anyway",
    "ProtectKernelModules": "no capabilities: loading modules is refused anyway",
    "ProtectKernelLogs": "no capabilities: reading the kernel log is refused anyway",
    "ProtectControlGroups": "no capabilities: cgroups are read-only anyway",
    "ProtectClock": "no capabilities: setting clocks is refused anyway (and @clock is filtered)",
    "ProtectHostname": "no capabilities: sethostname is refused anyway",
    "RestrictRealtime": "sched_setscheduler is in @resources, filtered",
    "RestrictSUIDSGID": "boxd creates no set-ID files",
    "LockPersonality": "nothing in boxd calls personality()",
}


def syscall_groups() -> dict[str, list[str]]:
    """The groups of ``systemd-analyze syscall-filter``: name → members (calls and groups)."""
    out = run("systemd-analyze", "syscall-filter", "--no-pager").stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    assert "@system-service" in groups, out
    return groups


def allowed_syscalls(filters: list[str]) -> list[str]:
    """What a list of ``SystemCallFilter=`` values allows: systemd's allow-list semantics (the
    first value allows and brings @default; ``~`` values then take calls away)."""
    groups = syscall_groups()

    def expand(name: str) -> set[str]:
        return set().union(*(expand(m) for m in groups[name])) if name.startswith("@") else {name}

    allowed: set[str] = set()
    for i, value in enumerate(filters):
        deny = value.startswith("~")
        assert i > 0 or not deny, "the emulation knows allow lists only"
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names | (expand("@default") if i == 0 else set())
    return sorted(allowed)


def _sandbox_mounts(spec: dict[str, Any]) -> None:
    """ProtectSystem=strict (all read-only but the writable paths), ProtectHome=read-only,
    PrivateTmp (writable), ProtectProc=invisible + ProcSubset=pid, PrivateDevices."""
    import os
    import subprocess

    def mount(*args: str) -> None:
        subprocess.run(["mount", "-n", *args], check=True)

    def cover(ancestor: str, needed: list[str]) -> None:
        # Host directories the service user could not traverse (/root holding a pyenv Python,
        # pytest's 0700 temporary directories): a 0755 tmpfs with only the needed entries.
        depth = len(ancestor.rstrip("/").split("/"))
        children = sorted({"/".join(p.split("/")[: depth + 1]) for p in needed if p.startswith(ancestor + "/")})
        stashes = []
        for i, child in enumerate(children):
            stash = f"{spec['stash']}/{len(os.listdir(spec['stash']))}-{i}"
            os.mkdir(stash) if os.path.isdir(child) else open(stash, "w").close()
            mount("--bind", child, stash)
            stashes.append(stash)
        mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", ancestor)
        for child, stash in zip(children, stashes, strict=True):
            os.mkdir(child) if os.path.isdir(stash) else open(child, "w").close()
            mount("--bind", stash, child)

    needed = [os.path.realpath(p) for p in spec["needed"] + spec["writable"]]
    while True:
        blocked = [
            a
            for p in needed
            for a in ("/".join(p.split("/")[:n]) for n in range(2, len(p.split("/"))))
            if not os.stat(a).st_mode & 0o001
        ]
        if not blocked:
            break
        cover(min(blocked, key=len), needed)
    for path in spec["writable"]:
        mount("--rbind", path, path)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4].encode().decode("unicode_escape") for line in fh]
    for point in points:
        if point in spec["writable"] or point.startswith(("/proc", "/sys", "/dev")):
            continue
        subprocess.run(["mount", "-n", "-o", "remount,bind,ro", point], check=False, capture_output=True)
    if spec["protect_proc"]:
        mount("-t", "proc", "-o", f"hidepid={spec['protect_proc']},subset={spec['proc_subset']}", "proc", "/proc")
    if spec["private_devices"]:
        dev = f"{spec['stash']}/dev"
        os.mkdir(dev)
        mount("-t", "tmpfs", "-o", "mode=0755,nosuid,noexec", "tmpfs", dev)
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            open(f"{dev}/{name}", "w").close()
            mount("--bind", f"/dev/{name}", f"{dev}/{name}")
        os.mkdir(f"{dev}/shm")
        mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", f"{dev}/shm")
        mount("--move", dev, "/dev")


def _seccomp_filters(spec: dict[str, Any]) -> None:
    """MemoryDenyWriteExecute, RestrictAddressFamilies, RestrictNamespaces and SystemCallFilter
    (+ SystemCallErrorNumber), built as systemd's seccomp-util.c builds them, native ABI only
    (SystemCallArchitectures=native). Several filters: the kernel applies the strictest."""
    import errno
    import mmap
    import socket

    import seccomp  # type: ignore[import-not-found,unused-ignore]

    if spec["mdwe"]:
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        f.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            exe = seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC)
            f.add_rule(seccomp.ERRNO(errno.EPERM), name, exe)
        shm_exec = 0o100000
        f.add_rule(seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
        f.load()
    if spec["address_families"] is not None:
        allowed = {int(getattr(socket, name)) for name in spec["address_families"]}
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        for family in range(64):
            if family not in allowed:
                f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, 64))
        f.load()
    if spec["restrict_namespaces"]:
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        for name in ("unshare", "setns"):
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
            f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags hide in a struct: libc falls back to clone
        f.load()
    refused = seccomp.TRAP if spec["trap_refused"] else seccomp.ERRNO(getattr(errno, spec["syscall_errno"]))
    f = seccomp.SyscallFilter(refused)
    for name in spec["syscalls"]:
        try:
            seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            f.add_rule(seccomp.ALLOW, name)
        except (ValueError, RuntimeError):
            pass  # not a call on this architecture; systemd skips it too
    f.load()  # last: it may refuse seccomp() itself


def _launch(spec: dict[str, Any]) -> None:
    """What systemd does between fork and exec for this unit, then exec (the PID stays)."""
    import ctypes
    import os
    import socket

    _sandbox_mounts(spec)
    uid, gid = spec["uid"], spec["gid"]
    env = dict(spec["env"])
    if spec["listen"]:  # boxd.socket: bind, chown, chmod, listen, pass as fd 3
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(spec["listen"])
        os.chown(spec["listen"], uid, gid)
        os.chmod(spec["listen"], int(spec["socket_mode"], 8))
        sock.listen(128)
        if sock.fileno() != 3:
            os.dup2(sock.fileno(), 3)
        os.set_inheritable(3, True)
        env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="boxd.socket")
    if "WATCHDOG_USEC" in env:
        env["WATCHDOG_PID"] = str(os.getpid())
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.umask(int(spec["umask"], 8))
    libc = ctypes.CDLL(None, use_errno=True)
    if spec["private_users"]:  # map only the service's own user and group, as systemd does
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, cleared by setresuid; /proc/self/*_map need it
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        for name, text in (("uid_map", f"{uid} {uid} 1\n"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1\n")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    if spec["no_new_privileges"] and libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    _seccomp_filters(spec)
    os.chdir("/")
    os.execve(spec["argv"][0], spec["argv"], env)


def _probe(path_args: str) -> None:
    """Run inside the sandbox: try what the unit forbids (and what boxd needs); print the outcomes."""
    import ctypes
    import json
    import mmap
    import os
    import socket
    import threading

    paths = json.loads(path_args)
    out: dict[str, object] = {}

    def attempt(name: str, action: Callable[[], object]) -> None:
        try:
            action()
            out[name] = "ok"
        except OSError as exc:
            out[name] = errno_name(exc.errno)

    def errno_name(code: int | None) -> str:
        import errno

        return errno.errorcode.get(code or 0, str(code))

    def write(path: str) -> None:
        with open(path, "w") as fh:
            fh.write("x")

    def thread() -> None:
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()

    def unshare() -> None:
        if ctypes.CDLL(None, use_errno=True).unshare(0x20000000) != 0:  # CLONE_NEWUTS
            raise OSError(ctypes.get_errno(), "unshare")

    attempt("mmap_wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
    attempt("mmap_rw", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
    attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
    attempt("inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close())
    attempt("affinity", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))  # @resources
    attempt("chown", lambda: os.chown(paths["state"], os.getuid(), os.getgid()))  # @privileged ⊃ @chown
    attempt("unshare", unshare)
    attempt("thread", thread)
    attempt("write_state", lambda: write(paths["state"] + "/probe"))
    attempt("write_tmp", lambda: write(f"/tmp/boxd-probe-{os.getpid()}"))
    attempt("write_elsewhere", lambda: write(paths["elsewhere"] + "/probe"))
    attempt("read_source", lambda: open(paths["source"]).close())
    out["umask"] = f"{os.stat(paths['state'] + '/probe').st_mode & 0o777:04o}"
    out["uid"] = os.getuid()
    out["pid1_visible"] = os.path.exists("/proc/1")
    out["meminfo_visible"] = os.path.exists("/proc/meminfo")
    out["devices"] = sorted(os.listdir("/dev"))
    for done in (paths["state"] + "/probe", f"/tmp/boxd-probe-{os.getpid()}"):
        os.unlink(done)
    print(json.dumps(out))


def shipped(*functions: Callable[..., Any], call: str) -> str:
    """Python source for another interpreter: these functions, then ``call``."""
    body = "\n\n".join(inspect.getsource(f) for f in functions)
    return f"from __future__ import annotations\nfrom typing import Any, Callable\n\n{body}\n\n{call}\n"


def require_sandbox_tools() -> None:
    need_systemd()
    require(os.geteuid() == 0, "building the sandbox needs root (mount namespaces, setuid)")
    require(shutil.which("unshare") is not None and shutil.which("mount") is not None, "unshare/mount missing")
    has_seccomp = Path(SYSTEM_PYTHON).exists() and run(SYSTEM_PYTHON, "-c", "import seccomp").returncode == 0
    require(has_seccomp, f"{SYSTEM_PYTHON} cannot import seccomp (Debian package python3-seccomp)")


class Sandbox:
    """boxd.service's sandbox for one test: paths, the spec the launcher gets, the process."""

    def __init__(self, tmp_path: Path, dropin: str = "") -> None:
        self.root = tmp_path
        self.service = unit(SERVICE)["Service"]
        extra = directives("[Service]\n" + dropin)["Service"]
        for key, values in extra.items():  # a drop-in adds to (or, with an empty value, resets) each key
            self.service[key] = [*self.service.get(key, []), *values] if values else []
        unknown = set(self.service) - EMULATED - set(NOT_EMULATED)
        assert not unknown, f"decide how the sandbox test treats {sorted(unknown)} (EMULATED or NOT_EMULATED)"
        self.state = tmp_path / "state"
        self.run = tmp_path / "run"
        self.credentials = tmp_path / "credentials"
        self.source = tmp_path / "backups"
        self.elsewhere = tmp_path / "elsewhere"
        self.stash = Path(tempfile.mkdtemp(prefix="boxd-sandbox-", dir="/tmp"))
        for path in (self.state, self.run, self.elsewhere, self.source):
            path.mkdir()
        for path in (self.state, self.run, self.elsewhere):
            os.chown(path, NOBODY, NOBODY)
        self.state.chmod(0o700)
        self.run.chmod(0o750)
        self.process: subprocess.Popen[bytes] | None = None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.stash, ignore_errors=True)  # its mounts went with the namespace

    def load_credentials(self) -> None:
        """LoadCredential=ID:PATH: a copy in $CREDENTIALS_DIRECTORY, readable by the service only."""
        self.credentials.mkdir()
        for value in self.service.get("LoadCredential", []):
            name, _, source = value.partition(":")
            target = self.credentials / name
            shutil.copy(source, target)
            os.chown(target, NOBODY, NOBODY)
            target.chmod(0o400)
        os.chown(self.credentials, NOBODY, NOBODY)
        self.credentials.chmod(0o500)

    def spec(
        self, argv: list[str], env: dict[str, str], *, listen: Path | None, needed: list[Path], trap: bool = False
    ) -> dict[str, Any]:
        """The launcher's instructions. ``trap``: a call outside SystemCallFilter= kills the
        process (SIGSYS) instead of failing with SystemCallErrorNumber=, so that even a refusal
        Python would shrug off shows up."""
        s = self.service
        families = one(s, "RestrictAddressFamilies").split() if s.get("RestrictAddressFamilies") else None
        assert one(s, "ProtectSystem") == "strict" and one(s, "ProtectHome") == "read-only"
        assert one(s, "SystemCallArchitectures") == "native"  # libseccomp filters only the native ABI
        # `CapabilityBoundingSet=` (set, empty): no capabilities, as for any unprivileged process here.
        assert s.get("CapabilityBoundingSet", ["unset"]) == [] and not s.get("AmbientCapabilities")
        assert one(s, "PrivateTmp") == "yes"  # emulated as a writable /tmp
        base_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "HOME": str(self.state),  # boxd's home in boxd.sysusers is its state directory
            "USER": "boxd",
            "LOGNAME": "boxd",
            "SHELL": "/usr/sbin/nologin",
            "STATE_DIRECTORY": str(self.state),
            "RUNTIME_DIRECTORY": str(self.run),
        }
        if self.credentials.exists():
            base_env["CREDENTIALS_DIRECTORY"] = str(self.credentials)
        for value in s.get("Environment", []):
            for item in shlex.split(value):
                key, _, val = item.partition("=")
                base_env[key] = val.replace("%d", str(self.credentials))
        if s.get("WatchdogSec"):
            base_env["WATCHDOG_USEC"] = str(int(seconds(one(s, "WatchdogSec")) * 1_000_000))
        return {
            "argv": argv,
            "env": {**base_env, **env},
            "uid": NOBODY,
            "gid": NOBODY,
            "umask": one(s, "UMask"),
            "listen": str(listen) if listen else None,
            "socket_mode": one(unit(SOCKET)["Socket"], "SocketMode"),
            "stash": str(self.stash),
            "needed": [str(p) for p in needed],
            "writable": ["/tmp", "/var/tmp", str(self.state), str(self.run)],
            "protect_proc": one(s, "ProtectProc") if s.get("ProtectProc") else None,
            "proc_subset": one(s, "ProcSubset") if s.get("ProcSubset") else "all",
            "private_devices": one(s, "PrivateDevices") == "yes",
            "private_users": one(s, "PrivateUsers") == "yes",
            "no_new_privileges": one(s, "NoNewPrivileges") == "yes",
            "mdwe": one(s, "MemoryDenyWriteExecute") == "yes",
            "address_families": families,
            "restrict_namespaces": one(s, "RestrictNamespaces") == "yes",
            "syscalls": allowed_syscalls(s.get("SystemCallFilter", [])),
            "syscall_errno": one(s, "SystemCallErrorNumber"),
            "trap_refused": trap,
        }

    def python_paths(self) -> list[Path]:
        """What the service user must reach to run this checkout's boxd: the venv, its base
        interpreter, the checkout (an editable install)."""
        return [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent, REPO]

    def start(self, spec: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
        launcher = shipped(
            _sandbox_mounts, _seccomp_filters, _launch, call="import json, sys\n_launch(json.loads(sys.argv[1]))"
        )
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", SYSTEM_PYTHON, "-c", launcher, json.dumps(spec)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self.process


#: The README's drop-in for a venv install with secrets as credentials; ExecStart points at
#: this checkout's venv (``{prefix}``) and its test config (``{config}``).
DROPIN = """
ExecStart=
ExecStart={prefix}/bin/boxd serve --config {config}
LoadCredential=client_secret:{secrets}/client_secret
Environment=BOXD_BOX__CLIENT_SECRET_FILE=%d/client_secret
LoadCredential=token:{secrets}/token.json
Environment=BOXD_BOX__TOKEN_FILE=%d/token
"""


def test_the_sandbox_refuses_what_the_unit_forbids(tmp_path: Path) -> None:
    require_sandbox_tools()
    box = Sandbox(tmp_path)
    try:
        secret = tmp_path / "source.txt"
        secret.write_text("backup data\n")
        paths = {"state": str(box.state), "elsewhere": str(box.elsewhere), "source": str(secret)}
        probe = shipped(_probe, call="import sys\n_probe(sys.argv[1])")
        argv = [os.path.realpath(sys.executable), "-c", probe, json.dumps(paths)]
        spec = box.spec(argv, {}, listen=None, needed=[*box.python_paths(), box.state, box.elsewhere, secret])
        proc = box.start(spec, tmp_path / "probe.log")
        assert proc.wait(timeout=60) == 0, (tmp_path / "probe.log").read_text()
        seen = json.loads((tmp_path / "probe.log").read_text().splitlines()[-1])
    finally:
        box.close()
    assert seen == {
        "mmap_wx": "EPERM",  # MemoryDenyWriteExecute
        "mmap_rw": "ok",
        "netlink": "EAFNOSUPPORT",  # RestrictAddressFamilies
        "packet": "EAFNOSUPPORT",
        "inet6": "ok",
        "affinity": "EPERM",  # ~@resources
        "chown": "EPERM",  # ~@privileged (even a chown to oneself)
        "unshare": "EPERM",  # RestrictNamespaces
        "thread": "ok",  # clone3 is refused with ENOSYS, threads fall back to clone
        "write_state": "ok",  # StateDirectory
        "write_tmp": "ok",  # PrivateTmp
        "write_elsewhere": "EROFS",  # ProtectSystem=strict: its own directory, yet read-only
        "read_source": "ok",  # sources stay readable
        "umask": "0600",  # UMask=0077
        "uid": NOBODY,
        "pid1_visible": False,  # ProtectProc=invisible
        "meminfo_visible": False,  # ProcSubset=pid
        "devices": ["full", "null", "random", "shm", "tty", "urandom", "zero"],  # PrivateDevices
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_boxd_uploads_inside_the_units_sandbox_with_socket_activation_credentials_and_watchdog(
    tmp_path: Path, sim: Sim
) -> None:
    require_sandbox_tools()
    secrets = tmp_path / "secrets"  # what /etc/boxd/credentials/ holds: root's, 0600
    secrets.mkdir(mode=0o700)
    token = dict(sim.credentials["token"], expiry="2001-01-01T00:00:00Z")  # stale: boxd must refresh first
    (secrets / "token.json").write_text(json.dumps(token))
    (secrets / "client_secret").write_text(sim.credentials["client_secret"] + "\n")
    config = tmp_path / "boxd.toml"
    listen = f"127.0.0.1:{free_port()}"
    box = Sandbox(tmp_path, DROPIN.format(prefix=sys.prefix, config=config, secrets=secrets))
    try:
        c = sim.credentials
        config.write_text(
            "[box]\n"
            + "".join(f"{k} = {json.dumps(c[k])}\n" for k in ("client_id", "api_url", "upload_url", "token_url"))
            + f"[daemon]\nsocket = {json.dumps(str(box.run / 'boxd.sock'))}\nstate_dir = {json.dumps(str(box.state))}\n"
            + f"allowed_sources = [{json.dumps(str(box.source))}]\nshutdown_grace = '5s'\n"
            + f"[http]\nlisten = '{listen}'\n"
        )
        files = {"config": os.urandom(300), "index/i1": os.urandom(5000), "data/00/pack": os.urandom(60_000)}
        files["archive.tar"] = os.urandom(51 * 1024 * 1024)  # a chunked upload session: threads, hashing
        for rel, content in files.items():
            (box.source / rel).parent.mkdir(parents=True, exist_ok=True)
            (box.source / rel).write_bytes(content)
        box.load_credentials()

        with notify_socket(tmp_path) as (address, notify):
            argv = shlex.split(one(box.service, "ExecStart"))
            spec = box.spec(
                argv,
                {"NOTIFY_SOCKET": address},
                listen=box.run / "boxd.sock",
                needed=[*box.python_paths(), config, box.source, box.state, box.run, box.credentials, Path(address)],
                trap=True,
            )
            log = tmp_path / "daemon.log"
            proc = box.start(spec, log)
            messages: list[bytes] = []

            def wait_for(state: bytes, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while not any(state in m.split(b"\n") for m in messages):
                    if state != b"STOPPING=1" and proc.poll() is not None:
                        why = " (SIGSYS: a call outside SystemCallFilter=)" if proc.returncode == -signal.SIGSYS else ""
                        pytest.fail(f"boxd exited with {proc.returncode}{why}\n{log.read_text()}")
                    assert time.monotonic() < deadline, f"no {state!r}: {messages}\n{log.read_text()}"
                    notify.settimeout(0.5)  # then look at the process again
                    with contextlib.suppress(TimeoutError):
                        data, pid = receive(notify)
                        assert pid == proc.pid, "NotifyAccess=main: every message comes from the main process"
                        messages.append(data)

            wait_for(b"READY=1", 60)
            wait_for(b"WATCHDOG=1", seconds(one(box.service, "WatchdogSec")) / 2 + 5)

            # A client as the backup software is one: through the socket systemd made (0660).
            assert f"{(box.run / 'boxd.sock').stat().st_mode & 0o777:04o}" == one(unit(SOCKET)["Socket"], "SocketMode")
            enqueue = [sys.executable, "-m", "boxd", "enqueue", str(box.source), "--to", "Backups/host1", "--wait"]
            result = run(
                *enqueue, "--socket", str(box.run / "boxd.sock"), env={**os.environ, "BOXD_CONFIG": str(config)}
            )
            assert result.returncode == 0, result.stdout + result.stderr + log.read_text()
            uploaded = {f["path"]: f["size"] for f in sim.state()["files"]}
            assert uploaded == {f"Backups/host1/{rel}": len(content) for rel, content in files.items()}
            assert sim.stats()["token_grants"]["refresh_token"] >= 1
            stored = json.loads((box.state / "token.json").read_text())
            assert stored["refresh_token"] != token["refresh_token"], "the rotated token went to the store"
            for path in box.state.iterdir():
                assert path.stat().st_uid == NOBODY and path.stat().st_mode & 0o077 == 0, path  # UMask=0077
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
                assert b"boxd_uploaded_bytes_total" in resp.read()

            # ExecReload=: SIGHUP re-reads the token store and nothing else.
            assert shlex.split(one(box.service, "ExecReload"))[1] == "-HUP"
            proc.send_signal(signal.SIGHUP)
            with urllib.request.urlopen(f"http://{listen}/healthz", timeout=10) as resp:
                assert resp.status == 200
            assert proc.poll() is None

            # systemctl stop: SIGTERM, STOPPING=1, exit 0 within TimeoutStopSec=.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=seconds(one(box.service, "TimeoutStopSec"))) == 0, log.read_text()
            wait_for(b"STOPPING=1", 5)
        assert (box.run / "boxd.sock").exists(), "an activated socket belongs to systemd; boxd leaves it"
    finally:
        box.close()


def test_jwt_auth_with_the_app_config_as_a_credential_works_inside_the_sandbox(tmp_path: Path, sim: Sim) -> None:
    """RS256 signing (cryptography, OpenSSL) under MemoryDenyWriteExecute= and the call filter,
    with the README's credential drop-in for the JWT app's config.json."""
    require_sandbox_tools()
    config = tmp_path / "boxd.toml"
    dropin = f"""
ExecStart=
ExecStart={sys.prefix}/bin/boxd check --config {config}
LoadCredential=box_config.json:{sim.data_dir / "box_config.json"}
Environment=BOXD_BOX__CONFIG_FILE=%d/box_config.json
"""
    box = Sandbox(tmp_path, dropin)
    try:
        c = sim.credentials
        config.write_text(
            "[box]\n"
            + "".join(f"{k} = {json.dumps(c[k])}\n" for k in ("api_url", "upload_url", "token_url"))
            + f"[daemon]\nstate_dir = {json.dumps(str(box.state))}\n"
        )
        box.load_credentials()
        spec = box.spec(
            shlex.split(one(box.service, "ExecStart")),
            {},
            listen=None,
            needed=[*box.python_paths(), config, box.state, box.credentials],
            trap=True,
        )
        log = tmp_path / "check.log"
        assert box.start(spec, log).wait(timeout=60) == 0, log.read_text()
    finally:
        box.close()
    assert "auth:            jwt" in log.read_text()
    assert sim.stats()["token_grants"]["jwt"] >= 1
