"""The kernels for the target model shapes: no padded last axes, and the ANE's size rules."""

from __future__ import annotations

import numpy as np
import pytest
from mil_util import ANE_SHAPES

from anetrain.backends import make_kernels, pick_backend
from anetrain.backends import platform as plat
from anetrain.backends.mil import MilKernels
from anetrain.backends.runtime import SimRuntime
from anetrain.config import ConfigError, ModelConfig, preset
from anetrain.mil.check import LAST_AXIS_BYTES, check_program
from anetrain.mil.kernels import build_specs
from anetrain.mil.parse import parse
from anetrain.params import init_params

# What the real ANE says to each shape: None = it fits; else the one line auto prints and
# --backend ane raises. TinyLlama's ffnFused packs x2norm and W1ᵀ, W3ᵀ, W2 side by side: 256 +
# 3·5632 = 17152 columns, over the compiler's per-axis limit (mil_reference.md §5 #1).
EXPECTED_FIT = {
    "stories110m": None,
    "smollm2-135m": None,
    "smollm2-360m": None,
    "tinyllama-1.1b": "model dim 2048, hidden 5632, seq 256 breaks the ANE's size limits: ffnFused "
                      "input 'x' [1, 2048, 1, 17152]: dim 3 = 17152 > 16384 [dim-limit]",
    "qwen3-0.6b": None,
}  # fmt: skip


@pytest.mark.parametrize("shape", list(ANE_SHAPES))
def test_no_tensor_has_a_padded_last_axis(shape):
    """Every shape is 64/32-aligned (build_specs strict), and no function input, op output or
    BLOBFILE tensor of any kernel has a last axis under 64 bytes (check.py rule 20): RoPE
    pairs live along S, not in [.., 2] tensors the ANE would pad 16x."""
    cfg = ANE_SHAPES[shape].replace(n_layers=1)
    specs = build_specs(cfg, strict=True)
    for name, spec in specs.items():
        issues, _ = check_program(parse(spec.mil), spec.weights)
        assert [str(i) for i in issues if i.rule == "last-axis"] == [], name
    # the rule itself sees these programs: the tiny preset's 16-wide heads (32 bytes) do trip it
    tiny = build_specs(preset("tiny"))["sdpaFwd"]
    issues, _ = check_program(parse(tiny.mil), tiny.weights)
    assert any(i.rule == "last-axis" and "16]" in i.message for i in issues)
    assert LAST_AXIS_BYTES == 64


def test_ane_size_rules_per_shape():
    assert set(EXPECTED_FIT) == set(ANE_SHAPES)
    got = {name: plat.ane_misfit(cfg) for name, cfg in ANE_SHAPES.items()}
    assert got == EXPECTED_FIT


class _StrictSim(SimRuntime):
    """The simulator with the real ANE's size rules, standing in for AneRuntime."""

    name, strict = "ane", True


def test_strict_runtime_refuses_a_shape_over_the_limits():
    """--backend ane names the tensor and the rule before compiling anything (the checker would
    otherwise stop ffnFused's compile after sdpaFwd and woFwd had compiled)."""
    cfg = ANE_SHAPES["tinyllama-1.1b"].replace(n_layers=1)
    rt = _StrictSim()
    with pytest.raises(ConfigError) as e:
        MilKernels(cfg, None, rt)  # type: ignore[arg-type]  # refused before any staging
    assert str(e.value) == (f"--backend ane: {EXPECTED_FIT['tinyllama-1.1b']}; use --backend "
                            "sim or cpu for this size")  # fmt: skip
    assert rt.compiles == 0


# an ANE-aligned Qwen3-like shape small enough to allocate: head_dim 128, GQA, q/k norm
QK_ALIGNED = ModelConfig(dim=256, n_layers=1, n_heads=2, n_kv_heads=1, head_size=128,
                         hidden_dim=512, vocab_size=97, seq_len=64, qk_norm=True)  # fmt: skip


def test_qk_norm_runs_on_the_mil_kernels(monkeypatch, capsys):
    """Qwen3's q/k norm is in sdpaFwd: sim and a strict (ANE-rules) runtime build the kernels,
    sdpa_fwd returns the pre-norm projections too, and auto picks the ANE for such a model."""
    rng = np.random.default_rng(0)
    params = init_params(QK_ALIGNED, rng)
    x = rng.standard_normal((QK_ALIGNED.dim, QK_ALIGNED.seq_len), dtype=np.float32)
    sim = make_kernels("sim", QK_ALIGNED, params)
    strict = MilKernels(QK_ALIGNED, params, _StrictSim())
    try:
        outs = strict.sdpa_fwd(0, x)
        assert [o.shape for o in outs] == [(256, 64), (256, 64), (128, 64), (128, 64), (256, 64),
                                           (128, 64)]  # fmt: skip
        for a, b in zip(outs, sim.sdpa_fwd(0, x)):
            np.testing.assert_array_equal(a, b)
    finally:
        sim.close()
        strict.close()
    assert plat.ane_misfit(QK_ALIGNED) is None
    monkeypatch.setattr(plat, "apple_silicon", lambda: True)
    monkeypatch.setattr(plat, "macos_version", lambda: (15, 1))
    monkeypatch.setattr(plat, "ane_unavailable", lambda: None)
    assert pick_backend("auto", cfg=QK_ALIGNED) == "ane"
    assert pick_backend("auto", cfg=ANE_SHAPES["qwen3-0.6b"]) == "ane"
    assert capsys.readouterr().out == "backend auto: using ane (Apple Neural Engine found)\n" * 2
