"""PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors): write, read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anetrain.config import ConfigError, ModelConfig
from anetrain.errors import CheckpointError
from anetrain.formats.files import atomic_write
from anetrain.formats.hf import read_json, to_interleaved, to_rotate_half
from anetrain.formats.safetensors import read_header, read_into, write_safetensors
from anetrain.lora import TARGETS, LoraConfig, LoraParams

# What `peft.PeftModel.save_pretrained` writes for a LoRA adapter on a causal LM, and what
# `PeftModel.from_pretrained(base, DIR)` reads back. The tensors are named after the Hugging
# Face modules under PeftModel's own prefix; A is [r, in] and B is [out, r], as in lora.py. Our q
# and k rows are llama2.c's interleaved RoPE pairs, Hugging Face's rotate halves (formats/hf.py):
# B's rows (the output dim) are permuted like W's; A's columns are the input dim, unchanged.

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model.model.layers"
MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
           "down": "mlp.down_proj"}  # --lora-targets name -> Hugging Face module  # fmt: skip
_BY_MODULE = {m.split(".")[1]: t for t, m in MODULES.items()}  # "q_proj" -> "q"
PEFT_VERSION = "0.21.2"  # the version whose output this file matches (tests load it there)
# adapter_config.json fields that must be off (absent, null, false, empty): each changes what
# the adapters compute, or adds weights beyond A and B
_MUST_BE_OFF = ("use_dora", "use_rslora", "fan_in_fan_out", "lora_bias", "modules_to_save",
                "rank_pattern", "alpha_pattern", "exclude_modules", "layer_replication",
                "target_parameters", "trainable_token_indices", "use_qalora", "megatron_config",
                "alora_invocation_tokens", "use_bdlora", "arrow_config")  # fmt: skip


class PeftError(CheckpointError):
    """A PEFT adapter directory anetrain cannot read (or one that does not fit the base model)."""


def is_adapter_dir(path: str | Path) -> bool:
    """A directory with an adapter_config.json (what it holds is checked when it is read)."""
    return (Path(path) / CONFIG).is_file()


@dataclass(frozen=True)
class Adapter:
    """A PEFT adapter read over a base model: its LoraConfig and tensors (in our row order), the
    base it names (base_model_name_or_path, or None) and its lora_dropout (training only)."""

    lc: LoraConfig
    lora: LoraParams
    base: str | None
    dropout: float


# ----------------------------------------------------------------------------
# writing


def adapter_config(cfg: ModelConfig, lc: LoraConfig, base: str | None) -> dict:
    """adapter_config.json of `lc` over a model of `cfg`, with PEFT 0.21's defaults for the rest
    (sorted keys, as PEFT writes them)."""
    alpha = int(lc.alpha) if float(lc.alpha).is_integer() else lc.alpha
    layers = list(lc.layer_ids(cfg)) if lc.layers else None
    d = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "peft_version": PEFT_VERSION,
        "base_model_name_or_path": base, "revision": None, "auto_mapping": None,
        "inference_mode": True, "r": lc.rank, "lora_alpha": alpha, "lora_dropout": lc.dropout,
        "target_modules": [MODULES[t].split(".")[1] for t in lc.targets],
        "layers_to_transform": layers, "layers_pattern": None, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "lora_bias": False,
        "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {},
        "alpha_pattern": {}, "exclude_modules": None, "layer_replication": None,
        "target_parameters": None, "trainable_token_indices": None, "megatron_config": None,
        "megatron_core": "megatron.core", "loftq_config": {}, "eva_config": None,
        "corda_config": None, "use_qalora": False, "qalora_group_size": 16,
    }  # fmt: skip
    return dict(sorted(d.items()))


def peft_name(base: str, ab: str) -> str:
    """PEFT's tensor name of an adapter: `layers.{l}.{w}` and "lora_A" / "lora_B"."""
    _, layer, w = base.split(".")
    target = next(t for t, name in TARGETS.items() if name == w)
    return f"{PREFIX}.{layer}.{MODULES[target]}.{ab}.weight"


