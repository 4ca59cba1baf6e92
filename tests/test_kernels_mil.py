"""MilKernels on the simulator against CpuKernels: every kernel, staging, and whole micro-steps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import perturb_norms, tiny_cfg

from anetrain.backends.cpu import CpuKernels
from anetrain.backends.mil import MilKernels
from anetrain.backends.runtime import SimRuntime
from anetrain.config import ConfigError
from anetrain.model import DwPool, Kernels, micro_step, tile_kv
from anetrain.params import init_params

U = 2.0**-11  # fp16 unit roundoff

# Per-kernel bound, relative L2 error ‖mil − cpu‖/‖cpu‖. The cpu kernel sees the fp32 inputs and
# weights, the MIL kernel their fp16 roundings (relative error U each) plus one fp16 rounding per
# op on the output's path (≤ 10 ops, mil/kernels.py budget). Random rounding errors add in
# quadrature over a dot product, so the norm-wise error of each op stays O(U); the worst path
# (attn: projection, RoPE, scores, softmax, P·V) is ~14 roundings of ≤ U. 16·U ≈ 7.8e-3; observed
# 0.3–1.7·U. A wrongly staged weight (W for Wᵀ) or a swapped segment gives errors of order 1.
KERNEL_TOL = 16 * U

# Whole micro-step bound, per gradient tensor. The backward through a 2-layer model chains ~4
# kernels per layer and both layers' forward activations, each contributing O(U) relative error;
# they compound roughly additively: 2 layers × (3 fwd + 7 bwd) kernels × ~2 U ≈ 40 U ≈ 2e-2 in the
# worst case, ~1e-3 observed (errors are random). The test asserts 2e-2 per tensor.
GRAD_TOL = 2e-2

# explicit head dim (Qwen3-like): q_dim 96 != dim 64, so every Q-vs-D mix-up changes a shape
# qk_norm: Qwen3's per-head RMSNorm of q and k (norm weights perturbed by perturb_norms)
CONFIGS = {"mha": tiny_cfg(), "gqa": tiny_cfg(n_kv_heads=2),
           "head_dim": tiny_cfg(n_kv_heads=2, head_size=24),
           "qk_norm": tiny_cfg(n_kv_heads=2, head_size=24, qk_norm=True,
                               norm_eps=1e-6)}  # fmt: skip


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    """(cfg, params, MilKernels on SimRuntime, CpuKernels) sharing one set of weights."""
    cfg = CONFIGS[request.param]
    rng = np.random.default_rng(11)
    params = init_params(cfg, rng)
    perturb_norms(params, rng)
    for t in params.tensors.values():  # non-symmetric, O(1/sqrt(fan-in)) weights
        if t.ndim == 2:
            t[...] = rng.standard_normal(t.shape, dtype=np.float32) / np.sqrt(t.shape[1])
    mil = MilKernels(cfg, params, SimRuntime())
    yield cfg, params, mil, CpuKernels(cfg, params)
    mil.close()


def acts(rng, *shapes):
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def check(got, ref, what: str) -> None:
    got, ref = (got, ref) if isinstance(ref, tuple) else ((got,), (ref,))
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == r.shape and g.dtype == np.float32, (what, i, g.shape, r.shape)
        e = rel(g, r)
        assert e <= KERNEL_TOL, f"{what} output {i}: relative error {e:.2e} > {KERNEL_TOL:.2e}"


def test_forward_kernels(pair):
    cfg, _, mil, cpu = pair
    rng = np.random.default_rng(1)
    D, S, F = cfg.dim, cfg.seq_len, cfg.hidden_dim
    for layer in range(cfg.n_layers):
        (x,) = acts(rng, (D, S))
        check(mil.sdpa_fwd(layer, x), cpu.sdpa_fwd(layer, x), "sdpa_fwd")
        (a,) = acts(rng, (cfg.q_dim, S))
        check(mil.wo_fwd(layer, a), cpu.wo_fwd(layer, a), "wo_fwd")
        check(mil.ffn_fused(layer, x), cpu.ffn_fused(layer, x), "ffn_fused")
        assert F == mil.specs["ffnFused"].out["gate"].nch


def test_backward_kernels(pair):
    cfg, _, mil, cpu = pair
    rng = np.random.default_rng(2)
    D, S, F, Q, KV = cfg.dim, cfg.seq_len, cfg.hidden_dim, cfg.q_dim, cfg.kv_dim
    for layer in range(cfg.n_layers):
        dffn, dx2 = acts(rng, (D, S), (D, S))
        check(mil.ffn_bwd_w2t(layer, dffn), cpu.ffn_bwd_w2t(layer, dffn), "ffn_bwd_w2t")
        dh1, dh3 = acts(rng, (F, S), (F, S))
        check(mil.ffn_bwd_w13t(layer, dh1, dh3), cpu.ffn_bwd_w13t(layer, dh1, dh3), "w13t")
        check(mil.wot_bwd(layer, dx2), cpu.wot_bwd(layer, dx2), "wot_bwd")
        (dq,) = acts(rng, (Q, S))
        check(mil.q_bwd(layer, dq), cpu.q_bwd(layer, dq), "q_bwd")
        dk, dv = acts(rng, (KV, S), (KV, S))
        check(mil.kv_bwd(layer, dk, dv), cpu.kv_bwd(layer, dk, dv), "kv_bwd")


def test_attention_backward(pair):
    cfg, _, mil, cpu = pair
    rng = np.random.default_rng(3)
    Q, KV, S = cfg.q_dim, cfg.kv_dim, cfg.seq_len
    q, da = acts(rng, (Q, S), (Q, S))
    k, v = (tile_kv(a, cfg) for a in acts(rng, (KV, S), (KV, S)))
    ref1 = cpu.sdpa_bwd1(0, q, k, v, da)
    check(mil.sdpa_bwd1(0, q, k, v, da), ref1, "sdpa_bwd1")
    check(mil.sdpa_bwd2(0, ref1[1], ref1[2], q, k), cpu.sdpa_bwd2(0, ref1[1], ref1[2], q, k),
          "sdpa_bwd2")  # fmt: skip
    # the composite (P, dP copied surface to surface) equals the two calls through fp32
    ref = cpu.sdpa_bwd(0, q, k, v, da)
    got = mil.sdpa_bwd(0, q, k, v, da)
    check(got, ref, "sdpa_bwd")
    dv, p, dp = mil.sdpa_bwd1(0, q, k, v, da)  # fp16-exact P, dP: the fp32 path is then exact
    dq, dk = mil.sdpa_bwd2(0, p, dp, q, k)
    for a, b in zip(got, (dq, dk, dv)):
        np.testing.assert_array_equal(a, b)


def test_staging_follows_the_masters(pair):
    """update_weights re-stages: a changed master changes the kernel; restoring it restores it."""
    cfg, params, mil, cpu = pair
    rng = np.random.default_rng(4)
    (x,) = acts(rng, (cfg.q_dim, cfg.seq_len))
    before = mil.wo_fwd(1, x)
    wo = params.layers[1].wo.copy()
    params.layers[1].wo[...] = rng.standard_normal(wo.shape, dtype=np.float32) / 8
    assert np.array_equal(mil.wo_fwd(1, x), before)  # not staged yet: the surface holds the old
    mil.update_weights()
    check(mil.wo_fwd(1, x), cpu.wo_fwd(1, x), "wo_fwd after update")
    params.layers[1].wo[...] = wo
    mil.update_weights()
    np.testing.assert_array_equal(mil.wo_fwd(1, x), before)
    assert mil.rt.compiles == 10  # staging never recompiles


@pytest.mark.parametrize("name", list(CONFIGS))
def test_micro_step_gradients_match_cpu(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(5)
    params = init_params(cfg, rng)
    perturb_norms(params, rng)
    tok = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1)
    scale = 2.0**12
    g_cpu, g_sim = params.zeros_like(), params.zeros_like()
    loss_cpu = micro_step(params, g_cpu, CpuKernels(cfg, params), tok[:-1], tok[1:], False, scale)
    mil = MilKernels(cfg, params, SimRuntime())
    with DwPool(1) as pool:
        loss_sim = micro_step(params, g_sim, mil, tok[:-1], tok[1:], False, scale, pool)
    mil.close()
    assert abs(loss_sim - loss_cpu) <= 1e-3 * loss_cpu
    errs = {n: rel(g_sim.tensors[n], g_cpu.tensors[n]) for n in params.tensors}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= GRAD_TOL, f"{worst}: relative gradient error {errs[worst]:.2e}"
    assert all(np.linalg.norm(g) > 0 for g in g_sim.tensors.values())


def test_one_compile_per_kernel_and_surface_counts():
    cfg = tiny_cfg()
    params = init_params(cfg, np.random.default_rng(0))
    rt = SimRuntime()
    mil = MilKernels(cfg, params, rt, async_staging=False)
    assert rt.compiles == 10 and len(mil.executables) == 10
    for name, surfaces in mil.inputs.items():  # per-layer surfaces only where weights live
        assert len(surfaces) == (1 if name.startswith("sdpaBwd") else cfg.n_layers), name
    mil.update_weights()
    assert rt.compiles == 10
    assert isinstance(mil, Kernels) and mil.fp16 and mil.overlap_dw and mil.threads == 1
    stats = mil.stats()
    assert stats["compiles"].startswith("10 kernels")
    assert {"compile time", "kernel evaluation", "host time"} <= set(stats)
    mil.close()


def test_wrong_activation_shape_is_named():
    cfg = tiny_cfg()
    mil = MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), SimRuntime())
    with pytest.raises(ValueError, match="woFwd.attn"):
        mil.wo_fwd(0, np.zeros((cfg.q_dim, cfg.seq_len + 1), np.float32))
    mil.close()


def test_strict_runtime_refuses_misaligned_sizes():
    class StrictSim(SimRuntime):
        name, strict = "ane", True

    cfg = tiny_cfg()  # hidden 176, seq 16: not 64-aligned
    with pytest.raises(ConfigError, match="--backend ane: .*hidden 176.*multiples of 64"):
        MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), StrictSim())


def test_close_after_a_staging_error_frees_everything(monkeypatch):
    """A staging failure reaches the kernel call that needed the surface; close() afterwards
    (train.py's finally) raises nothing more and still frees every kernel and the runtime."""
    from anetrain.backends import mil as kernels_mil

    cfg = tiny_cfg()
    closed = []

    class Rt(SimRuntime):
        def close(self):
            closed.append(True)

    mil = MilKernels(cfg, init_params(cfg, np.random.default_rng(0)), Rt(), own_runtime=True)
    mil.sync()  # the constructor's staging is done
    real = kernels_mil.stage_weights

    def failing(dst, layout, lp):
        if "w1" in [s.weight for s in layout.segments if s.stage]:
            raise OSError("staging boom")
        real(dst, layout, lp)

    monkeypatch.setattr(kernels_mil, "stage_weights", failing)
    mil.update_weights()
    with pytest.raises(OSError, match="staging boom"):
        mil.ffn_fused(0, np.zeros((cfg.dim, cfg.seq_len), np.float32))
    mil.close()
    assert mil.executables == {} and mil.inputs == {} and closed == [True]


def test_qwen3_training_steps_on_sim_follow_cpu():
    """A few optimizer steps of a qk-norm model (micro-steps, global norm, AdamW, re-staging of
    every weight incl. the q/k norms) on the simulator track the same steps on the cpu."""
    from anetrain.optim import AdamW, LossScaler, grad_norm, optimizer_step

    cfg = CONFIGS["qk_norm"]
    rng = np.random.default_rng(6)
    init = init_params(cfg, rng)
    perturb_norms(init, rng)
    windows = [rng.integers(0, cfg.vocab_size, cfg.seq_len + 1) for _ in range(2)] * 4  # learnable
    losses, norms = {}, {}
    for name in ("cpu", "sim"):
        params = init.zeros_like()
        params.flat[...] = init.flat
        kern = CpuKernels(cfg, params) if name == "cpu" else MilKernels(cfg, params, SimRuntime())
        scaler = LossScaler(2.0**12 if kern.fp16 else 1.0, dynamic=kern.fp16)
        opt, grads, out = AdamW(params, weight_decay=0.0), params.zeros_like(), []
        with DwPool(1) as pool:
            for step in range(4):
                for micro in range(2):
                    tok = windows[2 * step + micro]
                    out.append(micro_step(params, grads, kern, tok[:-1], tok[1:], micro > 0,
                                          scaler.scale, pool if kern.fp16 else None))  # fmt: skip
                unscale = 1.0 / (2 * scaler.scale)
                norm = grad_norm(grads, unscale)
                assert not optimizer_step(opt, grads, kern, scaler, 3e-3, norm, unscale, 1.0)
        if kern.fp16:  # the trained q/k norms (and every weight) are staged: sdpaFwd follows
            x = rng.standard_normal((cfg.dim, cfg.seq_len), dtype=np.float32)
            check(kern.sdpa_fwd(1, x), CpuKernels(cfg, params).sdpa_fwd(1, x), "trained sdpa_fwd")
        kern.close()
        losses[name], norms[name] = np.array(out), params.layers[0].q_norm - init.layers[0].q_norm
    np.testing.assert_allclose(losses["sim"], losses["cpu"], rtol=1e-2)
    assert losses["cpu"][-2:].mean() < losses["cpu"][:2].mean()  # the steps do train
    # the q norm is trained, in the same direction on sim (AdamW's first steps are ~lr·sign(g),
    # so its smallest gradients differ most: the direction, not the size, is compared)
    assert np.abs(norms["cpu"]).max() > 1e-3
    cos = norms["sim"] @ norms["cpu"] / np.linalg.norm(norms["sim"]) / np.linalg.norm(norms["cpu"])
    assert cos > 0.95


def test_update_weights_of_changed_tensors_restages_just_their_kernels(rng):
    """LoRA's update (lora.Staged) names the adapted matrices: the kernels holding them are
    re-staged, exactly as a full staging would, and the others are not touched."""
    from anetrain.backends.mil import MilKernels
    from anetrain.backends.runtime import SimRuntime
    from anetrain.params import init_params

    cfg = tiny_cfg()
    params = init_params(cfg, rng)
    kern = MilKernels(cfg, params, SimRuntime(), async_staging=False)
    before = {n: [s.buf.copy() for s in ss] for n, ss in kern.inputs.items()}
    params.tensors["layers.0.wq"][...] += 0.5
    params.tensors["layers.1.w2"][...] += 0.5
    params.tensors["layers.1.wo"][...] += 0.5  # changed but not named: must stay as staged
    kern.update_weights({"layers.0.wq", "layers.1.w2"})
    fresh = MilKernels(cfg, params, SimRuntime(), async_staging=False)
    touched = set()
    for name, surfaces in kern.inputs.items():
        for layer, s in enumerate(surfaces):
            if not np.array_equal(s.buf, before[name][layer]):
                touched.add((name, layer))
                assert np.array_equal(s.buf, fresh.inputs[name][layer].buf), (name, layer)
    assert touched == {("sdpaFwd", 0), ("qBwd", 0), ("ffnFused", 1), ("ffnBwdW2t", 1)}
    kern.close()
    fresh.close()
