"""python -m anetrain.sample: KV-cache text generation on the CPU with llama2.c run.c's rules."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from anetrain import native
from anetrain.cli import run_cli, silence
from anetrain.config import ModelConfig
from anetrain.errors import UserError
from anetrain.formats.models import load_model
from anetrain.formats.tokenizer import TextTokenizer, Tokenizer, read_tokenizer
from anetrain.model import head_rmsnorm_fwd
from anetrain.params import Params
from anetrain.rope import model_rope_tables

# Generation follows run.c's `generate` (design/llama2c.md §3): the prompt is encoded with BOS
# (plus the dummy-prefix " " when it is not empty); pos 0 runs the first prompt token; while
# pos < n_prompt - 1 the next token is forced from the prompt, afterwards it is sampled; the loop
# stops before one of the tokenizer's stop ids or at the step limit; every token is printed
# through the tokenizer's stream, so the prompt is echoed. A llama2.c tokenizer keeps run.c's
# rules exactly: BOS stops (EOS does not), and every next token prints as decode(token, next)
# through safe_printf's filter. A Hugging Face tokenizer puts BOS first as its model does, stops
# at the model's EOS ids and prints whole UTF-8 characters.


# ----------------------------------------------------------------------------
# model: one token at a time with a KV cache (fp32, the same math as run.c's forward)


class Decoder:
    """KV-cache inference state of one model (run.c's RunState, channel-first [C, 1] vectors)."""

    def __init__(self, cfg: ModelConfig, params: Params):
        self.cfg, self.params = cfg, params
        self.k_cache = self.v_cache = np.zeros((cfg.n_layers, cfg.n_kv_heads, 0, cfg.head_dim),
                                               dtype=np.float32)  # fmt: skip
        self.sqrt_hd = np.float32(math.sqrt(cfg.head_dim))  # run.c divides by sqrtf(head_size)

    def _reserve(self, pos: int) -> None:
        """Grow the caches (layer, kv head, pos, hd) to hold position `pos`: they double, up to
        seq_len, so a model with a long context (Llama 3.2: 131072) costs what a run uses."""
        have = self.k_cache.shape[2]
        if pos < have:
            return
        n = min(self.cfg.seq_len, max(2 * have, pos + 1, 256))
        for name in ("k_cache", "v_cache"):
            old = getattr(self, name)
            new = np.zeros((*old.shape[:2], n, old.shape[3]), dtype=np.float32)
            new[:, :, :have] = old
            setattr(self, name, new)

    def forward(self, token: int, pos: int) -> np.ndarray:
        """Logits [V] for `token` at position `pos` (positions 0..pos-1 must already be cached)."""
        cfg, p = self.cfg, self.params
        if not 0 <= pos < cfg.seq_len:
            raise UserError(f"position {pos} is outside the model's context of {cfg.seq_len}")
        H, KV, G, hd = cfg.n_heads, cfg.n_kv_heads, cfg.kv_group, cfg.head_dim
        T = pos + 1
        self._reserve(pos)
        cos, sin = model_rope_tables(cfg, 1, pos0=pos)  # [1, hd/2] each
        x = native.embed_fwd(p.embed, np.array([token], dtype=np.int32))  # [D, 1]
        for layer, lp in enumerate(p.layers):
            xn, _ = native.rmsnorm_fwd(x, lp.rms_att, cfg.norm_eps)  # [D, 1]
            q = (lp.wq @ xn[:, 0]).reshape(cfg.q_dim, 1)  # [Q, 1]
            k = (lp.wk @ xn[:, 0]).reshape(cfg.kv_dim, 1)  # [KV*hd, 1]
            if cfg.qk_norm:  # Qwen3: RMSNorm of every q and k head before RoPE
                head_rmsnorm_fwd(q, lp.q_norm, H, cfg.norm_eps)
                head_rmsnorm_fwd(k, lp.k_norm, KV, cfg.norm_eps)
            native.rope_fwd(q, cos, sin, H)
            native.rope_fwd(k, cos, sin, KV)
            self.k_cache[layer, :, pos] = k.reshape(KV, hd)
            self.v_cache[layer, :, pos] = (lp.wv @ xn[:, 0]).reshape(KV, hd)
            keys = self.k_cache[layer, :, :T]  # (KV, T, hd)
            # query head h uses kv head h // G: group the query heads by their kv head
            att = np.matmul(q.reshape(KV, G, hd), keys.transpose(0, 2, 1))  # (KV, G, T)
            att /= self.sqrt_hd
            att -= att.max(axis=-1, keepdims=True)
            np.exp(att, out=att)
            att /= att.sum(axis=-1, keepdims=True)
            o = np.matmul(att, self.v_cache[layer, :, :T])  # (KV, G, hd)
            x += (lp.wo @ o.reshape(cfg.q_dim)).reshape(cfg.dim, 1)
            x2n, _ = native.rmsnorm_fwd(x, lp.rms_ffn, cfg.norm_eps)  # [D, 1]
            h1 = lp.w1 @ x2n[:, 0]  # [F]
            h3 = lp.w3 @ x2n[:, 0]  # [F]
            x += (lp.w2 @ native.swiglu_fwd(h1, h3)).reshape(cfg.dim, 1)
        xf, _ = native.rmsnorm_fwd(x, p.rms_final, cfg.norm_eps)  # [D, 1]
        return p.wcls @ xf[:, 0]  # [V]


# ----------------------------------------------------------------------------
# sampler (run.c: xorshift64* RNG, argmax, multinomial, top-p)

_MASK64 = (1 << 64) - 1


class Rng:
    """run.c's random_u32/random_f32: xorshift64* on a uint64 state."""

    def __init__(self, seed: int):
        self.state = seed & _MASK64  # run.c parses the seed into an unsigned long long

    def u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & _MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & _MASK64) >> 32

    def f32(self) -> np.float32:
        return np.float32(self.u32() >> 8) / np.float32(16777216.0)


