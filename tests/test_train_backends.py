"""The train CLI on --backend sim / ane (mock) / auto against the cpu backend."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import MOCK_SO, mock_framework

from anetrain.backends import pick_backend
from anetrain.config import ConfigError
from anetrain.train import main


def run(tmp_path: Path, backend: str, steps: int, capsys, *extra: str):
    out = tmp_path / backend
    rc = main(["--backend", backend, "--model", "tiny", "--steps", str(steps), "--out", str(out),
               "--seed", "7", *extra])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines], text


def test_sim_tracks_cpu_over_50_steps(tmp_path, capsys):
    sim, report = run(tmp_path, "sim", 50, capsys)
    cpu, _ = run(tmp_path, "cpu", 50, capsys)
    assert len(sim) == len(cpu) == 50
    first, final = sim[0]["loss"] / cpu[0]["loss"], sim[-1]["loss"] / cpu[-1]["loss"]
    assert abs(first - 1) <= 0.01, (sim[0], cpu[0])
    assert abs(final - 1) <= 0.05, (sim[-1], cpu[-1])
    assert cpu[-1]["loss"] < cpu[0]["loss"] - 0.5 and sim[-1]["loss"] < sim[0]["loss"] - 0.5
    assert sim[-1]["loss_scale"] >= 2.0**11 and "loss_scale" not in cpu[-1]
    for key in ("compiles: 10 kernels (sim runtime)", "compile time:", "kernel evaluation:",
                "host time:", "evaluations per micro-step: 20.0", "skipped steps"):  # fmt: skip
        assert key in report, key


@pytest.mark.skipif(not MOCK_SO.exists(), reason="build/mock/libane_mock.so is not built "
                                                  "(make mock)")  # fmt: skip
def test_ane_backend_on_the_mock(tmp_path, capsys, monkeypatch):
    ane = pytest.importorskip("anetrain.backends.ane")
    if not ane.built():
        pytest.skip("anetrain._ane is not built (ANETRAIN_OBJC=gnustep pip install -e .)")
    monkeypatch.setenv(ane.FRAMEWORK_ENV, str(MOCK_SO))
    mock = mock_framework()
    mock.reset()
    mock.use_simulator()
    rows, report = run(tmp_path, "ane", 5, capsys)
    assert len(rows) == 5 and all(r["skipped"] == 0 for r in rows)
    assert "compiles: 10 kernels (ane runtime)" in report
    # the run unloaded and released everything before returning, not at interpreter exit
    assert mock.loaded_models() == 0 and mock.live_surfaces() == 0 and mock.live_objects() == 0
    sim, _ = run(tmp_path, "sim", 5, capsys)
    assert [r["loss"] for r in rows] == [r["loss"] for r in sim]  # the mock runs the simulator


def test_setup_failure_after_compile_frees_the_kernels(tmp_path, monkeypatch, capsys):
    """An error between compiling the kernels and the loop (here: the metrics file) closes them
    at once; on the ANE that unloads the models and removes their temp dirs."""
    import anetrain.backends
    import anetrain.train
    from anetrain.errors import UserError

    made = []
    real_make = anetrain.backends.make_kernels

    def make_and_keep(*args):  # holds a reference, so no __del__ can free them for us
        made.append(real_make(*args))
        return made[-1]

    def fail(run, quiet):
        raise UserError(f"{run.metrics_path}: disk full")

    monkeypatch.setattr(anetrain.backends, "make_kernels", make_and_keep)
    monkeypatch.setattr(anetrain.train, "_open_metrics", fail)
    rc = main(["--backend", "sim", "--model", "tiny", "--steps", "2", "--out", str(tmp_path)])
    assert rc == 2 and "disk full" in capsys.readouterr().err
    assert len(made) == 1 and made[0].executables == {} and made[0].inputs == {}


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS may have a real ANE")
def test_ane_elsewhere_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("ANETRAIN_ANE_FRAMEWORK", raising=False)
    with pytest.raises(ConfigError, match="--backend ane: .*macOS on Apple silicon.*--backend cpu"):
        pick_backend("ane")
    assert main(["--backend", "ane", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "needs macOS on Apple silicon" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS may have a real ANE")
def test_auto_says_what_it_picked(monkeypatch, capsys):
    monkeypatch.delenv("ANETRAIN_ANE_FRAMEWORK", raising=False)
    assert pick_backend("auto") == "cpu"
    assert "backend auto: using cpu (no Apple Neural Engine here)" in capsys.readouterr().out
    monkeypatch.setenv("ANETRAIN_ANE_FRAMEWORK", str(MOCK_SO))  # the test mock: not for auto
    assert pick_backend("auto", verbose=False) == "cpu"
    assert pick_backend("sim") == "sim"


def test_macos_version_is_read_from_the_system(monkeypatch):
    from anetrain.backends import platform as plat

    monkeypatch.setattr(sys, "platform", "darwin")
    # plat.platform: the standard library module it reads
    monkeypatch.setattr(plat.platform, "mac_ver", lambda: ("14.6.1", ("", "", ""), "arm64"))
    assert plat.macos_version() == (14, 6)
    assert plat.old_macos() == ("macOS 14.6 predates the MIL ios18 opset the ANE programs "
                                "use (macOS 15 or later)")  # fmt: skip
    monkeypatch.setattr(plat.platform, "mac_ver", lambda: ("15.0", ("", "", ""), "arm64"))
    assert plat.macos_version() == (15, 0) and plat.old_macos() is None
    monkeypatch.setattr(sys, "platform", "linux")
    assert plat.macos_version() is None and plat.old_macos() is None


def test_rosetta_python_is_told_to_use_an_arm64_python(monkeypatch, capsys):
    """An x86_64 Python under Rosetta on an Apple-silicon Mac: auto and --backend ane say so,
    an Intel Mac (sysctl prints nothing) gets the plain 'no ANE' reasons."""
    import subprocess

    from anetrain.backends import platform as plat

    monkeypatch.delenv("ANETRAIN_ANE_FRAMEWORK", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(plat.platform, "machine", lambda: "x86_64")  # the standard library's
    translated = "1\n"

    def fake_run(cmd, **kw):
        assert cmd == ["/usr/sbin/sysctl", "-in", "sysctl.proc_translated"], cmd
        return subprocess.CompletedProcess(cmd, 0, translated, "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert plat.under_rosetta()
    assert pick_backend("auto") == "cpu"
    assert "using cpu (this Python is x86_64 running under Rosetta" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--backend ane: this Python is x86_64 running under "
                       "Rosetta; the Apple Neural Engine needs an arm64 Python"):  # fmt: skip
        pick_backend("ane")
    translated = ""  # an Intel Mac
    assert not plat.under_rosetta()
    assert pick_backend("auto") == "cpu"
    assert "using cpu (no Apple Neural Engine here)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="needs macOS on Apple silicon \\(this is darwin x86_64"):
        pick_backend("ane")


def test_old_macos_auto_picks_cpu_and_explicit_ane_warns(monkeypatch, capsys):
    """On Apple silicon with macOS < 15 auto falls back to cpu and says why; --backend ane
    still runs (nothing here proves it fails) but warns that the kernels will not compile."""
    from anetrain.backends import platform as plat

    monkeypatch.setattr(plat, "apple_silicon", lambda: True)
    monkeypatch.setattr(plat, "ane_unavailable", lambda: None)
    monkeypatch.setattr(plat, "macos_version", lambda: (14, 6))
    assert pick_backend("auto") == "cpu"
    assert "backend auto: using cpu (macOS 14.6 predates the MIL ios18" in capsys.readouterr().out
    assert pick_backend("ane") == "ane"
    assert "warning: --backend ane: macOS 14.6 predates" in capsys.readouterr().err
    monkeypatch.setattr(plat, "macos_version", lambda: (15, 1))
    assert pick_backend("auto") == "ane"
    assert "using ane (Apple Neural Engine found)" in capsys.readouterr().out
    assert pick_backend("ane") == "ane" and capsys.readouterr().err == ""
    monkeypatch.setattr(plat, "ane_unavailable", lambda: "the ANE framework F does "
                        "not load")  # fmt: skip
    assert pick_backend("auto") == "cpu"
    assert "using cpu (the ANE framework F does not load)" in capsys.readouterr().out


def _strict_metrics(out: Path) -> list[dict]:
    def refuse(name: str):
        raise ValueError(f"metrics.jsonl holds {name}, which is not JSON")

    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln, parse_constant=refuse) for ln in lines]


def test_cpu_checkpoint_resumed_on_sim_scales_the_loss(tmp_path, capsys):
    """A cpu run saves scale 1 (fixed); the sim run continuing it must start at 2^12."""
    run(tmp_path, "cpu", 2, capsys)
    out = tmp_path / "cpu"
    assert main(["--resume", str(out), "--backend", "sim", "--steps", "3"]) == 0
    rows = _strict_metrics(out)
    assert rows[-1]["step"] == 3 and rows[-1]["loss_scale"] == 2.0**12, rows[-1]


def test_overflowing_gradients_skip_then_stop(tmp_path, capsys, monkeypatch):
    """A non-finite gradient norm skips the step (metrics: null, skipped 1, scale halved); at
    the smallest scale it stops with a one-line error and leaves the checkpoint alone; on cpu
    (no scaling to lower) it stops at once."""
    import anetrain.optim
    from anetrain.formats import checkpoint

    real = anetrain.optim.grad_norm
    calls = []

    def nan_first(*a, **k):
        calls.append(1)
        return float("nan") if len(calls) == 1 else real(*a, **k)

    monkeypatch.setattr(anetrain.optim, "grad_norm", nan_first)
    rows, text = run(tmp_path, "sim", 2, capsys)
    assert "step 1: gradients overflowed fp16 at loss scale 4096; step skipped, loss scale now " \
           "2048" in text  # fmt: skip
    assert rows[0]["grad_norm"] is None and rows[0]["skipped"] == 1
    assert rows[0]["loss_scale"] == 2.0**11 and rows[1]["skipped"] == 1
    assert rows == _strict_metrics(tmp_path / "sim")

    out = tmp_path / "sim"
    ck = checkpoint.load(out / "checkpoint.bin")
    ck.state.scaler["scale"] = anetrain.optim.LossScaler.MIN_SCALE
    checkpoint.save(out / "checkpoint.bin", ck)
    saved = (out / "checkpoint.bin").read_bytes()
    monkeypatch.setattr(anetrain.optim, "grad_norm", lambda *a, **k: float("inf"))
    assert main(["--quiet", "--resume", str(out), "--steps", "4", "--ckpt-every", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gradient norm is inf even at loss scale" in err[0], err
    assert f"error: {out}: " in err[0] and "step 3" in err[0]  # the run directory, not a file
    assert "its checkpoint is kept as it was" in err[0]
    assert (out / "checkpoint.bin").read_bytes() == saved

    cpu = tmp_path / "cpu"
    assert main(["--quiet", "--backend", "cpu", "--model", "tiny", "--steps", "2",
                 "--out", str(cpu)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "gradient norm is inf at step 1" in err and "no checkpoint was written" in err
    assert not (cpu / "checkpoint.bin").exists()


def test_sim_overflow_is_one_error_line_not_warnings(tmp_path, capsys):
    """Weights that overflow fp16 make the simulator see inf; training reports that as skips or
    the one-line NaN-loss error, without a MilOverflowWarning per evaluation."""
    import warnings

    from anetrain.formats import checkpoint
    from anetrain.mil import MilOverflowWarning

    run(tmp_path, "sim", 1, capsys)
    out = tmp_path / "sim"
    ck = checkpoint.load(out / "checkpoint.bin")
    ck.params.layers[0].wq[...] *= 1e6  # q = Wq xn far beyond 65504
    checkpoint.save(out / "checkpoint.bin", ck)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["--quiet", "--resume", str(out), "--steps", "3"]) == 2
    assert not [w for w in seen if issubclass(w.category, MilOverflowWarning)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss is nan" in err[0], err


def _fake_apple_silicon(monkeypatch) -> None:
    from anetrain.backends import platform as plat

    monkeypatch.setattr(plat, "apple_silicon", lambda: True)
    monkeypatch.setattr(plat, "macos_version", lambda: (15, 1))
    monkeypatch.setattr(plat, "ane_unavailable", lambda: None)


def test_auto_picks_cpu_for_sizes_the_ane_refuses(monkeypatch, capsys):
    """The default tiny preset breaks the ANE's alignment rules: on an Apple-silicon Mac auto
    must train it on cpu, not pick ane and then stop with an error."""
    from anetrain.config import preset

    _fake_apple_silicon(monkeypatch)
    assert pick_backend("auto", cfg=preset("tiny")) == "cpu"
    assert ("backend auto: using cpu (model dim 64, hidden 176, seq 64 breaks the ANE's "
            "alignment rules: widths must be multiples of 64 and channels of 32)"
            ) in capsys.readouterr().out  # fmt: skip
    assert pick_backend("auto", cfg=preset("stories110m")) == "ane"
    assert "using ane (Apple Neural Engine found)" in capsys.readouterr().out


@pytest.mark.skipif(not MOCK_SO.exists(), reason="build/mock/libane_mock.so is not built "
                                                  "(make mock)")  # fmt: skip
def test_auto_falls_back_to_cpu_when_the_ane_fails_to_compile(monkeypatch, capsys, tmp_path):
    """auto picked ane (nothing has compiled on this machine yet) and the compiler refuses: the
    run trains on cpu with a warning carrying the NSError; --backend ane stays an error."""
    ane = pytest.importorskip("anetrain.backends.ane")
    if not ane.built():
        pytest.skip("anetrain._ane is not built (ANETRAIN_OBJC=gnustep pip install -e .)")
    from anetrain.backends import platform as plat

    _fake_apple_silicon(monkeypatch)
    monkeypatch.setattr(plat, "ane_misfit", lambda cfg: None)  # the mock runs the tiny
    monkeypatch.setenv(ane.FRAMEWORK_ENV, str(MOCK_SO))
    mock = mock_framework()
    mock.reset()
    try:
        mock.fail("compile", count=100)
        args = ["--model", "tiny", "--steps", "2", "--seed", "7"]
        assert main([*args, "--out", str(tmp_path / "auto")]) == 0
        cap = capsys.readouterr()
        assert "backend auto: using ane" in cap.out
        assert re.search(r"warning: backend auto: the ANE failed \(kernel sdpaFwd: .*\(11\).*\); "
                         r"using cpu \(--backend ane makes this an error\)", cap.err), cap.err
        rows = (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 2 and "loss_scale" not in json.loads(rows[-1])  # the cpu backend
        assert mock.live_objects() == 0 and mock.live_surfaces() == 0
        assert main([*args, "--backend", "ane", "--out", str(tmp_path / "ane")]) == 2
        assert re.search(r"error: kernel sdpaFwd: .*\(11\)", capsys.readouterr().err)
    finally:
        mock.reset()


def test_platform_checks_are_numpy_free_and_word_the_size_rules_once():
    """backends and backends.platform import without numpy (train.py asks before numpy
    loads); auto's reason and --backend ane's error for unaligned sizes are one message."""
    import subprocess

    import numpy as np

    from anetrain.backends import platform as plat
    from anetrain.backends.mil import MilKernels
    from anetrain.backends.runtime import SimRuntime
    from anetrain.config import preset
    from anetrain.params import init_params

    code = "import sys, anetrain.backends.platform; print('numpy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
    assert plat.ane_misfit(preset("stories110m")) is None
    cfg = preset("tiny", vocab_size=97)
    why = plat.ane_misfit(cfg)
    assert why == plat.misfit(cfg) and "multiples of 64 and channels of 32" in why

    class StrictSim(SimRuntime):
        name, strict = "ane", True

    with pytest.raises(ConfigError) as e:
        MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), StrictSim())
    assert str(e.value).startswith(f"--backend ane: {why} (kernels not ANE-aligned")
    assert str(e.value).endswith("; use --backend sim or cpu for this size")
