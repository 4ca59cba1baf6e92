"""Training checkpoints (RunState header + fp32 tensors): checksummed, atomic, validated on load."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from anetrain.config import ModelConfig, TrainConfig
from anetrain.errors import CheckpointError, UserError
from anetrain.formats.files import atomic_write
from anetrain.lora import LoraConfig, LoraParams
from anetrain.lora import layout as lora_layout
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
#   body   fp32 tensors: params [n_params] in Params.flat order, then for a LoRA run (header "lora")
#          the adapters [n_lora] in LoraParams.flat order; then (if present) adam m, v of what the
#          run trains ([n_params] each, or [n_lora] each for a LoRA run: the base is frozen)
MAGIC = b"ANETCKPT"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQII")  # 32 bytes
_ALIGN = 64
_CHUNK = 1 << 26  # bytes per write/read/crc chunk
FILE_NAME = "checkpoint.bin"  # a run directory's checkpoint


def is_checkpoint(path: str | Path) -> bool:
    """True when PATH starts with the anetrain checkpoint magic (false for unreadable files)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def resolve(path: str | Path) -> Path:
    """A run directory -> its checkpoint.bin; anything else as given."""
    path = Path(path)
    return path / FILE_NAME if path.is_dir() else path


@dataclass
class RunState:
    """Everything a checkpoint's JSON header holds besides the body's layout: the model, and for a
    training run its settings and position (a weights-only checkpoint has train None).

    Written by to_dict(); read back only through from_dict(), which checks every field.
    """

    model: ModelConfig
    train: TrainConfig | None = None  # None: weights only (no run to resume)
    step: int = 0  # optimizer steps completed
    adam_t: int = 0  # AdamW bias-correction clock (steps actually applied; skips excluded)
    tokens: int = 0  # tokens trained on, across resumes with any --accum
    sampler: dict | None = None  # the training sampler's state (Sampler.state(): a token
    # stream's PCG64 bit_generator.state, or packed windows' {"kind": "packed", ...})
    scaler: dict | None = None  # LossScaler.state(): scale, clean, skipped, dynamic
    data: str | None = None  # absolute dataset path; None = the embedded dataset
    val_data: str | None = None  # absolute validation .bin, if one was given
    data_dtype: str | None = None  # raw token files' type when not uint16 (--data-dtype uint32)
    tokenizer: str | None = None  # the dataset's tokenizer.bin, if known (JSONL: the run's)
    mask_prompt: bool | None = None  # JSONL data: --mask-prompt (None: not given)
    skip_bad_records: bool | None = None  # JSONL data: --skip-bad-records (None: not given)
    backend: str | None = None  # the backend that wrote it (cpu, sim, ane)
    ranks: int | None = None  # data-parallel processes (MPI) that trained it; None: one
    lora: LoraConfig | None = None  # a LoRA run: the adapters it trains over frozen weights
    init: str | None = None  # the --init model: a Hub id as given, or an absolute path

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = self.model.to_dict()
        d["train"] = None if self.train is None else self.train.to_dict()
        d["lora"] = None if self.lora is None else self.lora.to_dict()
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict, source: str | Path) -> RunState:
        """Check every field (type, range, consistency); any violation is a CheckpointError
        naming the file and the field. Headers written before a field existed still load."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"{source}: unknown checkpoint header fields {unknown}")
        try:
            model = ModelConfig.from_dict(d["model"])
            train = None if d.get("train") is None else TrainConfig.from_dict(d["train"])
        except KeyError:
            raise CheckpointError(f"{source}: checkpoint header has no model config") from None
        except UserError as e:
            raise CheckpointError(f"{source}: bad checkpoint header: {e}") from None
        st = cls(model, train)
        for name in ("step", "adam_t", "tokens"):
            setattr(st, name, _header_int(source, d, name, getattr(st, name)))
        if d.get("ranks") is not None:
            st.ranks = _header_int(source, d, "ranks", 1)
            if st.ranks < 2:  # one process is written as no field
                raise CheckpointError(f"{source}: bad checkpoint header: ranks must be >= 2, "
                                      f"got {st.ranks}")  # fmt: skip
        if train is not None and "tokens" not in d:  # older runs: every step had this --accum
            st.tokens = st.step * train.accum * model.seq_len
        if st.adam_t > st.step or (train is not None and st.step > train.steps):
            raise CheckpointError(f"{source}: bad checkpoint header: adam_t {st.adam_t}, step "
                                  f"{st.step} and train.steps do not fit together")  # fmt: skip
        for name in ("data", "val_data", "data_dtype", "tokenizer", "backend", "init"):
            value = d.get(name)
            if value is not None and not isinstance(value, str):
                raise CheckpointError(f"{source}: bad checkpoint header: {name} must be a "
                                      f"string, got {value!r}")  # fmt: skip
            setattr(st, name, value)
        for name in ("mask_prompt", "skip_bad_records"):
            value = d.get(name)
            if value is not None and not isinstance(value, bool):
                raise CheckpointError(f"{source}: bad checkpoint header: {name} must be true or "
                                      f"false, got {value!r}")  # fmt: skip
            setattr(st, name, value)
        if st.data_dtype not in (None, "uint16", "uint32"):
            raise CheckpointError(f"{source}: bad checkpoint header: data_dtype must be uint16 "
                                  f"or uint32, got {st.data_dtype!r}")  # fmt: skip
        if d.get("lora") is not None:
            try:
                st.lora = LoraConfig.from_dict(d["lora"])
                st.lora.layer_ids(model)
            except UserError as e:
                raise CheckpointError(f"{source}: bad checkpoint header: {e}") from None
        st.sampler = _sampler_state(source, d.get("sampler"))
        st.scaler = _scaler_state(source, d.get("scaler"))
        if train is not None and st.sampler is None:
            raise CheckpointError(f"{source}: bad checkpoint header: a training run without "
                                  "its sampler state")  # fmt: skip
        return st


def _header_int(source, d: dict, name: str, default: int) -> int:
    value = d.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise CheckpointError(f"{source}: bad checkpoint header: {name} must be an integer "
                              f">= 0, got {value!r}")  # fmt: skip
    return value


def _sampler_state(source, state: object) -> dict | None:
    """A PCG64 bit_generator state numpy accepts (a token stream's sampler), packed windows'
    {"kind": "packed", "windows", "epoch", "pos", "rng": a PCG64 state}, or None."""
    if state is None:
        return None
    try:
        if isinstance(state, dict) and state.get("kind") == "packed":
            _packed_state(state)
        elif not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
            raise ValueError("not a PCG64 state")
        else:
            np.random.PCG64().state = state  # numpy checks every part
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"{source}: bad checkpoint header: sampler ({e})") from None
    return state


def _packed_state(state: dict) -> None:
    """PackedSampler.state(): 0 <= pos <= windows, epoch >= -1, a PCG64 state (ValueError)."""
    if set(state) != {"kind", "windows", "epoch", "pos", "rng"}:
        raise ValueError(f"packed sampler fields {sorted(state)}")
    n, epoch, pos = state["windows"], state["epoch"], state["pos"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, epoch, pos)) or \
            not (n >= 1 and epoch >= -1 and 0 <= pos <= n):  # fmt: skip
        raise ValueError(f"packed sampler position {epoch}, {pos} of {n} windows")
    rng = state["rng"]
    if not isinstance(rng, dict) or rng.get("bit_generator") != "PCG64":
        raise ValueError("not a PCG64 state")
    np.random.PCG64().state = rng


def _scaler_state(source, state: object) -> dict | None:
    """LossScaler.state(): scale > 0 and finite, clean/skipped integers >= 0, dynamic a bool."""
    if state is None:
        return None
    ok = isinstance(state, dict) and set(state) <= {"scale", "clean", "skipped", "dynamic"}
    if ok:
        scale, clean, skipped = state.get("scale"), state.get("clean"), state.get("skipped")
        ok = isinstance(scale, (int, float)) and not isinstance(scale, bool) and \
            math.isfinite(scale) and scale > 0  # fmt: skip
        ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                        for n in (clean, skipped))  # fmt: skip
        ok = ok and isinstance(state.get("dynamic", False), bool)
    if not ok:
        raise CheckpointError(f"{source}: bad checkpoint header: scaler {state!r}")
    return state


@dataclass
class Checkpoint:
    state: RunState
    params: Params
    m: Params | LoraParams | None = None  # AdamW first moment (of the adapters in a LoRA run)
    v: Params | LoraParams | None = None  # AdamW second moment
    lora: LoraParams | None = None  # the adapters of a LoRA run (state.lora)

    @property
    def model(self) -> ModelConfig:
        return self.state.model


def _body_arrays(ck: Checkpoint) -> list[np.ndarray]:
    arrays = [ck.params.flat] + ([ck.lora.flat] if ck.lora is not None else [])
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
    header = ck.state.to_dict()
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
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint header (not a JSON object)")
    has_opt = header.pop("has_optimizer", False)
    n_saved = header.pop("n_params", None)
    state = RunState.from_dict(header, path)
    cfg = state.model
    n = cfg.n_params()  # before allocating anything: the header may claim any size
    lc = state.lora
    n_lora = 0 if lc is None else sum(int(np.prod(s)) for _, _, s in lora_layout(cfg, lc))
    n_trained = n_lora or n  # what the moments cover
    if not isinstance(has_opt, bool) or n_saved != n or \
            blen != 4 * (n + n_lora + (2 * n_trained if has_opt else 0)):  # fmt: skip
        raise CheckpointError(f"{path}: body size does not match the model config")
    params = Params(cfg)
    lora = None if lc is None else LoraParams(cfg, lc)
    m = v = None
    arrays = [params.flat] + ([lora.flat] if lora is not None else [])
    if has_opt and with_optimizer:
        m, v = (Params(cfg), Params(cfg)) if lora is None else \
            (lora.zeros_like(), lora.zeros_like())  # fmt: skip
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
        rest = blen - 4 * sum(a.size for a in arrays)
        if rest and has_opt:  # still checksum the moments we do not keep
            while rest > 0:
                piece = f.read(min(_CHUNK, rest))
                if not piece:
                    raise CheckpointError(f"{path}: truncated checkpoint body")
                crc = zlib.crc32(piece, crc)
                rest -= len(piece)
    if crc != bcrc:
        raise CheckpointError(f"{path}: checksum mismatch (corrupt checkpoint)")
    return Checkpoint(state, params, m, v, lora)
