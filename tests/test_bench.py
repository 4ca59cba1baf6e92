"""python -m anetrain.bench: bad input is one `error:` line and exit 2, never a traceback.

Only tiny configs and 1 step/rep: these test the CLI, not the figures.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from anetrain.bench import _args, cpu
from anetrain.bench.__main__ import main as bench_main
from anetrain.train import BLAS_VARS


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench overlap pins the BLAS thread variables; bench cpu sleeps between timed calls."""
    for var in BLAS_VARS:  # recorded, so whatever the bench sets is undone afterwards
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setattr(cpu, "SETTLE_S", 0.0)


def _one_error_line(err: str, prog: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_benchmark_is_named_with_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["bogus"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err == "anetrain.bench: error: unknown benchmark 'bogus' (choose from cpu, dist, hf, lora, "
        "overlap, sim)\n"
    )


@pytest.mark.parametrize("argv, code", [([], 2), (["--help"], 0), (["-h"], 0)])
def test_no_argument_or_help_shows_the_usage(
    argv: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_main(argv) == code
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m anetrain.bench {")
    for name in ("cpu", "overlap", "sim"):
        assert f"  {name} " in out


@pytest.mark.parametrize(
    "argv",
    [
        ["overlap", "--model", "foo"],
        ["cpu", "--models", "tiny,foo", "--no-torch"],  # checked before tiny is benchmarked
        ["sim", "--preset", "foo"],
    ],
    ids=["overlap", "cpu", "sim"],
)
def test_unknown_preset_is_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_bench(*a: object) -> dict:
        raise AssertionError("benchmarked before the preset names were checked")

    monkeypatch.setattr(cpu, "bench_steps", no_bench)
    assert bench_main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, f"anetrain.bench {argv[0]}")
    assert "'foo'" in line and "tiny" in line and "stories110m" in line


# Each case is tiny and would finish quickly (or crash) if the flag were not checked.
OVERLAP = ["overlap", "--model", "tiny", "--vocab-size", "97", "--steps", "1"]
CPU = ["cpu", "--models", "tiny", "--reps", "1", "--fp16-n", "1024", "--no-torch"]
SIM = ["sim", "--preset", "tiny", "--no-cpu"]
BAD_FLAGS = [
    (OVERLAP, "--steps", "0"),
    (OVERLAP, "--steps", "-1"),
    (OVERLAP, "--accum", "0"),
    (OVERLAP, "--vocab-size", "0"),
    (OVERLAP, "--vocab-size", "-5"),
    (OVERLAP, "--kernel-scale", "abc"),
    (OVERLAP, "--kernel-scale", "nan"),
    (OVERLAP, "--kernel-scale", "inf"),
    (OVERLAP, "--kernel-scale", "0"),
    (OVERLAP, "--kernel-scale", "-1"),
    (OVERLAP, "--dw-workers", "-1"),
    (OVERLAP, "--threads", "0"),
    (CPU, "--reps", "0"),
    (CPU, "--threads", "-1"),
    (CPU, "--fp16-n", "0"),
    (CPU, "--fp16-n", "-1"),
    (SIM, "--repeat", "0"),
    (SIM, "--repeat", "x"),
]


@pytest.mark.parametrize(
    "base, flag, value", BAD_FLAGS, ids=[f"{b[0]}{f}={v}" for b, f, v in BAD_FLAGS]
)
def test_bad_numeric_flag_is_one_line(
    base: list[str], flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        bench_main([*base, flag, value])
    assert e.value.code == 2
    line = _one_error_line(capsys.readouterr().err, f"python -m anetrain.bench {base[0]}")
    assert f"argument {flag}:" in line and value in line


def test_kernel_scale_accepts_host_and_positive_numbers() -> None:
    assert _args.kernel_scale("host") == "host"
    assert _args.kernel_scale("2.5") == 2.5 and _args.kernel_scale("1e-3") == 1e-3
    assert _args.nonneg_int("0") == 0 and _args.positive_int("3") == 3


@pytest.mark.parametrize("as_json", [False, True])
def test_cpu_says_why_the_torch_comparison_is_missing(
    as_json: bool, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    argv = ["cpu", "--models", "tiny", "--reps", "1", "--fp16-n", "1024"]
    assert bench_main(argv + (["--json"] if as_json else [])) == 0
    out, err = capsys.readouterr()
    note = [ln for ln in err.splitlines() if "torch" in ln]
    assert len(note) == 1 and "skipped" in note[0] and "not installed" in note[0]
    assert "pip install torch" in note[0]
    if as_json:  # the note stays off stdout, which is one JSON object
        report = json.loads(out)
        assert report["torch"] is False and "torch_ms" not in report["steps"][0]
    else:
        assert "tiny" in out and "torch" not in out


def test_cpu_without_torch_flag_prints_no_note(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cpu", "--models", "", "--reps", "1", "--fp16-n", "1024", "--no-torch"]
    assert bench_main(argv) == 0
    out, err = capsys.readouterr()
    assert err == "" and "fp32->fp16" in out


def test_hf_bench_prints_every_figure(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """bench hf on a tiny stand-in shape: both step times, their ratio, memory, and the
    simulator and latency-model figures, for a Qwen3 (q/k norm) shape as for a Llama one."""
    from anetrain.bench import hf
    from anetrain.config import ModelConfig

    tiny = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                       vocab_size=97, seq_len=16)  # fmt: skip
    monkeypatch.setitem(hf.SHAPES, "tiny-llama", tiny)
    assert bench_main(["hf", "--shape", "tiny-llama", "--reps", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ratio"] > 0 and res["anetrain_ms"] > 0 and res["torch_ms"] > 0
    assert res["peak_rss_mb"] > 0 and res["sim_layers"] == 2 and res["latency_ratio"] > 0
    monkeypatch.setitem(hf.SHAPES, "tiny-qwen3", tiny.replace(qk_norm=True, head_size=32))
    assert bench_main(["hf", "--shape", "tiny-qwen3", "--reps", "1", "--no-torch", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "sim" not in res and res["sim_layers"] == 2 and res["sim_s_per_layer"] > 0
    assert res["sim_compile_s"] > 0 and res["latency_ratio"] > 0 and res["anetrain_ms"] > 0
    assert bench_main(["hf", "--shape", "nope"]) == 2
    assert "unknown shape 'nope'" in _one_error_line(capsys.readouterr().err, "anetrain.bench")


def test_overlap_defaults_to_trainings_dw_worker_count(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dw-workers 0 means what training uses (config.default_threads), not the affinity mask."""
    from anetrain.bench import overlap

    monkeypatch.setattr(overlap, "default_threads", lambda: 3)
    monkeypatch.setattr(overlap, "CORES", 5)
    assert bench_main(OVERLAP) == 0
    assert "; 3 dW workers; 5 cores" in capsys.readouterr().out
