"""CpuKernels: the ten training kernels in fp32 numpy (the oracle, and the no-ANE backend)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

import numpy as np

from anetrain import native
from anetrain.config import ModelConfig, default_threads
from anetrain.model import head_rmsnorm_fwd, tile_kv
from anetrain.params import Params
from anetrain.rope import model_rope_tables

# Every kernel works on channel-first activations [C, S] (element (c, t) at c*S + t) and reads the
# fp32 master weights in llama2.c orientation W[out, in]. The MIL versions in mil/kernels.py compute
# the same functions on the ANE in fp16; tests compare the two kernel by kernel.
#
#   sdpa_fwd    xnorm[D,S]                       -> attn[Q,S], q_rope[Q,S], k_rope[KV,S], v[KV,S]
#   wo_fwd      attn[Q,S]                        -> o[D,S]        = Wo attn
#   ffn_fused   x2norm[D,S]                      -> ffn[D,S], h1[F,S], h3[F,S], gate[F,S]
#   ffn_bwd_w2t dffn[D,S]                        -> dgate[F,S]    = W2^T dffn
#   ffn_bwd_w13t dh1[F,S], dh3[F,S]              -> dx[D,S]       = W1^T dh1 + W3^T dh3
#   wot_bwd     dx2[D,S]                         -> dattn[Q,S]    = Wo^T dx2
#   sdpa_bwd1   q_rope, k_tiled, v_tiled, dattn  -> dv_full[Q,S], P[H*S,S], dP[H*S,S]
#   sdpa_bwd2   P, dP, q_rope, k_tiled           -> dq[Q,S], dk_full[Q,S]   (w.r.t. roped q, k)
#   q_bwd       dq[Q,S]                          -> dx[D,S]       = Wq^T dq
#   kv_bwd      dk[KV,S], dv[KV,S]               -> dx[D,S]       = Wk^T dk + Wv^T dv
#
# k_tiled/v_tiled/dk_full/dv_full have one head per *query* head: query head h uses kv head
# h // kv_group (llama2.c's GQA mapping); model.tile_kv/reduce_kv convert between the two.


def joined_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[a; b] as one [ra + rb, S] array: a view when b's rows follow a's in memory, else a copy."""
    if (
        a.flags.c_contiguous
        and b.flags.c_contiguous
        and a.base is not None
        and a.base is b.base
        and a.ctypes.data + a.nbytes == b.ctypes.data
        and a.shape[1:] == b.shape[1:]
    ):
        base = a.base
        off = (a.ctypes.data - base.ctypes.data) // a.itemsize
        return base.reshape(-1)[off : off + a.size + b.size].reshape(-1, *a.shape[1:])
    return np.concatenate((a, b))


_BLOCK = 128  # query / key rows per block of the causal attention products