def _heads(cfg: ModelConfig, base: str) -> int:
    """Heads whose rows of B are permuted (q and k), else 0."""
    return {"wq": cfg.n_heads, "wk": cfg.n_kv_heads}.get(base.split(".")[2], 0)


def peft_tensors(lora: LoraParams) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    """(PEFT name, shape, data in Hugging Face row order) of every adapter, without copies."""
    out = []
    for base, a, b in lora.pairs():
        heads = _heads(lora.cfg, base)
        out.append((peft_name(base, "lora_A"), a.shape, a))
        out.append((peft_name(base, "lora_B"), b.shape, to_rotate_half(b, heads) if heads else b))
    return out


def write_adapter(out: str | Path, lora: LoraParams, base: str | None) -> None:
    """Write adapter_model.safetensors (fp32), then adapter_config.json, into the existing
    directory OUT, each atomically (a crash leaves the old file or the new one)."""
    out = Path(out)
    config = json.dumps(adapter_config(lora.cfg, lora.lc, base), indent=2).encode() + b"\n"
    atomic_write(out / WEIGHTS, lambda f: write_safetensors(
        f, peft_tensors(lora), "F32", {"format": "pt"}), "adapter weights")  # fmt: skip
    atomic_write(out / CONFIG, lambda f: f.write(config), "adapter config")


# ----------------------------------------------------------------------------
# reading


def _off(value: object) -> bool:
    return value is None or value is False or value == {} or value == []


def _number(src: Path, d: dict, key: str, default: float | None = None) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PeftError(f"{src}: {key} must be a number, got {json.dumps(value)}")
    return value


def _targets(src: Path, value: object) -> tuple[str, ...]:
    """target_modules -> our target names, in our order (q k v o gate up down)."""
    if value == "all-linear":
        return tuple(TARGETS)
    if isinstance(value, str):
        raise PeftError(f"{src}: target_modules {json.dumps(value)} is a regular expression; "
                        "anetrain reads a list of module names (or all-linear)")  # fmt: skip
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise PeftError(f"{src}: target_modules must be a list of module names, got "
                        f"{json.dumps(value)}")  # fmt: skip
    unknown = [m for m in value if m.split(".")[-1] not in _BY_MODULE]
    if unknown:
        raise PeftError(f"{src}: unknown target module {unknown[0]!r} (anetrain adapts "
                        f"{', '.join(_BY_MODULE)})")  # fmt: skip
    got = {_BY_MODULE[m.split(".")[-1]] for m in value}
    return tuple(t for t in TARGETS if t in got)


def _layers(src: Path, d: dict, n_layers: int) -> int:
    """layers_to_transform -> our "last N layers" (0: all), or a PeftError saying it is not."""
    pattern = d.get("layers_pattern")
    if not _off(pattern) and pattern not in ("layers", ["layers"]):
        raise PeftError(f"{src}: layers_pattern {json.dumps(pattern)} is not supported "
                        "(supported: null or \"layers\")")  # fmt: skip
    value = d.get("layers_to_transform")
    if value is None:
        return 0
    ids = [value] if isinstance(value, int) else value
    if not isinstance(ids, list) or not ids or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):  # fmt: skip
        raise PeftError(f"{src}: layers_to_transform must be a layer index or a list of them, "
                        f"got {json.dumps(value)}")  # fmt: skip
    n = len(ids)
    if sorted(ids) != list(range(n_layers - n, n_layers)):
        raise PeftError(f"{src}: layers_to_transform {json.dumps(value)} is not the last N of "
                        f"the base model's {n_layers} layers (anetrain adapts all layers or the "
                        "last N)")  # fmt: skip
    return 0 if n == n_layers else n


