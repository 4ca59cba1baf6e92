"""Each of the ten MIL kernels, simulated, against fp32 numpy math (MHA and GQA)."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
from mil_util import f16, random_case

from anetrain.config import ModelConfig, preset
from anetrain.mil import MilError
from anetrain.mil.kernels import KERNELS, build_specs
from anetrain.mil.reference import REFERENCE
from anetrain.mil.sim import Simulation

U = 2.0**-11  # fp16 unit roundoff (RNE): one rounding moves a value by at most U·|value|

# Error budget per output, in units of U relative to max|reference|. The reference runs in fp32 on
# the same fp16-exact inputs, so the only error is the simulator's per-op fp16 rounding (fp32
# accumulation adds ~K·2^-24, negligible). Count = fp16 roundings on the output's longest path,
# each worth at most U of its operand; scale factors ≤ 1 (cos, sin, P) keep the count additive:
#  1: one matmul (o, dgate, dattn, qBwd dx, v, h1, h3, dP)
#  3: two matmuls + add (kvBwd, ffnBwdW13t)
#  4: scores, ·scale, +mask, softmax (P)             5: P then Pᵀ·dA (dv_full)
#  6: projection, q·cos, rot·sin, add (+2 for |q| vs |rope(q)| maxima) (q_rope, k_rope)
#  6: h1, sigmoid, silu, gate, W2·gate, round (ffn);  4: h1, σ, silu, gate (gate)
#  6: P⊙dP, rowsum, dP−rs, P⊙, ·scale, matmul (dq, dk_full)
#  10: rope (6) + scores/scale/mask/softmax (4) + P·V (attn)
# Observed errors are 0.2–2 U (roundings are random); the budget is the first-order worst case,
# times 1.25 for the fp32 reference's own rounding order.
BUDGET = {"o": 1, "dgate": 1, "dattn": 1, "v": 1, "h1": 1, "h3": 1, "dP": 1, "dx": 3, "P": 4,
          "dv_full": 5, "q_rope": 6, "k_rope": 6, "ffn": 6, "gate": 4, "dq": 6, "dk_full": 6,
          "attn": 10, "q_pre": 1, "k_pre": 1}  # fmt: skip
# Qwen3's q/k norm on the path before RoPE (_head_rmsnorm): x/max|x|, y², mean, +eps term, pow
# (half the error of its operand), y·r, ·w: ≤ 6 more roundings for everything after it.
QK_EXTRA = {"q_rope": 6, "k_rope": 6, "attn": 6}

MHA = ModelConfig(dim=128, n_layers=1, n_heads=4, hidden_dim=320, seq_len=64)
GQA = ModelConfig(dim=128, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=320, seq_len=64)
GQA4 = ModelConfig(dim=128, n_layers=1, n_heads=8, n_kv_heads=2, hidden_dim=192, seq_len=64)
HD = ModelConfig(dim=128, n_layers=1, n_heads=4, n_kv_heads=2, head_size=48, hidden_dim=320,
                 seq_len=64)  # explicit head dim: q_dim 192, kv_dim 96 (Qwen3-like)
QK = HD.replace(qk_norm=True, norm_eps=1e-6)  # Qwen3: per-head RMSNorm of q and k before RoPE
# heads wider than half of dim: the q and k norm weights sit side by side, not stacked
QK_WIDE = ModelConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, head_size=64, hidden_dim=128,
                      seq_len=64, qk_norm=True)  # fmt: skip
CONFIGS = {"mha": MHA, "gqa": GQA, "gqa4": GQA4, "head_dim": HD, "qk_norm": QK,
           "qk_wide": QK_WIDE}  # fmt: skip
_SPECS: dict[str, dict] = {}


def specs(name: str):
    if name not in _SPECS:
        _SPECS[name] = build_specs(CONFIGS[name])
    return _SPECS[name]


def simulate(spec, packed, **kw) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small test shapes trip the ANE size warnings
        y = Simulation(spec.mil, spec.weights, **kw)(packed)
    return spec.out.unpack(y.astype(np.float32))


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_fp32_reference(cfg_name, kernel):
    cfg = CONFIGS[cfg_name]
    spec = specs(cfg_name)[kernel]
    rng = np.random.default_rng(zlib.crc32(f"{cfg_name}/{kernel}".encode()))  # same every run
    packed, logical = random_case(spec, cfg, rng)
    got = simulate(spec, packed)
    ref = REFERENCE[kernel](cfg, **logical)
    assert set(ref) == set(spec.out.names)
    for name, r in ref.items():
        err = float(np.abs(got[name] - r).max())
        budget = BUDGET[name] + (QK_EXTRA.get(name, 0) if cfg.qk_norm else 0)
        tol = 1.25 * budget * U * float(np.abs(r).max())
        assert err <= tol, f"{kernel}.{name}: max error {err:.3g} > {tol:.3g}"


def test_gqa_uses_llama2c_head_mapping():
    """Query head h must attend with kv head h // kv_group, not h % n_kv_heads (upstream §8.2-2)."""
    cfg, spec = GQA4, specs("gqa4")["sdpaFwd"]
    packed, logical = random_case(spec, cfg, np.random.default_rng(7))
    got = simulate(spec, packed)["attn"]
    ref = REFERENCE["sdpaFwd"](cfg, **logical)["attn"]
    upstream = REFERENCE["sdpaFwd"](cfg, **logical, kv_of=lambda h: h % cfg.n_kv_heads)["attn"]
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 10 * U * scale
    assert np.abs(got - upstream).max() > 0.1 * scale


