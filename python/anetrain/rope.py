"""RoPE tables (llama2.c: interleaved pairs, theta 10000): the one source for CPU and MIL."""

from __future__ import annotations

import numpy as np


def rope_tables(head_dim: int, seq_len: int, theta: float = 10000.0, pos0: int = 0):
    """cos and sin tables, each fp32 [seq_len, head_dim // 2], for positions pos0 .. pos0+seq_len-1.

    Pair i of a head (elements 2i, 2i+1) rotates by angle pos * theta^(-2i/head_dim), as in
    llama2.c's model.py and run.c. Computed in float64, rounded once to fp32.
    """
    if head_dim % 2:
        raise ValueError(f"rope_tables: head_dim must be even, got {head_dim}")
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [hd/2]
    pos = np.arange(pos0, pos0 + seq_len, dtype=np.float64)  # [S]
    ang = np.outer(pos, inv_freq)  # [S, hd/2]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
