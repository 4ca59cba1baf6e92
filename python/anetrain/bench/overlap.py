"""python -m anetrain.bench overlap: kernel time vs the CPU critical path on a latency-model ANE."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

from anetrain.bench._args import kernel_scale, nonneg_int, positive_int
from anetrain.cli import run_cli
from anetrain.config import default_threads

# Every kernel evaluation sleeps for a modelled ANE time (LatencyRuntime); everything else (RMSNorm,
# packing, classifier, CE, dW sgemms on the low-priority workers, AdamW, weight staging) runs for
# real through MilKernels and model.micro_step. Per step it reports
#   step       wall time of the step
#   kernel     sum of the evaluation times (the sleeps as measured)
#   cpu busy   process CPU time, all threads (main, dW workers, staging, BLAS)
#   critical   main-thread CPU time between dependent evaluations: each evaluation needs the host
#              work before it (pack, norms, residuals, SiLU', RoPE', classifier), so on the one
#              main thread all of it sits between consecutive evaluations; measured per gap with
#              time.thread_time (BLAS is pinned to one thread per thread, and the global norm
#              and AdamW run single-threaded on the main thread, so that this is exact; train.py
#              runs those two over --threads, which shortens both step and critical path)
#   ratio      step / (kernel + critical): 1.0 = everything else is hidden behind evaluations
#   floor      the best ratio any schedule could reach on this host, the larger of two bounds:
#              capacity    CPU busy / cores / (kernel + critical): no step is shorter than all of
#                          its CPU work spread over all cores
#              dependency  a layer's dW sgemms can start only once the backward pass reaches it,
#                          and the optimizer needs every gradient. Cores x (backward kernel time +
#                          backward critical path) - backward critical path is all the CPU the dW
#                          jobs submitted during the backward can get before it ends; the rest of
#                          their measured CPU time, over the cores, is a wait no schedule avoids
#
# Default kernel times: upstream.md §7, M4, dynamic pipeline `cb474e1`: forward evaluations 21 ms
# and backward 28 ms per Stories110M step. Each evaluation = a fixed dispatch cost (0.095 ms,
# §7 "XPC+IOKit overhead per dispatch") plus the rest of its phase's time split by FLOPs.
M4_FWD_MS, M4_BWD_MS, DISPATCH_MS = 21.0, 28.0, 0.095
# M4 CPU sgemm rate implied by the same commit's "cls 13 ms": two classifier sgemms over the
# compacted 9.2K vocabulary, 2·2·9200·768·256 FLOP (upstream.md §5.8, §7). Used only by
# --kernel-scale host, which slows the modelled ANE by (M4 CPU rate / this host's rate).
M4_CPU_GFLOPS = 2 * 2 * 9200 * 768 * 256 / 13e-3 / 1e9
FWD = ("sdpaFwd", "woFwd", "ffnFused")
# cores this process may run on (Linux: its affinity mask)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else default_threads()


def kernel_flops(cfg) -> dict[str, float]:
    """FLOPs of one evaluation of each kernel (matmuls only)."""
    S, D, Q, KV, F = cfg.seq_len, cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.hidden_dim
    att = 2 * cfg.n_heads * S * S * cfg.head_dim  # one [S,S]x[S,HD] product over all heads
    return {"sdpaFwd": 2 * S * D * (Q + 2 * KV) + 2 * att, "woFwd": 2 * S * Q * D,
            "ffnFused": 3 * 2 * S * D * F, "ffnBwdW2t": 2 * S * D * F, "ffnBwdW13t": 4 * S * F * D,
            "wotBwd": 2 * S * D * Q, "sdpaBwd1": 3 * att, "sdpaBwd2": 2 * att,
            "qBwd": 2 * S * Q * D, "kvBwd": 4 * S * KV * D}  # fmt: skip


def m4_seconds(cfg, scale: float = 1.0) -> dict[str, float]:
    """Seconds per evaluation: M4 phase totals (scaled from 12 layers) split as described above."""
    flops = kernel_flops(cfg)
    out = {}
    for names, total_ms in ((FWD, M4_FWD_MS), (tuple(n for n in flops if n not in FWD), M4_BWD_MS)):
        per_layer = total_ms / 12  # upstream's figures are for 12 layers
        work = per_layer - DISPATCH_MS * len(names)
        fl = sum(flops[n] for n in names)
        for n in names:
            out[n] = scale * (DISPATCH_MS + work * flops[n] / fl) / 1e3
    return out


def host_gflops(cfg, repeat: int = 3) -> float:
    """Single-thread sgemm rate of this host on the M4 reference shape [9200, D] x [D, S]."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((9200, cfg.dim), dtype=np.float32)
    b = np.ones((cfg.dim, cfg.seq_len), np.float32)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 9200 * cfg.dim * cfg.seq_len / best / 1e9


