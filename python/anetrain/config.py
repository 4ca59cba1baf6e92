"""Model and training configuration: dataclasses with named presets (no exec, no globals)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

from anetrain.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration that cannot work (bad preset name, inconsistent sizes, ...)."""


MAX_SIZE = 1 << 20  # no model dimension (or layer count, vocabulary, context) is larger
_SIZES = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size", "seq_len")


def _int_field(what: str, name: str, value: object, lo: int, hi: int) -> int:
    """value as an int in [lo, hi], else a ConfigError naming the field (3.5, "8", true refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what}: {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{what}: {name} must be in {lo}..{hi}, got {value}")
    return int(value)


def _float_field(what: str, name: str, value: object) -> float:
    """value as a finite float (an integer is accepted), else a ConfigError naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):  # fmt: skip
        raise ConfigError(f"{what}: {name} must be a finite number, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------
# model


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1/3.2's RoPE frequency scaling (Hugging Face rope_scaling of type "llama3"): low
    frequencies divided by `factor`, high ones kept, a smooth ramp between."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            value = _float_field("rope_scaling", name, getattr(self, name))
            if not value > 0:
                raise ConfigError(f"rope_scaling: {name} must be > 0, got {value}")
            object.__setattr__(self, name, value)
        if not self.high_freq_factor > self.low_freq_factor:
            raise ConfigError("rope_scaling: high_freq_factor must be above low_freq_factor")
        object.__setattr__(self, "original_max_position_embeddings", _int_field(
            "rope_scaling", "original_max_position_embeddings",
            self.original_max_position_embeddings, 1, MAX_SIZE))  # fmt: skip

    @classmethod
    def from_dict(cls, d: object) -> RopeScaling:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ConfigError(f"model config: rope_scaling must have exactly {sorted(names)}, "
                              f"got {d!r}")  # fmt: skip
        return cls(**d)


# Fields a llama2.c-style model leaves at their defaults; to_dict omits them then, so that the
# checkpoints of such models keep the header they had before these fields existed.
_OPTIONAL = {"head_size": 0, "qk_norm": False, "rope_scaling": None}


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder: pre-norm, RMSNorm, SwiGLU, RoPE on interleaved pairs (llama2.c's
    layout; Hugging Face's rotate-half q/k rows are permuted at import and export), GQA, and
    optionally an explicit head size and Qwen3's per-head RMSNorm of q and k."""

    dim: int = 288
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int | None = None  # None = n_heads (multi-head attention)
    hidden_dim: int = 768
    vocab_size: int = 32000
    seq_len: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    shared_classifier: bool = True  # llama2.c ties tok_embeddings.weight and output.weight
    head_size: int = 0  # 0: dim // n_heads (llama2.c); else explicit (Qwen3: n_heads·head ≠ dim)
    qk_norm: bool = False  # Qwen3: RMSNorm of every q and k head (weights [head_dim]) before RoPE
    rope_scaling: RopeScaling | None = None  # Llama 3.x long-context frequency scaling

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling))
        self._check()

    def _check(self) -> None:
        for name in _SIZES:
            object.__setattr__(self, name, _int_field("model config", name, getattr(self, name),
                                                      1, MAX_SIZE))  # fmt: skip
        for name in ("norm_eps", "rope_theta"):
            object.__setattr__(self, name, _float_field("model config", name, getattr(self, name)))
            if not getattr(self, name) > 0:
                raise ConfigError(f"model config: {name} must be > 0, got {getattr(self, name)}")
        for name in ("shared_classifier", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model config: {name} must be true or false, got "
                                  f"{getattr(self, name)!r}")  # fmt: skip
        object.__setattr__(self, "head_size",
                           _int_field("model config", "head_size", self.head_size, 0, MAX_SIZE))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"model config: bad rope_scaling {self.rope_scaling!r}")
        if not self.head_size and self.dim % self.n_heads:
            raise ConfigError(
                f"model config: dim {self.dim} is not divisible by n_heads {self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model config: n_heads {self.n_heads} is not divisible by "
                f"n_kv_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model config: head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim  # == dim in llama2.c models

    @property
    def kv_group(self) -> int:
        """Query heads per kv head: query head h attends with kv head h // kv_group (llama2.c)."""
        return self.n_heads // self.n_kv_heads

    def n_params(self) -> int:
        """Parameter count, shared classifier counted once (as llama2.c and nanoGPT count it)."""
        d, f, kv, L, v = self.dim, self.hidden_dim, self.kv_dim, self.n_layers, self.vocab_size
        per_layer = 2 * self.q_dim * d + 2 * kv * d + 3 * d * f + 2 * d
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        cls = 0 if self.shared_classifier else v * d
        return v * d + L * per_layer + d + cls

    def architecture(self) -> tuple:
        """What fixes the weights' shapes and meaning, except vocab_size and seq_len (a preset's
        vocabulary follows its data, and RoPE lets a model train at a shorter context)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name not in ("vocab_size", "seq_len"))  # fmt: skip

    def describe(self) -> str:
        """One line for messages: dim 288, 6 layers, 6 heads (6 kv), hidden 768 (and what a
        Llama 3 or Qwen3 model adds: head size, q/k norm, RoPE scaling)."""
        extra = (f", head size {self.head_size}" if self.head_size else "") + \
            (", q/k norm" if self.qk_norm else "") + \
            (", llama3 RoPE scaling" if self.rope_scaling else "")  # fmt: skip
        return (f"dim {self.dim}, {self.n_layers} layers, {self.n_heads} heads "
                f"({self.n_kv_heads} kv), hidden {self.hidden_dim}{extra}")  # fmt: skip

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in _OPTIONAL or v != _OPTIONAL[k]}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict):
            raise ConfigError(f"model config: expected an object, got {type(d).__name__}")
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"model config: unknown fields {sorted(unknown)}")
        return cls(**d)


# Named presets. seq_len 256 for the stories models (the ANE kernels are built for one 256-token
# sequence); llama2.c trained 42M/110M at 1024, which only matters when importing their files.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=176, seq_len=64),
    "stories15m": ModelConfig(dim=288, n_layers=6, n_heads=6, hidden_dim=768, seq_len=256),
    "stories42m": ModelConfig(dim=512, n_layers=8, n_heads=8, hidden_dim=1376, seq_len=256),
    "stories110m": ModelConfig(dim=768, n_layers=12, n_heads=12, hidden_dim=2048, seq_len=256),
}


# Peak learning rate per preset when --lr is not given (one sequence per micro-step is a small
# batch; smaller models tolerate larger steps). min_lr defaults to a tenth of it.
DEFAULT_LR = {"tiny": 3e-3, "stories15m": 1e-3, "stories42m": 6e-4, "stories110m": 4e-4}


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset with optional field overrides, e.g. preset("tiny", vocab_size=512)."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})"
        ) from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return base.replace(**overrides) if overrides else base


# ----------------------------------------------------------------------------
# training

BACKENDS = ("auto", "cpu", "sim", "ane")


@dataclass
class TrainConfig:
    """Optimisation settings (one sequence of seq_len tokens per micro-step)."""

    steps: int = 1000  # optimizer steps
    accum: int = 1  # micro-steps (sequences) per optimizer step
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 100  # optimizer steps of linear warmup
    lr_decay_steps: int = 0  # cosine horizon; 0 = steps (set it to train one schedule in sittings)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0  # global gradient-norm clip; 0 disables
    seed: int = 1337
    eval_every: int = 0  # 0: only at the end (when validation data exists)
    eval_batches: int = 0  # validation windows (the first N); 0: every window of the split
    ckpt_every: int = 0  # checkpoint every N steps; 0: by time only
    ckpt_seconds: float = 600.0  # and whenever this much training time passed since the last one
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be > 0 and finite, got {self.lr}")
        for flag, name in (("--steps", "steps"), ("--warmup", "warmup"), ("--clip", "clip"),
                           ("--lr-decay-steps", "lr_decay_steps"), ("--min-lr", "min_lr"),
                           ("--wd", "weight_decay"), ("--eval-every", "eval_every"),
                           ("--ckpt-every", "ckpt_every"),
                           ("--ckpt-every", "ckpt_seconds")):  # fmt: skip
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag} must be >= 0 and finite, got {v}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr {self.min_lr} is above --lr {self.lr}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.accum < 1:
            raise ConfigError(f"--accum must be >= 1, got {self.accum}")
        if self.eval_batches < 0:
            raise ConfigError(f"--eval-batches must be >= 0, got {self.eval_batches}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            raise ConfigError(f"AdamW betas must be in [0, 1) and eps > 0, got {self.beta1}, "
                              f"{self.beta2}, {self.eps}")  # fmt: skip
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r} (choose from "
                              f"{', '.join(BACKENDS)})")  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A saved TrainConfig, every field type-checked (a checkpoint header is untrusted)."""
        if not isinstance(d, dict):
            raise ConfigError(f"training config: expected an object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ConfigError(f"training config: unknown fields {sorted(unknown)}")
        kw: dict[str, object] = {}
        for name, value in d.items():
            kind = fields[name].type
            if kind == "int":
                kw[name] = _int_field("training config", name, value, 0, 2**63 - 1)
            elif kind == "float":
                kw[name] = _float_field("training config", name, value)
            elif not isinstance(value, str):
                raise ConfigError(f"training config: {name} must be a string, got {value!r}")
            else:
                kw[name] = value
        return cls(**kw)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def checkpoint_interval(text: str) -> tuple[int, float]:
    """--ckpt-every: "500" (steps) or "90s", "10m", "1.5h" (training time) -> (steps, seconds),
    the other one 0; "0" checkpoints only at the end."""
    t = text.strip().lower()
    try:
        if t and t[-1] in _UNITS:
            seconds = float(t[:-1]) * _UNITS[t[-1]]
            if math.isfinite(seconds) and seconds > 0:
                return 0, seconds
        elif t.isdigit():
            return int(t), 0.0
    except ValueError:
        pass
    raise ConfigError(f"--ckpt-every: expected steps (500) or a duration (90s, 10m, 1h), got "
                      f"{text!r}")  # fmt: skip


def default_threads() -> int:
    """Threads when none are asked for: one per core (os.cpu_count(), 1 when it is unknown)."""
    return os.cpu_count() or 1
