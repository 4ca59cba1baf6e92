"""One training micro-step (forward + backward) of a llama2.c model over a Kernels object."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from anetrain import native
from anetrain.config import ModelConfig, default_threads
from anetrain.params import Params
from anetrain.rope import model_rope_tables

# Data flow (channel-first [C, S] everywhere, S = one sequence; see ARCHITECTURE.md):
#   x = embed[tokens]^T                                             [D, S]
#   per layer: xn = RMSNorm(x)        -> sdpa_fwd -> wo_fwd -> x2 = x + o      (CPU, fp32 residual)
#              x2n = RMSNorm(x2)      -> ffn_fused            -> x  = x2 + ffn (CPU, fp32 residual)
#   logits = Wcls RMSNorm(x)  [V, S]; loss = mean CE; backward mirrors it with the seven backward
#   kernels, and every dW = dY X^T is an fp32 sgemm on the CPU.
# Exact Llama-2 math: no residual scaling, so trained models stay byte-compatible with llama2.c.


@runtime_checkable
class Kernels(Protocol):
    """The ten training kernels of one backend, as micro_step and train.py use them.

    Implemented by backends/cpu.py CpuKernels (fp32 numpy) and backends/mil.py MilKernels (MIL
    programs on the simulator or the ANE). Activations are channel-first fp32 [C, S] in and out
    (S = seq_len, D = dim, Q = q_dim, KV = kv_dim, F = hidden_dim, H = n_heads); weights are read
    from the fp32 masters the kernels were built over. Every call returns fresh arrays (micro_step's
    dW jobs hold them after the next call).
    """

    threads: int  # threads of the host's elementwise C ops (cross-entropy, SwiGLU backward)
    fp16: bool  # the kernels compute in fp16: train.py scales the loss dynamically
    overlap_dw: bool  # run the dW sgemms on DwPool worker threads, behind kernel evaluations

    def sdpa_fwd(self, layer: int, xnorm: np.ndarray) -> tuple[np.ndarray, ...]:
        """xnorm [D, S] -> attn [Q, S], q_rope [Q, S], k_rope [KV, S], v [KV, S], and with
        cfg.qk_norm (Qwen3) also q_pre [Q, S], k_pre [KV, S]: the projections before the norm."""
        ...

    def wo_fwd(self, layer: int, attn: np.ndarray) -> np.ndarray:
        """attn [Q, S] -> o [D, S] = Wo attn."""
        ...

    def ffn_fused(self, layer: int, x2norm: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """x2norm [D, S] -> ffn [D, S] = W2 gate, h1 [F, S], h3 [F, S], gate [F, S]."""
        ...

    def ffn_bwd_w2t(self, layer: int, dffn: np.ndarray) -> np.ndarray:
        """dffn [D, S] -> dgate [F, S] = W2^T dffn."""
        ...

    def ffn_bwd_w13t(self, layer: int, dh1: np.ndarray, dh3: np.ndarray) -> np.ndarray:
        """dh1 [F, S], dh3 [F, S] -> dx [D, S] = W1^T dh1 + W3^T dh3."""
        ...

    def wot_bwd(self, layer: int, dx2: np.ndarray) -> np.ndarray:
        """dx2 [D, S] -> dattn [Q, S] = Wo^T dx2."""
        ...

    def sdpa_bwd(self, layer: int, q: np.ndarray, k_tiled: np.ndarray, v_tiled: np.ndarray,
                 dattn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """q_rope, k_tiled, v_tiled, dattn, all [Q, S] -> dq, dk_full, dv_full, all [Q, S]
        (gradients w.r.t. the roped q and k; one head per query head, see tile_kv)."""
        ...

    def q_bwd(self, layer: int, dq: np.ndarray) -> np.ndarray:
        """dq [Q, S] -> dx [D, S] = Wq^T dq."""
        ...

    def kv_bwd(self, layer: int, dk: np.ndarray, dv: np.ndarray) -> np.ndarray:
        """dk [KV, S], dv [KV, S] -> dx [D, S] = Wk^T dk + Wv^T dv."""
        ...

    def sync(self) -> None:
        """Before an optimizer step: wait until nothing reads the fp32 masters any more."""
        ...

    def update_weights(self, changed: Collection[str] | None = None) -> None:
        """After an optimizer step: take up the new fp32 masters (`changed`: only these tensors,
        Params names such as "layers.3.wq", changed; None: any may have)."""
        ...

    def close(self) -> None:
        """Free what the kernels hold (compiled programs, surfaces, helper threads)."""
        ...

    def stats(self) -> dict[str, str]:
        """Lines for train.py's efficiency report (empty: nothing to report)."""
        ...

    def timers(self) -> dict[str, float]:
        """Cumulative seconds by phase since the kernels were built, for phases.StepClock:
        "compile", and on sim/ane "eval" (kernel evaluations) and "stage" (activations packed
        and unpacked, fp16 surface copies, waits for weight staging); cpu: only "compile" (0)."""
        ...


