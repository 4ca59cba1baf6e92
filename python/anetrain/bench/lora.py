"""python -m anetrain.bench lora: LoRA vs full fine-tuning vs PEFT on cpu; latency-model ratio."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anetrain.bench._args import nonneg_int, positive_int
from anetrain.cli import run_cli
from anetrain.config import ModelConfig, default_threads, preset
from anetrain.errors import UserError

# Every measurement is one fresh child process (bench/lora_child.py), so that its peak RSS is its
# own; rounds alternate the sides (ours LoRA, ours full, PEFT) so that all see the same load.
#   ours-lora / ours-full  `python -m anetrain.train --init CKPT --backend cpu --steps K
#                          [--lora-rank R --lora-targets T]` on a weights-only checkpoint of random
#                          weights and random token windows; step time = metrics.jsonl's `ms`
#   peft                   transformers LlamaForCausalLM (same shape, random init, fp32) +
#                          peft.get_peft_model(LoraConfig(r=R, lora_alpha=2R, target_modules,
#                          lora_dropout=0)); forward, cross-entropy, backward, clip_grad_norm_,
#                          AdamW over the adapters
# The first step of every child is a warm-up, left out of the medians.
SIDES = ("ours-lora", "ours-full", "peft")
STEP_GOAL, RSS_GOAL = 0.85, 0.45  # issue 20: LoRA step / PEFT's, LoRA peak RSS / full's
SETTLE_S = 1.0  # between children: let the page cache writeback of the last one calm down
SHAPE_NOTE = "smollm2-360m and the other `bench hf` shapes, or a preset (tiny, stories15m, ...)"


def model_config(name: str, seq: int, vocab: int | None) -> ModelConfig:
    """A `bench hf` shape or a preset, at sequence length `seq` (and vocabulary `vocab`)."""
    from anetrain.bench.hf import SHAPES
    from anetrain.config import PRESETS

    if name not in SHAPES and name not in PRESETS:
        raise UserError(f"--shape {name!r}: not a shape ({', '.join(SHAPES)}) nor a preset "
                        f"({', '.join(PRESETS)})")  # fmt: skip
    cfg = SHAPES[name] if name in SHAPES else preset(name)
    if cfg.qk_norm:
        raise UserError(f"--shape {name}: the PEFT side builds a Llama model, which has no q/k "
                        "norm; pick a Llama-shaped model")  # fmt: skip
    return cfg.replace(seq_len=seq, vocab_size=vocab or cfg.vocab_size)


def write_inputs(cfg: ModelConfig, tmp: Path, seed: int) -> tuple[Path, Path]:
    """A weights-only checkpoint of random weights and a raw uint16 .bin of random token ids."""
    import numpy as np

    from anetrain.formats import checkpoint
    from anetrain.params import init_params

    if cfg.vocab_size > 65536:
        raise UserError(f"vocabulary {cfg.vocab_size}: the random token file is uint16 "
                        "(at most 65536)")  # fmt: skip
    rng = np.random.default_rng(seed)
    ckpt = tmp / "init.bin"
    checkpoint.save(ckpt, checkpoint.Checkpoint(checkpoint.RunState(cfg), init_params(cfg, rng)))
    data = tmp / "tokens.bin"
    rng.integers(0, cfg.vocab_size, 64 * (cfg.seq_len + 1), dtype=np.uint16).tofile(data)
    return ckpt, data


def _child_env() -> dict[str, str]:
    """This environment, with this anetrain first on the child's path."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])  # the directory holding anetrain/
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(kind: str, spec: dict, log: Path) -> dict:
    """Run one lora_child; its result, plus its peak RSS as the kernel saw it (wait4)."""
    cmd = [sys.executable, "-m", "anetrain.bench.lora_child", kind, json.dumps(spec)]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=_child_env(),
                                text=True)  # fmt: skip
        try:
            out = proc.stdout.read()
        except BaseException:  # a stop signal (Ctrl-C): the child goes too, not on by itself
            proc.kill()
            proc.wait()
            raise
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if code or not lines:
        tail = "; ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise UserError(f"bench lora: the {kind} measurement failed (exit {code}): "
                        f"{tail or 'no output'}")  # fmt: skip
    res = json.loads(lines[-1][len("RESULT ") :])
    rss = usage.ru_maxrss
    res["maxrss_mb"] = rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes or KiB
    return res


