"""Hugging Face model directories (Llama, Mistral, Qwen3; safetensors weights): read and write."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from anetrain.config import MAX_SIZE, ConfigError, ModelConfig, RopeScaling
from anetrain.errors import CheckpointError
from anetrain.formats.files import atomic_write, atomic_write_dir
from anetrain.formats.safetensors import TensorEntry, read_header, read_into, write_safetensors
from anetrain.params import Params, layout

# A model directory is untrusted input: only JSON and safetensors are read (never a pickle, never
# code: there is no trust_remote_code), every field of config.json is checked, and every
# safetensors header is checked against it before the parameters are allocated.
#
# RoPE: Hugging Face rotates halves (pair i of a head = rows i and i + head_dim/2 of q_proj and
# k_proj); anetrain rotates interleaved pairs (rows 2i, 2i+1), like llama2.c. The q/k rows, and
# Qwen3's q_norm/k_norm weights, are permuted once here, at import and at export.

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")  # copied into an export when the run knows them
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                 "Qwen3ForCausalLM": "qwen3"}  # architecture -> model_type  # fmt: skip
SUPPORTED = "LlamaForCausalLM, MistralForCausalLM without sliding window, Qwen3ForCausalLM"
DTYPES = {"fp32": ("F32", "float32"), "bf16": ("BF16", "bfloat16"), "fp16": ("F16", "float16")}
_MAX_JSON = 16 << 20  # config.json and the shard index are small; refuse anything huge
_SHARD = re.compile(r"[\w.-]+\.safetensors")  # a file in the directory itself, never a path
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # a cached buffer
FP16_MAX = 65504.0


class HfError(CheckpointError):
    """A Hugging Face model directory anetrain cannot load (or a Hub id it cannot fetch)."""


def is_hf_dir(path: str | Path) -> bool:
    """A directory with a config.json (what it holds is checked when it is loaded)."""
    return (Path(path) / CONFIG).is_file()


def read_json(path: Path) -> dict:
    """A JSON object from a small file (config.json, the shard index), else an HfError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_JSON + 1)
    except OSError as e:
        raise HfError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) > _MAX_JSON:
        raise HfError(f"{path}: larger than {_MAX_JSON >> 20} MB, not a model's JSON file")
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise HfError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise HfError(f"{path}: not a JSON object")
    return d


# ----------------------------------------------------------------------------
# config.json -> ModelConfig


def _unsupported(src: Path, field: str, value: object, supported: str) -> HfError:
    return HfError(f"{src}: {field} {json.dumps(value)} is not supported (supported: {supported})")


def _int(src: Path, d: dict, key: str, default: int | None = None) -> int:
    value = d.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise HfError(f"{src}: {key} must be an integer in 1..{MAX_SIZE}, got {json.dumps(value)}")
    return value


def _float(src: Path, d: dict, key: str, default: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise HfError(f"{src}: {key} must be a number > 0, got {json.dumps(value)}")
    return float(value)


def _architecture(src: Path, d: dict) -> str:
    """The one supported architecture config.json names, with its matching model_type."""
    archs = d.get("architectures")
    if archs is None:  # older configs may name only the model_type
        by_type = {t: a for a, t in ARCHITECTURES.items()}
        if d.get("model_type") not in by_type:
            raise _unsupported(src, "model_type", d.get("model_type"), SUPPORTED)
        return by_type[d["model_type"]]
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise _unsupported(src, "architectures", archs, SUPPORTED)
    expect = ARCHITECTURES[archs[0]]
    if d.get("model_type", expect) != expect:
        raise _unsupported(src, "model_type", d["model_type"], f"{expect!r} for {archs[0]}")
    return archs[0]


def _check_features(src: Path, d: dict, arch: str) -> None:
    """Refuse what the model has no code for: biases, another activation, sliding windows,
    per-layer attention types, quantized weights, partial rotary embeddings."""
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):  # null means false too
        if d.get(key) not in (None, False):
            raise _unsupported(src, key, d[key], "false")
    if d.get("hidden_act", "silu") != "silu":
        raise _unsupported(src, "hidden_act", d["hidden_act"], "silu")
    if arch == "MistralForCausalLM" and d.get("sliding_window") is not None:
        raise _unsupported(src, "sliding_window", d["sliding_window"], "null")
    layer_types = d.get("layer_types")
    if layer_types is not None and (not isinstance(layer_types, list) or
                                    any(t != "full_attention" for t in layer_types)):  # fmt: skip
        raise _unsupported(src, "layer_types", layer_types, "full_attention for every layer")
    if d.get("quantization_config") is not None:
        raise _unsupported(src, "quantization_config", d["quantization_config"],
                           "none: unquantized F32, BF16 or F16 weights")  # fmt: skip


