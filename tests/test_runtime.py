"""Runtimes: SimRuntime and LatencyRuntime anywhere; AneRuntime against the GNUstep mock."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from conftest import MOCK_SO, ROOT, mock_env, mock_framework, perturb_norms, tiny_cfg

from anetrain import native
from anetrain.backends.mil import MilKernels
from anetrain.backends.runtime import SimRuntime
from anetrain.bench.latency import LatencyRuntime
from anetrain.mil.errors import MilWarning
from anetrain.mil.kernels import build_specs
from anetrain.mil.sim import Simulation
from anetrain.model import DwPool, micro_step
from anetrain.params import init_params


def _specs(cfg=None):
    return build_specs(cfg or tiny_cfg())


def _fill(rt, k, rng) -> np.ndarray:
    """A new input surface of kernel k filled with random fp16; returns its fp32 values [C, W]."""
    s = k.new_input()
    x = rng.standard_normal((k.spec.inp.C, k.spec.inp.W), dtype=np.float32)  # [C_in, W]
    with s.lock() as v:
        native.pack(v, 0, 0, x)
    return s


# ---- SimRuntime / LatencyRuntime -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::anetrain.mil.errors.MilWarning")
def test_sim_runtime_runs_the_parsed_program_on_surface_bits():
    spec = _specs()["ffnFused"]
    rt = SimRuntime()
    k = rt.compile(spec)
    rng = np.random.default_rng(0)
    a, b = _fill(rt, k, rng), _fill(rt, k, rng)
    ref = Simulation(spec.mil, spec.weights)
    for s in (a, b, a):  # several input surfaces share one output surface and one parse
        k.eval(s)
        with s.lock() as x, k.out.lock(read_only=True) as y:
            assert y.shape == (spec.out.C, spec.out.W)
            np.testing.assert_array_equal(y, ref(x.view(np.float16)).view(np.uint16)
                                          .reshape(y.shape))  # fmt: skip
    assert (rt.compiles, rt.evals) == (1, 3) and rt.eval_seconds > 0


def test_copy_moves_fp16_bits():
    rt = SimRuntime()
    specs = _specs()
    k1, k2 = rt.compile(specs["sdpaBwd1"]), rt.compile(specs["sdpaBwd2"])
    src = _fill(rt, k1, np.random.default_rng(1))
    dst = k2.new_input()
    q1, q2 = specs["sdpaBwd1"].inp["q_rope"], specs["sdpaBwd2"].inp["q_rope"]
    rt.copy(dst, q2.c0, q2.s0, src, q1.c0, q1.s0, q1.nch, q1.width)
    with src.lock() as a, dst.lock() as b:
        np.testing.assert_array_equal(b[q2.c0 : q2.c0 + q2.nch], a[q1.c0 : q1.c0 + q1.nch])
        assert not b[: q2.c0].any()


def test_latency_runtime_sleeps_and_logs():
    specs = _specs()
    rt = LatencyRuntime({n: 0.002 for n in specs})
    k = rt.compile(specs["woFwd"])
    s = k.new_input()
    t = time.perf_counter()
    for _ in range(5):
        k.eval(s)
    assert time.perf_counter() - t >= 0.010
    assert [e[0] for e in rt.log] == ["woFwd"] * 5 and rt.eval_seconds >= 0.010
    assert all(e[3] + 0.002 <= e[4] for e in rt.log)  # (name, cpu0, cpu1, t0, t1)


# ---- AneRuntime over the mock ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ane_mod():
    ane = pytest.importorskip("anetrain.backends.ane")
    if not ane.built():
        pytest.skip("anetrain._ane is not built (ANETRAIN_OBJC=gnustep pip install "
                    "--no-build-isolation -e .)")  # fmt: skip
    if not MOCK_SO.exists():
        pytest.skip(f"{MOCK_SO.relative_to(ROOT)} is not built (make mock)")
    return ane


@pytest.fixture(scope="module")
def mock(ane_mod):
    return mock_framework()


@pytest.fixture
def ane_rt(mock):
    """An AneRuntime over the mock, which evaluates through the simulator (reset first: reset
    clears the mock's eval callback)."""
    from anetrain.backends.runtime import AneRuntime

    mock.reset(reset_compiles=True)
    mock.use_simulator()
    rt = AneRuntime(str(MOCK_SO))
    yield rt
    rt.close()
    mock.reset(reset_compiles=True)


def _grads(cfg, runtime, seed=3):
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng)
    perturb_norms(params, rng)
    tok = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1)
    grads = params.zeros_like()
    mil = MilKernels(cfg, params, runtime)
    with DwPool(1) as pool:
        loss = micro_step(params, grads, mil, tok[:-1], tok[1:], False, 2.0**12, pool)
    mil.close()
    return loss, grads


