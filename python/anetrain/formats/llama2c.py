"""llama2.c model.bin files: read versions 0, 1 and 2 (Q8_0), write versions 0 and 1."""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from anetrain.config import ModelConfig
from anetrain.errors import CheckpointError, UserError
from anetrain.formats.files import atomic_write
from anetrain.params import Params

# Formats (design/llama2c.md §2; little-endian, every matrix row-major W[out, in] like our Params,
# so no transposes anywhere):
#   v0  28-byte header: 7 x int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len.
#       vocab < 0 means an unshared classifier. Body fp32, grouped by tensor kind (layer-major
#       inside each kind): embed, rms_att[L], wq[L], wk[L], wv[L], wo[L], rms_ffn[L], w1[L], w2[L],
#       w3[L], rms_final, RoPE cos (S, hd/2), RoPE sin (S, hd/2), [classifier]. run.c reads only v0.
#   v1  256-byte header: u32 magic "ak42", i32 version 1, the 7 ints (vocab always > 0), u8 shared
#       flag at 36, zeros. Body fp32: rms_att[L], rms_ffn[L], rms_final, embed, wq[L], wk[L], wv[L],
#       wo[L], w1[L], w2[L], w3[L], [classifier]. No RoPE tables.
#   v2  like v1 with version 2 and an int32 group_size at offset 37 (unaligned). Body: the norms as
#       in v1 (fp32), then per quantized tensor (embed, wq[L], ..., w3[L], [classifier]) its int8
#       values followed by its fp32 per-group scales; dequantized value = q * scale.
MAGIC = 0x616B3432  # "ak42"
V0_HEADER = struct.Struct("<7i")  # 28 bytes
V1_HEADER = struct.Struct("<Ii7iB")  # 37 bytes, zero-padded to 256
V2_HEADER = struct.Struct("<Ii7iBi")  # 41 bytes, zero-padded to 256
HEADER_PAD = 256
_MAX_DIM = 1 << 20  # any header field above this is garbage, not a model

_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


# ----------------------------------------------------------------------------
# body orders (the one place the tensor order of each version is written down)


def _per_layer(params: Params, kind: str) -> list[np.ndarray]:
    return [params.tensors[f"layers.{i}.{kind}"] for i in range(params.cfg.n_layers)]


def _v0_order(params: Params) -> list[np.ndarray]:
    """v0 tensors before the RoPE tables (the classifier comes after them)."""
    out = [params.embed, *_per_layer(params, "rms_att")]
    for kind in ("wq", "wk", "wv", "wo"):
        out += _per_layer(params, kind)
    out += _per_layer(params, "rms_ffn")
    for kind in ("w1", "w2", "w3"):
        out += _per_layer(params, kind)
    return [*out, params.rms_final]


def _v1_norms(params: Params) -> list[np.ndarray]:
    return [*_per_layer(params, "rms_att"), *_per_layer(params, "rms_ffn"), params.rms_final]


LLAMA2C_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # file order of every version


def _v1_matrices(params: Params) -> list[np.ndarray]:
    """v1/v2 matrices in file order, classifier last when it is not shared."""
    out = [params.embed]
    for kind in LLAMA2C_MATRICES:
        out += _per_layer(params, kind)
    if not params.cfg.shared_classifier:
        out.append(params.wcls)
    return out


def _classifier(params: Params) -> list[np.ndarray]:
    return [] if params.cfg.shared_classifier else [params.wcls]


def llama2c_rope_tables(head_dim: int, seq_len: int, theta: float = 10000.0):
    """v0's freq_cis_real/imag: cos, sin of t * inv_freq, fp32 [seq_len, head_dim/2] each.

    llama2.c's model.py computes these in fp32 with torch; run.c skips them, so their values do not
    matter to it. With torch installed the bytes equal export.py's; otherwise numpy's fp32 pow/cos
    may differ from torch's in the last bits.
    """
    try:
        import torch
    except ImportError:
        expo = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)  # [hd/2]
        inv = (np.float32(1.0) / np.float32(theta) ** expo).astype(np.float32)
        ang = np.outer(np.arange(seq_len, dtype=np.float32), inv)  # [S, hd/2]
        return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    ang = torch.outer(torch.arange(seq_len), inv).float()  # (S, hd/2)
    return torch.cos(ang).numpy(), torch.sin(ang).numpy()


