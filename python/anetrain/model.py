"""One training micro-step (forward + backward) of a llama2.c model over a Kernels object."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from anetrain import native
from anetrain.kernels_cpu import reduce_kv, tile_kv
from anetrain.params import Params

# Data flow (channel-first [C, S] everywhere, S = one sequence; see ARCHITECTURE.md):
#   x = embed[tokens]^T                                             [D, S]
#   per layer: xn = RMSNorm(x)        -> sdpa_fwd -> wo_fwd -> x2 = x + o      (CPU, fp32 residual)
#              x2n = RMSNorm(x2)      -> ffn_fused            -> x  = x2 + ffn (CPU, fp32 residual)
#   logits = Wcls RMSNorm(x)  [V, S]; loss = mean CE; backward mirrors it with the seven backward
#   kernels, and every dW = dY X^T is an fp32 sgemm on the CPU.
# Exact Llama-2 math: no residual scaling, so trained models stay byte-compatible with llama2.c.


@dataclass
class LayerActs:
    """What the backward needs from one layer's forward (all fp32, channel-first)."""

    x: np.ndarray  # [D, S] layer input (residual stream)
    xn: np.ndarray  # [D, S] RMSNorm_att(x)
    r_att: np.ndarray  # [S] reciprocal RMS of x
    q: np.ndarray  # [Q, S] roped queries
    k: np.ndarray  # [KV, S] roped keys
    v: np.ndarray  # [KV, S] values
    attn: np.ndarray  # [Q, S] attention output before Wo
    x2: np.ndarray  # [D, S] residual stream after attention
    x2n: np.ndarray  # [D, S] RMSNorm_ffn(x2)
    r_ffn: np.ndarray  # [S]
    h1: np.ndarray  # [F, S] W1 x2n
    h3: np.ndarray  # [F, S] W3 x2n
    gate: np.ndarray  # [F, S] silu(h1) * h3


def _matmul_into(g: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool) -> None:
    """g (+)= a @ b (dW = dY X^T with b a transposed view: BLAS reads it in place, no copy)."""
    if accumulate:
        g += a @ b
    else:
        np.matmul(a, b, out=g)


# dW jobs larger than this many gradient elements are split into row blocks, so that every dW
# worker can take a share of the classifier gradient ([V, D] = 24.6M elements for stories110m).
_SPLIT_ELEMS = 1 << 22


def _lower_priority(nice: int) -> None:
    """Thread initializer: run this worker thread `nice` steps below normal priority (Linux only).

    The main thread drives the kernel chain and should not wait for a core behind the
    off-critical-path sgemms, which then take whatever CPU is left. On Linux,
    setpriority(PRIO_PROCESS, tid) affects just that thread. macOS has no per-thread nice, and a
    lower QoS class would move the thread to the efficiency cores; Apple silicon has enough
    performance cores that the main thread is not starved, so nothing is done there.
    """
    if nice and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass  # not permitted: run at normal priority


class DwPool(ThreadPoolExecutor):
    """Executor for micro_step's dW sgemms: `workers` threads (0 = one per core), each `nice`
    steps below normal priority (Linux; 10 keeps a share under outside load, unlike SCHED_IDLE)."""

    def __init__(self, workers: int = 0, nice: int = 10) -> None:
        self.workers = workers or max(1, os.cpu_count() or 1)
        super().__init__(self.workers, "anetrain-dw", _lower_priority, (nice,))


