"""Shared helpers for the MIL tests: random staged inputs, the fp32 reference, target shapes."""

from __future__ import annotations

import numpy as np

from anetrain.config import ModelConfig
from anetrain.mil.kernels import KernelSpec
from anetrain.mil.reference import REFERENCE


def f16(a: np.ndarray) -> np.ndarray:
    """Round to fp16 and back: the values a surface write can hold."""
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def random_case(spec: KernelSpec, cfg, rng: np.random.Generator):
    """(packed input [C, W] fp16, logical reference arguments) with non-symmetric random data.

    Weights are drawn as llama2.c W[out, in] (fan-in scaled) and staged as the layout says:
    stage "T" packs Wᵀ, stage "raw" packs W. P/dP for sdpaBwd2 are a real softmax and gradient.
    """
    parts, logical = {}, {}
    for s in spec.inp.segments:
        if s.stage == "bcast":  # a norm weight w [n] (not 1: a missing multiply shows), per column
            w = f16(rng.uniform(0.5, 1.5, s.nch))
            parts[s.name], logical[s.weight] = np.broadcast_to(w[:, None], s.shape), w
        elif s.stage:  # W[out, in], fan-in scaled; a "T" surface [in, out] holds Wᵀ
            w = f16(rng.standard_normal(s.weight_shape) / np.sqrt(s.weight_shape[1]))
            parts[s.name], logical[s.weight] = (w.T if s.stage == "T" else w), w
        else:
            a = f16(rng.standard_normal(s.shape))
            parts[s.name], logical[s.name] = a, a
    if spec.name == "sdpaBwd2":
        q = [rng.standard_normal((cfg.q_dim, cfg.seq_len)).astype(np.float32) for _ in range(4)]
        r = REFERENCE["sdpaBwd1"](cfg, *q)
        for k in ("P", "dP"):
            parts[k] = logical[k] = f16(r[k])
    return spec.inp.pack(parts), logical


# The model shapes issue 19 targets, at seq 256 (the kernels do not depend on n_layers or the
# vocabulary; both are the real models'). Qwen3-0.6B with its q/k norm: head_dim 128, so
# q_dim 2048 != dim 1024.
ANE_SHAPES = {
    "stories110m": ModelConfig(dim=768, n_layers=12, n_heads=12, hidden_dim=2048, seq_len=256),
    "smollm2-135m": ModelConfig(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                                vocab_size=49152, seq_len=256, rope_theta=100000.0),
    "smollm2-360m": ModelConfig(dim=960, n_layers=32, n_heads=15, n_kv_heads=5, hidden_dim=2560,
                                vocab_size=49152, seq_len=256, rope_theta=100000.0),
    "tinyllama-1.1b": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                                  hidden_dim=5632, vocab_size=32000, seq_len=256,
                                  shared_classifier=False),
    "qwen3-0.6b": ModelConfig(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_size=128,
                              hidden_dim=3072, vocab_size=151936, seq_len=256,
                              rope_theta=1000000.0, norm_eps=1e-6, qk_norm=True),
}  # fmt: skip
