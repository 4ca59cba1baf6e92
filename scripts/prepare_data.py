"""Text files -> anetrain dataset directory (train.bin/val.bin tokens, the tokenizer, meta.json)."""

# Mirrors llama2.c's tinystories.py: a sentencepiece BPE vocab trained with train_vocab's options
# (here single-threaded and unshuffled, so the result is deterministic), then every document is
# pretokenized with sentencepiece itself as [BOS] + sp.encode(doc.strip()) (no EOS) and the
# documents are concatenated as raw little-endian uint16 with no header.
#
# With a Hugging Face tokenizer (--tokenizer tokenizer.json or a model directory) a document is
# what the tokenizer puts first (Llama: BOS; Qwen, SmolLM: nothing), its tokens, then EOS; the
# tokenizer files are copied into the dataset so that train and sample find them. A vocabulary
# above 65535 (Qwen3's 151,936) is written as uint32, and meta.json says so.

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from anetrain.errors import DataError  # noqa: E402
from anetrain.formats.data import TOKEN_DTYPES, UINT16_VOCAB, token_dtype  # noqa: E402
from anetrain.formats.hf_tokenizer import HfTokenizer, is_hf_tokenizer  # noqa: E402
from anetrain.formats.tokenizer import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    Tokenizer,
    TokenizerError,
    import_sentencepiece,
)

MAX_VOCAB = UINT16_VOCAB  # a trained vocab: its datasets stay uint16, as llama2.c's
MIN_VOCAB = 259  # <unk>, <s>, </s> and the 256 byte-fallback pieces
UNK_SURFACE = " \u2047 "  # " ⁇ ", llama2.c train_vocab's unk_surface
# every file write_dataset may write; meta.json last, so it is present only for a complete dataset
DATASET_FILES = ("train.bin", "val.bin", "tokenizer.bin", "tokenizer.model", "tokenizer.json",
                 "tokenizer_config.json", "generation_config.json", "meta.json")  # fmt: skip


# ----------------------------------------------------------------------------
# reading documents


def input_files(paths: Sequence[Path]) -> list[Path]:
    """Expand directories to their *.txt files (sorted by name); check every file exists."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.glob("*.txt") if q.is_file())
            if not found:
                raise DataError(f"{p}: directory contains no .txt files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: input file not found")
    return files


def read_documents(files: Sequence[Path], split: str) -> list[str]:
    """Split every file into stripped, non-empty documents.

    split = "blank": documents are separated by blank lines (make_stories.py's format);
    "line": one document per line; "file": one document per file.
    """
    docs: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
        text = text.replace("\r\n", "\n")
        if split == "blank":
            parts = re.split(r"\n[ \t]*\n", text)
        elif split == "line":
            parts = text.split("\n")
        else:
            parts = [text]
        found = [d for d in (p.strip() for p in parts) if d]
        if not found:
            raise DataError(f"{path}: input file is empty")
        docs.extend(found)
    return docs


# ----------------------------------------------------------------------------
# tokenizers


def train_vocab(docs: Sequence[str], vocab_size: int, source: str = "input") -> bytes:
    """Train a sentencepiece BPE model with llama2.c train_vocab's options; returns .model bytes.

    Sentences are the documents' lines (train_vocab writes one story per line and stories contain
    newlines too). num_threads=1 and no input shuffling make the model deterministic. A vocab the
    text cannot have (too small for its characters, too large for its pieces) is a DataError
    naming SOURCE.
    """
    spm = import_sentencepiece("--vocab-size")  # lazily: only vocab training and .model inputs

    def sentences() -> Iterator[str]:
        for doc in docs:
            for line in doc.split("\n"):
                line = line.strip()
                if line:
                    yield line

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            self_test_sample_size=0,
            input_format="text",
            character_coverage=1.0,
            num_threads=1,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            unk_surface=UNK_SURFACE,
            normalization_rule_name="identity",
            shuffle_input_sentence=False,
            input_sentence_size=0,
            minloglevel=2,
        )
    except RuntimeError as e:  # its message starts with a source location and the failed check
        raise DataError(f"{source}: {_vocab_problem(str(e), vocab_size, docs)}") from None
    return model.getvalue()


def _vocab_problem(reason: str, vocab_size: int, docs: Sequence[str]) -> str:
    """One line from sentencepiece's trainer error (which starts with a source location)."""
    m = re.search(r"smaller than required_chars\. \d+ vs (\d+)", reason)
    if m:  # every character needs a piece, as do <unk>, <s>, </s> and the 256 byte pieces
        n_chars = len(set().union(*docs) - {"\n"})
        return (
            f"--vocab-size {vocab_size} is too small for the text's {n_chars} distinct "
            f"characters (it needs at least {m.group(1)})"
        )
    reason = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
    reason = re.sub(r"^\w+: \S+\(\d+\) \[.*?\] ", "", reason)  # "INTERNAL: x.cc(12) [cond] "
    return f"cannot train a {vocab_size}-piece vocab: {reason}"


