"""Hugging Face model directories: config mapping, loading (fp32, bf16, sharded), losses and
gradients against transformers, every refusal with its exact message, Hub ids from the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hf_util import (
    LLAMA3,
    hf_loss,
    our_loss,
    state,
    tiny_llama,
    tiny_qwen3,
    tokens,
    torch,
    transformers,
)

from anetrain.backends.cpu import CpuKernels
from anetrain.config import ModelConfig, RopeScaling
from anetrain.errors import CheckpointError
from anetrain.formats import hf
from anetrain.formats.hf import HfError, read_config, read_hf, tensor_map, to_interleaved
from anetrain.formats.models import HF, load_model, model_file, model_kind
from anetrain.formats.safetensors import to_bf16
from anetrain.model import micro_step
from anetrain.params import Params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny Llama and its directories: fp32, bf16, and fp32 sharded in small files."""
    base = tmp_path_factory.mktemp("llama")
    model = tiny_llama()
    model.save_pretrained(base / "fp32")
    model.save_pretrained(base / "sharded", max_shard_size="40KB")
    tiny_llama().to(torch.bfloat16).save_pretrained(base / "bf16")
    return model, base


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    base = tmp_path_factory.mktemp("qwen3")
    model = tiny_qwen3()
    model.save_pretrained(base / "fp32")
    return model, base


def _ours_from_hf(name: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """A Hugging Face tensor in our row order (the q/k rows and q/k norms permuted)."""
    heads = {hf_name: h for hf_name, _, h in tensor_map(cfg)}[name]
    return np.ascontiguousarray(to_interleaved(w, heads)) if heads else w


# ----------------------------------------------------------------------------
# loading


def test_llama_config_maps_every_field(llama):
    _, base = llama
    assert read_config(base / "fp32") == ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=96, seq_len=64,
        norm_eps=1e-5, rope_theta=1e5, shared_classifier=False, head_size=0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
    )  # fmt: skip


def test_legacy_rope_fields_read_as_transformers_reads_them(llama, tmp_path):
    """transformers 4 configs: top-level rope_theta and rope_scaling (which transformers 5 reads
    before rope_parameters, even when both are present)."""
    _, base = llama
    d = json.loads((base / "fp32" / "config.json").read_text())
    d.pop("rope_parameters")
    d.update(rope_theta=5e5, rope_scaling={**LLAMA3, "factor": 32.0})
    legacy = hf.config_from_hf(d, tmp_path)
    assert legacy.rope_theta == 5e5 and legacy.rope_scaling.factor == 32.0
    both = hf.config_from_hf({**d, "rope_parameters": {"rope_type": "default"}}, tmp_path)
    assert both == legacy
    plain = hf.config_from_hf({**d, "rope_scaling": None, "rope_theta": 1e4}, tmp_path)
    assert plain.rope_scaling is None and plain.rope_theta == 1e4


@pytest.mark.parametrize("copy", ["fp32", "sharded"])
def test_llama_weights_land_under_our_names(llama, copy):
    model, base = llama
    kind, ck = load_model(base / copy)
    assert kind == HF and model_kind(base / copy) == HF and ck.state.tokenizer is None
    want = state(model)
    assert {n for n, _, _ in tensor_map(ck.model)} == set(want)
    for hf_name, ours, _ in tensor_map(ck.model):
        np.testing.assert_array_equal(ck.params.tensors[ours],
                                      _ours_from_hf(hf_name, want[hf_name], ck.model))  # fmt: skip
    assert len(list((base / "sharded").glob("model-*-of-*.safetensors"))) > 1


def test_bf16_loads_exactly_into_fp32_masters(llama):
    _, base = llama
    cfg, p32 = read_hf(base / "fp32")
    _, p16 = read_hf(base / "bf16")
    want = (to_bf16(p32.flat).astype(np.uint32) << 16).view(np.float32)  # torch rounds the same
    np.testing.assert_array_equal(p16.flat, want)


