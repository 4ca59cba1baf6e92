"""One training run's inputs, resolved from the command line: a fresh start, --init or --resume."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anetrain.config import DEFAULT_LR, PRESETS, ConfigError, ModelConfig, TrainConfig, preset
from anetrain.errors import CheckpointError, DataError, UserError
from anetrain.formats import checkpoint, metrics
from anetrain.formats.checkpoint import Checkpoint, RunState
from anetrain.formats.data import Dataset, open_dataset
from anetrain.formats.hf import is_hf_dir
from anetrain.formats.hub import is_hub_id
from anetrain.formats.instruct import is_jsonl, open_jsonl
from anetrain.formats.llama2c import is_llama2c
from anetrain.formats.models import KINDS, PEFT, load_adapter, load_model, model_file, model_kind
from anetrain.formats.peft import Adapter, adapter_base, is_adapter_dir
from anetrain.lora import LoraConfig, LoraParams, init_lora
from anetrain.params import Params, init_params

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
    moments: tuple[Params, Params] | tuple[LoraParams, LoraParams] | None  # saved AdamW m, v
    # (resume only; of the adapters in a LoRA run)
    out: Path  # the run directory
    same_run: bool  # resuming in its own directory: its metrics are kept up to the checkpoint
    lora: LoraParams | None = None  # a LoRA run's adapters (params are then frozen)

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
        return self.out / metrics.FILE_NAME


def setup_run(args: argparse.Namespace) -> Run:
    """Read the checkpoint or model file and the data, and decide every setting.

    Raises a UserError for any input that cannot work before anything is written, in the order
    a user needs them: flags, then the inputs (model, checkpoint, data), and only then another
    run's checkpoint in --out (never replaced without --overwrite).
    """
    _check_flags(args)
    resume_file = _resume_file(args)
    # a resumed run keeps writing into its own directory unless --out says otherwise
    out = Path(args.out) if args.out is not None else \
        (resume_file.parent if resume_file is not None else Path("out"))  # fmt: skip
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not a run directory; pass a directory to --out")
    same_run = resume_file is not None and \
        (out / checkpoint.FILE_NAME).resolve() == resume_file.resolve()  # fmt: skip
    if same_run and args.overwrite:
        raise UserError(f"--resume and --overwrite contradict each other: --resume continues "
                        f"the run in {out}, --overwrite starts a new one; drop one")  # fmt: skip
    if resume_file is not None:
        run = _resume(args, resume_file, out, same_run)
    else:
        run = _fresh(args, out)
    run.data.train.check(run.cfg.seq_len)
    if run.data.val is not None:
        run.data.val.check(run.cfg.seq_len)
    if (out / checkpoint.FILE_NAME).exists() and not same_run and not args.overwrite:
        raise UserError(
            f"{out / checkpoint.FILE_NAME}: a checkpoint already exists; use --resume {out} to "
            "continue it, another --out, or --overwrite to replace it"
        )
    if metrics.has_records(out / metrics.FILE_NAME) and not same_run and not args.overwrite:
        raise UserError(f"{out / metrics.FILE_NAME}: another run's metrics are here (it never "
                        "saved a checkpoint); use another --out, or --overwrite to replace "
                        "them")  # fmt: skip
    _check_out_dir(out)
    _warn_schedule(run.tc)
    if resume_file is None and args.init is None and args.vocab_size is None and run.data.raw:
        _warn_unused_vocab(run.data)
    return run


def _check_flags(args: argparse.Namespace) -> None:
    """Flags that contradict each other or cannot be right, before any file is read."""
    if args.resume is not None and args.init is not None:
        raise UserError("--init starts a new run from a model; it cannot be used with --resume")
    if args.data == "":
        raise DataError("--data is empty: pass a dataset directory or a token .bin")
    if args.val_data == "":
        raise DataError("--val-data is empty: pass a token .bin")
    if args.tokenizer == "":
        raise DataError("--tokenizer is empty: pass a tokenizer.json, a model directory or a "
                        "tokenizer.bin")  # fmt: skip
    if args.init == "":
        raise UserError(f"--init is empty: pass {KINDS}")
    if args.out == "":
        raise UserError("--out is empty: pass a run directory")
    if args.base is not None and args.init is None:
        raise UserError("--base is the base model of --init PEFT_ADAPTER_DIR; it needs --init")
    if args.model is not None and args.model not in PRESETS:
        raise ConfigError(f"--model {args.model}: unknown model preset (choose from "
                          f"{', '.join(PRESETS)})")  # fmt: skip
    if args.seq is not None and args.seq < 1:
        raise ConfigError(f"--seq must be >= 1, got {args.seq}")
    if args.vocab_size is not None and args.vocab_size < 1:
        raise ConfigError(f"--vocab-size must be >= 1, got {args.vocab_size}")


def _resume_file(args: argparse.Namespace) -> Path | None:
    """--resume DIR (or DIR/checkpoint.bin), DIR defaulting to --out."""
    if args.resume is None:
        return None
    return checkpoint.resolve(args.resume or args.out or "out")


def _flags(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if v is not None}


def _load_resumable(path: Path) -> Checkpoint:
    """A training checkpoint to continue; a model file of another kind is pointed at --init."""
    if not checkpoint.is_checkpoint(path) and is_llama2c(path):
        raise CheckpointError(f"{path}: this is a llama2.c model, not a training checkpoint: "
                              f"use --init {path} to fine-tune it")  # fmt: skip
    if path.name == checkpoint.FILE_NAME and not path.exists() and is_adapter_dir(path.parent):
        raise CheckpointError(f"{path.parent}: this is a PEFT adapter, not a training checkpoint: "
                              f"use --init {path.parent} to continue training it")  # fmt: skip
    if path.name == checkpoint.FILE_NAME and not path.exists() and is_hf_dir(path.parent):
        raise CheckpointError(f"{path.parent}: this is a Hugging Face model, not a training "
                              f"checkpoint: use --init {path.parent} to fine-tune it")  # fmt: skip
    ck = checkpoint.load(path)
    if ck.state.train is None:
        raise CheckpointError(f"{path}: holds weights only, no training run to resume; use "
                              f"--init {path} to start one from them")  # fmt: skip
    return ck


def _resume(args: argparse.Namespace, path: Path, out: Path, same_run: bool) -> Run:
    ck = _load_resumable(path)
    saved = ck.state.train
    assert saved is not None
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
    data_path, val_path = args.data or ck.state.data, args.val_data or ck.state.val_data
    if is_jsonl(data_path):
        st = ck.state
        for flag, given, saved_value in (("--mask-prompt", args.mask_prompt, st.mask_prompt),
                                         ("--skip-bad-records", args.skip_bad_records,
                                          st.skip_bad_records)):  # fmt: skip
            if given and not saved_value:
                raise CheckpointError(f"{path}: the run was trained without {flag}; resume "
                                      f"it without it, or start a new run (--init {path})")
        args.mask_prompt, args.skip_bad_records = st.mask_prompt, st.skip_bad_records
        data = _open_jsonl(args, data_path, args.tokenizer or ck.state.tokenizer)
        check_ids(data, cfg, str(path))
    else:
        _no_jsonl_flags(args, data_path)
        saved_dtype = ck.state.data_dtype if args.data is None else None  # the saved raw file's
        data = open_dataset(data_path, args.vocab_size, val_path, default_vocab=cfg.vocab_size,
                            dtype=args.data_dtype or saved_dtype)  # fmt: skip
        if data.vocab_size != cfg.vocab_size:
            raise CheckpointError(f"{data.source}: data vocab {data.vocab_size} does not match "
                                  f"the checkpoint's {cfg.vocab_size}")  # fmt: skip
    state = dataclasses.replace(
        ck.state, train=tc, data=_absolute(data_path), val_data=_absolute(val_path),
        data_dtype=_raw_dtype(data), tokenizer=_absolute(data.tokenizer),
        mask_prompt=args.mask_prompt or None, skip_bad_records=args.skip_bad_records or None,
    )  # fmt: skip
    _check_lora_resume(args, path, ck.state.lora)
    moments = (ck.m, ck.v) if ck.m is not None and ck.v is not None else None
    return Run(state, data, ck.params, moments, out, same_run, ck.lora)


def _lora_flags(args: argparse.Namespace) -> tuple:
    return (args.lora_alpha, args.lora_targets, args.lora_layers, args.lora_dropout)


def _lora_config(args: argparse.Namespace, dropout: float = 0.0) -> LoraConfig | None:
    """--lora-rank R [--lora-alpha A] [--lora-targets q,v] [--lora-layers N] [--lora-dropout P],
    or None; `dropout` when --lora-dropout is not given."""
    if args.lora_rank is None:
        if any(v is not None for v in _lora_flags(args)):
            raise ConfigError("--lora-alpha, --lora-targets, --lora-layers and --lora-dropout need "
                              "--lora-rank")  # fmt: skip
        return None
    targets = tuple(args.lora_targets.split(",")) if args.lora_targets is not None else ("q", "v")
    p = dropout if args.lora_dropout is None else args.lora_dropout
    return LoraConfig(args.lora_rank, args.lora_alpha or 0.0, p, targets, args.lora_layers or 0)


def _check_lora_resume(args: argparse.Namespace, path: Path, saved: LoraConfig | None) -> None:
    """LoRA flags on --resume must describe the saved run's adapters (or be left out)."""
    if args.lora_rank is None and all(v is None for v in _lora_flags(args)):
        return
    given = _lora_config(args, saved.dropout if saved is not None else 0.0)
    if saved is None:
        raise CheckpointError(f"{path}: a full fine-tuning run cannot be resumed with LoRA; use "
                              f"--init {path} to train adapters over its weights")  # fmt: skip
    if given != saved:
        raise CheckpointError(f"{path}: the run trains LoRA {saved.to_dict()}, not the "
                              f"--lora-* flags' {given.to_dict()}")  # fmt: skip


