"""Shared helpers for the MIL tests: random staged inputs for a kernel and the fp32 reference."""

from __future__ import annotations

import numpy as np

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
        if s.stage:  # W[out, in], fan-in scaled; a "T" surface [in, out] holds Wᵀ
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
