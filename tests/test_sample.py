"""Sampling: KV-cache logits vs the full forward, run.c's generation, decoding and sampler rules."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from anetrain import native
from anetrain.backends.cpu import CpuKernels
from anetrain.config import preset
from anetrain.errors import UserError
from anetrain.formats import checkpoint
from anetrain.formats.data import embedded_dataset
from anetrain.formats.llama2c import write_llama2c
from anetrain.formats.tokenizer import Tokenizer, safe_piece
from anetrain.model import forward
from anetrain.params import Params, init_params
from anetrain.sample import (
    Decoder,
    Rng,
    Sampler,
    generate,
    sample_mult,
    sample_topp,
)
from anetrain.sample import main as sample_main

PROMPT = "Once upon a time"


def _model(kv: int = 2, seed: int = 0, **family) -> Params:
    """A random tiny model over the embedded 2048-piece vocabulary, with wide logit margins."""
    cfg = preset("tiny", vocab_size=2048, seq_len=32, n_kv_heads=kv, **family)
    p = init_params(cfg, np.random.default_rng(seed))
    p.embed *= 40.0  # untrained models have near-ties (llama2c.md §8); spread the logits
    rng = np.random.default_rng(seed + 1)
    for t in p.tensors.values():
        if t.ndim == 1:
            t[...] = rng.uniform(0.5, 1.5, t.shape).astype(np.float32)
    return p


def _full_logits(params: Params, tokens) -> np.ndarray:
    """[S, V] logits of a whole sequence through the training forward (no KV cache)."""
    tokens = np.asarray(tokens, dtype=np.int32)
    kern = CpuKernels(params.cfg, params, seq_len=len(tokens))
    x, _ = forward(params, kern, tokens, keep=False)
    xf, _ = native.rmsnorm_fwd(x, params.rms_final, params.cfg.norm_eps)
    return (params.wcls @ xf).T


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.load(embedded_dataset() / "tokenizer.bin")


# ----------------------------------------------------------------------------
# the KV-cache forward and greedy generation


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_kv_cache_logits_match_the_full_forward(kv):
    p = _model(kv)
    tokens = np.random.default_rng(kv).integers(0, 2048, p.cfg.seq_len)
    dec = Decoder(p.cfg, p)
    step = np.stack([dec.forward(int(t), pos) for pos, t in enumerate(tokens)])  # [S, V]
    full = _full_logits(p, tokens)
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


FAMILIES = {
    "qwen3": {"head_size": 32, "qk_norm": True, "shared_classifier": False},
    "head_size": {"head_size": 8},
    "llama3_rope": {"rope_theta": 5e5, "rope_scaling": {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}},
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_logits_match_the_full_forward_for_every_family(family):
    """Qwen3's q/k norm, an explicit head size and Llama 3 RoPE scaling in the KV-cache path."""
    p = _model(2, **FAMILIES[family])
    tokens = np.random.default_rng(5).integers(0, 2048, p.cfg.seq_len)
    dec = Decoder(p.cfg, p)
    step = np.stack([dec.forward(int(t), pos) for pos, t in enumerate(tokens)])  # [S, V]
    full = _full_logits(p, tokens)
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


@pytest.mark.parametrize("kv", [4, 2])
def test_greedy_is_deterministic_and_the_full_forward_argmax(tok, kv):
    p = _model(kv, seed=3)
    runs = [
        generate(Decoder(p.cfg, p).forward, tok, PROMPT, p.cfg.seq_len, 20, Sampler(0.0))
        for _ in range(2)
    ]
    assert runs[0].tokens == runs[1].tokens and runs[0].text == runs[1].text
    g = runs[0]
    assert g.tokens[: g.n_prompt] == tok.encode(PROMPT)
    assert len(g.tokens) == g.n_prompt + 20  # (or fewer if BOS came first: not with this seed)
    logits = _full_logits(p, g.tokens[:-1])  # position t predicts token t + 1
    for t in range(g.n_prompt - 1, len(g.tokens) - 1):
        top2 = np.sort(logits[t])[-2:]
        assert top2[1] - top2[0] > 1e-3  # a real margin: the comparison is not a coin toss
        assert g.tokens[t + 1] == int(np.argmax(logits[t])), t
    assert g.text.startswith(PROMPT.encode())  # the prompt is echoed after BOS, as run.c does
    assert g.text == b"".join(safe_piece(tok.decode(a, b)) for a, b in zip(g.tokens, g.tokens[1:]))


