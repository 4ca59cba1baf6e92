"""One training run's inputs, resolved from the command line: a fresh start, --init or --resume."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anetrain.config import DEFAULT_LR, PRESETS, ModelConfig, TrainConfig, preset
from anetrain.errors import CheckpointError, UserError
from anetrain.formats import checkpoint
from anetrain.formats.checkpoint import RunState
from anetrain.formats.data import Dataset, check_length, open_dataset
from anetrain.formats.llama2c import read_llama2c
from anetrain.params import Params, init_params

METRICS_NAME = "metrics.jsonl"

# Command-line flag -> TrainConfig field, for flags that override a resumed run's settings.
TRAIN_FLAGS = {
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
    "ckpt_seconds": "ckpt_seconds",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "backend": "backend",
}


@dataclass
class Run:
    """Everything the training loop starts from."""

    state: RunState  # model, settings, and the position to continue from (step 0 when fresh)
    data: Dataset
    params: Params  # fp32 masters
    moments: tuple[Params, Params] | None  # saved AdamW m, v (resume only)
    out: Path  # the run directory
    same_run: bool  # resuming in its own directory: its metrics are kept up to the checkpoint

    @property
    def cfg(self) -> ModelConfig:
        return self.state.model

    @property
    def tc(self) -> TrainConfig:
        assert self.state.train is not None
        return self.state.train

    @property
    def ckpt_path(self) -> Path:
        return self.out / checkpoint.FILE_NAME

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_NAME


def setup_run(args: argparse.Namespace) -> Run:
    """Read the checkpoint or model file and the data, and decide every setting; raises a
    UserError (before anything is written) for any input that cannot work."""
    resume_file = _resume_file(args)
    # a resumed run keeps writing into its own directory unless --out says otherwise
    out = Path(args.out) if args.out is not None else \
        (resume_file.parent if resume_file is not None else Path("out"))  # fmt: skip
    same_run = resume_file is not None and \
        (out / checkpoint.FILE_NAME).resolve() == resume_file.resolve()  # fmt: skip
    if (out / checkpoint.FILE_NAME).exists() and not same_run and not args.overwrite:
        raise UserError(
            f"{out / checkpoint.FILE_NAME}: a checkpoint already exists; use --resume {out} to "
            "continue it, another --out, or --overwrite to replace it"
        )
    if resume_file is not None:
        run = _resume(args, resume_file, out, same_run)
    else:
        run = _fresh(args, out)
    check_length(run.data.train, run.cfg.seq_len, run.data.source)
    if run.data.val is not None:
        check_length(run.data.val, run.cfg.seq_len, f"{run.data.source} (validation)")
    _check_out_dir(out)
    return run


def _resume_file(args: argparse.Namespace) -> Path | None:
    """--resume DIR (or DIR/checkpoint.bin), DIR defaulting to --out."""
    if args.resume is None:
        return None
    if args.init is not None:
        raise UserError("--init starts a new run from a model; it cannot be used with --resume")
    return checkpoint.resolve(args.resume or args.out or "out")


def _flags(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if v is not None}


def _resume(args: argparse.Namespace, path: Path, out: Path, same_run: bool) -> Run:
    ck = checkpoint.load(path)
    saved = ck.state.train
    if saved is None:
        raise CheckpointError(f"{path}: holds weights only, no training run to resume; use "
                              f"--init {path} to start one from them")  # fmt: skip
    flags = _flags(args)
    tc_dict = {**saved.to_dict(), **{f: flags[a] for a, f in TRAIN_FLAGS.items() if a in flags}}
    if "lr" in flags and "min_lr" not in flags and math.isclose(saved.min_lr, saved.lr / 10):
        tc_dict["min_lr"] = flags["lr"] / 10  # the saved min_lr was the default lr/10
    tc = TrainConfig(**tc_dict)
    if tc.steps <= ck.state.step:
        raise UserError(f"{path}: the run is already at step {ck.state.step} of --steps "
                        f"{tc.steps}; pass a larger --steps to train further")  # fmt: skip
    cfg = ck.model
    if args.model is not None:
        check_architecture(path, cfg, args.model)
    if args.seq is not None and args.seq != cfg.seq_len:
        raise CheckpointError(f"{path}: checkpoint seq_len is {cfg.seq_len}, not --seq {args.seq}")
    data = open_dataset(args.data or ck.state.data, args.vocab_size or cfg.vocab_size,
                        args.val_data or ck.state.val_data)  # fmt: skip
    if data.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{data.source}: data vocab {data.vocab_size} does not match the "
                              f"checkpoint's {cfg.vocab_size}")  # fmt: skip
    state = dataclasses.replace(
        ck.state, train=tc, data=_absolute(args.data or ck.state.data),
        val_data=_absolute(args.val_data or ck.state.val_data),
        tokenizer=_absolute(data.tokenizer),
    )  # fmt: skip
    moments = (ck.m, ck.v) if ck.m is not None and ck.v is not None else None
    return Run(state, data, ck.params, moments, out, same_run)


def _fresh(args: argparse.Namespace, out: Path) -> Run:
    init = _init_model(args.init, args.model, args.seq) if args.init is not None else None
    model_name = args.model or (_preset_of(init.cfg) if init else "tiny") or "llama2c"
    flags = _flags(args)
    flags.setdefault("lr", DEFAULT_LR.get(model_name, TrainConfig.lr))
    flags.setdefault("min_lr", flags["lr"] / 10)
    tc = TrainConfig(**{f: flags[a] for a, f in TRAIN_FLAGS.items() if a in flags})
    if "warmup" not in flags:  # 10% of the schedule, at most 100 steps
        tc.warmup = min(100, (tc.lr_decay_steps or tc.steps) // 10)
    data = open_dataset(args.data, args.vocab_size, args.val_data)
    if init is not None:
        params, cfg = init, init.cfg
        if data.vocab_size != cfg.vocab_size:
            raise UserError(f"{data.source}: data vocab {data.vocab_size} does not match the "
                            f"vocab {cfg.vocab_size} of --init {args.init}")  # fmt: skip
    else:
        cfg = preset(model_name, vocab_size=data.vocab_size, seq_len=args.seq)
        params = init_params(cfg, np.random.Generator(np.random.PCG64(tc.seed)))
    state = RunState(cfg, tc, data=_absolute(args.data), val_data=_absolute(args.val_data),
                     tokenizer=_absolute(data.tokenizer))  # fmt: skip
    return Run(state, data, params, None, out, same_run=False)


def check_architecture(path: str | Path, cfg: ModelConfig, model: str) -> None:
    """A --model preset given next to a model file must name the file's architecture."""
    if preset(model).architecture() != cfg.architecture():
        raise CheckpointError(f"{path}: --model {model} does not match the file's architecture "
                              f"({cfg.describe()}); drop --model, the file decides")  # fmt: skip


