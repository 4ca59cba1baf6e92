"""PEFT adapter directories: a LoRA run's load in peft, fuse, --init ADAPTER_DIR, refusals."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hf_util import our_loss, tiny_llama, tiny_qwen3, tokens, torch, transformers, word_tokenizer

from anetrain.__main__ import main as anetrain_main
from anetrain.errors import CheckpointError
from anetrain.formats import checkpoint
from anetrain.formats.checkpoint import RunState
from anetrain.formats.models import load_model
from anetrain.formats.peft import CONFIG, WEIGHTS, PeftError, read_adapter, write_adapter
from anetrain.lora import LoraConfig, init_lora
from anetrain.train import main as train_main

peft = pytest.importorskip("peft")
ALL = "q,k,v,o,gate,up,down"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """{name: save_pretrained directory} of the tiny Llama (with a tokenizer) and Qwen3."""
    pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("bases")
    tiny_llama().save_pretrained(d / "llama")
    word_tokenizer(d / "llama")
    tiny_qwen3().save_pretrained(d / "qwen3")
    plain = tiny_llama(rope_scaling=None, rope_theta=1e4)  # what a llama2.c file can hold
    plain.save_pretrained(d / "plain")
    tokens(96, n=4096, seed=5).astype("<u2").tofile(d / "tokens.bin")
    return d


def _train(bases: Path, out: Path, *argv) -> None:
    args = ["--quiet", "--threads", "1", "--backend", "cpu", "--data", bases / "tokens.bin",
            "--seq", 16, "--lr", 1e-2, "--warmup", 0, "--out", out, *argv]  # fmt: skip
    assert train_main(list(map(str, args))) == 0


def _peft_model(base: Path, adapter: Path):
    """PeftModel.from_pretrained over transformers' base, failing on any warning of peft's
    (missing or unexpected adapter keys, unknown config fields)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(base), adapter)  # fmt: skip
    ours = [w for w in caught if not issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not ours, [str(w.message) for w in ours]
    return model.eval()


def _logits(model, tok: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(tok.astype(np.int64))[None]).logits[0].numpy()


def _close(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> None:
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err < rel, f"relative error {err:.2e}"


@pytest.mark.parametrize("name,targets,layers", [("llama", "q,v", 0), ("llama", ALL, 1),
                                                 ("qwen3", ALL, 0)])  # fmt: skip
def test_a_lora_run_loads_in_peft_and_fuses_to_the_same_logits(bases, tmp_path, name, targets,
                                                               layers):  # fmt: skip
    run = tmp_path / "run"
    _train(bases, run, "--init", bases / name, "--lora-rank", 4, "--lora-targets", targets,
           "--lora-layers", layers, "--steps", 3)  # fmt: skip
    ck = checkpoint.load(run / "checkpoint.bin")
    assert ck.state.init == str((bases / name).resolve()) and ck.lora is not None
    assert all(b.any() for _, _, b in ck.lora.pairs())  # trained: B != 0
    config = json.loads((run / CONFIG).read_text())
    assert config["base_model_name_or_path"] == str((bases / name).resolve())
    assert config["layers_to_transform"] == ([1] if layers else None)
    assert sorted(config["target_modules"]) == sorted(
        f"{t}_proj" for t in targets.split(","))  # fmt: skip
    back = read_adapter(run, ck.model)  # ours -> PEFT's files -> ours: bit-identical
    assert back.lc == ck.state.lora and np.array_equal(back.lora.flat, ck.lora.flat)

    model = _peft_model(bases / name, run)
    from peft.utils import get_peft_model_state_dict
    from safetensors.numpy import load_file

    assert set(get_peft_model_state_dict(model)) == set(load_file(run / WEIGHTS))
    tok = tokens(96, n=16)
    want = _logits(model, tok)
    assert anetrain_main(["fuse", str(run), "--format", "hf", "-o", str(tmp_path / "hf")]) == 0
    _close(_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), tok), want)
    base_logits = _logits(transformers.AutoModelForCausalLM.from_pretrained(bases / name), tok)
    assert np.abs(base_logits - want).max() > 1e-3  # the adapters change the model
    if name == "llama":  # the base's tokenizer files come along
        assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == \
            (bases / name / "tokenizer.json").read_bytes()  # fmt: skip


