"""llama2.c model.bin import/export: exact byte layouts, round trips, bad files, --init training."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from anetrain import native
from anetrain.backends.cpu import CpuKernels
from anetrain.config import preset
from anetrain.errors import CheckpointError, UserError
from anetrain.export import main as export_main
from anetrain.formats import checkpoint, files
from anetrain.formats.data import WindowSampler, eval_windows, open_dataset
from anetrain.formats.llama2c import read_llama2c, write_llama2c
from anetrain.model import forward, loss_only
from anetrain.params import Params, init_params
from anetrain.train import main as train_main

TINY = ["--model", "tiny", "--quiet", "--threads", "2", "--backend", "cpu"]
KINDS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def _random_params(cfg, seed: int = 0) -> Params:
    p = init_params(cfg, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for t in p.tensors.values():
        if t.ndim == 1:  # norm weights != 1, so a swapped norm cannot hide
            t[...] = rng.uniform(0.5, 1.5, t.shape).astype(np.float32)
    return p


def _bits(a: np.ndarray) -> np.ndarray:
    """fp32 bit patterns, flattened: equality of these is bit-exact equality (NaNs, -0.0)."""
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32)


def _logits(params: Params, tokens: np.ndarray) -> np.ndarray:
    """Full-sequence logits [V, S] through the training forward."""
    kern = CpuKernels(params.cfg, params, seq_len=len(tokens))
    x, _ = forward(params, kern, tokens, keep=False)
    xf, _ = native.rmsnorm_fwd(x, params.rms_final, params.cfg.norm_eps)
    return params.wcls @ xf


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 4 steps on the embedded data, and its v0/v1 exports."""
    d = tmp_path_factory.mktemp("trained")
    assert train_main([*TINY, "--steps", "4", "--seed", "7", "--out", str(d / "run")]) == 0
    for v in (0, 1):
        args = [
            str(d / "run"),
            "--format",
            "llama2c",
            "--version",
            str(v),
            "-o",
            str(d / f"v{v}.bin"),
        ]
        assert export_main(args) == 0
    return d


# ----------------------------------------------------------------------------
# byte layouts, computed from the header as llama2c.md §2.1 / §2.2 describe them


