"""uint32 token files: meta.json's dtype, --data-dtype, the uint16 refusal, resumes keep it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anetrain.errors import DataError
from anetrain.formats import checkpoint
from anetrain.formats.data import WindowSampler, eval_windows, load_tokens, open_dataset
from anetrain.train import main

TINY = ["--model", "tiny", "--quiet", "--threads", "2"]
BIG_VOCAB = 151936  # Qwen3's


def _write(path: Path, ids, dtype: str) -> Path:
    np.asarray(ids, dtype={"uint16": "<u2", "uint32": "<u4"}[dtype]).tofile(path)
    return path


def _dataset(d: Path, ids, vocab: int, dtype: str | None) -> Path:
    d.mkdir()
    _write(d / "train.bin", ids, "uint32" if dtype == "uint32" else "uint16")
    meta = {"vocab_size": vocab, "train": "train.bin", "val_tokens": 0}
    if dtype is not None:
        meta["dtype"] = dtype
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("anetrain.train: error: "), err
    return err.removeprefix("anetrain.train: error: ")


def test_uint32_files_load_check_and_sample_like_uint16(tmp_path):
    ids = np.random.default_rng(0).integers(0, 60000, 4000)
    a = open_dataset(_write(tmp_path / "a.bin", ids, "uint16"), vocab_size=60000)
    b = open_dataset(_write(tmp_path / "b.bin", ids, "uint32"), vocab_size=60000, dtype="uint32")
    assert a.train.tokens.dtype == np.dtype("<u2") and b.train.tokens.dtype == np.dtype("<u4")
    assert (a.dtype, b.dtype) == ("uint16", "uint32") and a.max_id == b.max_id == ids.max()
    sa, sb = WindowSampler(a.train.tokens, 32, seed=5), WindowSampler(b.train.tokens, 32, seed=5)
    for _ in range(20):  # the same windows from the same seed, int32 either way
        (xa, ya), (xb, yb) = sa.next(), sb.next()
        assert xa.dtype == xb.dtype == ya.dtype == yb.dtype == np.int32
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for (xa, _), (xb, _) in zip(eval_windows(a.train, 32, 4), eval_windows(b.train, 32, 4)):
        assert xb.dtype == np.int32 and np.array_equal(xa, xb)


def test_uint32_ids_above_uint16(tmp_path):
    ids = [0, 70000, BIG_VOCAB - 1, 5] * 30
    f = _write(tmp_path / "q.bin", ids, "uint32")
    ds = open_dataset(f, vocab_size=BIG_VOCAB, dtype="uint32")
    assert ds.max_id == BIG_VOCAB - 1 and ds.train.tokens[1] == 70000
    x, y = WindowSampler(ds.train.tokens, 8, seed=0).next()
    assert x.dtype == y.dtype == np.int32 and set(x.tolist()) == set(ids)  # 8 spans the period
    with pytest.raises(DataError, match=f"{f}: token id 70000 at position 1 is >= vocab size 1000"):
        load_tokens(f, 1000, "uint32")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x00\x00\x02\x00")
    with pytest.raises(DataError) as e:
        load_tokens(odd, 1000, "uint32")
    assert str(e.value) == f"{odd}: byte count not a multiple of 4: 6; not a uint32 token file"
    assert load_tokens(odd, 1000, "uint16").tolist() == [1, 0, 2]  # the same bytes as uint16


def test_dataset_directories_state_their_dtype(tmp_path):
    ids = [3, 70000, 151000, 9] * 40
    ds = open_dataset(_dataset(tmp_path / "q", ids, BIG_VOCAB, "uint32"))
    assert ds.dtype == "uint32" and ds.vocab_size == BIG_VOCAB and ds.train.tokens[2] == 151000
    assert not ds.raw
    old = open_dataset(_dataset(tmp_path / "old", [1, 2, 3] * 40, 100, None))  # no dtype: uint16
    assert old.dtype == "uint16" and old.train.tokens.tolist()[:3] == [1, 2, 3]
    bad = _dataset(tmp_path / "bad", [1] * 40, 100, "int8")
    with pytest.raises(DataError) as e:
        open_dataset(bad)
    assert str(e.value) == f"{bad / 'meta.json'}: dtype 'int8' is not one of uint16, uint32"
    narrow = _dataset(tmp_path / "narrow", [1] * 40, BIG_VOCAB, "uint16")
    with pytest.raises(DataError) as e:
        open_dataset(narrow)
    assert str(e.value) == (f"{narrow / 'meta.json'}: a vocab of {BIG_VOCAB} does not fit in "
                            "uint16 tokens; the dataset's dtype must be uint32")  # fmt: skip


def test_train_refuses_uint16_for_a_big_vocab_in_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    raw = _write(tmp_path / "q.bin", [1, 2, 3] * 50, "uint32")
    for dtype in ([], ["--data-dtype", "uint16"]):  # the default is uint16
        err = _err(capsys, [*TINY, "--data", str(raw), "--vocab-size", "70000", *dtype, *out])
        assert err == (f"{raw}: a vocab of 70000 does not fit in uint16 tokens; pass "
                       "--data-dtype uint32")  # fmt: skip
    ds = _dataset(tmp_path / "ds", [1, 2, 3] * 50, 100, "uint16")
    err = _err(capsys, [*TINY, "--data", str(ds), "--data-dtype", "uint32", *out])
    assert err == f"{ds / 'meta.json'}: dataset tokens are uint16, not --data-dtype uint32"
    with pytest.raises(SystemExit) as e:  # argparse: only the two types
        main([*TINY, "--data", str(raw), "--data-dtype", "int64", *out])
    assert e.value.code == 2
    assert "--data-dtype: invalid choice: 'int64'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoint.bin").exists()


def _losses(d: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").read_text().splitlines()]


def test_a_raw_uint32_run_resumes_with_its_dtype(tmp_path):
    ids = np.random.default_rng(1).integers(0, 200, 3000)
    raw = _write(tmp_path / "q.bin", ids, "uint32")
    flags = [*TINY, "--data", str(raw), "--data-dtype", "uint32", "--vocab-size", "200",
             "--seed", "3", "--lr-decay-steps", "4"]  # fmt: skip
    a, b = tmp_path / "A", tmp_path / "B"
    assert main([*flags, "--steps", "4", "--out", str(a)]) == 0
    assert main([*flags, "--steps", "2", "--out", str(b)]) == 0
    assert checkpoint.load(b / "checkpoint.bin").state.data_dtype == "uint32"
    # read as uint16, this file's ids would be half zeros: the resumed run must not do that
    assert main(["--quiet", "--threads", "2", "--resume", str(b), "--steps", "4"]) == 0
    assert _losses(a) == _losses(b)
    np.testing.assert_array_equal(checkpoint.load(a / "checkpoint.bin").params.flat,
                                  checkpoint.load(b / "checkpoint.bin").params.flat)  # fmt: skip
    plain = tmp_path / "p.bin"
    _write(plain, ids, "uint16")
    assert main([*TINY, "--data", str(plain), "--vocab-size", "200", "--steps", "1",
                 "--out", str(tmp_path / "C")]) == 0  # fmt: skip
    assert checkpoint.load(tmp_path / "C" / "checkpoint.bin").state.data_dtype is None
