"""The kernels for the target model shapes: no padded last axes, and the ANE's size rules."""

from __future__ import annotations

import numpy as np
import pytest
from mil_util import ANE_SHAPES

from anetrain.backends import make_kernels, pick_backend
from anetrain.backends import platform as plat
from anetrain.backends.mil import MilKernels
from anetrain.backends.runtime import SimRuntime
from anetrain.config import ConfigError, preset
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


QK = "Qwen3's q/k norm is not implemented in the MIL kernels yet; use --backend cpu"


def test_qk_norm_is_refused_by_the_mil_kernels(monkeypatch, capsys):
    cfg = preset("tiny", vocab_size=97, qk_norm=True)
    params = init_params(cfg, np.random.default_rng(0))
    with pytest.raises(ConfigError) as e:
        make_kernels("sim", cfg, params)
    assert str(e.value) == f"--backend sim: {QK}"
    with pytest.raises(ConfigError) as e:
        MilKernels(cfg, params, _StrictSim())
    assert str(e.value) == f"--backend ane: {QK}"
    make_kernels("cpu", cfg, params).close()  # the cpu kernels take it
    # auto on an Apple-silicon Mac: the ANE is there, the kernels are not
    monkeypatch.setattr(plat, "apple_silicon", lambda: True)
    monkeypatch.setattr(plat, "macos_version", lambda: (15, 1))
    monkeypatch.setattr(plat, "ane_unavailable", lambda: None)
    assert pick_backend("auto", cfg=cfg) == "cpu"
    assert capsys.readouterr().out == ("backend auto: using cpu (Qwen3's q/k norm is not "
                                       "implemented in the MIL kernels yet)\n")  # fmt: skip
    assert pick_backend("auto", cfg=ANE_SHAPES["qwen3-0.6b"]) == "ane"
