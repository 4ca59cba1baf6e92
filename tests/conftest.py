"""Shared fixtures: tiny in-process configs, seeded RNGs, temporary datasets."""

from __future__ import annotations

import numpy as np
import pytest

from anetrain.config import preset


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