def measure(cfg: ModelConfig, args: argparse.Namespace, tmp: Path) -> dict[str, list[dict]]:
    """rounds x (ours-lora, ours-full, peft), each a fresh process; every child's result."""
    ckpt, data = write_inputs(cfg, tmp, args.seed)
    common = {"threads": args.threads, "steps": args.steps, "lora_rank": args.rank,
              "targets": args.targets, "seed": args.seed}  # fmt: skip
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for r in range(args.rounds):
        for side in SIDES:
            time.sleep(SETTLE_S)
            if side == "peft":
                spec = dict(common, model=cfg.to_dict(), attn=args.attn)
                kind = "peft"
            else:
                out = tmp / f"{side}-{r}"
                spec = dict(common, ckpt=str(ckpt), data=str(data), vocab=cfg.vocab_size,
                            run_dir=str(out))  # fmt: skip
                if side == "ours-full":
                    spec["lora_rank"] = 0
                kind = "ours"
            res = run_child(kind, spec, tmp / f"{side}-{r}.log")
            if kind == "ours":
                shutil.rmtree(out, ignore_errors=True)  # its checkpoint: 4x the model
            runs[side].append(res)
            if not args.quiet:
                print(f"  round {r + 1}/{args.rounds} {side:9s} median "
                      f"{statistics.median(res['ms'][1:]):9.1f} ms/step, peak RSS "
                      f"{res['hwm_train_mb']:8.0f} MB", flush=True)  # fmt: skip
    return runs


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per side: median step seconds over every timed step (warm-ups left out), steps timed,
    peak RSS (training; and the whole process, end-of-run checkpoint write included), max over
    rounds."""
    out = {}
    for side, rs in runs.items():
        ms = [t for r in rs for t in r["ms"][1:]]
        out[side] = {"step_s": statistics.median(ms) / 1000.0, "steps": len(ms),
                     "rss_mb": max(r["hwm_train_mb"] for r in rs),
                     "rss_all_mb": max(max(r["maxrss_mb"], r["hwm_end_mb"]) for r in rs),
                     "loss": rs[-1]["loss"][-1]}  # fmt: skip
    return out


def _verdict(ratio: float, goal: float) -> str:
    return "PASS" if ratio <= goal else "MISS"


def print_table(s: dict[str, dict], rounds: int) -> dict[str, float]:
    print(f"\n{'side':10s} {'median step s':>14s} {'steps':>6s} {'peak RSS MB':>12s} "
          f"{'incl. ckpt MB':>14s}")  # fmt: skip
    for side in SIDES:
        r = s[side]
        print(f"{side:10s} {r['step_s']:14.3f} {r['steps']:6d} {r['rss_mb']:12.0f} "
              f"{r['rss_all_mb']:14.0f}")  # fmt: skip
    step = s["ours-lora"]["step_s"] / s["peft"]["step_s"]
    rss = s["ours-lora"]["rss_mb"] / s["ours-full"]["rss_mb"]
    print(f"\nstep  ours-lora / peft      {step:6.3f}  goal <= {STEP_GOAL}: "
          f"{_verdict(step, STEP_GOAL)}")  # fmt: skip
    print(f"RSS   ours-lora / ours-full {rss:6.3f}  goal <= {RSS_GOAL}: {_verdict(rss, RSS_GOAL)}")
    print(f"(medians over {rounds} round(s) of fresh processes; peak RSS: the largest over the "
          "rounds of the process's VmHWM after its last step (ours: just before the end-of-run "
          "checkpoint write; so it includes loading --init and the Python runtime, and for PEFT "
          "torch, transformers and peft); 'incl. ckpt': the process's whole peak (wait4), "
          "checkpoint write included)")  # fmt: skip
    return {"step_ratio": step, "rss_ratio": rss}


def latency_ratio(args: argparse.Namespace, tmp: Path) -> dict:
    """bench overlap's latency-model step of args.latency_model: full fine-tuning vs LoRA."""
    spec = {"model": args.latency_model, "steps": args.latency_steps, "lora_rank": args.rank,
            "targets": args.targets}  # fmt: skip
    res = run_child("latency", spec, tmp / "latency.log")
    med = {side: {k: statistics.median(v) for k, v in res[side].items()}
           for side in ("full", "lora")}  # fmt: skip
    ratio = med["lora"]["step"] / med["full"]["step"]
    print(f"\nlatency model (bench overlap's runtime, M4 kernel times), {args.latency_model}, "
          f"median of {args.latency_steps} step(s) after a warm-up:")
    for side in ("full", "lora"):
        m = med[side]
        print(f"  {side:5s} step {1e3 * m['step']:8.1f} ms  kernel {1e3 * m['kernel']:7.1f} ms  "
              f"critical {1e3 * m['critical']:7.1f} ms  CPU busy {1e3 * m['cpu_busy']:8.1f} ms")
    print(f"  ratio lora / full step = {ratio:.3f}  (LoRA: no dW sgemms of frozen weights, the "
          "rank-r dA, dB products of lora.LoraGrads instead)")  # fmt: skip
    return {"latency_ratio": ratio, "latency_full_s": med["full"]["step"],
            "latency_lora_s": med["lora"]["step"]}  # fmt: skip


