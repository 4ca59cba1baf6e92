"""python -m anetrain.bench cpu: cpu-backend steps vs PyTorch eager; fp16 conversion speed."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from anetrain import native
from anetrain.backends.cpu import CpuKernels
from anetrain.bench._args import nonneg_int, positive_int
from anetrain.cli import run_cli
from anetrain.config import default_threads, preset
from anetrain.errors import UserError
from anetrain.model import micro_step
from anetrain.optim import AdamW, LossScaler, grad_norm, optimizer_step
from anetrain.params import init_params

# Pause before each timed call: thread pools (torch's OpenMP, OpenBLAS) keep spinning for a while
# after a parallel region and would steal the cores from whichever side runs next.
SETTLE_S = 0.3


def _median_ms(times: list[float]) -> float:
    return 1000.0 * statistics.median(times)


def anetrain_stepper(cfg, seed: int, threads: int):
    """A closure running one full optimizer step (1 sequence: fwd, bwd, clip, AdamW)."""
    rng = np.random.default_rng(seed)
    params = init_params(cfg, rng)
    grads = params.zeros_like()
    kern = CpuKernels(cfg, params)
    opt = AdamW(params, threads=threads)
    fp32 = LossScaler(1.0, dynamic=False)  # the cpu backend's: never skips
    toks = rng.integers(0, cfg.vocab_size, (16, cfg.seq_len + 1)).astype(np.int32)
    it = [0]

    def step() -> float:
        w = toks[it[0] % len(toks)]
        it[0] += 1
        loss = micro_step(params, grads, kern, w[:-1], w[1:], accumulate=False)
        norm = grad_norm(grads, 1.0, threads)
        optimizer_step(opt, grads, kern, fp32, 3e-4, norm, 1.0, 1.0)
        return loss

    return step, params


def _torch_llama():
    """tests/support/torch_llama.py, the PyTorch model the tests use as oracle (a benchmark is a
    developer's tool, run from a source checkout; the package itself never imports torch)."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "tests" / "support" / "torch_llama.py"
    if not path.is_file():
        raise UserError(f"{path}: not found; the PyTorch comparison runs from a source checkout "
                        "(pip install -e .)")
    spec = importlib.util.spec_from_file_location("torch_llama", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_stepper(cfg, params, seed: int):
    """The same model in PyTorch eager fp32 with AdamW(fused=True) and clip_grad_norm_."""
    import torch

    TorchLlama = _torch_llama().TorchLlama

    model = TorchLlama(cfg, params)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=3e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=True,
    )
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, cfg.vocab_size, (16, cfg.seq_len + 1), generator=g)
    it = [0]

    def step() -> float:
        w = toks[it[0] % len(toks)]
        it[0] += 1
        opt.zero_grad(set_to_none=True)
        loss = model(w[:-1], w[1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    return step


def bench_steps(name: str, reps: int, threads: int, use_torch: bool) -> dict:
    return compare_steps(name, preset(name, vocab_size=32000, seq_len=256), reps, threads,
                         use_torch)  # fmt: skip


def compare_steps(name: str, cfg, reps: int, threads: int, use_torch: bool) -> dict:
    """Median optimizer-step time of the cpu backend and (use_torch) of PyTorch eager with
    fused AdamW on the same model, the two alternated so that both see the same machine load."""
    ours, params = anetrain_stepper(cfg, 0, threads)
    theirs = torch_stepper(cfg, params, 0) if use_torch else None
    ours()  # warm-up (allocations, BLAS buffers)
    if theirs:
        theirs()
    t_ours, t_torch = [], []
    for _ in range(reps):  # alternate so both see the same machine load
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t0)
        if theirs:
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            theirs()
            t_torch.append(time.perf_counter() - t0)
    res = {
        "model": name,
        "params_m": round(cfg.n_params() / 1e6, 2),
        "reps": reps,
        "anetrain_ms": round(_median_ms(t_ours), 1),
    }
    if theirs:
        res["torch_ms"] = round(_median_ms(t_torch), 1)
        res["ratio"] = round(res["anetrain_ms"] / res["torch_ms"], 3)
    return res


def bench_fp16(n: int, reps: int, threads: int, use_torch: bool) -> dict:
    """fp32 -> fp16 throughput in GB/s of fp32 input read, median over reps.

    anetrain and torch copy_ (both into preallocated outputs) alternate; numpy's astype, which
    allocates a fresh output each call, is timed afterwards so its allocations do not disturb them.
    """
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    out = np.empty(n, dtype=np.uint16)
    cases = {"anetrain": lambda: native.f32_to_f16(x, out=out, threads=threads)}
    if use_torch:
        import torch

        tx, th = torch.from_numpy(x), torch.empty(n, dtype=torch.float16)
        cases["torch_copy"] = lambda: th.copy_(tx)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for k in cases:
        cases[k]()
    for _ in range(reps):
        for k, fn in cases.items():
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    times["numpy_astype"] = []
    for _ in range(3):
        t0 = time.perf_counter()
        x.astype(np.float16)
        times["numpy_astype"].append(time.perf_counter() - t0)
    res = {"n": n, "impl": native.best_impl()}
    for k, ts in times.items():
        res[f"{k}_gbs"] = round(4 * n / statistics.median(ts) / 1e9, 2)
    return res


def bench(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="python -m anetrain.bench cpu", description=__doc__)
    ap.add_argument("--models", default="stories110m,stories15m", help="comma-separated presets")
    ap.add_argument(
        "--reps", type=positive_int, default=5, help="timed steps per model (after 1 warm-up)"
    )
    ap.add_argument(
        "--threads", type=nonneg_int, default=0, help="threads for C ops (0 = all cores)"
    )
    ap.add_argument(
        "--fp16-n", type=positive_int, default=1 << 26, help="values converted per fp16 trial"
    )
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    for name in names:  # a bad name fails now, not after minutes of benchmarking the others
        preset(name)
    threads = args.threads or default_threads()
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            use_torch = False
            print(
                "note: PyTorch comparison skipped: torch is not installed (pip install torch "
                "to add it)",
                file=sys.stderr,
            )
    report = {"threads": threads, "torch": use_torch, "steps": [], "fp16": None}
    for name in names:
        r = bench_steps(name, args.reps, threads, use_torch)
        report["steps"].append(r)
        if not args.json:
            line = f"{name:12s} {r['params_m']:7.2f}M  anetrain {r['anetrain_ms']:8.1f} ms/step"
            if "torch_ms" in r:
                line += f"  torch {r['torch_ms']:8.1f} ms/step  ratio {r['ratio']:.3f}"
            print(line, flush=True)
    report["fp16"] = f = bench_fp16(args.fp16_n, 11, threads, use_torch)
    if args.json:
        print(json.dumps(report))
    else:
        line = f"fp32->fp16 ({f['n']:,} values, {f['impl']}): anetrain {f['anetrain_gbs']} GB/s, "
        line += f"numpy astype {f['numpy_astype_gbs']} GB/s"
        if "torch_copy_gbs" in f:
            line += f", torch copy_ {f['torch_copy_gbs']} GB/s"
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.bench cpu", bench, argv)