def _rope(src: Path, d: dict, seq_len: int) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) as transformers resolves them: a legacy `rope_scaling` dict
    wins over `rope_parameters` (transformers 5), and a `rope_theta` inside it over the top-level
    one. Types "default" (no scaling) and "llama3" only."""
    rp = d.get("rope_scaling") or d.get("rope_parameters") or {}
    field = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    if not isinstance(rp, dict):
        raise HfError(f"{src}: {field} must be an object, got {json.dumps(rp)}")
    theta = _float(src, {**d, **rp}, "rope_theta", 10000.0)
    partial = rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _unsupported(src, "partial_rotary_factor", partial, "1.0")
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise _unsupported(src, f"{field} type", kind, "default, llama3")
    keys = ("factor", "low_freq_factor", "high_freq_factor")
    missing = [k for k in keys if k not in rp]
    if missing:
        raise HfError(f"{src}: {field} of type llama3 has no {missing[0]}")
    try:
        scaling = RopeScaling(**{k: rp[k] for k in keys}, original_max_position_embeddings=rp.get(
            "original_max_position_embeddings", seq_len))  # fmt: skip
    except ConfigError as e:
        raise HfError(f"{src}: {e}") from None
    return theta, scaling


def config_from_hf(d: dict, src: Path) -> ModelConfig:
    """The ModelConfig of a parsed config.json (`src` names it in messages)."""
    arch = _architecture(src, d)
    _check_features(src, d, arch)
    dim, n_heads = _int(src, d, "hidden_size"), _int(src, d, "num_attention_heads")
    head_dim = _int(src, d, "head_dim", default=dim // n_heads or 1)
    seq_len = _int(src, d, "max_position_embeddings")
    theta, scaling = _rope(src, d, seq_len)
    tied = d.get("tie_word_embeddings", False)  # transformers' default for these three
    if not isinstance(tied, bool):
        raise HfError(f"{src}: tie_word_embeddings must be true or false, got {json.dumps(tied)}")
    try:
        return ModelConfig(
            dim=dim, n_layers=_int(src, d, "num_hidden_layers"), n_heads=n_heads,
            n_kv_heads=_int(src, d, "num_key_value_heads", default=n_heads),
            hidden_dim=_int(src, d, "intermediate_size"), vocab_size=_int(src, d, "vocab_size"),
            seq_len=seq_len, norm_eps=_float(src, d, "rms_norm_eps", 1e-6), rope_theta=theta,
            shared_classifier=tied, head_size=0 if head_dim * n_heads == dim else head_dim,
            qk_norm=arch == "Qwen3ForCausalLM", rope_scaling=scaling,
        )  # fmt: skip
    except ConfigError as e:
        raise HfError(f"{src}: {e}") from None


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a model directory's config.json."""
    src = Path(path) / CONFIG
    return config_from_hf(read_json(src), src)


# ----------------------------------------------------------------------------
# tensor names and the RoPE row permutation


def tensor_map(cfg: ModelConfig) -> list[tuple[str, str, int]]:
    """(Hugging Face name, Params name, heads whose rows are permuted (0: none)) of every tensor,
    in Params order."""
    out = [("model.embed_tokens.weight", "embed", 0)]
    if not cfg.shared_classifier:
        out.append(("lm_head.weight", "wcls", 0))
    hf = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
          "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w3": "mlp.up_proj",
          "w2": "mlp.down_proj", "rms_att": "input_layernorm",
          "rms_ffn": "post_attention_layernorm", "q_norm": "self_attn.q_norm",
          "k_norm": "self_attn.k_norm"}  # fmt: skip
    heads = {"wq": cfg.n_heads, "wk": cfg.n_kv_heads, "q_norm": 1, "k_norm": 1}
    for name, _ in layout(cfg):
        if name.startswith("layers."):
            _, i, kind = name.split(".")
            out.append((f"model.layers.{i}.{hf[kind]}.weight", name, heads.get(kind, 0)))
    out.append(("model.norm.weight", "rms_final", 0))
    return out