def _check_v0_layout(path, params: Params) -> None:
    raw = path.read_bytes()
    D, F, L, H, KV, Vs, S = struct.unpack_from("<7i", raw, 0)
    cfg = params.cfg
    assert (D, F, L, H, KV, S) == (
        cfg.dim,
        cfg.hidden_dim,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.seq_len,
    )
    assert Vs == (cfg.vocab_size if cfg.shared_classifier else -cfg.vocab_size)
    V, hd = abs(Vs), D // H
    kvd = KV * hd
    n = V * D + L * (2 * D + 2 * D * D + 2 * kvd * D + 3 * D * F) + D + S * hd
    n += 0 if Vs > 0 else V * D
    assert len(raw) == 28 + 4 * n
    off = 28

    def take(count: int) -> np.ndarray:
        nonlocal off
        a = np.frombuffer(raw, dtype="<f4", count=count, offset=off)
        off += 4 * count
        return a

    t = params.tensors
    np.testing.assert_array_equal(_bits(take(V * D)), _bits(t["embed"]))
    sizes = {
        "wq": D * D,
        "wk": kvd * D,
        "wv": kvd * D,
        "wo": D * D,
        "w1": F * D,
        "w2": D * F,
        "w3": F * D,
    }
    for kind in ("rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"):
        for i in range(L):
            got = take(sizes.get(kind, D))
            np.testing.assert_array_equal(_bits(got), _bits(t[f"layers.{i}.{kind}"]), kind)
    np.testing.assert_array_equal(_bits(take(D)), _bits(t["rms_final"]))
    cos, sin = take(S * hd // 2).reshape(S, hd // 2), take(S * hd // 2).reshape(S, hd // 2)
    ang = np.outer(np.arange(S), 10000.0 ** (-np.arange(0, hd, 2) / hd))  # float64 reference
    np.testing.assert_allclose(cos, np.cos(ang), atol=2e-5)
    np.testing.assert_allclose(sin, np.sin(ang), atol=2e-5)
    try:  # llama2.c's export.py computes the tables with torch in fp32: byte-identical then
        import torch

        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
        f = torch.outer(torch.arange(S), inv).float()
        np.testing.assert_array_equal(cos, torch.cos(f).numpy())
        np.testing.assert_array_equal(sin, torch.sin(f).numpy())
    except ImportError:
        pass
    if Vs < 0:
        np.testing.assert_array_equal(_bits(take(V * D)), _bits(t["wcls"]))
    assert off == len(raw)


def _check_v1_layout(path, params: Params) -> None:
    raw = path.read_bytes()
    cfg = params.cfg
    assert raw[:4] == b"\x32\x34\x6b\x61"  # "ak42" as a little-endian uint32
    magic, version, *dims = struct.unpack_from("<Ii7i", raw, 0)
    assert (magic, version) == (0x616B3432, 1)
    assert dims == [
        cfg.dim,
        cfg.hidden_dim,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.vocab_size,
        cfg.seq_len,
    ]
    assert raw[36] == int(cfg.shared_classifier) and raw[37:256] == bytes(219)
    order = [f"layers.{i}.rms_att" for i in range(cfg.n_layers)]
    order += [f"layers.{i}.rms_ffn" for i in range(cfg.n_layers)]
    order += ["rms_final", "embed"]
    order += [f"layers.{i}.{k}" for k in KINDS for i in range(cfg.n_layers)]
    order += [] if cfg.shared_classifier else ["wcls"]
    body = np.frombuffer(raw, dtype="<f4", offset=256)
    expect = np.concatenate([params.tensors[n].reshape(-1) for n in order])
    assert body.size == expect.size == cfg.n_params()
    np.testing.assert_array_equal(_bits(body), _bits(expect))


def test_exported_v0_of_a_trained_model_has_the_llama2c_layout(trained):
    ck = checkpoint.load(trained / "run" / "checkpoint.bin", with_optimizer=False)
    _check_v0_layout(trained / "v0.bin", ck.params)


def test_exported_v1_of_a_trained_model_has_the_llama2c_layout(trained):
    ck = checkpoint.load(trained / "run" / "checkpoint.bin", with_optimizer=False)
    _check_v1_layout(trained / "v1.bin", ck.params)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("kv", [4, 2])
def test_layouts_shared_unshared_mha_gqa(tmp_path, shared, kv):
    cfg = preset("tiny", vocab_size=97, seq_len=16, n_kv_heads=kv, shared_classifier=shared)
    p = _random_params(cfg)
    write_llama2c(tmp_path / "v0.bin", cfg, p, version=0)
    write_llama2c(tmp_path / "v1.bin", cfg, p, version=1)
    _check_v0_layout(tmp_path / "v0.bin", p)
    _check_v1_layout(tmp_path / "v1.bin", p)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("kv", [4, 2])
def test_round_trip_is_bit_exact(tmp_path, version, shared, kv):
    cfg = preset("tiny", vocab_size=97, seq_len=16, n_kv_heads=kv, shared_classifier=shared)
    p = _random_params(cfg, seed=kv + 10 * shared)
    path = tmp_path / "m.bin"
    write_llama2c(path, cfg, p, version=version)
    cfg2, p2 = read_llama2c(path)
    assert cfg2 == cfg
    np.testing.assert_array_equal(_bits(p2.flat), _bits(p.flat))
    assert not (tmp_path / "m.bin.tmp").exists()
    write_llama2c(tmp_path / "again.bin", cfg2, p2, version=version)  # export(import(x)) == x
    assert (tmp_path / "again.bin").read_bytes() == path.read_bytes()


def test_stories15m_shape_has_the_documented_size(tmp_path):
    cfg = preset("stories15m", vocab_size=32000)
    p = Params(cfg, np.random.default_rng(0).standard_normal(cfg.n_params(), dtype=np.float32))
    assert write_llama2c(tmp_path / "s.bin", cfg, p) == 60_816_028  # llama2c.md §2.1
    cfg2, p2 = read_llama2c(tmp_path / "s.bin")
    assert cfg2 == cfg and np.array_equal(p2.flat, p.flat)


# ----------------------------------------------------------------------------
# files written independently in the test (struct, straight from llama2c.md)


def _sd(cfg, rng) -> dict[str, np.ndarray]:
    """llama2.c state-dict-like weights by our names."""
    D, F, kvd, V = cfg.dim, cfg.hidden_dim, cfg.kv_dim, cfg.vocab_size
    shapes = {
        "wq": (D, D),
        "wk": (kvd, D),
        "wv": (kvd, D),
        "wo": (D, D),
        "w1": (F, D),
        "w2": (D, F),
        "w3": (F, D),
        "rms_att": (D,),
        "rms_ffn": (D,),
    }
    sd = {"embed": rng.standard_normal((V, D)), "rms_final": rng.uniform(0.5, 1.5, D)}
    if not cfg.shared_classifier:
        sd["wcls"] = rng.standard_normal((V, D))
    for i in range(cfg.n_layers):
        for k, s in shapes.items():
            sd[f"layers.{i}.{k}"] = rng.standard_normal(s) * (0.2 if len(s) == 2 else 0.1) + (
                1.0 if len(s) == 1 else 0.0
            )
    return {k: v.astype(np.float32) for k, v in sd.items()}


def _floats(a: np.ndarray) -> bytes:
    return struct.pack(f"<{a.size}f", *a.reshape(-1).tolist())


@pytest.mark.parametrize("shared", [True, False])
def test_struct_written_v0_gives_identical_logits(tmp_path, shared):
    cfg = preset(
        "tiny",
        dim=32,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        vocab_size=50,
        seq_len=8,
        shared_classifier=shared,
    )
    sd = _sd(cfg, np.random.default_rng(3))
    L, hd = cfg.n_layers, cfg.head_dim
    vocab = cfg.vocab_size if shared else -cfg.vocab_size
    out = [
        struct.pack(
            "<7i", cfg.dim, cfg.hidden_dim, L, cfg.n_heads, cfg.n_kv_heads, vocab, cfg.seq_len
        ),
        _floats(sd["embed"]),
    ]
    for kind in ("rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"):
        out += [_floats(sd[f"layers.{i}.{kind}"]) for i in range(L)]
    out += [
        _floats(sd["rms_final"]),
        struct.pack(f"<{cfg.seq_len * hd}f", *[7.0] * (cfg.seq_len * hd)),
    ]
    if not shared:
        out.append(_floats(sd["wcls"]))
    (tmp_path / "m.bin").write_bytes(b"".join(out))

    cfg2, imported = read_llama2c(tmp_path / "m.bin")
    assert cfg2 == cfg
    direct = Params(cfg)
    for name, w in sd.items():
        direct.tensors[name][...] = w
    tokens = np.array([1, 5, 9, 49, 0, 3, 3, 7], dtype=np.int32)
    np.testing.assert_array_equal(_logits(imported, tokens), _logits(direct, tokens))


@pytest.mark.parametrize("shared", [True, False])
def test_struct_written_v2_dequantizes_to_q_times_scale(tmp_path, shared):
    cfg = preset(
        "tiny",
        dim=48,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=72,
        vocab_size=40,
        seq_len=8,
        shared_classifier=shared,
    )
    gs = 64
    while cfg.dim % gs:  # llama2c.md §2.3: halve from 64 until it divides dim
        gs //= 2
    assert gs == 16
    rng = np.random.default_rng(5)
    L = cfg.n_layers
    head = struct.pack(
        "<Ii7iBi",
        0x616B3432,
        2,
        cfg.dim,
        cfg.hidden_dim,
        L,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.vocab_size,
        cfg.seq_len,
        int(shared),
        gs,
    )
    out = [head + bytes(256 - len(head))]
    expect: dict[str, np.ndarray] = {}
    for kind in ("rms_att", "rms_ffn"):
        for i in range(L):
            w = rng.uniform(0.5, 1.5, cfg.dim).astype(np.float32)
            expect[f"layers.{i}.{kind}"] = w
            out.append(_floats(w))
    expect["rms_final"] = rng.uniform(0.5, 1.5, cfg.dim).astype(np.float32)
    out.append(_floats(expect["rms_final"]))
    names = ["embed"] + [f"layers.{i}.{k}" for k in KINDS for i in range(L)]
    names += [] if shared else ["wcls"]
    shapes = dict(Params(cfg).names)
    for name in names:
        n = int(np.prod(shapes[name]))
        q = rng.integers(-127, 128, n).astype(np.int8)
        s = rng.uniform(1e-3, 2e-2, n // gs).astype(np.float32)
        out += [q.tobytes(), _floats(s)]
        expect[name] = (q.reshape(-1, gs).astype(np.float32) * s[:, None]).reshape(shapes[name])
    (tmp_path / "q.bin").write_bytes(b"".join(out))
    cfg2, p = read_llama2c(tmp_path / "q.bin")
    assert cfg2 == cfg
    for name, w in expect.items():
        np.testing.assert_array_equal(_bits(p.tensors[name]), _bits(w), name)


# ----------------------------------------------------------------------------
# bad files: one CheckpointError naming the file, never a half-loaded model


def _corruptions(good: bytes, good_v1: bytes) -> dict[str, bytes]:
    hdr = list(struct.unpack_from("<7i", good))

    def v0(**kw):
        h = hdr.copy()
        for i, name in enumerate(("dim", "hidden", "layers", "heads", "kv", "vocab", "seq")):
            h[i] = kw.get(name, h[i])
        return struct.pack("<7i", *h) + good[28:]

    bad_version = good_v1[:4] + struct.pack("<i", 3) + good_v1[8:]
    return {
        "empty": b"",
        "short header": good[:20],
        "truncated": good[:-4],
        "oversized": good + b"\0" * 4,
        "garbage": bytes(range(256)) * 8,
        "negative dim": v0(dim=-64),
        "zero vocab": v0(vocab=0),
        "absurd layers": v0(layers=1 << 30),
        "heads do not divide dim": v0(heads=5),
        "kv does not divide heads": v0(kv=3),
        "seq changed": v0(seq=hdr[6] + 1),
        "v1 truncated header": good_v1[:100],
        "v1 truncated body": good_v1[:-1],
        "v1 bad version": bad_version,
        "v1 bad flag": good_v1[:36] + b"\x07" + good_v1[37:],
    }


def test_corrupt_files_are_refused(tmp_path, trained):
    good, good_v1 = (trained / "v0.bin").read_bytes(), (trained / "v1.bin").read_bytes()
    for name, data in _corruptions(good, good_v1).items():
        path = tmp_path / (name.replace(" ", "_") + ".bin")
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            read_llama2c(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg, (name, msg)
    with pytest.raises(CheckpointError, match="no such"):
        read_llama2c(tmp_path / "missing.bin")


def test_export_refuses_what_llama2c_cannot_express(tmp_path):
    for kw in ({"norm_eps": 1e-6}, {"rope_theta": 5e5}):
        cfg = preset("tiny", vocab_size=97, seq_len=16, **kw)
        with pytest.raises(UserError, match="run.c|llama2.c"):
            write_llama2c(tmp_path / "m.bin", cfg, Params(cfg))
        assert not (tmp_path / "m.bin").exists()


def test_export_cli_errors(tmp_path, trained, capsys):
    assert export_main([str(tmp_path / "nope"), "--format", "llama2c", "-o", "x.bin"]) == 2
    ck = str(trained / "run" / "checkpoint.bin")
    assert export_main([ck, "--format", "llama2c", "-o", ck]) == 2
    err = capsys.readouterr().err
    assert err.count("anetrain.export: error:") == 2


def test_export_refuses_an_existing_output_without_overwrite(tmp_path, trained, capsys):
    run, other = str(trained / "run"), tmp_path / "other_run_checkpoint.bin"
    other.write_bytes(b"another run's checkpoint")
    base = [run, "--format", "llama2c", "-o", str(other)]
    assert export_main(base) == 2
    err = capsys.readouterr().err
    assert (
        err == f"anetrain.export: error: {other}: already exists (pass --overwrite to replace it)\n"
    )
    assert other.read_bytes() == b"another run's checkpoint"
    assert export_main([*base, "--overwrite"]) == 0
    assert other.read_bytes() == (trained / "v0.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]  # no .tmp left
    assert export_main([run, "--format", "llama2c", "-o", str(tmp_path), "--overwrite"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_export_never_overwrites_its_input_even_with_overwrite(tmp_path, trained, capsys):
    ck = trained / "run" / "checkpoint.bin"
    before = ck.read_bytes()
    (tmp_path / "link.bin").symlink_to(ck)
    (tmp_path / "hard.bin").hardlink_to(ck)
    for out in (ck, tmp_path / "link.bin", tmp_path / "hard.bin"):
        assert (
            export_main(
                [str(trained / "run"), "--format", "llama2c", "-o", str(out), "--overwrite"]
            )
            == 2
        )
        assert "refusing to overwrite the input checkpoint" in capsys.readouterr().err
    assert ck.read_bytes() == before


def test_failed_overwrite_leaves_the_old_file(tmp_path, trained, capsys, monkeypatch):
    out = tmp_path / "m.bin"
    out.write_bytes(b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    assert (
        export_main([str(trained / "run"), "--format", "llama2c", "-o", str(out), "--overwrite"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: cannot write model (No space left" in err
    assert out.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [out]


# ----------------------------------------------------------------------------
# python -m anetrain.train --init model.bin


def test_init_continues_with_the_original_loss(tmp_path, trained):
    ck = checkpoint.load(trained / "run" / "checkpoint.bin", with_optimizer=False)
    _, imported = read_llama2c(trained / "v0.bin")
    np.testing.assert_array_equal(_bits(imported.flat), _bits(ck.params.flat))
    out = tmp_path / "ft"
    args = [*TINY, "--init", str(trained / "v0.bin"), "--steps", "1", "--seed", "11"]
    assert train_main([*args, "--out", str(out)]) == 0
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # the same first batch (seed + 1 is the sampler's seed), scored by the original model
    data = open_dataset(None)
    x, y = WindowSampler(data.train.tokens, ck.model.seq_len, 11 + 1).next()
    expect = loss_only(ck.params, CpuKernels(ck.model, ck.params), x, y)
    assert first["loss"] == expect
    assert checkpoint.load(out / "checkpoint.bin").model == ck.model


def test_fine_tuning_an_imported_model_lowers_its_loss(tmp_path, trained):
    out = tmp_path / "ft"
    args = [*TINY, "--init", str(trained / "v1.bin"), "--steps", "25", "--lr", "2e-3"]
    assert train_main([*args, "--out", str(out)]) == 0
    data = open_dataset(None)
    _, before = read_llama2c(trained / "v1.bin")
    after = checkpoint.load(out / "checkpoint.bin").params

    def val_loss(p: Params) -> float:
        kern = CpuKernels(p.cfg, p)
        return float(np.mean([loss_only(p, kern, x, y) for x, y in eval_windows(data.val, 64, 8)]))

    lb, la = val_loss(before), val_loss(after)
    assert la < lb - 0.1, (lb, la)


def test_init_may_lower_seq_len(tmp_path, trained):
    out = tmp_path / "short"
    args = [*TINY, "--init", str(trained / "v0.bin"), "--seq", "32", "--steps", "1"]
    assert train_main([*args, "--out", str(out)]) == 0
    assert checkpoint.load(out / "checkpoint.bin").model.seq_len == 32


def test_init_refuses_disagreeing_flags(tmp_path, trained, capsys):
    v0 = str(trained / "v0.bin")
    base = ["--quiet", "--threads", "2", "--steps", "1", "--init", v0, "--out", str(tmp_path / "x")]
    assert train_main([*base, "--model", "stories15m"]) == 2
    assert train_main([*base, "--seq", "65"]) == 2
    assert train_main([*base, "--resume", str(trained / "run")]) == 2
    cfg = preset("tiny", vocab_size=512, seq_len=64)  # the embedded data has vocab 2048
    write_llama2c(tmp_path / "v512.bin", cfg, _random_params(cfg))
    base[base.index(v0)] = str(tmp_path / "v512.bin")
    assert train_main(base) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(ln.startswith("anetrain.train: error:") for ln in err), err
    assert "architecture" in err[0] and "--seq 65" in err[1] and "vocab" in err[3]
    assert not (tmp_path / "x" / "checkpoint.bin").exists()
