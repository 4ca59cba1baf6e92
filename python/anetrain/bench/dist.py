"""python -m anetrain.bench dist (under mpirun -n N): all-reduce cost, N ranks vs 1, scaling."""

# ruff: noqa: E402 - the BLAS thread count is fixed below, before numpy (and so BLAS) loads

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from anetrain import dist
from anetrain.train import BLAS_VARS  # numpy-free

if dist.launched_size() > 1:  # before numpy loads: each rank's BLAS on its share of the cores
    for _var in BLAS_VARS:
        os.environ.setdefault(_var, str(dist.cores_per_rank()))

import numpy as np

from anetrain.backends.cpu import CpuKernels
from anetrain.bench._args import positive_int
from anetrain.cli import run_cli
from anetrain.config import PRESETS, preset
from anetrain.errors import UserError
from anetrain.model import micro_step
from anetrain.optim import AdamW, LossScaler, grad_norm, optimizer_step
from anetrain.params import init_params

# Links between Macs, as (bytes/s a ring all-reduce sustains, latency of one ring hop in s). An
# assumption, not a measurement: 10 GbE carries ~1.1 GB/s of TCP payload at ~30 us a hop;
# Thunderbolt 5 (80 Gb/s) ~8 GB/s through its IP bridge at ~10 us.
LINKS = {"10 GbE": (1.1e9, 30e-6), "Thunderbolt 5": (8e9, 10e-6)}
MACS = (2, 4, 8)


def ring_allreduce_s(n: int, nbytes: int, bandwidth: float, hop_s: float) -> float:
    """A ring all-reduce of nbytes over n ranks: 2(n-1)/n of the buffer crosses each link, in
    2(n-1) hops."""
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * hop_s