def _preset_of(cfg: ModelConfig) -> str | None:
    """The preset with this architecture (for its default learning rate), if any."""
    return next((n for n, p in PRESETS.items() if p.architecture() == cfg.architecture()), None)


def _init_model(path: str, model: str | None, seq: int | None) -> Params:
    """A llama2.c model to fine-tune: the architecture comes from its header.

    `model` (a --model preset) must agree with the header's architecture; its seq_len and vocab
    are ignored. `seq` may lower the training context below the file's seq_len (RoPE has no
    learned positions, so the weights do not depend on it); the run's checkpoints and exports then
    record the lower seq_len. A longer context than the file's is refused: run.c sizes its KV cache
    by the header, and the model never saw those positions.
    """
    cfg, params = read_llama2c(path)
    if model is not None:
        check_architecture(path, cfg, model)
    if seq is not None:
        if not 0 < seq <= cfg.seq_len:
            raise CheckpointError(f"{path}: --seq {seq} must be in 1..{cfg.seq_len} (the file's "
                                  "seq_len)")  # fmt: skip
        params = Params(cfg.replace(seq_len=seq), params.flat)
    return params


def _absolute(path: str | Path | None) -> str | None:
    """Absolute, so a resume from another directory finds it (None: the embedded dataset)."""
    return None if path is None else str(Path(path).resolve())


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out}: output directory is not writable ({e.strerror or e})") from None

