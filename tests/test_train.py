"""The training CLI end to end: it trains, resumes bit-identically, refuses bad input cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tokens

import anetrain
from anetrain.formats import checkpoint
from anetrain.train import BLAS_VARS, main

TINY = ["--model", "tiny", "--quiet", "--threads", "2"]


def _metrics(d):
    return [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]


def test_tiny_trains_on_embedded_data(tmp_path):
    out = tmp_path / "D"
    assert main([*TINY, "--steps", "30", "--out", str(out)]) == 0
    m = _metrics(out)
    assert [r["step"] for r in m] == list(range(1, 31))
    assert {"step", "loss", "lr", "tokens", "ms"} <= set(m[0])
    assert m[-1]["tokens"] == 30 * 64
    assert "val_loss" in m[-1]  # the embedded dataset has a val split: evaluated at the end
    assert m[-1]["loss"] < m[0]["loss"] - 0.5, (m[0]["loss"], m[-1]["loss"])
    ck = checkpoint.load(out / "checkpoint.bin")
    assert ck.state.step == 30 and ck.state.adam_t == 30


def test_resume_is_bit_identical(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    common = [*TINY, "--seed", "7", "--accum", "2", "--eval-every", "5"]
    assert main([*common, "--steps", "20", "--out", str(a)]) == 0
    # the same 20-step schedule, interrupted after 10 steps and resumed
    assert main([*common, "--steps", "10", "--lr-decay-steps", "20", "--out", str(b)]) == 0
    assert main(["--quiet", "--threads", "2", "--resume", str(b), "--steps", "20"]) == 0
    ca, cb = checkpoint.load(a / "checkpoint.bin"), checkpoint.load(b / "checkpoint.bin")
    np.testing.assert_array_equal(ca.params.flat, cb.params.flat)
    np.testing.assert_array_equal(ca.m.flat, cb.m.flat)
    np.testing.assert_array_equal(ca.v.flat, cb.v.flat)
    ma, mb = _metrics(a), _metrics(b)
    assert len(mb) == 20
    for ra, rb in zip(ma, mb):
        assert (ra["step"], ra["loss"], ra["lr"], ra.get("val_loss")) == (
            rb["step"],
            rb["loss"],
            rb["lr"],
            rb.get("val_loss"),
        )


def test_tokens_keep_counting_when_resumed_with_another_accum(tmp_path):
    out = tmp_path / "K"
    assert main([*TINY, "--steps", "3", "--out", str(out)]) == 0
    assert main(["--quiet", "--resume", str(out), "--steps", "5", "--accum", "2"]) == 0
    S = checkpoint.load(out / "checkpoint.bin").model.seq_len
    assert [r["tokens"] for r in _metrics(out)] == [S, 2 * S, 3 * S, 5 * S, 7 * S]
    assert checkpoint.load(out / "checkpoint.bin").state.tokens == 7 * S


def test_interrupted_run_metrics_are_trimmed_on_resume(tmp_path):
    out = tmp_path / "R"
    assert main([*TINY, "--steps", "4", "--ckpt-every", "2", "--out", str(out)]) == 0
    # pretend the run died after step 3: checkpoint at 2, a stale metrics line for step 3
    ck = checkpoint.load(out / "checkpoint.bin")
    ck.state.step = ck.state.adam_t = 2
    checkpoint.save(out / "checkpoint.bin", ck)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert main(["--quiet", "--resume", str(out), "--steps", "5"]) == 0
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4, 5]


def test_torn_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    """A run killed while writing a metrics line leaves half a JSON record; resume drops it
    (with a note naming the file) instead of failing on it."""
    out = tmp_path / "T"
    assert main([*TINY, "--steps", "4", "--ckpt-every", "2", "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    capsys.readouterr()
    assert main(["--threads", "2", "--resume", str(out), "--steps", "6"]) == 0
    assert f"{out / 'metrics.jsonl'}: dropped 1 unreadable line(s)" in capsys.readouterr().out
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert not (out / "metrics.jsonl.tmp").exists()


# ---- bad input: one line naming the file and the problem, exit 2, nothing saved is touched


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("anetrain.train: error: "), err
    return err


def test_bad_data_files(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    missing = tmp_path / "nope.bin"
    assert str(missing) in _err(capsys, [*TINY, "--data", str(missing), *out])
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    assert "odd byte count" in _err(capsys, [*TINY, "--data", str(odd), *out])
    big = tmp_path / "big.bin"
    write_tokens(big, [1, 2, 3, 40000, 5] * 40)
    e = _err(capsys, [*TINY, "--data", str(big), *out])
    assert "40000" in e and "vocab" in e and str(big) in e
    short = tmp_path / "short.bin"
    write_tokens(short, np.arange(64) % 100)  # tiny's seq is 64: needs >= 65 tokens
    e = _err(capsys, [*TINY, "--data", str(short), "--vocab-size", "100", *out])
    assert "shorter than seq_len + 1" in e and str(short) in e
    empty = tmp_path / "d"
    empty.mkdir()
    assert "meta.json" in _err(capsys, [*TINY, "--data", str(empty), *out])


def test_bad_flags(tmp_path, capsys):
    assert "unknown model preset" in _err(capsys, ["--model", "huge", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:  # argparse: usage line + one error line, exit 2
        main(["--backend", "gpu"])
    assert e.value.code == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
    assert "--accum" in _err(capsys, [*TINY, "--accum", "0", "--out", str(tmp_path)])


@pytest.mark.parametrize("flag, value", [("--eval-every", "-3"), ("--ckpt-every", "-1"),
                                         ("--wd", "-0.1"), ("--min-lr", "nan"), ("--clip", "nan"),
                                         ("--lr", "inf"), ("--eval-batches", "-1"),
                                         ("--warmup", "-1"), ("--steps", "0"),
                                         ("--seed", "-1"), ("--min-lr", "1")])  # fmt: skip
def test_out_of_range_settings_are_refused_before_anything_runs(tmp_path, capsys, flag, value):
    e = _err(capsys, [*TINY, flag, value, "--out", str(tmp_path / "o")])
    assert e.startswith("anetrain.train: error: " + flag) and value in e
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    e = _err(capsys, [*TINY, "--steps", "1", "--out", str(blocker / "sub")])
    assert "not writable" in e and "sub" in e


def test_existing_checkpoint_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / "C"
    assert main([*TINY, "--steps", "2", "--out", str(out)]) == 0
    before = (out / "checkpoint.bin").read_bytes()
    # a fresh run into the same directory is refused
    assert "already exists" in _err(capsys, [*TINY, "--steps", "2", "--out", str(out)])
    # ... but only once every input is known to be good: a bad one is named first
    e = _err(capsys, [*TINY, "--init", str(tmp_path / "absent.bin"), "--data",
                      str(tmp_path / "absent"), "--out", str(out)])  # fmt: skip
    assert "absent.bin: no such model file" in e
    # resume with a different model is refused
    e = _err(capsys, ["--quiet", "--resume", str(out), "--model", "stories15m", "--steps", "3"])
    assert "does not match" in e
    # a run whose loss turns NaN stops without writing a checkpoint
    ck = checkpoint.load(out / "checkpoint.bin")
    ck.params.layers[0].wq[0, 0] = np.nan
    checkpoint.save(out / "checkpoint.bin", ck)
    poisoned = (out / "checkpoint.bin").read_bytes()
    e = _err(capsys, ["--quiet", "--resume", str(out), "--steps", "5", "--ckpt-every", "1"])
    assert "loss is nan" in e
    assert (out / "checkpoint.bin").read_bytes() == poisoned
    # a truncated checkpoint is refused on resume, and left as it is
    (out / "checkpoint.bin").write_bytes(before[: len(before) // 2])
    e = _err(capsys, ["--quiet", "--resume", str(out), "--steps", "5"])
    assert "truncated" in e and "checkpoint.bin" in e
    assert (out / "checkpoint.bin").read_bytes() == before[: len(before) // 2]


def test_cli_subprocess_no_traceback(tmp_path):
    """In a directory of its own (the default out/ of a run started there must not matter);
    the child imports the anetrain under test."""
    package_root = str(Path(anetrain.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=package_root + (os.pathsep + path if path else ""))  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "anetrain.train", "--data", str(tmp_path / "x.bin")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    want = f"anetrain.train: error: {tmp_path / 'x.bin'}: no such file or dataset directory"
    assert r.stderr.strip() == want
    assert sorted(tmp_path.iterdir()) == []  # a refused run writes nothing, not even out/


@pytest.mark.parametrize(
    "backend, blas", [("sim", "1"), ("ane", "1"), ("cpu", "3"), ("auto", None), (None, None)]
)
def test_blas_threads_follow_the_backend(backend, blas):
    """Before numpy loads, sim/ane pin BLAS to one thread per caller (the dW workers are the
    parallelism); cpu keeps --threads; auto/default pin only on Apple silicon."""
    import platform

    if blas is None:
        apple = sys.platform == "darwin" and platform.machine() == "arm64"
        blas = "1" if apple else "3"
    code = (
        "import os, sys\n"
        "from anetrain.train import _set_threads\n"
        "assert 'numpy' not in sys.modules\n"
        f"print(_set_threads(3, {backend!r})[1], os.environ['OPENBLAS_NUM_THREADS'],"
        " os.environ['VECLIB_MAXIMUM_THREADS'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=env)  # fmt: skip
    assert r.stdout.split() == [blas, blas, blas]


def test_blas_threads_from_the_environment_win():
    """An exported BLAS thread count is the user's choice: kept as is, for every backend."""
    code = (
        "import os, sys\n"
        "from anetrain.train import _set_threads\n"
        "print(_set_threads(3, 'sim')[1], os.environ['OPENBLAS_NUM_THREADS'],"
        " 'VECLIB_MAXIMUM_THREADS' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    env["OPENBLAS_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=env)  # fmt: skip
    assert r.stdout.split() == ["None", "2", "False"]