def _slowest_median(world: dist.World, fn: Callable[[], None], reps: int) -> float:
    """Median over reps of the slowest rank's time of fn (s); ranks start together."""
    from mpi4py import MPI

    times = []
    for _ in range(reps):
        world.comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(world.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return statistics.median(times)


def _allreduce_table(world: dist.World, models: list[str], reps: int) -> None:
    """All-reduce time and bandwidth of each model's fp32 gradient buffer over this launch."""
    n = world.size
    print(f"all-reduce of the fp32 gradient buffer over {n} ranks (in place, median of {reps}):")
    for name in models:
        flat = np.ones(preset(name).n_params(), dtype=np.float32)  # [n_params]
        world.sum_grads(flat, (), [])  # warm-up: connections, pinned pages
        s = _slowest_median(world, lambda f=flat: world.sum_grads(f, (), []), reps)
        bus = 2 * (n - 1) / n * flat.nbytes / s
        print(f"  {name:12s} {flat.nbytes / 1e6:8.1f} MB  {s * 1e3:8.2f} ms  "
              f"{flat.nbytes / s / 1e9:6.2f} GB/s algorithm, {bus / 1e9:6.2f} GB/s bus")


class _Stepper:
    """One model's optimizer steps on the cpu backend: micro-steps, the all-reduce over the
    ranks that train, the norm and AdamW (what train.py does a step)."""

    def __init__(self, name: str, threads: int, world: dist.World) -> None:
        self.cfg, self.world, self.threads = preset(name), world, threads
        rng = np.random.default_rng(0)
        self.params = init_params(self.cfg, rng)
        self.grads = self.params.zeros_like()
        self.kern = CpuKernels(self.cfg, self.params)
        self.opt = AdamW(self.params, threads=threads)
        self.toks = rng.integers(0, self.cfg.vocab_size, (8, self.cfg.seq_len + 1)).astype(
            np.int32)  # [8, S + 1]  # fmt: skip

    def micro(self, i: int) -> None:
        w = self.toks[i % len(self.toks)]
        micro_step(self.params, self.grads, self.kern, w[:-1], w[1:], accumulate=i > 0)

    def update(self) -> None:
        norm = grad_norm(self.grads, 1.0, self.threads)
        optimizer_step(self.opt, self.grads, self.kern, LossScaler(1.0, dynamic=False), 1e-5,
                       norm, 1.0, 1.0)  # fmt: skip

    def step(self, accum: int, together: bool) -> None:
        for i in range(accum):
            self.micro(i)
        if together:
            self.world.sum_grads(self.grads.flat, (), [])
        self.update()


def _step_table(world: dist.World, name: str, accum: int, reps: int, threads: int) -> tuple:
    """Step time of 1 rank × N·accum against N ranks × accum (the same global batch); returns
    (micro-step s, update s) of one rank, for the estimate."""
    n, stepper = world.size, _Stepper(name, threads, world)
    alone = (lambda: stepper.step(n * accum, False)) if world.writer else (lambda: None)
    stepper.step(1, True)  # warm-up
    one = _slowest_median(world, alone, reps)
    many = _slowest_median(world, lambda: stepper.step(accum, True), reps)
    micro = _slowest_median(world, lambda: stepper.micro(1), reps)
    update = _slowest_median(world, stepper.update, reps)
    print(f"\n{name}, cpu backend, {threads} thread{'s' if threads > 1 else ''} a rank, "
          f"{n * accum} sequences a step:")
    print(f"  1 rank  x --accum {n * accum:<3d} {one * 1e3:9.1f} ms a step")
    print(f"  {n} ranks x --accum {accum:<3d} {many * 1e3:9.1f} ms a step  ({one / many:.2f}x; "
          f"ranks on one machine share its cores and memory bandwidth)")  # fmt: skip
    return micro, update


def _estimate(name: str, micro: float, update: float, accum: int) -> None:
    """Scaling efficiency of N Macs at --accum accum, each as fast as this rank: one Mac's
    step time over the step time of N (the same work per Mac plus one ring all-reduce)."""
    nbytes = 4 * preset(name).n_params()
    alone = accum * micro + update
    print(f"\nestimate for {name} at --accum {accum} ({alone * 1e3:.0f} ms a step on one Mac, "
          f"{nbytes / 1e6:.0f} MB of gradients), ring all-reduce model "
          "2(N-1)/N x bytes / bandwidth + 2(N-1) x hop latency:")
    for link, (bandwidth, hop_s) in LINKS.items():
        cells = []
        for n in MACS:
            eff = alone / (alone + ring_allreduce_s(n, nbytes, bandwidth, hop_s))
            cells.append(f"{n} Macs {100 * eff:5.1f}%")
        print(f"  {link:14s} ({bandwidth / 1e9:.1f} GB/s, {hop_s * 1e6:.0f} us a hop): "
              + ", ".join(cells))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain.bench dist",
        description="Run under mpirun -n N (N >= 2): the gradient all-reduce's time and bandwidth, "
        "the step time of N ranks against 1 at the same global batch, and an estimate of the "
        "scaling efficiency of 2, 4 and 8 Macs over 10 GbE and Thunderbolt 5.",
    )
    p.add_argument("--buffers", default="stories15m,stories110m",
                   help="presets whose gradient buffers are all-reduced (stories15m,stories110m)")
    p.add_argument("--model", default="stories15m", choices=list(PRESETS),
                   help="preset of the step timing and the estimate (stories15m)")
    p.add_argument("--accum", type=positive_int, default=2,
                   help="sequences a rank of the N-rank step (2; the 1-rank step does N times)")
    p.add_argument("--target-accum", type=positive_int, default=10,
                   help="--accum of the estimate (10)")
    p.add_argument("--micro-ms", type=float, default=None,
                   help="one micro-step's time for the estimate instead of this cpu rank's "
                   "(e.g. an ANE step's, from a run's phase_ms)")
    p.add_argument("--reps", type=positive_int, default=5, help="repetitions, median (5)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads a rank (default: the cores over the ranks on this machine)")
    return p  # fmt: skip


def bench(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    buffers = [b for b in args.buffers.split(",") if b]
    for b in buffers:
        if b not in PRESETS:
            raise UserError(f"--buffers: unknown preset {b!r} (choose from {', '.join(PRESETS)})")
    world = dist.connect()
    if world.size < 2:
        raise UserError("bench dist measures several ranks: run it under mpirun -n 2 (or more, "
                        "--oversubscribe on one machine)")  # fmt: skip
    world.quiet_others(False)  # rank 0 alone prints
    threads = args.threads or dist.cores_per_rank()
    _allreduce_table(world, buffers, args.reps)
    micro, update = _step_table(world, args.model, args.accum, args.reps, threads)
    if args.micro_ms is not None:
        micro = args.micro_ms / 1000.0
    _estimate(args.model, micro, update, args.target_accum)
    return 0


def main(argv: list[str] | None = None) -> int:
    return dist.finish(run_cli("anetrain.bench dist", bench, argv))


if __name__ == "__main__":
    sys.exit(main())
