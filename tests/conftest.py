"""Shared fixtures: tiny in-process configs, seeded RNGs, temporary datasets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from anetrain.config import preset

ROOT = Path(__file__).resolve().parents[1]
MOCK_SO = ROOT / "build" / "mock" / "libane_mock.so"  # make mock


def mock_framework():
    """tests/mock/mock_control.py's MockFramework over the built mock (counters, faults)."""
    spec = importlib.util.spec_from_file_location("mock_control",
                                                  ROOT / "tests" / "mock" / "mock_control.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MockFramework(MOCK_SO)


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
