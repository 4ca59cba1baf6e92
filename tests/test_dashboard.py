"""python -m anetrain dashboard: every panel of one frame (--once, not a terminal), the growing
metrics file it follows, and its errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import anetrain
from anetrain.dashboard import Power, chart, main, parse_powermetrics, sparkline
from anetrain.formats.metrics import MetricsReader
from anetrain.train import main as train_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dash") / "run"
    argv = ["--model", "tiny", "--quiet", "--threads", "2", "--steps", "12", "--eval-every", "4",
            "--backend", "sim", "--out", str(out)]  # fmt: skip
    assert train_main(argv) == 0
    return out


PANELS = ["anetrain dashboard", "loss", "learning rate", "tokens/s", "step time by phase",
          "loss scale", "memory", "power"]  # fmt: skip


def test_once_prints_every_panel(run_dir, capsys):
    assert main([str(run_dir), "--once", "--width", "110"]) == 0
    out = capsys.readouterr().out
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = recs[-1]
    for title in PANELS:
        assert f" {title} " in out, title
    assert "step 12/12 (100%)" in out and "ETA done" in out and "backend sim" in out
    assert f"train loss {last['loss']:.4f}" in out
    assert f"validation loss {last['val_loss']:.4f} at step 12 (3 evaluations)" in out
    assert f"lr {last['lr']:.3e}" in out and f"loss scale {last['loss_scale']:g}" in out
    assert "skipped steps 0" in out and f"RSS MB {last['rss_mb']:.0f}" in out
    for label in ["kernel evaluation", "surface staging", "CPU ops", "waiting for dW",
                  "optimizer"]:  # fmt: skip
        assert label in out, label
    assert "not available (macOS only)" in out or sys.platform == "darwin"
    assert "\x1b[" not in out  # not a terminal: plain text


def test_a_run_in_progress_has_an_eta(run_dir, tmp_path, capsys):
    """A copy of the metrics cut at step 5 of the checkpoint's 12: ETA from the step times."""
    d = tmp_path / "half"
    d.mkdir()
    shutil.copy(run_dir / "checkpoint.bin", d / "checkpoint.bin")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:5]) + lines[5][:20])  # a line half-written
    assert main([str(d), "--once"]) == 0
    out = capsys.readouterr().out
    assert "step 5/12 (42%)" in out and re.search(r"ETA \d+s ", out), out
    assert "validation loss " in out and "at step 4 (1 evaluations)" in out


def test_reader_follows_a_growing_file(tmp_path):
    p = tmp_path / "metrics.jsonl"
    r = MetricsReader(p)
    assert r.poll() == ([], False)  # no file yet
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert r.poll() == ([{"step": 1, "loss": 2.0}], False)
    with open(p, "a") as f:
        f.write('ss": 1.5}\nnot json\n')
    assert r.poll() == ([{"step": 2, "loss": 1.5}], False)
    p.write_text('{"step": 1, "loss": 3.0}\n')  # trimmed by a resumed run: read again
    assert r.poll() == ([{"step": 1, "loss": 3.0}], True)


def test_charts():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], 8) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)), 50)) == 50
    rows = chart([0.0, 1.0], 2, 2)
    assert [r[-2:] for r in rows] == [" █", "▁█"]
    assert chart([], 10, 3) == ["(no data yet)"]


def test_power_lines():
    text = "CPU Power: 1234 mW\nGPU Power: 5 mW\nANE Power: 987 mW\nCombined Power: 2226 mW\n"
    assert parse_powermetrics(text) == {"CPU": 1234.0, "GPU": 5.0, "ANE": 987.0}
    assert Power(False, True).text() == "off (--no-power)"


def test_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--once"]) == 2
    assert "nope: no such run directory" in capsys.readouterr().err
    assert main([str(tmp_path), "--once"]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_live_in_a_real_terminal(run_dir, tmp_path):
    """The live view in a tmux pane (a real terminal, 100x40), read back with capture-pane."""
    sock = str(tmp_path / "tmux.sock")
    pkg = Path(anetrain.__file__).parents[1]
    cmd = f"env -u COLUMNS -u LINES PYTHONPATH={pkg} {sys.executable} -m anetrain dashboard " \
        f"{run_dir} --interval 0.2"  # fmt: skip
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-x", "100", "-y", "40", cmd],
                   check=True)  # fmt: skip
    try:
        text = ""
        for _ in range(50):
            time.sleep(0.2)
            text = subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"], check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
            if "memory" in text:
                break
        for title in PANELS:
            assert title in text, (title, text)
        assert "step 12/12" in text and "kernel evaluation" in text and "not available" in text
        assert max(len(ln) for ln in text.splitlines()) == 100  # the pane's width, all of it
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], check=False)
