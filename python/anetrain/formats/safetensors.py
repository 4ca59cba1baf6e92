"""safetensors files: a header-checking reader into fp32 (F32, BF16, F16) and a streaming writer."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from anetrain import native
from anetrain.errors import CheckpointError

# Format (github.com/huggingface/safetensors): u64 little-endian header length N, N bytes of UTF-8
# JSON {"__metadata__": {str: str}, NAME: {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}},
# then the data; offsets are relative to the end of the header, tensors are row-major
# little-endian, and together they cover the data exactly, without gaps or overlaps.
#
# Why our own reader and writer instead of the `safetensors` package: its numpy API cannot return
# BF16 (numpy has no bfloat16: "data type 'bfloat16' not understood"), and it hands each tensor
# out as a new array. Ours checks every header in full (names, dtypes, shapes, offsets, file size)
# before anything is allocated, then reads each tensor straight into its view of the fp32 master
# buffer in bounded chunks (BF16 -> fp32 is `u16 << 16`, exact; F16 goes through the C core like
# every fp16 conversion); the writer streams the same way
# through formats/files.atomic_write. tests/test_hf.py checks both against the package and
# against transformers.

ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2}  # what we read and write
DTYPES = ", ".join(ITEMSIZE)  # for messages
MAX_HEADER = 100 << 20  # the safetensors package refuses longer headers too
_CHUNK = 1 << 22  # elements converted per read or write


class SafetensorsError(CheckpointError):
    """A safetensors file that is corrupt, truncated, or holds a dtype anetrain cannot read."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file, as its (checked) header describes it."""

    path: Path
    dtype: str  # a key of ITEMSIZE
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    nbytes: int


def _header_bytes(path: Path) -> tuple[bytes, int]:
    """The JSON header and the file size, after checking that both fit."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path}: not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER or 8 + n > size:
                raise SafetensorsError(f"{path}: not a safetensors file (header length {n}, "
                                       f"file size {size})")  # fmt: skip
            return f.read(n), size
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read ({e.strerror or e})") from None


def _shape(path: Path, name: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in value
    ):
        raise SafetensorsError(f"{path}: tensor {name} has a bad shape {value!r}")
    return tuple(value)


def read_header(path: str | Path) -> dict[str, TensorEntry]:
    """Every tensor of a safetensors file by name, after checking the whole header: the JSON,
    each entry's dtype (F32, BF16, F16), shape and byte range, and that the ranges tile the data
    exactly up to the end of the file. Nothing of the data is read."""
    path = Path(path)
    raw, size = _header_bytes(path)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SafetensorsError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: not a safetensors file (its header is not an object)")
    base = 8 + len(raw)
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{path}: tensor {name} has a bad header entry")
        dtype = e["dtype"]
        if dtype not in ITEMSIZE:
            raise SafetensorsError(f"{path}: tensor {name} has dtype {dtype} (supported: "
                                   f"{DTYPES})")  # fmt: skip
        shape = _shape(path, name, e["shape"])
        off = e["data_offsets"]
        if not isinstance(off, list) or len(off) != 2 or \
                not all(isinstance(o, int) and not isinstance(o, bool) for o in off):  # fmt: skip
            raise SafetensorsError(f"{path}: tensor {name} has bad data_offsets {off!r}")
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if off[1] - off[0] != nbytes:
            raise SafetensorsError(f"{path}: tensor {name} spans {off[1] - off[0]} bytes; "
                                   f"{dtype} {list(shape)} needs {nbytes}")  # fmt: skip
        entries[name] = TensorEntry(path, dtype, shape, base + off[0], nbytes)
        spans.append((off[0], off[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise SafetensorsError(f"{path}: tensor {name} starts at byte {begin} of the data, "
                                   f"not {end} (a gap or an overlap)")  # fmt: skip
        end = stop
    if base + end != size:
        what = "truncated" if base + end > size else "oversized"
        raise SafetensorsError(f"{path}: {what} ({size} bytes, the header says {base + end})")
    return entries


def read_into(f: BinaryIO, entry: TensorEntry, out: np.ndarray) -> None:
    """Read one tensor from the open file into `out` (contiguous fp32 of entry's shape), in
    chunks: F32 directly, BF16 as its upper 16 bits, F16 widened (all exact)."""
    assert out.dtype == np.float32 and out.shape == entry.shape and out.flags.c_contiguous
    flat = out.reshape(-1)
    f.seek(entry.start)
    item = ITEMSIZE[entry.dtype]
    for i in range(0, flat.size, _CHUNK):
        part = flat[i : i + _CHUNK]
        if entry.dtype == "F32":
            if f.readinto(memoryview(part.view(np.uint8))) != part.nbytes:
                raise SafetensorsError(f"{entry.path}: truncated")
            if sys.byteorder == "big":
                part.byteswap(inplace=True)
            continue
        data = f.read(part.size * item)
        if len(data) != part.size * item:
            raise SafetensorsError(f"{entry.path}: truncated")
        if entry.dtype == "BF16":
            bits = np.frombuffer(data, dtype="<u2").astype(np.uint32)
            part.view(np.uint32)[...] = bits << 16
        else:  # F16 through the C core's conversion (the one fp16 path)
            half = np.frombuffer(data, dtype="<u2").astype(np.uint16, copy=False)
            native.f16_to_f32(half, out=part)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits (uint16), rounding to nearest even like torch; NaN stays a (quiet) NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16
    return np.where(np.isnan(x), np.uint32(0x7FC0), rounded).astype(np.uint16)


def _encode(chunk: np.ndarray, dtype: str) -> np.ndarray:
    """A contiguous little-endian copy (or view) of fp32 `chunk` in `dtype`."""
    if dtype == "F32":
        return np.ascontiguousarray(chunk, dtype="<f4")
    if dtype == "F16":
        half = native.f32_to_f16(np.ascontiguousarray(chunk, dtype=np.float32))  # RNE, the C core
        return np.ascontiguousarray(half, dtype="<u2")
    return np.ascontiguousarray(to_bf16(chunk), dtype="<u2")


def _chunks(a: np.ndarray) -> Iterable[np.ndarray]:
    """Pieces of about _CHUNK elements that concatenate to `a` in C order (`a` may be a strided
    view, e.g. a permutation of rows: only one piece at a time is copied)."""
    if a.ndim <= 1:
        flat = a.reshape(-1)
        for i in range(0, flat.size, _CHUNK):
            yield flat[i : i + _CHUNK]
        return
    rows = max(1, _CHUNK * a.shape[0] // max(a.size, 1))
    for i in range(0, a.shape[0], rows):
        yield a[i : i + rows]


def write_safetensors(f: BinaryIO, tensors: Iterable[tuple[str, tuple[int, ...], np.ndarray]],
                      dtype: str, metadata: dict[str, str] | None = None) -> int:  # fmt: skip
    """Write fp32 arrays as one safetensors file of `dtype` (F32, BF16 or F16), in the given
    order; returns the bytes written. Each (name, shape, array) is stored with `shape` from the
    array's elements in C order. The header is padded with spaces to a multiple of 8, as the
    safetensors package writes it."""
    if dtype not in ITEMSIZE:
        raise ValueError(f"write_safetensors: dtype {dtype}")
    items = list(tensors)
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    off = 0
    for name, shape, a in items:
        assert a.size == math.prod(shape), (name, shape, a.shape)
        n = a.size * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    for _, _, a in items:
        for chunk in _chunks(a):
            f.write(memoryview(_encode(chunk, dtype).reshape(-1).view(np.uint8)))
    return 8 + len(raw) + off
