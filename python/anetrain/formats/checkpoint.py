"""Training checkpoints: versioned, checksummed, atomic; a bad file is refused, not half-loaded."""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anetrain.config import ModelConfig
from anetrain.errors import CheckpointError
from anetrain.params import Params

# File layout (little-endian):
#   0   8  magic b"ANETCKPT"
#   8   4  u32 format version (1)
#   12  4  u32 header length H (bytes of UTF-8 JSON)
#   16  8  u64 body length B (bytes)
#   24  4  u32 CRC32 of the body
#   28  4  u32 CRC32 of the JSON header
#   32  H  JSON header: model config, train config, step, optimizer step, RNG/sampler state, layout
#   ..     zero padding to a multiple of 64
#   body   fp32 tensors, each [n_params] in Params.flat order: params, then (if present) adam m, v
MAGIC = b"ANETCKPT"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQII")  # 32 bytes
_ALIGN = 64
_CHUNK = 1 << 26  # bytes per write/read/crc chunk
FILE_NAME = "checkpoint.bin"  # a run directory's checkpoint


def resolve(path: str | Path) -> Path:
    """A run directory -> its checkpoint.bin; anything else as given."""
    path = Path(path)
    return path / FILE_NAME if path.is_dir() else path


@dataclass
class Checkpoint:
    model: ModelConfig
    params: Params
    m: Params | None = None  # AdamW first moment
    v: Params | None = None  # AdamW second moment
    meta: dict = field(default_factory=dict)  # step, adam_t, train config, rng state, ...


def _body_arrays(ck: Checkpoint) -> list[np.ndarray]:
    arrays = [ck.params.flat]
    if ck.m is not None and ck.v is not None:
        arrays += [ck.m.flat, ck.v.flat]
    return arrays


def _write_all(f, arr: np.ndarray, crc: int) -> int:
    view = memoryview(arr.view(np.uint8).reshape(-1))  # little-endian fp32 on every supported host
    for off in range(0, len(view), _CHUNK):
        piece = view[off : off + _CHUNK]
        f.write(piece)
        crc = zlib.crc32(piece, crc)
    return crc


def save(path: str | Path, ck: Checkpoint) -> None:
    """Write to PATH.tmp, fsync, then rename over PATH: a crash never leaves a half-written file."""
    path = Path(path)
    header = dict(ck.meta)
    header["model"] = ck.model.to_dict()
    header["has_optimizer"] = ck.m is not None and ck.v is not None
    header["n_params"] = len(ck.params)
    hbytes = json.dumps(header, sort_keys=True).encode()
    arrays = _body_arrays(ck)
    body_len = sum(a.nbytes for a in arrays)
    pad = (-(_PREFIX.size + len(hbytes))) % _ALIGN

    def write(f) -> None:
        f.write(_PREFIX.pack(MAGIC, VERSION, len(hbytes), body_len, 0, zlib.crc32(hbytes)))
        f.write(hbytes + b"\0" * pad)
        crc = 0
        for a in arrays:
            crc = _write_all(f, np.ascontiguousarray(a, dtype="<f4"), crc)
        f.seek(0)  # the body CRC is known only now
        f.write(_PREFIX.pack(MAGIC, VERSION, len(hbytes), body_len, crc, zlib.crc32(hbytes)))

    atomic_write(path, write, "checkpoint")


def atomic_write(path: Path, write, what: str):
    """Run write(f) on PATH.tmp, fsync, rename over PATH, fsync the directory; returns write's
    result. On any OS error the temp file is removed and PATH is left exactly as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write {what} ({e.strerror or e})") from None
    except BaseException:  # e.g. KeyboardInterrupt: no half-written temp file is left behind
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return result


def read_header(path: str | Path) -> tuple[dict, int, int, int]:
    """(header dict, body offset, body length, body crc) after checking magic, version, sizes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                raise CheckpointError(f"{path}: truncated checkpoint ({size} bytes)")
            magic, version, hlen, blen, bcrc, hcrc = _PREFIX.unpack(prefix)
            if magic != MAGIC:
                raise CheckpointError(f"{path}: not an anetrain checkpoint (bad magic)")
            if version != VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {version}, expected {VERSION}"
                )
            hbytes = f.read(hlen)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    if len(hbytes) != hlen or zlib.crc32(hbytes) != hcrc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint header")
    try:
        header = json.loads(hbytes)
    except ValueError:
        raise CheckpointError(f"{path}: corrupt checkpoint header (bad JSON)") from None
    offset = _PREFIX.size + hlen + (-(_PREFIX.size + hlen)) % _ALIGN
    if size != offset + blen:
        raise CheckpointError(
            f"{path}: truncated or oversized checkpoint ({size} bytes, expected {offset + blen})"
        )
    return header, offset, blen, bcrc


def load(path: str | Path, with_optimizer: bool = True) -> Checkpoint:
    """Read and verify a whole checkpoint (CRC of the body) before returning anything."""
    path = Path(path)
    header, offset, blen, bcrc = read_header(path)
    try:
        cfg = ModelConfig.from_dict(header["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config in checkpoint ({e})") from None
    params = Params(cfg)
    n = len(params)
    has_opt = bool(header.get("has_optimizer"))
    if header.get("n_params") != n or blen != 4 * n * (3 if has_opt else 1):
        raise CheckpointError(f"{path}: body size does not match the model config")
    m = v = None
    arrays = [params.flat]
    if has_opt and with_optimizer:
        m, v = Params(cfg), Params(cfg)
        arrays += [m.flat, v.flat]
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        for a in arrays:
            view = memoryview(a.view(np.uint8).reshape(-1))
            for off in range(0, len(view), _CHUNK):
                piece = view[off : off + _CHUNK]
                if f.readinto(piece) != len(piece):
                    raise CheckpointError(f"{path}: truncated checkpoint body")
                crc = zlib.crc32(piece, crc)
        if len(arrays) == 1 and has_opt:  # still checksum the moments we do not keep
            rest = blen - 4 * n
            while rest > 0:
                piece = f.read(min(_CHUNK, rest))
                if not piece:
                    raise CheckpointError(f"{path}: truncated checkpoint body")
                crc = zlib.crc32(piece, crc)
                rest -= len(piece)
    if crc != bcrc:
        raise CheckpointError(f"{path}: checksum mismatch (corrupt checkpoint)")
    meta = {k: v for k, v in header.items() if k not in ("model", "has_optimizer", "n_params")}
    return Checkpoint(cfg, params, m, v, meta)
