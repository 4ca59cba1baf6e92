"""python -m anetrain.bench lora: the table's structure on a tiny shape, never its figures; the
LoRA's dA, dB jobs on the latency model's dW pool give the inline gradients."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import tiny_cfg

from anetrain.backends.cpu import CpuKernels
from anetrain.bench import lora as bench_lora
from anetrain.bench.__main__ import main as bench_main
from anetrain.bench.overlap import timed_pool
from anetrain.lora import LoraConfig, LoraGrads, init_lora, keep_frozen
from anetrain.model import micro_step
from anetrain.params import init_params

TINY = ["--shape", "tiny", "--vocab-size", "97", "--seq", "16", "--rounds", "1", "--steps", "2"]


@pytest.fixture(autouse=True)
def _no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_lora, "SETTLE_S", 0.0)


def test_lora_bench_prints_every_side_and_both_goals(tmp_path, capsys) -> None:
    argv = ["lora", *TINY, "--latency-model", "tiny", "--latency-steps", "1", "--tmp",
            str(tmp_path), "--json"]  # fmt: skip
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = lines.index(next(ln for ln in lines if ln.startswith("side ")))
    assert lines[head].split() == ["side", "median", "step", "s", "steps", "peak", "RSS", "MB",
                                   "incl.", "ckpt", "MB"]  # fmt: skip
    for i, side in enumerate(bench_lora.SIDES):
        cols = lines[head + 1 + i].split()
        assert cols[0] == side and len(cols) == 5
        assert float(cols[1]) >= 0 and int(cols[2]) == 1 and float(cols[3]) > 0
    assert re.search(r"^step  ours-lora / peft +[\d.]+  goal <= 0\.85: (PASS|MISS)$", out, re.M)
    assert re.search(r"^RSS   ours-lora / ours-full +[\d.]+  goal <= 0\.45: (PASS|MISS)$", out,
                     re.M)  # fmt: skip
    assert re.search(r"^  ratio lora / full step = [\d.]+ ", out, re.M)
    rep = json.loads(lines[-1])
    for side in bench_lora.SIDES:  # every side trained: timed steps, a finite loss, a peak RSS
        s = rep["sides"][side]
        assert s["steps"] == 1 and s["step_s"] > 0 and math.isfinite(s["loss"])
        assert s["rss_mb"] > 0 and s["rss_all_mb"] > 0
    assert rep["latency_ratio"] > 0
    assert list(tmp_path.iterdir()) == []  # the checkpoint, data and runs are removed


def test_each_side_runs_the_training_it_names(tmp_path) -> None:
    """ours-lora trains adapters (a LoRA checkpoint), ours-full every weight: the loop is the
    real one, so their first-step losses agree (B = 0) and the second ones differ."""
    cfg = bench_lora.model_config("tiny", 16, 97)
    ckpt, data = bench_lora.write_inputs(cfg, tmp_path, 0)
    losses = {}
    for rank in (8, 0):
        spec = {"threads": 1, "steps": 2, "lora_rank": rank, "targets": "q,v", "seed": 0,
                "ckpt": str(ckpt), "data": str(data), "vocab": 97,
                "run_dir": str(tmp_path / f"r{rank}")}  # fmt: skip
        res = bench_lora.run_child("ours", spec, tmp_path / f"r{rank}.log")
        assert len(res["ms"]) == 2 and res["hwm_train_mb"] > 0 and res["maxrss_mb"] > 0
        losses[rank] = res["loss"]
    assert losses[8][0] == pytest.approx(losses[0][0], rel=1e-6)
    assert losses[8][1] != losses[0][1]


@pytest.mark.parametrize("argv, message", [
    (["--shape", "foo"], "--shape 'foo': not a shape (smollm2-135m, smollm2-360m"),
    (["--shape", "qwen3-0.6b"], "q/k norm"),
    (["--targets", "q,x"], "--lora-targets q,x"),
])  # fmt: skip
def test_bad_input_is_one_line(argv, message, tmp_path, capsys) -> None:
    assert bench_main(["lora", *argv, "--tmp", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anetrain.bench lora: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_one_step_per_process_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        bench_main(["lora", *TINY[:-1], "1"])
    assert e.value.code == 2
    assert "argument --steps: must be >= 2 (the first step is a warm-up)" in capsys.readouterr().err


def test_lora_jobs_on_the_dw_pool_give_the_inline_gradients(rng) -> None:
    """bench overlap --lora-rank (and sim/ane) queue LoraGrads' dA, dB products on a DwPool, the
    jobs of one micro-step behind the next: over two accumulated micro-steps they equal the
    inline ones (cpu), and no frozen weight gets a gradient."""
    cfg = tiny_cfg()
    base = init_params(cfg, rng)
    lora = init_lora(cfg, LoraConfig(4, targets=("q", "k", "v", "o", "gate", "up", "down")), rng)
    for _, _, b in lora.pairs():  # B != 0, so dA is not trivially zero
        b[...] = 0.1 * rng.standard_normal(b.shape, dtype=np.float32)
    keep_frozen(base, lora)
    kern = CpuKernels(cfg, base)
    tok = rng.integers(0, cfg.vocab_size, (2, cfg.seq_len + 1)).astype(np.int32)
    want, got = lora.zeros_like(), lora.zeros_like()
    for i in range(2):
        micro_step(base, LoraGrads(lora, want), kern, tok[i, :-1], tok[i, 1:], i > 0)
    pool = timed_pool(2)
    try:
        for i in range(2):
            micro_step(base, LoraGrads(lora, got), kern, tok[i, :-1], tok[i, 1:], i > 0, 1.0,
                       pool, i == 1)  # fmt: skip
    finally:
        pool.shutdown()
    assert np.abs(want.flat).max() > 0 and len(pool.jobs_log) == 2 * len(lora.pairs())
    np.testing.assert_array_equal(got.flat, want.flat)
