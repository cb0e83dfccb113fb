"""``boxd demo`` end to end: the emulator, the daemon in the same process, the control socket.

The first test runs the demo as ``make demo`` would (a subprocess, stdout not a terminal, so
plain progress lines); the second runs it in-process on a smaller sample under the emulator's
faults, and looks at the emulator's counters the summary was made from.
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from boxd import demo
from boxd.sim.config import Knobs
from boxd.sim.server import SimOptions, running
from boxd.sim.state import SimState

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def sample_files(packs: int) -> int:
    return 1 + 1 + 2 + 1 + packs + 1  # config, key, indexes, snapshot, packs, archive


def test_demo_uploads_the_sample_through_the_daemon_and_verifies_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "sim"
    proc = subprocess.run(
        [sys.executable, "-m", "boxd", "demo", "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"
    files = sample_files(demo.PACKS)
    assert "boxd demo: daemon ready: control socket /tmp/" in out
    assert re.search(r"^queued job j_\w+: .*/sample → /Backups/demo-host \(copy\)$", out, re.MULTILINE)
    assert re.search(r"^j_\w+ running: \d+/46 files, .*/s, ETA ", out, re.MULTILINE)  # plain progress lines
    assert re.search(rf"^job j_\w+ succeeded: {files} files \({files} done, 0 skipped\)", out, re.MULTILINE)
    assert f"uploaded {files}/{files} files" in out
    assert re.search(r"429s honoured: \d+;", out)
    refreshes = re.search(r"token refreshes: (\d+)", out)
    assert refreshes is not None and int(refreshes.group(1)) >= 1  # tokens live DEMO_TOKEN_TTL s
    assert f"verified: all {files} files match their SHA-1 on the emulator" in out
    assert '"event"' not in out + proc.stderr  # the daemon's JSON log lines went to its log file
    assert (data_dir / "credentials.json").exists()


#: The emulator draws its faults from this seed; its first draw (the daemon's first request to
#: Box) is below 0.05, so that request is answered 429 whatever else happens.
FAULT_SEED = 31


@pytest.mark.anyio
async def test_the_daemon_path_rides_out_faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """429s, 5xx, connections dropped inside parts, 202 commits and 8-second tokens."""
    assert random.Random(FAULT_SEED).random() < 0.05

    @contextlib.asynccontextmanager
    async def seeded(options: SimOptions, knobs: Knobs) -> AsyncIterator[tuple[SimState, str]]:
        async with running(options, knobs) as (state, base):
            state.rng.seed(FAULT_SEED)
            yield state, base

    seen: dict[str, Any] = {}
    report = demo.report

    def spy(upload: demo.Upload, stats: Any, checked: demo.Verification, files_total: int) -> bool:
        seen.update(upload=upload, stats=stats)
        return report(upload, stats, checked, files_total)

    monkeypatch.setattr(demo, "running", seeded)
    monkeypatch.setattr(demo, "report", spy)
    # Rates low enough that no single request runs out of its 5 attempts: the run is about
    # riding faults out, not about giving up on them.
    faults = {"part_size": 4 * MIB, "commit_202": 2, "rate_429": 0.05, "rate_5xx": 0.03, "drop_mid_part": 0.05}
    code = await demo.run_demo(tmp_path / "sim", packs=6, archive_size=50 * MIB + 12_345, faults=faults)
    out = capsys.readouterr().out

    files = sample_files(6)
    assert code == 0, out
    assert f"verified: all {files} files match their SHA-1 on the emulator" in out
    job = seen["upload"].job
    assert job["state"] == "succeeded" and job["files_done"] == files and job["files_failed"] == 0
    stats = seen["stats"]
    assert stats["rate_limited"] >= 1 and f"429s honoured: {stats['rate_limited']};" in out
    assert stats["requests"]["POST /api/2.0/files/upload_sessions/{session_id}/commit"]["202"] == 2  # chunked path
    socket = re.search(r"control socket (\S+),", out)
    assert socket is not None and not Path(socket.group(1)).parent.exists()  # the daemon stopped, dirs removed
