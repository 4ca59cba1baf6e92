"""scripts/ane_smoke.py (the Mac owner's first check) against the mock framework and a strict
simulator: it passes end to end, and unaligned models become FAIL rows, not tracebacks."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from conftest import MOCK_SO, ROOT, mock_env

from anetrain.backends import ane
from anetrain.backends.runtime import SimRuntime

SCRIPT = ROOT / "scripts" / "ane_smoke.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("ane_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (ane.built() and MOCK_SO.exists()),
                    reason="needs anetrain._ane (ANETRAIN_OBJC=gnustep) and make mock")  # fmt: skip
def test_smoke_script_passes_on_the_mock(tmp_path):
    report = tmp_path / "smoke.json"
    env = mock_env()  # the script's children evaluate through the simulator too
    cmd = [sys.executable, str(SCRIPT), "--models", "tiny", "--steps", "3", "--json", str(report)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rep = json.loads(report.read_text())
    assert rep["pass"] and rep["framework"]["mock"] and rep["compiles"] == 10
    kernels = rep["models"]["tiny"]["kernels"]
    assert len(kernels) == 9 and all(k["ok"] and k["rel_l2"] < 1e-2 for k in kernels.values())
    assert rep["train"]["ane"]["ok"] and rep["train"]["first_loss_rel"] <= 0.01
    assert re.search(r"tiny: compile 10 kernels\s+PASS", r.stdout)


class _StrictSim(SimRuntime):
    """The simulator with the real ANE's alignment rules, standing in for AneRuntime."""

    strict = True
    framework_path = "(strict simulator)"