def _check_peft() -> None:
    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"the PEFT side needs {', '.join(missing)}: pip install torch "
                        "transformers peft")  # fmt: skip


def _steps(text: str) -> int:
    n = positive_int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the first step is a warm-up), got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m anetrain.bench lora", description=__doc__)
    ap.add_argument("--shape", default="smollm2-360m", help=SHAPE_NOTE)
    ap.add_argument("--seq", type=positive_int, default=512, help="sequence length (512)")
    ap.add_argument("--vocab-size", type=positive_int, default=None,
                    help="vocabulary (default: the shape's)")
    ap.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (8)")
    ap.add_argument("--targets", default="q,v", help="adapted matrices, as --lora-targets (q,v)")
    ap.add_argument("--rounds", type=positive_int, default=3,
                    help="rounds of the three sides, each side a fresh process (3)")
    ap.add_argument("--steps", type=_steps, default=4,
                    help="optimizer steps per process; the first is a warm-up (4)")
    ap.add_argument("--threads", type=nonneg_int, default=0,
                    help="threads of every side (0 = all cores)")
    ap.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                    help="the PEFT side's attention implementation (sdpa, transformers' default)")
    ap.add_argument("--latency-model", default="stories110m",
                    help="preset for the latency-model ratio (stories110m)")
    ap.add_argument("--latency-steps", type=positive_int, default=3,
                    help="latency-model steps per side after a warm-up (3)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency model")
    ap.add_argument("--seed", type=int, default=0, help="random weights and tokens (0)")
    ap.add_argument("--tmp", default=None, metavar="DIR",
                    help="where the random checkpoint and the runs go (a temporary directory "
                    "in it, removed at the end; default: the system's)")  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="no per-process lines")
    ap.add_argument("--json", action="store_true", help="also print one JSON object")
    return ap


def bench(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from anetrain.lora import LoraConfig

    LoraConfig(args.rank, targets=tuple(args.targets.split(",")))  # bad targets: one line now
    cfg = model_config(args.shape, args.seq, args.vocab_size)
    args.threads = args.threads or default_threads()
    if not args.no_latency:
        preset(args.latency_model)
    _check_peft()
    print(f"bench lora: {args.shape}: {cfg.describe()}, vocab {cfg.vocab_size}, seq "
          f"{cfg.seq_len}, {cfg.n_params() / 1e6:.1f}M parameters; LoRA rank {args.rank} on "
          f"{args.targets}; {args.threads} threads; {args.rounds} round(s) x {args.steps} steps "
          f"(1 warm-up); PEFT attention: {args.attn}", flush=True)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="anetrain-bench-lora-", dir=args.tmp))
    try:
        runs = measure(cfg, args, tmp)
        summary = summarize(runs)
        report = {"shape": args.shape, "model": cfg.to_dict(), "threads": args.threads,
                  "rounds": args.rounds, "sides": summary}  # fmt: skip
        report.update(print_table(summary, args.rounds))
        if not args.no_latency:
            report.update(latency_ratio(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.bench lora", bench, argv)


if __name__ == "__main__":
    sys.exit(main())