# Query head h uses kv head h // kv_group (llama2.c's GQA mapping). The attention kernels take
# k and v tiled to one head per query head, and give dk, dv that way; these convert.


def tile_kv(x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """[KV, S] -> [Q, S]: repeat each kv head kv_group times, consecutively (h // kv_group)."""
    if cfg.kv_group == 1:
        return x
    hd, S = cfg.head_dim, x.shape[1]
    return np.repeat(x.reshape(cfg.n_kv_heads, 1, hd, S), cfg.kv_group, axis=1).reshape(
        cfg.q_dim, S
    )


def reduce_kv(x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """[Q, S] -> [KV, S]: sum the gradients of the query heads that share a kv head."""
    if cfg.kv_group == 1:
        return x
    hd, S = cfg.head_dim, x.shape[1]
    return x.reshape(cfg.n_kv_heads, cfg.kv_group, hd, S).sum(axis=1).reshape(cfg.kv_dim, S)


@functools.lru_cache(maxsize=8)
def rope_for(cfg: ModelConfig, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """rope.model_rope_tables(cfg, seq_len), computed once and read-only: cos and sin, fp32
    [seq_len, head_dim // 2] each (RoPE' of the backward; the kernels rope the forward)."""
    cos, sin = model_rope_tables(cfg, seq_len)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


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
    q_pre: np.ndarray | None = None  # [Q, S] Wq xn before Qwen3's q norm (qk_norm only)
    k_pre: np.ndarray | None = None  # [KV, S] Wk xn before the k norm


def head_rmsnorm_fwd(x: np.ndarray, w: np.ndarray, n_heads: int, eps: float) -> np.ndarray:
    """Qwen3's q/k norm, in place: RMSNorm of every head of x [n_heads·hd, S] over its hd rows
    (channel-first: each head is a contiguous row block), weight w [hd] shared by the heads."""
    hd = w.shape[0]
    for h in range(n_heads):
        rows = x[h * hd : (h + 1) * hd]  # [hd, S]
        native.rmsnorm_fwd(rows, w, eps, out=rows)
    return x


def head_rmsnorm_bwd(dy: np.ndarray, x: np.ndarray, w: np.ndarray, dw: np.ndarray,
                     n_heads: int, eps: float) -> np.ndarray:  # fmt: skip
    """Backward of head_rmsnorm_fwd, in place: dy [n_heads·hd, S] at the norm's output -> at its
    input x (the pre-norm rows); dw [hd] accumulates every head's weight gradient."""
    hd = w.shape[0]
    scratch = np.empty((hd, x.shape[1]), dtype=np.float32)  # the forward's output, unused
    rrms = np.empty(x.shape[1], dtype=np.float32)  # [S]
    for h in range(n_heads):
        rows = slice(h * hd, (h + 1) * hd)
        native.rmsnorm_fwd(x[rows], w, eps, out=scratch, rrms=rrms)  # recomputed, not kept
        native.rmsnorm_bwd(dy[rows], x[rows], w, rrms, dw, out=dy[rows])
    return dy


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
    """Worker threads for micro_step's dW sgemms, so they run behind kernel evaluations.

    `workers` threads (0 = one per core), each `nice` steps below normal priority (Linux; 10
    keeps a share under outside load, unlike SCHED_IDLE). numpy releases the GIL inside BLAS
    (and cffi inside our C), so the workers accumulate weight gradients while the main thread
    evaluates kernels and does the dependent host work.

    Jobs are keyed by the gradient buffer they write. A job starts only after every earlier job
    on its key, so gradients accumulate in micro-step order even when a micro-step's jobs are
    still running while the next micro-step starts; jobs on different keys run in any order and
    in parallel. (Waiting inside a worker cannot deadlock: the queue is FIFO and a job only
    waits on jobs submitted before it, which workers have already taken.) Large jobs are split
    into one row block per worker. `wait` blocks until all jobs are done and re-raises the
    first worker error.
    """

    def __init__(self, workers: int = 0, nice: int = 10) -> None:
        self.workers = workers or default_threads()
        super().__init__(self.workers, "anetrain-dw", _lower_priority, (nice,))
        self._jobs: list[Future] = []  # since the last wait
        self._tail: dict[object, list[Future]] = {}  # key -> its most recent jobs
        self.wait_seconds = 0.0  # the caller's time in wait(): dW work left on the critical path

    def add(self, key: object, parts: list[tuple]) -> None:
        """Queue `parts` (each (fn, *args), run in parallel) after all earlier jobs on `key`."""
        deps = self._tail.get(key, [])
        futs = [self.submit(_after, deps, *part) for part in parts]
        self._tail[key] = futs
        self._jobs += futs

    def matmul(self, key: object, g: np.ndarray, a: np.ndarray, b: np.ndarray,
               accumulate: bool) -> None:  # fmt: skip
        """g [R, C] (+)= a [R, K] @ b [K, C], split into row blocks when large."""
        R = g.shape[0]
        n = self.workers if g.size > _SPLIT_ELEMS and R >= 2 * self.workers else 1
        bounds = [R * i // n for i in range(n + 1)]
        self.add(key, [(_matmul_into, g[lo:hi], a[lo:hi], b, accumulate)
                       for lo, hi in zip(bounds, bounds[1:])])  # fmt: skip

    def wait(self) -> None:
        t = time.perf_counter()
        jobs, self._jobs, self._tail = self._jobs, [], {}
        try:
            for j in jobs:
                j.result()
        finally:
            self.wait_seconds += time.perf_counter() - t


def _after(deps: list[Future], fn, *args) -> None:
    for d in deps:
        d.result()
    fn(*args)


class _Inline:
    """DwPool's job interface, run at once on the caller's thread (the cpu backend)."""

    def add(self, key: object, parts: list[tuple]) -> None:
        for fn, *args in parts:
            fn(*args)

    def matmul(self, key: object, g: np.ndarray, a: np.ndarray, b: np.ndarray,
               accumulate: bool) -> None:  # fmt: skip
        _matmul_into(g, a, b, accumulate)

    def wait(self) -> None:
        pass


class DwJobs(Protocol):
    """What Gradients queue their sgemms on: a DwPool, or _Inline (run at once)."""

    def add(self, key: object, parts: list[tuple]) -> None: ...

    def matmul(self, key: object, g: np.ndarray, a: np.ndarray, b: np.ndarray,
               accumulate: bool) -> None: ...  # fmt: skip


@runtime_checkable
class Gradients(Protocol):
    """Where micro_step's weight gradients go (all scaled by the loss scale).

    FullGrads: every parameter's gradient, into a Params buffer (full training). lora.LoraGrads:
    only the adapters' dA, dB, from the same dY and X (a LoRA run: frozen weights get none).
    """

    flat: np.ndarray  # every gradient it holds, one fp32 buffer (what the ranks all-reduce)
    lowest: int  # the lowest layer with a weight that trains: the backward stops there
    embedding_trains: bool  # the backward runs on through layer `lowest`'s input to it

    def start(self) -> None:
        """Before the first micro-step of an optimizer step (accumulate=False)."""
        ...

    def matrix(self, dw: DwJobs, layer: int | None, names: tuple[str, ...], dy: np.ndarray,
               x: np.ndarray, accumulate: bool) -> None:  # fmt: skip
        """The weight rows `names` of `layer` stacked (e.g. ("wq", "wk", "wv"); the classifier
        ("wcls",) with layer None) have gradient dy [rows, S] @ x [in, S]^T."""
        ...

    def vector(self, layer: int | None, name: str) -> np.ndarray:
        """The buffer the backward adds a norm weight's gradient into (layer None: rms_final)."""
        ...

    def embedding(self, dw: DwJobs, dy: np.ndarray, tokens: np.ndarray) -> None:
        """dy [D, S] at the embedding output of tokens [S]."""
        ...


class FullGrads:
    """Gradients of every parameter, into a Params buffer of the model's layout."""

    lowest, embedding_trains = 0, True  # every parameter trains

    def __init__(self, grads: Params) -> None:
        self.grads = grads
        self.flat = grads.flat  # [n_params], what the ranks all-reduce

    def start(self) -> None:  # the C backward of RMSNorm and the embedding scatter only add
        g = self.grads
        g.flat[g.n_decay :] = 0.0
        if not g.cfg.shared_classifier:
            g.embed[...] = 0.0

    def matrix(self, dw: DwJobs, layer: int | None, names: tuple[str, ...], dy: np.ndarray,
               x: np.ndarray, accumulate: bool) -> None:  # fmt: skip
        g = self.grads.wcls if layer is None else self.grads.block(layer, names[0], names[-1])
        dw.matmul("wcls" if layer is None else (layer, names), g, dy, x.T, accumulate)

    def vector(self, layer: int | None, name: str) -> np.ndarray:
        return self.grads.tensors[name if layer is None else f"layers.{layer}.{name}"]

    def embedding(self, dw: DwJobs, dy: np.ndarray, tokens: np.ndarray) -> None:
        # after the classifier dW when the table is tied (same buffer, same key)
        key = "wcls" if self.grads.cfg.shared_classifier else "embed"
        dw.add(key, [(native.embed_bwd, self.grads.embed, dy, tokens)])


def forward(params: Params, kern: Kernels, tokens: np.ndarray, keep: bool = True):
    """Forward pass to the final hidden state. Returns (x_pre_final [D,S], acts list or None)."""
    cfg = params.cfg
    x = native.embed_fwd(params.embed, tokens)  # [D, S]
    acts: list[LayerActs] = []
    for layer, lp in enumerate(params.layers):
        xn, r_att = native.rmsnorm_fwd(x, lp.rms_att, cfg.norm_eps)  # [D, S], [S]
        attn, q, k, v, *pre = kern.sdpa_fwd(layer, xn)  # pre: q, k before the qk norm
        x2 = x + kern.wo_fwd(layer, attn)  # [D, S]
        x2n, r_ffn = native.rmsnorm_fwd(x2, lp.rms_ffn, cfg.norm_eps)
        ffn, h1, h3, gate = kern.ffn_fused(layer, x2n)
        if keep:
            acts.append(LayerActs(x, xn, r_att, q, k, v, attn, x2, x2n, r_ffn, h1, h3, gate,
                                  *pre))  # fmt: skip
        x = x2 + ffn
    return x, (acts if keep else None)


def loss_only(params: Params, kern: Kernels, tokens: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of one sequence over its counted targets, no backward (evaluation)."""
    x, _ = forward(params, kern, tokens, keep=False)
    xf, _ = native.rmsnorm_fwd(x, params.rms_final, params.cfg.norm_eps)
    logits = params.wcls @ xf  # [V, S]
    loss, _ = native.cross_entropy(logits, targets, out=logits)
    return loss


def evaluate(params: Params, kern: Kernels, windows: Iterable[tuple[np.ndarray, np.ndarray]]
             ) -> tuple[float, int]:  # fmt: skip
    """(mean cross-entropy over every counted target of the windows, their number): each window
    (x, y int32 [S]) weighs by its targets that are not native.IGNORE. NaN when none counts."""
    total, counted = 0.0, 0
    for x, y in windows:
        n = native.counted_targets(y)
        if n:
            total += loss_only(params, kern, x, y) * n
            counted += n
    return (total / counted if counted else float("nan")), counted


def _layer_bwd(params: Params, grads: Gradients, kern: Kernels, dw: DwJobs, layer: int,
               a: LayerActs, dy: np.ndarray, accumulate: bool,
               rope: tuple[np.ndarray, np.ndarray], need_dx: bool = True
               ) -> np.ndarray | None:  # fmt: skip
    """Backward of one layer: dy [D, S] at its output -> at its input (None when not need_dx:
    nothing below trains); queues its dW jobs."""
    cfg, lp = params.cfg, params.layers[layer]
    # FFN branch: x_out = x2 + W2 (silu(W1 x2n) * W3 x2n)
    dgate = kern.ffn_bwd_w2t(layer, dy)  # [F, S]
    grads.matrix(dw, layer, ("w2",), dy, a.gate, accumulate)
    F = cfg.hidden_dim
    dh13 = np.empty((2 * F, dy.shape[1]), dtype=np.float32)  # [dh1; dh3] [2F, S]
    dh1, dh3 = native.swiglu_bwd(
        dgate, a.h1, a.h3, dh1=dh13[:F], dh3=dh13[F:], threads=kern.threads
    )
    grads.matrix(dw, layer, ("w1", "w3"), dh13, a.x2n, accumulate)
    dx2n = kern.ffn_bwd_w13t(layer, dh1, dh3)  # [D, S]
    dx2 = native.rmsnorm_bwd(dx2n, a.x2, lp.rms_ffn, a.r_ffn, grads.vector(layer, "rms_ffn"),
                             out=dx2n)  # fmt: skip
    dx2 += dy
    # attention branch: x2 = x + Wo attn(RoPE(Wq xn), RoPE(Wk xn), Wv xn)
    dattn = kern.wot_bwd(layer, dx2)  # [Q, S]
    grads.matrix(dw, layer, ("wo",), dx2, a.attn, accumulate)
    k_t, v_t = tile_kv(a.k, cfg), tile_kv(a.v, cfg)  # [Q, S]
    dq, dk_full, dv_full = kern.sdpa_bwd(layer, a.q, k_t, v_t, dattn)
    Q, KV = cfg.q_dim, cfg.kv_dim
    dqkv = np.empty((Q + 2 * KV, dq.shape[1]), dtype=np.float32)  # [dq; dk; dv]
    dqkv[:Q] = dq
    dqkv[Q : Q + KV] = reduce_kv(dk_full, cfg)  # [KV, S] summed over each kv group
    dqkv[Q + KV :] = reduce_kv(dv_full, cfg)
    dq, dk, dv = dqkv[:Q], dqkv[Q : Q + KV], dqkv[Q + KV :]  # row views
    native.rope_bwd(dq, *rope, cfg.n_heads)
    native.rope_bwd(dk, *rope, cfg.n_kv_heads)
    if cfg.qk_norm:  # through Qwen3's q/k norm to the projections
        head_rmsnorm_bwd(dq, a.q_pre, lp.q_norm, grads.vector(layer, "q_norm"), cfg.n_heads,
                         cfg.norm_eps)  # fmt: skip
        head_rmsnorm_bwd(dk, a.k_pre, lp.k_norm, grads.vector(layer, "k_norm"), cfg.n_kv_heads,
                         cfg.norm_eps)  # fmt: skip
    grads.matrix(dw, layer, ("wq", "wk", "wv"), dqkv, a.xn, accumulate)
    if not need_dx:
        return None
    dxn = kern.q_bwd(layer, dq)  # [D, S]
    dxn += kern.kv_bwd(layer, dk, dv)
    dy = native.rmsnorm_bwd(dxn, a.x, lp.rms_att, a.r_att, grads.vector(layer, "rms_att"),
                            out=dxn)  # fmt: skip
    dy += dx2
    return dy


def micro_step(
    params: Params,
    grads: Params | Gradients,
    kern: Kernels,
    tokens: np.ndarray,
    targets: np.ndarray,
    accumulate: bool,
    loss_scale: float = 1.0,
    dw_pool: DwPool | None = None,
    sync: bool = True,
    times: dict[str, float] | None = None,
) -> float:
    """Forward + backward of one sequence; adds loss_scale * dLoss/dparams into `grads` (a
    Gradients, or a Params buffer: FullGrads over it).

    tokens, targets: int32 [S]. accumulate=False overwrites `grads` (first micro-step of an
    optimizer step), True adds to them. dw_pool: a DwPool to overlap the dW sgemms with kernel
    evaluations (ANE/sim backends), or None to run them inline. sync=False returns with this
    micro-step's dW jobs still running, so that they also overlap the next micro-step of the
    same optimizer step; `grads` is then complete only after dw_pool.wait() (or a later
    micro_step with sync=True). The jobs hold their inputs, so the kernels must return fresh
    arrays (both kernel sets do). times: adds this micro-step's wall seconds to its "forward"
    (through the loss) and "backward" keys. Targets of native.IGNORE carry no loss. Returns the
    (unscaled) mean cross-entropy over the counted targets.
    """
    t0 = time.perf_counter()
    cfg = params.cfg
    dw: DwJobs = dw_pool if dw_pool is not None else _Inline()
    if isinstance(grads, Params):
        grads = FullGrads(grads)
    if not accumulate:
        grads.start()

    # ---- forward
    x, acts = forward(params, kern, tokens)
    xf, r_fin = native.rmsnorm_fwd(x, params.rms_final, cfg.norm_eps)  # [D, S]
    logits = params.wcls @ xf  # [V, S]
    loss, dlogits = native.cross_entropy(
        logits, targets, scale=loss_scale, out=logits, threads=kern.threads
    )
    t1 = time.perf_counter()

    # ---- classifier and final norm (the tied classifier gradient lands in grads.embed first)
    grads.matrix(dw, None, ("wcls",), dlogits, xf, accumulate)  # [V, D]
    dxf = params.wcls.T @ dlogits  # [D, S]
    del logits, dlogits
    dy = native.rmsnorm_bwd(dxf, x, params.rms_final, r_fin, grads.vector(None, "rms_final"),
                            out=dxf)  # fmt: skip

    # ---- layers, last to first, down to the lowest one that trains; dy is dLoss/d(residual
    # stream) at the layer output
    rope = rope_for(cfg, len(tokens))  # cos, sin [S, hd/2] each
    for layer in reversed(range(grads.lowest, cfg.n_layers)):
        need_dx = layer > grads.lowest or grads.embedding_trains
        dy = _layer_bwd(params, grads, kern, dw, layer, acts[layer], dy, accumulate, rope,
                        need_dx)  # fmt: skip
        acts[layer] = None  # free this layer's activations early (peak memory)
    if grads.embedding_trains:
        grads.embedding(dw, dy, tokens)
    if sync:
        dw.wait()
    if times is not None:
        times["forward"] += t1 - t0
        times["backward"] += time.perf_counter() - t1
    return loss
