"""A full disk ends a run with one line, no half metrics line, no temp file, the checkpoint intact.

These tests mount a small tmpfs, which needs root (CI runs as root); elsewhere they are skipped
with that reason, and test_stopping.py's fault-injected short write still runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--model", "tiny", "--threads", "1", "--seed", "7", "--quiet"]


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill the filesystem, then free `leave` bytes again."""
    spare = disk / "spare"
    spare.write_bytes(b"\0" * leave)
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    spare.unlink()


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anetrain", "train", *args], text=True,
                          capture_output=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("leave", [0, 8192])
def test_resume_on_a_full_disk(tmpfs, leave):
    run = tmpfs / "run"
    assert _train(*TINY, "--steps", "3", "--out", str(run)).returncode == 0
    before = (run / "checkpoint.bin").read_bytes()
    _fill(tmpfs, leave)
    r = _train("--quiet", "--resume", str(run), "--steps", "40", "--ckpt-every", "1")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(run) in err[0], err
    assert (run / "checkpoint.bin").read_bytes() == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(ln) for ln in text.splitlines())


def test_a_fresh_run_on_a_full_disk(tmpfs):
    _fill(tmpfs, 0)
    r = _train(*TINY, "--steps", "3", "--out", str(tmpfs / "new"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
    left = {p.name: p.stat().st_size for p in (tmpfs / "new").iterdir()}
    assert left in ({}, {"metrics.jsonl": 0}), left  # nothing half-written


def test_the_run_goes_on_after_space_is_freed(tmpfs):
    run = tmpfs / "run"
    assert _train(*TINY, "--steps", "3", "--out", str(run)).returncode == 0
    _fill(tmpfs, 0)
    assert _train("--quiet", "--resume", str(run), "--steps", "6").returncode == 2
    os.unlink(tmpfs / "filler")
    r = _train("--quiet", "--resume", str(run), "--steps", "6")
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4, 5, 6]  # fmt: skip
