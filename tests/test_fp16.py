"""fp32 <-> fp16: every implementation bit-exact against numpy (all halves, >= 10M floats)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from anetrain import native

AVAILABLE = [name for name, ok in native.fp16_impls().items() if ok]
IMPLS = AVAILABLE + [-1]  # every implementation on this machine, plus "best"


def half_is_nan(h: np.ndarray) -> np.ndarray:
    return ((h & 0x7C00) == 0x7C00) & ((h & 0x03FF) != 0)


def np_f16_bits(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float16).view(np.uint16)


def assert_encode_matches_numpy(x: np.ndarray, h: np.ndarray) -> None:
    ref = np_f16_bits(x)
    nan_in = np.isnan(x)
    ok = ~nan_in
    bad = np.flatnonzero(ok & (h != ref))
    assert bad.size == 0, (
        f"{bad.size} mismatches, first x={x[bad[0]]!r} (bits {x.view(np.uint32)[bad[0]]:#010x}) "
        f"-> {h[bad[0]]:#06x}, numpy {ref[bad[0]]:#06x}")
    assert half_is_nan(h[nan_in]).all(), "NaN input must give a NaN half"
    assert ((h[nan_in] >> 15) == (x.view(np.uint32)[nan_in] >> 31)).all(), "NaN sign lost"


def encode_corpus(seed: int = 0) -> np.ndarray:
    """>= 10M fp32 values: random bit patterns, every tie, subnormal results, overflow edges."""
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, 2**32, size=8_000_000, dtype=np.uint64).astype(np.uint32)
             .view(np.float32)]
    # Exact midpoints between every pair of adjacent finite halves (both mantissa parities), the
    # neighbouring floats one ulp either side, and the 65504 / inf midpoint 65520.
    lo = np.arange(0, 0x7C00, dtype=np.uint16)
    a = lo.view(np.float16).astype(np.float64)
    b = (lo + 1).view(np.float16).astype(np.float64)
    mid = ((a + b) / 2).astype(np.float32)
    assert (mid.astype(np.float64) == (a + b) / 2).all()  # the midpoints are exact in fp32
    up, down = np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))
    ties = np.concatenate([mid, up, down])
    parts += [ties, -ties]
    # Results in the subnormal half range [2^-25, 2^-14] and a bit beyond, both signs.
    sub = np.exp2(rng.uniform(-27, -13, size=2_000_000)).astype(np.float32)
    sub[::2] *= -1
    parts.append(sub)
    # Large values near the top of the half range.
    parts.append(rng.uniform(65000, 66000, size=100_000).astype(np.float32))
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65519.99, 65520.0, -65520.0,
                        65504.0, 65536.0, 2.0**-24, 2.0**-25, 2.0**-26, 3 * 2.0**-26, 2.0**-14,
                        np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -1e-45],
                       dtype=np.float32)
    special = np.concatenate([special, np.float32(65519.99).reshape(1),
                              np.array([0x7F800001, 0xFFC00001, 0x7FBFFFFF, 0x7FC00000],
                                       dtype=np.uint32).view(np.float32)])
    parts.append(special)
    x = np.concatenate(parts)
    assert x.size >= 10_000_000
    return x


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return encode_corpus()


def test_best_impl_is_listed():
    assert native.best_impl() in AVAILABLE
    assert native.fp16_impls()["scalar"]
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        flags = open("/proc/cpuinfo").read()
        assert native.fp16_impls()["f16c"] == (" f16c" in flags)


@pytest.mark.parametrize("impl", IMPLS)
def test_decode_all_halves(impl):
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    x = native.f16_to_f32(h, impl=impl)
    ref = h.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    assert (x.view(np.uint32)[~nan] == ref.view(np.uint32)[~nan]).all()
    assert np.isnan(x[nan]).all()
    assert ((x.view(np.uint32)[nan] >> 31) == (h[nan] >> 15)).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_matches_numpy(impl, corpus):
    h = native.f32_to_f16(corpus, impl=impl)
    assert_encode_matches_numpy(corpus, h)


@pytest.mark.parametrize("impl", IMPLS)
def test_round_trip_all_halves(impl):
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    back = native.f32_to_f16(native.f16_to_f32(h, impl=impl), impl=impl)
    nan = half_is_nan(h)
    assert (back[~nan] == h[~nan]).all()
    assert half_is_nan(back[nan]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_tails_and_offsets(impl):
    rng = np.random.default_rng(1)
    base = (rng.standard_normal(200) * 1000).astype(np.float32)
    for n in range(0, 70):
        for off in (0, 1, 3):
            x = base[off:off + n]  # unaligned starts and every tail length
            h = native.f32_to_f16(x, impl=impl)
            assert h.shape == (n,)
            assert_encode_matches_numpy(x, h)
            y = native.f16_to_f32(h, impl=impl)
            assert (y == h.view(np.float16).astype(np.float32)).all()


def test_tail_does_not_write_past_out():
    x = np.ones(37, np.float32)
    guard = np.full(64, 0xABCD, np.uint16)
    native.f32_to_f16(x, out=guard[:37])
    assert (guard[:37] == 0x3C00).all() and (guard[37:] == 0xABCD).all()
    g32 = np.full(64, 7.0, np.float32)
    native.f16_to_f32(guard[:37], out=g32[:37])
    assert (g32[:37] == 1.0).all() and (g32[37:] == 7.0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_threads(impl, corpus):
    x = corpus[: 3_000_001].reshape(-1)  # odd size: uneven chunks plus a scalar tail
    h = native.f32_to_f16(x, impl=impl, threads=2)
    assert_encode_matches_numpy(x, h)
    y = native.f16_to_f32(h, impl=impl, threads=2)
    assert (y.view(np.uint32) == native.f16_to_f32(h, impl="scalar").view(np.uint32)).all()


def test_shapes_and_errors():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    h = native.f32_to_f16(x)
    assert h.shape == (3, 4) and h.dtype == np.uint16
    assert native.f16_to_f32(h).shape == (3, 4)
    with pytest.raises(ValueError, match="dtype"):
        native.f32_to_f16(x.astype(np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        native.f32_to_f16(x.T)
    with pytest.raises(ValueError, match="shape"):
        native.f32_to_f16(x, out=np.empty(5, np.uint16))
    with pytest.raises(ValueError):
        native.f32_to_f16(x, impl="bogus")
    if not native.fp16_impls()["neon"]:
        with pytest.raises(ValueError, match="not available"):
            native.f32_to_f16(x, impl="neon")


def test_force_scalar_semantics(monkeypatch, corpus):
    monkeypatch.setattr(native, "FORCE_SCALAR", True)
    assert native.best_impl() == "scalar"
    assert native._impl_id(-1) == 0
    x = corpus[:2_000_000]
    assert_encode_matches_numpy(x, native.f32_to_f16(x, threads=2))


def test_force_scalar_env():
    code = ("import numpy as np; from anetrain import native as n; "
            "assert n.FORCE_SCALAR and n.best_impl() == 'scalar'; "
            "x = np.float32([1.0, 65520.0]); assert list(n.f32_to_f16(x)) == [0x3C00, 0x7C00]; "
            "print('ok')")
    env = dict(os.environ, ANETRAIN_FORCE_SCALAR="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