@pytest.mark.parametrize("accum", ["fp32", "fp16"])
def test_row_sums_equal_the_broadcast_keep_dims_sum(accum):
    """sdpaBwd2's rowsum(P⊙dP), spread along the keys by a matmul with a one-hot block, is the
    fp16-rounded row sum in every column, bit for bit (no [.., 1] tensor needed)."""
    spec = specs("gqa")["sdpaBwd2"]
    packed, _ = random_case(spec, GQA, np.random.default_rng(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = Simulation(spec.mil, spec.weights, accum=accum)
    env = sim.values(packed)
    pdp = np.asarray(env["pdp"])  # [1,H,S,S]
    want = sim.cfg.r16(np.sum(pdp, axis=-1, keepdims=True, dtype=np.float32))  # [1,H,S,1]
    if accum == "fp16":  # the reduction's own fp16 chunks, as the simulator sums them
        want = np.asarray(env["rs"])[..., None]
    got = np.asarray(env["rs_m"])
    assert got.shape == pdp.shape and np.array_equal(got, np.broadcast_to(want, got.shape))
    assert np.abs(want).max() > 0


def test_fp16_accumulation_is_worse_but_bounded():
    spec = specs("mha")["ffnBwdW13t"]
    packed, logical = random_case(spec, MHA, np.random.default_rng(3))
    ref = REFERENCE["ffnBwdW13t"](MHA, **logical)["dx"]
    e32 = np.abs(simulate(spec, packed)["dx"] - ref).max()
    e16 = np.abs(simulate(spec, packed, accum="fp16")["dx"] - ref).max()
    assert e16 > e32
    # K/32 = 10 chunk roundings per matmul, two matmuls: ≤ 2·10 + 3 roundings
    assert e16 <= 23 * U * np.abs(ref).max()


def test_layouts_for_stories110m():
    ks = build_specs(preset("stories110m"), strict=True)  # all widths 64-aligned: no error
    shapes = {n: (k.inp.C, k.inp.W, k.out.C, k.out.W) for n, k in ks.items()}
    assert shapes == {
        "sdpaFwd": (768, 2560, 3072, 256), "woFwd": (768, 1024, 768, 256),
        "ffnFused": (768, 6400, 6912, 256), "ffnBwdW2t": (768, 2304, 2048, 256),
        "ffnBwdW13t": (2048, 2048, 768, 256), "wotBwd": (768, 1024, 768, 256),
        "sdpaBwd1": (3072, 256, 6912, 256), "sdpaBwd2": (7680, 256, 1536, 256),
        "qBwd": (768, 1024, 768, 256), "kvBwd": (768, 2048, 768, 256),
    }  # fmt: skip
    assert ks["ffnFused"].inp["w2"].stage == "raw" and ks["sdpaFwd"].inp["wq_t"].stage == "T"
    assert ks["sdpaFwd"].inp["wk_t"].s0 == 256 + 768


def test_strict_alignment_names_the_offending_widths():
    with pytest.raises(MilError, match=r"ffnFused input: surface width 592"):
        build_specs(preset("tiny"), strict=True)
    assert build_specs(preset("tiny"))["ffnFused"].misaligned()


def test_kernel_programs_are_unique():
    texts = [k.mil for k in build_specs(preset("stories110m")).values()]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("scale", [2.0**-6, 1.0, 2.0**10])
def test_qk_norm_holds_over_the_fp16_range(scale):
    """Qwen3's q/k norm divides each head column by its max |x| before squaring: projections of
    |x| ~ 1000 (x² overflows fp16) or ~ 0.015 (x² of most flushes to zero) still normalise
    correctly. (Much smaller projections lose their own values to fp16 before any norm.)"""
    spec = specs("qk_norm")["sdpaFwd"]
    packed, logical = random_case(spec, QK, np.random.default_rng(9))
    xs = spec.inp["xnorm"]
    logical["xnorm"] = f16(logical["xnorm"] * scale)
    packed = packed.copy()
    packed[xs.c0 : xs.c0 + xs.nch, xs.s0 : xs.s0 + xs.width] = logical["xnorm"]
    got = simulate(spec, packed)
    ref = REFERENCE["sdpaFwd"](QK, **logical)
    assert np.isfinite(got["q_rope"]).all()
    for name in ("q_rope", "k_rope", "attn"):
        err = float(np.abs(got[name] - ref[name]).max())
        tol = 1.25 * (BUDGET[name] + QK_EXTRA[name]) * U * float(np.abs(ref[name]).max())
        assert err <= tol, f"{name} at scale {scale}: max error {err:.3g} > {tol:.3g}"
