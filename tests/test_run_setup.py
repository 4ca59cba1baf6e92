"""run.setup_run: what each input may be, and which error or warning a user sees first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tokens

import anetrain
from anetrain.formats import checkpoint
from anetrain.formats.llama2c import write_llama2c
from anetrain.run import Run, setup_run
from anetrain.train import build_parser, main

TINY = ["--model", "tiny", "--quiet", "--threads", "2"]
PACKAGE_ROOT = str(Path(anetrain.__file__).resolve().parents[1])  # for child processes


def _err(capsys, argv: list[str]) -> str:
    """The one error line of a refused command (exit 2), without the program prefix."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("anetrain.train: error: "), err
    return err.removeprefix("anetrain.train: error: ")


def _setup(argv: list[str]) -> Run:
    return setup_run(build_parser().parse_args(argv))


def _warnings(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained 2 steps on the embedded data (its directory)."""
    d = tmp_path_factory.mktemp("setup") / "run"
    assert main([*TINY, "--steps", "2", "--seed", "3", "--out", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def llama2c_bin(run_dir):
    """run_dir's model as a llama2.c v0 model.bin."""
    ck = checkpoint.load(run_dir / checkpoint.FILE_NAME, with_optimizer=False)
    path = run_dir.parent / "model.bin"
    write_llama2c(path, ck.model, ck.params)
    return path


# ---- 1. bad inputs are named before "a checkpoint already exists"; nothing is written


def _bad_inputs(t) -> list[tuple[list[str], str]]:
    text = t / "story.bin"
    text.write_text("Once upon a time there was a little robot who loved to read.\n" * 20)
    return [
        (["--data", str(t / "nope.bin")], f"{t / 'nope.bin'}: no such file"),
        (["--data", str(text)], f"{text}: looks like text"),
        (["--val-data", str(t / "nope.bin")], f"{t / 'nope.bin'}: no such token file"),
        (["--init", str(t / "absent.bin")], f"{t / 'absent.bin'}: no such model file"),
        (["--model", "huge"], "unknown model preset"),
        (["--accum", "0"], "--accum must be >= 1"),
        (["--seq", "0"], "--seq"),
        (["--vocab-size", "0"], "--vocab-size"),
    ]


def test_bad_inputs_are_reported_before_an_existing_checkpoint(tmp_path, capsys, run_dir):
    out = tmp_path / "o"
    shutil.copytree(run_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for flags, want in _bad_inputs(tmp_path):
        assert want in _err(capsys, [*TINY, *flags, "--out", str(out)]), flags
        # ... and nothing is written anywhere for a run that cannot start
        assert want in _err(capsys, [*TINY, *flags, "--out", str(tmp_path / "new" / "o")])
        assert not (tmp_path / "new").exists(), flags
    gone = tmp_path / "gone"
    e = _err(capsys, ["--quiet", "--resume", str(gone), "--out", str(out)])
    assert e == f"{gone}: no such checkpoint"
    # good inputs: the existing checkpoint is still never replaced without --overwrite
    e = _err(capsys, [*TINY, "--steps", "1", "--out", str(out)])
    assert e.startswith(f"{out / checkpoint.FILE_NAME}: a checkpoint already exists")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_cli_names_bad_data_where_a_default_run_exists(tmp_path, run_dir):
    """`python -m anetrain.train --data nope.bin` in a directory whose out/ holds a run (the
    README's first command leaves one) names the data, and touches nothing."""
    shutil.copytree(run_dir, tmp_path / "out")
    before = (tmp_path / "out" / checkpoint.FILE_NAME).read_bytes()
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=PACKAGE_ROOT + (os.pathsep + path if path else ""))  # fmt: skip
    cmd = [sys.executable, "-m", "anetrain.train", "--data", "nope.bin"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert (r.returncode, r.stderr) == (2, "anetrain.train: error: nope.bin: no such file or "
                                           "dataset directory\n")  # fmt: skip
    assert (tmp_path / "out" / checkpoint.FILE_NAME).read_bytes() == before


# ---- 2. --init takes any model file; each flag says what to pass a file of the other kind


@pytest.mark.parametrize("which", ["dir", "file"])
def test_init_from_an_anetrain_run(tmp_path, run_dir, which):
    saved = checkpoint.load(run_dir / checkpoint.FILE_NAME)
    src = run_dir if which == "dir" else run_dir / checkpoint.FILE_NAME
    run = _setup([*TINY, "--init", str(src), "--steps", "7", "--out", str(tmp_path / "ft")])
    assert run.cfg == saved.model and run.moments is None  # weights only: a fresh optimizer
    st = run.state
    assert (st.step, st.adam_t, st.tokens, st.sampler, st.train) == (0, 0, 0, None, run.tc)
    assert run.tc.steps == 7 and run.tc.warmup == 0  # a new schedule (10% of 7 steps)
    np.testing.assert_array_equal(run.params.flat, saved.params.flat)
    assert main([*TINY, "--init", str(src), "--steps", "1", "--out", str(tmp_path / "ft")]) == 0
    ck = checkpoint.load(tmp_path / "ft" / checkpoint.FILE_NAME)
    assert (ck.state.step, ck.state.adam_t, ck.model) == (1, 1, saved.model)


def test_init_from_a_weights_only_checkpoint_and_its_flags(tmp_path, capsys, run_dir):
    saved = checkpoint.load(run_dir / checkpoint.FILE_NAME, with_optimizer=False)
    weights = tmp_path / "weights.bin"
    checkpoint.save(weights, checkpoint.Checkpoint(checkpoint.RunState(saved.model), saved.params))
    out = ["--out", str(tmp_path / "o")]
    run = _setup([*TINY, "--init", str(weights), "--seq", "32", *out])
    assert run.cfg == saved.model.replace(seq_len=32)  # --seq may lower the file's seq_len
    np.testing.assert_array_equal(run.params.flat, saved.params.flat)
    e = _err(capsys, [*TINY, "--init", str(weights), "--seq", "65", *out])
    assert e == f"{weights}: --seq 65 must be in 1..64 (the file's seq_len)"
    e = _err(capsys, ["--quiet", "--init", str(run_dir), "--model", "stories15m", *out])
    assert e.startswith(f"{run_dir / checkpoint.FILE_NAME}: --model stories15m does not match")
    # the data must have the model's vocabulary: a raw .bin is read with it by default
    raw = tmp_path / "t.bin"
    write_tokens(raw, np.arange(3000) % saved.model.vocab_size)
    assert _setup(["--quiet", "--init", str(weights), "--data", str(raw), *out]).data.vocab_size \
        == saved.model.vocab_size  # fmt: skip


def test_a_file_of_the_wrong_kind_says_which_flag_takes_it(tmp_path, capsys, run_dir, llama2c_bin):
    e = _err(capsys, ["--quiet", "--resume", str(llama2c_bin), "--out", str(tmp_path / "o")])
    assert e == (f"{llama2c_bin}: this is a llama2.c model, not a training checkpoint: use "
                 f"--init {llama2c_bin} to fine-tune it")  # fmt: skip
    saved = checkpoint.load(run_dir / checkpoint.FILE_NAME, with_optimizer=False)
    weights = tmp_path / "weights.bin"
    checkpoint.save(weights, checkpoint.Checkpoint(checkpoint.RunState(saved.model), saved.params))
    e = _err(capsys, ["--quiet", "--resume", str(weights), "--out", str(tmp_path / "o")])
    assert f"use --init {weights}" in e
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    e = _err(capsys, ["--quiet", "--init", str(empty), "--out", str(tmp_path / "o")])
    assert e.startswith(f"{empty}: ") and checkpoint.FILE_NAME in e
    assert not (tmp_path / "o").exists()


def test_init_help_names_every_kind_of_model_file():
    help_text = " ".join(build_parser().format_help().split())
    assert "anetrain checkpoint or run directory, a llama2.c model.bin (v0/v1/v2), a Hugging " \
        "Face model directory or Hub id" in help_text  # fmt: skip


# ---- 3.-6. inputs that are almost right: the message says what to pass instead


def test_missing_released_model_points_at_the_download_script(tmp_path, capsys):
    path = tmp_path / "data" / "models" / "stories15M.bin"
    e = _err(capsys, [*TINY, "--init", str(path), "--out", str(tmp_path / "o")])
    assert e.startswith(f"{path}: no such model file") and "scripts/download_stories.sh 15M" in e
    other = tmp_path / "elsewhere.bin"
    assert "download" not in _err(capsys, [*TINY, "--init", str(other), "--out", str(tmp_path)])


def test_out_must_not_be_a_file(tmp_path, capsys):
    f = tmp_path / "run.txt"
    f.write_text("x")
    e = _err(capsys, [*TINY, "--out", str(f)])
    assert e == f"{f}: is a file, not a run directory; pass a directory to --out"
    assert f.read_text() == "x"


def test_data_that_is_empty_or_a_meta_json(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    assert _err(capsys, [*TINY, "--data", "", *out]) == \
        "--data is empty: pass a dataset directory or a token .bin"  # fmt: skip
    assert _err(capsys, [*TINY, "--val-data", "", *out]) == \
        "--val-data is empty: pass a token .bin"  # fmt: skip
    ds = tmp_path / "ds"
    ds.mkdir()
    write_tokens(ds / "train.bin", np.arange(1000) % 50)
    (ds / "meta.json").write_text(json.dumps({"vocab_size": 50}))
    meta = ds / "meta.json"
    want = f"{meta}: pass the dataset directory {ds}, not its meta.json"
    assert _err(capsys, [*TINY, "--data", str(meta), *out]) == want
    assert _err(capsys, [*TINY, "--val-data", str(meta), *out]) == want
    assert not (tmp_path / "o").exists()


def test_resume_with_overwrite_is_refused(tmp_path, capsys, run_dir):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    before = (out / checkpoint.FILE_NAME).read_bytes()
    for argv in (["--resume", str(out), "--overwrite"], ["--resume", "--out", str(out),
                                                          "--overwrite"]):  # fmt: skip
        e = _err(capsys, ["--quiet", "--steps", "3", *argv])
        assert e.startswith("--resume and --overwrite contradict each other"), e
    assert (out / checkpoint.FILE_NAME).read_bytes() == before


# ---- 7.-8. settings that work but are probably not what was meant: one warning, and on


def test_warmup_past_the_schedule_warns(tmp_path, capsys):
    # the run goes on
    assert main([*TINY, "--steps", "2", "--warmup", "2", "--out", str(tmp_path / "r")]) == 0
    out = ["--out", str(tmp_path / "o")]  # setup_run only: no checkpoint is written there
    assert _warnings(capsys) == ["warning: --warmup 2 is not below the schedule's 2 steps "
                                 "(--steps): the learning rate never reaches --lr"]  # fmt: skip
    _setup([*TINY, "--steps", "50", "--lr-decay-steps", "8", "--warmup", "9", *out])
    [w] = _warnings(capsys)
    assert "--warmup 9" in w and "8 steps (--lr-decay-steps)" in w
    _setup([*TINY, "--steps", "5", "--warmup", "4", *out])
    _setup([*TINY, "--steps", "1", *out])
    assert _warnings(capsys) == []


def test_raw_tokens_far_below_the_default_vocab_warn(tmp_path, capsys):
    small = tmp_path / "small.bin"
    write_tokens(small, np.arange(4000) % 90)
    out = ["--out", str(tmp_path / "o")]
    run = _setup([*TINY, "--data", str(small), *out])
    assert run.data.vocab_size == 32000  # a warning, not a different model
    assert _warnings(capsys) == [
        f"warning: {small}: the largest token id is 89, far below the vocabulary of 32000 "
        "(the default for a raw .bin); pass --vocab-size 90 for a smaller, faster model"
    ]
    _setup([*TINY, "--data", str(small), "--val-data", str(small), *out])
    assert len(_warnings(capsys)) == 1  # once per run
    _setup([*TINY, "--data", str(small), "--vocab-size", "90", *out])
    full = tmp_path / "full.bin"  # ids that use the vocabulary: no warning
    write_tokens(full, np.arange(4000) * 8 % 32000)
    _setup([*TINY, "--data", str(full), *out])
    _setup([*TINY, *out])  # a dataset directory states its own vocabulary
    assert _warnings(capsys) == []
