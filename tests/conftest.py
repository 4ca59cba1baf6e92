"""Shared fixtures: tiny in-process configs, seeded RNGs, temporary datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from anetrain.config import preset

ROOT = Path(__file__).resolve().parents[1]
MOCK_SO = ROOT / "build" / "mock" / "libane_mock.so"  # make mock
MOCK_DIR = ROOT / "tests" / "mock"  # mock_control.py, and sitecustomize.py for child processes
sys.path.insert(0, str(MOCK_DIR))  # import mock_control (lazily: it loads cffi and the runtime)


def mock_framework():
    """tests/mock/mock_control.py's MockFramework over the built mock (counters, faults, eval
    callback; use_simulator() makes AneRuntime over the mock compute what the simulator does)."""
    import mock_control

    return mock_control.shared(MOCK_SO)


def mock_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) for a child Python on the mock: ANETRAIN_ANE_FRAMEWORK
    names it, and tests/mock goes first on PYTHONPATH so that sitecustomize.py makes it
    evaluate through the simulator (in that child and in every process it starts)."""
    env = dict(os.environ if env is None else env)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(MOCK_DIR) + (os.pathsep + path if path else "")
    env["ANETRAIN_ANE_FRAMEWORK"] = str(MOCK_SO)
    return env


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def tiny_cfg(**kw):
    """The `tiny` preset with a small vocabulary (fast tests); override any field."""
    base = {"vocab_size": 97, "seq_len": 16}
    base.update(kw)
    return preset("tiny", **base)


def perturb_norms(params, rng) -> None:
    """Norm weights != 1 so RMSNorm backward bugs cannot hide (upstream.md §8.2)."""
    for _name, t in params.tensors.items():
        if t.ndim == 1:
            t[...] = rng.uniform(0.5, 1.5, t.shape).astype(np.float32)


def write_tokens(path, tokens) -> None:
    np.asarray(tokens, dtype="<u2").tofile(path)
