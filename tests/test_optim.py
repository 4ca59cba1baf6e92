"""AdamW (decay groups, bias correction, folded grad scale), clipping and the LR schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import perturb_norms, tiny_cfg

from anetrain.optim import AdamW, LossScaler, clip_factor, get_lr, grad_norm
from anetrain.params import init_params


def test_adamw_matches_torch(rng):
    torch = pytest.importorskip("torch")
    cfg = tiny_cfg(n_kv_heads=2)
    p = init_params(cfg, rng)
    ref = {n: torch.nn.Parameter(torch.tensor(np.array(t))) for n, t in p.tensors.items()}
    decay = [t for n, t in ref.items() if t.ndim >= 2]
    no_decay = [t for n, t in ref.items() if t.ndim < 2]
    topt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    opt = AdamW(p, 0.9, 0.95, 1e-8, 0.1)
    for it in range(5):
        g = p.zeros_like()
        g.flat[:] = rng.standard_normal(len(p)).astype(np.float32)
        scale, lr = 0.5, 1e-3 * (it + 1)
        for n, t in ref.items():
            t.grad = torch.tensor(np.array(g.tensors[n])) * scale
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(g, lr, grad_scale=scale)
    for n, t in ref.items():
        np.testing.assert_allclose(
            p.tensors[n], t.detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=n
        )


def test_adamw_unscales_every_group_before_the_moments(rng):
    """Loss-scaled gradients (x 4096, grad_scale 1/4096) must give torch's moments on the unscaled
    gradients in every tensor. Adam's update is scale-invariant, so a group that skipped the
    unscale would still match torch's parameters; its m and v would be 4096x and 4096²x off."""
    torch = pytest.importorskip("torch")
    cfg = tiny_cfg(n_kv_heads=2, shared_classifier=False)
    p = init_params(cfg, rng)
    perturb_norms(p, rng)
    ref = {n: torch.nn.Parameter(torch.tensor(np.array(t))) for n, t in p.tensors.items()}
    topt = torch.optim.AdamW(
        [
            {"params": [t for t in ref.values() if t.ndim >= 2], "weight_decay": 0.1},
            {"params": [t for t in ref.values() if t.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    opt = AdamW(p, 0.9, 0.95, 1e-8, 0.1)
    scale = 4096.0
    for _ in range(2):
        g = p.zeros_like()
        g.flat[:] = rng.standard_normal(len(p)).astype(np.float32)
        for n, t in ref.items():
            t.grad = torch.tensor(np.array(g.tensors[n]))  # the true (unscaled) gradient
        g.flat *= np.float32(scale)  # what a loss-scaled backward hands the optimizer
        topt.step()
        opt.step(g, 1e-3, grad_scale=1.0 / scale)
    kinds = {t.ndim for t in ref.values()}
    assert kinds == {1, 2}  # both groups (matrices and embedding; norm weights) are covered
    for n, t in ref.items():
        state = topt.state[t]
        for ours, theirs in ((opt.m, "exp_avg"), (opt.v, "exp_avg_sq"), (p, None)):
            want = (t if theirs is None else state[theirs]).detach().numpy()
            got = ours.tensors[n]
            np.testing.assert_allclose(
                got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=f"{n} {theirs}"
            )


def test_clip_matches_torch(rng):
    torch = pytest.importorskip("torch")
    cfg = tiny_cfg()
    g = init_params(cfg, rng)
    ts = [torch.tensor(np.array(t)) for t in g.tensors.values()]
    ps = [torch.nn.Parameter(torch.zeros_like(t)) for t in ts]
    for pp, t in zip(ps, ts):
        pp.grad = t.clone()
    tnorm = float(torch.nn.utils.clip_grad_norm_(ps, 0.5))
    norm = grad_norm(g)
    assert norm == pytest.approx(tnorm, rel=1e-5)
    f = clip_factor(norm, 0.5)
    for pp, t in zip(ps, ts):
        np.testing.assert_allclose(t.numpy() * f, pp.grad.numpy(), rtol=1e-5, atol=1e-9)
    assert clip_factor(norm, 0.0) == 1.0 and clip_factor(0.1, 1.0) == 1.0


@pytest.mark.parametrize(
    ("norm", "clip"),
    [(2e-6, 2e-6), (1e-6, 1.5e-6), (3e-7, 1e-6), (1e-5, 1e-5), (1e-6, 5e-7)],
)
def test_clip_factor_matches_torch_near_the_threshold(rng, norm, clip):
    """torch clips by clip / (norm + 1e-6): with norm <= clip < norm + 1e-6 it still scales the
    gradients down, where clip / norm would leave them alone; below it the two factors differ."""
    torch = pytest.importorskip("torch")
    g = init_params(tiny_cfg(), rng)
    g.flat *= np.float32(norm / grad_norm(g))
    ts = [torch.tensor(np.array(t)) for t in g.tensors.values()]
    ps = [torch.nn.Parameter(torch.zeros_like(t)) for t in ts]
    for pp, t in zip(ps, ts):
        pp.grad = t.clone()
    tnorm = float(torch.nn.utils.clip_grad_norm_(ps, clip))
    assert grad_norm(g) == pytest.approx(tnorm, rel=1e-5)
    f = clip_factor(grad_norm(g), clip)
    for pp, t in zip(ps, ts):
        want = pp.grad.numpy()
        np.testing.assert_allclose(t.numpy() * f, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_lr_schedule_shape():
    lr, mn, wu, n = 1e-3, 1e-4, 10, 100
    assert get_lr(0, lr, mn, wu, n) == pytest.approx(lr / 11)
    assert get_lr(9, lr, mn, wu, n) == pytest.approx(lr * 10 / 11)
    assert get_lr(10, lr, mn, wu, n) == pytest.approx(lr)
    assert get_lr(55, lr, mn, wu, n) == pytest.approx(mn + 0.5 * (lr - mn))
    assert get_lr(100, lr, mn, wu, n) == pytest.approx(mn)
    assert get_lr(500, lr, mn, wu, n) == mn
    vals = [get_lr(i, lr, mn, wu, n) for i in range(wu, n + 1)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert get_lr(0, lr, mn, 0, 0) == pytest.approx(lr) and not math.isnan(get_lr(0, lr, mn, 0, 0))


def test_loss_scaler_restores_only_its_own_kind():
    fp16 = LossScaler(2.0**12, dynamic=True, interval=2)
    assert fp16.update(False) and fp16.scale == 2.0**11  # overflow: skip, halve
    assert not fp16.update(True) and not fp16.update(True) and fp16.scale == 2.0**12
    saved = fp16.state()
    again = LossScaler(2.0**12, dynamic=True)
    again.set_state({**saved, "scale": 512.0})
    assert (again.scale, again.skipped) == (512.0, 1)
    cpu = LossScaler(1.0, dynamic=False)
    cpu.set_state(saved)  # an fp16 run's scale means nothing to the fp32 cpu backend
    assert cpu.scale == 1.0 and cpu.skipped == 0
    fresh = LossScaler(2.0**12, dynamic=True)
    fresh.set_state(LossScaler(1.0, dynamic=False).state())  # a cpu run resumed on sim/ane
    assert fresh.scale == 2.0**12
    old = {"scale": 1.0, "clean": 0, "skipped": 0}  # saved before "dynamic" was recorded
    fresh.set_state(old)
    assert fresh.scale == 2.0**12
    fresh.set_state({"scale": 64.0, "clean": 3, "skipped": 6})
    assert fresh.scale == 64.0
    floor = LossScaler(LossScaler.MIN_SCALE)
    assert floor.update(False) and floor.scale == LossScaler.MIN_SCALE