def softmax(x: np.ndarray) -> np.ndarray:
    """fp32 softmax with run.c's sequential sum (cumsum accumulates in order, in fp32)."""
    e = np.exp(x - x.max(), dtype=np.float32)
    return e / np.cumsum(e, dtype=np.float32)[-1]


def sample_mult(probs: np.ndarray, coin: float) -> int:
    """First index whose running fp32 CDF exceeds coin (the last index on round-off)."""
    hit = np.flatnonzero(coin < np.cumsum(probs, dtype=np.float32))
    return int(hit[0]) if hit.size else probs.size - 1


def sample_topp(probs: np.ndarray, topp: float, coin: float) -> int:
    """Nucleus sampling as run.c: candidates with p >= (1-topp)/(V-1), sorted by p descending,
    cut after the first cumulative sum > topp, then sampled with coin * (their total).

    run.c uses qsort, which does not specify the order of equal probabilities; we sort stably.
    """
    cutoff = (np.float32(1.0) - np.float32(topp)) / np.float32(probs.size - 1)
    cand = np.flatnonzero(probs >= cutoff)
    cand = cand[np.argsort(-probs[cand], kind="stable")]
    cdf = np.cumsum(probs[cand], dtype=np.float32)
    over = np.flatnonzero(cdf > np.float32(topp))
    last = int(over[0]) if over.size else cand.size - 1
    r = np.float32(coin) * cdf[last]
    hit = np.flatnonzero(r < cdf[: last + 1])
    return int(cand[hit[0]] if hit.size else cand[last])


@dataclass
class Sampler:
    """run.c's sample(): temperature 0 = argmax (first maximal index); else softmax(logits/T),
    then multinomial when topp is not in (0, 1), nucleus sampling otherwise."""

    temperature: float = 1.0
    topp: float = 0.9
    seed: int = 0
    rng: Rng = field(init=False)

    def __post_init__(self) -> None:
        self.rng = Rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        probs = softmax(logits.astype(np.float32) / np.float32(self.temperature))
        coin = self.rng.f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(probs, coin)
        return sample_topp(probs, self.topp, coin)


# ----------------------------------------------------------------------------
# generation (run.c generate)


@dataclass
class Generation:
    tokens: list[int]  # prompt tokens (BOS first, if any), then the sampled ones; not the stop
    n_prompt: int
    text: bytes  # exactly what was printed (without run.c's final newline)
    tok_per_s: float  # run.c's figure: tokens after the first, over the time since the first


def generate(
    forward: Callable[[int, int], np.ndarray],
    tokenizer: TextTokenizer,
    prompt: str,
    seq_len: int,
    max_new_tokens: int,
    sampler: Callable[[np.ndarray], int],
    out: BinaryIO | None = None,
) -> Generation:
    """run.c's generate loop: at most max_new_tokens (>= 1) after the prompt, capped by seq_len.

    run.c's `-n steps` counts positions including the prompt: it equals
    max_new_tokens = steps - n_prompt + 1 here (its -n 0, "until seq_len", is any
    max_new_tokens >= seq_len).
    """
    prompt_tokens = tokenizer.encode(prompt, bos=True, eos=False)
    n_prompt = len(prompt_tokens)
    if n_prompt == 0:
        raise UserError("the prompt is empty and the tokenizer has no BOS to start from; pass "
                        "--prompt")  # fmt: skip
    if n_prompt > seq_len:
        raise UserError(f"the prompt is {n_prompt} tokens; the model's context is {seq_len}")
    steps = min(seq_len, n_prompt - 1 + max_new_tokens)
    stop = tokenizer.stop_ids
    stream = tokenizer.stream()
    tokens = [prompt_tokens[0]]
    text = bytearray()
    token, pos, start = prompt_tokens[0], 0, 0.0
    _emit(stream.push(token), text, out)  # a llama2.c BOS prints nothing
    while pos < steps:
        logits = forward(token, pos)
        nxt = prompt_tokens[pos + 1] if pos < n_prompt - 1 else sampler(logits)
        pos += 1
        if nxt in stop:  # llama2.c: the model starts a new story; Hugging Face: EOS
            break
        _emit(stream.push(nxt), text, out)
        tokens.append(nxt)
        token = nxt
        if start == 0.0:  # run.c times from the second iteration on
            start = time.perf_counter()
    elapsed = time.perf_counter() - start if start else 0.0
    tok_s = (pos - 1) / elapsed if pos > 1 and elapsed > 0 else 0.0
    return Generation(tokens, n_prompt, bytes(text), tok_s)


