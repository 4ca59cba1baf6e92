"""Per-phase step timings: metrics.jsonl's phase_ms, tok_s, rss_mb, ckpt_ms; the report's table."""

from __future__ import annotations

import json

import pytest

from anetrain.phases import CPU_PHASES, MIL_PHASES
from anetrain.train import main


def _metrics(d):
    return [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_phases_sum_to_the_step_time(tmp_path, capsys, backend):
    out = tmp_path / backend
    argv = ["--model", "tiny", "--threads", "2", "--steps", "12", "--accum", "2",
            "--backend", backend, "--ckpt-every", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = _metrics(out)
    names = MIL_PHASES if backend == "sim" else CPU_PHASES
    for r in m:
        assert tuple(r["phase_ms"]) == names
        assert all(v >= 0 for v in r["phase_ms"].values())
        # tok_s is rounded to 0.1 and ms to 0.001: both roundings bound the agreement
        assert r["tok_s"] == pytest.approx(2 * 64 / (r["ms"] / 1000), rel=1e-3, abs=0.06)
        assert 1 < r["rss_mb"] < 1e5
    # every step: the phases account for the step's time within 10% (a stray slow step, e.g. a
    # garbage collection between phases, may miss once)
    ratios = [sum(r["phase_ms"].values()) / r["ms"] for r in m]
    assert sum(0.9 <= x <= 1.0 + 1e-6 for x in ratios) >= len(m) - 1, ratios
    total = sum(sum(r["phase_ms"].values()) for r in m) / sum(r["ms"] for r in m)
    assert 0.9 <= total <= 1.0 + 1e-6, total
    # the checkpoints of steps 5 and 10 are timed on the next line, outside its ms
    assert [r["step"] for r in m if "ckpt_ms" in r] == [6, 11]
    report = capsys.readouterr().out
    assert "--- where the step time goes ---" in report
    labels = ["kernel evaluation", "surface staging", "CPU ops", "waiting for dW"] \
        if backend == "sim" else ["forward", "backward"]  # fmt: skip
    for label in [*labels, "optimizer", "step total", "checkpoint (3x)", "compile"]:
        assert label in report, label
    assert "% of wall" in report
