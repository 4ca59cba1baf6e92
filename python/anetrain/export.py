"""python -m anetrain.export (and fuse): write a model as a llama2.c model.bin or a Hugging Face
directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from anetrain.cli import run_cli
from anetrain.errors import UserError

if TYPE_CHECKING:
    from anetrain.config import ModelConfig
    from anetrain.formats.checkpoint import Checkpoint


EXPORT = ("Export a model to another format: a llama2.c model.bin (version 0 is the file "
          "llama2.c's run.c reads: `./run model.bin -z tokenizer.bin`), or a Hugging Face model "
          "directory that transformers' AutoModelForCausalLM.from_pretrained loads. A LoRA run "
          "or a PEFT adapter directory is written as its merged model, W + scale·B·A.")
FUSE = ("Merge LoRA adapters into their base model, W + scale·B·A, and write it as a Hugging "
        "Face model directory or a llama2.c model.bin (the same as export, which also merges, "
        "but refusing a model without adapters).")


def build_parser(fuse: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m anetrain.{'fuse' if fuse else 'export'}",
                                description=FUSE if fuse else EXPORT)  # fmt: skip
    p.add_argument(
        "checkpoint",
        metavar="RUN_DIR" if fuse else "checkpoint",
        help="a LoRA run (its directory or checkpoint.bin) or a PEFT adapter directory" if fuse
        else "the model: an anetrain checkpoint (a file, or a run directory with checkpoint.bin), "
        "a llama2.c model.bin, a Hugging Face model directory or Hub id, or a PEFT adapter "
        "directory",
    )
    p.add_argument(
        "--base",
        default=None,
        metavar="MODEL",
        help="the base model of a PEFT adapter directory (default: its adapter_config.json's "
        "base_model_name_or_path)",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=("llama2c", "hf"),
        help="llama2c: a model.bin (Llama-shaped models only); hf: a directory with config.json, "
        "model.safetensors and the run's Hugging Face tokenizer files",
    )
    p.add_argument(
        "--version",
        type=int,
        default=None,
        choices=(0, 1),
        help="llama2.c file version: 0 = legacy, read by run.c (default); 1 = 'ak42' fp32 header",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("fp32", "bf16", "fp16"),
        help="weights of model.safetensors (--format hf): fp32 (default), bf16 or fp16 (rounded "
        "to nearest even)",
    )
    p.add_argument(
        "-o", "--output", required=True,
        help="output file (llama2c, e.g. model.bin) or directory (hf)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output if it already exists (a directory only if it holds a model: "
        "a config.json)",
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


def check_output_dir(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse a file, a directory holding the input, and a non-empty directory unless
    --overwrite is given and it is a model directory (never any other directory of the user's)."""
    from anetrain.formats.hf import is_hf_dir

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, not an output directory")
    if not out.exists():
        return
    if src.resolve() == out.resolve() or out.resolve() in src.resolve().parents:
        raise UserError(f"{out}: refusing to replace the directory of the input model")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    if not is_hf_dir(out):
        raise UserError(f"{out}: not a model directory (no config.json); refusing to replace it")


def _describe(cfg: ModelConfig) -> str:
    return (f"dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.n_kv_heads} kv), "
            f"hidden {cfg.hidden_dim}, vocab {cfg.vocab_size}, seq {cfg.seq_len}, "
            f"{'shared' if cfg.shared_classifier else 'separate'} classifier")  # fmt: skip


def _export_hf(args: argparse.Namespace, src: Path, ck: Checkpoint) -> None:
    from anetrain.formats.hf import TOKENIZER_FILES, hf_config, tokenizer_dir, write_hf

    out = Path(args.output)
    check_output_dir(out, src, args.overwrite)
    dtype = args.dtype or "fp32"
    names = write_hf(out, ck.model, ck.params, dtype, ck.state.tokenizer)
    arch = hf_config(ck.model)["architectures"][0]
    print(f"wrote {out}: Hugging Face {arch}, {dtype} ({_describe(ck.model)})")
    tok = ck.state.tokenizer
    if tokenizer_dir(tok) is not None:
        copied = [n for n in names if n in TOKENIZER_FILES]
        print(f"tokenizer: {', '.join(copied)} from {tokenizer_dir(tok)}")
    elif tok:
        print(f"tokenizer: {tok} is not a Hugging Face tokenizer.json; no tokenizer files "
              f"written (copy a tokenizer.json into {out} by hand)")  # fmt: skip
    else:
        print("tokenizer: the model records none; no tokenizer files written")


def _export_llama2c(args: argparse.Namespace, src: Path, ck: Checkpoint) -> None:
    from anetrain.formats.llama2c import write_llama2c

    out = Path(args.output)
    check_output(out, src, args.overwrite)
    version = args.version or 0
    size = write_llama2c(out, ck.model, ck.params, version=version)  # atomic: .tmp + rename
    print(f"wrote {out}: llama2.c v{version}, {size:,} bytes ({_describe(ck.model)})")
    if ck.state.tokenizer:
        print(f"tokenizer: {ck.state.tokenizer}")


def export(argv: list[str] | None, fuse: bool = False) -> int:
    """export, or fuse (`fuse`: the input must hold adapters)."""
    args = build_parser(fuse).parse_args(argv)
    if args.format == "hf" and args.version is not None:
        raise UserError("--version is for --format llama2c; --format hf writes safetensors")
    if args.format == "llama2c" and args.dtype not in (None, "fp32"):
        raise UserError(f"--dtype {args.dtype} is for --format hf; llama2.c files are fp32")
    from anetrain.formats.models import has_adapters, load_model, model_file

    src = model_file(args.checkpoint)
    if fuse and not has_adapters(src):
        raise UserError(f"{src}: holds no LoRA adapters to fuse (neither a LoRA run nor a PEFT "
                        "adapter directory); python -m anetrain.export writes it as it is")
    _, ck = load_model(src, args.base)
    if args.format == "hf":
        _export_hf(args, src, ck)
    else:
        _export_llama2c(args, src, ck)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.export", export, argv)


if __name__ == "__main__":
    sys.exit(main())
