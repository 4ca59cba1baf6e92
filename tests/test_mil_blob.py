"""MILBlob v2 writer/reader: round trip, byte layout, and rejection of every malformed field."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400))
def test_fuzz_reader_only_raises_milerror(data, off):
    try:
        read_blob(data, off, "fp16", (3, 4))
    except MilError:
        pass


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
