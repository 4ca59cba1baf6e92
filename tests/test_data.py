"""Token files, dataset directories, resumable window sampling, deterministic eval windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_tokens

from anetrain.data import WindowSampler, embedded_dataset, eval_windows, load_tokens, open_dataset
from anetrain.errors import DataError


def test_embedded_dataset_opens():
    ds = open_dataset(None)
    meta = json.loads((embedded_dataset() / "meta.json").read_text())
    assert ds.vocab_size == meta["vocab_size"]
    assert ds.train.size == meta["train_tokens"] and ds.val.size == meta["val_tokens"]
    assert ds.tokenizer is not None and ds.tokenizer.is_file()


def test_raw_bin_and_vocab_check(tmp_path):
    f = tmp_path / "t.bin"
    write_tokens(f, [0, 5, 31999, 7])
    ds = open_dataset(f)
    assert ds.vocab_size == 32000 and ds.val is None and list(ds.train) == [0, 5, 31999, 7]
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


def test_eval_windows_deterministic():
    toks = np.arange(500, dtype=np.uint16)
    a = [x[0] for x, _ in eval_windows(toks, 32, 4)]
    assert a == [x[0] for x, _ in eval_windows(toks, 32, 4)] and a[0] == 0 and a[-1] == 500 - 33
