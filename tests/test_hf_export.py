"""Export as a Hugging Face directory (transformers loads it), the run's tokenizer files, output
refusals, llama2.c refusals, and training from a Hugging Face model (--init DIR)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hf_util import hf_loss, state, tiny_llama, tiny_qwen3, tokens, torch, transformers
from hf_util import word_tokenizer as _tokenizer_dir

from anetrain.backends.cpu import CpuKernels
from anetrain.export import main as export_main
from anetrain.formats import checkpoint
from anetrain.formats.checkpoint import Checkpoint, RunState
from anetrain.formats.data import WindowSampler, open_dataset
from anetrain.formats.hf import read_hf
from anetrain.formats.llama2c import read_llama2c
from anetrain.formats.models import load_model
from anetrain.model import micro_step
from anetrain.optim import AdamW
from anetrain.params import Params
from anetrain.train import main as train_main

TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (transformers model, its save_pretrained directory)} for the tiny Llama and Qwen3."""
    base = tmp_path_factory.mktemp("hf")
    out = {}
    for name, model in (("llama", tiny_llama()), ("qwen3", tiny_qwen3())):
        model.save_pretrained(base / name)
        out[name] = (model, base / name)
    return out


def _export(src: Path, out: Path, *extra: str) -> None:
    assert export_main([str(src), "--format", "hf", "-o", str(out), *extra]) == 0


def _tensors(d: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(d / "model.safetensors")


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_import_export_import_is_exact(models, tmp_path, name):
    _, src = models[name]
    _export(src, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["config.json", "model.safetensors"]  # fmt: skip
    theirs, ours = _tensors(src), _tensors(tmp_path / "out")
    assert set(ours) == set(theirs)
    for n in theirs:  # the q/k rows went back to rotate-half order exactly
        assert ours[n].dtype == np.float32 and np.array_equal(ours[n], theirs[n]), n
    (cfg0, p0), (cfg1, p1) = read_hf(src), read_hf(tmp_path / "out")
    assert cfg1 == cfg0 and np.array_equal(p1.flat.view(np.uint32), p0.flat.view(np.uint32))


@pytest.mark.parametrize("name,dtype", [("llama", "fp32"), ("llama", "bf16"), ("llama", "fp16"),
                                        ("qwen3", "fp32"), ("qwen3", "bf16")])  # fmt: skip
def test_transformers_loads_the_export(models, tmp_path, name, dtype):
    model, src = models[name]
    _export(src, tmp_path / "out", "--dtype", dtype)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(loaded) is type(model)
    assert next(loaded.parameters()).dtype == TORCH[dtype]  # config.json names the dtype
    want = {k: v.to(TORCH[dtype]) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    if dtype == "fp32":  # the same weights and config: the same logits
        t = torch.from_numpy(tokens(96, n=40).astype(np.int64))[None]
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=t).logits, model(input_ids=t).logits)


def test_one_adamw_step_then_export_equals_a_torch_adamw_step(models, tmp_path):
    model0, src = models["llama"]
    tok = tokens(96)
    hp = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    _, ck = load_model(src)
    cfg = ck.model.replace(seq_len=len(tok) - 1)
    params = Params(cfg, ck.params.flat)
    grads = params.zeros_like()
    micro_step(params, grads, CpuKernels(cfg, params), tok[:-1], tok[1:], accumulate=False)
    AdamW(params, *hp["betas"], hp["eps"], hp["weight_decay"]).step(grads, hp["lr"])
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "checkpoint.bin", Checkpoint(RunState(cfg), params))
    _export(run, tmp_path / "out")

    model = tiny_llama()  # the same weights as model0
    assert torch.equal(model.lm_head.weight, model0.lm_head.weight)
    decay = [p for p in model.parameters() if p.ndim >= 2]  # ours: every matrix, embedding too
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], **hp)
    t = torch.from_numpy(tok.astype(np.int64))[None]
    model(input_ids=t, labels=t).loss.backward()
    opt.step()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    got, want = state(loaded), state(model)
    g = {k: p.grad.numpy() for k, p in model.named_parameters()}
    for k in want:
        # The first AdamW update is lr * g / (|g| + eps): equal to fp32 rounding wherever the
        # gradients agree relatively. A gradient element near eps (1e-8, from cancellation) is
        # equal in absolute terms only (~1e-7 of the largest), and its update may differ by a
        # few percent of lr: those elements are only held to that.
        sure = np.abs(g[k]) >= 1e-4 * np.abs(g[k]).max()
        np.testing.assert_allclose(got[k][sure], want[k][sure], rtol=2e-6, atol=1e-7, err_msg=k)
        assert np.abs(got[k] - want[k]).max() <= 0.05 * hp["lr"], k


