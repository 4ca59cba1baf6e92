"""fp32 numpy math of the ten kernels on logical (unpacked) tensors: oracle for tests, bench."""

from __future__ import annotations

import numpy as np

from anetrain.config import ModelConfig
from anetrain.rope import model_rope_tables

# Channel-first [C, S] activations; weights in llama2.c orientation W[out, in]. Written per head
# with explicit loops (a different formulation from the MIL) so that a layout or head-mapping bug
# in either one shows up as a mismatch.


def _rope(x: np.ndarray, cfg: ModelConfig, n_heads: int) -> np.ndarray:
    """Interleaved-pair RoPE on [n_heads·HD, S]."""
    hd, S = cfg.head_dim, x.shape[1]
    cos, sin = model_rope_tables(cfg, S)  # [S, HD/2]
    h = x.reshape(n_heads, hd // 2, 2, S)  # pair i of head h: rows 2i, 2i+1
    e, o = h[:, :, 0, :], h[:, :, 1, :]  # [nh, HD/2, S]
    out = np.empty_like(h)
    out[:, :, 0, :] = e * cos.T - o * sin.T
    out[:, :, 1, :] = o * cos.T + e * sin.T
    return out.reshape(x.shape)


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _causal(S: int) -> np.ndarray:
    return np.triu(np.full((S, S), -np.inf, dtype=np.float32), 1)  # [query, key]


def _head_rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Qwen3's q/k norm of [nh·HD, S]: each head's HD values of a token, RMS-normalised, times w."""
    h = x.reshape(-1, w.shape[0], x.shape[1])  # [nh, HD, S]
    y = h / np.sqrt((h * h).mean(axis=1, keepdims=True) + eps) * w[None, :, None]
    return y.reshape(x.shape)


def sdpa_fwd(cfg: ModelConfig, xnorm, wq, wk, wv, q_norm=None, k_norm=None,
             kv_of=None) -> dict[str, np.ndarray]:  # fmt: skip
    """kv_of(h) -> kv head of query head h; default llama2.c's h // kv_group. With cfg.qk_norm,
    q_norm and k_norm [HD] are the weights of Qwen3's q/k norm (before RoPE)."""
    hd, S, scale = cfg.head_dim, xnorm.shape[1], 1.0 / np.sqrt(cfg.head_dim)
    q_pre, k_pre = wq @ xnorm, wk @ xnorm  # [Q, S], [KV, S]
    q, k = q_pre, k_pre
    if cfg.qk_norm:
        q, k = _head_rmsnorm(q, q_norm, cfg.norm_eps), _head_rmsnorm(k, k_norm, cfg.norm_eps)
    q = _rope(q, cfg, cfg.n_heads)  # [Q, S]
    k = _rope(k, cfg, cfg.n_kv_heads)  # [KV, S]
    v = wv @ xnorm  # [KV, S]
    attn = np.empty_like(q)
    for h in range(cfg.n_heads):
        j = h // cfg.kv_group if kv_of is None else kv_of(h)  # llama2.c: h // (H / KV)
        qh, kh, vh = q[h * hd : (h + 1) * hd], k[j * hd : (j + 1) * hd], v[j * hd : (j + 1) * hd]
        p = _softmax(qh.T @ kh * scale + _causal(S))  # [S(query), S(key)]
        attn[h * hd : (h + 1) * hd] = (p @ vh.T).T
    out = {"attn": attn, "q_rope": q, "k_rope": k, "v": v}
    if cfg.qk_norm:
        out.update(q_pre=q_pre, k_pre=k_pre)
    return out


def wo_fwd(cfg, attn, wo):
    return {"o": wo @ attn}


def ffn_fused(cfg, x2norm, w1, w3, w2):
    h1, h3 = w1 @ x2norm, w3 @ x2norm
    gate = h1 / (1 + np.exp(-h1)) * h3
    return {"ffn": w2 @ gate, "h1": h1, "h3": h3, "gate": gate}


def ffn_bwd_w2t(cfg, dffn, w2):
    return {"dgate": w2.T @ dffn}


def ffn_bwd_w13t(cfg, dh1, dh3, w1, w3):
    return {"dx": w1.T @ dh1 + w3.T @ dh3}


def wot_bwd(cfg, dx2, wo):
    return {"dattn": wo.T @ dx2}


def q_bwd(cfg, dq, wq):
    return {"dx": wq.T @ dq}


def kv_bwd(cfg, dk, dv, wk, wv):
    return {"dx": wk.T @ dk + wv.T @ dv}


def sdpa_bwd1(cfg, q_rope, k_tiled, v_tiled, dattn):
    hd, S, H = cfg.head_dim, q_rope.shape[1], cfg.n_heads
    scale = 1.0 / np.sqrt(hd)
    dv = np.empty_like(q_rope)
    P = np.empty((H * S, S), dtype=q_rope.dtype)
    dP = np.empty_like(P)
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        p = _softmax(q_rope[sl].T @ k_tiled[sl] * scale + _causal(S))  # [S, S]
        P[h * S : (h + 1) * S] = p
        dP[h * S : (h + 1) * S] = dattn[sl].T @ v_tiled[sl]  # dA·Vᵀ
        dv[sl] = (p.T @ dattn[sl].T).T  # Pᵀ·dA
    return {"dv_full": dv, "P": P, "dP": dP}


def sdpa_bwd2(cfg, P, dP, q_rope, k_tiled):
    hd, S, H = cfg.head_dim, q_rope.shape[1], cfg.n_heads
    scale = 1.0 / np.sqrt(hd)
    dq, dk = np.empty_like(q_rope), np.empty_like(q_rope)
    for h in range(H):
        sl, rows = slice(h * hd, (h + 1) * hd), slice(h * S, (h + 1) * S)
        p, dp = P[rows], dP[rows]
        ds = p * (dp - (p * dp).sum(-1, keepdims=True)) * scale  # [S(query), S(key)]
        dq[sl] = (ds @ k_tiled[sl].T).T
        dk[sl] = (ds.T @ q_rope[sl].T).T
    return {"dq": dq, "dk_full": dk}


# kernel name (the MIL program names of mil/kernels.py KERNELS) -> its reference function
REFERENCE = {"sdpaFwd": sdpa_fwd, "woFwd": wo_fwd, "ffnFused": ffn_fused, "ffnBwdW2t": ffn_bwd_w2t,
             "ffnBwdW13t": ffn_bwd_w13t, "wotBwd": wot_bwd, "sdpaBwd1": sdpa_bwd1,
             "sdpaBwd2": sdpa_bwd2, "qBwd": q_bwd, "kvBwd": kv_bwd}  # fmt: skip