# ----------------------------------------------------------------------------
# run.c's generation rules on a hand-built vocabulary and a scripted model


def _hand_tokenizer() -> Tokenizer:
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    pieces += [b" ", b" Hello", b" world", b"!"]  # ids 259..262
    return Tokenizer(pieces, [0.0] * len(pieces))


def _scripted(script: list[int], vocab: int, calls: list):
    def fwd(token: int, pos: int) -> np.ndarray:
        calls.append((token, pos))
        logits = np.zeros(vocab, dtype=np.float32)
        logits[script[pos] if pos < len(script) else 262] = 1.0
        return logits

    return fwd


def test_decoding_rules_and_stop_on_bos():
    tk = _hand_tokenizer()
    byte = lambda b: 3 + b  # noqa: E731
    script = [260, 261, byte(0x0A), byte(0x09), byte(0x07), byte(0xE2), byte(0x00), 2, 260, 1, 262]
    calls: list = []
    g = generate(_scripted(script, tk.vocab_size, calls), tk, "", 64, 100, Sampler(0.0))
    # " Hello" after BOS loses its space; \n and \t print; BEL, 0xE2 and NUL do not (safe_printf);
    # EOS prints its piece and does not stop; BOS stops before it is printed
    assert g.text == b"Hello world\n\t\n</s>\n Hello"
    assert g.tokens == [1, *script[:9]]
    assert calls == list(zip(g.tokens, range(10)))


def test_safe_piece():
    assert safe_piece(b"") == b""
    assert safe_piece(b"a") == b"a" and safe_piece(b" ") == b" " and safe_piece(b"\n") == b"\n"
    assert safe_piece(b"\x7f") == b"" and safe_piece(b"\x80") == b"" and safe_piece(b"\x1b") == b""
    assert safe_piece(b"ab\x00cd") == b"ab"  # printf("%s") stops at NUL
    assert safe_piece("é".encode()) == "é".encode()  # multi-byte pieces print as they are


def test_prompt_is_forced_then_sampled(tok):
    calls: list = []
    g = generate(_scripted([], tok.vocab_size, calls), tok, PROMPT, 64, 3, Sampler(0.0))
    prompt = tok.encode(PROMPT)
    assert [t for t, _ in calls] == prompt + [262, 262]
    assert [p for _, p in calls] == list(range(len(prompt) + 2))
    assert g.tokens == prompt + [262] * 3
    tail = safe_piece(tok.decode(prompt[-1], 262)) + safe_piece(tok.decode(262, 262)) * 2
    assert g.text == PROMPT.encode() + tail


def test_step_limits(tok):
    calls: list = []
    g = generate(_scripted([], tok.vocab_size, calls), tok, "", 10, 100, Sampler(0.0))
    assert len(calls) == 10 and len(g.tokens) == 11  # capped by the context: run until it is full
    calls.clear()
    generate(_scripted([], tok.vocab_size, calls), tok, "", 10, 4, Sampler(0.0))
    assert len(calls) == 4
    with pytest.raises(UserError, match="context"):
        generate(_scripted([], tok.vocab_size, calls), tok, PROMPT * 10, 8, 4, Sampler(0.0))


# ----------------------------------------------------------------------------
# the sampler


def test_rng_is_xorshift64star():
    state = np.array([1234], dtype=np.uint64)
    rng = Rng(1234)
    with np.errstate(over="ignore"):
        for _ in range(1000):
            s = state[0]
            s ^= s >> np.uint64(12)
            s ^= s << np.uint64(25)
            s ^= s >> np.uint64(27)
            state[0] = s
            want = int((s * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32))
            assert rng.u32() == want
    f = [float(Rng(7).f32()) for _ in range(3)]
    assert all(0.0 <= x < 1.0 for x in f)


def test_argmax_takes_the_first_maximum():
    assert Sampler(0.0)(np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32)) == 1


def test_multinomial_and_top_p_choices():
    probs = np.array([0.1, 0.5, 0.2, 0.2], dtype=np.float32)
    assert [sample_mult(probs, c) for c in (0.05, 0.55, 0.65, 0.99)] == [0, 1, 2, 3]
    # top-p 0.6: cutoff 0.4/3; sorted 1 (0.5), 2 (0.2), 3 (0.2); cut after 0.7 > 0.6 -> {1, 2}
    assert sample_topp(probs, 0.6, 0.5) == 1  # r = 0.35 < 0.5
    assert sample_topp(probs, 0.6, 0.9) == 2  # r = 0.63 in [0.5, 0.7)
    assert sample_topp(probs, 0.6, 0.999) == 2