class Vocab(NamedTuple):  # (a dataclass needs its module in sys.modules; tests load this file)
    """A tokenizer as a dataset uses it."""

    size: int  # meta.json's vocab_size: every id is below it
    encode: Callable[[str], list[int]]  # one document -> its tokens, BOS/EOS included
    files: dict[str, bytes]  # the tokenizer files to write, by name; the first is meta's tokenizer
    special: dict  # meta.json's bos_id and eos_id (and, for Hugging Face, add_bos and add_eos)


def load_tokenizer(path: Path) -> Vocab:
    """An existing tokenizer: Hugging Face tokenizer.json or model directory, sentencepiece
    .model (sentencepiece encodes) or llama2.c .bin (run.c encoder)."""
    if not path.exists():
        raise DataError(f"{path}: tokenizer not found")
    if is_hf_tokenizer(path):
        return hf_vocab(HfTokenizer.load(path))  # a TokenizerError is reported like a DataError
    if path.suffix == ".model":
        return sp_tokenizer(path.read_bytes(), str(path))
    tok = Tokenizer.load(path)
    special = {"bos_id": BOS_ID, "eos_id": EOS_ID}
    encode = lambda doc: tok.encode(doc, bos=True, eos=False)  # noqa: E731
    return Vocab(tok.vocab_size, encode, {"tokenizer.bin": tok.to_bytes()}, special)


def sp_tokenizer(blob: bytes, name: str) -> Vocab:
    """Wrap sentencepiece .model bytes: its llama2.c export and a [BOS] + sp.encode encoder."""
    spm = import_sentencepiece(f"{name}: reading a sentencepiece model")
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(blob)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{name}: cannot load sentencepiece model: {e}") from None
    if sp.bos_id() != BOS_ID or sp.eos_id() != EOS_ID:
        raise DataError(f"{name}: expected bos=1 eos=2, got bos={sp.bos_id()} eos={sp.eos_id()}")
    with tempfile.TemporaryDirectory() as tmp:  # from_sentencepiece reads a file path
        model_path = Path(tmp) / "tokenizer.model"
        model_path.write_bytes(blob)
        tok = Tokenizer.from_sentencepiece(model_path)
    files = {"tokenizer.bin": tok.to_bytes(), "tokenizer.model": blob}
    special = {"bos_id": BOS_ID, "eos_id": EOS_ID}
    return Vocab(tok.vocab_size, lambda doc: [BOS_ID, *sp.encode(doc)], files, special)


def hf_vocab(tok: HfTokenizer) -> Vocab:
    """A Hugging Face tokenizer: each document is its prefix (BOS or nothing), its tokens and EOS.

    The vocab is the model's (config.json beside the tokenizer) when it is larger: a model pads
    its embedding past the tokenizer's ids, and the data must have the model's vocab to train it.
    """
    add_bos, add_eos = bool(tok.prefix), tok.eos_id is not None
    if not (add_bos or add_eos):
        raise DataError(f"{tok.name}: the tokenizer adds no BOS and has no EOS token: nothing "
                        "would separate the documents")  # fmt: skip
    special = {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "add_bos": add_bos, "add_eos": add_eos}
    encode = lambda doc: tok.encode(doc, bos=True, eos=add_eos)  # noqa: E731
    return Vocab(max(tok.vocab_size, tok.model_vocab or 0), encode, dict(tok.files), special)


# ----------------------------------------------------------------------------
# dataset


def split_documents(n_docs: int, val_fraction: float, seed: int) -> list[bool]:
    """is_val per document: a seeded random sample of round(fraction * n) documents (>= 1)."""
    if val_fraction <= 0.0:
        return [False] * n_docs
    n_val = max(1, round(val_fraction * n_docs))
    if n_val >= n_docs:
        raise DataError(f"only {n_docs} documents: too few to split off {n_val} for validation")
    is_val = [False] * n_docs
    for i in random.Random(seed).sample(range(n_docs), n_val):
        is_val[i] = True
    return is_val


