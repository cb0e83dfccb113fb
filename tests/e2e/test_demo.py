"""``boxd demo`` end to end, and its interim uploader under the emulator's faults.

The demo runs as ``make demo`` would (a subprocess, stdout not a terminal, so plain progress
lines).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest

from boxd import demo
from boxd.sim.config import MIB, SESSION_MIN_SIZE, Knobs
from boxd.sim.server import SimOptions, running

REPO = Path(__file__).resolve().parents[2]


def test_demo_uploads_the_sample_and_verifies_it(tmp_path: Path) -> None:
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
    files = 1 + 1 + 2 + 1 + demo.PACKS + 1  # config, key, indexes, snapshot, packs, archive
    assert f"uploaded {files}/{files} files" in out
    assert f"verified: all {files} files match their SHA-1 on the emulator" in out
    assert re.search(r"429s honoured: \d+ \(emulator\)", out)
    refreshes = re.search(r"token refreshes: (\d+)", out)
    assert refreshes is not None and int(refreshes.group(1)) >= 1  # tokens live DEMO_TOKEN_TTL s
    assert re.search(r"^  \d+/\d+ files, .* MiB/s", out, re.MULTILINE)  # plain progress lines
    assert (data_dir / "credentials.json").exists()


@pytest.mark.anyio
async def test_interim_uploader_rides_out_faults(tmp_path: Path) -> None:
    """429s, 5xx, connections dropped inside parts, 202 commits and expiring tokens."""
    sample = tmp_path / "sample"
    await anyio.to_thread.run_sync(
        lambda: demo.generate_sample(sample, packs=6, archive_size=SESSION_MIN_SIZE + 12_345, seed=1)
    )
    files = demo.scan(sample)
    tally = demo.Tally(len(files), sum(f.size for f in files))
    knobs = Knobs(part_size=4 * MIB, commit_202=2, rate_429=0.15, rate_5xx=0.1, drop_mid_part=0.2, token_ttl=1)
    options = SimOptions(port=0, data_dir=tmp_path / "sim")
    async with running(options, knobs) as (state, base), aiohttp.ClientSession() as http:
        state.rng.seed(7)
        credentials = json.loads((options.data_dir / "credentials.json").read_text())
        async with http.post(f"{base}/_sim/tokens") as resp:
            token = await resp.json()
        result = await demo.upload(
            files, ("Backups", "faulty"), credentials, token, tally, chunked_cutoff=SESSION_MIN_SIZE
        )
        async with http.get(f"{base}/_sim/stats") as resp:
            stats = await resp.json()
        async with http.get(f"{base}/_sim/state") as resp:
            snapshot = await resp.json()

    assert result.errors == []
    assert result.uploaded == len(files) == tally.files_done
    assert tally.bytes_done == tally.bytes_total
    checked = demo.verify(sample, ("Backups", "faulty"), snapshot)
    assert checked.problems == [] and checked.checked == len(files)
    assert result.rate_limited == stats["rate_limited"]  # every 429 was seen and waited out
    assert stats["requests"]["POST /api/2.0/files/upload_sessions/{session_id}/commit"]["202"] == 2
    assert result.token_refreshes >= 1 and stats["token_grants"]["refresh_token"] == result.token_refreshes
    assert [s["state"] for s in snapshot["sessions"]] == ["committed"]