@pytest.mark.parametrize("copy", ["fp32", "bf16", "sharded"])
def test_llama_loss_matches_transformers(llama, copy):
    _, base = llama
    model = llama[0] if copy != "bf16" else \
        transformers.AutoModelForCausalLM.from_pretrained(base / "bf16", dtype=torch.float32)
    _, ck = load_model(base / copy)
    tok = tokens(ck.model.vocab_size)
    ours, theirs = our_loss(ck.model, ck.params, tok), hf_loss(model, tok)
    assert ours == pytest.approx(theirs, rel=1e-5)
    wrong = ck.model.replace(rope_scaling=None)  # the test can tell RoPE details apart
    assert abs(our_loss(wrong, Params(wrong, ck.params.flat), tok) - theirs) > 1e-3 * theirs


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_gradients_match_transformers_autograd(family, request):
    model, base = request.getfixturevalue(family)
    _, ck = load_model(base / "fp32")
    tok = tokens(ck.model.vocab_size)
    cfg = ck.model.replace(seq_len=len(tok) - 1)
    params = Params(cfg, ck.params.flat)
    grads = params.zeros_like()
    micro_step(params, grads, CpuKernels(cfg, params), tok[:-1], tok[1:], accumulate=False)
    model.zero_grad()
    t = torch.from_numpy(tok.astype(np.int64))[None]
    model(input_ids=t, labels=t).loss.backward()
    named = dict(model.named_parameters())
    for hf_name, ours, _ in tensor_map(cfg):
        want = _ours_from_hf(hf_name, named[hf_name].grad.numpy(), cfg)
        got = grads.tensors[ours]
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err <= 1e-4, f"{hf_name}: relative gradient error {err:.2e}"


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_sim_loss_within_fp16_tolerance(family, request):
    """The MIL kernels in the simulator (Qwen3: with its q/k norm in sdpaFwd) give the cpu loss
    of the imported model within fp16's tolerance."""
    from anetrain.backends import make_kernels
    from anetrain.model import loss_only

    _, base = request.getfixturevalue(family)
    _, ck = load_model(base / "fp32")
    tok = tokens(ck.model.vocab_size, n=33)
    cfg = ck.model.replace(seq_len=32)
    params = Params(cfg, ck.params.flat)
    kern = make_kernels("sim", cfg, params)
    try:
        sim = loss_only(params, kern, tok[:-1], tok[1:])
    finally:
        kern.close()
    assert sim == pytest.approx(our_loss(ck.model, ck.params, tok), rel=1e-3)


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_greedy_decoding_matches_transformers_generate(family, request):
    from anetrain.sample import Decoder

    model, base = request.getfixturevalue(family)
    _, ck = load_model(base / "fp32")
    prompt = tokens(ck.model.vocab_size, n=5, seed=9)
    t = torch.from_numpy(prompt.astype(np.int64))[None]
    with torch.no_grad():
        out = model.generate(t, max_new_tokens=32, do_sample=False, eos_token_id=None,
                             pad_token_id=0, attention_mask=torch.ones_like(t))  # fmt: skip
    want = out[0, len(prompt):].tolist()
    dec = Decoder(ck.model, ck.params)
    for pos, token in enumerate(prompt):
        logits = dec.forward(int(token), pos)
    got = []
    for pos in range(len(prompt), len(prompt) + 32):
        got.append(int(np.argmax(logits)))
        logits = dec.forward(got[-1], pos)
    assert got == want


