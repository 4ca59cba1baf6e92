"""CPU ops vs float64 numpy references (explicit tolerances), finite differences, torch AdamW."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from anetrain import native
from anetrain.rope import rope_tables


def rand(shape: tuple[int, ...] | int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def central_diff(f, x: np.ndarray, idx: list[tuple[int, ...]], h: float = 1e-2) -> np.ndarray:
    """d f / d x at the given indices; f returns a float64 scalar, x is perturbed in place."""
    out = []
    for i in idx:
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        out.append((fp - fm) / (2 * h))
    return np.array(out)


def some_indices(shape: tuple[int, ...], k: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(k)]


# ---- exp -----------------------------------------------------------------------------------------

EXP_MAX_REL = 1.2e-7  # measured max: 8.1e-8 (x86-64 gcc and clang), 8.4e-8 (arm64 clang, with fma)


def test_exp_accuracy_dense():
    """Every 2^-10 step over the whole finite, normal-result range, plus random points near 0."""
    x = np.arange(-87.3, 88.72, 2.0**-10, dtype=np.float64).astype(np.float32)
    x = np.concatenate([x, rand(1_000_003, 60, 3.0), np.float32([0.0, -0.0, 1e-30, -1e-30])])
    for threads in (1, 2):
        y = native.exp(x, threads=threads)
        ref = np.exp(x.astype(np.float64))
        rel = np.abs(y.astype(np.float64) - ref) / ref
        assert rel.max() <= EXP_MAX_REL, (rel.max(), x[rel.argmax()])


def test_exp_extremes_and_special_values():
    tiny, fmax = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    # overflow boundary: the last finite result and the first inf
    hi = np.float32(np.log(fmax))  # 88.72284 rounds above ln(FLT_MAX)
    lo_fin = np.nextafter(hi, np.float32(0))
    x = np.array([np.inf, -np.inf, np.nan, -np.nan, 89.0, 1e30, -1e30, -200.0, hi, lo_fin],
                 np.float32)
    y = native.exp(x)
    assert y[0] == np.inf and y[1] == 0.0 and np.isnan(y[2]) and np.isnan(y[3])
    assert y[4] == np.inf and y[5] == np.inf and y[6] == 0.0 and y[7] == 0.0
    assert y[8] == np.inf and np.isfinite(y[9])
    assert abs(float(y[9]) - np.exp(float(lo_fin))) <= EXP_MAX_REL * fmax
    # subnormal results: within one unit of the smallest subnormal; all zero below -103.98
    xs = np.linspace(-103.95, -87.34, 100_001, dtype=np.float32)
    ys, ref = native.exp(xs).astype(np.float64), np.exp(xs.astype(np.float64))
    assert (np.abs(ys - ref) <= 2.0**-149).all()
    assert (ys < tiny).any() and (native.exp(np.float32([-104.0, -110.0, -1e4])) == 0.0).all()
    # in place, any shape
    z = rand((7, 9), 61)
    ref = native.exp(z)
    assert native.exp(z, out=z) is z and (z == ref).all()


# ---- RMSNorm -------------------------------------------------------------------------------------


def rms_ref(x, w, eps):
    x, w = x.astype(np.float64), w.astype(np.float64)
    r = 1.0 / np.sqrt((x * x).mean(0) + eps)  # [S]
    return w[:, None] * x * r, r


def rms_bwd_ref(dy, x, w, eps):
    x, w, dy = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    D = x.shape[0]
    r = 1.0 / np.sqrt((x * x).mean(0) + eps)
    c = (w[:, None] * dy * x).sum(0)
    dx = r * (w[:, None] * dy - x * r**2 * c / D)
    dw = (dy * x * r).sum(1)
    return dx, dw


@pytest.mark.parametrize("D,S", [(64, 10), (768, 256), (48, 300)])  # 300: two position blocks
def test_rmsnorm_fwd(D, S):
    x, w = rand((D, S), 1, 2.0), rand(D, 2) + 1.0
    y, r = native.rmsnorm_fwd(x, w, 1e-5)
    yr, rr = rms_ref(x, w, 1e-5)
    np.testing.assert_allclose(r, rr, rtol=1e-6)
    np.testing.assert_allclose(y, yr, rtol=1e-5, atol=1e-6)
    y2, _ = native.rmsnorm_fwd(x.copy(), w, 1e-5, out=None)
    xa = x.copy()
    native.rmsnorm_fwd(xa, w, 1e-5, out=xa)  # in place
    assert (xa == y2).all()


@pytest.mark.parametrize("D,S", [(64, 10), (96, 300)])
def test_rmsnorm_bwd(D, S):
    x, w, dy = rand((D, S), 3), rand(D, 4) * 0.5 + 1.5, rand((D, S), 5)
    _, r = native.rmsnorm_fwd(x, w, 1e-5)
    dw = np.full(D, 0.25, np.float32)  # accumulates onto existing contents
    dx = native.rmsnorm_bwd(dy, x, w, r, dw)
    dxr, dwr = rms_bwd_ref(dy, x, w, 1e-5)
    np.testing.assert_allclose(dx, dxr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, dwr + 0.25, rtol=1e-4, atol=1e-4)
    # out=dy (in place) gives the same answer
    dyc, dw2 = dy.copy(), np.full(D, 0.25, np.float32)
    native.rmsnorm_bwd(dyc, x, w, r, dw2, out=dyc)
    assert (dyc == dx).all() and (dw2 == dw).all()


def test_rmsnorm_finite_differences():
    D, S = 16, 5
    x, w, g = rand((D, S), 6), rand(D, 7) + 1.0, rand((D, S), 8)  # w != 1

    def loss() -> float:
        y, _ = native.rmsnorm_fwd(x, w, 1e-5)
        return float((y.astype(np.float64) * g).sum())

    _, r = native.rmsnorm_fwd(x, w, 1e-5)
    dw = np.zeros(D, np.float32)
    dx = native.rmsnorm_bwd(g, x, w, r, dw)
    idx = some_indices((D, S), 20, 9)
    np.testing.assert_allclose([dx[i] for i in idx], central_diff(loss, x, idx), atol=2e-3)
    widx = [(i,) for i in range(D)]
    np.testing.assert_allclose(dw, central_diff(loss, w, widx), atol=2e-3)


# ---- cross-entropy -------------------------------------------------------------------------------


def ce_ref(logits, targets, scale=1.0):
    L = logits.astype(np.float64)
    S = L.shape[1]
    m = L.max(0)
    lse = np.log(np.exp(L - m).sum(0)) + m
    loss = (lse - L[targets, np.arange(S)]).mean()
    p = np.exp(L - lse)
    p[targets, np.arange(S)] -= 1.0
    return loss, p * (scale / S)


@pytest.mark.parametrize("V,S,shift", [(50, 10, 0.0), (1000, 300, 0.0), (32000, 64, 0.0),
                                       (64, 16, 1000.0)])
def test_cross_entropy(V, S, shift):
    logits = rand((V, S), 10, 3.0) + np.float32(shift)  # shift: log-sum-exp must stay stable
    t = np.random.default_rng(11).integers(0, V, S)
    loss, d = native.cross_entropy(logits, t)
    lr, dr = ce_ref(logits, t)
    assert np.isfinite(loss)
    assert abs(loss - lr) <= 1e-6 * max(1.0, abs(lr))
    np.testing.assert_allclose(d, dr, rtol=1e-4, atol=1e-7 / S)
    np.testing.assert_allclose(d.astype(np.float64).sum(0), 0.0, atol=1e-6)  # softmax - onehot


def test_cross_entropy_scale_and_alias():
    V, S = 300, 40
    logits = rand((V, S), 12, 2.0)
    t = np.random.default_rng(13).integers(0, V, S).astype(np.int64)  # any integer dtype
    loss, d = native.cross_entropy(logits, t, scale=256.0)
    lr, dr = ce_ref(logits, t, scale=256.0)
    assert abs(loss - lr) < 1e-6 * lr  # the loss itself is not scaled
    np.testing.assert_allclose(d, dr, rtol=1e-4, atol=256e-7 / S)
    buf = logits.copy()
    loss2, d2 = native.cross_entropy(buf, t, scale=256.0, out=buf)
    assert d2 is buf and loss2 == loss and (buf == d).all()


@pytest.mark.parametrize("threads", [1, 3])
def test_cross_entropy_ignores_minus_one_like_torch(threads):
    """IGNORE targets carry no loss and no gradient; the mean is over the counted positions
    (torch's ignore_index); the scale multiplies the gradient only."""
    torch = pytest.importorskip("torch")
    V, S = 200, 300
    logits = rand((V, S), 21, 2.0)
    t = np.random.default_rng(22).integers(0, V, S)
    t[np.random.default_rng(23).random(S) < 0.4] = native.IGNORE
    loss, d = native.cross_entropy(logits, t, scale=8.0, threads=threads)
    lt = torch.tensor(logits.T.copy(), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt.double(), torch.tensor(t), ignore_index=-1)
    (ref * 8.0).backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(d, lt.grad.numpy().T, rtol=1e-4, atol=1e-8)
    assert (d[:, t == native.IGNORE] == 0.0).all()
    assert native.counted_targets(t) == int((t >= 0).sum())


def test_cross_entropy_with_nothing_counted_is_zero():
    logits = rand((10, 4), 24)
    loss, d = native.cross_entropy(logits, np.full(4, native.IGNORE), scale=4.0)
    assert loss == 0.0 and not d.any()


def test_cross_entropy_errors():
    logits = rand((10, 4), 14)
    with pytest.raises(ValueError, match="id 10 at position 2"):
        native.cross_entropy(logits, np.array([0, 1, 10, 3]))
    with pytest.raises(ValueError, match="id -2"):  # -1 is IGNORE; nothing else below 0
        native.cross_entropy(logits, np.array([-2, 1, 2, 3]))
    with pytest.raises(ValueError, match="id 10"):  # checked beside ignored positions too
        native.cross_entropy(logits, np.array([-1, 1, 10, 3]))
    with pytest.raises(ValueError, match="shape"):
        native.cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        native.cross_entropy(logits, np.zeros(4, np.float32))
    bad = np.array([0, 1, 99, 2], np.int32)  # the C side also refuses (-1) without the check
    d = np.full_like(logits, 7.0)
    losses = np.full(4, 7.0)
    ffi = native.ffi
    rc = native.lib.anet_cross_entropy(ffi.from_buffer("float[]", d),
                                       ffi.from_buffer("double[]", losses),
                                       ffi.from_buffer("float[]", logits),
                                       ffi.from_buffer("int32_t[]", bad), 10, 4, 0, 4, 1.0, 4)
    assert rc == -1 and (d == 7.0).all() and (losses == 7.0).all()  # nothing written
    rc = native.lib.anet_cross_entropy(ffi.from_buffer("float[]", d),
                                       ffi.from_buffer("double[]", losses),
                                       ffi.from_buffer("float[]", logits),
                                       ffi.from_buffer("int32_t[]", bad), 10, 4, 0, 2, 1.0, 4)
    assert rc == 0 and (losses[2:] == 7.0).all()  # the range [0, 2) has valid targets only


@pytest.mark.parametrize("n,threads,align,phase,unit", [
    (256, 2, 16, 4, 1), (256, 2, 16, 4, 32000), (1_000_003, 3, 4096, 0, 1), (5, 8, 1, 0, 10**6),
    (40, 2, 16, 12, 1), (12, 12, 1, 0, 65536), (110_000_000, 2, 4096, 0, 1)])
def test_chunks_cover_in_order_and_align(n, threads, align, phase, unit):
    r = native._chunks(n, threads, align, 0, phase, unit)
    assert r[0][0] == 0 and r[-1][1] == n and len(r) <= threads * native._PIECES
    assert all(lo < hi for lo, hi in r) and all(a[1] == b[0] for a, b in zip(r, r[1:]))
    assert all((lo + phase) % align == 0 for lo, _ in r[1:])  # inner cuts on line boundaries
    if n * unit >= threads * native._PIECES * native._MIN_PIECE and n >= 64 * threads * align:
        assert len(r) == threads * native._PIECES  # large jobs: several ranges per thread
    assert native._chunks(n, threads, align, n * unit + 1, phase, unit) == [(0, n)]  # too small


@pytest.mark.parametrize("V,S", [(32000, 256), (5000, 1000), (3, 40)])
def test_cross_entropy_threads_identical(V, S):
    """Split positions give bit-identical gradients and the very same loss for any thread count."""
    logits = rand((V, S), 15, 4.0)
    t = np.random.default_rng(16).integers(0, V, S)
    loss1, d1 = native.cross_entropy(logits, t, scale=3.0)
    for threads in (2, 3, 8):
        loss, d = native.cross_entropy(logits, t, scale=3.0, threads=threads)
        assert loss == loss1
        assert (d == d1).all()
    assert abs(loss1 - ce_ref(logits, t)[0]) <= 1e-6 * loss1


# ---- SwiGLU --------------------------------------------------------------------------------------


def test_swiglu_fwd():
    h1, h3 = rand((64, 33), 15, 4.0), rand((64, 33), 16)
    h1[0, :5] = [-100.0, 100.0, 0.0, -1e30, 1e30]  # saturation must not produce NaN
    g = native.swiglu_fwd(h1, h3)
    a = h1.astype(np.float64)
    with np.errstate(over="ignore"):  # exp(1e30) = inf in float64 too: silu(-1e30) = -0
        ref = a / (1 + np.exp(-a)) * h3
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_swiglu_bwd_reference_and_alias():
    h1, h3, dg = rand(1001, 17, 3.0), rand(1001, 18), rand(1001, 19)
    dh1, dh3 = native.swiglu_bwd(dg, h1, h3)
    a, b = h1.astype(np.float64), h3.astype(np.float64)
    s = 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(dh1, dg * b * s * (1 + a * (1 - s)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dh3, dg * a * s, rtol=1e-5, atol=1e-6)
    buf = dg.copy()
    r1, r3 = native.swiglu_bwd(buf, h1, h3, dh1=buf)  # dh1 aliases dgate
    assert r1 is buf and (r1 == dh1).all() and (r3 == dh3).all()
    with pytest.raises(ValueError, match="overlap"):
        native.swiglu_bwd(dg, h1, h3, dh1=buf, dh3=buf)


def test_swiglu_finite_differences():
    h1, h3, g = rand((4, 6), 20, 2.0), rand((4, 6), 21), rand((4, 6), 22)

    def loss() -> float:
        return float((native.swiglu_fwd(h1, h3).astype(np.float64) * g).sum())

    dh1, dh3 = native.swiglu_bwd(g, h1, h3)
    idx = [np.unravel_index(i, h1.shape) for i in range(h1.size)]
    np.testing.assert_allclose(dh1.reshape(-1), central_diff(loss, h1, idx), atol=1e-3)
    np.testing.assert_allclose(dh3.reshape(-1), central_diff(loss, h3, idx), atol=1e-3)


# ---- causal attention softmax --------------------------------------------------------------------


def causal_softmax_ref(scores, scale):
    x = scores.astype(np.float64) * scale
    S = x.shape[-1]
    x[..., np.triu(np.ones((S, S), bool), k=1)] = -np.inf
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("n,S", [(1, 1), (3, 17), (12, 256), (2, 300)])
def test_causal_softmax_vs_reference(n, S):
    scores = rand((n, S, S), 62, 4.0)
    scores[:, :3, :3] += np.float32(500.0)  # large scores: max-subtraction keeps exp finite
    upper = np.triu(np.ones((S, S), bool), k=1)
    garbage = scores.copy()
    garbage[:, upper] = np.nan  # the masked triangle is never read
    ref = causal_softmax_ref(scores, 0.125)
    for threads in (1, 2):
        p = native.causal_softmax(garbage.copy(), 0.125, threads=threads)
        np.testing.assert_allclose(p, ref, rtol=2e-6, atol=1e-7)
        assert (p[:, upper] == 0.0).all()
        np.testing.assert_allclose(p.astype(np.float64).sum(-1), 1.0, atol=1e-5)


def test_causal_softmax_bwd_vs_reference_and_alias():
    n, S, scale = 5, 70, 0.3
    p = native.causal_softmax(rand((n, S, S), 63, 2.0), 1.0)
    dp = rand((n, S, S), 64)
    p64, dp64 = p.astype(np.float64), dp.astype(np.float64)
    ref = (dp64 - (p64 * dp64).sum(-1, keepdims=True)) * p64 * scale
    ds = native.causal_softmax_bwd(p, dp, scale)
    np.testing.assert_allclose(ds, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert (ds[:, np.triu(np.ones((S, S), bool), k=1)] == 0.0).all()
    buf = dp.copy()
    assert native.causal_softmax_bwd(p, buf, scale, out=buf, threads=2) is buf  # in place
    assert (buf == ds).all()


def test_causal_softmax_finite_differences():
    n, S, scale = 2, 6, 0.7
    x, g = rand((n, S, S), 65), rand((n, S, S), 66)

    def loss() -> float:
        return float((native.causal_softmax(x.copy(), scale).astype(np.float64) * g).sum())

    ds = native.causal_softmax_bwd(native.causal_softmax(x.copy(), scale), g, scale)
    idx = [i for i in some_indices((n, S, S), 30, 67) if i[2] <= i[1]]  # live (causal) entries
    np.testing.assert_allclose([ds[i] for i in idx], central_diff(loss, x, idx, h=1e-2), atol=2e-3)


def test_causal_softmax_errors():
    with pytest.raises(ValueError, match="score matrices"):
        native.causal_softmax(rand((2, 4, 5), 68), 1.0)
    with pytest.raises(ValueError, match="3-D"):
        native.causal_softmax(rand((4, 4), 68), 1.0)
    with pytest.raises(ValueError, match="shape"):
        native.causal_softmax_bwd(rand((2, 4, 4), 68), rand((2, 5, 5), 69), 1.0)


# ---- RoPE ----------------------------------------------------------------------------------------


def rope_ref(x, cos, sin, n_heads, sign=1.0):
    C, S = x.shape
    hd = C // n_heads
    y = x.astype(np.float64).reshape(n_heads, hd // 2, 2, S)
    c = cos[:S].T.astype(np.float64)  # [hd/2, S]
    s = sign * sin[:S].T.astype(np.float64)
    x0, x1 = y[:, :, 0], y[:, :, 1]
    out = np.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=2)
    return out.reshape(C, S)


@pytest.mark.parametrize("n_heads,hd,S", [(4, 16, 10), (12, 64, 256), (2, 8, 7)])
def test_rope_vs_reference(n_heads, hd, S):
    cos, sin = rope_tables(hd, S)
    x = rand((n_heads * hd, S), 23)
    y = native.rope_fwd(x.copy(), cos, sin, n_heads)
    np.testing.assert_allclose(y, rope_ref(x, cos, sin, n_heads), rtol=1e-5, atol=1e-6)
    yb = native.rope_bwd(x.copy(), cos, sin, n_heads)
    np.testing.assert_allclose(yb, rope_ref(x, cos, sin, n_heads, -1.0), rtol=1e-5, atol=1e-6)


def test_rope_adjoint_and_inverse():
    n_heads, hd, S = 6, 32, 50
    cos, sin = rope_tables(hd, S, pos0=3)
    x, y = rand((n_heads * hd, S), 24), rand((n_heads * hd, S), 25)
    rx = native.rope_fwd(x.copy(), cos, sin, n_heads)
    ry = native.rope_bwd(y.copy(), cos, sin, n_heads)
    lhs = float((rx.astype(np.float64) * y).sum())
    rhs = float((x.astype(np.float64) * ry).sum())
    assert abs(lhs - rhs) <= 1e-5 * (np.abs(x).sum() + 1)
    back = native.rope_bwd(rx, cos, sin, n_heads)  # rotation is orthogonal: bwd undoes fwd
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_rope_longer_table_and_errors():
    cos, sin = rope_tables(8, 20)
    x = rand((16, 12), 26)
    y = native.rope_fwd(x.copy(), cos, sin, 2)  # table rows 0..11 are used
    np.testing.assert_allclose(y, rope_ref(x, cos, sin, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="heads"):
        native.rope_fwd(x.copy(), cos, sin, 3)
    with pytest.raises(ValueError, match="tables"):
        native.rope_fwd(rand((16, 30), 27), cos, sin, 2)
    with pytest.raises(ValueError, match="tables"):
        native.rope_fwd(x.copy(), cos, sin, 4)  # hd 4 vs table hd/2 = 4


# ---- embedding -----------------------------------------------------------------------------------


def test_embedding_gather_scatter():
    V, D = 50, 70
    emb = rand((V, D), 28)
    tok = np.array([3, 7, 3, 0, 49, 3, 7], dtype=np.int64)  # repeats
    x = native.embed_fwd(emb, tok)
    assert x.shape == (D, tok.size)
    assert (x == emb[tok].T).all()
    dx = rand((D, tok.size), 29)
    demb = np.ones((V, D), np.float32)
    native.embed_bwd(demb, dx, tok)
    ref = np.ones((V, D), np.float64)
    np.add.at(ref, tok, dx.T.astype(np.float64))
    np.testing.assert_allclose(demb, ref, rtol=1e-6, atol=1e-6)
    untouched = np.setdiff1d(np.arange(V), tok)
    assert (demb[untouched] == 1.0).all()


def test_embedding_errors():
    emb = rand((10, 4), 30)
    with pytest.raises(ValueError, match="id 10 at position 1"):
        native.embed_fwd(emb, np.array([1, 10]))
    demb = np.zeros_like(emb)
    with pytest.raises(ValueError, match="id -3"):
        native.embed_bwd(demb, rand((4, 2), 31), np.array([-3, 1]))
    assert (demb == 0).all()
    with pytest.raises(ValueError, match="shape"):
        native.embed_bwd(demb, rand((4, 3), 31), np.array([0, 1]))


# ---- AdamW and sumsq -----------------------------------------------------------------------------


def adamw_numpy(p, m, v, g, lr, b1, b2, eps, wd, gs, step):
    """torch's single-tensor AdamW, transcribed op by op in fp32 (scalars formed in float64)."""
    f = np.float32
    g = g * f(gs)
    p *= f(1 - lr * wd)
    m += f(1 - b1) * (g - m)
    v[:] = v * f(b2) + (f(1 - b2) * g) * g
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    denom = np.sqrt(v) / f(bc2**0.5) + f(eps)
    p += (f(-(lr / bc1)) * m) / denom


def test_adamw_matches_numpy_transcription():
    n = 10_007
    p, g0 = rand(n, 32), rand(n, 33)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    P, M, Vv = p.copy(), m.copy(), v.copy()
    hp = dict(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, wd=0.1)
    for step in range(1, 6):
        g = g0 * np.float32(step) - np.float32(0.5)
        native.adamw(p, m, v, g, grad_scale=0.37, step=step, **hp)
        adamw_numpy(P, M, Vv, g, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["wd"], 0.37,
                    step)
        np.testing.assert_array_equal(m, M)
        np.testing.assert_array_equal(v, Vv)
        np.testing.assert_allclose(p, P, rtol=1e-7, atol=0)
    assert not np.array_equal(p, rand(n, 32))


def test_adamw_threads_identical():
    n = 300_001
    args = [rand(n, 34), rand(n, 35) ** 2 * 0, rand(n, 36) ** 2, rand(n, 37)]
    a = [x.copy() for x in args]
    b = [x.copy() for x in args]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.01, grad_scale=2.0, step=3)
    native.adamw(*a, **kw)
    native.adamw(*b, threads=2, **kw)
    for x, y in zip(a, b, strict=True):
        assert (x == y).all()


def test_adamw_vs_torch():
    torch = pytest.importorskip("torch")
    n = 4099
    p0 = rand(n, 38)
    grads = [rand(n, 40 + k) for k in range(6)]
    gs, lr, wd = 0.25, 2e-3, 0.1
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.AdamW([tp], lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for step, g in enumerate(grads, start=1):
        tp.grad = torch.from_numpy(g.copy()) * gs  # unscaling folded into the gradient
        opt.step()
        native.adamw(p, m, v, g, lr=lr, beta1=0.9, beta2=0.95, eps=1e-8, wd=wd, grad_scale=gs,
                     step=step)
        # torch's vectorised kernels fuse some multiply-adds (lerp is an fma), so elements that
        # cancel differ by an ulp of their inputs: compare relative to each tensor's magnitude.
        for ours, theirs in ((m, opt.state[tp]["exp_avg"]), (v, opt.state[tp]["exp_avg_sq"]),
                             (p, tp.detach())):
            ref = theirs.numpy()
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    assert np.abs(p - p0).max() > 1e-3  # the optimizer really moved the weights


def test_adamw_errors():
    x = np.zeros(4, np.float32)
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, wd=0.0)
    with pytest.raises(ValueError, match="shape"):
        native.adamw(x, x.copy(), np.zeros(3, np.float32), x.copy(), step=1, **kw)
    with pytest.raises(ValueError, match="step"):
        native.adamw(x, x.copy(), x.copy(), x.copy(), step=0, **kw)
    with pytest.raises(ValueError, match="dtype"):
        native.adamw(x, x.copy(), x.copy(), np.zeros(4), step=1, **kw)


@pytest.mark.parametrize("n,threads", [(0, 1), (1, 1), (7, 1), (1_000_003, 1), (1_000_003, 2)])
def test_sumsq(n, threads):
    x = rand(n, 50, 10.0)
    ref = float((x.astype(np.float64) ** 2).sum())
    got = native.sumsq(x, threads=threads)
    assert abs(got - ref) <= 1e-12 * max(ref, 1.0)
    assert native.sumsq(x.reshape(1, -1), threads=threads) == got


def _clang(target: str, src: str, out: Path, *extra: str, mode: str = "-S") -> Path:
    """Compile csrc/<src> with clang for `target` and the extension's own CFLAGS (read from the
    build script csrc/ffi_native.py, which lives outside the package)."""
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        from ffi_native import CFLAGS
    finally:
        sys.path.pop(0)
    subprocess.run(["clang", f"--target={target}", *CFLAGS, *extra, "-I", str(ROOT / "csrc"),
                    mode, str(ROOT / src), "-o", str(out)], check=True)  # fmt: skip
    return out


@pytest.mark.skipif(shutil.which("clang") is None or not Path("/usr/aarch64-linux-gnu").is_dir(),
                    reason="clang and the aarch64 C headers (libc6-dev-arm64-cross) are needed")
def test_clang_arm64_build_fuses_no_multiply_add(tmp_path):
    """As on a Mac: clang for arm64 with our flags emits no fmadd/fmla in ops.c, so the NEON
    AdamW loop and its scalar tail round alike (clang contracts a*b+c by default)."""
    asm = _clang("aarch64-linux-gnu", "csrc/ops.c", tmp_path / "ops.s")
    fused = re.findall(r"\b(?:fmadd|fmsub|fnmadd|fnmsub|fmla|fmls)\b", asm.read_text())
    assert not fused, f"{len(fused)} fused multiply-adds"


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("nm") is None,
                    reason="clang and nm are needed")
def test_c_core_needs_no_compiler_runtime_cpu_probe(tmp_path):
    """Apple's x86_64 toolchain (Intel Macs, Rosetta, universal2 wheels) has no __cpu_model, so
    __builtin_cpu_supports leaves an undefined symbol that only fails at import. The C core
    compiled by clang for x86-64 must reference no __cpu_* symbol (fp16.c has its own probe)."""
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        from ffi_native import SOURCES
    finally:
        sys.path.pop(0)
    for src in SOURCES:
        obj = _clang("x86_64-linux-gnu", src, tmp_path / (Path(src).stem + ".o"), mode="-c")
        undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True,
                                   check=True).stdout.split()  # fmt: skip
        probes = [s for s in undefined if s.lstrip("_").startswith("cpu_")]
        assert not probes, f"{src} needs {probes} from the compiler runtime"


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is needed")
def test_avx512_probe_on_macos_asks_sysctl(tmp_path):
    """macOS enables the AVX-512 register state lazily, so XCR0 says "no" until first use; the
    x86-64 macOS build must ask hw.optional.avx512f (and the macOS release) instead. Compiled for
    x86_64-apple-macos against stub libc headers (no SDK here); Linux keeps the XCR0 test."""
    stubs = {"string.h": "void *memcpy(void *, const void *, size_t);",
             "stdlib.h": "void *malloc(size_t); void free(void *);\n"
                         "int posix_memalign(void **, size_t, size_t);\n"
                         "long strtol(const char *, char **, int);",
             "sys/sysctl.h": "int sysctlbyname(const char *, void *, size_t *, void *, size_t);"}
    for name, decls in stubs.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"#pragma once\n#include <stddef.h>\n{decls}\n")
    mac = _clang("x86_64-apple-macos11", "csrc/fp16.c", tmp_path / "mac.s", "-Werror",
                 "-nostdlibinc", "-I", str(tmp_path)).read_text()  # fmt: skip
    linux = _clang("x86_64-linux-gnu", "csrc/fp16.c", tmp_path / "linux.s").read_text()
    assert "_sysctlbyname" in mac and "hw.optional.avx512f" in mac and "kern.osrelease" in mac
    assert "sysctlbyname" not in linux and "xgetbv" in linux