def read_adapter_config(d: str | Path) -> dict:
    """adapter_config.json as a checked dict: a plain LoRA adapter of a causal LM, every option
    that changes what it computes off (else a one-line PeftError naming the file)."""
    src = Path(d) / CONFIG
    if not src.is_file():
        raise PeftError(f"{Path(d)}: no {CONFIG}; not a PEFT adapter directory")
    c = read_json(src)
    if c.get("peft_type") != "LORA":
        raise PeftError(f"{src}: peft_type {json.dumps(c.get('peft_type'))} is not supported "
                        "(anetrain reads LORA adapters)")  # fmt: skip
    if c.get("task_type") not in (None, "CAUSAL_LM"):
        raise PeftError(f"{src}: task_type {json.dumps(c['task_type'])} is not supported "
                        "(supported: CAUSAL_LM)")  # fmt: skip
    if c.get("bias", "none") != "none":
        raise PeftError(f"{src}: bias {json.dumps(c['bias'])} is not supported (supported: none)")
    on = next((k for k in _MUST_BE_OFF if not _off(c.get(k))), None)
    if on is not None:
        raise PeftError(f"{src}: {on} {json.dumps(c[on])} is not supported (anetrain reads plain "
                        "LoRA: A and B only, scale lora_alpha / r)")  # fmt: skip
    base = c.get("base_model_name_or_path")
    if base is not None and (not isinstance(base, str) or not base):
        raise PeftError(f"{src}: base_model_name_or_path must be a path or Hub id, got "
                        f"{json.dumps(base)}")  # fmt: skip
    return c


def adapter_base(d: str | Path) -> str | None:
    """The base model an adapter directory names (base_model_name_or_path), if any."""
    return read_adapter_config(d).get("base_model_name_or_path")


def lora_config(d: str | Path, cfg: ModelConfig) -> tuple[LoraConfig, float]:
    """(LoraConfig, the file's lora_dropout) of an adapter directory over a base of `cfg`."""
    src = Path(d) / CONFIG
    c = read_adapter_config(d)
    rank = c.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PeftError(f"{src}: r must be an integer >= 1, got {json.dumps(rank)}")
    alpha, dropout = _number(src, c, "lora_alpha", 8), _number(src, c, "lora_dropout", 0.0)
    if not alpha > 0 or not 0 <= dropout < 1:
        raise PeftError(f"{src}: lora_alpha must be > 0 and lora_dropout in [0, 1), got "
                        f"{alpha} and {dropout}")  # fmt: skip
    try:
        lc = LoraConfig(rank, float(alpha), 0.0, _targets(src, c.get("target_modules")),
                        _layers(src, c, cfg.n_layers))  # fmt: skip
    except ConfigError as e:
        raise PeftError(f"{src}: {e}") from None
    return lc, float(dropout)


def read_adapter(d: str | Path, cfg: ModelConfig) -> Adapter:
    """Read an adapter directory over a base model of `cfg`: the config is checked, then the
    safetensors header must hold exactly the adapters it describes, each of the base's shape,
    before they are read (BF16/F16 widened exactly) and B's q/k rows permuted to ours."""
    d = Path(d)
    lc, dropout = lora_config(d, cfg)
    src = d / WEIGHTS
    if not src.is_file():
        raise PeftError(f"{d}: no {WEIGHTS} (anetrain reads safetensors adapters, never "
                        "adapter_model.bin, a pickle)")  # fmt: skip
    entries = read_header(src)
    lora = LoraParams(cfg, lc)
    want = {peft_name(base, name.rsplit(".", 1)[1]): (name, base) for name, base, _ in lora.names}
    extra = sorted(set(entries) - set(want))
    if extra:
        raise PeftError(f"{src}: unexpected tensor {extra[0]} (not an adapter that {CONFIG} "
                        f"describes over the base model)")  # fmt: skip
    missing = sorted(set(want) - set(entries))
    if missing:
        raise PeftError(f"{src}: missing tensor {missing[0]} ({CONFIG} describes it)")
    with open(src, "rb") as f:
        for peft, (name, base) in sorted(want.items(), key=lambda kv: entries[kv[0]].start):
            e, t = entries[peft], lora.tensors[name]
            if e.shape != t.shape:
                raise PeftError(f"{src}: {peft} has shape {list(e.shape)}, the base model and "
                                f"r {lc.rank} need {list(t.shape)}")  # fmt: skip
            read_into(f, e, t)
            heads = _heads(cfg, base)
            if heads and name.endswith("lora_B"):
                t[...] = to_interleaved(t, heads)  # the right side is copied first
    return Adapter(lc, lora, adapter_base(d), dropout)
