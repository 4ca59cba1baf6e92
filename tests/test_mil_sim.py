"""Simulator numerics: fp16 storage, FTZ (why loss scaling), overflow reports, the bytes API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from mil_util import random_case

from anetrain.config import ModelConfig, preset
from anetrain.mil import MilError, MilOverflowWarning
from anetrain.mil.ir import TensorType
from anetrain.mil.kernels import KERNELS, KernelSpec, build_specs
from anetrain.mil.sim import Simulation, run

TINY = build_specs(preset("tiny"))
GQA_CFG = preset("tiny", n_kv_heads=2)
SPECS = {"mha": (preset("tiny"), TINY), "gqa": (GQA_CFG, build_specs(GQA_CFG))}
pytestmark = pytest.mark.filterwarnings("ignore::anetrain.mil.errors.MilWarning")


def _qbwd(scale: float, ftz: bool = True, seed: int = 0):
    """dx = Wqᵀ·dq with maderix's magnitudes: gradients ~8e-5, weights ~0.036 (upstream.md §9)."""
    spec, rng = TINY["qBwd"], np.random.default_rng(seed)
    S, D = 64, 64
    dq = 8e-5 * rng.choice([-1.0, 1.0], (D, S)) * scale
    wq = 0.036 * rng.choice([-1.0, 1.0], (D, D))
    packed = spec.inp.pack({"dq": dq, "wq": wq})
    got = Simulation(spec.mil, spec.weights, ftz=ftz)(packed).astype(np.float32)
    staged = packed.astype(np.float64)  # exact math on the staged fp16 values
    ref = staged[:, S:].T @ staged[:, :S]
    return spec.out.unpack(got)["dx"], ref


def test_ftz_flushes_unscaled_gradients_and_loss_scaling_restores_them():
    dx, ref = _qbwd(1.0)
    tiny = np.abs(ref) < 2.0**-14  # below the smallest fp16 normal
    assert tiny.mean() > 0.9  # sums of ~2.9e-6 products are subnormal ...
    assert (dx[tiny] == 0).all()  # ... and the simulated ANE flushes them: gradients lost
    assert np.linalg.norm(dx - ref) > 0.9 * np.linalg.norm(ref)  # >90% of the gradient is gone
    dx256, ref256 = _qbwd(256.0)  # maderix's fix: loss scale 256 on dlogits
    assert np.count_nonzero(dx256) >= 0.99 * np.count_nonzero(np.abs(ref256) > 2**-14)
    np.testing.assert_allclose(dx256 / 256, ref256 / 256, rtol=2**-10, atol=0)


def test_without_ftz_subnormals_survive():
    dx, ref = _qbwd(1.0, ftz=False)
    nz = np.abs(ref) >= 2.0**-24  # at least the smallest fp16 subnormal
    assert np.count_nonzero(dx[nz]) == np.count_nonzero(nz)
    assert np.abs(dx - ref).max() <= 2.0**-25  # half a subnormal ulp


HEAD = (TINY["woFwd"].mil.split("\n    func")[0]) + "\n"


def _prog(body: str, shape=(1, 64, 1, 512)) -> str:
    t = f"tensor<fp16, [{', '.join(map(str, shape))}]>"
    return HEAD + f"    func main<ios18>({t} x) {{\n        {body}\n    }} -> (y);\n}}\n"


def test_every_op_result_is_rounded_to_fp16():
    text = _prog('tensor<fp16, [1, 64, 1, 512]> y = add(x=x, y=x)[name=string("y")];')
    x = np.full((1, 64, 1, 512), 1 + 2**-10, dtype=np.float16)
    y = Simulation(text)(x)
    assert y.dtype == np.float16 and float(y.flat[0]) == 2 + 2**-9


