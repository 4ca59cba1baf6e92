"""Whole micro-step gradients of the cpu backend vs PyTorch autograd and finite differences."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import perturb_norms, tiny_cfg

from anetrain.backends.cpu import CpuKernels
from anetrain.model import loss_only, micro_step
from anetrain.params import Params, init_params

# RoPE wavelengths of the tiny model span 6 .. 19k positions: all three llama3 bands are hit
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
CASES = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "untied": {"shared_classifier": False},
    "head_size": {"head_size": 8, "n_kv_heads": 2},  # n_heads·head_size = 32 != dim 64
    "qwen3": {"n_kv_heads": 2, "head_size": 32, "qk_norm": True, "shared_classifier": False},
    "llama3_rope": {"rope_theta": 5e5, "rope_scaling": LLAMA3, "n_kv_heads": 1},
}


def _setup(rng, **kw):
    cfg = tiny_cfg(**kw)
    p = init_params(cfg, rng)
    for t in p.tensors.values():  # larger than init scale so every path carries signal
        if t.ndim == 2:
            t *= 5.0
    perturb_norms(p, rng)
    toks = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1)
    return cfg, p, toks[:-1].astype(np.int32), toks[1:].astype(np.int32)


@pytest.mark.parametrize("case", CASES)
def test_grads_match_torch_autograd(case, rng):
    pytest.importorskip("torch")
    import torch_llama as torch_ref
    cfg, p, x, y = _setup(rng, **CASES[case])
    g = p.zeros_like()
    loss = micro_step(p, g, CpuKernels(cfg, p), x, y, accumulate=False)
    tloss, tg = torch_ref.loss_and_grads(p, x, y)
    assert loss == pytest.approx(tloss, rel=1e-5)
    for name, t in g.tensors.items():
        ref = tg.tensors[name]
        err = np.abs(t - ref).max() / (np.abs(ref).max() + 1e-12)
        assert err < 2e-4, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_grads_match_finite_differences(case, rng):
    cfg, p, x, y = _setup(rng, **CASES[case])
    g = p.zeros_like()
    micro_step(p, g, CpuKernels(cfg, p), x, y, accumulate=False)
    # directional derivative along random directions restricted to one tensor at a time, so a
    # wrong gradient in any single tensor (norm weights included) is caught
    for name in [
        "embed",
        "layers.0.wq",
        "layers.1.wk",
        "layers.0.wo",
        "layers.1.w1",
        "layers.0.w2",
        "layers.1.w3",
        "layers.0.rms_att",
        "layers.1.rms_ffn",
        "rms_final",
    ]:
        d = Params(cfg)
        t = d.tensors[name]
        noise = rng.standard_normal(t.shape).astype(np.float32)
        gt = g.tensors[name]
        # half analytic gradient, half noise: never degenerate, and a wrong gradient still shows
        t[...] = gt / np.linalg.norm(gt) + noise / np.linalg.norm(noise)
        t /= np.linalg.norm(t)  # unit direction: eps is the step length in parameter space
        eps = 3e-3
        pp, pm = Params(cfg, p.flat + eps * d.flat), Params(cfg, p.flat - eps * d.flat)
        fd = loss_only(pp, CpuKernels(cfg, pp), x, y) - loss_only(pm, CpuKernels(cfg, pm), x, y)
        fd /= 2 * eps
        an = float(np.dot(g.flat.astype(np.float64), d.flat))
        # fp32 loss round-off (~5e-7 relative) over a 6e-3 step bounds the fd noise near 1e-3
        assert fd == pytest.approx(an, rel=3e-2, abs=2e-3), f"{name}: fd {fd} vs analytic {an}"
        assert abs(an) > 1e-2, f"{name}: degenerate direction, the check would prove nothing"


def test_accumulate_adds_and_loss_scale_scales(rng):
    cfg, p, x, y = _setup(rng, n_kv_heads=2)
    kern = CpuKernels(cfg, p)
    g1, g2 = p.zeros_like(), p.zeros_like()
    micro_step(p, g1, kern, x, y, accumulate=False)
    g2.flat[:] = 123.0  # garbage must be overwritten by accumulate=False
    micro_step(p, g2, kern, x[::-1].copy(), y[::-1].copy(), accumulate=False)
    single2 = g2.flat.copy()
    micro_step(p, g2, kern, x, y, accumulate=True)
    np.testing.assert_allclose(g2.flat, g1.flat + single2, rtol=1e-5, atol=1e-6)
    g3 = p.zeros_like()
    micro_step(p, g3, kern, x, y, accumulate=False, loss_scale=256.0)
    np.testing.assert_allclose(g3.flat, 256.0 * g1.flat, rtol=1e-5, atol=1e-6)


def test_loss_only_equals_micro_step_loss(rng):
    cfg, p, x, y = _setup(rng)
    kern = CpuKernels(cfg, p)
    assert loss_only(p, kern, x, y) == pytest.approx(
        micro_step(p, p.zeros_like(), kern, x, y, accumulate=False), rel=1e-6
    )


def test_init_statistics(rng):
    cfg = tiny_cfg(vocab_size=4096)
    p = init_params(cfg, rng)
    assert p.embed.std() == pytest.approx(0.02, rel=0.05)
    assert p.layers[0].w3.std() == pytest.approx(0.02 / np.sqrt(2 * cfg.n_layers), rel=0.05)
    assert p.layers[0].wo.std() == pytest.approx(0.02 / np.sqrt(2 * cfg.n_layers), rel=0.1)
    assert p.layers[0].w2.std() == pytest.approx(0.02, rel=0.05)
    assert np.all(p.rms_final == 1.0) and np.all(p.layers[1].rms_att == 1.0)
    assert len(p) == cfg.n_params()
    assert p.wcls is p.embed


@pytest.mark.parametrize("workers", [1, 2])
def test_dw_on_worker_threads_matches_inline(rng, monkeypatch, workers):
    """dW jobs on a worker pool give the inline gradients: bit for bit on one worker; with two
    low-priority workers and every job split into row blocks, to fp32 rounding (row blocks may
    take another BLAS blocking path). The first micro-step does not wait for its jobs, as in
    training with --accum > 1, so both micro-steps' jobs are queued at once."""
    import anetrain.model as model_mod
    from anetrain.model import DwPool

    if workers > 1:
        monkeypatch.setattr(model_mod, "_SPLIT_ELEMS", 0)  # split every job (tiny dims never would)
    cfg, p, x, y = _setup(rng, n_kv_heads=2)
    kern = CpuKernels(cfg, p)
    g1, g2 = p.zeros_like(), p.zeros_like()
    micro_step(p, g1, kern, x, y, accumulate=False)
    micro_step(p, g1, kern, y, x, accumulate=True)
    with DwPool(workers) as pool:
        assert pool.workers == workers
        micro_step(p, g2, kern, x, y, accumulate=False, dw_pool=pool, sync=False)
        micro_step(p, g2, kern, y, x, accumulate=True, dw_pool=pool)
        assert not pool._jobs  # the last micro-step waited for everything
    if workers == 1:
        np.testing.assert_array_equal(g1.flat, g2.flat)
    else:
        np.testing.assert_allclose(g2.flat, g1.flat, rtol=1e-5, atol=1e-7)


