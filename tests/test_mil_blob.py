"""MILBlob v2 writer/reader: round trip, byte layout, and rejection of every malformed field."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from anetrain.mil import MilError
from anetrain.mil.blob import read_blob, write_blob, write_blobs

A = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


def test_round_trip_and_layout():
    b = write_blob(A)
    assert len(b) == 128 + 24
    assert b[:8] == struct.pack("<II", 1, 2) and b[8:64] == bytes(56)
    assert b[64:68] == bytes.fromhex("EFBEADDE")  # sentinel, little-endian
    assert struct.unpack_from("<IQQ", b, 68) == (1, 24, 128)  # fp16, size, absolute data offset
    assert np.array_equal(read_blob(b, 64, "fp16", (3, 4)), A.astype(np.float16))


def test_multi_blob_alignment():
    b, offs = write_blobs([("fp32", np.ones(500)), ("fp32", np.full(500, 2.0))])
    assert offs == [64, 2176]  # coremltools test_weights.py: 128 + 2000 -> 2176
    assert read_blob(b, 2176, "fp32", (500,))[0] == 2.0


def _patch(b: bytes, off: int, fmt: str, v) -> bytes:
    m = bytearray(b)
    struct.pack_into(fmt, m, off, v)
    return bytes(m)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda b: b[:40], "shorter than the 64-byte file header"),
        (lambda b: _patch(b, 4, "<I", 3), "version 3, expected 2"),
        (lambda b: _patch(b, 0, "<I", 0), "holds 0 blobs"),
        (lambda b: _patch(b, 0, "<I", 2), "header count 2 but 1"),
        (lambda b: _patch(b, 16, "<Q", 5), "reserved header bytes"),
        (lambda b: _patch(b, 64, "<I", 0xDEADBEEE), "bad sentinel"),
        (lambda b: _patch(b, 68, "<I", 2), "dtype fp32 does not match the MIL type fp16"),
        (lambda b: _patch(b, 72, "<Q", 26), "size 26 bytes"),
        (lambda b: _patch(b, 80, "<Q", 192), "data offset 192, expected 128"),
        (lambda b: _patch(b, 88, "<Q", 1), "padding/reserved metadata"),
        (lambda b: _patch(b, 100, "<Q", 1), "padding/reserved metadata"),
        (lambda b: b[:140], "runs past the end"),
        (lambda b: b[:100], "metadata at 64 runs past"),
    ],
)
def test_rejects_malformed(mutate, pattern):
    with pytest.raises(MilError, match=pattern):
        read_blob(mutate(write_blob(A)), 64, "fp16", (3, 4))


def test_rejects_bad_offsets_and_types():
    b = write_blob(A)
    for off in (0, 32, 65, 128, 10**9):
        with pytest.raises(MilError):
            read_blob(b, off, "fp16", (3, 4))
    with pytest.raises(MilError, match="needs 48"):
        read_blob(b, 64, "fp16", (3, 8))


@st.composite
def damaged_blob_files(draw):
    """(file bytes, offset, dtype, shape): a valid 1-3 blob file with a few bytes overwritten,
    maybe cut short and/or extended, read at a true record offset or an arbitrary one, with the
    true shape or another (random bytes alone almost never get past the 64-byte header)."""
    arrays = [(draw(st.sampled_from(["fp16", "fp32"])), np.arange(draw(st.integers(1, 40))) / 3)
              for _ in range(draw(st.integers(1, 3)))]  # fmt: skip
    good, offsets = write_blobs(arrays)
    k = draw(st.integers(0, len(arrays) - 1))
    b = bytearray(good)
    for _ in range(draw(st.integers(0, 3))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(b)),  # anywhere, or inside blob k's data
                         st.integers(offsets[k] + 64, offsets[k] + 64 + arrays[k][1].size)))
    b = b[:cut] if cut is not None else b + draw(st.binary(max_size=16))
    off = draw(st.one_of(st.just(offsets[k]), st.integers(0, len(b) + 64)))
    shape = draw(st.one_of(st.just(arrays[k][1].shape), st.tuples(st.integers(0, 50))))
    return bytes(b), off, arrays[k][0], shape


@settings(max_examples=400, deadline=None)
@given(damaged_blob_files())
def test_fuzz_reader_only_raises_milerror(case):
    data, off, dtype, shape = case
    try:
        out = read_blob(data, off, dtype, shape)
    except MilError as e:
        event("rejected: " + re.sub(r"0x[0-9A-F]+|\d+", "#", str(e).split(": ", 1)[1]))
        return
    event("read")
    assert out.shape == tuple(shape) and out.dtype == np.dtype({"fp16": np.float16,
                                                               "fp32": np.float32}[dtype])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 151), st.integers(0, 255))
def test_single_byte_corruption_is_caught_or_harmless(pos, val):
    b = bytearray(write_blob(A))
    b[pos] = val
    try:
        out = read_blob(bytes(b), 64, "fp16", (3, 4))
    except MilError:
        return
    assert pos >= 128 or b[pos] == write_blob(A)[pos]  # only payload bytes may change silently
    assert out.shape == (3, 4)
