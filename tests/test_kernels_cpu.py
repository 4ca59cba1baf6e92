"""CpuKernels: recycled (H, S, S) buffers never alias an array a caller still holds; the causal
attention products in blocks give torch autograd's gradients."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_cfg

from anetrain.backends.cpu import CpuKernels
from anetrain.model import micro_step, tile_kv
from anetrain.params import init_params


def _attention_inputs(kern, cfg, layer, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg.dim, cfg.seq_len)).astype(np.float32)  # [D, S]
    attn, q, k, v = kern.sdpa_fwd(layer, x)
    da = rng.standard_normal(attn.shape).astype(np.float32)  # [Q, S]
    return q, tile_kv(k, cfg), tile_kv(v, cfg), da


def test_escaping_probabilities_are_not_recycled(rng):
    cfg = tiny_cfg()
    kern = CpuKernels(cfg, init_params(cfg, rng))
    q, k, v, da = _attention_inputs(kern, cfg, 0, 1)
    dv, p, dp = kern.sdpa_bwd1(0, q, k, v, da)  # P and dP leave the kernels: never reused
    keep = [a.copy() for a in (dv, p, dp)]
    for seed in range(2, 6):  # fused backward passes recycle their own buffers
        q2, k2, v2, da2 = _attention_inputs(kern, cfg, seed % cfg.n_layers, seed)
        kern.sdpa_bwd(seed % cfg.n_layers, q2, k2, v2, da2)
    for a, b in zip((dv, p, dp), keep, strict=True):
        assert (a == b).all()
    assert 0 < len(kern._spare) <= cfg.n_layers + 2


def test_recycled_buffers_give_identical_steps(rng):
    """Dirty spare buffers change nothing: repeated micro-steps give bit-identical gradients."""
    cfg = tiny_cfg()
    params = init_params(cfg, rng)
    kern = CpuKernels(cfg, params)
    toks = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1).astype(np.int32)
    other = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1).astype(np.int32)
    runs = []
    for t in (toks, other, toks):
        g = params.zeros_like()
        loss = micro_step(params, g, kern, t[:-1], t[1:], accumulate=False)
        runs.append((loss, g.flat.copy()))
    fresh = params.zeros_like()
    loss0 = micro_step(params, fresh, CpuKernels(cfg, params), toks[:-1], toks[1:], False)
    assert kern._spare  # the second and third steps ran on recycled buffers
    assert runs[0][0] == runs[2][0] == loss0 and runs[1][0] != loss0
    assert (runs[0][1] == runs[2][1]).all() and (runs[2][1] == fresh.flat).all()


def test_evaluation_does_not_drain_the_buffer_pool(rng):
    """A forward that no backward consumes (loss_only) leaves its probabilities in the cache;
    the next forward hands them back to the pool instead of dropping them."""
    from anetrain.model import loss_only

    cfg = tiny_cfg()
    params = init_params(cfg, rng)
    kern = CpuKernels(cfg, params)
    toks = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1).astype(np.int32)
    micro_step(params, params.zeros_like(), kern, toks[:-1], toks[1:], accumulate=False)
    held = len(kern._spare) + len(kern._probs_cache)
    for _ in range(3):
        loss_only(params, kern, toks[:-1], toks[1:])
        assert len(kern._spare) + len(kern._probs_cache) == held, (len(kern._spare), held)



@pytest.mark.parametrize("kv_heads", [None, 2])
def test_backward_reuses_forward_probabilities(rng, monkeypatch, kv_heads):
    """One softmax per layer per micro-step, MHA or GQA (GQA tiles k afresh for the backward)."""
    cfg = tiny_cfg(**({"n_kv_heads": kv_heads} if kv_heads else {}))
    params = init_params(cfg, rng)
    kern = CpuKernels(cfg, params, threads=1)
    calls, probs = [], kern._probs
    monkeypatch.setattr(kern, "_probs", lambda q, k: calls.append(1) or probs(q, k))
    toks = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1).astype(np.int32)
    micro_step(params, params.zeros_like(), kern, toks[:-1], toks[1:], accumulate=False)
    assert cfg.n_kv_heads < cfg.n_heads or kv_heads is None
    assert len(calls) == cfg.n_layers


def test_threads_reach_the_cpu_kernels(rng):
    from anetrain.backends import make_kernels

    cfg = tiny_cfg()
    assert make_kernels("cpu", cfg, init_params(cfg, rng), threads=3).threads == 3


@pytest.mark.parametrize("S", [256, 512])
def test_blocked_causal_attention_matches_torch(rng, S, monkeypatch):
    """S >= 256: the attention products skip the masked blocks (2 or 4 of them); the loss and every
    gradient equal torch autograd's, and the single-block products' to rounding."""
    pytest.importorskip("torch")
    import torch_llama

    import anetrain.backends.cpu as cpu

    cfg = tiny_cfg(seq_len=S, n_kv_heads=2)
    p = init_params(cfg, rng)
    for t in p.tensors.values():
        if t.ndim == 2:
            t *= 4.0  # sharp attention: a wrong block shows
    tok = rng.integers(0, cfg.vocab_size, S + 1).astype(np.int32)
    kern = CpuKernels(cfg, p)
    assert len(kern._blocks()) == S // 128
    grads = p.zeros_like()
    loss = micro_step(p, grads, kern, tok[:-1], tok[1:], False)
    tloss, tgrads = torch_llama.loss_and_grads(p, tok[:-1], tok[1:])
    assert loss == pytest.approx(tloss, rel=1e-5)
    for name, g in grads.tensors.items():
        ref = tgrads.tensors[name]
        assert np.abs(g - ref).max() <= 1e-4 * np.abs(ref).max(), name
    monkeypatch.setattr(cpu, "_BLOCK", 1 << 20)  # one block: the plain products
    one = p.zeros_like()
    micro_step(p, one, CpuKernels(cfg, p), tok[:-1], tok[1:], False)
    np.testing.assert_allclose(grads.flat, one.flat, rtol=1e-4, atol=1e-6)