def _fresh(args: argparse.Namespace, out: Path) -> Run:
    init_from = _init_model(args) if args.init is not None else None
    init = init_from.params if init_from is not None else None
    adapter = init_from.adapter if init_from is not None else None
    init_tokenizer = init_from.tokenizer if init_from is not None else None
    lc = _lora_config(args) if adapter is None else _adapter_lora_config(args, adapter)
    model_name = args.model or (_preset_of(init.cfg) if init else "tiny") or "llama2c"
    flags = _flags(args)
    flags.setdefault("lr", DEFAULT_LR.get(model_name, TrainConfig.lr))
    flags.setdefault("min_lr", flags["lr"] / 10)
    tc = TrainConfig(**{f: flags[a] for a, f in TRAIN_FLAGS.items() if a in flags})
    if "warmup" not in flags:  # 10% of the schedule, at most 100 steps
        tc.warmup = min(100, (tc.lr_decay_steps or tc.steps) // 10)
    jsonl = is_jsonl(args.data)
    if jsonl:
        data = _open_jsonl(args, args.data, args.tokenizer or init_tokenizer)
    else:
        _no_jsonl_flags(args, args.data)
    if init is not None:
        # a raw .bin is read with the model's vocabulary; a dataset states its own
        if not jsonl:
            data = open_dataset(args.data, args.vocab_size, args.val_data,
                                default_vocab=init.cfg.vocab_size,
                                dtype=args.data_dtype)  # fmt: skip
        params, cfg = init, init.cfg
        if jsonl:
            check_ids(data, cfg, f"--init {args.init}")
        elif data.vocab_size != cfg.vocab_size:
            raise UserError(f"{data.source}: data vocab {data.vocab_size} does not match the "
                            f"vocab {cfg.vocab_size} of --init {args.init}")  # fmt: skip
    else:
        if not jsonl:
            data = open_dataset(args.data, args.vocab_size, args.val_data, dtype=args.data_dtype)
        cfg = preset(model_name, vocab_size=data.vocab_size, seq_len=args.seq)
        params = init_params(cfg, np.random.Generator(np.random.PCG64(tc.seed)))
    # the data's tokenizer, else (raw token files) the one the --init model came with
    state = RunState(cfg, tc, data=_absolute(args.data), val_data=_absolute(args.val_data),
                     data_dtype=_raw_dtype(data),
                     tokenizer=_absolute(data.tokenizer) or init_tokenizer, lora=lc,
                     init=init_from and init_from.source, mask_prompt=args.mask_prompt or None,
                     skip_bad_records=args.skip_bad_records or None)  # fmt: skip
    if adapter is not None:  # the adapter directory's own adapters, over the (lowered) cfg
        lora: LoraParams | None = LoraParams(cfg, adapter.lc, adapter.lora.flat)
    else:
        lora = None if lc is None else init_lora(cfg, lc, np.random.Generator(np.random.PCG64(
            [tc.seed, 2])))  # fmt: skip
    return Run(state, data, params, None, out, same_run=False, lora=lora)


def _open_jsonl(args: argparse.Namespace, path: str, tokenizer: str | None) -> Dataset:
    """JSONL instruction data (formats/instruct.py); the token-file flags do not apply to it."""
    for flag, value in (("--val-data", args.val_data), ("--vocab-size", args.vocab_size),
                        ("--data-dtype", args.data_dtype)):  # fmt: skip
        if value is not None:
            raise DataError(f"{flag}: applies to token files, not to the JSONL data {path} "
                            "(its directory's valid.jsonl is the validation split; the "
                            "tokenizer sets the vocabulary)")  # fmt: skip
    return open_jsonl(path, tokenizer, bool(args.mask_prompt), bool(args.skip_bad_records))


def _no_jsonl_flags(args: argparse.Namespace, path: str | None) -> None:
    """--tokenizer, --mask-prompt and --skip-bad-records are for JSONL data only."""
    for flag, value in (("--tokenizer", args.tokenizer), ("--mask-prompt", args.mask_prompt),
                        ("--skip-bad-records", args.skip_bad_records)):  # fmt: skip
        if value:
            raise DataError(f"{flag}: applies to JSONL data (a .jsonl file, or a directory with "
                            f"train.jsonl), not to {path or 'the embedded dataset'}")  # fmt: skip


def check_ids(data: Dataset, cfg: ModelConfig, model: str) -> None:
    """The model has an embedding row for every id of the data (JSONL: what its tokenizer gave)."""
    if data.max_id >= cfg.vocab_size:
        raise DataError(f"{data.source}: token id {data.max_id} of the tokenizer {data.tokenizer} "
                        f"is outside the vocabulary of {cfg.vocab_size} of {model}")  # fmt: skip


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _warn_schedule(tc: TrainConfig) -> None:
    """A warmup as long as the schedule never reaches the peak learning rate."""
    horizon, flag = (tc.lr_decay_steps, "--lr-decay-steps") if tc.lr_decay_steps else \
        (tc.steps, "--steps")  # fmt: skip
    if tc.warmup >= horizon:
        _warn(f"--warmup {tc.warmup} is not below the schedule's {horizon} steps ({flag}): the "
              "learning rate never reaches --lr")  # fmt: skip


def _warn_unused_vocab(data: Dataset) -> None:
    """A raw .bin read with the default vocabulary whose ids stay below a quarter of it.

    Every id of the vocabulary costs an embedding row and a classifier row (the [V, S] logits
    dominate a small model's step), used or not. A corpus tokenized with a vocabulary of V
    uses ids across it (Llama-2's 32000 on TinyStories reaches ~31.9k), so a largest id below
    V/4 means a smaller tokenizer or toy data. The largest id comes from the scan that checks
    every id against the vocabulary anyway: no extra pass over the file.
    """
    if 4 * (data.max_id + 1) <= data.vocab_size:
        _warn(f"{data.source}: the largest token id is {data.max_id}, far below the vocabulary "
              f"of {data.vocab_size} (the default for a raw .bin); pass --vocab-size "
              f"{data.max_id + 1} for a smaller, faster model")  # fmt: skip


def check_architecture(path: str | Path, cfg: ModelConfig, model: str) -> None:
    """A --model preset given next to a model file must name the file's architecture."""
    if preset(model).architecture() != cfg.architecture():
        raise CheckpointError(f"{path}: --model {model} does not match the file's architecture "
                              f"({cfg.describe()}); drop --model, the file decides")  # fmt: skip


def _preset_of(cfg: ModelConfig) -> str | None:
    """The preset with this architecture (for its default learning rate), if any."""
    return next((n for n, p in PRESETS.items() if p.architecture() == cfg.architecture()), None)


@dataclass
class _Init:
    """What --init gives a fresh run."""

    params: Params  # the weights to fine-tune (a PEFT adapter's base, unmerged)
    tokenizer: str | None  # the tokenizer the model records, if any
    source: str  # RunState.init: a Hub id as given, else an absolute path
    adapter: Adapter | None = None  # --init PEFT_ADAPTER_DIR: the adapters to continue


def _source(name: str) -> str:
    return name if is_hub_id(name) else str(Path(name).resolve())


def _init_model(args: argparse.Namespace) -> _Init:
    """The weights of a model to fine-tune (an anetrain checkpoint or run directory, a llama2.c
    model.bin, a Hugging Face model directory or Hub id, or a PEFT adapter directory over its
    base or --base): the architecture comes from the file; its optimizer state, step and
    settings, if any, are not used.

    --model (a preset) must agree with the header's architecture; its seq_len and vocab are
    ignored. --seq may lower the training context below the file's seq_len (RoPE has no
    learned positions, so the weights do not depend on it); the run's checkpoints and exports then
    record the lower seq_len (a Hugging Face model's seq_len is its max_position_embeddings). A
    longer context than the file's is refused: run.c sizes its KV cache by the header, and the
    model never saw those positions.
    """
    path = model_file(args.init)
    adapter = None
    if model_kind(path) == PEFT:
        ck, adapter = load_adapter(path, args.base)
        base = args.base if args.base is not None else adapter_base(path)
        assert base is not None  # load_adapter has refused an adapter without a base
        source = _source(base)
    else:
        _, ck = load_model(path, args.base)
        source = _source(args.init)
    cfg, params = ck.model, ck.params
    if args.model is not None:
        check_architecture(path, cfg, args.model)
    if args.seq is not None:
        if not 0 < args.seq <= cfg.seq_len:
            raise CheckpointError(f"{path}: --seq {args.seq} must be in 1..{cfg.seq_len} (the "
                                  "file's seq_len)")  # fmt: skip
        params = Params(cfg.replace(seq_len=args.seq), params.flat)
    return _Init(params, ck.state.tokenizer, source, adapter)


def _adapter_lora_config(args: argparse.Namespace, adapter: Adapter) -> LoraConfig:
    """--init PEFT_ADAPTER_DIR continues its adapters: --lora-* flags may restate them, never
    contradict them."""
    lc, n = adapter.lc, adapter.lora.cfg.n_layers
    targets = None if args.lora_targets is None else set(args.lora_targets.split(","))
    checks = [("--lora-rank", args.lora_rank, args.lora_rank, lc.rank, lc.rank),
              ("--lora-alpha", args.lora_alpha, args.lora_alpha, lc.alpha, lc.alpha),
              ("--lora-targets", args.lora_targets, targets, ",".join(lc.targets),
               set(lc.targets)),
              ("--lora-layers", args.lora_layers, args.lora_layers or n, lc.layers or "all",
               lc.layers or n)]  # (flag, given, compared, shown, saved)
    for flag, given, value, shown, saved in checks:
        if given is not None and value != saved:
            raise ConfigError(f"{flag} {given} contradicts the adapter of --init {args.init} "
                              f"({flag[7:]} {shown}); drop the flag or make it agree")  # fmt: skip
    dropout = adapter.dropout if args.lora_dropout is None else args.lora_dropout
    return dataclasses.replace(lc, dropout=dropout)  # the adapter's own, unless --lora-dropout


def _raw_dtype(data: Dataset) -> str | None:
    """What a resume needs to read the same raw file: its dtype when not the default uint16."""
    return data.dtype if data.raw and data.dtype != "uint16" else None


def _absolute(path: str | Path | None) -> str | None:
    """Absolute, so a resume from another directory finds it (None: the embedded dataset)."""
    return None if path is None else str(Path(path).resolve())


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"  # unique: ranks probe at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out}: output directory is not writable ({e.strerror or e})") from None