def test_export_copies_the_runs_hugging_face_tokenizer(models, tmp_path):
    pytest.importorskip("tokenizers")
    _, src = models["llama"]
    model_dir = tmp_path / "model"
    shutil.copytree(src, model_dir)
    _tokenizer_dir(model_dir)
    _, ck = load_model(model_dir)  # a model directory records its own tokenizer
    assert ck.state.tokenizer == str(model_dir.absolute() / "tokenizer.json")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(bos_token_id=5, eos_token_id=[6, 7])
    (model_dir / "config.json").write_text(json.dumps(config))
    _export(model_dir, tmp_path / "out")
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
    for n in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / n).read_bytes() == (model_dir / n).read_bytes()
    written = json.loads((out / "config.json").read_text())
    assert (written["bos_token_id"], written["eos_token_id"]) == (5, [6, 7])
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("w3 w95")["input_ids"] == [3, 95]


def test_export_says_when_it_has_no_tokenizer_to_copy(models, tmp_path, capsys):
    _, src = models["llama"]
    _, ck = load_model(src)
    for recorded, note in ((None, "tokenizer: the model records none; no tokenizer files written"),
                           ("/data/tokenizer.bin", "tokenizer: /data/tokenizer.bin is not a "
                            "Hugging Face tokenizer.json; no tokenizer files written (copy a "
                            f"tokenizer.json into {tmp_path / 'out'} by hand)")):  # fmt: skip
        checkpoint.save(tmp_path / "ck.bin", Checkpoint(RunState(ck.model, tokenizer=recorded),
                                                        ck.params))  # fmt: skip
        _export(tmp_path / "ck.bin", tmp_path / "out", "--overwrite")
        assert capsys.readouterr().out.splitlines()[-1] == note


# ----------------------------------------------------------------------------
# output refusals


def _fails(args: list[str], capsys) -> str:
    assert export_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("anetrain.export: error: "), err
    return err[len("anetrain.export: error: "):-1]


def test_export_refuses_outputs_it_must_not_replace(models, tmp_path, capsys):
    _, src = models["llama"]
    hf = [str(src), "--format", "hf", "-o"]
    (tmp_path / "file").write_bytes(b"x")
    assert _fails([*hf, str(tmp_path / "file")], capsys) == \
        f"{tmp_path / 'file'}: is a file, not an output directory"  # fmt: skip
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert _fails([*hf, str(mine)], capsys) == \
        f"{mine}: already exists and is not empty (pass --overwrite to replace it)"  # fmt: skip
    assert _fails([*hf, str(mine), "--overwrite"], capsys) == \
        f"{mine}: not a model directory (no config.json); refusing to replace it"  # fmt: skip
    assert (mine / "notes.txt").read_text() == "keep"
    assert _fails([*hf, str(src), "--overwrite"], capsys) == \
        f"{src}: refusing to replace the directory of the input model"  # fmt: skip
    assert _fails([*hf, str(tmp_path / "o"), "--version", "1"], capsys) == \
        "--version is for --format llama2c; --format hf writes safetensors"  # fmt: skip
    assert _fails([str(src), "--format", "llama2c", "-o", str(tmp_path / "m.bin"), "--dtype",
                   "bf16"], capsys) == "--dtype bf16 is for --format hf; llama2.c files are fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]