class ProjectionHook(Protocol):
    """What a LoRA run adds to the projections beside W + s·B·A (lora.LoraDropout)."""

    def forward(self, layer: int, names: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> None:
        """y [rows, S] = the stacked projections `names` (e.g. ("wq", "wk", "wv")) of x [in, S]:
        add to it in place."""
        ...

    def backward(self, layer: int, names: tuple[str, ...], dy: np.ndarray, dx: np.ndarray) -> None:
        """dx [in, S] = the stacked projections' transpose applied to dy [rows, S]: add to it."""
        ...


class CpuKernels:
    """model.Kernels in fp32 numpy, reading the fp32 masters directly (no staging needed)."""

    name = "cpu"
    fp16 = False  # fp32 throughout: no loss scaling
    overlap_dw = False  # the dW sgemms run inline: BLAS already uses every core

    def __init__(self, cfg: ModelConfig, params: Params, seq_len: int | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.params = params
        self.S = seq_len or cfg.seq_len
        self.cos, self.sin = model_rope_tables(cfg, self.S)  # [S, hd/2] each
        self.scale = np.float32(1.0 / np.sqrt(cfg.head_dim))
        self.threads = threads or default_threads()  # for the elementwise C ops (softmax, ...)
        # attention probabilities of the forward, reused by sdpa_bwd1 when it is called with the
        # very same q array and equal tiled k (the ANE recomputes them; here that would only cost
        # time; with GQA the caller tiles k afresh, so identity alone would never match)
        self._probs_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # (H, S, S) buffers whose contents are dead (probabilities and their gradients that never
        # left sdpa_bwd). Reusing them saves the first-touch page faults of fresh 3 MB arrays
        # (~2 us per 4 KB page on a VM: ~1.7 ms per buffer, about as long as the softmax itself).
        self._spare: list[np.ndarray] = []
        self.hook: ProjectionHook | None = None  # a LoRA run's dropout (lora.LoraDropout)

    def update_weights(self, changed: Collection[str] | None = None) -> None:
        """Called after every optimizer step; the cpu kernels read the masters, so nothing to do."""

    def sync(self) -> None:
        """Called before every optimizer step; there is no staging to wait for."""

    def close(self) -> None:
        """Nothing to free: the buffers are numpy arrays."""

    def stats(self) -> dict[str, str]:
        """No backend figures for the efficiency report."""
        return {}

    def timers(self) -> dict[str, float]:
        """Nothing to compile, no kernel evaluations or staging to time apart (model.Kernels)."""
        return {"compile": 0.0}

    # ---- helpers ----------------------------------------------------------------------------

    def _fwd(self, layer: int, names: tuple[str, ...], x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.hook is not None:
            self.hook.forward(layer, names, x, y)
        return y

    def _bwd(self, layer: int, names: tuple[str, ...], dy: np.ndarray, dx: np.ndarray
             ) -> np.ndarray:  # fmt: skip
        if self.hook is not None:
            self.hook.backward(layer, names, dy, dx)
        return dx

    def _heads(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.cfg.n_heads, self.cfg.head_dim, self.S)  # [Q,S] -> (H, hd, S)

    def _square(self) -> np.ndarray:
        """An (H, S, S) fp32 buffer with undefined contents: a spare one when there is one."""
        if self._spare:
            return self._spare.pop()
        return np.empty((self.cfg.n_heads, self.S, self.S), dtype=np.float32)

    def _recycle(self, *bufs: np.ndarray) -> None:
        """Hand back (H, S, S) buffers (or (H*S, S) views of them) that nothing else references.

        At most n_layers + 2 are kept: one micro-step holds the forward's probabilities of every
        layer, plus dP and dS of the layer in its backward.
        """
        for b in bufs:
            if len(self._spare) < self.cfg.n_layers + 2:
                self._spare.append(b.reshape(self.cfg.n_heads, self.S, self.S))

    def _probs(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Causal softmax probabilities (H, S_query, S_key) from roped q and tiled k [Q, S]."""
        scores = self._scores(self._heads(q), self._heads(k), self._square())  # (H, S, S)
        return native.causal_softmax(scores, self.scale, threads=self.threads)  # masked, in place

    # The causal products skip the key/query blocks the mask zeroes: queries [t0, t1) see keys
    # [0, t1) only (S = 512: 4 blocks, 37.5% fewer attention flops). Every product sums the same
    # nonzero terms (the skipped ones are exact zeros; BLAS may round a block's sum differently,
    # ~1e-7 relative), and one block (S below 2 * _BLOCK, e.g. the tiny preset's 64) is the plain
    # product.

    def _blocks(self) -> list[tuple[int, int]]:
        S = self.S
        n = S // _BLOCK if S % _BLOCK == 0 and S >= 2 * _BLOCK else 1
        return [(S * i // n, S * (i + 1) // n) for i in range(n)]

    def _scores(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (H, S, S)[h, t, u] = sum_d a[h, d, t] b[h, d, u] for u < the end of t's block
        (the rest is left as it was: the causal softmax and its backward never read it)."""
        for h in range(self.cfg.n_heads):  # 2-D products go straight to BLAS (stacked ones do not)
            for t0, t1 in self._blocks():
                np.matmul(a[h][:, t0:t1].T, b[h][:, :t1], out=out[h, t0:t1, :t1])
        return out

    def _by_query(self, a: np.ndarray, p: np.ndarray) -> np.ndarray:
        """(H, hd, S)[h, d, t] = sum_u a[h, d, u] p[h, t, u], p causal (zero for u > t)."""
        out = np.empty(a.shape, dtype=np.float32)  # (H, hd, S)
        for h in range(self.cfg.n_heads):
            for t0, t1 in self._blocks():
                np.matmul(a[h][:, :t1], p[h, t0:t1, :t1].T, out=out[h][:, t0:t1])
        return out

    def _by_key(self, a: np.ndarray, p: np.ndarray) -> np.ndarray:
        """(H, hd, S)[h, d, u] = sum_t a[h, d, t] p[h, t, u], p causal (zero for t < u)."""
        out = np.empty(a.shape, dtype=np.float32)  # (H, hd, S)
        for h in range(self.cfg.n_heads):
            for u0, u1 in self._blocks():
                np.matmul(a[h][:, u0:], p[h, u0:, u0:u1], out=out[h][:, u0:u1])
        return out

    # ---- forward ----------------------------------------------------------------------------

    def sdpa_fwd(self, layer: int, xnorm: np.ndarray):
        cfg = self.cfg
        Q, KV = cfg.q_dim, cfg.kv_dim
        qkv = self.params.block(layer, "wq", "wv") @ xnorm  # [Q + 2KV, S], one sgemm
        self._fwd(layer, ("wq", "wk", "wv"), xnorm, qkv)
        q, k, v = qkv[:Q], qkv[Q : Q + KV], qkv[Q + KV :]  # [Q, S], [KV, S], [KV, S] row views
        pre = ()
        if cfg.qk_norm:  # Qwen3: RMSNorm of every q and k head before RoPE
            lp = self.params.layers[layer]
            pre = (q.copy(), k.copy())  # [Q, S], [KV, S] for the backward
            head_rmsnorm_fwd(q, lp.q_norm, cfg.n_heads, cfg.norm_eps)
            head_rmsnorm_fwd(k, lp.k_norm, cfg.n_kv_heads, cfg.norm_eps)
        native.rope_fwd(q, self.cos, self.sin, cfg.n_heads)
        native.rope_fwd(k, self.cos, self.sin, cfg.n_kv_heads)
        k_tiled = tile_kv(k, cfg)
        p = self._probs(q, k_tiled)  # (H, S, S)
        stale = self._probs_cache.get(layer)  # a forward no backward consumed (evaluation)
        if stale is not None:
            self._recycle(stale[2])
        self._probs_cache[layer] = (q, k_tiled, p)
        vh = self._heads(tile_kv(v, cfg))  # (H, hd, S)
        attn = self._by_query(vh, p)  # attn[d,t] = sum_t' v[d,t'] P[t,t']
        return (attn.reshape(cfg.q_dim, self.S), q, k, v, *pre)

    def wo_fwd(self, layer: int, attn: np.ndarray) -> np.ndarray:
        return self._fwd(layer, ("wo",), attn, self.params.layers[layer].wo @ attn)  # [D, S]

    def ffn_fused(self, layer: int, x2norm: np.ndarray):
        F = self.cfg.hidden_dim
        h13 = self.params.block(layer, "w1", "w3") @ x2norm  # [2F, S], one sgemm
        self._fwd(layer, ("w1", "w3"), x2norm, h13)
        h1, h3 = h13[:F], h13[F:]  # [F, S] each
        gate = native.swiglu_fwd(h1, h3, threads=self.threads)  # [F, S]
        ffn = self._fwd(layer, ("w2",), gate, self.params.layers[layer].w2 @ gate)  # [D, S]
        return ffn, h1, h3, gate

    # ---- backward ---------------------------------------------------------------------------

    def ffn_bwd_w2t(self, layer: int, dffn: np.ndarray) -> np.ndarray:
        return self._bwd(layer, ("w2",), dffn, self.params.layers[layer].w2.T @ dffn)  # [F, S]

    def ffn_bwd_w13t(self, layer: int, dh1: np.ndarray, dh3: np.ndarray) -> np.ndarray:
        w13 = self.params.block(layer, "w1", "w3")  # [2F, D]
        dh13 = joined_rows(dh1, dh3)  # [2F, S]
        return self._bwd(layer, ("w1", "w3"), dh13, w13.T @ dh13)  # W1^T dh1 + W3^T dh3 [D, S]

    def wot_bwd(self, layer: int, dx2: np.ndarray) -> np.ndarray:
        return self._bwd(layer, ("wo",), dx2, self.params.layers[layer].wo.T @ dx2)  # [Q, S]

    def sdpa_bwd1(
        self, layer: int, q: np.ndarray, k_tiled: np.ndarray, v_tiled: np.ndarray, dattn: np.ndarray
    ):
        cfg, S = self.cfg, self.S
        hit = self._probs_cache.pop(layer, None)
        same_k = hit is not None and (hit[1] is k_tiled or np.array_equal(hit[1], k_tiled))
        if hit is not None and hit[0] is q and same_k:
            p = hit[2]  # (H, S, S) from this layer's forward
        else:
            p = self._probs(q, k_tiled)  # recomputed, as the ANE kernel does
        dah, vh = self._heads(dattn), self._heads(v_tiled)  # (H, hd, S)
        dv = self._by_key(dah, p)  # dv[d,t'] = sum_t dattn[d,t] P[t,t'] -> (H, hd, S)
        dp = self._scores(dah, vh, self._square())  # dP[t,t'] = sum_d dattn[d,t] v[d,t'] (H,S,S)
        H = cfg.n_heads
        return dv.reshape(cfg.q_dim, S), p.reshape(H * S, S), dp.reshape(H * S, S)

    def sdpa_bwd2(
        self, layer: int, p: np.ndarray, dp: np.ndarray, q: np.ndarray, k_tiled: np.ndarray
    ):
        cfg, S, H = self.cfg, self.S, self.cfg.n_heads
        p3, dp3 = p.reshape(H, S, S), dp.reshape(H, S, S)  # (H, S_query, S_key)
        ds = self._square()  # dL/dscores_raw (H, S, S)
        native.causal_softmax_bwd(p3, dp3, self.scale, out=ds, threads=self.threads)
        dq = self._by_query(self._heads(k_tiled), ds)  # dq[d,t] = sum_t' dS[t,t'] k[d,t']
        dk = self._by_key(self._heads(q), ds)  # dk[d,t'] = sum_t dS[t,t'] q[d,t]
        self._recycle(ds)  # internal to this call
        return dq.reshape(cfg.q_dim, S), dk.reshape(cfg.q_dim, S)

    def sdpa_bwd(
        self, layer: int, q: np.ndarray, k_tiled: np.ndarray, v_tiled: np.ndarray, dattn: np.ndarray
    ):
        """sdpa_bwd1 then sdpa_bwd2 -> (dq, dk_full, dv_full), all [Q, S]."""
        dv, p, dp = self.sdpa_bwd1(layer, q, k_tiled, v_tiled, dattn)
        dq, dk = self.sdpa_bwd2(layer, p, dp, q, k_tiled)
        self._recycle(p, dp)  # P (popped from the cache, or recomputed) and dP end here
        return dq, dk, dv

    def q_bwd(self, layer: int, dq: np.ndarray) -> np.ndarray:
        return self._bwd(layer, ("wq",), dq, self.params.layers[layer].wq.T @ dq)  # [D, S]

    def kv_bwd(self, layer: int, dk: np.ndarray, dv: np.ndarray) -> np.ndarray:
        wkv = self.params.block(layer, "wk", "wv")  # [2KV, D]
        dkv = joined_rows(dk, dv)  # [2KV, S]
        return self._bwd(layer, ("wk", "wv"), dkv, wkv.T @ dkv)  # Wk^T dk + Wv^T dv [D, S]
