"""LoRA adapters: layout, PEFT's init, staging W + s·B·A, and dA, dB against torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import perturb_norms, tiny_cfg

from anetrain.backends.cpu import CpuKernels
from anetrain.config import ConfigError
from anetrain.lora import LoraConfig, LoraGrads, init_lora, stage
from anetrain.model import micro_step
from anetrain.params import init_params

ALL = ("q", "k", "v", "o", "gate", "up", "down")


def _setup(rng, lc: LoraConfig, **kw):
    cfg = tiny_cfg(**kw)
    base = init_params(cfg, rng)
    for t in base.tensors.values():
        if t.ndim == 2:
            t *= 5.0
    perturb_norms(base, rng)
    lora = init_lora(cfg, lc, rng)
    for _, _, b in lora.pairs():  # nonzero B, so that dA is exercised
        b[...] = rng.standard_normal(b.shape, dtype=np.float32) * np.float32(0.1)
    toks = rng.integers(0, cfg.vocab_size, cfg.seq_len + 1)
    return cfg, base, lora, toks[:-1].astype(np.int32), toks[1:].astype(np.int32)


def _torch_grads(base, lora, x, y, masks=None):
    """PEFT's LoRA in torch: y = W x + s B A drop(x), drop(x) = x * mask / (1 - p) with our
    masks (bool [in, S] by (layer, matrix)), or no dropout."""
    import torch
    import torch_llama as torch_ref

    class LoraLlama(torch_ref.TorchLlama):
        def __init__(self) -> None:
            super().__init__(base.cfg, base)
            self.ab = {name: (torch.tensor(a.copy(), requires_grad=True),
                              torch.tensor(b.copy(), requires_grad=True))
                       for name, a, b in lora.pairs()}  # fmt: skip

        def proj(self, name: str, h: torch.Tensor) -> torch.Tensor:
            out = h @ super().w(name).T
            if name in self.ab:
                a, b = self.ab[name]
                _, layer, w = name.split(".")
                if masks is not None:
                    keep = torch.as_tensor(masks[(int(layer), w)].T)
                    h = h * keep / (1.0 - lora.lc.dropout)
                out = out + lora.lc.scale * ((h @ a.T) @ b.T)
            return out

    m = LoraLlama()
    loss = m(torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long))
    loss.backward()
    return loss.item(), {n: (a.grad.numpy(), b.grad.numpy()) for n, (a, b) in m.ab.items()}


@pytest.mark.parametrize("targets,layers,kw", [(("q", "v"), 0, {}), (ALL, 1, {"n_kv_heads": 2})])
def test_adapter_grads_match_torch_autograd(rng, targets, layers, kw):
    pytest.importorskip("torch")
    lc = LoraConfig(rank=4, alpha=6.0, targets=targets, layers=layers)
    cfg, base, lora, x, y = _setup(rng, lc, **kw)
    work = base.copy()
    stage(base.tensors, lora, work)
    dlora = lora.zeros_like()
    dlora.flat[...] = np.nan  # every adapter gradient must be written
    grads = LoraGrads(lora, dlora)
    loss = micro_step(work, grads, CpuKernels(cfg, work), x, y, accumulate=False)
    once = dlora.flat.copy()
    micro_step(work, grads, CpuKernels(cfg, work), x, y, accumulate=True)
    np.testing.assert_allclose(dlora.flat, 2 * once, rtol=1e-6)  # accumulates
    dlora.flat[...] = once
    tloss, tg = _torch_grads(base, lora, x, y)
    assert loss == pytest.approx(tloss, rel=1e-5)
    assert len(tg) == len(targets) * (layers or cfg.n_layers)
    for name, (ta, tb) in tg.items():
        got_a, got_b = dlora.tensors[f"{name}.lora_A"], dlora.tensors[f"{name}.lora_B"]
        for got, ref in ((got_a, ta), (got_b, tb)):
            err = np.abs(got - ref).max() / (np.abs(ref).max() + 1e-12)
            assert err < 1e-4, f"{name}: relative error {err:.2e}"


def test_init_is_pefts_and_stage_leaves_untargeted_tensors(rng):
    lc = LoraConfig(rank=8, targets=("q", "down"), layers=1)
    cfg = tiny_cfg()
    lora = init_lora(cfg, lc, rng)
    assert lc.alpha == 16.0 and lc.scale == 2.0
    last = f"layers.{cfg.n_layers - 1}"
    assert [n for n, _, _ in lora.names][:2] == [f"{last}.wq.lora_A", f"{last}.wq.lora_B"]
    for _, a, b in lora.pairs():
        bound = 1.0 / np.sqrt(a.shape[1])
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound
        assert not b.any()
    base = init_params(cfg, rng)
    work = base.copy()
    for _, _, b in lora.pairs():
        b[...] = 1.0
    stage(base.tensors, lora, work)
    changed = {n for n, t in work.tensors.items() if not np.array_equal(t, base.tensors[n])}
    assert changed == {f"layers.{cfg.n_layers - 1}.wq", f"layers.{cfg.n_layers - 1}.w2"}


@pytest.mark.parametrize("kw,message", [
    ({"rank": 0}, "--lora-rank"), ({"rank": 4, "targets": ("x",)}, "--lora-targets"),
    ({"rank": 4, "dropout": 1.0}, "--lora-dropout"), ({"rank": 4, "layers": -1}, "--lora-layers"),
])  # fmt: skip
def test_bad_lora_configs_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        LoraConfig(**kw)


def test_lora_config_round_trips_and_checks_its_dict():
    lc = LoraConfig(rank=2, targets=("q", "k"), layers=1)
    assert LoraConfig.from_dict(lc.to_dict()) == lc
    with pytest.raises(ConfigError):
        LoraConfig.from_dict({**lc.to_dict(), "rank": "2"})
    with pytest.raises(ConfigError):
        LoraConfig.from_dict({"rank": 2})


def _train(*argv) -> None:
    from anetrain.train import main

    assert main(["--backend", "cpu", "--quiet", "--threads", "1", *map(str, argv)]) == 0


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_lora_run_resumes_bit_identically_and_leaves_the_base_alone(tmp_path, backend):
    """sim: the resumed run re-stages W + s·B·A from the saved frozen weights and adapters, and
    its loss scale from the checkpoint, to the same fp16 surfaces."""
    from anetrain.formats import checkpoint

    _train("--steps", 2, "--out", tmp_path / "base")
    base = checkpoint.load(checkpoint.resolve(tmp_path / "base")).params
    lora = ["--init", tmp_path / "base", "--lora-rank", 4, "--lora-targets", "q,v,down",
            "--lora-layers", 1, "--lr-decay-steps", 3, "--backend", backend]  # fmt: skip
    _train(*lora, "--steps", 3, "--out", tmp_path / "once")
    _train(*lora, "--steps", 2, "--out", tmp_path / "twice")
    _train("--resume", tmp_path / "twice", "--steps", 3, "--lora-rank", 4,
           "--lora-targets", "q,v,down", "--lora-layers", 1, "--backend", backend)  # fmt: skip
    once, twice = (checkpoint.load(checkpoint.resolve(tmp_path / d)) for d in ("once", "twice"))
    assert once.state.lora == LoraConfig(4, targets=("q", "v", "down"), layers=1)
    assert once.lora is not None and twice.lora is not None and once.m is not None
    assert len(once.m.flat) == len(once.lora.flat)  # moments of the adapters only
    assert once.lora.tensors["layers.1.wq.lora_B"].any()  # the adapters trained
    for a, b in ((once.lora, twice.lora), (once.m, twice.m), (once.v, twice.v)):
        assert np.array_equal(a.flat, b.flat)
    assert np.array_equal(once.params.flat, base.flat)  # frozen: bit-identical to --init
    assert np.array_equal(twice.params.flat, base.flat)
    losses = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("once", "twice")]
    key = [[line.split('"ms"')[0] for line in lines] for lines in losses]
    assert key[0] == key[1]


def test_lora_flags_on_resume_must_match_and_need_a_lora_run(tmp_path, capsys):
    from anetrain.train import main

    _train("--steps", 1, "--out", tmp_path / "full", "--steps", 2, "--ckpt-every", 1)
    argv = ["--backend", "cpu", "--quiet", "--steps", 3]
    assert main([*map(str, argv), "--resume", str(tmp_path / "full"), "--lora-rank", "2"]) == 2
    assert "cannot be resumed with LoRA" in capsys.readouterr().err
    _train("--init", tmp_path / "full", "--lora-rank", 2, "--steps", 1, "--out", tmp_path / "l")
    assert main([*map(str, argv), "--resume", str(tmp_path / "l"), "--lora-rank", "3"]) == 2
    assert "not the --lora-* flags'" in capsys.readouterr().err


def test_every_reader_of_a_lora_run_gets_the_merged_model(tmp_path):
    """sample, export and --init read a LoRA run as its effective model, W + scale * B A, never
    the bare frozen weights (which would silently drop the training)."""
    from anetrain.export import main as export_main
    from anetrain.formats import checkpoint
    from anetrain.formats.llama2c import read_llama2c
    from anetrain.formats.models import load_model

    _train("--steps", 2, "--out", tmp_path / "base")
    _train("--init", tmp_path / "base", "--lora-rank", 4, "--steps", 3, "--out", tmp_path / "l")
    ck = checkpoint.load(checkpoint.resolve(tmp_path / "l"))
    want = ck.params.copy()
    s = np.float32(ck.state.lora.scale)
    for name, a, b in ck.lora.pairs():
        want.tensors[name][...] = ck.params.tensors[name] + s * (b @ a)
    kind, got = load_model(tmp_path / "l")
    assert got.lora is None and got.state.lora is None
    np.testing.assert_allclose(got.params.flat, want.flat, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(got.params.tensors["layers.0.wq"], ck.params.tensors["layers.0.wq"])
    assert export_main([str(tmp_path / "l"), "--format", "llama2c", "-o",
                        str(tmp_path / "m.bin")]) == 0  # fmt: skip
    _, exported = read_llama2c(tmp_path / "m.bin")
    np.testing.assert_array_equal(exported.flat, got.params.flat)


def _lora_rows(out, capsys):
    import json

    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], capsys.readouterr().out


def test_lora_on_the_mil_backends_tracks_cpu_without_recompiling(tmp_path, capsys, monkeypatch):
    """sim and ane (the GNUstep mock running the simulator): the fp16 kernels read W + s·B·A,
    re-packed into the weight surfaces after every update with the same 10 compiled kernels;
    the losses track cpu's within fp16 tolerance, the frozen weights stay bit-identical."""
    from conftest import MOCK_SO, mock_framework

    from anetrain.formats import checkpoint

    _train("--steps", 2, "--out", tmp_path / "base")
    base = checkpoint.load(checkpoint.resolve(tmp_path / "base")).params
    flags = ["--init", tmp_path / "base", "--lora-rank", 4, "--lora-targets", "q,v,o,down",
             "--steps", 6, "--lr", "3e-3", "--seed", 5]  # fmt: skip
    rows = {}
    backends = ["cpu", "sim"]
    ane = None
    if MOCK_SO.exists():
        import anetrain.backends.ane as ane

        if ane.built():
            monkeypatch.setenv(ane.FRAMEWORK_ENV, str(MOCK_SO))
            mock = mock_framework()
            mock.reset()
            mock.use_simulator()
            backends.append("ane")
    for b in backends:
        from anetrain.train import main

        capsys.readouterr()
        assert main(["--threads", "1", *map(str, flags), "--backend", b, "--out",
                     str(tmp_path / b)]) == 0  # fmt: skip
        rows[b], report = _lora_rows(tmp_path / b, capsys)
        if b != "cpu":
            assert "compiles: 10 kernels" in report  # nothing recompiled after an update
        ck = checkpoint.load(checkpoint.resolve(tmp_path / b))
        assert np.array_equal(ck.params.flat, base.flat)  # frozen: bit-identical
        assert ck.lora.tensors["layers.0.wq.lora_B"].any()
    cpu, sim = [r["loss"] for r in rows["cpu"]], [r["loss"] for r in rows["sim"]]
    assert len(cpu) == len(sim) == 6
    np.testing.assert_allclose(sim, cpu, rtol=1e-2)
    if "ane" in rows:
        assert [r["loss"] for r in rows["ane"]] == sim  # the mock evaluates with the simulator
        assert mock.loaded_models() == 0 and mock.live_surfaces() == 0


