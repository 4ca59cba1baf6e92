"""An independent PyTorch (eager, fp32) Llama/Qwen3 model: autograd oracle and benchmark rival."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from anetrain.config import ModelConfig
from anetrain.params import Params

# Written from llama2.c's documented conventions (design/llama2c.md §1), in the usual [S, D] layout
# with PyTorch ops only, so that it shares no code path with anetrain's channel-first kernels.


class TorchLlama(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, params: Params):
        super().__init__()
        self.cfg = cfg
        names = [n for n, _ in params.names]
        src = params.tensors
        # parameter names with '.' are not allowed in a ParameterDict key: use '/'
        self.p = torch.nn.ParameterDict(
            {n.replace(".", "/"): torch.nn.Parameter(torch.tensor(np.array(src[n]))) for n in names}
        )
        hd = cfg.head_dim
        inv = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        if cfg.rope_scaling is not None:
            inv = _llama3_inv_freq(inv, cfg.rope_scaling)
        ang = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float64), inv)
        self.register_buffer("cos", torch.cos(ang).float(), persistent=False)  # (S, hd/2)
        self.register_buffer("sin", torch.sin(ang).float(), persistent=False)
        causal = torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).triu(1)  # True = masked
        self.register_buffer("causal", causal, persistent=False)

    def w(self, name: str) -> torch.Tensor:
        return self.p[name.replace(".", "/")]

    def proj(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x (S, in) through the layer matrix `name` (out, in): (S, out)."""
        return x @ self.w(name).T

    def _rmsnorm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps) * w

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        """x (S, heads, hd): rotate adjacent pairs (2i, 2i+1) by pos * theta^(-2i/hd)."""
        S = x.shape[0]
        xr = x.reshape(S, x.shape[1], -1, 2)
        x0, x1 = xr[..., 0], xr[..., 1]
        c, s = self.cos[:S, None, :], self.sin[:S, None, :]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).reshape(x.shape)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        S, H, KV, hd = tokens.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        x = self.w("embed")[tokens]  # (S, D)
        for i in range(cfg.n_layers):
            L = f"layers.{i}."
            h = self._rmsnorm(x, self.w(L + "rms_att"))
            q = (self.proj(L + "wq", h)).view(S, H, hd)
            k = (self.proj(L + "wk", h)).view(S, KV, hd)
            if cfg.qk_norm:  # Qwen3: RMSNorm over each head's hd values, before RoPE
                q = self._rmsnorm(q, self.w(L + "q_norm"))
                k = self._rmsnorm(k, self.w(L + "k_norm"))
            q, k = self._rope(q), self._rope(k)
            v = (self.proj(L + "wv", h)).view(S, KV, hd)
            if KV != H:  # query head h uses kv head h // (H/KV)
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, S, hd)
            att = (q @ k.transpose(1, 2)) / math.sqrt(hd)
            att = att.masked_fill(self.causal[:S, :S], float("-inf"))
            o = (att.softmax(-1) @ v).transpose(0, 1).reshape(S, cfg.q_dim)
            x = x + self.proj(L + "wo", o)
            h = self._rmsnorm(x, self.w(L + "rms_ffn"))
            g = F.silu(self.proj(L + "w1", h)) * (self.proj(L + "w3", h))
            x = x + self.proj(L + "w2", g)
        x = self._rmsnorm(x, self.w("rms_final"))
        cls = self.w("embed") if cfg.shared_classifier else self.w("wcls")
        return F.cross_entropy(x @ cls.T, targets)

    def grads_into(self, out: Params) -> None:
        """Copy .grad of every parameter into a Params buffer (same names)."""
        for name, t in out.tensors.items():
            g = self.w(name).grad
            t[...] = 0.0 if g is None else g.detach().numpy()


def _llama3_inv_freq(inv: torch.Tensor, s) -> torch.Tensor:
    """Llama 3's scaled RoPE frequencies, as Meta's reference code writes them (per frequency:
    keep the high ones, divide the low ones by the factor, interpolate in between)."""
    old = s.original_max_position_embeddings
    out = []
    for f in inv.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / s.high_freq_factor:
            out.append(f)
        elif wavelen > old / s.low_freq_factor:
            out.append(f / s.factor)
        else:
            smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * f / s.factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64)


def loss_and_grads(params: Params, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, Params]:
    """Autograd loss and gradients of one sequence (tokens, targets int [S])."""
    m = TorchLlama(params.cfg, params)
    loss = m(torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long))
    loss.backward()
    g = params.zeros_like()
    m.grads_into(g)
    return loss.item(), g