def test_qwen3_config_names_and_shapes(qwen):
    model, base = qwen
    _, ck = load_model(base / "fp32")
    cfg = ck.model
    assert (cfg.head_dim, cfg.q_dim, cfg.dim, cfg.qk_norm, cfg.shared_classifier) == \
        (24, 96, 64, True, True)  # fmt: skip
    assert cfg.head_size == 24 and cfg.rope_scaling is None and cfg.norm_eps == 1e-5
    want = state(model)
    assert {n for n, _, _ in tensor_map(cfg)} == set(want)
    lp = ck.params.layers[1]
    assert lp.wq.shape == (96, 64) and lp.wk.shape == (48, 64) and lp.wo.shape == (64, 96)
    hd = 24  # interleaved pair i = Hugging Face elements i and i + 12
    q_norm = want["model.layers.1.self_attn.q_norm.weight"]
    np.testing.assert_array_equal(lp.q_norm[0::2], q_norm[: hd // 2])
    np.testing.assert_array_equal(lp.q_norm[1::2], q_norm[hd // 2 :])
    wk = want["model.layers.1.self_attn.k_proj.weight"]  # head 1, pair 3: rows 24+3, 24+15
    np.testing.assert_array_equal(lp.wk[hd + 6 : hd + 8], wk[[hd + 3, hd + 15]])


def test_qwen3_loss_matches_transformers(qwen):
    model, base = qwen
    _, ck = load_model(base / "fp32")
    tok = tokens(ck.model.vocab_size)
    assert our_loss(ck.model, ck.params, tok) == pytest.approx(hf_loss(model, tok), rel=1e-5)


# ----------------------------------------------------------------------------
# refusals: each with its exact one-line message


def _copy(base: Path, tmp_path: Path, **config) -> Path:
    d = tmp_path / "m"
    shutil.copytree(base / "fp32", d)
    c = json.loads((d / "config.json").read_text())
    c.update(config)
    (d / "config.json").write_text(json.dumps({k: v for k, v in c.items() if v != "DROP"}))
    return d


def _refusal(d: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


SUPPORTED = "supported: LlamaForCausalLM, MistralForCausalLM without sliding window, " \
    "Qwen3ForCausalLM"  # fmt: skip

CONFIG_REFUSALS = {
    "architecture": ({"architectures": ["GPT2LMHeadModel"]},
                     f'architectures ["GPT2LMHeadModel"] is not supported ({SUPPORTED})'),
    "model_type": ({"model_type": "gpt2"},
                   "model_type \"gpt2\" is not supported (supported: 'llama' for "
                   "LlamaForCausalLM)"),
    "attention_bias": ({"attention_bias": True},
                       "attention_bias true is not supported (supported: false)"),
    "mlp_bias": ({"mlp_bias": True}, "mlp_bias true is not supported (supported: false)"),
    "hidden_act": ({"hidden_act": "gelu"},
                   'hidden_act "gelu" is not supported (supported: silu)'),
    "mistral_window": ({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                        "sliding_window": 4096},
                       "sliding_window 4096 is not supported (supported: null)"),
    "qwen3_window": ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                      "use_sliding_window": True},
                     "use_sliding_window true is not supported (supported: false)"),
    "layer_types": ({"layer_types": ["full_attention", "sliding_attention"]},
                    'layer_types ["full_attention", "sliding_attention"] is not supported '
                    "(supported: full_attention for every layer)"),
    "quantized": ({"quantization_config": {"quant_method": "bitsandbytes"}},
                  'quantization_config {"quant_method": "bitsandbytes"} is not supported '
                  "(supported: none: unquantized F32, BF16 or F16 weights)"),
    "rope_type": ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
                  'rope_parameters type "yarn" is not supported (supported: default, llama3)'),
    "partial_rotary": ({"partial_rotary_factor": 0.5},
                       "partial_rotary_factor 0.5 is not supported (supported: 1.0)"),
    "size": ({"hidden_size": 0}, "hidden_size must be an integer in 1..1048576, got 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CONFIG_REFUSALS))
def test_config_refusals(llama, tmp_path, case):
    changes, message = CONFIG_REFUSALS[case]
    d = _copy(llama[1], tmp_path, **changes)
    assert _refusal(d) == f"{d / 'config.json'}: {message}"


def test_mistral_without_sliding_window_and_sliding_off_qwen3_load(llama, tmp_path):
    d = _copy(llama[1], tmp_path, architectures=["MistralForCausalLM"], model_type="mistral",
              sliding_window=None, mlp_bias="DROP")  # fmt: skip
    assert load_model(d)[1].model == read_config(llama[1] / "fp32")


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, path, metadata={"format": "pt"})


def test_tensor_refusals(llama, tmp_path):
    model, base = llama
    d = _copy(base, tmp_path)
    w = state(model)
    q = "model.layers.0.self_attn.q_proj"
    _save(d / "model.safetensors", {k: v for k, v in w.items() if k != f"{q}.weight"})
    assert _refusal(d) == f"{d}: missing tensor {q}.weight"
    _save(d / "model.safetensors", {k: v for k, v in w.items() if "mlp" not in k})
    assert _refusal(d) == f"{d}: missing tensor model.layers.0.mlp.gate_proj.weight and 5 more"
    _save(d / "model.safetensors", {**w, f"{q}.bias": np.zeros(64, np.float32)})
    assert _refusal(d) == f"{d}: unexpected tensor {q}.bias (not in the model config.json " \
        "describes)"  # fmt: skip
    _save(d / "model.safetensors", {**w, f"{q}.weight": np.zeros((64, 32), np.float32)})
    assert _refusal(d) == f"{d / 'model.safetensors'}: {q}.weight has shape [64, 32], " \
        "config.json says [64, 64]"  # fmt: skip
    _save(d / "model.safetensors", {**w, f"{q}.weight": w[f"{q}.weight"].astype(np.float64)})
    assert _refusal(d) == f"{d / 'model.safetensors'}: tensor {q}.weight has dtype F64 " \
        "(supported: F32, BF16, F16)"  # fmt: skip


def test_a_pickle_is_refused_with_a_hint_to_convert_it(llama, tmp_path):
    d = _copy(llama[1], tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"a pickle would run code")
    assert _refusal(d) == (
        f"{d}: pytorch_model.bin is a pickle, which anetrain never loads (it can run code); "
        "convert it to safetensors, e.g. with transformers: AutoModelForCausalLM."
        "from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)")
    (d / "pytorch_model.bin").unlink()
    assert _refusal(d) == f"{d}: no model.safetensors or model.safetensors.index.json " \
        "(anetrain reads safetensors weights)"  # fmt: skip


def test_shard_index_refusals(llama, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(llama[1] / "sharded", d)
    index = d / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    first = sorted(set(good["weight_map"].values()))[0]
    cases = [
        ({"../x.safetensors"}, "weight_map must map tensor names to .safetensors files in the "
                               "directory"),
        ({"model-00009-of-00009.safetensors"}, "names model-00009-of-00009.safetensors, which "
                                               "does not exist"),
    ]  # fmt: skip
    name = "model.embed_tokens.weight"
    for (shard,), message in cases:
        index.write_text(json.dumps({"weight_map": {**good["weight_map"], name: shard}}))
        assert _refusal(d) == f"{index}: {message}"
    shards = list(good["weight_map"].values())
    name = next(n for n, f in good["weight_map"].items() if shards.count(f) > 1)
    real = good["weight_map"][name]  # holds other tensors too: it is still opened
    wrong = next(f for f in sorted(set(good["weight_map"].values())) if f != real)
    index.write_text(json.dumps({"weight_map": {**good["weight_map"], name: wrong}}))
    assert _refusal(d) == f"{index}: does not map {name} to {real}, which holds it"
    index.write_text(json.dumps({"weight_map": {**good["weight_map"], "model.extra": first}}))
    assert _refusal(d) == f"{index}: maps model.extra to {first}, which does not hold it"


def test_headers_are_checked_before_anything_is_allocated(llama, tmp_path, monkeypatch):
    d = _copy(llama[1], tmp_path, intermediate_size=80)

    def allocate(*args):
        raise AssertionError("allocated before the headers were checked")

    monkeypatch.setattr(hf, "Params", allocate)
    assert "config.json says [80, 64]" in _refusal(d)


# ----------------------------------------------------------------------------
# model paths: directories, Hub ids in an offline cache


def test_a_directory_without_a_model_names_every_kind(tmp_path):
    with pytest.raises(CheckpointError) as e:
        model_file(tmp_path)
    assert str(e.value) == (f"{tmp_path}: a directory without checkpoint.bin, config.json or "
                            "adapter_config.json; a model is an anetrain checkpoint or run "
                            "directory, a llama2.c model.bin, a Hugging Face model directory or "
                            "Hub id, or a PEFT adapter directory")  # fmt: skip


def _hub_cache(cache: Path, repo: str, src: Path) -> Path:
    """huggingface_hub's cache layout: models--ORG--NAME/{refs/main, blobs/, snapshots/REV/}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for f in src.iterdir():
        blob = root / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "python"), **env}
    return subprocess.run([sys.executable, "-m", "anetrain", *args], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_hub_id_resolves_offline_through_the_cache(llama, tmp_path):
    pytest.importorskip("huggingface_hub")
    _hub_cache(tmp_path / "cache", "tiny-org/tiny-llama", llama[1] / "fp32")
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    r = _cli(tmp_path, "export", "tiny-org/tiny-llama", "--format", "hf", "-o", "exported", **env)
    assert r.returncode == 0, r.stderr
    cfg, params = read_hf(tmp_path / "exported")
    cfg0, params0 = read_hf(llama[1] / "fp32")
    assert cfg == cfg0 and np.array_equal(params.flat, params0.flat)
    r = _cli(tmp_path, "export", "tiny-org/missing", "--format", "hf", "-o", "exported2", **env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("anetrain.export: error: tiny-org/missing: not a local path, and "
                               "not available from the Hugging Face Hub (")  # fmt: skip


def test_a_hub_id_without_huggingface_hub_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative names are looked up here, not in the test's cwd
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(HfError) as e:
        model_file("tiny-org/tiny-llama")
    assert str(e.value) == ("tiny-org/tiny-llama: no such file or directory; to load it as a "
                            "Hugging Face Hub model, pip install 'anetrain[hf]' (from a source "
                            "checkout: pip install '.[hf]')")  # fmt: skip
    (tmp_path / "tiny-org").mkdir()  # an existing directory: a local path after all
    with pytest.raises(CheckpointError, match="no such model file"):
        model_file("tiny-org/tiny-llama")


def test_sample_cli_on_a_model_directory_prints_what_transformers_generates(tmp_path, capfd):
    """`sample --ckpt DIR` with the directory's own tokenizer.json: greedy text equal to
    transformers' generate decoded by the same tokenizer, stopping at the model's EOS."""
    pytest.importorskip("tokenizers")
    from test_hf_tokenizer import BYTE_LEVEL_CONFIG, byte_level

    from anetrain.sample import main as sample_main

    tk = byte_level()
    model = tiny_qwen3(seed=5, vocab_size=tk.get_vocab_size(), eos_token_id=0, bos_token_id=None)
    d = tmp_path / "qwen-tok"
    model.save_pretrained(d)
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({**BYTE_LEVEL_CONFIG, "bos_token": None}))
    prompt = "Hello world"
    ids = tk.encode(prompt).ids
    t = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(t, max_new_tokens=12, do_sample=False, eos_token_id=0,
                             pad_token_id=0, attention_mask=torch.ones_like(t))  # fmt: skip
    new = [i for i in out[0, len(ids):].tolist()]
    if 0 in new:
        new = new[: new.index(0)]  # our sampler stops at EOS and does not print it
    # a character the last token leaves unfinished is not printed (never half a character)
    want = tk.decode(ids + new, skip_special_tokens=True).rstrip("\ufffd")
    assert sample_main(["--ckpt", str(d), "--prompt", prompt, "--temperature", "0",
                        "--max-new-tokens", "12"]) == 0  # fmt: skip
    got = capfd.readouterr().out
    assert got.rstrip("\n") == want