def timed_pool(workers: int):
    """A DwPool whose jobs_log gets (perf_counter at submit, worker CPU seconds) of every job.

    (Built here, not at import: anetrain.model loads numpy, which must wait for main() to pin the
    BLAS threads.)
    """
    from anetrain.model import DwPool

    class TimedDwPool(DwPool):
        def __init__(self, workers: int) -> None:
            super().__init__(workers)
            self.jobs_log: list[tuple[float, float]] = []

        def submit(self, fn, /, *args):
            t_submit = time.perf_counter()

            def timed():
                c0 = time.thread_time()  # waiting on earlier jobs (DwPool._after) uses no CPU
                try:
                    return fn(*args)
                finally:
                    self.jobs_log.append((t_submit, time.thread_time() - c0))

            return super().submit(timed)

    return TimedDwPool(workers)


def dependency_floor(log: list, jobs: list[tuple[float, float]], kernel: float, crit: float,
                     cores: int) -> tuple[float, float, float]:  # fmt: skip
    """(floor, dW CPU submitted during the last backward, CPU room the backward left them).

    log: one step's evaluations (LatencyRuntime.log), jobs: its dW jobs (timed_pool's jobs_log).
    The backward window runs from the last micro-step's first backward evaluation to the last
    evaluation; its ideal length is its kernel time + the main-thread CPU between them.
    """
    bwd = log[max(i for i, e in enumerate(log) if e[0] in FWD) + 1 :]  # after the last forward
    k_bwd = sum(e[4] - e[3] for e in bwd)  # evaluation wall times
    c_bwd = sum(b[1] - a[2] for a, b in zip(bwd, bwd[1:]))  # main CPU between them
    work = sum(cpu for t, cpu in jobs if t >= bwd[0][3])  # jobs submitted after it began
    room = cores * (k_bwd + c_bwd) - c_bwd
    return (kernel + crit + max(0.0, work - room) / cores) / (kernel + crit), work, room


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _setup(cfg, rng, kern_of, workers: int, lora):
    """(micro_step's Gradients, what AdamW trains, its gradients, the weight copies the optimizer
    refreshes, kernels, dW pool, the weights the kernels read), as train.py sets them up; with a
    LoraConfig the adapters are trained over frozen weights holding W + s·B·A (lora.Staged,
    lora.LoraGrads: no dW of frozen weights, rank-r dA, dB instead)."""
    from anetrain.lora import LoraGrads, Staged, init_lora, keep_frozen
    from anetrain.model import FullGrads
    from anetrain.optim import AdamW
    from anetrain.params import init_params

    params = init_params(cfg, rng)
    if lora is None:
        trained = params
        tgrads = params.zeros_like()
        grads = FullGrads(tgrads)
    else:
        trained = init_lora(cfg, lora, rng)
        frozen = keep_frozen(params, trained)
        tgrads = trained.zeros_like()
        grads = LoraGrads(trained, tgrads)
    opt = AdamW(trained, 0.9, 0.95, 1e-8, 0.1)
    kern = kern_of(params)
    copies = kern if lora is None else Staged(kern, params, trained, frozen)
    return grads, opt, tgrads, copies, kern, timed_pool(workers), params


