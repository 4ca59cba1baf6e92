"""scripts/ane_smoke.py (the Mac owner's first check) against the mock framework and a strict
simulator: it passes end to end, and unaligned models become FAIL rows, not tracebacks."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from anetrain import ane
from anetrain.runtime import SimRuntime

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ane_smoke.py"
MOCK_SO = ROOT / "build" / "mock" / "libane_mock.so"


def _load_script():
    spec = importlib.util.spec_from_file_location("ane_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (ane.built() and MOCK_SO.exists()),
                    reason="needs anetrain._ane (ANETRAIN_OBJC=gnustep) and make mock")  # fmt: skip
def test_smoke_script_passes_on_the_mock(tmp_path):
    report = tmp_path / "smoke.json"
    env = {**os.environ, ane.FRAMEWORK_ENV: str(MOCK_SO)}
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
    mock = True
    framework_path = "(strict simulator)"


def test_smoke_script_reports_unaligned_models_as_failures(monkeypatch, capsys):
    smoke = _load_script()
    monkeypatch.setattr(smoke, "AneRuntime", _StrictSim)
    monkeypatch.setattr(smoke, "train", lambda *a: {"ok": False, "error": "not run here"})
    assert smoke.main(["--models", "stories15m,tiny"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"stories15m: compile 10 kernels\s+FAIL .*cannot run on the ANE", out)
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
    assert smoke.main(["--models", "tiny", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"tiny: compile 10 kernels\s+FAIL\s+AneError: .*\(11\): mock compiler", out)
    assert "rejected MIL" in json.loads(report.read_text())["models"]["tiny"]["error"]
    monkeypatch.setattr(_FailingRuntime, "fail_compile", False, raising=False)
    assert smoke.main(["--models", "tiny"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"tiny: woFwd vs cpu\s+FAIL\s+AneError: .*program inference error", out)
    assert re.search(r"tiny: ffnFused vs cpu\s+PASS", out)
