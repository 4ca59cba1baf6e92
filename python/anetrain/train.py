"""python -m anetrain.train: the flat training loop (cpu now; sim/ane through MIL kernels)."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from anetrain.config import DEFAULT_LR, PRESETS, ConfigError, TrainConfig, preset
from anetrain.errors import CheckpointError, UserError, run_cli

BACKENDS = ("auto", "cpu", "sim", "ane")
METRICS_NAME = "metrics.jsonl"
# Environment variables that size the BLAS thread pools (OpenBLAS, OpenMP, MKL, Accelerate).
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain.train",
        description="Train a llama2.c-compatible Llama model (one sequence per micro-step).",
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help=f"preset: {', '.join(PRESETS)} (default tiny)")
    g.add_argument(
        "--init",
        default=None,
        metavar="MODEL_BIN",
        help="fine-tune a llama2.c model.bin (v0/v1/v2); its header sets the architecture, "
        "--seq may only lower its seq_len",
    )
    g.add_argument(
        "--data",
        default=None,
        help="dataset directory with meta.json, or a raw uint16 token .bin "
        "(default: the embedded story dataset)",
    )
    g.add_argument("--val-data", default=None, help="raw uint16 token .bin used for validation")
    g.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary of a raw .bin file (default 32000; datasets say their own)",
    )
    g.add_argument("--seq", type=int, default=None, help="sequence length (default: the preset's)")
    g = p.add_argument_group("optimisation (defaults in parentheses)")
    d = TrainConfig()
    g.add_argument("--steps", type=int, default=None, help=f"optimizer steps ({d.steps})")
    g.add_argument(
        "--accum", type=int, default=None, help=f"sequences per optimizer step ({d.accum})"
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (per preset: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + ")",
    )
    g.add_argument("--min-lr", type=float, default=None, help="final learning rate (lr/10)")
    g.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="linear warmup steps (10%% of the schedule, at most 100)",
    )
    g.add_argument(
        "--lr-decay-steps",
        type=int,
        default=None,
        help="cosine horizon in steps (--steps); set it to train in several sittings",
    )
    g.add_argument("--wd", type=float, default=None, help=f"AdamW weight decay ({d.weight_decay})")
    g.add_argument(
        "--clip", type=float, default=None, help=f"global gradient-norm clip, 0 disables ({d.clip})"
    )
    g.add_argument("--seed", type=int, default=None, help=f"init and data-sampling seed ({d.seed})")
    g = p.add_argument_group("run")
    g.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="auto (default: ane on Apple silicon when it is available and the model's sizes "
        "fit it, else cpu; falls back to cpu if an ANE compile fails), cpu, sim, ane",
    )
    g.add_argument(
        "--out", default=None, help="output directory (default out/, or the --resume DIR)"
    )
    g.add_argument(
        "--ckpt-every", type=int, default=None, help="checkpoint every N steps (end only)"
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="validation every N steps (end only; needs validation data)",
    )
    g.add_argument("--eval-batches", type=int, default=None, help="sequences per validation (8)")
    g.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="continue from DIR/checkpoint.bin (DIR defaults to --out)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run even if --out already holds a checkpoint",
    )
    g.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default, or 0: all cores)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return p


# Command-line flag -> TrainConfig field, for flags that override a resumed run's settings.
_TRAIN_FLAGS = {
    "steps": "steps",
    "accum": "accum",
    "lr": "lr",
    "min_lr": "min_lr",
    "warmup": "warmup",
    "lr_decay_steps": "lr_decay_steps",
    "wd": "weight_decay",
    "clip": "clip",
    "seed": "seed",
    "ckpt_every": "ckpt_every",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "backend": "backend",
}


def _dw_workers_likely(backend: str | None) -> bool:
    """Whether this run will use sim/ane (and so the dW worker pool), guessed before numpy loads
    from --backend alone (None = the default, auto: ane only on Apple silicon, macOS 15+)."""
    from anetrain.backends import ane_platform  # numpy-free

    return backend in ("sim", "ane") or (backend in (None, "auto") and ane_platform())


def _set_threads(n: int | None, backend: str | None) -> tuple[int, int | None]:
    """Fix the BLAS thread count before numpy loads its BLAS; returns (threads, BLAS threads),
    the latter None when numpy was already loaded (in-process callers keep their setting) or
    when one of BLAS_VARS is set in the environment (an explicit choice is never overridden).

    With sim/ane the dW sgemms run on one worker thread per core, so every BLAS call runs on
    its caller's thread alone: a multi-threaded BLAS under those workers only adds contention
    (`bench overlap --accum 10` on 2 cores: 5.2 s per step with 1 BLAS thread, 6.4 s with 2).
    """
    n = n or os.cpu_count() or 1
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    if "numpy" in sys.modules or any(v in os.environ for v in BLAS_VARS):
        return n, None  # numpy already loaded, or the user chose the BLAS threads: keep theirs
    blas = 1 if _dw_workers_likely(backend) else n
    for var in BLAS_VARS:
        os.environ[var] = str(blas)
    return n, blas


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out}: output directory is not writable ({e.strerror or e})") from None


def _prepare_metrics(path: Path, resume_step: int | None) -> int:
    """Start the metrics file: empty for a new run; on resume keep the records up to the
    checkpoint's step and drop the rest, including lines that do not parse (a run killed while
    writing one). Rewritten through a temporary file, so a crash here loses nothing.
    Returns the number of unreadable lines dropped."""
    if resume_step is None or not path.exists():
        path.write_text("")
        return 0
    keep, bad = [], 0
    for ln in path.read_text(errors="replace").splitlines():
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            bad += 1
        elif rec.get("step", 0) <= resume_step:
            keep.append(ln + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)
    return bad


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _release(kern, dw_pool) -> None:
    """Stop the dW workers; sim/ane: unload the kernels, free their surfaces, remove their temp
    dirs (cpu kernels hold nothing)."""
    if dw_pool is not None:
        dw_pool.shutdown()
    kern.close()


@contextmanager
def _hold_interrupts(reraise: bool = True):
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt (if reraise).

    Around the optimizer update: an interrupt there would save a checkpoint whose weights and
    Adam moments are half updated (AdamW runs on worker threads) while its step counter and
    data position are the previous step's. Outside the main thread (no signals) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and reraise:
        raise KeyboardInterrupt


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024  # bytes on macOS, KiB else


def train(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    threads, blas_threads = _set_threads(args.threads, args.backend)

    import numpy as np

    from anetrain.backends import make_kernels, pick_backend
    from anetrain.backends.ane import AneError
    from anetrain.formats import checkpoint as ckpt_io
    from anetrain.formats.data import WindowSampler, check_length, eval_windows, open_dataset
    from anetrain.formats.llama2c import load_init
    from anetrain.mil import MilOverflowWarning
    from anetrain.model import loss_only, micro_step
    from anetrain.optim import AdamW, LossScaler, clip_factor, get_lr, grad_norm
    from anetrain.params import init_params

    resume_file = None  # --resume DIR (or DIR/checkpoint.bin)
    if args.resume is not None:
        if args.init is not None:
            raise UserError("--init starts a new run from a model; it cannot be used with --resume")
        resume_file = ckpt_io.resolve(args.resume or args.out or "out")
    # a resumed run keeps writing into its own directory unless --out says otherwise
    out = Path(args.out) if args.out is not None else \
        (resume_file.parent if resume_file is not None else Path("out"))  # fmt: skip
    ckpt_path = out / ckpt_io.FILE_NAME
    same_run = resume_file is not None and ckpt_path.resolve() == resume_file.resolve()
    flags = {k: v for k, v in vars(args).items() if v is not None}
    if ckpt_path.exists() and not same_run and not args.overwrite:  # before reading anything
        raise UserError(
            f"{ckpt_path}: a checkpoint already exists; use --resume {out} to continue it, "
            "another --out, or --overwrite to replace it"
        )

    # ---- resume or fresh start
    resumed = None
    if resume_file is not None:
        resumed = ckpt_io.load(resume_file)
        saved = dict(resumed.meta.get("train", {}))
        tc_dict = {**saved, **{f: flags[a] for a, f in _TRAIN_FLAGS.items() if a in flags}}
        if "lr" in flags and "min_lr" not in flags and \
                math.isclose(saved.get("min_lr", -1.0), saved.get("lr", 0.0) / 10):  # fmt: skip
            tc_dict["min_lr"] = flags["lr"] / 10  # the saved min_lr was the default lr/10
        tc = TrainConfig(**tc_dict)
        done = int(resumed.meta.get("step", 0))
        if tc.steps <= done:
            raise UserError(f"{resume_file}: the run is already at step {done} of --steps "
                            f"{tc.steps}; pass a larger --steps to train further")  # fmt: skip
        cfg = resumed.model
        if args.model is not None:
            want = preset(args.model, vocab_size=cfg.vocab_size, seq_len=args.seq or cfg.seq_len)
            if want != cfg:
                raise CheckpointError(
                    f"{resume_file}: checkpoint model does not match --model {args.model} "
                    f"(checkpoint: dim {cfg.dim}, {cfg.n_layers} layers, seq {cfg.seq_len})"
                )
        if args.seq is not None and args.seq != cfg.seq_len:
            raise CheckpointError(
                f"{resume_file}: checkpoint seq_len is {cfg.seq_len}, not --seq {args.seq}"
            )
        data = open_dataset(
            args.data or resumed.meta.get("data"),
            args.vocab_size or cfg.vocab_size,
            args.val_data or resumed.meta.get("val_data"),
        )
        if data.vocab_size != cfg.vocab_size:
            raise CheckpointError(
                f"{data.source}: data vocab {data.vocab_size} does not match the "
                f"checkpoint's {cfg.vocab_size}"
            )
    else:
        init = load_init(args.init, args.model, args.seq) if args.init is not None else None
        model_name = args.model or (init.preset if init else "tiny") or "llama2c"
        if "lr" not in flags:
            flags["lr"] = DEFAULT_LR.get(model_name, TrainConfig.lr)
        if "min_lr" not in flags:
            flags["min_lr"] = flags["lr"] / 10
        tc = TrainConfig(**{f: flags[a] for a, f in _TRAIN_FLAGS.items() if a in flags})
        if "warmup" not in flags:  # 10% of the schedule, at most 100 steps
            tc.warmup = min(100, (tc.lr_decay_steps or tc.steps) // 10)
        data = open_dataset(args.data, args.vocab_size, args.val_data)
        if init is not None:
            cfg = init.cfg
            if data.vocab_size != cfg.vocab_size:
                raise UserError(
                    f"{data.source}: data vocab {data.vocab_size} does not match the vocab "
                    f"{cfg.vocab_size} of --init {args.init}"
                )
        else:
            cfg = preset(model_name, vocab_size=data.vocab_size, seq_len=args.seq)
    # None = the embedded dataset, wherever this install keeps it
    data_ref = _absolute(args.data or (resumed.meta.get("data") if resumed else None))
    val_ref = _absolute(args.val_data or (resumed.meta.get("val_data") if resumed else None))
    if tc.eval_every and data.val is None and not args.quiet:
        print(f"note: --eval-every {tc.eval_every} is ignored: {data.source} has no validation "
              "data (pass --val-data FILE)")  # fmt: skip
    _check_out_dir(out)
    decay_steps = tc.lr_decay_steps or tc.steps
    S = cfg.seq_len
    check_length(data.train, S, data.source)
    if data.val is not None:
        check_length(data.val, S, f"{data.source} (validation)")

    # ---- model, optimizer, data sampler
    if resumed is not None:
        params = resumed.params
    elif init is not None:
        params = init.params
    else:
        params = init_params(cfg, np.random.Generator(np.random.PCG64(tc.seed)))
    grads = params.zeros_like()
    opt = AdamW(params, tc.beta1, tc.beta2, tc.eps, tc.weight_decay, threads=threads)
    sampler = WindowSampler(data.train, S, tc.seed + 1, name=data.source)
    step0 = 0
    if resumed is not None:
        if resumed.m is not None:
            opt.m, opt.v = resumed.m, resumed.v
        opt.t = int(resumed.meta.get("adam_t", 0))
        step0 = int(resumed.meta.get("step", 0))
        sampler.set_state(resumed.meta["sampler"])
    backend = pick_backend(tc.backend, verbose=not args.quiet, cfg=cfg)
    try:
        kern = make_kernels(backend, cfg, params, threads)
    except AneError as e:  # auto chose ane, which has never compiled on this machine: fall back
        if tc.backend != "auto":
            raise
        print(f"warning: backend auto: the ANE failed ({e}); using cpu (--backend ane makes "
              "this an error)", file=sys.stderr)  # fmt: skip
        backend = "cpu"
        kern = make_kernels(backend, cfg, params, threads)
    dw_pool, dw_note = None, ""
    try:  # setup after the compile: a failure here must not leak kernels or worker threads
        # fp16 kernels need loss scaling; the fp32 cpu kernels do not (scale 1, never skips)
        fp16 = kern.fp16
        scaler = LossScaler(2.0**12 if fp16 else 1.0, dynamic=fp16)
        if resumed is not None and "scaler" in resumed.meta:
            scaler.set_state(resumed.meta["scaler"])
        if kern.overlap_dw:  # dW sgemms on worker threads, behind kernel evals
            from anetrain.model import DwPool

            dw_pool = DwPool(threads)
            blas_each = ", BLAS 1 thread each" if blas_threads == 1 else ""
            dw_note = f" ({threads} dW worker{'s' if threads > 1 else ''}{blas_each})"
        elif blas_threads == 1 and threads > 1 and not args.quiet:  # guessed sim/ane, got cpu
            print(f"note: BLAS runs on 1 thread (set up for the ane backend); pass --backend "
                  f"{backend} to use {threads}")  # fmt: skip

        metrics_path = out / METRICS_NAME
        # resumed in its own directory: keep its metrics up to the checkpoint; else start afresh
        dropped = _prepare_metrics(metrics_path, step0 if same_run else None)
        if dropped and not args.quiet:
            print(f"note: {metrics_path}: dropped {dropped} unreadable line(s)")
        metrics = open(metrics_path, "a")
    except BaseException:
        _release(kern, dw_pool)
        raise

    def save_checkpoint(step: int, tokens: int, sampler_state: dict) -> None:
        meta = {
            "scaler": scaler.state(),
            "step": step,
            "tokens": tokens,
            "adam_t": opt.t,
            "train": tc.to_dict(),
            "sampler": sampler_state,
            "data": data_ref,  # absolute, so a resume from another directory finds them
            "val_data": val_ref,
            "backend": backend,
            "tokenizer": _absolute(data.tokenizer),
        }
        ckpt_io.save(ckpt_path, ckpt_io.Checkpoint(cfg, params, opt.m, opt.v, meta))

    def stop(problem: str) -> UserError:
        """The error that ends a diverged run; nothing is saved after it."""
        kept = "the checkpoint there is kept as it was" if ckpt_path.exists() else \
            "no checkpoint was written"  # fmt: skip
        return UserError(f"{ckpt_path}: {problem} at step {step + 1}; stopping, {kept}")

    def evaluate() -> float:
        losses = [
            loss_only(params, kern, x, y) for x, y in eval_windows(data.val, S, tc.eval_batches)
        ]
        return float(np.mean(losses))

    if not args.quiet:
        print(
            f"model: dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads "
            f"({cfg.n_kv_heads} kv), hidden {cfg.hidden_dim}, vocab {cfg.vocab_size}, seq {S}: "
            f"{cfg.n_params() / 1e6:.2f}M parameters; backend {backend}, {threads} thread"
            f"{'s' if threads > 1 else ''}{dw_note}"
        )
        print(
            f"data: {data.source} ({data.train.size:,} train tokens"
            + (f", {data.val.size:,} val tokens)" if data.val is not None else ")")
        )
        if resumed is not None:
            print(f"resuming from step {step0} of {tc.steps}")

    # ---- the loop
    from tqdm import tqdm

    tokens_per_step = tc.accum * S
    # tokens trained on so far; --accum may differ from the resumed run's (older checkpoints
    # did not record it: assume this run's)
    tokens = int(resumed.meta.get("tokens", step0 * tokens_per_step)) if resumed else 0
    bar = tqdm(
        total=tc.steps,
        initial=step0,
        disable=args.quiet or not sys.stderr.isatty(),
        unit="step",
        dynamic_ncols=True,
    )
    log_every = max(1, (tc.steps - step0) // 20)
    step_ms: list[float] = []
    t_start = time.perf_counter()
    sampler_state = sampler.state()  # state at the start of the step being run
    step = step0
    # a diverging run is caught by the loss / gradient-norm checks with one line, not by numpy's
    # overflow warnings (restored in the finally below)
    numpy_err = np.seterr(over="ignore", invalid="ignore", divide="ignore")
    try:
        while step < tc.steps:
            t0 = time.perf_counter()
            lr = get_lr(step, tc.lr, tc.min_lr, tc.warmup, decay_steps)
            loss_sum = 0.0
            for micro in range(tc.accum):
                x, y = sampler.next()
                with warnings.catch_warnings():  # sim: an fp16 overflow is reported as a skip
                    warnings.simplefilter("ignore", MilOverflowWarning)
                    loss = micro_step(
                        params,
                        grads,
                        kern,
                        x,
                        y,
                        accumulate=micro > 0,
                        loss_scale=scaler.scale,
                        dw_pool=dw_pool,
                        sync=micro == tc.accum - 1,  # dW jobs run on behind the next micro-step
                    )
                if not math.isfinite(loss):
                    raise stop(f"loss is {loss} (micro-step {micro + 1} of {tc.accum})")
                loss_sum += loss
            scale = 1.0 / (tc.accum * scaler.scale)  # unscale, average over micro-steps
            norm = grad_norm(grads, scale, threads)
            finite = math.isfinite(norm)
            if not finite and (not scaler.dynamic or scaler.scale <= scaler.MIN_SCALE):
                at = f" even at loss scale {scaler.scale:g}" if scaler.dynamic else ""
                raise stop(f"the gradient norm is {norm}{at}")
            with _hold_interrupts():  # the update and the counters move together or not at all
                old_scale = scaler.scale
                skipped = scaler.update(finite)  # fp16 overflow: skip the step, halve the scale
                if not skipped:
                    scale *= clip_factor(norm, tc.clip)
                    kern.sync()  # no weight staging may still be reading the masters
                    opt.step(grads, lr, grad_scale=scale)
                    kern.update_weights()
                step += 1
                tokens += tokens_per_step
                sampler_state = sampler.state()
            ms = (time.perf_counter() - t0) * 1000.0
            step_ms.append(ms)
            rec = {
                "step": step,
                "loss": loss_sum / tc.accum,
                "lr": lr,
                "tokens": tokens,
                "ms": round(ms, 3),
                "grad_norm": norm if finite else None,  # strict JSON: no NaN/Infinity
            }
            if scaler.dynamic:
                rec["loss_scale"] = scaler.scale
                rec["skipped"] = scaler.skipped
            if data.val is not None and (
                (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps
            ):
                rec["val_loss"] = evaluate()
            if skipped and not args.quiet:
                tqdm.write(f"step {step}: gradients overflowed fp16 at loss scale {old_scale:g}; "
                           f"step skipped, loss scale now {scaler.scale:g}")  # fmt: skip
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == tc.steps:
                save_checkpoint(step, tokens, sampler_state)
            bar.update(1)
            bar.set_postfix(
                loss=f"{rec['loss']:.4f}",
                lr=f"{lr:.2e}",
                tok_s=f"{tokens_per_step / (ms / 1000):.0f}",
            )
            if bar.disable and not args.quiet and (step % log_every == 0 or step == tc.steps):
                extra = f" val_loss {rec['val_loss']:.4f}" if "val_loss" in rec else ""
                print(
                    f"step {step}/{tc.steps} loss {rec['loss']:.4f}{extra} lr {lr:.2e} {ms:.0f} ms",
                    flush=True,
                )
    except KeyboardInterrupt:
        bar.close()
        if step > step0:
            print(f"\ninterrupted: saving the checkpoint of step {step} (Ctrl-C again waits for "
                  "it)", flush=True)  # fmt: skip
            with _hold_interrupts(reraise=False):  # already stopping
                save_checkpoint(step, tokens, sampler_state)
            print(f"checkpoint saved at step {step} in {ckpt_path}")
        else:
            print("\ninterrupted before the first step; nothing saved")
        return 130
    finally:
        np.seterr(**numpy_err)
        metrics.close()
        _release(kern, dw_pool)
    bar.close()

    # ---- efficiency report
    wall = time.perf_counter() - t_start
    n = len(step_ms)
    if n and not args.quiet:
        med = float(np.median(step_ms))
        tok_s = tokens_per_step / (med / 1000.0)
        flops_per_token = 6 * cfg.n_params() + 12 * cfg.n_layers * cfg.dim * S
        print("=== efficiency report ===")
        print(f"steps {n} ({step0 + 1}..{step}), wall {wall:.2f} s, median {med:.1f} ms/step")
        print(f"tokens/s {tok_s:,.0f} (median step), {n * tokens_per_step / wall:,.0f} (wall)")
        print(
            f"achieved {flops_per_token * tok_s / 1e9:.1f} GFLOPS "
            f"({flops_per_token / 1e6:.1f} MFLOP/token), peak RSS {peak_rss_mb():.0f} MB"
        )
        if scaler.dynamic:
            print(f"loss scale {scaler.scale:g}, skipped steps {scaler.skipped}")
        for key, val in kern.stats().items():  # backend figures (sim/ane)
            print(f"{key}: {val}")
        print(f"checkpoint: {ckpt_path}, metrics: {metrics_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.train", train, argv)


if __name__ == "__main__":
    sys.exit(main())