def test_resume_with_a_new_lr_rescales_the_default_min_lr(tmp_path):
    out = tmp_path / "L"
    assert main([*TINY, "--steps", "1", "--lr", "1e-3", "--out", str(out)]) == 0
    assert main(["--quiet", "--resume", str(out), "--steps", "2", "--lr", "2e-3"]) == 0
    tc = checkpoint.load(out / "checkpoint.bin").state.train
    assert (tc.lr, tc.min_lr) == (2e-3, pytest.approx(2e-4))
    assert main(["--quiet", "--resume", str(out), "--steps", "3", "--min-lr", "5e-5"]) == 0
    assert main(["--quiet", "--resume", str(out), "--steps", "4", "--lr", "4e-3"]) == 0
    tc = checkpoint.load(out / "checkpoint.bin").state.train
    assert (tc.lr, tc.min_lr) == (4e-3, 5e-5)  # an explicit min_lr stays


def test_resume_never_writes_over_another_run(tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    assert main([*TINY, "--steps", "2", "--out", str(a)]) == 0
    assert main([*TINY, "--steps", "3", "--seed", "5", "--out", str(b)]) == 0
    before = (b / "checkpoint.bin").read_bytes(), (b / "metrics.jsonl").read_text()
    e = _err(capsys, ["--quiet", "--resume", str(a), "--steps", "4", "--out", str(b)])
    assert f"{b / 'checkpoint.bin'}: a checkpoint already exists" in e and "--overwrite" in e
    assert ((b / "checkpoint.bin").read_bytes(), (b / "metrics.jsonl").read_text()) == before
    # with --overwrite B becomes A's continuation, and its metrics are A's, not a mix
    assert main(["--quiet", "--resume", str(a), "--steps", "4", "--out", str(b),
                 "--overwrite"]) == 0  # fmt: skip
    assert [r["step"] for r in _metrics(b)] == [3, 4]
    assert checkpoint.load(b / "checkpoint.bin").state.step == 4
    assert checkpoint.load(a / "checkpoint.bin").state.step == 2  # A itself untouched
    # a checkpoint file works as --resume too, and the run continues in its directory
    assert main(["--quiet", "--resume", str(a / "checkpoint.bin"), "--steps", "3"]) == 0
    assert checkpoint.load(a / "checkpoint.bin").state.step == 3
    # nothing to do is an error, not a silent exit 0
    e = _err(capsys, ["--quiet", "--resume", str(a), "--steps", "3"])
    assert "the run is already at step 3 of --steps 3; pass a larger --steps" in e


def test_resume_from_another_directory_and_validation_data_persist(tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    """Checkpoints record absolute data paths (a relative --data typed in another directory
    still resolves), and --val-data given once stays with the run across resumes."""
    work = tmp_path / "work"
    work.mkdir()
    write_tokens(work / "train.bin", np.arange(4000) % 90)
    write_tokens(work / "val.bin", np.arange(500) % 90)
    monkeypatch.chdir(work)
    common = ["--model", "tiny", "--threads", "2", "--vocab-size", "90"]
    assert main([*common, "--quiet", "--steps", "1", "--data", "train.bin", "--val-data",
                 "val.bin", "--out", "r"]) == 0  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for steps in ("2", "3"):
        assert main(["--quiet", "--resume", str(work / "r"), "--steps", steps]) == 0
    st = checkpoint.load(work / "r" / "checkpoint.bin").state
    assert (st.data, st.val_data) == (str(work / "train.bin"), str(work / "val.bin"))
    assert all("val_loss" in r for r in _metrics(work / "r"))
    # --eval-every without validation data says it is ignored
    assert main([*common, "--steps", "1", "--eval-every", "1", "--data",
                 str(work / "train.bin"), "--out", str(tmp_path / "nv")]) == 0  # fmt: skip
    assert "note: --eval-every 1 is ignored" in capsys.readouterr().out


def test_divergence_is_one_line_without_numpy_warnings(tmp_path, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = _err(capsys, [*TINY, "--lr", "1e30", "--clip", "0", "--steps", "5",
                          "--out", str(tmp_path / "d")])  # fmt: skip
    assert "loss is nan" in e or "gradient norm" in e
    assert [str(w.message) for w in caught] == []  # numpy's overflow warnings stay quiet
    assert np.geterr()["over"] == "warn"  # restored after the run


def test_an_interrupted_save_leaves_no_temp_file(tmp_path, monkeypatch):
    from anetrain.config import preset
    from anetrain.params import init_params

    cfg = preset("tiny", vocab_size=97)
    ck = checkpoint.Checkpoint(checkpoint.RunState(cfg), init_params(cfg, np.random.default_rng(0)))
    path = tmp_path / "checkpoint.bin"
    checkpoint.save(path, ck)
    before = path.read_bytes()

    def interrupted(f, arr, crc):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, ck)
    assert path.read_bytes() == before and not (tmp_path / "checkpoint.bin.tmp").exists()


def test_a_long_validation_split_gets_a_note(tmp_path, capsys):
    """Validation reads every window by default; past 1,000 windows the banner says so and how
    to read fewer, and --eval-batches silences it."""
    from anetrain.formats.data import embedded_dataset
    from anetrain.run import setup_run
    from anetrain.train import _note_validation, build_parser

    val = embedded_dataset() / "train.bin"  # 1.3M tokens: ~20,000 windows of 64
    for flags, noted in (([], True), (["--eval-batches", "50"], False)):
        args = build_parser().parse_args(["--model", "tiny", "--val-data", str(val), "--out",
                                          str(tmp_path / str(noted)), *flags])  # fmt: skip
        args.ckpt_seconds = None
        _note_validation(setup_run(args), quiet=False)
        out = capsys.readouterr().out
        assert ("windows of" in out and "--eval-batches N reads the first N" in out) == noted, out