def _emit(piece: bytes, text: bytearray, out: BinaryIO | None) -> None:
    """Add PIECE to the generated text and print it at once."""
    text += piece
    if out is not None and piece:
        out.write(piece)
        out.flush()


# ----------------------------------------------------------------------------
# loading


def pick_tokenizer(explicit: str | None, model_path: Path, kind: str, recorded: str | None,
                   vocab: int) -> TextTokenizer:  # fmt: skip
    """--tokenizer, else the checkpoint's recorded one, else a Hugging Face model directory's
    tokenizer.json, else tokenizer.bin beside a llama2.c model, else the embedded dataset's.

    A llama2.c tokenizer must have exactly the model's vocabulary (run.c reads that many pieces);
    a Hugging Face one at most that many ids (models pad their embedding, e.g. Qwen3's).
    """
    from anetrain.formats.data import embedded_dataset
    from anetrain.formats.hf_tokenizer import TOKENIZER_FILE
    from anetrain.formats.models import LLAMA2C

    if explicit is not None:
        path = Path(explicit)
    else:
        cands = [Path(recorded)] if recorded else []
        if model_path.is_dir():  # a Hugging Face model directory has its own tokenizer
            cands.append(model_path / TOKENIZER_FILE)
        if kind == LLAMA2C:
            beside = model_path if model_path.is_dir() else model_path.parent
            cands.append(beside / "tokenizer.bin")
        cands.append(embedded_dataset() / "tokenizer.bin")
        path = next((c for c in cands if c.is_file()), cands[-1])
        if recorded and path != cands[0]:
            print(f"warning: {cands[0]}: the checkpoint's tokenizer is missing; using {path} "
                  "(pass --tokenizer if the text looks wrong)", file=sys.stderr)  # fmt: skip
    tok = read_tokenizer(path)
    exact = isinstance(tok, Tokenizer)
    if tok.vocab_size > vocab or (exact and tok.vocab_size != vocab):
        what = "pieces" if exact else "token ids"
        raise UserError(
            f"{path}: tokenizer has {tok.vocab_size} {what} but the model's vocab is {vocab}; "
            "pass --tokenizer with the model's tokenizer (tokenizer.bin, .model, tokenizer.json "
            "or its directory)"
        )
    return tok


# ----------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anetrain.sample",
        description="Generate text from a model on the CPU (KV cache, fp32), following llama2.c "
        "run.c: with --temperature 0 the tokens equal `run model.bin -t 0`'s.",
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="anetrain checkpoint (file or run directory), llama2.c model.bin (v0/v1/v2), or "
        "Hugging Face model directory or Hub id",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="llama2.c tokenizer.bin, sentencepiece .model (converted in memory; needs "
        "sentencepiece), or Hugging Face tokenizer.json or model directory (needs tokenizers: "
        "the hf extra) (default: the checkpoint's dataset tokenizer, a model directory's own, a "
        "tokenizer.bin beside a llama2.c model, or the embedded dataset's)",
    )
    p.add_argument("--prompt", default="", help="text to start from (default: empty, like run.c)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="tokens to generate after the prompt (>= 1), capped by the model's context (256)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="0 = greedy argmax (first maximal index); else softmax(logits/T) (1.0)",
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=0.9,
        help="nucleus sampling threshold; outside (0, 1) samples the full distribution (0.9)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="RNG seed (run.c's xorshift64*); 0 = the current time, like run.c (0)",
    )
    return p


def sample(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.temperature < 0 or not math.isfinite(args.temperature):
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if not math.isfinite(args.top_p):
        raise UserError(f"--top-p must be a number, got {args.top_p}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    model_path = Path(args.ckpt)
    kind, ck = load_model(model_path)
    cfg, params = ck.model, ck.params
    tok = pick_tokenizer(args.tokenizer, model_path, kind, ck.state.tokenizer, cfg.vocab_size)
    seed = args.seed if args.seed != 0 else int(time.time())
    decoder = Decoder(cfg, params)
    sampler = Sampler(args.temperature, args.top_p, seed)
    try:
        gen = generate(
            decoder.forward,
            tok,
            args.prompt,
            cfg.seq_len,
            args.max_new_tokens,
            sampler,
            out=sys.stdout.buffer,
        )
        sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # `... | head`: the reader is gone; stop quietly
        silence(sys.stdout)
        return 0
    if len(gen.tokens) > 1:  # (cli.run_cli drops stderr lines nobody reads any more)
        print(f"achieved tok/s: {gen.tok_per_s:f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("anetrain.sample", sample, argv)


if __name__ == "__main__":
    sys.exit(main())