@pytest.mark.parametrize(("coin", "want"), [(0.0, 0), (0.1, 0), (0.6, 0), (0.7, 1), (0.9, 1)])
def test_top_p_ties_at_both_cutoffs_pick_what_run_c_picks(coin, want):
    # run.c, V = 3, top-p 0.5: cutoff (1 - 0.5) / 2 = 0.25 keeps all three (p >= cutoff, the two
    # 0.25s included); sorted 0 (0.5), 1 (0.25), 2 (0.25); cumulative 0.5 is not > 0.5, 0.75 is:
    # nucleus {0, 1}; r = coin * 0.75 picks 0 while r < 0.5, else 1. (A `>` candidate cutoff or a
    # `>=` cumulative cutoff leaves the nucleus {0}: token 0 for every coin.) Equal probabilities
    # keep their index order, as glibc's qsort does on a handful of elements (its insertion sort).
    probs = np.array([0.5, 0.25, 0.25], dtype=np.float32)
    assert sample_topp(probs, 0.5, coin) == want
    assert sample_topp(probs[::-1].copy(), 0.5, coin) == [2, 0][want]


def test_sampling_is_seeded_and_has_the_right_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))

    def draws(temperature: float, topp: float, seed: int) -> list[int]:
        s = Sampler(temperature, topp, seed)
        return [s(logits) for _ in range(50)]

    assert draws(1.0, 0.9, 5) == draws(1.0, 0.9, 5) != draws(1.0, 0.9, 6)
    assert draws(0.8, 0.0, 5) == draws(0.8, 0.0, 5)
    s = Sampler(1.0, 0.7, 42)  # nucleus {0, 1}: 0 with 0.5/0.8
    picks = np.array([s(logits) for _ in range(4000)])
    assert set(picks.tolist()) == {0, 1}
    assert abs(np.mean(picks == 0) - 0.625) < 0.03
    s = Sampler(1.0, 1.0, 42)  # top-p 1 = the full distribution
    picks = np.array([s(logits) for _ in range(4000)])
    np.testing.assert_allclose(
        np.bincount(picks, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03
    )


# ----------------------------------------------------------------------------
# the CLI


def test_cli_greedy_same_for_checkpoint_and_llama2c_file(tmp_path, tok, capfd):
    p = _model(2, seed=9)
    state = checkpoint.RunState(p.cfg, tokenizer=str(embedded_dataset() / "tokenizer.bin"))
    checkpoint.save(tmp_path / "ck.bin", checkpoint.Checkpoint(state, p))
    write_llama2c(tmp_path / "m.bin", p.cfg, p, version=0)
    outs = []
    for src in ("ck.bin", "m.bin", "m.bin"):
        args = ["--ckpt", str(tmp_path / src), "--prompt", PROMPT, "--temperature", "0"]
        assert sample_main([*args, "--max-new-tokens", "12"]) == 0
        out, err = capfd.readouterr()
        assert "achieved tok/s:" in err
        outs.append(out)
    assert outs[0] == outs[1] == outs[2]
    g = generate(Decoder(p.cfg, p).forward, tok, PROMPT, p.cfg.seq_len, 12, Sampler(0.0))
    assert outs[0].encode() == g.text + b"\n"


def test_cli_refuses_a_tokenizer_of_another_vocab(tmp_path, capfd):
    cfg = preset("tiny", vocab_size=97, seq_len=16)
    write_llama2c(tmp_path / "m.bin", cfg, init_params(cfg, np.random.default_rng(0)))
    assert sample_main(["--ckpt", str(tmp_path / "m.bin"), "--max-new-tokens", "2"]) == 2
    err = capfd.readouterr().err
    assert "--tokenizer" in err and "97" in err and err.count("\n") == 1


def test_cli_warns_when_the_checkpoints_tokenizer_is_gone(tmp_path, capfd):
    p = _model(2, seed=9)
    state = checkpoint.RunState(p.cfg, tokenizer=str(tmp_path / "moved" / "tokenizer.bin"))
    checkpoint.save(tmp_path / "ck.bin", checkpoint.Checkpoint(state, p))
    args = ["--ckpt", str(tmp_path / "ck.bin"), "--temperature", "0", "--max-new-tokens", "2"]
    assert sample_main(args) == 0
    err = capfd.readouterr().err
    assert f"warning: {tmp_path / 'moved' / 'tokenizer.bin'}: the checkpoint's tokenizer is " \
           "missing; using " in err  # fmt: skip
    assert sample_main([*args, "--top-p", "nan"]) == 2
    assert "--top-p must be a number, got nan" in capfd.readouterr().err


def _cli_model(tmp_path) -> list[str]:
    """--ckpt of a llama2.c file over the embedded 2048-piece vocabulary, a prompt, greedy."""
    p = _model(2, seed=9)
    write_llama2c(tmp_path / "m.bin", p.cfg, p, version=0)
    return ["--ckpt", str(tmp_path / "m.bin"), "--prompt", PROMPT, "--temperature", "0"]


def test_cli_reads_a_sentencepiece_model(tmp_path, capfd):
    pytest.importorskip("sentencepiece")  # CI installs it (make deps: .[test,data])
    args = [*_cli_model(tmp_path), "--max-new-tokens", "8"]
    outs = []
    for name in ("tokenizer.bin", "tokenizer.model"):
        assert sample_main([*args, "--tokenizer", str(embedded_dataset() / name)]) == 0
        outs.append(capfd.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith(PROMPT)
    cfg = preset("tiny", vocab_size=97, seq_len=16)  # its vocabulary must match, as for a .bin
    write_llama2c(tmp_path / "m97.bin", cfg, init_params(cfg, np.random.default_rng(0)))
    model = embedded_dataset() / "tokenizer.model"
    assert sample_main(["--ckpt", str(tmp_path / "m97.bin"), "--tokenizer", str(model)]) == 2
    err = capfd.readouterr().err
    assert f"{model}: tokenizer has 2048 pieces but the model's vocab is 97" in err
    assert err.count("\n") == 1


def test_cli_names_the_data_extra_without_sentencepiece(tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece fails
    model = embedded_dataset() / "tokenizer.model"
    assert sample_main([*_cli_model(tmp_path), "--tokenizer", str(model)]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"anetrain.sample: error: {model}: ")
    assert "'data' extra" in err and "pip install sentencepiece" in err


@pytest.mark.parametrize("n", ["0", "-1"])
def test_cli_refuses_max_new_tokens_below_one(tmp_path, capfd, n):
    assert sample_main([*_cli_model(tmp_path), "--max-new-tokens", n]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err == f"anetrain.sample: error: --max-new-tokens must be >= 1, got {n}\n"


def test_cli_help_says_max_new_tokens_is_capped_by_the_context(capsys):
    with pytest.raises(SystemExit):
        sample_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "capped by the model's context (256)" in out and "0 = until" not in out


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone (`| head -c 10` once head has exited)."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.parametrize("closed", ["stdout", "stderr", "both"])
def test_cli_output_to_a_closed_pipe_exits_quietly(tmp_path, closed):
    cmd = [sys.executable, "-m", "anetrain.sample", *_cli_model(tmp_path), "--max-new-tokens", "8"]
    ends = {name: _closed_pipe() if closed in (name, "both") else subprocess.PIPE
            for name in ("stdout", "stderr")}  # fmt: skip
    try:
        r = subprocess.run(cmd, timeout=120, **ends)
    finally:
        for end in ends.values():
            if end != subprocess.PIPE:
                os.close(end)
    assert r.returncode == 0, r.stderr  # an uncaught BrokenPipeError exits 1 (with a traceback)
    if closed == "stdout":
        assert r.stderr == b""  # no traceback, no "Exception ignored" at exit
    if closed == "stderr":
        assert r.stdout.startswith(PROMPT.encode())


def test_the_kv_cache_grows_with_the_positions_used():
    """A long-context model costs the positions a run reaches, not its whole seq_len; growing
    the cache past its first 256 positions keeps every logit."""
    cfg = preset("tiny", vocab_size=2048, seq_len=100_000, n_kv_heads=2)
    p = init_params(cfg, np.random.default_rng(3))
    dec = Decoder(cfg, p)
    tokens = np.random.default_rng(4).integers(0, 2048, 300)
    step = np.stack([dec.forward(int(t), pos) for pos, t in enumerate(tokens)])  # [300, V]
    assert dec.k_cache.shape[2] == 512 and dec.v_cache.shape[2] == 512
    short = Params(cfg.replace(seq_len=300), p.flat)
    full = _full_logits(short, tokens)
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())