def _peft_saved(base: Path, out: Path, seed: int, dtype=None, **config) -> Path:
    """An adapter directory written by peft itself (get_peft_model + save_pretrained), with
    random nonzero B, over the base saved in `base`."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    pm = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", **config))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn_like(p))
    if dtype is not None:
        pm = pm.to(dtype)
    pm.save_pretrained(out)
    return out


@pytest.mark.parametrize("name,config", [
    ("llama", dict(r=4, lora_alpha=16, target_modules="all-linear")),
    ("qwen3", dict(r=2, lora_alpha=3, target_modules=["q_proj", "k_proj", "o_proj", "up_proj"],
                   layers_to_transform=[1], lora_dropout=0.05)),
])  # fmt: skip
def test_peft_saved_adapters_read_as_the_same_model(bases, tmp_path, name, config):
    ad = _peft_saved(bases / name, tmp_path / "ad", 7, **config)
    assert json.loads((ad / CONFIG).read_text())["base_model_name_or_path"] == str(bases / name)
    tok = tokens(96, n=17)
    want = _logits(_peft_model(bases / name, ad), tok[:-1])
    kind, ck = load_model(ad)  # the merged model, over the base adapter_config.json names
    assert kind == "PEFT adapter" and ck.state.lora is None
    assert anetrain_main(["fuse", str(ad), "--format", "hf", "-o", str(tmp_path / "hf")]) == 0
    _close(_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), tok[:-1]),
           want)  # fmt: skip
    logp = torch.log_softmax(torch.from_numpy(want), -1).numpy()
    peft_loss = -float(np.mean(logp[np.arange(16), tok[1:]]))
    assert our_loss(ck.model, ck.params, tok) == pytest.approx(peft_loss, rel=1e-5)
    # and written back by us: the same files' tensors, bit for bit
    back = read_adapter(ad, ck.model)
    write_adapter(tmp_path, back.lora, back.base)
    from safetensors.numpy import load_file

    theirs, ours = load_file(ad / WEIGHTS), load_file(tmp_path / WEIGHTS)
    assert set(ours) == set(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)


def test_bf16_adapters_widen_exactly(bases, tmp_path):
    ad = _peft_saved(bases / "llama", tmp_path / "ad", 3, torch.bfloat16, r=2,
                     target_modules=["k_proj"])  # fmt: skip
    from safetensors.torch import load_file

    theirs = load_file(ad / WEIGHTS)
    lora = read_adapter(ad, load_model(bases / "llama")[1].model).lora
    write_adapter(tmp_path, lora, None)
    ours = load_file(tmp_path / WEIGHTS)
    assert all(torch.equal(ours[k], theirs[k].float()) for k in theirs)


def test_init_adapter_dir_continues_its_adapters(bases, tmp_path, capsys):
    ad = _peft_saved(bases / "llama", tmp_path / "ad", 5, r=4, lora_alpha=8,
                     target_modules=["q_proj", "v_proj", "down_proj"],
                     lora_dropout=0.1)  # fmt: skip
    merged = load_model(ad)[1]
    # --lora-dropout 0 (else the adapter's 0.1): the first loss is the merged model's
    _train(bases, tmp_path / "run", "--init", ad, "--steps", 2, "--seed", 11, "--lora-dropout", 0)
    ck = checkpoint.load(tmp_path / "run" / "checkpoint.bin")
    assert ck.state.lora == LoraConfig(4, 8.0, targets=("q", "v", "down"))
    assert ck.state.init == str((bases / "llama").resolve())
    base = load_model(bases / "llama")[1].params
    assert np.array_equal(ck.params.flat, base.flat)  # the base, not the merged model, is frozen
    from anetrain.formats.data import WindowSampler, open_dataset

    x, y = WindowSampler(open_dataset(str(bases / "tokens.bin"), 96).train.tokens, 16, 12).next()
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(our_loss(merged.model, merged.params,
                                                   np.append(x, y[-1])), rel=1e-5)  # fmt: skip
    # restating the adapter's config is fine; contradicting it is one line
    _train(bases, tmp_path / "again", "--init", ad, "--steps", 1, "--lora-rank", 4,
           "--lora-targets", "down,q,v", "--lora-layers", 2, "--lora-alpha", 8)  # fmt: skip
    again = checkpoint.load(tmp_path / "again" / "checkpoint.bin").state.lora
    assert again == LoraConfig(4, 8.0, 0.1, ("q", "v", "down"))  # the adapter's own dropout
    for flags, message in ((["--lora-rank", "8"], "--lora-rank 8 contradicts the adapter of "
                            f"--init {ad} (rank 4)"),
                           (["--lora-layers", "1"], "--lora-layers 1 contradicts the adapter of "
                            f"--init {ad} (layers all)")):  # fmt: skip
        args = ["--quiet", "--backend", "cpu", "--init", str(ad), *flags, "--data",
                str(bases / "tokens.bin"), "--out", str(tmp_path / "x")]  # fmt: skip
        assert train_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(message + "; drop the flag or make it agree")


def test_a_resumed_run_writes_the_same_base_and_old_headers_load(bases, tmp_path):
    run = tmp_path / "run"
    _train(bases, run, "--init", bases / "llama", "--lora-rank", 2, "--steps", 1)
    first = json.loads((run / CONFIG).read_text())
    assert train_main(["--quiet", "--threads", "1", "--resume", str(run), "--steps", "2"]) == 0
    assert json.loads((run / CONFIG).read_text()) == first
    ck = checkpoint.load(run / "checkpoint.bin")
    assert ck.state.step == 2 and ck.state.init == first["base_model_name_or_path"]
    assert np.array_equal(read_adapter(run, ck.model).lora.flat, ck.lora.flat)
    header = ck.state.to_dict()
    assert RunState.from_dict({k: v for k, v in header.items() if k != "init"}, "x").init is None
    with pytest.raises(CheckpointError, match="init must be a string"):
        RunState.from_dict({**header, "init": 3}, "x")


def test_fuse_to_llama2c_and_with_an_explicit_base(bases, tmp_path, capsys):
    from anetrain.formats.llama2c import read_llama2c

    cfg = load_model(bases / "plain")[1].model
    lora = init_lora(cfg, LoraConfig(2, targets=("q", "o")), np.random.default_rng(0))
    for _, _, b in lora.pairs():
        b[...] = 0.1
    (tmp_path / "ad").mkdir()
    write_adapter(tmp_path / "ad", lora, None)  # no base named: --base is needed
    out = str(tmp_path / "m.bin")
    assert anetrain_main(["fuse", str(tmp_path / "ad"), "--format", "llama2c", "-o", out]) == 2
    assert capsys.readouterr().err.strip() == (
        f"anetrain.fuse: error: {tmp_path / 'ad' / CONFIG}: names no base_model_name_or_path; "
        "pass the base model with --base MODEL")  # fmt: skip
    assert anetrain_main(["fuse", str(tmp_path / "ad"), "--base", str(bases / "plain"),
                          "--format", "llama2c", "-o", out]) == 0  # fmt: skip
    merged = load_model(tmp_path / "ad", str(bases / "plain"))[1]
    assert np.array_equal(read_llama2c(out)[1].flat, merged.params.flat)
    assert anetrain_main(["fuse", str(bases / "plain"), "--format", "hf", "-o",
                          str(tmp_path / "x")]) == 2  # fmt: skip
    assert "holds no LoRA adapters to fuse" in capsys.readouterr().err


def _adapter(bases: Path, d: Path) -> Path:
    cfg = load_model(bases / "llama")[1].model
    lora = init_lora(cfg, LoraConfig(2, targets=("q", "v"), layers=1), np.random.default_rng(1))
    d.mkdir()
    write_adapter(d, lora, str(bases / "llama"))
    return d


REFUSALS = [
    ({"peft_type": "IA3"}, 'peft_type "IA3" is not supported'),
    ({"use_dora": True}, "use_dora true is not supported"),
    ({"use_rslora": True}, "use_rslora true is not supported"),
    ({"bias": "all"}, 'bias "all" is not supported'),
    ({"modules_to_save": ["lm_head"]}, 'modules_to_save ["lm_head"] is not supported'),
    ({"target_modules": ["q_proj", "lm_head"]}, "unknown target module 'lm_head'"),
    ({"target_modules": ".*q_proj"}, "is a regular expression"),
    ({"layers_to_transform": [0]}, "is not the last N of the base model's 2 layers"),
    ({"layers_pattern": "h"}, 'layers_pattern "h" is not supported'),
    ({"r": 3}, "has shape [2, 64], the base model and r 3 need [3, 64]"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj"]}, "missing tensor base_model.model.model."
     "layers.1.self_attn.k_proj.lora_A.weight"),
    ({"target_modules": ["q_proj"]}, "unexpected tensor base_model.model.model.layers.1."
     "self_attn.v_proj.lora_A.weight"),
    ({"base_model_name_or_path": "absent/dir.bin"}, "base_model_name_or_path: absent/dir.bin: "
     "no such model file; pass the base model with --base MODEL"),
]  # fmt: skip


@pytest.mark.parametrize("change,message", REFUSALS)
def test_adapter_refusals_are_one_line_naming_the_file(bases, tmp_path, change, message):
    d = _adapter(bases, tmp_path / "ad")
    config = json.loads((d / CONFIG).read_text())
    (d / CONFIG).write_text(json.dumps({**config, **change}))
    with pytest.raises(PeftError) as e:
        load_model(d)
    text = str(e.value)
    assert "\n" not in text and message in text and str(d) in text


def test_missing_weights_and_a_base_flag_on_another_model_are_refused(bases, tmp_path):
    d = _adapter(bases, tmp_path / "ad")
    (d / WEIGHTS).unlink()
    with pytest.raises(PeftError, match="no adapter_model.safetensors"):
        load_model(d)
    with pytest.raises(CheckpointError, match="only a PEFT adapter directory takes a base"):
        load_model(bases / "llama", str(bases / "qwen3"))
    shutil.rmtree(d)
    assert train_main(["--quiet", "--base", str(bases / "llama")]) == 2


def test_an_adapter_write_error_stops_the_run_like_a_checkpoint_write_error(bases, tmp_path,
                                                                            capsys):  # fmt: skip
    run = tmp_path / "run"
    (run / WEIGHTS).mkdir(parents=True)  # the rename over it fails
    args = ["--quiet", "--threads", "1", "--backend", "cpu", "--data", str(bases / "tokens.bin"),
            "--seq", "16", "--init", str(bases / "llama"), "--lora-rank", "2", "--steps", "1",
            "--out", str(run)]  # fmt: skip
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anetrain.train: error: {run / WEIGHTS}: cannot write adapter weights")
    assert not (run / CONFIG).exists()
    ad = _adapter(bases, tmp_path / "ad")
    assert train_main(["--quiet", "--resume", str(ad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"anetrain.train: error: {ad}: this is a PEFT adapter, not a training checkpoint: use "
        f"--init {ad} to continue training it")  # fmt: skip


def test_eval_reads_a_peft_adapter_directory_as_peft_does(bases, tmp_path, capsys):
    """python -m anetrain.eval ADAPTER_DIR: every window of the tokens, through the merged model;
    the same mean loss as the PeftModel's over the same windows."""
    from anetrain.eval import main as eval_main

    ad = _peft_saved(bases / "llama", tmp_path / "ad", 7, r=4, lora_alpha=8,
                     target_modules=["q_proj", "v_proj"])  # fmt: skip
    capsys.readouterr()
    assert eval_main([str(ad), "--data", str(bases / "tokens.bin"), "--split", "train", "--seq",
                      "16", "--batches", "8", "--json"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    toks = np.fromfile(bases / "tokens.bin", np.uint16).astype(np.int64)
    model = _peft_model(bases / "llama", ad)
    losses = []
    for i in range(8):  # consecutive windows of 17 tokens: inputs i*16 .. i*16+15
        w = torch.from_numpy(toks[i * 16 : i * 16 + 17])[None]
        with torch.no_grad():
            losses.append(float(model(input_ids=w, labels=w).loss))
    assert got["tokens"] == 8 * 16
    assert got["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