@pytest.mark.parametrize("kv", [None, 2])
def test_micro_step_through_mock_is_bit_identical_to_sim(ane_rt, mock, kv):
    cfg = tiny_cfg(n_kv_heads=kv)
    assert not ane_rt.strict  # a replacement framework: not held to the ANE's size rules
    loss_a, g_a = _grads(cfg, ane_rt)
    loss_s, g_s = _grads(cfg, SimRuntime())
    assert loss_a == loss_s
    np.testing.assert_array_equal(g_a.flat, g_s.flat)
    assert mock.calls("eval") == 10 * cfg.n_layers and ane_rt.evals == 10 * cfg.n_layers


def test_run_compiles_exactly_ten_kernels(ane_rt, mock):
    cfg = tiny_cfg()
    mil = MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), ane_rt)
    mil.update_weights()
    mil.update_weights()
    assert ane_rt.compiles == 10 and ane_rt.device_compiles == 10 and mock.compiles() == 10
    mil.close()
    assert mock.loaded_models() == 0


def test_injected_failures_surface_as_ane_error(ane_rt, mock, ane_mod):
    cfg = tiny_cfg()
    mock.fail("compile", code=11, description="mock compiler rejected MIL")
    with pytest.raises(ane_mod.AneError, match=r"^kernel sdpaFwd: .*\(11\): mock compiler "
                       "rejected MIL"):  # fmt: skip
        MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), ane_rt)
    mil = MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), ane_rt)
    x = np.zeros((cfg.q_dim, cfg.seq_len), np.float32)
    mock.fail("eval", code=6, description="program inference error")
    with pytest.raises(ane_mod.AneError, match=r"^kernel woFwd: .*\(6\): program inference "
                       "error"):  # fmt: skip
        mil.wo_fwd(0, x)
    mil.wo_fwd(0, x)  # one-shot fault; the kernel still works
    mil.close()


def test_make_kernels_owns_and_closes_its_ane_runtime(mock, ane_mod, monkeypatch):
    """What train.py gets: closing the kernels closes the runtime too (unloads, removes the
    temp dirs at the end of the run, not at interpreter exit); a failed compile of the third
    kernel frees the two already compiled."""
    from anetrain.backends import make_kernels

    monkeypatch.setenv(ane_mod.FRAMEWORK_ENV, str(MOCK_SO))
    mock.reset(reset_compiles=True)
    cfg = tiny_cfg()
    params = init_params(cfg, np.random.default_rng(0))
    kern = make_kernels("ane", cfg, params)
    assert mock.loaded_models() == 10 and mock.live_surfaces() > 0
    kern.close()
    assert mock.loaded_models() == 0 and mock.live_surfaces() == 0 and mock.live_objects() == 0
    with pytest.raises(ane_mod.AneError, match="closed"):  # the runtime's C context is gone
        kern.rt.device.compile("x", {}, 4, 4)
    mock.reset(reset_compiles=True)
    mock.set_compile_limit(2)
    with pytest.raises(ane_mod.AneError, match="^kernel ffnFused: .*ANECCompile"):
        make_kernels("ane", cfg, params)
    assert mock.loaded_models() == 0 and mock.live_surfaces() == 0 and mock.live_objects() == 0
    mock.reset(reset_compiles=True)


