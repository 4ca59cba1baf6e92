"""Surface packing: pack/unpack/copy round trips, transposed packing vs numpy, bounds errors."""

from __future__ import annotations

import numpy as np
import pytest

from anetrain import native


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint16)


def rand(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)


SENTINEL = 0x7E55  # a NaN pattern no conversion of finite data can produce


def surface(c: int, w: int) -> np.ndarray:
    return np.full((c, w), SENTINEL, dtype=np.uint16)  # [C, W] fp16


@pytest.mark.parametrize("rows,cols,c0,s0", [(4, 6, 0, 0), (5, 7, 3, 9), (1, 1, 15, 31),
                                             (16, 32, 0, 0), (0, 5, 2, 2)])
def test_pack_unpack_round_trip(rows, cols, c0, s0):
    C, W = 16, 32
    src = rand((rows, cols))
    dst = surface(C, W)
    native.pack(dst, c0, s0, src)
    expect = surface(C, W)
    expect[c0:c0 + rows, s0:s0 + cols] = f16(src)
    assert (dst == expect).all()  # the segment exactly, nothing outside it
    back = native.unpack(dst, c0, s0, rows, cols)
    assert back.shape == (rows, cols) and back.dtype == np.float32
    assert (back == src.astype(np.float16).astype(np.float32)).all()


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (31, 33), (32, 32), (64, 96), (100, 37)])
def test_pack_transposed_vs_numpy(rows, cols):
    C, W = cols + 5, rows + 7
    src = rand((rows, cols), seed=rows * cols)
    dst = surface(C, W)
    native.pack(dst, 2, 3, src, transpose=True)
    expect = surface(C, W)
    expect[2:2 + cols, 3:3 + rows] = f16(src.T)
    assert (dst == expect).all()


def test_pack_transposed_weight_matrix():
    src = rand((768, 2048), seed=7)  # a W1-sized staging
    dst = np.zeros((2048, 768 + 64), np.uint16)
    native.pack(dst, 0, 64, src, transpose=True)
    assert (dst[:, 64:] == f16(src.T)).all()
    assert (dst[:, :64] == 0).all()


def test_unpack_into_out():
    src = f16(rand((8, 8)))
    out = np.empty((3, 4), np.float32)
    res = native.unpack(src, 1, 2, 3, 4, out=out)
    assert res is out
    assert (out == src[1:4, 2:6].view(np.float16).astype(np.float32)).all()


def test_copy_between_surfaces():
    a = f16(rand((10, 20), seed=1))
    b = surface(12, 16)
    native.copy(b, 2, 3, a, 4, 5, 6, 7)
    expect = surface(12, 16)
    expect[2:8, 3:10] = a[4:10, 5:12]
    assert (b == expect).all()


@pytest.mark.parametrize("dc,ds", [(3, 0), (0, 3), (2, 2), (0, 0), (-2, 0), (0, -3), (-3, -3)])
def test_copy_overlapping_same_surface(dc, ds):
    a = f16(rand((12, 12), seed=2))
    ref = a.copy()
    sc, ss = 3, 3
    native.copy(a, sc + dc, ss + ds, a, sc, ss, 5, 6)
    ref[sc + dc:sc + dc + 5, ss + ds:ss + ds + 6] = ref[sc:sc + 5, ss:ss + 6].copy()
    assert (a == ref).all()


def test_bounds_errors():
    dst = surface(8, 16)
    src = rand((4, 5))
    before = dst.copy()
    with pytest.raises(ValueError, match=r"segment \(4, 5\).*\(8, 16\)"):
        native.pack(dst, 5, 0, src)  # 5 + 4 channels > 8
    with pytest.raises(ValueError, match="does not fit"):
        native.pack(dst, 0, 12, src)  # 12 + 5 > 16
    with pytest.raises(ValueError, match=r"segment \(5, 4\)"):
        native.pack(dst, 4, 0, src, transpose=True)  # 5 channels from 4
    with pytest.raises(ValueError):
        native.pack(dst, -1, 0, src)
    with pytest.raises(ValueError):
        native.pack(dst, 0, 2**31 - 2, src)  # would overflow int arithmetic
    assert (dst == before).all()  # nothing written on failure
    native.pack(dst, 4, 11, src)  # exactly fits in the corner
    with pytest.raises(ValueError, match="does not fit"):
        native.unpack(dst, 0, 0, 9, 1)
    with pytest.raises(ValueError):
        native.unpack(dst, 0, 15, 1, 2)
    with pytest.raises(ValueError, match="out of range"):
        native.copy(dst, 0, 0, dst, 6, 0, 3, 4)
    with pytest.raises(ValueError, match="out of range"):
        native.copy(dst, 0, 14, dst, 0, 0, 1, 4)


def test_type_errors():
    dst = surface(4, 4)
    with pytest.raises(ValueError, match="dtype"):
        native.pack(dst, 0, 0, np.zeros((2, 2), np.float64))
    with pytest.raises(ValueError, match="dtype"):
        native.pack(dst.view(np.int16), 0, 0, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        native.pack(dst, 0, 0, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        native.pack(dst, 0, 0, np.zeros((4, 4), np.float32)[:, ::2])


@pytest.mark.parametrize("transpose", [0, 1])
def test_every_fp16_impl_packs_alike_and_an_unknown_one_writes_nothing(transpose):
    """pack/unpack take the fp16 implementation explicitly (native passes _impl_id(-1), so
    ANETRAIN_FORCE_SCALAR reaches them); all available ones give the same bits."""
    lib, ffi = native.lib, native.ffi
    src = rand((37, 45), 3)  # odd sizes: partial 32x32 tiles and vector tails
    want = surface(64, 64)
    native.pack(want, 2, 3, src, transpose=bool(transpose))
    for name, impl in native.IMPLS.items():
        if not native.fp16_impls()[name]:
            continue
        got = surface(64, 64)
        assert lib.anet_pack_f16(ffi.from_buffer("uint16_t[]", got), 64, 64, 2, 3,
                                 ffi.from_buffer("float[]", src), 37, 45, transpose, impl) == 0
        assert np.array_equal(got, want), name
        back = np.zeros((45, 37) if transpose else (37, 45), np.float32)
        assert lib.anet_unpack_f16(ffi.from_buffer("float[]", back), ffi.from_buffer(
            "uint16_t[]", got), 64, 64, 2, 3, *back.shape, impl) == 0  # fmt: skip
        rounded = f16(src).view(np.float16).astype(np.float32)
        assert np.array_equal(back, rounded.T if transpose else rounded), name
    untouched = surface(64, 64)
    assert lib.anet_pack_f16(ffi.from_buffer("uint16_t[]", untouched), 64, 64, 2, 3,
                             ffi.from_buffer("float[]", src), 37, 45, transpose, 99) == -1
    assert (untouched == SENTINEL).all()
