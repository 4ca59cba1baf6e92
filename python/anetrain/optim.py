"""LR schedule, global-norm clipping, loss scaling, fused AdamW, and the one optimizer step."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from anetrain import native


def get_lr(it: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """nanoGPT's schedule for optimizer step `it` (0-based)."""
    # 1) linear warmup for `warmup` steps
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    # 2) past the decay horizon: the floor
    if it > decay_steps:
        return min_lr
    # 3) in between: cosine decay from lr down to min_lr
    ratio = (it - warmup) / max(1, decay_steps - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (lr - min_lr)


class FlatParams(Protocol):
    """One flat fp32 buffer whose first n_decay values are weight-decayed (Params, LoraParams)."""

    flat: np.ndarray  # [n]
    n_decay: int

    def zeros_like(self) -> FlatParams: ...


def grad_norm(grads: FlatParams, scale: float = 1.0, threads: int = 1) -> float:
    """Global L2 norm of scale * grads (all parameters, as torch.nn.utils.clip_grad_norm_)."""
    return math.sqrt(native.sumsq(grads.flat, threads=threads)) * abs(scale)


def clip_factor(norm: float, clip: float) -> float:
    """torch clip_grad_norm_: multiply by clip / (norm + 1e-6) when that is < 1; clip 0 disables."""
    if clip <= 0.0:
        return 1.0
    return min(1.0, clip / (norm + 1e-6))


class AdamW:
    """torch.optim.AdamW semantics: decoupled decay on every >= 2-D tensor (embedding included),
    none on norm weights; bias correction; eps added after the square root.

    The moments are buffers of the same flat layout (Params, or LoraParams: a LoRA run trains the
    adapters alone), so checkpoints store them as-is.
    """

    def __init__(
        self,
        params: FlatParams,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        threads: int = 1,
    ):
        self.params = params
        self.m = params.zeros_like()
        self.v = params.zeros_like()
        self.beta1, self.beta2, self.eps, self.wd = beta1, beta2, eps, weight_decay
        self.t = 0  # optimizer steps taken (bias-correction clock)
        self.threads = threads

    def step(self, grads: FlatParams, lr: float, grad_scale: float = 1.0) -> None:
        """One update with gradient grads * grad_scale (unscaling and clipping folded in)."""
        self.t += 1
        n = self.params.n_decay
        p, m, v, g = self.params.flat, self.m.flat, self.v.flat, grads.flat
        common = dict(
            lr=lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            grad_scale=grad_scale,
            step=self.t,
            threads=self.threads,
        )
        native.adamw(p[:n], m[:n], v[:n], g[:n], wd=self.wd, **common)  # matrices, embedding
        native.adamw(p[n:], m[n:], v[n:], g[n:], wd=0.0, **common)  # norm weights


class LossScaler:
    """Dynamic loss scaling for fp16 kernels (upstream.md §8.1: tiny gradient products vanish).

    The loss gradient is multiplied by `scale` before the backward; on inf/NaN in any gradient
    the optimizer step is skipped and the scale halved; after `interval` clean steps it doubles.
    `scale` 1 with dynamic=False is the fp32 cpu backend (no scaling, never skips).
    """

    MIN_SCALE = 2.0**-24  # the smallest fp16 subnormal: halving stops here

    def __init__(self, scale: float = 2.0**12, dynamic: bool = True, interval: int = 1000):
        self.scale, self.dynamic, self.interval = float(scale), dynamic, interval
        self.clean = 0  # consecutive clean steps since the last change
        self.skipped = 0  # total skipped steps

    def can_skip(self) -> bool:
        """Whether a step whose gradients overflowed can be skipped and retried at a lower scale
        (False: the fp32 cpu backend, or the scale is at its floor: the run has diverged)."""
        return self.dynamic and self.scale > self.MIN_SCALE

    def update(self, finite: bool) -> bool:
        """Record one step's gradient health; True means skip this optimizer step."""
        if not self.dynamic:
            return False
        if not finite:
            self.scale = max(self.scale / 2.0, self.MIN_SCALE)
            self.clean = 0
            self.skipped += 1
            return True
        self.clean += 1
        if self.clean >= self.interval:
            self.scale *= 2.0
            self.clean = 0
        return False

    def state(self) -> dict:
        return {
            "scale": self.scale,
            "clean": self.clean,
            "skipped": self.skipped,
            "dynamic": self.dynamic,
        }

    def set_state(self, st: dict) -> None:
        """Continue a saved run's scaling, if it was of the same kind (fp16 dynamic or fp32 fixed).

        A state saved by the other kind is ignored: resuming a cpu run on sim/ane must start
        at this scaler's scale, not the cpu's 1 (under which fp16 gradients vanish, upstream.md
        §8.1), and an fp16 run's scale means nothing to the cpu backend. (States saved before
        "dynamic" was recorded: a fixed scaler never leaves scale 1, clean 0, skipped 0.)
        """
        saved_dynamic = st.get("dynamic", (st["scale"], st["clean"], st["skipped"]) != (1.0, 0, 0))
        if bool(saved_dynamic) != self.dynamic:
            return
        self.scale, self.clean, self.skipped = (
            float(st["scale"]),
            int(st["clean"]),
            int(st["skipped"]),
        )


class WeightCopies(Protocol):
    """Copies a backend keeps of the fp32 masters (the ANE's fp16 weight surfaces)."""

    def sync(self) -> None:
        """Wait until nothing is still reading the masters (weight staging in flight)."""
        ...

    def update_weights(self) -> None:
        """Refresh the copies from the masters after an update."""
        ...


def optimizer_step(opt: AdamW, grads: FlatParams, copies: WeightCopies, scaler: LossScaler,
                   lr: float, norm: float, unscale: float, clip: float) -> bool:  # fmt: skip
    """The one optimizer step: skip it when the gradients overflowed (the scaler halves its scale),
    else AdamW with the unscaling and the clip factor folded into the gradient scale, between
    syncing and refreshing the backend's weight copies. norm: the global norm of unscale * grads.
    Returns True when the step was skipped."""
    skipped = scaler.update(math.isfinite(norm))
    if not skipped:
        copies.sync()  # no weight staging may still be reading the masters
        opt.step(grads, lr, grad_scale=unscale * clip_factor(norm, clip))
        copies.update_weights()
    return skipped
