"""MILBlob v2 weight files (mil_reference.md §4.1): one writer and one checking reader."""

from __future__ import annotations

import struct

import numpy as np

from anetrain.mil.errors import MilError
from anetrain.mil.ir import NP_DTYPES

# Layout, all little-endian (coremltools MILBlob StorageFormat.hpp):
#   file header   @0   u32 count, u32 version (= 2), 7 x u64 reserved         -> 64 bytes
#   blob metadata @M   u32 sentinel 0xDEADBEEF, u32 mil_dtype, u64 size_in_bytes,
#                      u64 data_offset (absolute), u64 padding_bits, 4 x u64 reserved -> 64 bytes
#   data          @data_offset (= M + 64), next metadata at the next 64-byte boundary.
# BLOBFILE(offset=M) in MIL text points at the *metadata* record, not at the data.
HEADER = struct.Struct("<II7Q")
META = struct.Struct("<IIQQQ4Q")
VERSION = 2
SENTINEL = 0xDEADBEEF
ALIGN = 64
DTYPE_CODES = {"fp16": 1, "fp32": 2, "uint8": 3, "int8": 4, "int16": 6, "uint16": 7,
               "int32": 14, "uint32": 15}  # fmt: skip
_CODE_NAMES = {v: k for k, v in DTYPE_CODES.items()}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_blobs(arrays: list[tuple[str, np.ndarray]]) -> tuple[bytes, list[int]]:
    """One file holding several (mil dtype, array) blobs -> (file bytes, metadata offsets)."""
    if not arrays:
        raise MilError("blob: a weight file needs at least one blob")
    out = bytearray(HEADER.pack(len(arrays), VERSION, *([0] * 7)))
    offsets = []
    for dtype, a in arrays:
        if dtype not in DTYPE_CODES:
            raise MilError(f"blob: unsupported dtype {dtype!r}")
        data = np.ascontiguousarray(a, dtype=np.dtype(NP_DTYPES[dtype]).newbyteorder("<")).tobytes()
        out.extend(b"\0" * (_align(len(out)) - len(out)))
        meta = len(out)
        out.extend(
            META.pack(SENTINEL, DTYPE_CODES[dtype], len(data), meta + META.size, 0, 0, 0, 0, 0)
        )
        out.extend(data)
        offsets.append(meta)
    return bytes(out), offsets


def write_blob(a: np.ndarray, dtype: str = "fp16") -> bytes:
    """The single-tensor file every kernel constant uses; referenced with offset=uint64(64)."""
    return write_blobs([(dtype, a)])[0]


def read_blob(
    buf: bytes, offset: int, dtype: str, shape: tuple[int, ...], *, path: str = "blob"
) -> np.ndarray:
    """The tensor at metadata offset `offset`, checked against the declared MIL dtype and shape.

    Every field is verified (strict mode of mil_reference.md §4.4): header size and version, count,
    64-byte alignment of the record, sentinel, dtype code, size = prod(shape)·itemsize, data offset
    = record + 64, reserved fields zero, all bounds inside the file.
    """
    mv = memoryview(buf)
    n = len(mv)
    where = f"blob {path!r}"
    if n < HEADER.size:
        raise MilError(f"{where}: {n} bytes is shorter than the 64-byte file header")
    count, version, *reserved = HEADER.unpack_from(mv, 0)
    if version != VERSION:
        raise MilError(f"{where}: file format version {version}, expected {VERSION}")
    if any(reserved):
        raise MilError(f"{where}: reserved header bytes are not zero")
    if count < 1:
        raise MilError(f"{where}: header says the file holds {count} blobs")
    if offset < HEADER.size or offset % ALIGN:
        raise MilError(
            f"{where}: BLOBFILE offset {offset} is not a 64-aligned record after the header"
        )
    if offset + META.size > n:
        raise MilError(f"{where}: metadata at {offset} runs past the end of the file ({n} bytes)")
    sentinel, code, size, data_off, pad_bits, *res = META.unpack_from(mv, offset)
    if sentinel != SENTINEL:
        raise MilError(f"{where}: bad sentinel 0x{sentinel:08X} at {offset} (expected 0xDEADBEEF)")
    if code != DTYPE_CODES.get(dtype):
        got = _CODE_NAMES.get(code, f"code {code}")
        raise MilError(f"{where}: metadata dtype {got} does not match the MIL type {dtype}")
    if pad_bits or any(res):
        raise MilError(f"{where}: padding/reserved metadata fields are not zero")
    want = int(np.prod(shape, dtype=np.int64)) * np.dtype(NP_DTYPES[dtype]).itemsize
    if size != want:
        raise MilError(
            f"{where}: metadata size {size} bytes, MIL type {dtype}{list(shape)} needs {want}"
        )
    if data_off != offset + META.size:
        raise MilError(f"{where}: data offset {data_off}, expected {offset + META.size}")
    if data_off + size > n:
        raise MilError(
            f"{where}: data [{data_off}, {data_off + size}) runs past the end ({n} bytes)"
        )
    # every record the header counts must be reachable (catches a stale or inflated count)
    pos, seen = HEADER.size, 0
    while pos + META.size <= n and seen < count:
        s, _, sz, _, _, *_ = META.unpack_from(mv, pos)
        if s != SENTINEL:
            break
        seen += 1
        pos = _align(pos + META.size + sz)
    if seen != count:
        raise MilError(f"{where}: header count {count} but {seen} blob records found")
    arr = np.frombuffer(
        mv,
        dtype=np.dtype(NP_DTYPES[dtype]).newbyteorder("<"),
        count=want // np.dtype(NP_DTYPES[dtype]).itemsize,
        offset=data_off,
    )
    return arr.reshape(shape).astype(NP_DTYPES[dtype], copy=True)
