"""Model parameters: one flat fp32 buffer with named views in llama2.c orientation W[out, in]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anetrain.config import ModelConfig


@dataclass
class LayerParams:
    """Views of one transformer block's weights (llama2.c / PyTorch nn.Linear orientation)."""

    wq: np.ndarray  # [q_dim, dim]
    wk: np.ndarray  # [kv_dim, dim]
    wv: np.ndarray  # [kv_dim, dim]
    wo: np.ndarray  # [dim, q_dim]
    w1: np.ndarray  # [hidden, dim]  gate
    w2: np.ndarray  # [dim, hidden]  down
    w3: np.ndarray  # [hidden, dim]  up
    rms_att: np.ndarray  # [dim]
    rms_ffn: np.ndarray  # [dim]
    q_norm: np.ndarray | None = None  # [head_dim] Qwen3's per-head RMSNorm of q (qk_norm only)
    k_norm: np.ndarray | None = None  # [head_dim] ... of k


# Storage order inside a layer: [wq; wk; wv] and [w1; w3] are contiguous blocks, so the CPU
# kernels run one sgemm for q/k/v and one for the gate/up projections (files use their own order).
MATRICES = ("wq", "wk", "wv", "wo", "w1", "w3", "w2")


def layout(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in flat-buffer order.

    All weight-decayed tensors (>= 2 dims) come first, then the norm weights, so that AdamW runs as
    two calls over two contiguous ranges. Names follow llama2.c's state dict loosely:
    embed, [wcls], layers.{l}.{wq..w3}, layers.{l}.rms_att, layers.{l}.rms_ffn,
    [layers.{l}.q_norm, layers.{l}.k_norm], rms_final.
    """
    d, f, q, kv, v = cfg.dim, cfg.hidden_dim, cfg.q_dim, cfg.kv_dim, cfg.vocab_size
    shapes = {
        "wq": (q, d),
        "wk": (kv, d),
        "wv": (kv, d),
        "wo": (d, q),
        "w1": (f, d),
        "w2": (d, f),
        "w3": (f, d),
    }
    out: list[tuple[str, tuple[int, ...]]] = [("embed", (v, d))]
    if not cfg.shared_classifier:
        out.append(("wcls", (v, d)))
    for layer in range(cfg.n_layers):
        out += [(f"layers.{layer}.{n}", shapes[n]) for n in MATRICES]
    for layer in range(cfg.n_layers):
        out += [(f"layers.{layer}.{n}", (d,)) for n in ("rms_att", "rms_ffn")]
        if cfg.qk_norm:
            out += [(f"layers.{layer}.{n}", (cfg.head_dim,)) for n in ("q_norm", "k_norm")]
    out.append(("rms_final", (d,)))
    return out


class Params:
    """All parameters (or gradients, or optimizer moments) of a model in one flat fp32 buffer.

    `flat` [n_params] owns the memory; every attribute is a reshaped view into it. `n_decay` is the
    length of the weight-decayed prefix (all matrices); the rest are norm weights.
    """

    def __init__(self, cfg: ModelConfig, flat: np.ndarray | None = None):
        self.cfg = cfg
        self.names = layout(cfg)
        n = sum(int(np.prod(s)) for _, s in self.names)
        if flat is None:
            flat = np.zeros(n, dtype=np.float32)
        if flat.dtype != np.float32 or flat.shape != (n,) or not flat.flags.c_contiguous:
            raise ValueError(f"Params: need a contiguous float32 buffer of {n} values")
        self.flat = flat
        self.tensors: dict[str, np.ndarray] = {}
        off = 0
        for name, shape in self.names:
            size = int(np.prod(shape))
            self.tensors[name] = flat[off : off + size].reshape(shape)
            off += size
        self.n_decay = sum(int(np.prod(s)) for _, s in self.names if len(s) >= 2)
        t = self.tensors
        self.embed = t["embed"]  # [vocab, dim]
        self.wcls = t["embed"] if cfg.shared_classifier else t["wcls"]  # [vocab, dim] classifier
        self.rms_final = t["rms_final"]  # [dim]
        norms = ("rms_att", "rms_ffn") + (("q_norm", "k_norm") if cfg.qk_norm else ())
        self.layers = [LayerParams(**{k: t[f"layers.{i}.{k}"] for k in (*MATRICES, *norms)})
                       for i in range(cfg.n_layers)]  # fmt: skip

    def block(self, layer: int, first: str, last: str) -> np.ndarray:
        """Rows of the consecutive matrices first..last of a layer as one [rows, dim] view
        (e.g. block(l, "wq", "wv") = [wq; wk; wv], block(l, "w1", "w3") = [w1; w3])."""
        a, b = self.tensors[f"layers.{layer}.{first}"], self.tensors[f"layers.{layer}.{last}"]
        start = a.ctypes.data - self.flat.ctypes.data
        stop = b.ctypes.data - self.flat.ctypes.data + b.nbytes
        rows = (stop - start) // (4 * a.shape[1])
        return self.flat[start // 4 : stop // 4].reshape(rows, a.shape[1])

    def __len__(self) -> int:
        return self.flat.size

    def zeros_like(self) -> Params:
        return Params(self.cfg)

    def copy(self) -> Params:
        return Params(self.cfg, self.flat.copy())


def init_params(cfg: ModelConfig, rng: np.random.Generator) -> Params:
    """llama2.c init: Linears and embedding N(0, 0.02); w3, wo N(0, 0.02/sqrt(2L)); norms 1."""
    p = Params(cfg)
    small = 0.02 / np.sqrt(2 * cfg.n_layers)
    for name, t in p.tensors.items():
        if t.ndim == 1:
            t[...] = 1.0
        else:
            std = small if name.endswith((".w3", ".wo")) else 0.02
            t[...] = rng.standard_normal(t.shape, dtype=np.float32) * np.float32(std)
    return p