def to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of `heads` rotate-half heads -> interleaved pairs: row 2i+e of a head is row
    e*hd/2 + i of the Hugging Face head (a view of a 2-D or 1-D array; copy to keep it)."""
    hd = w.shape[0] // heads
    return w.reshape(heads, 2, hd // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def to_rotate_half(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of to_interleaved, as a strided 4-D view [heads, 2, hd/2, cols] whose C order
    is the Hugging Face row order (no copy of the whole tensor)."""
    hd = w.shape[0] // heads
    return w.reshape(heads, hd // 2, 2, -1).transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------
# reading weights


def _index_entries(d: Path) -> dict[str, TensorEntry]:
    """The tensors of a sharded checkpoint: the index's weight_map must name every tensor of
    every shard it lists, each in the shard that holds it."""
    index = d / INDEX
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and _SHARD.fullmatch(v) for v in weight_map.values()
    ):
        raise HfError(f"{index}: weight_map must map tensor names to .safetensors files in "
                      "the directory")  # fmt: skip
    entries: dict[str, TensorEntry] = {}
    for shard in sorted(set(weight_map.values())):
        if not (d / shard).is_file():
            raise HfError(f"{index}: names {shard}, which does not exist")
        for name, e in read_header(d / shard).items():
            if name in entries:
                raise HfError(f"{d}: tensor {name} is in both {entries[name].path.name} and "
                              f"{shard}")  # fmt: skip
            if weight_map.get(name) != shard:
                raise HfError(f"{index}: does not map {name} to {shard}, which holds it")
            entries[name] = e
    lost = sorted(set(weight_map) - set(entries))
    if lost:
        raise HfError(f"{index}: maps {lost[0]} to {weight_map[lost[0]]}, which does not hold it")
    return entries


def weight_entries(d: Path) -> dict[str, TensorEntry]:
    """Every tensor of the directory's safetensors weights (model.safetensors first, as
    transformers looks for it, else the sharded index); pickles are refused."""
    if (d / SINGLE).is_file():
        return read_header(d / SINGLE)
    if (d / INDEX).is_file():
        return _index_entries(d)
    pickle = next((p for p in PICKLES if (d / p).is_file()), None)
    if pickle is not None:
        raise HfError(f"{d}: {pickle} is a pickle, which anetrain never loads (it can run code); "
                      "convert it to safetensors, e.g. with transformers: AutoModelForCausalLM."
                      "from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)")
    raise HfError(f"{d}: no {SINGLE} or {INDEX} (anetrain reads safetensors weights)")


Plan = list[tuple[TensorEntry, str, int]]  # (entry, Params name, permuted heads) per tensor


def check_tensors(d: Path, cfg: ModelConfig, entries: dict[str, TensorEntry]) -> Plan:
    """(entry, Params name, permuted heads) of every tensor, after checking that the files hold
    exactly the tensors config.json describes, each of its shape."""
    names = tensor_map(cfg)
    known = {hf for hf, _, _ in names}
    extra = sorted(n for n in entries if n not in known and not _IGNORED.fullmatch(n))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise HfError(f"{d}: unexpected tensor {extra[0]}{more} (not in the model {CONFIG} "
                      "describes)")  # fmt: skip
    missing = [hf for hf, _, _ in names if hf not in entries]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise HfError(f"{d}: missing tensor {missing[0]}{more}")
    shapes = dict(layout(cfg))
    out = []
    for hf, ours, heads in names:
        e = entries[hf]
        if e.shape != shapes[ours]:
            raise HfError(f"{e.path}: {hf} has shape {list(e.shape)}, {CONFIG} says "
                          f"{list(shapes[ours])}")  # fmt: skip
        out.append((e, ours, heads))
    return out


def read_hf(path: str | Path) -> tuple[ModelConfig, Params]:
    """Import a Hugging Face model directory: config.json and every safetensors header are
    checked before the fp32 parameters are allocated; then each tensor is read straight into
    its view (BF16/F16 widened exactly), q/k rows permuted to interleaved pairs."""
    d = Path(path)
    cfg = read_config(d)
    plan = check_tensors(d, cfg, weight_entries(d))
    params = Params(cfg)
    for file in sorted({e.path for e, _, _ in plan}):
        with open(file, "rb") as f:
            for e, ours, heads in sorted((p for p in plan if p[0].path == file),
                                         key=lambda p: p[0].start):  # fmt: skip
                t = params.tensors[ours]
                read_into(f, e, t)
                if heads:
                    t[...] = to_interleaved(t, heads)  # the right side is copied first
    return cfg, params