def test_smoke_script_reports_unaligned_models_as_failures(monkeypatch, capsys):
    smoke = _load_script()
    monkeypatch.setattr(smoke, "AneRuntime", _StrictSim)
    monkeypatch.setattr(smoke, "train", lambda *a: {"ok": False, "error": "not run here"})
    assert smoke.main(["--in-process", "--models", "stories15m,tiny"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"stories15m: compile 10 kernels\s+FAIL .*breaks the ANE's alignment", out)
    assert re.search(r"tiny: compile 10 kernels\s+PASS", out)  # the aligned tiny still runs
    assert re.search(r"tiny: ffnFused vs cpu\s+PASS", out)


class _FailingRuntime(_StrictSim):
    """A framework whose compiler rejects sdpaFwd and whose woFwd evaluation fails."""

    def compile(self, spec):
        if spec.name == "sdpaFwd" and self.fail_compile:
            raise ane.AneError("compileWithQoS:options:error: failed: com.apple.appleneuralengine "
                               "(11): mock compiler rejected MIL")  # fmt: skip
        k = super().compile(spec)
        if spec.name == "woFwd":
            def boom(surface):
                raise ane.AneError("evaluateWithQoS failed: (6): program inference error")

            k.eval = boom
        return k


def test_smoke_script_reports_framework_errors_as_failures(monkeypatch, capsys, tmp_path):
    """A compile NSError fails that model's row, an eval NSError that kernel's row; the
    other checks still run and the JSON report is still written."""
    smoke = _load_script()
    monkeypatch.setattr(smoke, "AneRuntime", _FailingRuntime)
    monkeypatch.setattr(smoke, "train", lambda *a: {"ok": False, "error": "not run here"})
    monkeypatch.setattr(_FailingRuntime, "fail_compile", True, raising=False)
    report = tmp_path / "r.json"
    assert smoke.main(["--in-process", "--models", "tiny", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"tiny: compile 10 kernels\s+FAIL\s+1 of 10 failed", out)
    assert re.search(r"tiny: compile sdpaFwd\s+FAIL\s+AneError: .*\(11\): mock compiler", out)
    rep = json.loads(report.read_text())
    comp = rep["models"]["tiny"]["compile"]  # the other nine were still compiled and timed
    assert len(comp) == 10 and [k for k, v in comp.items() if not v["ok"]] == ["sdpaFwd"]
    assert "rejected MIL" in comp["sdpaFwd"]["error"] and rep["compiles"] == 9
    assert all(v["compile_s"] >= 0 for k, v in comp.items() if k != "sdpaFwd")
    monkeypatch.setattr(_FailingRuntime, "fail_compile", False, raising=False)
    assert smoke.main(["--in-process", "--models", "tiny"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"tiny: woFwd vs cpu\s+FAIL\s+AneError: .*program inference error", out)
    assert re.search(r"tiny: ffnFused vs cpu\s+PASS", out)


def test_smoke_script_reports_a_framework_that_does_not_open(monkeypatch, capsys, tmp_path):
    smoke = _load_script()

    def no_framework():
        raise ane.AneError("dlopen(/System/Library/PrivateFrameworks/X): image not found")

    ran = []
    monkeypatch.setattr(smoke, "AneRuntime", no_framework)
    monkeypatch.setattr(smoke, "train", lambda backend, *a: ran.append(backend) or
                        {"ok": backend == "cpu", "error": "framework", "wall_s": 1.0})
    report = tmp_path / "r.json"
    assert smoke.main(["--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"open the ANE framework\s+FAIL\s+dlopen\(.*image not found", out)
    assert ran == ["ane", "cpu"] and re.search(r"steps on cpu\s+PASS", out)
    assert "image not found" in json.loads(report.read_text())["framework"]["error"]


def test_training_child_crash_and_hang_become_one_line_errors(monkeypatch):
    smoke = _load_script()
    calls = []

    def killed(cmd, **kw):
        calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, -11, "", "Fatal Python error: Segmentation "
                                           "fault\n\nThread 0x1 (most recent call first):\n")
    monkeypatch.setattr(smoke.subprocess, "run", killed)
    r = smoke.train("ane", "tiny", 3, 1, None, 60.0)
    assert r == {"ok": False, "error": "killed by SIGSEGV", "output": "Fatal Python error: "
                 "Segmentation fault\n\nThread 0x1 (most recent call first):"}  # fmt: skip
    cmd, kw = calls[0]
    assert cmd[1:3] == ["-X", "faulthandler"] and kw["timeout"] == 60.0

    def hung(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"], stderr=b"step 1/3")

    monkeypatch.setattr(smoke.subprocess, "run", hung)
    r = smoke.train("ane", "tiny", 3, 1, None, 5.0)
    assert not r["ok"] and r["error"] == "no result after 5 s (hung?)" and r["output"] == "step 1/3"

    def silent(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 3, "", "")

    monkeypatch.setattr(smoke.subprocess, "run", silent)
    assert smoke.train("cpu", "tiny", 3, 1, None, 5.0)["error"] == "exit status 3"


@pytest.mark.parametrize("child,error", [("kill -SEGV $$", "killed by SIGSEGV"),
                                          ("sleep 20", "no result after 1 s (hung?)")])
def test_a_crashed_or_hung_kernel_child_is_a_failed_row_and_the_json_is_kept(
        monkeypatch, capsys, tmp_path, child, error):  # fmt: skip
    """A crash or hang inside the framework while compiling/evaluating costs that model's row,
    not the report; the JSON already holds it if the script itself dies afterwards."""
    smoke = _load_script()
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho 'Fatal Python error: in the framework' >&2\n{child}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(smoke, "AneRuntime", _StrictSim)  # the parent only opens it
    monkeypatch.setattr(smoke.sys, "executable", str(fake))  # the kernel child

    def parent_dies(*a):
        raise RuntimeError("the parent died too")

    monkeypatch.setattr(smoke, "train", parent_dies)
    report = tmp_path / "r.json"
    with pytest.raises(RuntimeError):
        smoke.main(["--models", "tiny", "--json", str(report), "--timeout", "1"])
    rep = json.loads(report.read_text())
    assert rep["models"]["tiny"]["error"] == error and rep["compiles"] == 0
    if "SEGV" in child:
        assert "in the framework" in rep["models"]["tiny"]["output"]
    monkeypatch.setattr(smoke, "train", lambda *a: {"ok": False, "error": "not run here"})
    assert smoke.main(["--models", "tiny", "--timeout", "1"]) == 1
    assert re.search(rf"tiny: kernel checks\s+FAIL\s+{re.escape(error)}", capsys.readouterr().out)


def test_aligned_tiny_passes_every_ane_rule_and_trains():
    """The tiny the smoke test uses on a real ANE draws no checker warning (sizes, head_dim,
    I/O bytes), and the training child really runs with those sizes."""
    import warnings

    from anetrain.backends.runtime import check_for_device
    from anetrain.mil.kernels import build_specs

    smoke = _load_script()
    cfg = smoke.model_cfg("tiny", strict=True)
    assert cfg.n_kv_heads < cfg.n_heads  # GQA: its programs get compiled by the smoke test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in build_specs(cfg, strict=True).values():
            check_for_device(spec)
    r = smoke.train("cpu", "tiny", 2, 1, smoke.ANE_TINY, 600.0)
    assert r["ok"], r
    assert len(r["losses"]) == 2 and "dim 128" in r["model"] and "hidden 384" in r["model"]
    assert "seq 256" in r["model"]


def test_overflow_probe_tells_inf_from_saturation():
    """On the simulator (IEEE fp16) an overflowing woFwd gives inf; a device that saturated at
    65504 instead would fail the row, since loss scaling only sees inf/NaN gradients."""
    import numpy as np

    from anetrain.backends.mil import MilKernels

    smoke = _load_script()
    cfg = smoke.model_cfg("tiny", strict=False)
    mil = MilKernels(cfg, smoke.probe_params(cfg, np.random.default_rng(0)), SimRuntime())
    try:
        r = smoke.overflow_probe(cfg, mil)
        assert r["ok"] and r["inf"] > 0 and r["nan"] == 0, r

        class Saturating:
            def wo_fwd(self, layer, x):
                return np.clip(mil.wo_fwd(layer, x), -65504, 65504)

        r = smoke.overflow_probe(cfg, Saturating())
        assert not r["ok"] and r["inf"] == 0 and r["max_finite"] == 65504.0, r

        class NaNs:  # NaN is as visible to loss scaling as inf
            def wo_fwd(self, layer, x):
                y = mil.wo_fwd(layer, x)
                return np.where(np.isinf(y), np.nan, y)

        r = smoke.overflow_probe(cfg, NaNs())
        assert r["ok"] and r["inf"] == 0 and r["nan"] > 0, r
    finally:
        mil.close()


class _NoSurfaceRuntime(_StrictSim):
    """Every kernel compiles, but woFwd's input surface cannot be made."""

    def compile(self, spec):
        k = super().compile(spec)
        if spec.name == "woFwd":
            def no_surface():
                raise ane.AneError("ane_surface_create: IOSurfaceCreate returned NULL")

            k.new_input = no_surface
        return k


def test_smoke_script_reports_a_failure_after_the_compiles(monkeypatch, capsys, tmp_path):
    smoke = _load_script()
    monkeypatch.setattr(smoke, "AneRuntime", _NoSurfaceRuntime)
    monkeypatch.setattr(smoke, "train", lambda *a: {"ok": False, "error": "not run here"})
    report = tmp_path / "r.json"
    assert smoke.main(["--in-process", "--models", "tiny", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"tiny: compile 10 kernels\s+FAIL\s+AneError: .*IOSurfaceCreate", out)
    assert "IOSurfaceCreate" in json.loads(report.read_text())["models"]["tiny"]["error"]


def test_smoke_script_help_describes_every_flag(capsys):
    smoke = _load_script()
    parser = smoke.build_parser()
    flags = []
    for action in parser._actions:  # argparse has no public list of its options
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue  # -h, and the internal --child-* options of the per-model child
        flags.append(action.option_strings[-1])
        assert action.help and len(action.help.split()) >= 4, (action.option_strings, action.help)
    assert {"--models", "--train-model", "--steps", "--seed", "--json"} <= set(flags)
    with pytest.raises(SystemExit) as stop:
        smoke.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags) and "--child-kernels" not in out
    assert smoke.__doc__.splitlines()[0] in out  # and what the script is for
