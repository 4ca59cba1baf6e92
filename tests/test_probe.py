"""python -m anetrain probe on the mock and the simulator: its JSON, --compare, the compile
ceiling, the compile in a background thread, the background refusal, and bench overlap
--kernel-times."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time

import pytest
from conftest import MOCK_SO, ROOT, mock_env, mock_framework

QUICK = ["--model", "tiny", "--quick", "--reps", "1"]


@pytest.fixture(scope="module")
def ane_mod():
    ane = pytest.importorskip("anetrain.backends.ane")
    if not ane.built() or not MOCK_SO.exists():
        pytest.skip("needs anetrain._ane (GNUstep build) and build/mock/libane_mock.so")
    return ane


@pytest.fixture
def mock(ane_mod, monkeypatch):
    """The mock as the framework of this process, evaluating through the simulator."""
    monkeypatch.setenv(ane_mod.FRAMEWORK_ENV, str(MOCK_SO))
    m = mock_framework()
    m.reset(reset_compiles=True)
    m.use_simulator()
    yield m
    m.reset(reset_compiles=True)


@pytest.fixture(scope="module")
def mock_json(ane_mod, tmp_path_factory):
    """A probe result written by a child process on the mock (as a user on Linux runs it)."""
    path = tmp_path_factory.mktemp("probe") / "mock.json"
    cmd = [sys.executable, "-m", "anetrain", "probe", *QUICK, "--max-compiles", "3",
           "--json", str(path)]  # fmt: skip
    r = subprocess.run(cmd, env=mock_env(), capture_output=True, text=True, timeout=300,
                       cwd=path.parent)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return path, r.stdout


def test_probe_on_the_mock_writes_a_valid_labelled_json(mock_json):
    from anetrain import probe_report
    from anetrain.mil.kernels import KERNELS

    path, out = mock_json
    doc = json.loads(path.read_text())
    assert probe_report.validate(doc) == []
    assert doc["runtime"] == "mock" and doc["framework"] == str(MOCK_SO)
    assert "MOCK framework" in out.splitlines()[0]  # the table says what its figures are
    assert list(doc["kernels"]) == list(KERNELS)
    for k in doc["kernels"].values():
        assert k["eval_ms"] > 0 and k["tflops"] > 0 and k["compile_ms"] > 0
    assert [(r["depth"], r["channels"]) for r in doc["ladder"]] == [(4, 64), (8, 128)]
    assert doc["staging"]["pack_gbs"] > 0 and doc["staging"]["kernel"] in KERNELS
    assert doc["pingpong"]["alternating_ms"] > 0
    bg = doc["background_compile"]
    assert bg["compiled"] and bg["evaluated"] and bg["error"] is None
    assert bg["evals_during"] >= 1 and bg["eval_during_ms"] > 0 and bg["compile_bg_ms"] > 0
    assert bg["slowdown"] == pytest.approx(bg["eval_during_ms"] / bg["eval_ms"])
    assert re.search(r"eval ms alone / during a background compile +[\d.]+ / [\d.]+ \([\d.]+x\)",
                     out)  # fmt: skip
    c = doc["ceiling"]  # 10 kernels + 2 ladder + 2 ping-pong + 3 background programs, then 3 more
    assert (c["compiles"], c["refused"], c["process_compiles"]) == (3, False, 20)


def test_the_validator_names_what_is_wrong(mock_json):
    from anetrain import probe_report

    doc = json.loads(mock_json[0].read_text())
    bad = copy.deepcopy(doc)
    del bad["kernels"]["woFwd"]["eval_ms"]
    bad["ceiling"]["compiles"] = "3"
    bad["runtime"] = "gpu"
    probs = probe_report.validate(bad)
    assert "probe.kernels.woFwd: missing 'eval_ms'" in probs
    assert "probe.ceiling.compiles: wrong type str" in probs
    assert any("probe.runtime: 'gpu'" in p for p in probs)
    assert probe_report.validate({**doc, "schema": 3}) == ["probe: schema 3 (this anetrain "
                                                          "reads 1, 2)"]  # fmt: skip
    old = {k: v for k, v in doc.items() if k != "background_compile"}
    assert probe_report.validate({**old, "schema": 1}) == []  # written before the section
    assert probe_report.validate(old) == ["probe: missing 'background_compile'"]
    bad = copy.deepcopy(doc)
    bad["background_compile"]["slowdown"] = True
    del bad["background_compile"]["compiled"]
    assert probe_report.validate(bad) == ["probe.background_compile.slowdown: wrong type bool",
                                          "probe.background_compile: missing 'compiled'"]
    assert probe_report.validate([]) == ["probe: expected an object"]
    ok = copy.deepcopy(doc)
    ok["kernels"]["woFwd"] = {"error": "kernel woFwd: refused"}  # a failed probe is recorded
    assert probe_report.validate(ok) == []


def test_compare_reads_two_results_back(mock_json, tmp_path, capsys):
    from anetrain.probe import main

    doc = json.loads(mock_json[0].read_text())
    doc["kernels"]["woFwd"] = {"compile_ms": 12.0, "eval_ms": 0.25, "gflop": 1.0, "tflops": 4.0}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    doc["runtime"], doc["kernels"]["woFwd"]["eval_ms"] = "ane", 0.125
    (tmp_path / "b.json").write_text(json.dumps(doc))
    path = tmp_path / "a.json"
    assert main(["--compare", str(path), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("woFwd"))
    assert row.split("TFLOPS")[1].split() == ["12.0", "/", "0.250", "/", "4.000",
                                              "12.0", "/", "0.125", "/", "4.000"]  # fmt: skip
    assert "MOCK framework" in out
    (tmp_path / "c.json").write_text('{"schema": 1}')
    assert main(["--compare", str(path), str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anetrain probe: error: {tmp_path / 'c.json'}: not an anetrain probe "
                          "result: probe: missing 'tool'")  # fmt: skip
    assert len(err.splitlines()) == 1


def test_compare_reads_a_schema_1_result_without_the_background_compile(mock_json, tmp_path,
                                                                        capsys):  # fmt: skip
    from anetrain.probe import main

    doc = json.loads(mock_json[0].read_text())
    (tmp_path / "new.json").write_text(json.dumps(doc))
    del doc["background_compile"]
    doc["schema"] = 1
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert main(["--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 0
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if x.startswith("eval ms alone / during a background"))
    assert re.search(r"compile +- +[\d.]+ / [\d.]+ \([\d.]+x\)$", row)  # A did not measure it
    assert "sequential compiles (process total)" in out


def test_compile_ceiling_stops_cleanly_when_the_mock_refuses_compile_n(mock, tmp_path, capsys):
    from anetrain import probe_report
    from anetrain.probe import main

    mock.set_compile_limit(19)  # compile 20 is refused: the ceiling probe gets 2 of its 40
    out = tmp_path / "p.json"
    assert main([*QUICK, "--max-compiles", "40", "--json", str(out)]) == 0
    c = probe_report.load(out)["ceiling"]
    assert (c["compiles"], c["refused"], c["process_compiles"]) == (2, True, 19)
    assert "ANECCompile() FAILED" in c["error"]
    text = capsys.readouterr().out
    assert re.search(r"sequential compiles \(process total\) +2 then refused \(19\)", text)
    assert "per-process compile ceiling" in text
    assert mock.loaded_models() == 0 and mock.live_objects() == 0  # everything freed


def test_a_refused_background_compile_is_recorded_not_raised(mock, tmp_path, capsys):
    from anetrain import probe_report
    from anetrain.probe import main

    mock.set_compile_limit(16)  # the evaluated program is 15, the foreground compile 16
    out = tmp_path / "p.json"
    assert main([*QUICK, "--max-compiles", "5", "--json", str(out)]) == 0
    doc = probe_report.load(out)
    bg = doc["background_compile"]
    assert bg["evaluated"] and not bg["compiled"] and bg["compile_bg_ms"] is None
    assert bg["error"].startswith("compile: kernel overlap_bg: ") and "ANECCompile" in bg["error"]
    assert bg["evals_during"] >= 1 and bg["compile_fg_ms"] > 0
    assert "error" in doc["ceiling"]  # the next compile is refused too: nothing left
    text = capsys.readouterr().out
    assert "error in the compile in a background thread: compile: kernel overlap_bg" in text
    assert re.search(r"compile ms alone / in a thread while evaluating +[\d.]+ / -\n", text)
    assert mock.loaded_models() == 0 and mock.live_objects() == 0


def test_a_failed_evaluation_during_the_background_compile_is_recorded(mock):
    import mock_control

    from anetrain.backends.runtime import AneRuntime
    from anetrain.probe import probe_background_compile

    calls = []

    def third_fails(mil, weights, x, y):  # reps=1: a warm-up and one timed evaluation alone
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation 3 refused")
        mock_control.simulate(mil, weights, x, y)

    mock.set_eval_callback(third_fails)
    rt, rt_bg = AneRuntime(), AneRuntime()
    try:
        bg = probe_background_compile(rt, rt_bg, (2, 64), (1, 64), reps=1)
    finally:
        rt_bg.close()
        rt.close()
    assert not bg["evaluated"] and bg["compiled"] and bg["compile_bg_ms"] > 0
    assert bg["evals_during"] == 0 and bg["eval_during_ms"] is None and bg["slowdown"] is None
    assert bg["error"].startswith("evaluation: kernel overlap_eval: ")
    assert "evaluation 3 refused" in bg["error"]
    assert (rt.compiles, rt_bg.compiles) == (2, 1)  # the thread compiled on its own runtime
    assert mock.loaded_models() == 0 and mock.live_objects() == 0


def test_evaluation_goes_on_for_the_whole_background_compile():
    from anetrain.backends.runtime import SimRuntime
    from anetrain.probe import probe_background_compile

    class SlowCompiles(SimRuntime):
        def compile(self, spec):
            time.sleep(0.3)  # a compile the evaluating thread must wait out
            return super().compile(spec)

    rt, rt_bg = SimRuntime(), SlowCompiles()
    bg = probe_background_compile(rt, rt_bg, (1, 64), (1, 64), reps=1)
    assert bg["compiled"] and bg["evaluated"] and bg["error"] is None
    assert bg["compile_bg_ms"] >= 300 > bg["compile_fg_ms"]
    assert bg["compile_slowdown"] == pytest.approx(bg["compile_bg_ms"] / bg["compile_fg_ms"])
    assert rt.evals >= bg["evals_during"] + 2  # a warm-up, one alone, then during
    assert bg["evals_during"] * bg["eval_during_ms"] >= 0.5 * 300  # kept busy the whole compile
    assert rt_bg.compiles == 1 and rt_bg.evals == 0 and rt.compiles == 2


def test_a_refused_background_session_is_explained(mock, tmp_path, capsys):
    from anetrain.probe import main

    mock.fail("compile", 1, description="The Neural Engine is not accessible from background")
    assert main([*QUICK, "--json", str(tmp_path / "p.json")]) == 2
    err = [e for e in capsys.readouterr().err.splitlines() if "error" in e]
    assert len(err) == 1 and "background (non-GUI) session" in err[0]
    assert err[0].startswith("anetrain probe: error: ")
    assert "not accessible from background" in err[0]
    assert not (tmp_path / "p.json").exists()
    assert mock.loaded_models() == 0


def test_probe_runs_on_the_simulator(tmp_path):
    from anetrain import probe_report
    from anetrain.probe import main

    out = tmp_path / "s.json"
    assert main(["--runtime", "sim", *QUICK, "--max-compiles", "2", "--json", str(out)]) == 0
    doc = probe_report.load(out)
    assert doc["runtime"] == "sim" and doc["framework"] is None
    assert doc["ceiling"]["compiles"] == 2 and not doc["ceiling"]["refused"]
    assert doc["ceiling"]["process_compiles"] == 19  # the background thread's compile included
    bg = doc["background_compile"]
    assert bg["compiled"] and bg["evaluated"] and bg["evals_during"] >= 1
    assert (bg["eval_program"], bg["compile_program"]) == ("overlap_eval", "overlap_bg")


def test_overlap_uses_the_probes_kernel_times(mock_json, tmp_path, capsys):
    from anetrain.bench.__main__ import main as bench_main

    path = mock_json[0]
    doc = json.loads(path.read_text())
    for i, k in enumerate(doc["kernels"].values()):
        k["eval_ms"] = 0.5 + i / 10
    (tmp_path / "t.json").write_text(json.dumps(doc))
    argv = ["overlap", "--model", "tiny", "--vocab-size", "97", "--steps", "1", "--kernel-times"]
    assert bench_main([*argv, str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "sdpaFwd 0.500, woFwd 0.600, ffnFused 0.700" in out and "kvBwd 1.400" in out
    del doc["kernels"]["kvBwd"]
    (tmp_path / "u.json").write_text(json.dumps(doc))
    assert bench_main([*argv, str(tmp_path / "u.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("u.json: no evaluation time for kernel(s) kvBwd") and "\n" not in err
    assert bench_main(["overlap", "--model", "stories15m", "--steps", "1", "--kernel-times",
                       str(path)]) == 2  # fmt: skip
    assert "measured model 'tiny' has dim 64, this model 288" in capsys.readouterr().err


def test_probe_is_a_command():
    r = subprocess.run([sys.executable, "-m", "anetrain", "probe", "--help"], capture_output=True,
                       text=True, cwd=ROOT / "tests", timeout=60)  # fmt: skip
    assert r.returncode == 0 and "--max-compiles" in r.stdout
