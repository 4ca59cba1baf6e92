"""Tiny random Hugging Face models (transformers, built in memory, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anetrain.backends.cpu import CpuKernels
from anetrain.config import ModelConfig
from anetrain.model import loss_only
from anetrain.params import Params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in captured stderr

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # scales every wavelength above 16 positions
SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rms_norm_eps=1e-5)  # fmt: skip
S = 48  # the token window of the loss tests


def _randomize(model, seed: int):
    """Weights far from uniform logits (std 0.2) and norm weights != 1, so that a wrong RoPE
    permutation, scaling or theta moves the loss by far more than the tolerance (~1e-2)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def tiny_llama(seed: int = 0, **overrides):
    """LlamaForCausalLM: GQA (4 heads, 2 kv), untied, rope_theta 1e5, llama3 RoPE scaling."""
    kw = {**SMALL, "rope_theta": 1e5, "rope_scaling": dict(LLAMA3), "tie_word_embeddings": False,
          **overrides}  # fmt: skip
    cfg = transformers.LlamaConfig(**kw)
    return _randomize(transformers.LlamaForCausalLM(cfg), seed)


def tiny_qwen3(seed: int = 1, **overrides):
    """Qwen3ForCausalLM: q/k norms, head_dim 24 (4 * 24 != 64), GQA, tied embeddings."""
    kw = {**SMALL, "head_dim": 24, "tie_word_embeddings": True, **overrides}
    return _randomize(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**kw)), seed)


def tokens(vocab: int, n: int = S + 1, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def hf_loss(model, tok: np.ndarray) -> float:
    """transformers' own loss: labels = input_ids, shifted inside (positions 0..S-1 predict
    tokens 1..S, exactly what our loss on tok[:-1] -> tok[1:] computes)."""
    t = torch.from_numpy(tok.astype(np.int64))[None]
    with torch.no_grad():
        return float(model(input_ids=t, labels=t).loss)


def our_loss(cfg: ModelConfig, params: Params, tok: np.ndarray) -> float:
    """anetrain's cpu loss on one window (the model's seq_len lowered to the window)."""
    c = cfg.replace(seq_len=len(tok) - 1)
    p = Params(c, params.flat)
    return loss_only(p, CpuKernels(c, p), tok[:-1], tok[1:])


def state(model) -> dict[str, np.ndarray]:
    """The model's weights as fp32 numpy arrays by Hugging Face name (tied lm_head left out)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().float().numpy() for k, v in sd.items()}


def word_tokenizer(d: Path, vocab: int = 96) -> Path:
    """A real tokenizer.json (word level, built in memory) with its tokenizer_config.json."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    d.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0"}))  # fmt: skip
    return d
