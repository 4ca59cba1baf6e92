"""Runs end the way real runs end: SIGINT/SIGTERM/SIGHUP, closed pipes; the metrics agree."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anetrain import train
from anetrain.cli import Stopped, Vanishing, run_cli, signals_held, stop_on_signals
from anetrain.config import TrainConfig, checkpoint_interval
from anetrain.formats import checkpoint
from anetrain.formats.metrics import MetricsLog
from anetrain.report import Progress

TINY = ["--model", "tiny", "--threads", "1", "--seed", "7"]
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def _metrics(d: Path) -> list[dict]:
    return [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]


def _params_sha(d: Path) -> str:
    ck = checkpoint.load(d / "checkpoint.bin", with_optimizer=False)
    return hashlib.sha256(ck.params.flat.tobytes()).hexdigest()


def _cols(rows: list[dict]) -> list[tuple]:
    return [(r["step"], r["loss"], r["lr"], r["tokens"], r["grad_norm"]) for r in rows]


def _train(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anetrain", "train", *args], text=True,
                            stdout=kw.pop("stdout", subprocess.DEVNULL),
                            stderr=kw.pop("stderr", subprocess.PIPE), **kw)  # fmt: skip


# ---- the pieces


@pytest.mark.parametrize("sig", list(CODES))
def test_signals_held_raise_after_the_block(sig):
    done = []
    with pytest.raises(Stopped) as e:
        with signals_held():
            os.kill(os.getpid(), sig)
            done.append("update")  # still runs: the signal waits for the block's end
    assert done == ["update"] and e.value.signum == sig and e.value.exit_code == CODES[sig]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with signals_held(reraise=False):  # the save on a stop: not cut short, nothing raised
        os.kill(os.getpid(), sig)
        done.append("saved")
    assert done == ["update", "saved"]


def test_stop_signals_become_one_exception_and_one_line(capsys):
    with pytest.raises(Stopped) as e, stop_on_signals():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(1)  # the handler runs before this returns
    assert e.value.name == "SIGHUP"

    def body(argv):
        raise Stopped(signal.SIGTERM)

    assert run_cli("prog", body, []) == 143
    assert capsys.readouterr().err == "prog: interrupted (SIGTERM); nothing saved\n"


def test_vanishing_stream_survives_a_closed_pipe():
    r, w = os.pipe()
    stream = Vanishing(os.fdopen(w, "w"))
    stream.write("one\n")
    os.close(r)  # the reader is gone: the next write is EPIPE
    stream.write("two\n")
    assert stream.gone and not stream.isatty()
    stream.write("three\n")
    stream.flush()


def test_checkpoint_interval_takes_steps_or_a_duration():
    assert checkpoint_interval("500") == (500, 0.0)
    assert checkpoint_interval("90s") == (0, 90.0)
    assert checkpoint_interval("10m") == (0, 600.0)
    assert checkpoint_interval("1.5h") == (0, 5400.0)
    assert checkpoint_interval("0") == (0, 0.0)
    for bad in ("", "-5", "10x", "m", "0s", "nanm", "1e999s"):
        with pytest.raises(Exception, match="--ckpt-every"):
            checkpoint_interval(bad)
    assert TrainConfig().ckpt_seconds == 600.0  # the default bounds what a kill -9 loses
    help_text = train.build_parser().format_help()
    assert "10m" in help_text and "kill -9" in help_text


def test_checkpoints_follow_the_interval(tmp_path, monkeypatch):
    saves = []
    real = train._Saver.save
    monkeypatch.setattr(train._Saver, "save", lambda self: (saves.append(self.run.state.step),
                                                            real(self))[1])  # fmt: skip
    assert train.main([*TINY, "--quiet", "--steps", "6", "--out", str(tmp_path / "a")]) == 0
    assert saves == [6]  # the default: 10 minutes, which a 6-step run never reaches
    saves.clear()
    assert train.main([*TINY, "--quiet", "--steps", "6", "--ckpt-every", "1e-9s", "--out",
                       str(tmp_path / "b")]) == 0  # fmt: skip
    assert saves == [1, 2, 3, 4, 5, 6]
    saves.clear()
    assert train.main([*TINY, "--quiet", "--steps", "6", "--ckpt-every", "4", "--out",
                       str(tmp_path / "c")]) == 0  # fmt: skip
    assert saves == [4, 6]


def test_a_slow_step_shows_its_micro_steps():
    shown = []

    class Bar:
        disable, n = False, 4

        def set_postfix_str(self, text):
            shown.append(text)

    p = Progress(0, 10, 64, quiet=True)
    p.bar = Bar()
    p.inside_step(1, 10, 0.5)  # fast so far: the bar is left alone
    p.inside_step(3, 10, 4.2)
    assert shown == ["step 5: micro-step 3/10, 4 s"]


def test_quiet_still_prints_the_checkpoint_path(tmp_path, capsys):
    assert train.main([*TINY, "--quiet", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"checkpoint: {tmp_path / 'checkpoint.bin'}\n"


# ---- stops inside the run


def test_a_stop_inside_the_update_keeps_checkpoint_and_metrics_together(tmp_path, monkeypatch,
                                                                       capsys):  # fmt: skip
    import anetrain.optim

    real = anetrain.optim.optimizer_step
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # lands inside the update: held until its end
        return real(*a, **k)

    monkeypatch.setattr(anetrain.optim, "optimizer_step", interrupted)
    assert train.main([*TINY, "--quiet", "--steps", "10", "--out", str(tmp_path)]) == 130
    assert checkpoint.load(tmp_path / "checkpoint.bin").state.step == 3
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3]
    out, err = capsys.readouterr()
    assert "interrupted" not in out
    assert "interrupted (SIGINT): saving the checkpoint of step 3" in err


def test_sigterm_before_training_is_one_line(tmp_path):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)  # opening it blocks: the run is stuck in its setup when the signal comes
    p = _train("--init", str(fifo), "--out", str(tmp_path / "r"))
    time.sleep(3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert err.strip().splitlines() == ["anetrain.train: interrupted (SIGTERM); nothing saved"]
    assert not (tmp_path / "r" / "checkpoint.bin").exists()


def test_stops_at_random_times_resume_bit_identically(tmp_path):
    """10 runs stopped at random times (SIGTERM mostly; SIGHUP and SIGINT too): each exits with
    128 + signal, its checkpoint is at the last metrics line, and resuming reaches exactly the
    numbers of an uninterrupted run."""
    steps = "150"
    ref = tmp_path / "ref"
    p = _train(*TINY, "--quiet", "--steps", steps, "--out", str(ref))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    want_rows, want_sha = _cols(_metrics(ref)), _params_sha(ref)
    rng = random.Random(1)
    sigs = [signal.SIGTERM] * 8 + [signal.SIGHUP, signal.SIGINT]
    stopped_at = []
    for trial, sig in enumerate(sigs):
        out = tmp_path / f"t{trial}"
        p = _train(*TINY, "--quiet", "--steps", steps, "--out", str(out))
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").stat().st_size:
            time.sleep(0.005)  # training has started
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        if p.returncode == 0:  # it finished first: nothing to test in this trial
            continue
        assert p.returncode == CODES[sig], err
        assert "Traceback" not in err and f"interrupted ({signal.Signals(sig).name})" in err
        step = checkpoint.load(out / "checkpoint.bin").state.step
        assert [r["step"] for r in _metrics(out)][-1] == step
        stopped_at.append(step)
        r = _train("--quiet", "--resume", str(out), "--threads", "1")
        assert r.wait(timeout=300) == 0, r.stderr.read()
        assert _cols(_metrics(out)) == want_rows and _params_sha(out) == want_sha
    print(f"stopped at steps {stopped_at}")
    assert len(stopped_at) >= 5, stopped_at


# ---- closed pipes


def test_a_closed_stdout_does_not_stop_the_run(tmp_path):
    """`python -m anetrain train ... | head -3`: no traceback, the run completes."""
    p = _train(*TINY, "--steps", "40", "--out", str(tmp_path), stdout=subprocess.PIPE)
    lines = [p.stdout.readline() for _ in range(3)]
    p.stdout.close()  # head exits
    _, err = p.communicate(timeout=300)
    assert all(lines) and p.returncode == 0 and "Traceback" not in err and "Error" not in err
    assert checkpoint.load(tmp_path / "checkpoint.bin").state.step == 40


def test_closed_stdout_and_stderr_do_not_stop_the_run(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "anetrain", "train", *TINY, "--steps", "40",
                          "--out", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.readline()
    p.stdout.close()
    p.stderr.close()
    assert p.wait(timeout=300) == 0
    assert checkpoint.load(tmp_path / "checkpoint.bin").state.step == 40


# ---- the metrics file


def test_a_failed_metrics_write_leaves_no_half_line(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.jsonl", fresh=True)
    log.append({"step": 1, "loss": 2.0})
    real_write = os.write

    def short(fd, data):
        return real_write(fd, data[: len(data) // 2])  # a disk that fills mid-line

    monkeypatch.setattr(os, "write", short)
    with pytest.raises(Exception, match="metrics.jsonl: cannot write the metrics"):
        log.append({"step": 2, "loss": 1.5})
    monkeypatch.setattr(os, "write", real_write)
    log.append({"step": 2, "loss": 1.5})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == \
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'  # fmt: skip