class _DwQueue:
    """Runs the dW sgemms inline, or on worker threads so they overlap kernel evaluations.

    numpy releases the GIL inside BLAS, so while an ANE (or simulator) kernel evaluates, the
    workers accumulate weight gradients. Each job writes its own gradient rows (one micro-step
    writes each gradient buffer once), so jobs may run in any order and in parallel; large ones
    are split into row blocks. `wait` re-raises a worker error.
    """

    def __init__(self, pool):
        self.pool, self.jobs = pool, []
        self.parts = getattr(pool, "workers", 1)  # row blocks per large job

    def add(self, g: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool) -> None:
        """g [R, C] (+)= a [R, K] @ b [K, C]."""
        if self.pool is None:
            _matmul_into(g, a, b, accumulate)
            return
        R = g.shape[0]
        n = self.parts if g.size > _SPLIT_ELEMS and R >= 2 * self.parts else 1
        bounds = [R * i // n for i in range(n + 1)]
        for lo, hi in zip(bounds, bounds[1:]):  # row blocks: g[lo:hi] (+)= a[lo:hi] @ b
            self.jobs.append(self.pool.submit(_matmul_into, g[lo:hi], a[lo:hi], b, accumulate))

    def wait(self) -> None:
        jobs, self.jobs = self.jobs, []
        for j in jobs:
            j.result()


def forward(params: Params, kern, tokens: np.ndarray, keep: bool = True):
    """Forward pass to the final hidden state. Returns (x_pre_final [D,S], acts list or None)."""
    cfg = params.cfg
    x = native.embed_fwd(params.embed, tokens)  # [D, S]
    acts: list[LayerActs] = []
    for layer, lp in enumerate(params.layers):
        xn, r_att = native.rmsnorm_fwd(x, lp.rms_att, cfg.norm_eps)  # [D, S], [S]
        attn, q, k, v = kern.sdpa_fwd(layer, xn)
        x2 = x + kern.wo_fwd(layer, attn)  # [D, S]
        x2n, r_ffn = native.rmsnorm_fwd(x2, lp.rms_ffn, cfg.norm_eps)
        ffn, h1, h3, gate = kern.ffn_fused(layer, x2n)
        if keep:
            acts.append(LayerActs(x, xn, r_att, q, k, v, attn, x2, x2n, r_ffn, h1, h3, gate))
        x = x2 + ffn
    return x, (acts if keep else None)


def loss_only(params: Params, kern, tokens: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of one sequence, no backward (evaluation)."""
    x, _ = forward(params, kern, tokens, keep=False)
    xf, _ = native.rmsnorm_fwd(x, params.rms_final, params.cfg.norm_eps)
    logits = params.wcls @ xf  # [V, S]
    loss, _ = native.cross_entropy(logits, targets, out=logits)
    return loss


def micro_step(
    params: Params,
    grads: Params,
    kern,
    tokens: np.ndarray,
    targets: np.ndarray,
    accumulate: bool,
    loss_scale: float = 1.0,
    dw_pool=None,
) -> float:
    """Forward + backward of one sequence; adds loss_scale * dLoss/dparams into `grads`.

    tokens, targets: int32 [S]. accumulate=False overwrites `grads` (first micro-step of an
    optimizer step), True adds to them. dw_pool: an executor (a DwPool) to overlap the dW
    sgemms with kernel evaluations (ANE/sim backends), or None to run them inline. Returns the
    (unscaled) mean cross-entropy loss.
    """
    cfg = params.cfg
    dw = _DwQueue(dw_pool)
    if not accumulate:  # the C backward of RMSNorm and the embedding scatter only add
        grads.flat[grads.n_decay :] = 0.0
        if not cfg.shared_classifier:
            grads.embed[...] = 0.0

    # ---- forward
    x, acts = forward(params, kern, tokens)
    xf, r_fin = native.rmsnorm_fwd(x, params.rms_final, cfg.norm_eps)  # [D, S]
    logits = params.wcls @ xf  # [V, S]
    loss, dlogits = native.cross_entropy(
        logits, targets, scale=loss_scale, out=logits, threads=getattr(kern, "threads", 1)
    )

    # ---- classifier and final norm (the tied classifier gradient lands in grads.embed first)
    dw.add(grads.wcls, dlogits, xf.T, accumulate)  # [V, D]
    dxf = params.wcls.T @ dlogits  # [D, S]
    del logits, dlogits
    dy = native.rmsnorm_bwd(dxf, x, params.rms_final, r_fin, grads.rms_final, out=dxf)

    # ---- layers, last to first; dy is dLoss/d(residual stream) at the layer output
    for layer in reversed(range(cfg.n_layers)):
        a, lp, gp = acts[layer], params.layers[layer], grads.layers[layer]
        # FFN branch: x_out = x2 + W2 (silu(W1 x2n) * W3 x2n)
        dgate = kern.ffn_bwd_w2t(layer, dy)  # [F, S]
        dw.add(gp.w2, dy, a.gate.T, accumulate)
        F = cfg.hidden_dim
        dh13 = np.empty((2 * F, dy.shape[1]), dtype=np.float32)  # [dh1; dh3] [2F, S]
        dh1, dh3 = native.swiglu_bwd(
            dgate, a.h1, a.h3, dh1=dh13[:F], dh3=dh13[F:], threads=getattr(kern, "threads", 1)
        )
        dw.add(grads.block(layer, "w1", "w3"), dh13, a.x2n.T, accumulate)  # dW1, dW3 at once
        dx2n = kern.ffn_bwd_w13t(layer, dh1, dh3)  # [D, S]
        dx2 = native.rmsnorm_bwd(dx2n, a.x2, lp.rms_ffn, a.r_ffn, gp.rms_ffn, out=dx2n)
        dx2 += dy
        # attention branch: x2 = x + Wo attn(RoPE(Wq xn), RoPE(Wk xn), Wv xn)
        dattn = kern.wot_bwd(layer, dx2)  # [Q, S]
        dw.add(gp.wo, dx2, a.attn.T, accumulate)
        k_t, v_t = tile_kv(a.k, cfg), tile_kv(a.v, cfg)  # [Q, S]
        dq, dk_full, dv_full = kern.sdpa_bwd(layer, a.q, k_t, v_t, dattn)
        Q, KV = cfg.q_dim, cfg.kv_dim
        dqkv = np.empty((Q + 2 * KV, dq.shape[1]), dtype=np.float32)  # [dq; dk; dv]
        dqkv[:Q] = dq
        dqkv[Q : Q + KV] = reduce_kv(dk_full, cfg)  # [KV, S] summed over each kv group
        dqkv[Q + KV :] = reduce_kv(dv_full, cfg)
        dq, dk, dv = dqkv[:Q], dqkv[Q : Q + KV], dqkv[Q + KV :]  # row views
        native.rope_bwd(dq, kern.cos, kern.sin, cfg.n_heads)
        native.rope_bwd(dk, kern.cos, kern.sin, cfg.n_kv_heads)
        dw.add(grads.block(layer, "wq", "wv"), dqkv, a.xn.T, accumulate)  # dWq, dWk, dWv at once
        dxn = kern.q_bwd(layer, dq)  # [D, S]
        dxn += kern.kv_bwd(layer, dk, dv)
        dy = native.rmsnorm_bwd(dxn, a.x, lp.rms_att, a.r_att, gp.rms_att, out=dxn)
        dy += dx2
        acts[layer] = None  # free this layer's activations early (peak memory)

    dw.wait()  # the tied embedding gradient (classifier part) must be complete before the scatter
    native.embed_bwd(grads.embed, dy, tokens)
    return loss