def run(cfg, seconds: dict[str, float], steps: int, accum: int, workers: int = 0,
        seed: int = 0, lora=None) -> dict:  # fmt: skip
    """Warm-up step + `steps` measured steps; per-step figures and the gap breakdown.
    lora: a lora.LoraConfig to model a LoRA step (adapters over frozen weights) instead."""
    import numpy as np

    from anetrain.backends.mil import MilKernels
    from anetrain.bench.latency import LatencyRuntime
    from anetrain.model import micro_step
    from anetrain.optim import LossScaler, grad_norm, optimizer_step

    rng = np.random.default_rng(seed)
    rt = LatencyRuntime(seconds)
    grads, opt, tgrads, copies, kern, pool, params = _setup(
        cfg, rng, lambda w: MilKernels(cfg, w, rt), workers, lora)  # fmt: skip
    scaler = LossScaler(4096.0)  # as train.py on sim/ane
    rows, gaps = [], {}
    try:
        for step in range(steps + 1):
            tok = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1)
            rt.log.clear()
            pool.jobs_log.clear()
            e0, c_all0 = rt.eval_seconds, _cpu()
            c_main0, t_start = time.thread_time(), time.perf_counter()
            for m in range(accum):
                last = m == accum - 1  # dW jobs of earlier micro-steps run on behind later ones
                micro_step(params, grads, kern, tok[:-1], tok[1:], m > 0, scaler.scale, pool,
                           last)  # fmt: skip
            unscale = 1.0 / (accum * scaler.scale)  # as train.py (1 thread): norm, clip, AdamW
            norm = grad_norm(tgrads, unscale)
            optimizer_step(opt, tgrads, copies, scaler, 1e-4, norm, unscale, 1.0)
            c_main1, t_end = time.thread_time(), time.perf_counter()
            # gaps: (previous evaluation or step start) -> (next evaluation or step end)
            marks = [("start", c_main0, c_main0, t_start, t_start)] + rt.log + \
                    [("end", c_main1, c_main1, t_end, t_end)]  # fmt: skip
            step_gaps = [(a[0], b[0], b[1] - a[2], b[3] - a[4]) for a, b in zip(marks, marks[1:])]
            crit = sum(g[2] for g in step_gaps)
            row = {"step": t_end - t_start, "kernel": rt.eval_seconds - e0, "critical": crit,
                   "cpu_busy": _cpu() - c_all0, "main_cpu": c_main1 - c_main0,
                   "evals": len(rt.log)}  # fmt: skip
            row["ratio"] = row["step"] / (row["kernel"] + row["critical"])
            # no schedule can finish the step before all of its CPU work has run on these cores
            row["cap_floor"] = max(1.0, row["cpu_busy"] / CORES / (row["kernel"] + crit))
            # (micro_step's last call waited for every dW job, so all of them are logged)
            row["dep_floor"], row["dw_bwd"], row["dw_room"] = dependency_floor(
                rt.log, pool.jobs_log, row["kernel"], crit, CORES)  # fmt: skip
            row["floor"] = max(row["cap_floor"], row["dep_floor"])
            if step:  # the first step warms caches and allocations
                rows.append(row)
                for prev, nxt, c, w in step_gaps:
                    g = gaps.setdefault((prev, nxt), [0.0, 0.0, 0])
                    g[0], g[1], g[2] = g[0] + c, g[1] + w, g[2] + 1
    finally:
        kern.close()
        pool.shutdown()
    return {"rows": rows, "gaps": gaps, "stage_each": kern.stage_seconds / kern.stagings}


def _kernel_seconds(args: argparse.Namespace, cfg) -> dict[str, float]:
    """Evaluation seconds per kernel: --kernel-times or the M4 defaults, times --kernel-scale."""
    if args.kernel_scale == "host":
        g = host_gflops(cfg)
        scale = M4_CPU_GFLOPS / g
        print(f"host sgemm {g:.1f} GFLOP/s vs M4 {M4_CPU_GFLOPS:.0f}: kernel times x{scale:.2f}")
    else:
        scale = float(args.kernel_scale)  # validated by kernel_scale
    if not args.kernel_times:
        return m4_seconds(cfg, scale)
    from anetrain import probe_report

    doc = probe_report.load(args.kernel_times)
    measured = probe_report.kernel_seconds(doc, cfg.to_dict(), args.kernel_times)
    print(f"kernel times: {args.kernel_times} ({doc['runtime']}, {doc['chip']})")
    return {n: scale * s for n, s in measured.items()}


