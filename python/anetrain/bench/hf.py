"""python -m anetrain.bench hf: Hugging Face shapes: cpu vs PyTorch, simulator, latency model."""

from __future__ import annotations

import argparse
import json
import sys

from anetrain.bench._args import positive_int
from anetrain.cli import run_cli
from anetrain.config import ModelConfig
from anetrain.errors import UserError

# The shapes people fine-tune (random weights; config.json values of the released models).
SHAPES: dict[str, ModelConfig] = {
    "smollm2-135m": ModelConfig(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                                vocab_size=49152, seq_len=256, rope_theta=100000.0),
    "smollm2-360m": ModelConfig(dim=960, n_layers=32, n_heads=15, n_kv_heads=5, hidden_dim=2560,
                                vocab_size=49152, seq_len=256, rope_theta=100000.0),
    "tinyllama-1.1b": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                                  hidden_dim=5632, vocab_size=32000, seq_len=256),
    "qwen3-0.6b": ModelConfig(dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, hidden_dim=3072,
                              vocab_size=151936, seq_len=256, rope_theta=1000000.0,
                              norm_eps=1e-6, head_size=128, qk_norm=True),
}  # fmt: skip


def shape(name: str) -> ModelConfig:
    try:
        return SHAPES[name]
    except KeyError:
        raise UserError(f"unknown shape {name!r} (choose from {', '.join(SHAPES)})") from None


def sim_figures(cfg: ModelConfig, layers: int) -> dict:
    """Simulated kernel evaluations of one micro-step of the first `layers` layers, and the
    latency-model step (M4 kernel times) of the same shape; or why the MIL kernels refuse it."""
    from anetrain.bench import overlap, sim
    from anetrain.mil.errors import MilError

    small = cfg.replace(n_layers=min(layers, cfg.n_layers))
    try:
        sim_s, _, compile_s = sim.time_sim(small, "fp32", 1)
        rows = overlap.run(small, overlap.m4_seconds(small), steps=1, accum=1)["rows"]
    except (MilError, UserError) as e:
        return {"sim": f"not available: {e}"}
    per_layer = sim_s / small.n_layers
    return {"sim_layers": small.n_layers, "sim_s_per_layer": round(per_layer, 3),
            "sim_compile_s": round(compile_s, 3),
            "latency_ratio": round(rows[-1]["ratio"], 3)}  # fmt: skip


def bench(argv: list[str] | None) -> int:
    from anetrain.bench.cpu import compare_steps
    from anetrain.phases import peak_rss_mb

    ap = argparse.ArgumentParser(prog="python -m anetrain.bench hf", description=__doc__)
    ap.add_argument("--shape", default="smollm2-135m", help=f"one of {', '.join(SHAPES)}")
    ap.add_argument("--reps", type=positive_int, default=5, help="timed steps per side (5)")
    ap.add_argument("--threads", type=positive_int, default=None, help="threads (all cores)")
    ap.add_argument("--sim-layers", type=positive_int, default=2,
                    help="layers simulated for the sim and latency-model figures (2)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    from anetrain.config import default_threads

    cfg = shape(args.shape)
    res = compare_steps(args.shape, cfg, args.reps, args.threads or default_threads(),
                        not args.no_torch)  # fmt: skip
    res["peak_rss_mb"] = round(peak_rss_mb())
    res.update(sim_figures(cfg, args.sim_layers))
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:18s} {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.bench", bench, argv)


if __name__ == "__main__":
    sys.exit(main())