def test_dw_pool_orders_jobs_per_key():
    """Jobs on one gradient buffer run in submission order even with idle workers; jobs on other
    buffers do not wait for them; a worker error is re-raised by wait."""
    import threading
    import time

    from anetrain.model import DwPool

    done: list[str] = []
    release = threading.Event()

    def job(name: str, block: bool = False) -> None:
        if block:
            assert release.wait(5.0)
        done.append(name)

    with DwPool(4) as pool:  # g1 and both g2 blocks each hold a worker; h1 gets the fourth
        pool.add("g", [(job, "g1", True)])  # holds key g until released
        pool.add("g", [(job, "g2a"), (job, "g2b")])  # two row blocks, both after g1
        pool.add("h", [(job, "h1")])
        deadline = time.monotonic() + 5.0
        while "h1" not in done and time.monotonic() < deadline:
            time.sleep(0.001)
        assert done == ["h1"]  # another key ran past the blocked one; g2 waited
        release.set()
        pool.wait()
        assert done[:2] == ["h1", "g1"] and sorted(done[2:]) == ["g2a", "g2b"]

        def boom() -> None:
            raise RuntimeError("worker failed")

        pool.add("g", [(boom,)])
        pool.add("g", [(job, "after")])
        with pytest.raises(RuntimeError, match="worker failed"):
            pool.wait()
        assert "after" not in done  # a job after a failed one on its key does not run


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_dw_pool_workers_run_at_lower_priority():
    import os
    import threading

    from anetrain.model import DwPool

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice_of_this_thread()
    with DwPool(2, nice=7) as pool:
        got = {pool.submit(nice_of_this_thread).result() for _ in range(4)}
    assert got == {min(19, base + 7)}
    assert nice_of_this_thread() == base  # the caller's own priority is untouched


def test_default_threads_is_one_per_core_for_the_dw_pool_and_cpu_kernels(monkeypatch, rng):
    import os

    from anetrain.config import default_threads
    from anetrain.model import DwPool

    cfg, p, _, _ = _setup(rng)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert default_threads() == 3 and CpuKernels(cfg, p).threads == 3
    with DwPool() as pool:
        assert pool.workers == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one thread
    assert default_threads() == 1 and CpuKernels(cfg, p).threads == 1
    assert CpuKernels(cfg, p, threads=5).threads == 5


def test_cpu_kernels_implement_the_kernels_protocol(rng):
    from anetrain.model import Kernels

    cfg, p, _, _ = _setup(rng)
    kern = CpuKernels(cfg, p)
    assert isinstance(kern, Kernels)
    assert not kern.fp16 and not kern.overlap_dw and kern.stats() == {}
    kern.close()  # nothing to free


def test_model_ropes_the_backward_with_the_shared_tables():
    """micro_step's RoPE' tables are rope.rope_tables' bit for bit, computed once per
    (model, seq_len), and read-only (they are shared)."""
    from anetrain.model import rope_for
    from anetrain.rope import rope_tables

    cfg = tiny_cfg(rope_theta=500.0)
    cos, sin = rope_for(cfg, 24)
    ref = rope_tables(16, 24, 500.0)
    np.testing.assert_array_equal(cos, ref[0])
    np.testing.assert_array_equal(sin, ref[1])
    assert rope_for(cfg, 24)[0] is cos and not cos.flags.writeable
    assert rope_for(cfg.replace(rope_theta=10000.0), 24)[0] is not cos


def test_model_imports_no_backend():
    """model.py is the consumer side of Kernels: backends import it, never the reverse."""
    import subprocess

    code = ("import sys, anetrain.model\n"
            "print(sorted(m for m in sys.modules if m.startswith('anetrain.backends')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
