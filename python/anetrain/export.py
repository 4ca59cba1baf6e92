"""python -m anetrain.export: write an anetrain checkpoint as a llama2.c model.bin (v0 or v1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anetrain.cli import run_cli
from anetrain.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain.export",
        description="Export a training checkpoint to another format. Version 0 is the file "
        "llama2.c's run.c reads (`./run model.bin -z tokenizer.bin`).",
    )
    p.add_argument(
        "checkpoint", help="anetrain checkpoint (a file, or a run directory with checkpoint.bin)"
    )
    p.add_argument(
        "--format",
        required=True,
        choices=("llama2c",),
        help="output format (llama2c only)",
    )
    p.add_argument(
        "--version",
        type=int,
        default=0,
        choices=(0, 1),
        help="llama2.c file version: 0 = legacy, read by run.c (default); 1 = 'ak42' fp32 header",
    )
    p.add_argument("-o", "--output", required=True, help="output file, e.g. model.bin")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output file if it already exists"
    )
    return p


def check_output(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse the input checkpoint itself, a directory, and (without --overwrite) any file."""
    if out.exists() and out.samefile(src):  # also through symlinks and hard links
        raise UserError(f"{out}: refusing to overwrite the input checkpoint")
    if out.is_dir():
        raise UserError(f"{out}: is a directory, not an output file")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists (pass --overwrite to replace it)")


def export(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from anetrain.formats import checkpoint
    from anetrain.formats.llama2c import write_llama2c

    src = checkpoint.resolve(args.checkpoint)
    ck = checkpoint.load(src, with_optimizer=False)
    out = Path(args.output)
    check_output(out, src, args.overwrite)
    size = write_llama2c(out, ck.model, ck.params, version=args.version)  # atomic: .tmp + rename
    cfg = ck.model
    print(
        f"wrote {out}: llama2.c v{args.version}, {size:,} bytes (dim {cfg.dim}, "
        f"{cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.n_kv_heads} kv), hidden "
        f"{cfg.hidden_dim}, vocab {cfg.vocab_size}, seq {cfg.seq_len}, "
        f"{'shared' if cfg.shared_classifier else 'separate'} classifier)"
    )
    tok = ck.state.tokenizer
    if tok:
        print(f"tokenizer: {tok}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.export", export, argv)


if __name__ == "__main__":
    sys.exit(main())