def v0_size(cfg: ModelConfig) -> int:
    """Exact size in bytes of a v0 file for cfg (llama2c.md §2.1)."""
    return V0_HEADER.size + 4 * (cfg.n_params() + cfg.seq_len * cfg.head_dim)


def v1_size(cfg: ModelConfig) -> int:
    return HEADER_PAD + 4 * cfg.n_params()


def v2_size(cfg: ModelConfig, group_size: int) -> int:
    n_norm = (2 * cfg.n_layers + 1) * cfg.dim
    n_q = cfg.n_params() - n_norm
    return HEADER_PAD + 4 * n_norm + n_q + 4 * (n_q // group_size)


# ----------------------------------------------------------------------------
# reader


def _config(path: Path, dims: tuple[int, ...], shared: bool) -> ModelConfig:
    for name, value in zip(_FIELDS, dims):
        if not 0 < value <= _MAX_DIM:
            raise CheckpointError(f"{path}: not a llama2.c model (header {name} = {value})")
    kw = dict(zip(_FIELDS, dims))
    try:
        return ModelConfig(**kw, shared_classifier=shared)
    except UserError as e:
        raise CheckpointError(f"{path}: not a usable llama2.c model ({e})") from None


def _read_into(f, path: Path, arrays: list[np.ndarray]) -> None:
    """Fill each (contiguous fp32) array from the file, in order."""
    for a in arrays:
        view = memoryview(a.reshape(-1).view(np.uint8))
        if f.readinto(view) != len(view):
            raise CheckpointError(f"{path}: truncated llama2.c model")
        if sys.byteorder == "big":  # the file is little-endian, Params native
            a.byteswap(inplace=True)


def _read_q8(f, path: Path, arrays: list[np.ndarray], group_size: int) -> None:
    """Dequantize each tensor: int8 values [numel], then fp32 scales [numel / group_size]."""
    for a in arrays:
        n = a.size
        q = np.fromfile(f, dtype=np.int8, count=n)
        s = np.fromfile(f, dtype="<f4", count=n // group_size)
        if q.size != n or s.size != n // group_size:
            raise CheckpointError(f"{path}: truncated llama2.c v2 model")
        deq = q.reshape(-1, group_size).astype(np.float32) * s[:, None]  # [groups, GS]
        a.reshape(-1)[...] = deq.reshape(-1)


def read_header(path: str | os.PathLike[str]) -> tuple[int, ModelConfig, int]:
    """(version, config, group_size or 0) of a llama2.c file, after checking its exact size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_PAD)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a model file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read model file ({e.strerror or e})") from None
    if len(head) < V0_HEADER.size:
        raise CheckpointError(f"{path}: truncated llama2.c model ({size} bytes, no header)")
    group_size = 0
    if struct.unpack_from("<I", head)[0] == MAGIC:
        if len(head) < HEADER_PAD:
            raise CheckpointError(f"{path}: truncated llama2.c model header ({size} bytes)")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise CheckpointError(f"{path}: llama2.c model version {version} is not supported")
        fields = V2_HEADER.unpack_from(head) if version == 2 else V1_HEADER.unpack_from(head)
        if fields[9] not in (0, 1):
            raise CheckpointError(f"{path}: bad shared_classifier flag {fields[9]}")
        cfg = _config(path, fields[2:9], bool(fields[9]))
        if version == 2:
            group_size = fields[10]
            if group_size <= 0 or cfg.dim % group_size:  # every tensor's numel is a multiple of dim
                raise CheckpointError(f"{path}: bad Q8_0 group size {group_size}")
            expect = v2_size(cfg, group_size)
        else:
            expect = v1_size(cfg)
    else:
        version = 0
        dims = list(V0_HEADER.unpack_from(head))
        shared = dims[5] > 0
        dims[5] = abs(dims[5])
        cfg = _config(path, tuple(dims), shared)
        expect = v0_size(cfg)
    if size != expect:
        what = "truncated" if size < expect else "oversized"
        raise CheckpointError(
            f"{path}: {what} llama2.c v{version} model ({size} bytes, the header says {expect})"
        )
    return version, cfg, group_size


def is_llama2c(path: str | os.PathLike[str]) -> bool:
    """True when PATH has a valid llama2.c header that matches its size (false for unreadable)."""
    try:
        read_header(path)
    except CheckpointError:
        return False
    return True


def read_llama2c(path: str | os.PathLike[str]) -> tuple[ModelConfig, Params]:
    """Import a llama2.c model.bin (version by magic: v0 legacy, v1 fp32, v2 Q8_0 dequantized)."""
    path = Path(path)
    version, cfg, group_size = read_header(path)
    params = Params(cfg)
    with open(path, "rb") as f:
        if version == 0:
            f.seek(V0_HEADER.size)
            _read_into(f, path, _v0_order(params))
            f.seek(4 * cfg.seq_len * cfg.head_dim, os.SEEK_CUR)  # RoPE tables: recomputed
            _read_into(f, path, _classifier(params))
        else:
            f.seek(HEADER_PAD)
            _read_into(f, path, _v1_norms(params))
            if version == 1:
                _read_into(f, path, _v1_matrices(params))
            else:
                _read_q8(f, path, _v1_matrices(params), group_size)
    return cfg, params


# ----------------------------------------------------------------------------
# writer


def _v0_chunks(cfg: ModelConfig, params: Params) -> Iterator[bytes | np.ndarray]:
    vocab = cfg.vocab_size if cfg.shared_classifier else -cfg.vocab_size
    yield V0_HEADER.pack(
        cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, vocab, cfg.seq_len
    )
    yield from _v0_order(params)
    yield from llama2c_rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
    yield from _classifier(params)


def _v1_chunks(cfg: ModelConfig, params: Params) -> Iterator[bytes | np.ndarray]:
    head = V1_HEADER.pack(
        MAGIC,
        1,
        cfg.dim,
        cfg.hidden_dim,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.vocab_size,
        cfg.seq_len,
        int(cfg.shared_classifier),
    )
    yield head + b"\0" * (HEADER_PAD - len(head))
    yield from _v1_norms(params)
    yield from _v1_matrices(params)


def write_llama2c(
    path: str | os.PathLike[str], cfg: ModelConfig, params: Params, version: int = 0
) -> int:
    """Export to a llama2.c model.bin (v0: what run.c reads; v1: "ak42" fp32); returns its size.

    Written to PATH.tmp, fsynced and renamed over PATH, so a crash never leaves a half file.
    """
    path = Path(path)
    if version not in (0, 1):
        raise UserError(f"{path}: llama2.c export supports versions 0 and 1, not {version}")
    if params.cfg != cfg:
        raise ValueError("write_llama2c: params were built for another config")
    if cfg.q_dim != cfg.dim:
        raise UserError(f"{path}: llama2.c needs n_heads * head_dim == dim, not {cfg.n_heads} * "
                        f"{cfg.head_dim} != {cfg.dim}; export it with --format hf")  # fmt: skip
    if cfg.qk_norm:
        raise UserError(f"{path}: llama2.c models have no q/k norms (qk_norm, Qwen3); export it "
                        "with --format hf")  # fmt: skip
    if cfg.rope_scaling is not None:
        raise UserError(f"{path}: llama2.c models have no RoPE scaling (rope_scaling llama3); "
                        "export it with --format hf")  # fmt: skip
    if cfg.norm_eps != 1e-5 or cfg.rope_theta != 10000.0:  # run.c hard-codes both
        raise UserError(
            f"{path}: llama2.c models use norm_eps 1e-5 and rope_theta 10000, not "
            f"{cfg.norm_eps:g} and {cfg.rope_theta:g}; export it with --format hf"
        )
    chunks = _v0_chunks(cfg, params) if version == 0 else _v1_chunks(cfg, params)

    def write(f) -> int:
        written = 0
        for c in chunks:
            if isinstance(c, np.ndarray):
                c = np.ascontiguousarray(c, dtype="<f4")  # no copy on little-endian hosts
                f.write(memoryview(c.reshape(-1).view(np.uint8)))
                written += c.nbytes
            else:
                f.write(c)
                written += len(c)
        return written

    written = atomic_write(path, write, "model")
    expect = v0_size(cfg) if version == 0 else v1_size(cfg)
    assert written == expect, (written, expect)
    return written
