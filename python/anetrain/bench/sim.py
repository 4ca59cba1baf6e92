"""python -m anetrain.bench sim: simulate the 120 kernel evaluations of a stories110m micro-step."""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from anetrain.bench._args import positive_int
from anetrain.cli import run_cli
from anetrain.config import preset
from anetrain.mil.errors import MilWarning
from anetrain.mil.kernels import KERNELS, build_specs
from anetrain.mil.sim import Simulation


def _inputs(spec, rng: np.random.Generator) -> np.ndarray:
    """A packed fp16 input with activation-like values and fan-in-scaled weights."""
    parts = {}
    for s in spec.inp.segments:
        if s.stage == "bcast":  # a norm weight [n] in every column
            w = 1.0 + 0.1 * rng.standard_normal((s.nch, 1), dtype=np.float32)
            parts[s.name] = np.broadcast_to(w, s.shape)
            continue
        scale = 1.0 / np.sqrt(s.weight_shape[1]) if s.stage else 1.0  # weights: fan-in
        parts[s.name] = rng.standard_normal(s.shape, dtype=np.float32) * scale
    if "P" in parts:  # attention probabilities: causal softmax rows
        S = spec.inp["P"].width
        p = np.exp(np.tril(parts["P"].reshape(-1, S, S)) - 1e4 * np.triu(np.ones((S, S)), 1))
        parts["P"] = (p / p.sum(-1, keepdims=True)).reshape(-1, S)
    return spec.inp.pack(parts)


def time_sim(cfg, accum: str, repeat: int, seed: int = 0) -> tuple[float, dict[str, float], float]:
    """(seconds per micro-step, seconds per kernel per layer, compile seconds)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    specs = build_specs(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MilWarning)
        sims = {n: Simulation(s.mil, s.weights, accum=accum) for n, s in specs.items()}
    t_compile = time.perf_counter() - t0
    inputs = {n: _inputs(s, rng) for n, s in specs.items()}
    for n in KERNELS:  # warm-up: first-touch allocations
        sims[n](inputs[n])
    per = {n: [] for n in KERNELS}
    totals = []
    for _ in range(repeat):
        t_step = 0.0
        for _layer in range(cfg.n_layers):
            for n in KERNELS:  # 3 forward + 7 backward evaluations per layer
                t = time.perf_counter()
                sims[n](inputs[n])
                dt = time.perf_counter() - t
                per[n].append(dt)
                t_step += dt
        totals.append(t_step)
    return statistics.median(totals), {n: statistics.median(v) for n, v in per.items()}, t_compile


def time_cpu(cfg, repeat: int, seed: int = 0) -> tuple[float | None, str]:
    """Median seconds of one cpu-backend micro-step (forward + backward of one sequence)."""
    try:
        from anetrain.backends.cpu import CpuKernels
        from anetrain.model import micro_step
        from anetrain.params import init_params
    except ImportError as e:
        return None, f"cpu backend not importable ({e})"
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng)
    grads = params.zeros_like()
    kern = CpuKernels(cfg, params)
    toks = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1).astype(np.int32)
    times = []
    for i in range(repeat + 1):
        t = time.perf_counter()
        micro_step(params, grads, kern, toks[:-1], toks[1:], accumulate=False)
        if i:  # the first step warms caches and thread pools
            times.append(time.perf_counter() - t)
    return statistics.median(times), "anetrain.model.micro_step + CpuKernels (full fwd+bwd)"


def bench(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m anetrain.bench sim", description=__doc__)
    ap.add_argument("--preset", default="stories110m")
    ap.add_argument("--repeat", type=positive_int, default=2, help="micro-steps to time (median)")
    ap.add_argument("--accum", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--no-cpu", action="store_true", help="skip the cpu micro-step")
    args = ap.parse_args(argv)
    cfg = preset(args.preset)
    sim_s, per, comp = time_sim(cfg, args.accum, args.repeat)
    n_eval = len(KERNELS) * cfg.n_layers
    print(f"sim: {args.preset}, {n_eval} kernel evaluations per micro-step (accum={args.accum})")
    print(f"  parse+check+prepare of the 10 programs: {comp * 1e3:.0f} ms (once)")
    for n in KERNELS:
        print(f"  {n:11s} {per[n] * 1e3:8.1f} ms/eval  x{cfg.n_layers}")
    print(f"sim micro-step (kernels only): {sim_s * 1e3:.0f} ms")
    if args.no_cpu:
        return 0
    cpu_s, what = time_cpu(cfg, args.repeat)
    if cpu_s is None:
        print(f"cpu micro-step: n/a — {what}")
        return 0
    print(f"cpu micro-step: {cpu_s * 1e3:.0f} ms  [{what}]")
    print(f"ratio sim/cpu: {sim_s / cpu_s:.2f}x  (target <= 10x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.bench sim", bench, argv)
