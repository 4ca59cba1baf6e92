"""python -m anetrain.eval: mean loss and perplexity of a model over every token of a data split."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from anetrain.cli import run_cli
from anetrain.config import BACKENDS
from anetrain.errors import DataError, UserError

SPLITS = ("valid", "test", "train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain.eval",
        description="Mean cross-entropy and perplexity of MODEL over every target of a split "
        "(not sampled windows), with the masking rules of training: what the train loop's "
        "validation reports as val_loss for the same model and split.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="an anetrain run directory or checkpoint (a LoRA run: its merged model), "
                   "a PEFT adapter directory, a llama2.c model.bin, a Hugging Face model "
                   "directory or Hub id")  # fmt: skip
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="the base of a PEFT adapter directory (default: the one it names)")
    p.add_argument("--data", default=None,
                   help="a dataset directory, a token .bin, JSONL data (a directory with "
                   "train/valid/test.jsonl, or a .jsonl file); default: the data a run "
                   "checkpoint trained on, else the embedded dataset")  # fmt: skip
    p.add_argument("--split", default="valid", choices=SPLITS,
                   help="which split (default valid; a .jsonl file or a token .bin is its own "
                   "train split)")  # fmt: skip
    p.add_argument("--tokenizer", default=None,
                   help="JSONL data: the tokenizer (default: the run's or the model's)")
    p.add_argument("--mask-prompt", action="store_true", default=None,
                   help="JSONL data: loss on completions / assistant turns only (default: as "
                   "the run trained)")  # fmt: skip
    p.add_argument("--skip-bad-records", action="store_true", default=None,
                   help="JSONL data: leave bad records out instead of stopping")
    p.add_argument("--seq", type=int, default=None,
                   help="window length (default: the model's seq_len; at most that)")
    p.add_argument("--batches", type=int, default=0, metavar="N",
                   help="only the first N windows (default 0: all)")
    p.add_argument("--backend", default="cpu", choices=BACKENDS,
                   help="default cpu (fp32); a run's val_loss comes from its own backend's kernels "
                   "(sim/ane: fp16), so pass that backend to reproduce it exactly")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _open_data(args: argparse.Namespace, state, cfg):
    """The dataset to evaluate on: --data with its flags, else what the run recorded."""
    from anetrain.formats.data import open_dataset
    from anetrain.formats.instruct import is_jsonl, open_jsonl

    recorded = state.train is not None and args.data is None
    path = args.data if args.data is not None else (state.data if recorded else None)
    if is_jsonl(path):
        tok = args.tokenizer or state.tokenizer
        mask = args.mask_prompt if args.mask_prompt is not None else bool(state.mask_prompt)
        skip = args.skip_bad_records if args.skip_bad_records is not None else \
            bool(state.skip_bad_records)  # fmt: skip
        return open_jsonl(path, tok, mask, skip)
    val = state.val_data if recorded else None
    dtype = state.data_dtype if recorded else None
    return open_dataset(path, None, val, default_vocab=cfg.vocab_size, dtype=dtype)


def _split(data, name: str):
    split = {"train": data.train, "valid": data.val, "test": data.test}[name]
    if split is None:
        raise DataError(f"{data.source}: has no {name} split (pass --split or --data)")
    return split


def evaluate_model(args: argparse.Namespace) -> dict:
    """Load the model and data, evaluate; the figures as a dict."""
    from anetrain.backends import make_kernels, pick_backend
    from anetrain.formats.data import eval_windows
    from anetrain.formats.models import load_model
    from anetrain.model import evaluate
    from anetrain.params import Params
    from anetrain.run import check_ids

    _, ck = load_model(args.model, base=args.base)
    cfg, params = ck.model, ck.params
    if args.seq is not None:
        if not 0 < args.seq <= cfg.seq_len:
            raise UserError(f"--seq {args.seq} must be in 1..{cfg.seq_len} (the model's seq_len)")
        cfg = cfg.replace(seq_len=args.seq)
        params = Params(cfg, params.flat)
    if args.batches < 0:
        raise UserError(f"--batches must be >= 0, got {args.batches}")
    data = _open_data(args, ck.state, cfg)
    check_ids(data, cfg, str(args.model))
    split = _split(data, args.split)
    split.check(cfg.seq_len)
    backend = pick_backend(args.backend, verbose=False, cfg=cfg)
    kern = make_kernels(backend, cfg, params, args.threads)
    t0 = time.perf_counter()
    try:
        loss, counted = evaluate(params, kern, eval_windows(split, cfg.seq_len, args.batches))
    finally:
        kern.close()
    if counted == 0:
        raise DataError(f"{data.source}: the {args.split} split has no target with loss")
    return {"model": str(args.model), "data": data.source, "split": args.split,
            "backend": backend, "seq": cfg.seq_len, "tokens": counted, "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    r = evaluate_model(args)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} on {r['data']} ({r['split']}, {r['tokens']:,} tokens with loss, "
              f"seq {r['seq']}, {r['backend']}): loss {r['loss']:.4f}, perplexity "
              f"{r['perplexity']:.3f} ({r['seconds']:.1f} s)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.eval", run, argv)


if __name__ == "__main__":
    sys.exit(main())