def test_simulator_error_inside_mock_eval_is_ane_error(ane_rt, ane_mod, monkeypatch):
    import mock_control

    spec = _specs()["woFwd"]
    k = ane_rt.compile(spec)
    s = k.new_input()

    def boom(x):
        raise ValueError("kernel exploded")

    monkeypatch.setitem(mock_control.SIMS, mock_control.sim_key(spec.mil, spec.weights), boom)
    with pytest.raises(ane_mod.AneError, match="program failed: ValueError: kernel exploded"):
        k.eval(s)


def test_strict_runtime_checks_the_mil_before_compiling(mock):
    """A strict runtime (the default over the system framework) runs our constraint checker on
    the exact text first: a rule the ANE enforces gives a MilError naming the kernel, and the
    framework is never asked to compile it; a clean kernel goes through to the framework."""
    from dataclasses import replace

    from anetrain.backends.runtime import AneRuntime
    from anetrain.mil.errors import MilError

    mock.reset(reset_compiles=True)
    ane_rt = AneRuntime(str(MOCK_SO), strict=True)
    try:
        spec = build_specs(tiny_cfg(), strict=False)["woFwd"]
        two_inputs = spec.mil.replace(") {", ", tensor<fp16, [1, 64, 1, 64]> extra) {", 1)
        with pytest.raises(MilError, match=r"^woFwd: .*2 inputs; the ANE takes exactly one"):
            ane_rt.compile(replace(spec, mil=two_inputs))
        assert mock.compiles() == 0 and ane_rt.compiles == 0
        with pytest.warns(MilWarning):  # tiny is not ANE-aligned: warnings, but it compiles
            ane_rt.compile(spec)
        assert mock.compiles() == 1
    finally:
        ane_rt.close()
        mock.reset(reset_compiles=True)


def test_strict_by_default_only_over_the_system_framework(mock, ane_mod, monkeypatch):
    """AneRuntime's policy knows nothing of the mock: strict when the framework is the system
    one, not for a replacement, unless asked; and it never routes evaluations anywhere (the
    mock left alone copies the input surface into the output)."""
    from anetrain.backends.runtime import AneRuntime

    mock.reset(reset_compiles=True)
    for path, strict, want in [(MOCK_SO, None, False), (MOCK_SO, True, True)]:
        rt = AneRuntime(str(path), strict=strict)
        assert rt.strict is want
        rt.close()
    monkeypatch.setattr(ane_mod, "SYSTEM_FRAMEWORK", str(MOCK_SO))  # as if it were the system's
    rt = AneRuntime()
    try:
        assert rt.strict and rt.framework_path == str(MOCK_SO)
        spec = build_specs(tiny_cfg(), strict=False)["woFwd"]
        with pytest.warns(MilWarning):  # checked: tiny is not ANE-aligned
            k = rt.compile(spec)
        s = _fill(rt, k, np.random.default_rng(2))
        k.eval(s)
        with s.lock() as x, k.out.lock(read_only=True) as y:
            n = min(x.size, y.size)
            assert np.array_equal(y.reshape(-1)[:n], x.reshape(-1)[:n])  # copied, not simulated
    finally:
        rt.close()


