"""python -m anetrain train: the flat training loop, on any backend (cpu, sim, ane)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager

from anetrain import dist
from anetrain.cli import Stopped, run_cli, signals_held
from anetrain.config import (
    BACKENDS,
    DEFAULT_LR,
    PRESETS,
    ConfigError,
    TrainConfig,
    checkpoint_interval,  # fmt: skip
    )
from anetrain.errors import UserError

_MANY_WINDOWS = 1000  # a validation this long gets a note on --eval-batches
# Environment variables that size the BLAS thread pools (OpenBLAS, OpenMP, MKL, Accelerate).
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain.train",
        description="Train a llama2.c or Hugging Face model (one sequence per micro-step).",
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help=f"preset: {', '.join(PRESETS)} (default tiny)")
    g.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="start from the weights of an anetrain checkpoint or run directory, a llama2.c "
        "model.bin (v0/v1/v2), a Hugging Face model directory or Hub id (e.g. "
        "HuggingFaceTB/SmolLM2-135M): a new run (step 0, fresh optimizer); the model sets the "
        "architecture, --seq may only lower its seq_len. A PEFT adapter directory "
        "(adapter_config.json) continues training its LoRA adapters over its base model",
    )
    g.add_argument(
        "--base",
        default=None,
        metavar="MODEL",
        help="the base model of --init PEFT_ADAPTER_DIR (default: its adapter_config.json's "
        "base_model_name_or_path)",
    )
    g.add_argument(
        "--data",
        default=None,
        help="dataset directory with meta.json, a raw token .bin (uint16 unless --data-dtype), "
        "or JSONL instruction data: a directory with train.jsonl (valid.jsonl, test.jsonl) or "
        "one .jsonl file of text, prompt/completion or chat messages records "
        "(default: the embedded story dataset)",
    )
    g.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="JSONL data: the tokenizer (tokenizer.json or model directory, whose "
                   "chat template renders messages; or a tokenizer.bin) (default: --init's)")
    g.add_argument("--mask-prompt", action="store_true", default=None,
                   help="JSONL data: loss on completions and assistant turns only")
    g.add_argument("--skip-bad-records", action="store_true", default=None,
                   help="JSONL data: leave out bad records (counted) instead of stopping")
    g.add_argument("--val-data", default=None, help="raw token .bin used for validation")
    g.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary of a raw .bin file (default 32000; datasets say their own)",
    )
    g.add_argument(
        "--data-dtype",
        choices=["uint16", "uint32"],  # formats.data.TOKEN_DTYPES (numpy loads after the flags)
        default=None,
        help="token type of a raw .bin file: uint16 (default, llama2.c's) or uint32 (needed "
        "for a vocabulary above 65535); datasets say their own",
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
    g = p.add_argument_group("LoRA: train low-rank adapters over frozen weights")
    g.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="train adapters A [R, in], B [out, R] only (the --init weights stay "
                   "as they are)")  # fmt: skip
    g.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="adapter scale A/R (default A = 2R)")  # fmt: skip
    g.add_argument("--lora-targets", default=None, metavar="LIST",
                   help="adapted matrices from q,k,v,o,gate,up,down (default q,v)")  # fmt: skip
    g.add_argument("--lora-layers", type=int, default=None, metavar="N",
                   help="adapt the last N layers (default all)")  # fmt: skip
    g.add_argument("--lora-dropout", type=float, default=None, metavar="P",
                   help="dropout of each adapter's input, as PEFT's lora_dropout (default 0; cpu "
                   "backend only)")  # fmt: skip
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
        "--ckpt-every",
        default=None,
        metavar="N|TIME",
        help="checkpoint every N steps, or every TIME of training (90s, 10m, 1h); always at the "
        "end and on Ctrl-C, SIGTERM, SIGHUP (default 10m: a kill -9 loses at most 10 minutes)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="validation every N steps (end only; needs validation data)",
    )
    g.add_argument("--eval-batches", type=int, default=None,
                   help="validation windows: the first N of the split (default 0: all of "
                   "them, every target once)")  # fmt: skip
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


def _dw_workers_likely(backend: str | None) -> bool:
    """Whether this run will use sim/ane (and so the dW worker pool), guessed before numpy loads
    from --backend alone (None = the default, auto: ane only on Apple silicon, macOS 15+)."""
    from anetrain.backends.platform import ane_platform  # numpy-free

    return backend in ("sim", "ane") or (backend in (None, "auto") and ane_platform())


def _set_threads(n: int | None, backend: str | None) -> tuple[int, int | None]:
    """Fix the BLAS thread count before numpy loads its BLAS; returns (threads, BLAS threads),
    the latter None when numpy was already loaded (in-process callers keep their setting) or
    when one of BLAS_VARS is set in the environment (an explicit choice is never overridden).

    With sim/ane the dW sgemms run on one worker thread per core, so every BLAS call runs on
    its caller's thread alone: a multi-threaded BLAS under those workers only adds contention
    (`bench overlap --accum 10` on 2 cores: 5.2 s per step with 1 BLAS thread, 6.4 s with 2).
    """
    from anetrain.dist import cores_per_rank  # numpy-free

    n = n or cores_per_rank()  # all cores; under mpirun, this rank's share of them
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    if "numpy" in sys.modules or any(v in os.environ for v in BLAS_VARS):
        return n, None  # numpy already loaded, or the user chose the BLAS threads: keep theirs
    blas = 1 if _dw_workers_likely(backend) else n
    for var in BLAS_VARS:
        os.environ[var] = str(blas)
    return n, blas


def _release(kern, dw_pool) -> None:
    """Stop the dW workers; sim/ane: unload the kernels, free their surfaces, remove their temp
    dirs (cpu kernels hold nothing)."""
    if dw_pool is not None:
        dw_pool.shutdown()
    kern.close()


@contextmanager
def _open_backend(run, weights, threads: int, blas_threads: int | None, quiet: bool,
                  world: dist.World, hook=None):  # fmt: skip
    """Yield (kernels over `weights`, backend name, DwPool or None, a note on the dW workers);
    the kernels and worker threads are released on the way out, however the run ends."""
    from anetrain.backends import make_kernels, pick_backend
    from anetrain.backends.ane import AneError
    from anetrain.backends.cpu import CpuKernels
    from anetrain.model import DwPool

    cfg, tc = run.cfg, run.tc
    backend = pick_backend(tc.backend, verbose=not quiet, cfg=cfg)
    world.check_backend(backend)
    if hook is not None and backend != "cpu":  # (auto: an ANE that fails falls back to cpu)
        raise UserError(f"--lora-dropout {run.lora.lc.dropout}: the {backend} kernels read "
                        "W + s·B·A, with no place to drop an adapter's input alone; use "
                        "--backend cpu, or --lora-dropout 0")  # fmt: skip
    try:
        kern = make_kernels(backend, cfg, weights, threads)
    except AneError as e:  # auto chose ane, which has never compiled on this machine: fall back
        if tc.backend != "auto":
            raise
        print(f"warning: backend auto: the ANE failed ({e}); using cpu (--backend ane makes "
              "this an error)", file=sys.stderr)  # fmt: skip
        backend = "cpu"
        kern = make_kernels(backend, cfg, weights, threads)
    if hook is not None:
        assert isinstance(kern, CpuKernels)
        kern.hook = hook
    dw_pool, dw_note = None, ""
    try:
        if kern.overlap_dw:  # dW sgemms on worker threads, behind kernel evaluations
            dw_pool = DwPool(threads)
            blas_each = ", BLAS 1 thread each" if blas_threads == 1 else ""
            dw_note = f" ({threads} dW worker{'s' if threads > 1 else ''}{blas_each})"
        elif blas_threads == 1 and threads > 1 and not quiet:  # guessed sim/ane, got cpu
            print(f"note: BLAS runs on 1 thread (set up for the ane backend); pass --backend "
                  f"{backend} to use {threads}")  # fmt: skip
        yield kern, backend, dw_pool, dw_note
    finally:
        _release(kern, dw_pool)


def _banner(run, backend: str, threads: int, dw_note: str, world: dist.World) -> None:
    cfg, data = run.cfg, run.data
    print(f"model: {cfg.describe()}, vocab {cfg.vocab_size}, seq {cfg.seq_len}: "
          f"{cfg.n_params() / 1e6:.2f}M parameters; backend {backend}, {threads} thread"
          f"{'s' if threads > 1 else ''}{dw_note}")  # fmt: skip
    S = cfg.seq_len
    print(f"data: {data.source} (train: {data.train.summary(S)}"
          + (f"; valid: {data.val.summary(S)})" if data.val is not None else ")"))  # fmt: skip
    if run.lora is not None:
        lc, n = run.lora.lc, len(run.lora)
        layers = f"the last {lc.layers} layers" if lc.layers else "every layer"
        print(f"LoRA: rank {lc.rank}, alpha {lc.alpha:g} (scale {lc.scale:g}) on "
              f"{','.join(lc.targets)} of {layers}: {n:,} trainable parameters "
              f"({100 * n / cfg.n_params():.2f}% of the model; the rest frozen)")  # fmt: skip
    if world.size > 1:
        print(f"data parallel: {world.size} ranks (MPI), {world.size} x {run.tc.accum} sequences "
              "per optimizer step")  # fmt: skip
    if run.state.step:
        print(f"resuming from step {run.state.step} of {run.tc.steps}")


def _note_validation(run, quiet: bool) -> None:
    """--eval-every without validation data; a validation of many windows (all, by default)."""
    tc, val = run.tc, run.data.val
    if quiet:
        return
    if val is None:
        if tc.eval_every:
            print(f"note: --eval-every {tc.eval_every} is ignored: {run.data.source} has no "
                  "validation data (pass --val-data FILE)")  # fmt: skip
        return
    n = val.windows(run.cfg.seq_len)
    if n > _MANY_WINDOWS and not tc.eval_batches:
        print(f"note: each validation reads all {n:,} windows of {val.name} (every target "
              "once); --eval-batches N reads the first N")  # fmt: skip


def _record_ranks(run, world: dist.World, quiet: bool) -> None:
    """Record the run's number of ranks; a resume with another number continues the global
    window sequence from where it was, with a different global batch, and says so."""
    st = run.state
    saved, st.ranks = st.ranks or 1, world.size if world.size > 1 else None
    if st.step and saved != world.size and not quiet:
        print(f"note: {run.ckpt_path}: trained by {saved} rank{'s' if saved > 1 else ''}, "
              f"continuing with {world.size}: the sampler continues from the same global "
              f"position, {world.size} x {run.tc.accum} sequences a step from now on")  # fmt: skip


def _diverged(run, step: int, problem: str) -> UserError:
    """The error that ends a diverged run; nothing is saved after it."""
    kept = "its checkpoint is kept as it was" if run.ckpt_path.exists() else \
        "no checkpoint was written"  # fmt: skip
    return UserError(f"{run.out}: {problem} at step {step + 1}; stopping, {kept}")


def _evaluate(params, kern, split, seq_len: int, cap: int) -> float:
    """Mean loss over every target with loss of the split (its first `cap` windows; 0: all):
    what `python -m anetrain.eval` reports for the same model and split."""
    from anetrain.formats.data import eval_windows
    from anetrain.model import evaluate

    return evaluate(params, kern, eval_windows(split, seq_len, cap))[0]


def _record(st, loss: float, lr: float, ms: float, norm: float, scaler) -> dict:
    """One metrics.jsonl line (strict JSON: a non-finite norm is null)."""
    rec = {"step": st.step, "loss": loss, "lr": lr, "tokens": st.tokens, "ms": round(ms, 3),
           "grad_norm": norm if math.isfinite(norm) else None}  # fmt: skip
    if scaler.dynamic:
        rec["loss_scale"] = scaler.scale
        rec["skipped"] = scaler.skipped
    return rec


class _Saver:
    """Writes the run's checkpoint, and knows when one is due: every ckpt_every steps, after
    ckpt_seconds of training since the last one (rank 0's clock decides for every rank), and at
    the last step. Data-parallel: every rank compares its parameters first, rank 0 writes."""

    def __init__(self, run, params, opt, world: dist.World, staged) -> None:
        self.run, self.params, self.opt, self.world = run, params, opt, world
        self.staged = staged  # a LoRA run's lora.Staged: params hold W + s·B·A, not W
        self.trained = params if run.lora is None else run.lora  # what the ranks must agree on
        self.saved_step = run.state.step  # the step of the checkpoint on disk (if any)
        self.last = time.monotonic()

    def due(self) -> bool:
        tc, step = self.run.tc, self.run.state.step
        return self.world.from_writer(self.world.pending is None and (  # no save after an error
            (bool(tc.ckpt_every) and step % tc.ckpt_every == 0) or step == tc.steps or
            (tc.ckpt_seconds > 0 and time.monotonic() - self.last >= tc.ckpt_seconds)))  # fmt: skip

    def save(self, compare: bool = True) -> None:
        """compare: check that the ranks agree first (a collective: every rank must call it)."""

        st = self.run.state
        if compare:
            self.world.check_same(self.trained.flat, st.step, str(self.run.out))
        if self.world.writer:  # N ranks: a write error waits for the ranks' next meeting
            self.world.defer(self._write)
        self.saved_step, self.last = st.step, time.monotonic()

    def _write(self) -> None:
        """The checkpoint, and in a LoRA run its adapters in PEFT's format beside it (over the
        base the run was --init'ed from)."""
        from anetrain.formats import checkpoint
        from anetrain.formats.peft import write_adapter

        run = self.run
        ck = checkpoint.Checkpoint(run.state, self.params, self.opt.m, self.opt.v, run.lora)
        if self.staged is None:
            checkpoint.save(run.ckpt_path, ck)
            return
        with self.staged.unstaged():  # the frozen weights, not W + s·B·A
            checkpoint.save(run.ckpt_path, ck)
        write_adapter(run.out, run.lora, run.state.init)


class _NoMetrics:
    """The metrics of a rank other than 0: it writes none."""

    def append(self, rec: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _open_metrics(run, quiet: bool):
    """The run's MetricsLog: resumed in its own directory, its metrics are kept up to the
    checkpoint; anything else starts the file afresh (setup_run has refused another run's)."""
    from anetrain.formats import metrics

    if run.same_run:
        dropped = metrics.trim(run.metrics_path, run.state.step)
        if dropped and not quiet:
            print(f"note: {run.metrics_path}: dropped {dropped} unreadable line(s)")
    return metrics.MetricsLog(run.metrics_path, fresh=not run.same_run)


def _stopped(stop: Stopped, run, saver: _Saver, metrics, rec: dict | None, step0: int,
             world: dist.World) -> int:  # fmt: skip
    """A stop signal in the loop: save the last completed step (with its metrics line), unless
    nothing was trained; a second signal waits for the save. Returns the exit code. N ranks
    stop together at their meeting (rank 0 prints and saves; none leaves before it is done)."""
    st = run.state
    with signals_held(reraise=False):
        if st.step == step0:
            print(f"\ninterrupted ({stop.name}) before the first step; nothing saved",
                  file=sys.stderr)  # fmt: skip
            return stop.exit_code
        if rec is not None:  # the step completed, its line was not written yet
            metrics.append(rec)
        if saver.saved_step != st.step:
            print(f"\ninterrupted ({stop.name}): saving the checkpoint of step {st.step} (another "
                  "signal waits for it)", file=sys.stderr, flush=True)  # fmt: skip
            saver.save(compare=False)
        print(f"checkpoint saved at step {st.step} in {run.ckpt_path}", file=sys.stderr)
        world.barrier()
    return stop.exit_code


def _checkpoint_flags(args: argparse.Namespace) -> None:
    """--ckpt-every N|TIME -> args.ckpt_every (steps) and args.ckpt_seconds; both None when not
    given (a fresh run's default, or what a resumed run saved)."""
    args.ckpt_seconds = None
    if args.ckpt_every is not None:
        args.ckpt_every, args.ckpt_seconds = checkpoint_interval(args.ckpt_every)


def _restore(run, world: dist.World, threads: int, quiet: bool):
    """The run's optimizer and training sampler, at the state its RunState holds: (what
    micro_step writes the gradients into, AdamW, the gradients AdamW reads, sampler, a LoRA
    run's frozen weights)."""
    from anetrain.optim import AdamW

    tc, st = run.tc, run.state
    grads, trained, tgrads, frozen, dropout = _trained(run)
    opt = AdamW(trained, tc.beta1, tc.beta2, tc.eps, tc.weight_decay, threads=threads)
    if run.moments is not None:
        opt.m, opt.v = run.moments
    opt.t = st.adam_t
    sampler = run.data.train.sampler(run.cfg.seq_len, tc.seed + 1, world.rank, world.size)
    if st.sampler is not None:
        sampler.set_state(st.sampler)
    _record_ranks(run, world, quiet)
    return grads, opt, tgrads, sampler, frozen, dropout


@contextmanager
def _in_micro_step(dropout, step: int, window: int):
    """One training micro-step: sim's fp16 overflow warnings off (the loss scaler reports an
    overflow as a skipped step); with LoRA dropout, the masks of this window of this step."""
    from anetrain.mil import MilOverflowWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MilOverflowWarning)
        if dropout is None:
            yield
            return
        dropout.begin(step, window)
        try:
            yield
        finally:
            dropout.end()


def _trained(run):
    """(micro_step's Gradients, what AdamW trains, the gradients it reads, a LoRA run's frozen
    weights): every parameter; or in a LoRA run the adapters alone (no gradient buffer for the
    frozen weights), with the adapted matrices of run.params staged to W + s·B·A in place."""
    from anetrain.lora import LoraDropout, LoraGrads, keep_frozen
    from anetrain.model import FullGrads

    if run.lora is None:
        grads = run.params.zeros_like()
        return FullGrads(grads), run.params, grads, None, None
    dlora = run.lora.zeros_like()
    drop = LoraDropout(run.lora, run.tc.seed) if run.lora.lc.dropout else None
    frozen = keep_frozen(run.params, run.lora)
    return LoraGrads(run.lora, dlora, drop), run.lora, dlora, frozen, drop


def train(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _checkpoint_flags(args)
    threads, blas_threads = _set_threads(args.threads, args.backend)

    import numpy as np

    from anetrain.lora import Staged
    from anetrain.model import micro_step
    from anetrain.native import counted_targets
    from anetrain.optim import LossScaler, get_lr, grad_norm, optimizer_step
    from anetrain.phases import StepClock
    from anetrain.report import Progress, final_report
    from anetrain.run import setup_run

    world = dist.connect()
    args.quiet = world.quiet_others(args.quiet)  # rank 0 alone reports
    run = world.agree(setup_run, args)  # an input error on any rank stops every rank with it
    tc, st, S, quiet = run.tc, run.state, run.cfg.seq_len, args.quiet
    _note_validation(run, quiet)
    params = run.params  # a LoRA run: W + s·B·A in the adapted matrices, the frozen W aside
    grads, opt, tgrads, sampler, frozen, dropout = _restore(run, world, threads, quiet)
    seqs = world.size * tc.accum  # sequences per optimizer step, over all ranks
    step0, decay_steps, tokens_per_step = st.step, tc.lr_decay_steps or tc.steps, seqs * S

    # N ranks: a stop signal is recorded, and acted on where they meet (World.meet)
    with _open_backend(run, params, threads, blas_threads, quiet, world, dropout) as \
            (kern, backend, dw_pool, dw_note), world.deferring_signals() as caught:  # fmt: skip
        # fp16 kernels need loss scaling; the fp32 cpu kernels do not (scale 1, never skips)
        scaler = LossScaler(2.0**12 if kern.fp16 else 1.0, dynamic=kern.fp16)
        copies = kern if run.lora is None else Staged(kern, params, run.lora, frozen)
        if st.scaler is not None:
            scaler.set_state(st.scaler)
        st.backend = backend
        metrics = _open_metrics(run, quiet) if world.writer else _NoMetrics()
        if not quiet:
            _banner(run, backend, threads, dw_note, world)
        progress = Progress(step0, tc.steps, tokens_per_step, quiet)
        saver = _Saver(run, params, opt, world, None if run.lora is None else copies)
        rec, step_ms = None, []
        t_start = time.perf_counter()
        clock = StepClock(kern, dw_pool, tokens_per_step)  # per-phase timings of every step
        # a diverging run is caught by the loss / gradient-norm checks with one line, not by
        # numpy's overflow warnings (restored in the finally below)
        numpy_err = np.seterr(over="ignore", invalid="ignore", divide="ignore")
        try:
            while st.step < tc.steps:
                t0, times = clock.start()
                lr = get_lr(st.step, tc.lr, tc.min_lr, tc.warmup, decay_steps)
                loss_sum = weight = 0.0  # weight: counted targets, in whole windows
                for micro in range(tc.accum):
                    if caught or world.pending:  # N ranks: on to the all-reduce, where they meet
                        break
                    x, y = sampler.next()
                    w = counted_targets(y) / S  # 1.0 for a window without masked targets
                    # the window's place in the step's global sequence (for any rank count)
                    with _in_micro_step(dropout, st.step, micro * world.size + world.rank):
                        loss = micro_step(params, grads, kern, x, y, accumulate=micro > 0,
                                          loss_scale=scaler.scale * w, dw_pool=dw_pool,
                                          sync=micro == tc.accum - 1, times=times)  # fmt: skip
                    if not math.isfinite(loss):
                        world.fail(_diverged(run, st.step, f"loss is {loss} (micro-step "
                                             f"{micro + 1} of {tc.accum})"))  # fmt: skip
                    loss_sum, weight = loss_sum + loss * w, weight + w
                    progress.inside_step(micro + 1, tc.accum, time.perf_counter() - t0)
                clock.optim_start()
                # over the ranks, in place; they stop here together on a signal or an error
                loss_sum, weight = world.sum_grads(grads.flat, (loss_sum, weight), caught)
                weight = weight or 1.0  # (no counted target at all: zero gradients)
                unscale = 1.0 / (weight * scaler.scale)  # and average over the counted targets
                norm = grad_norm(tgrads, unscale, threads)
                if not math.isfinite(norm) and not scaler.can_skip():  # the same on every rank
                    at = f" even at loss scale {scaler.scale:g}" if scaler.dynamic else ""
                    problem = f"the gradient norm is {norm}{at}"
                    raise world.together(_diverged(run, st.step, problem))
                old_scale = scaler.scale
                with signals_held():  # the update, the counters and the record move together
                    skipped = optimizer_step(opt, tgrads, copies, scaler, lr, norm, unscale,
                                             tc.clip)  # fmt: skip
                    st.step, st.tokens, st.adam_t = st.step + 1, st.tokens + tokens_per_step, opt.t
                    st.sampler, st.scaler = sampler.state(), scaler.state()
                    ms = (time.perf_counter() - t0) * 1000.0
                    rec = clock.fill(_record(st, loss_sum / weight, lr, ms, norm, scaler), ms)
                step_ms.append(ms)
                if run.data.val is not None and \
                        ((tc.eval_every and st.step % tc.eval_every == 0) or st.step == tc.steps):
                    rec["val_loss"] = _evaluate(params, kern, run.data.val, S, tc.eval_batches)
                if skipped:
                    progress.note(f"step {st.step}: gradients overflowed fp16 at loss scale "
                                  f"{old_scale:g}; step skipped, loss scale now {scaler.scale:g}")
                with signals_held():  # the line is written whole, and only once
                    world.defer(metrics.append, rec)  # N ranks: a write error waits for them
                    progress.update(rec, ms)
                    rec = None
                if saver.due():
                    clock.checkpoint(saver.save)
            world.meet(caught)  # N ranks: a stop or error since the last step's meeting
        except Stopped as stop:
            progress.close()
            return _stopped(stop, run, saver, metrics, rec, step0, world)
        finally:
            np.seterr(**numpy_err)
            metrics.close()
        progress.close()
        final_report(run, step_ms, step0, time.perf_counter() - t_start, scaler, kern, clock,
                     quiet)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return dist.finish(run_cli("anetrain.train", train, argv))


if __name__ == "__main__":
    sys.exit(main())
