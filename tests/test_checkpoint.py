"""Checkpoint format: exact round trip; every kind of damage is refused before anything is used."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import tiny_cfg

from anetrain.config import TrainConfig
from anetrain.errors import CheckpointError
from anetrain.formats import checkpoint as ck
from anetrain.formats.files import WriteError
from anetrain.params import init_params


def _make(tmp_path, rng, **kw):
    cfg = tiny_cfg(**kw)
    p = init_params(cfg, rng)
    m, v = p.zeros_like(), p.zeros_like()
    m.flat[:] = rng.standard_normal(len(p)).astype(np.float32)
    v.flat[:] = rng.random(len(p)).astype(np.float32)
    sampler = np.random.PCG64(2**100).state
    state = ck.RunState(cfg, TrainConfig(steps=9), step=7, adam_t=7, tokens=7 * 16,
                        sampler=sampler)  # fmt: skip
    path = tmp_path / "c.bin"
    ck.save(path, ck.Checkpoint(state, p, m, v))
    return path, cfg, p, m, v


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2, "shared_classifier": False}])
def test_round_trip_exact(tmp_path, rng, kw):
    path, cfg, p, m, v = _make(tmp_path, rng, **kw)
    got = ck.load(path)
    assert got.model == cfg
    np.testing.assert_array_equal(got.params.flat, p.flat)
    np.testing.assert_array_equal(got.m.flat, m.flat)
    np.testing.assert_array_equal(got.v.flat, v.flat)
    assert got.state.step == 7 and got.state.sampler == np.random.PCG64(2**100).state
    assert not (tmp_path / "c.bin.tmp").exists()
    light = ck.load(path, with_optimizer=False)
    assert light.m is None and np.array_equal(light.params.flat, p.flat)


def _refused(path, match):
    with pytest.raises(CheckpointError, match=match) as e:
        ck.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_damage_is_refused(tmp_path, rng):
    path, *_ = _make(tmp_path, rng)
    good = path.read_bytes()
    bad = tmp_path / "bad.bin"
    cases = {
        "bad magic": b"NOTACKPT" + good[8:],
        "version": good[:8] + struct.pack("<I", 99) + good[12:],
        "truncated": good[:-100],
        "oversized": good + b"\0" * 64,
        "checksum": good[:-10] + bytes([good[-10] ^ 1]) + good[-9:],
        "header": good[:40] + bytes([good[40] ^ 0x20]) + good[41:],
        "truncated checkpoint": good[:20],
    }
    for match, data in cases.items():
        bad.write_bytes(data)
        _refused(bad, match.split()[0] if match != "header" else "header")
    _refused(tmp_path / "missing.bin", "no such checkpoint")


def test_failed_save_keeps_the_old_file(tmp_path, rng, monkeypatch):
    path, cfg, p, m, v = _make(tmp_path, rng)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "_write_all", boom)
    with pytest.raises(WriteError, match="No space left"):
        ck.save(path, ck.Checkpoint(ck.RunState(cfg), p, m, v))
    assert path.read_bytes() == before
    assert not (tmp_path / "c.bin.tmp").exists()
