"""RoPE tables (interleaved pairs, any theta, Llama 3 scaling): the one source for CPU and MIL."""

from __future__ import annotations

import math

import numpy as np

from anetrain.config import ModelConfig, RopeScaling


def model_rope_tables(cfg: ModelConfig, seq_len: int, pos0: int = 0):
    """rope_tables for a model's head_dim, rope_theta and rope_scaling."""
    return rope_tables(cfg.head_dim, seq_len, cfg.rope_theta, pos0, cfg.rope_scaling)


def scaled_inv_freq(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3's frequency scaling (Hugging Face rope_type "llama3"): wavelengths longer than
    original_max_position_embeddings / low_freq_factor are stretched by `factor`, those shorter
    than ... / high_freq_factor kept, and the band between interpolated smoothly."""
    old = s.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq  # [hd/2]
    scaled = np.where(wavelen > old / s.low_freq_factor, inv_freq / s.factor, inv_freq)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    medium = (wavelen >= old / s.high_freq_factor) & (wavelen <= old / s.low_freq_factor)
    return np.where(medium, (1 - smooth) * scaled / s.factor + smooth * scaled, scaled)


def rope_tables(head_dim: int, seq_len: int, theta: float = 10000.0, pos0: int = 0,
                scaling: RopeScaling | None = None):  # fmt: skip
    """cos and sin tables, each fp32 [seq_len, head_dim // 2], for positions pos0 .. pos0+seq_len-1.

    Pair i of a head (elements 2i, 2i+1) rotates by angle pos * theta^(-2i/head_dim), as in
    llama2.c's model.py and run.c. Computed in float64, rounded once to fp32.
    """
    if head_dim % 2:
        raise ValueError(f"rope_tables: head_dim must be even, got {head_dim}")
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [hd/2]
    if scaling is not None:
        inv_freq = scaled_inv_freq(inv_freq, scaling)
    pos = np.arange(pos0, pos0 + seq_len, dtype=np.float64)  # [S]
    ang = np.outer(pos, inv_freq)  # [S, hd/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