def tokenize(
    docs: Sequence[str], encode: Callable[[str], list[int]], is_val: Sequence[bool], vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate each document's tokens into the train and val token streams (uint16, or
    uint32 for a vocab above 65535), little-endian."""
    from tqdm import tqdm

    train: list[int] = []
    val: list[int] = []
    for doc, v in zip(tqdm(docs, desc="tokenizing", unit="doc"), is_val, strict=True):
        (val if v else train).extend(encode(doc))
    out = []
    for ids in (train, val):
        a = np.asarray(ids, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= vocab):
            raise DataError(f"token id {int(a.max())} outside the vocab of {vocab}")
        out.append(a.astype(TOKEN_DTYPES[token_dtype(vocab)]))  # (n_tokens,)
    return out[0], out[1]


def write_dataset(
    out_dir: Path, vocab: Vocab, train: np.ndarray, val: np.ndarray, extra: dict
) -> dict:
    (out_dir / "train.bin").write_bytes(train.tobytes())
    (out_dir / "val.bin").write_bytes(val.tobytes())
    for name, blob in vocab.files.items():
        (out_dir / name).write_bytes(blob)
    meta = {
        "format": "anetrain-dataset",
        "version": 1,
        "vocab_size": vocab.size,
        "dtype": token_dtype(vocab.size),
        "train": "train.bin",
        "val": "val.bin",
        "tokenizer": next(iter(vocab.files)),
        **vocab.special,
        "train_tokens": int(train.size),
        "val_tokens": int(val.size),
        **extra,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a path that is not a directory, and (without --overwrite) an existing dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    found = [name for name in DATASET_FILES if (out_dir / name).exists()]
    if found and not overwrite:
        raise DataError(
            f"{out_dir}: already holds a dataset ({found[-1]}); pass --overwrite to replace it"
        )


def save_dataset(out_dir: Path, *parts) -> dict:
    """write_dataset(out_dir, *parts) safely: the whole dataset is first written to a temp
    directory beside OUT_DIR, so a failure leaves OUT_DIR exactly as it was; then each file is
    moved in by a rename, meta.json last, and old dataset files the new one lacks are removed
    (other files in OUT_DIR are kept)."""
    try:
        out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".prepare_data-", dir=out_dir.absolute().parent))
    except OSError as e:
        raise DataError(f"{out_dir}: cannot create directory ({e.strerror or e})") from None
    try:
        meta = write_dataset(stage, *parts)
        out_dir.mkdir(exist_ok=True)
        written = [name for name in DATASET_FILES if (stage / name).exists()]
        for name in written:
            os.replace(stage / name, out_dir / name)
        for name in set(DATASET_FILES) - set(written):  # e.g. an old tokenizer.model; --no-model
            (out_dir / name).unlink(missing_ok=True)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot write the dataset ({e.strerror or e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


# ----------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("inputs", nargs="+", type=Path, help="text files or directories of .txt files")
    ap.add_argument("-o", "--out-dir", type=Path, required=True, help="dataset directory to write")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--vocab-size", type=int, help="train a sentencepiece BPE vocab of this size"
    )
    group.add_argument(
        "--tokenizer",
        type=Path,
        help="use this tokenizer: llama2.c tokenizer.bin, sentencepiece .model, or Hugging Face "
        "tokenizer.json or model directory (BOS/EOS as its config says; needs the hf extra)",
    )
    ap.add_argument(
        "--split",
        choices=["blank", "line", "file"],
        default="blank",
        help="document boundaries: blank lines (default), every line, or whole files",
    )
    ap.add_argument("--val-fraction", type=float, default=0.02, help="share of documents for val")
    ap.add_argument("--seed", type=int, default=42, help="seed of the train/val split")
    ap.add_argument("--no-model", action="store_true", help="do not write tokenizer.model")
    ap.add_argument("--source", default=None, help="short description stored in meta.json")
    ap.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in --out-dir"
    )
    args = ap.parse_args(argv)
    try:
        if not 0.0 <= args.val_fraction < 1.0:
            raise DataError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
        if args.vocab_size is not None and not MIN_VOCAB <= args.vocab_size <= MAX_VOCAB:
            raise DataError(
                f"--vocab-size must be in [{MIN_VOCAB}, {MAX_VOCAB}], got {args.vocab_size}"
            )
        check_out_dir(args.out_dir, args.overwrite)
        files = input_files(args.inputs)
        docs = read_documents(files, args.split)
        t0 = time.perf_counter()
        if args.vocab_size is not None:
            print(
                f"training a {args.vocab_size}-piece BPE vocab on {len(docs)} documents ...",
                file=sys.stderr,
            )
            blob = train_vocab(docs, args.vocab_size, ", ".join(map(str, args.inputs)))
            vocab = sp_tokenizer(blob, "trained vocab")
        else:
            vocab = load_tokenizer(args.tokenizer)
        if args.no_model:
            vocab.files.pop("tokenizer.model", None)
        t_vocab = time.perf_counter() - t0
        is_val = split_documents(len(docs), args.val_fraction, args.seed)
        train, val = tokenize(docs, vocab.encode, is_val, vocab.size)
        source = args.source or ", ".join(f.name for f in files)
        extra = {
            "source": source,
            "documents": {"train": is_val.count(False), "val": is_val.count(True)},
            "split_seed": args.seed,
            "tokenizer_model": "tokenizer.model" if "tokenizer.model" in vocab.files else None,
        }
        meta = save_dataset(args.out_dir, vocab, train, val, extra)
    except (DataError, TokenizerError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(
        f"wrote {args.out_dir}: vocab {meta['vocab_size']} ({meta['dtype']}), train "
        f"{meta['train_tokens']:,} tokens, "
        f"val {meta['val_tokens']:,} tokens, {len(docs)} documents "
        f"(vocab {t_vocab:.1f}s, total {dt:.1f}s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