def bench(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m anetrain.bench overlap", description=__doc__)
    p.add_argument("--model", default="stories110m")
    p.add_argument("--steps", type=positive_int, default=3,
                   help="measured steps after one warm-up (3)")
    p.add_argument("--accum", type=positive_int, default=1,
                   help="micro-steps per optimizer step (1)")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="default: the preset's (32000)")
    p.add_argument("--kernel-scale", type=kernel_scale, default=1.0,
                   help="multiply the M4 kernel times by this, or 'host': by the M4 CPU's sgemm "
                        "rate over this host's (an ANE as much faster than this CPU as the M4's)")
    p.add_argument("--kernel-times", metavar="PROBE.json", default=None,
                   help="evaluation times measured by `python -m anetrain probe --json` for this "
                        "model's shape, instead of the M4 defaults (--kernel-scale multiplies "
                        "them too)")
    p.add_argument("--dw-workers", type=nonneg_int, default=0,
                   help="dW worker threads (0 = one per core, as training uses)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="BLAS threads per thread (1, as training on sim/ane uses; also makes "
                        "per-thread CPU times exact)")
    p.add_argument("--lora-rank", type=positive_int, default=None, metavar="R",
                   help="model a LoRA step: rank-R adapters over frozen weights (no dW sgemms "
                        "but the rank-R dA, dB products)")
    p.add_argument("--lora-targets", default="q,v", metavar="LIST",
                   help="adapted matrices with --lora-rank (q,v)")
    args = p.parse_args(argv)
    if "numpy" in sys.modules:
        print("note: numpy was imported before the bench; BLAS thread count not pinned")
    from anetrain.train import BLAS_VARS  # numpy-free

    for var in BLAS_VARS:  # the flag is explicit, so it wins over the environment here
        os.environ[var] = str(args.threads)

    from anetrain.config import preset

    cfg = preset(args.model, vocab_size=args.vocab_size)  # None = the preset's
    seconds = _kernel_seconds(args, cfg)
    workers = args.dw_workers or default_threads()  # as train.py sizes its DwPool
    lora = None
    if args.lora_rank is not None:
        from anetrain.lora import LoraConfig

        lora = LoraConfig(args.lora_rank, targets=tuple(args.lora_targets.split(",")))
        print(f"LoRA: rank {lora.rank} on {','.join(lora.targets)} (frozen weights: no dW)")
    print(f"{args.model}: {cfg.n_layers} layers, dim {cfg.dim}, vocab {cfg.vocab_size}, seq "
          f"{cfg.seq_len}; accum {args.accum}; BLAS threads {args.threads}; {workers} dW workers; "
          f"{CORES} cores")
    print("modelled evaluation ms: " + ", ".join(f"{n} {1e3 * s:.3f}" for n, s in seconds.items()))
    res = run(cfg, seconds, args.steps, args.accum, workers, lora=lora)
    rows = res["rows"]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\nmedian of {len(rows)} steps ({int(med['evals'])} evaluations each):")
    print(f"  step time            {1e3 * med['step']:9.1f} ms")
    print(f"  total kernel time    {1e3 * med['kernel']:9.1f} ms")
    print(f"  total CPU busy time  {1e3 * med['cpu_busy']:9.1f} ms (all threads; main thread "
          f"{1e3 * med['main_cpu']:.1f})")
    print(f"  CPU critical path    {1e3 * med['critical']:9.1f} ms")
    print(f"  ratio step / (kernel + critical) = {med['ratio']:.3f}")
    print(f"  floor of this host                 = {med['floor']:.3f} (the best ratio any "
          "schedule could reach here; the larger of:)")
    print(f"    capacity   {med['cap_floor']:.3f}  CPU busy / {CORES} cores / (kernel + critical)")
    print(f"    dependency {med['dep_floor']:.3f}  the last backward pass queues "
          f"{1e3 * med['dw_bwd']:.1f} ms of dW CPU; {CORES} cores leave them "
          f"{1e3 * med['dw_room']:.1f} ms before it ends, the rest is waited for")
    n = len(rows)
    top = sorted(res["gaps"].items(), key=lambda kv: -kv[1][0])[:8]
    print("\nwhere the critical path goes (largest gaps, per step: main CPU / wall ms):")
    for (a, b), (c, w, k) in top:
        print(f"  {a:>10s} -> {b:<10s} x{k // n:<3d} {1e3 * c / n:8.1f} / {1e3 * w / n:8.1f}")
    off = med["cpu_busy"] - med["main_cpu"]
    wait = med["step"] - med["kernel"] - med["main_cpu"]
    print(f"\noff the critical path: {1e3 * off:.1f} ms CPU per step on other threads (dW "
          f"sgemms, classifier gradient; weight staging {1e3 * res['stage_each']:.1f} ms of it)")
    print(f"main thread neither computing nor evaluating: {1e3 * wait:.1f} ms per step (waiting "
          "for dW jobs / staging, or descheduled: the part not hidden)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.bench overlap", bench, argv)


if __name__ == "__main__":
    sys.exit(main())