def test_overwrite_replaces_a_previous_export_whole(models, tmp_path):
    out = tmp_path / "exported"
    _export(models["qwen3"][1], out)
    _export(models["llama"][1], out, "--overwrite", "--dtype", "bf16")
    assert read_hf(out)[0] == read_hf(models["llama"][1])[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no temporaries


def test_fp16_export_refuses_weights_out_of_range(models, tmp_path, capsys):
    _, ck = load_model(models["llama"][1])
    ck.params.embed[3, 5] = 7e4
    checkpoint.save(tmp_path / "ck.bin", ck)
    out = tmp_path / "out"
    assert _fails([str(tmp_path / "ck.bin"), "--format", "hf", "-o", str(out), "--dtype", "fp16"],
                  capsys) == f"{out}: a weight of magnitude 70000 does not fit fp16 (max " \
        "65504); use --dtype bf16 or fp32"  # fmt: skip
    assert not out.exists()


def test_llama2c_export_refuses_what_llama2c_cannot_express(models, tmp_path, capsys):
    out = str(tmp_path / "m.bin")
    assert _fails([str(models["qwen3"][1]), "--format", "llama2c", "-o", out], capsys) == \
        f"{out}: llama2.c needs n_heads * head_dim == dim, not 4 * 24 != 64; export it with " \
        "--format hf"  # fmt: skip
    q = tmp_path / "q"
    tiny_qwen3(head_dim=16).save_pretrained(q)
    assert _fails([str(q), "--format", "llama2c", "-o", out], capsys) == f"{out}: llama2.c " \
        "models have no q/k norms (qk_norm, Qwen3); export it with --format hf"  # fmt: skip
    assert _fails([str(models["llama"][1]), "--format", "llama2c", "-o", out], capsys) == \
        f"{out}: llama2.c models have no RoPE scaling (rope_scaling llama3); export it with " \
        "--format hf"  # fmt: skip
    plain = tmp_path / "plain"
    tiny_llama(rope_theta=1e4, rope_scaling=None).save_pretrained(plain)
    assert export_main([str(plain), "--format", "llama2c", "-o", out]) == 0
    cfg, params = read_llama2c(out)  # llama2.c files pair rows as we do: no permutation
    cfg0, params0 = read_hf(plain)
    assert cfg == cfg0.replace(norm_eps=1e-5) and np.array_equal(params.flat, params0.flat)


# ----------------------------------------------------------------------------
# training from a Hugging Face model


def test_train_init_from_a_hugging_face_directory(models, tmp_path, capsys):
    pytest.importorskip("tokenizers")
    model, src = models["llama"]
    shutil.copytree(src, tmp_path / "model")
    src = _tokenizer_dir(tmp_path / "model")
    data = tmp_path / "tokens.bin"
    tokens(96, n=4096, seed=5).astype("<u2").tofile(data)
    out = tmp_path / "run"
    args = ["--quiet", "--threads", "2", "--backend", "cpu", "--data", str(data), "--out",
            str(out), "--steps", "2", "--seq", "16", "--seed", "11"]  # fmt: skip
    assert train_main([*args, "--init", str(src)]) == 0
    ck = checkpoint.load(out / "checkpoint.bin")
    assert ck.model == read_hf(src)[0].replace(seq_len=16)
    assert ck.state.tokenizer == str(src / "tokenizer.json")  # raw tokens: the model's tokenizer
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    ids = open_dataset(str(data), 96).train.tokens
    x, y = WindowSampler(ids, 16, 11 + 1).next()  # the first batch
    assert first["loss"] == pytest.approx(hf_loss(model, np.append(x, y[-1])), rel=1e-5)
    _export(out, tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.config.max_position_embeddings == 16
    tok = "tokenizer.json"
    assert (tmp_path / "hf" / tok).read_bytes() == (src / tok).read_bytes()
    assert train_main([*args, "--resume", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"anetrain.train: error: {src}: this is a Hugging Face model, not a training "
                   f"checkpoint: use --init {src} to fine-tune it")  # fmt: skip