# ----------------------------------------------------------------------------
# writing


def hf_config(cfg: ModelConfig, dtype: str = "fp32", ids: dict | None = None) -> dict:
    """config.json for cfg: LlamaForCausalLM, or Qwen3ForCausalLM when it has q/k norms.

    RoPE is written the way transformers 4 reads it (top-level rope_theta and rope_scaling),
    which transformers 5 still reads first. `ids`: bos/eos/pad token ids to record."""
    qwen = cfg.qk_norm
    s = cfg.rope_scaling
    d = {
        "architectures": ["Qwen3ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen else "llama",
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": None if s is None else {
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings},
        "tie_word_embeddings": cfg.shared_classifier, "hidden_act": "silu",
        "attention_bias": False, **({} if qwen else {"mlp_bias": False}),
        "torch_dtype": DTYPES[dtype][1],
    }  # fmt: skip
    return {**d, **(ids or {})}


def tokenizer_dir(recorded: str | None) -> Path | None:
    """The directory of a run's Hugging Face tokenizer (the recorded tokenizer.json, or a
    directory holding one); None for a llama2.c tokenizer.bin or none at all."""
    if not recorded:
        return None
    p = Path(recorded)
    d = p.parent if p.name == "tokenizer.json" else p
    return d if (d / "tokenizer.json").is_file() else None


def _special_ids(d: Path | None) -> dict:
    """bos/eos/pad token ids from the config.json beside a tokenizer (a model directory's)."""
    if d is None or not (d / CONFIG).is_file():
        return {}
    try:
        src = read_json(d / CONFIG)
    except HfError:
        return {}

    def is_id(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    ids = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = src.get(key)
        if is_id(v) or isinstance(v, list) and v and all(map(is_id, v)):
            ids[key] = v
    return ids


def hf_tensors(cfg: ModelConfig, params: Params) -> Iterator[tuple[str, tuple[int, ...],
                                                                   np.ndarray]]:  # fmt: skip
    """(Hugging Face name, shape, data in HF row order) of every tensor, without copies."""
    for hf, ours, heads in tensor_map(cfg):
        t = params.tensors[ours]
        yield hf, t.shape, (to_rotate_half(t, heads) if heads else t)


def write_hf(out: str | Path, cfg: ModelConfig, params: Params, dtype: str = "fp32",
             tokenizer: str | None = None) -> list[str]:  # fmt: skip
    """Write a model directory (config.json, model.safetensors, and the tokenizer files of a
    recorded Hugging Face tokenizer) as a whole: into a temporary directory renamed to OUT,
    which the caller has checked may be replaced. Returns the names of the files written."""
    out = Path(out)
    if params.cfg != cfg:
        raise ValueError("write_hf: params were built for another config")
    if dtype == "fp16":
        big = float(np.abs(params.flat).max(initial=0.0))
        if not big <= FP16_MAX:
            raise HfError(f"{out}: a weight of magnitude {big:g} does not fit fp16 (max 65504); "
                          "use --dtype bf16 or fp32")  # fmt: skip
    tok = tokenizer_dir(tokenizer)
    config = json.dumps(hf_config(cfg, dtype, _special_ids(tok)), indent=2).encode() + b"\n"

    def fill(tmp: Path) -> list[str]:
        atomic_write(tmp / CONFIG, lambda f: f.write(config), "config")
        atomic_write(tmp / SINGLE, lambda f: write_safetensors(
            f, hf_tensors(cfg, params), DTYPES[dtype][0], {"format": "pt"}), "weights")  # fmt: skip
        names = [CONFIG, SINGLE]
        for name in TOKENIZER_FILES if tok is not None else ():
            if (tok / name).is_file():
                data = (tok / name).read_bytes()
                atomic_write(tmp / name, lambda f, data=data: f.write(data), "tokenizer file")
                names.append(name)
        return names

    return atomic_write_dir(out, fill, "model directory")