@pytest.mark.parametrize("targets", [("q", "v"), ALL])
def test_dropout_matches_torch_with_the_same_masks(rng, targets):
    """--lora-dropout on cpu: the loss, dA, dB and (through the base) every gradient path equal
    torch autograd of y = W x + s B A drop(x) with the masks our LoraDropout drew."""
    pytest.importorskip("torch")
    from anetrain.lora import LoraDropout

    lc = LoraConfig(rank=4, alpha=6.0, dropout=0.3, targets=targets)
    cfg, base, lora, x, y = _setup(rng, lc, n_kv_heads=2)
    work = base.copy()
    stage(base.tensors, lora, work)
    drop = LoraDropout(lora, seed=3)
    kern = CpuKernels(cfg, work)
    kern.hook = drop
    dlora = lora.zeros_like()
    drop.begin(0, 0, 0)
    loss = micro_step(work, LoraGrads(lora, dlora, drop), kern, x, y, accumulate=False)
    masks = dict(drop.masks)
    drop.end()
    assert len(masks) == len(lora.pairs())
    kept = np.mean([m.mean() for m in masks.values()])
    assert 0.6 < kept < 0.8  # p = 0.3
    tloss, tg = _torch_grads(base, lora, x, y, masks)
    assert loss == pytest.approx(tloss, rel=1e-5)
    for name, (ta, tb) in tg.items():
        for got, ref in ((dlora.tensors[f"{name}.lora_A"], ta), (dlora.tensors[f"{name}.lora_B"],
                                                                  tb)):  # fmt: skip
            err = np.abs(got - ref).max() / (np.abs(ref).max() + 1e-12)
            assert err < 1e-4, f"{name}: relative error {err:.2e}"
    # outside a training micro-step (evaluation) nothing is dropped
    from anetrain.model import loss_only

    assert loss_only(work, kern, x, y) == pytest.approx(_torch_grads(base, lora, x, y)[0],
                                                        rel=1e-5)  # fmt: skip