def _fp16_values(
    spec: KernelSpec, cfg: ModelConfig, seed: int, **kw
) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (op, value)} of every fp16-typed value of one simulated run (input, consts, ops)."""
    sim = Simulation(spec.mil, spec.weights, **kw)
    (f,) = sim.prog.functions.values()
    types = {n: (t, "input") for t, n in f.params}
    types.update({n: (t, s.op) for s in f.stmts for t, n in s.results})
    packed, _ = random_case(spec, cfg, np.random.default_rng(seed))
    env = sim.values(packed)
    fp16 = {n: (op, env[n]) for n, (t, op) in types.items()
            if isinstance(t, TensorType) and t.dtype == "fp16"}  # fmt: skip
    assert len(fp16) > 3 and all(isinstance(v, np.ndarray) for _, v in fp16.values())
    return fp16


@pytest.mark.parametrize("accum", ["fp32", "fp16"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_fp16_intermediate_of_every_kernel_is_an_fp16_number(kernel, accum):
    """Not just the outputs (which the output write rounds anyway): a value feeding a matmul or a
    softmax probability left in fp32 would make the simulator more precise than the ANE."""
    ops = set()
    for name, (cfg, specs) in SPECS.items():
        for n, (op, v) in _fp16_values(specs[kernel], cfg, 5, accum=accum).items():
            ops.add(op)
            ok = np.isnan(v) | (v.astype(np.float16).astype(np.float32) == v)
            assert ok.all(), f"{name} {kernel}: {op} {n!r} holds {v[~ok].flat[0]!r}, not an fp16"
            sub = (v != 0) & (np.abs(v) < 2.0**-14)  # ftz: no subnormals survive
            assert not sub.any(), f"{name} {kernel}: {op} {n!r} holds subnormal {v[sub].flat[0]!r}"
    if kernel in ("sdpaFwd", "sdpaBwd1"):
        assert "softmax" in ops  # the attention probabilities themselves are checked


def test_overflow_is_reported_with_the_op():
    text = _prog('tensor<fp16, [1, 64, 1, 512]> y = mul(x=x, y=x)[name=string("sq")];')
    sim = Simulation(text)
    with pytest.warns(MilOverflowWarning, match=r"line 5: mul 'sq': 32768 inf"):
        y = sim(np.full((1, 64, 1, 512), 300.0))
    assert np.isinf(y).all()  # 300² = 90000 > 65504 -> inf (mil_reference.md §3.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim(np.full((1, 64, 1, 512), 255.0))  # 65025 fits: no report


def test_fp16_accumulation_flag():
    spec = TINY["ffnBwdW2t"]
    rng = np.random.default_rng(1)
    packed = spec.inp.pack({"dffn": rng.standard_normal((64, 64)),
                            "w2": rng.standard_normal((64, 176)) * 0.1})  # fmt: skip
    a = Simulation(spec.mil, spec.weights)(packed)
    b = Simulation(spec.mil, spec.weights, accum="fp16")(packed)
    assert not np.array_equal(a, b)
    assert np.abs(a.astype(np.float32) - b).max() < 0.05 * np.abs(a.astype(np.float32)).max()
    with pytest.raises(MilError, match="accum"):
        Simulation(spec.mil, spec.weights, accum="bf16")


def test_run_bytes_api_matches_simulation_and_checks_size():
    spec = TINY["sdpaBwd1"]
    x = np.random.default_rng(2).standard_normal(spec.inp.shape).astype(np.float16)
    out = run(spec.mil, spec.weights, x.tobytes())
    assert out == Simulation(spec.mil, spec.weights)(x).tobytes()
    assert len(out) == spec.out.nbytes
    with pytest.raises(MilError, match="bytes"):
        run(spec.mil, spec.weights, x.tobytes()[:-2])
    with pytest.raises(MilError, match="not in the weights"):
        run(spec.mil, {}, x.tobytes())


def test_causal_softmax_rows_sum_to_one_and_mask_overflow_is_harmless():
    spec = TINY["sdpaBwd1"]
    x = (np.random.default_rng(3).standard_normal(spec.inp.shape) * 30).astype(np.float16)
    sim = Simulation(spec.mil, spec.weights)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # -65504 + score < -16 is -inf inside, but the output is finite
        y = spec.out.unpack(sim(x).astype(np.float32))
    p = y["P"].reshape(4, 64, 64)
    assert np.allclose(p.sum(-1), 1, atol=64 * 2**-11)
    assert (np.triu(np.ones((64, 64)), 1)[None] * p == 0).all()  # causal
    assert any("inf" in e for e in sim.events)  # recorded, not warned