def test_child_processes_get_the_simulator_from_sitecustomize(ane_mod):
    """tests/mock/sitecustomize.py (mock_env): nothing loads at start-up (train.py sizes BLAS
    before numpy), the bridge is installed right after anetrain.backends.ane is imported, and
    a compiled program then evaluates through the simulator."""
    import subprocess
    import sys

    code = """
import sys
assert "numpy" not in sys.modules and "mock_control" not in sys.modules
import numpy as np
from anetrain.backends.runtime import AneRuntime
from anetrain.mil.kernels import build_specs
from anetrain.mil.sim import Simulation
from conftest import tiny_cfg
spec = build_specs(tiny_cfg())["woFwd"]
rt = AneRuntime()
k = rt.compile(spec)
s = k.new_input()
x = np.random.default_rng(0).standard_normal((spec.inp.C, spec.inp.W)).astype(np.float16)
with s.lock() as v:
    v[...] = x.view(np.uint16)
k.eval(s)
with k.out.lock(read_only=True) as y:
    want = Simulation(spec.mil, spec.weights, check=False)(x).view(np.uint16).reshape(y.shape)
    print(bool(np.array_equal(y, want)))
rt.close()
"""
    env = mock_env()
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")  # conftest.tiny_cfg
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                       text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stdout + r.stderr
    env["PYTHONPATH"] = env["PYTHONPATH"].split(os.pathsep, 1)[1]  # without tests/mock
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                       text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


def test_compile_eval_free_cycles_leak_nothing(ane_rt, mock):
    base = mock.live_objects()  # the open device's own objects
    spec = _specs()["woFwd"]
    x = np.ones((spec.inp.C, spec.inp.W), np.float32)  # [C_in, W]
    for _ in range(200):
        k = ane_rt.compile(spec)
        s = k.new_input()
        with s.lock() as v:
            native.pack(v, 0, 0, x)
        k.eval(s)
        k.free()
    assert not ane_rt.executables
    assert mock.live_objects() == base and mock.live_surfaces() == 0
    assert mock.loaded_models() == 0 and mock.locked_surfaces() == 0
    assert ane_rt.compiles == 200
    ane_rt.close()
    assert mock.live_objects() == 0


def test_overlap_bench_measures_kernel_time_and_critical_path(capsys):
    from anetrain.bench import overlap

    cfg = tiny_cfg()
    seconds = overlap.m4_seconds(cfg)
    assert set(seconds) == set(_specs(cfg)) and all(s > 0 for s in seconds.values())
    res = overlap.run(cfg, {n: 0.001 for n in seconds}, steps=1, accum=1)
    (row,) = res["rows"]
    assert row["evals"] == 10 * cfg.n_layers
    assert row["kernel"] >= row["evals"] * 0.001 and 0 < row["critical"] <= row["main_cpu"] + 1e-3
    assert row["step"] >= row["kernel"] and row["ratio"] > 0.5
    assert 1.0 <= row["dep_floor"] <= row["floor"] and 1.0 <= row["cap_floor"] <= row["floor"]
    assert row["dw_bwd"] > 0 and row["dw_room"] > 0
    assert overlap.main(["--model", "tiny", "--steps", "1", "--vocab-size", "97"]) == 0
    assert "ratio step / (kernel + critical)" in capsys.readouterr().out


def test_dependency_floor_counts_only_dw_queued_during_the_last_backward():
    from anetrain.bench.overlap import dependency_floor

    # (name, main CPU at start, at end, wall at start, at end): one forward, two backward evals
    log = [("ffnFused", 0, 0, 0, 1), ("ffnBwdW2t", 0, 0, 2, 3), ("kvBwd", 1, 1, 4, 5)]
    jobs = [(1.0, 9.0), (2.5, 9.0)]  # (submitted at, CPU s): the first precedes the backward
    # backward: 2 s of kernels + 1 s main CPU -> room 2 cores * 3 s - 1 s = 5; wait (9-5)/2 = 2
    floor, work, room = dependency_floor(log, jobs, kernel=3.0, crit=1.0, cores=2)
    assert (work, room) == (9.0, 5.0) and floor == (3.0 + 1.0 + 2.0) / (3.0 + 1.0)
    assert dependency_floor(log, jobs[:1], 3.0, 1.0, 2)[0] == 1.0  # nothing left to wait for