def test_dropout_is_refused_on_the_mil_backends_and_resumes_bit_identically(tmp_path, capsys):
    from anetrain.formats import checkpoint
    from anetrain.train import main

    _train("--steps", 2, "--out", tmp_path / "base")
    flags = ["--init", tmp_path / "base", "--lora-rank", 4, "--lora-dropout", 0.2,
             "--lr-decay-steps", 4]  # fmt: skip
    assert main([*map(str, flags), "--backend", "sim", "--steps", "1", "--out",
                 str(tmp_path / "s")]) == 2  # fmt: skip
    assert "--lora-dropout 0.2: the sim kernels read W + s·B·A" in capsys.readouterr().err
    _train(*flags, "--steps", 4, "--out", tmp_path / "once", "--seed", 3)
    _train(*flags, "--steps", 2, "--out", tmp_path / "twice", "--seed", 3)
    _train("--resume", tmp_path / "twice", "--steps", 4)
    once, twice = (checkpoint.load(checkpoint.resolve(tmp_path / d)) for d in ("once", "twice"))
    assert once.state.lora.dropout == 0.2
    assert np.array_equal(once.lora.flat, twice.lora.flat)


def test_the_backward_stops_at_the_lowest_adapted_layer(rng):
    """Nothing below the lowest adapted layer trains (and never the embedding): the backward runs
    no kernel below it, and not the lowest layer's input gradient (q_bwd, kv_bwd)."""
    lc = LoraConfig(rank=4, targets=("q", "v"), layers=1)
    cfg, base, lora, x, y = _setup(rng, lc)
    calls: list[tuple[str, int]] = []

    class Counting(CpuKernels):
        def ffn_bwd_w2t(self, layer, dffn):
            calls.append(("ffn", layer))
            return super().ffn_bwd_w2t(layer, dffn)

        def q_bwd(self, layer, dq):
            calls.append(("q", layer))
            return super().q_bwd(layer, dq)

    micro_step(base, LoraGrads(lora, lora.zeros_like()), Counting(cfg, base), x, y, False)
    assert calls == [("ffn", cfg.n_layers - 1)]
    calls.clear()
    micro_step(base, base.zeros_like(), Counting(cfg, base), x, y, False)  # full: every layer
    assert sorted(calls) == sorted([(k, i) for k in ("ffn", "q") for i in range(cfg.n_layers)])
