"""Token files, dataset directories, resumable window sampling, deterministic eval windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_tokens

from anetrain.errors import DataError
from anetrain.formats.data import (
    IGNORE,
    TokenSplit,
    WindowSampler,
    embedded_dataset,
    eval_windows,
    load_tokens,
    open_dataset,
)


def test_embedded_dataset_opens():
    ds = open_dataset(None)
    meta = json.loads((embedded_dataset() / "meta.json").read_text())
    assert ds.vocab_size == meta["vocab_size"]
    assert ds.train.tokens.size == meta["train_tokens"] and ds.val.tokens.size == meta["val_tokens"]
    assert ds.tokenizer is not None and ds.tokenizer.is_file()


def test_raw_bin_and_vocab_check(tmp_path):
    f = tmp_path / "t.bin"
    write_tokens(f, [0, 5, 31999, 7])
    ds = open_dataset(f)
    assert ds.vocab_size == 32000 and ds.val is None and list(ds.train.tokens) == [0, 5, 31999, 7]
    with pytest.raises(DataError, match="31999 at position 2 is >= vocab size 1000"):
        load_tokens(f, 1000)
    with pytest.raises(DataError, match="not --vocab-size"):
        open_dataset(embedded_dataset(), vocab_size=123)


def test_sampler_windows_and_resume():
    toks = np.arange(1000, dtype=np.uint16)
    s = WindowSampler(toks, 16, seed=3)
    x, y = s.next()
    assert x.dtype == np.int32 and x.shape == (16,) and np.array_equal(y, x + 1)
    st = s.state()
    a = [s.next()[0][0] for _ in range(5)]
    s2 = WindowSampler(toks, 16, seed=99)
    s2.set_state(st)
    assert [s2.next()[0][0] for _ in range(5)] == a
    starts = [WindowSampler(toks, 16, seed=i).next()[0][0] for i in range(50)]
    assert max(starts) <= 1000 - 17 and len(set(starts)) > 40
    with pytest.raises(DataError, match="shorter than seq_len"):
        WindowSampler(np.arange(16, dtype=np.uint16), 16, seed=0)
    exact = WindowSampler(np.arange(17, dtype=np.uint16), 16, seed=0)  # exactly one window
    assert exact.next()[0][0] == 0


@pytest.mark.parametrize("n", [33, 500, 481])
def test_eval_windows_hold_every_target_once(n):
    """Consecutive windows: every token after the first is a target exactly once, in order; the
    last window is padded (x 0, y IGNORE); a cap takes the first windows."""
    toks = np.arange(1, n + 1, dtype=np.uint16)
    windows = list(eval_windows(TokenSplit(toks, "v.bin"), 32))
    assert len(windows) == -(-(n - 1) // 32)
    ys = np.concatenate([y for _, y in windows])
    assert ys.tolist() == list(range(2, n + 1)) + [IGNORE] * (ys.size - (n - 1))
    for x, y in windows:
        assert x.dtype == y.dtype == np.int32 and x.shape == y.shape == (32,)
        counted = y != IGNORE
        assert np.array_equal(y[counted], x[counted] + 1) and not x[~counted].any()
    capped = list(eval_windows(toks, 32, cap=1))  # a token array is a TokenSplit
    assert len(capped) == 1 and np.array_equal(capped[0][0], windows[0][0])
    with pytest.raises(DataError, match="v.bin: 16 tokens is shorter"):
        list(eval_windows(TokenSplit(toks[:16], "v.bin"), 32))


def test_text_and_directories_are_not_token_files(tmp_path):
    txt = tmp_path / "story.txt"
    txt.write_text("Once upon a time there was a little robot who loved to read.\n" * 20)
    with pytest.raises(DataError, match=r"story.txt: looks like text, not uint16 tokens; "
                       r"tokenize it first \(scripts/prepare_data.py\)"):  # fmt: skip
        open_dataset(txt)
    utf8 = tmp_path / "fr.txt"  # multibyte text, cut mid-character by the 4 KB sample
    utf8.write_text("é" * 3000 + "\n")
    with pytest.raises(DataError, match="looks like text"):
        load_tokens(utf8, 32000)
    real = tmp_path / "real.bin"  # ids that happen to be printable in places are still tokens
    write_tokens(real, np.random.default_rng(0).integers(0, 32000, 4096))
    assert load_tokens(real, 32000).size == 4096
    with pytest.raises(DataError, match=f"{tmp_path}: is a directory, not a token file"):
        load_tokens(tmp_path, 32000)


def test_dataset_without_a_validation_split(tmp_path):
    """prepare_data.py --val-fraction 0 writes an empty val.bin and val_tokens 0: no validation,
    not an error; an empty val.bin the meta does not account for is still refused."""
    write_tokens(tmp_path / "train.bin", np.arange(100) % 50)
    (tmp_path / "val.bin").write_bytes(b"")
    meta = {"vocab_size": 50, "train_tokens": 100, "val_tokens": 0}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    ds = open_dataset(tmp_path)
    assert ds.val is None and ds.train.tokens.size == 100
    meta["val_tokens"] = 10
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="val.bin: token file is empty"):
        open_dataset(tmp_path)
