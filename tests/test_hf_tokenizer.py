"""Hugging Face tokenizers: encode as transformers does, streaming decode, BOS/EOS, datasets."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from anetrain.config import preset
from anetrain.errors import TokenizerError, UserError
from anetrain.formats import checkpoint
from anetrain.formats.data import open_dataset
from anetrain.formats.hf_tokenizer import HfTokenizer
from anetrain.formats.llama2c import write_llama2c
from anetrain.formats.tokenizer import TextTokenizer, Tokenizer, read_tokenizer
from anetrain.params import init_params
from anetrain.sample import Decoder, Sampler, generate, pick_tokenizer
from anetrain.sample import main as sample_main
from anetrain.train import main as train_main

tokenizers = pytest.importorskip("tokenizers")  # the hf extra; CI installs it

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Hello world, héllo wörld!",
    "The cat sat on the mat.",
    "日本語のテキスト ✓ naïve café",
    "Once upon a time there was a frog.",
]
MULTIBYTE = "日本語 ✓ café"
HF_HINT = "pip install 'anetrain[hf]' (from a source checkout: pip install '.[hf]')"
BYTE_LEVEL_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                     "eos_token": "<|endoftext|>"}  # fmt: skip
LLAMA_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                "eos_token": "</s>", "unk_token": "<unk>"}  # fmt: skip


# ----------------------------------------------------------------------------
# tiny tokenizers built in memory (nothing is downloaded)


def byte_level(bos_template: bool = False):
    """A byte-level BPE (GPT-2 / Qwen / SmolLM style) trained on SENTENCES: ids 0 and 1 are
    <|endoftext|> and <s>; with bos_template its post-processor puts <s> first (Llama 3 style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tk.train_from_iterator(SENTENCES * 3, trainer)
    if bos_template:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                          special_tokens=[("<s>", 1)])  # fmt: skip
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return tk


def llama_style():
    """A sentencepiece-style BPE as Llama 2 / TinyLlama ship it in tokenizer.json: ▁ for spaces,
    byte fallback to <0xHH> pieces, a decoder that strips the first space, BOS by template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    merges = [("▁", "H"), ("e", "l"), ("el", "l"), ("ell", "o"), ("▁H", "ello"), ("▁", "w"),
              ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld")]  # fmt: skip
    for piece in ["▁", "H", "e", "l", "o", "w", "r", "d", *("".join(m) for m in merges)]:
        vocab.setdefault(piece, len(vocab))
    tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                split=False)  # fmt: skip
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])  # fmt: skip
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return tk


def save(d: Path, tk, config: dict | None = None, generation: dict | None = None,
         model: dict | None = None) -> Path:  # fmt: skip
    """A model directory's tokenizer files (only those given)."""
    d.mkdir(parents=True, exist_ok=True)
    tk.save(str(d / "tokenizer.json"))
    for name, obj in (("tokenizer_config.json", config), ("generation_config.json", generation),
                      ("config.json", model)):  # fmt: skip
        if obj is not None:
            (d / name).write_text(json.dumps(obj))
    return d


@pytest.fixture
def bl_dir(tmp_path) -> Path:
    return save(tmp_path / "bl", byte_level(), BYTE_LEVEL_CONFIG)


# ----------------------------------------------------------------------------
# encode: what transformers' tokenizer gives


KINDS = {
    "byte-level, no BOS": lambda: (byte_level(), BYTE_LEVEL_CONFIG),
    "byte-level, BOS template": lambda: (byte_level(bos_template=True), BYTE_LEVEL_CONFIG),
    "Qwen-like, bos_token null": lambda: (byte_level(), {**BYTE_LEVEL_CONFIG, "bos_token": None}),
    "sentencepiece-like": lambda: (llama_style(), LLAMA_CONFIG),
}
TEXTS = ["Hello world", " Hello  world ", "héllo wörld", MULTIBYTE, "x<|endoftext|>y", "a"]


@pytest.mark.parametrize("kind", KINDS)
def test_encode_and_decode_agree_with_transformers(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    tk, config = KINDS[kind]()
    d = save(tmp_path / "m", tk, config)
    ours = HfTokenizer.load(d)
    theirs = transformers.AutoTokenizer.from_pretrained(str(d))
    for text in TEXTS:
        want = theirs(text)["input_ids"]
        assert ours.encode(text) == want, (kind, text)
        assert ours.encode(text, bos=False) == theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text, eos=True) == [*want, theirs.eos_token_id]
        stream = ours.stream()
        streamed = b"".join(stream.push(i) for i in want).decode("utf-8")
        assert streamed == theirs.decode(want, skip_special_tokens=True), (kind, text)
    assert ours.bos_id == theirs.bos_token_id and ours.eos_id == theirs.eos_token_id


def test_add_bos_token_in_the_config_decides_over_the_template(tmp_path):
    plain = HfTokenizer.load(save(tmp_path / "a", byte_level(),
                                  {**BYTE_LEVEL_CONFIG, "add_bos_token": True}))  # fmt: skip
    assert plain.prefix == (1,) and plain.encode("a")[0] == 1
    template = HfTokenizer.load(save(tmp_path / "b", byte_level(bos_template=True),
                                     {**BYTE_LEVEL_CONFIG, "add_bos_token": False}))  # fmt: skip
    assert template.prefix == () and template.encode("a") == template.encode("a", bos=False)
    assert HfTokenizer.load(save(tmp_path / "c", byte_level(bos_template=True))).prefix == (1,)


@pytest.mark.parametrize("make", [byte_level, llama_style])
def test_streaming_decode_prints_only_whole_characters(tmp_path, make):
    tok = HfTokenizer.load(save(tmp_path / "m", make(), LLAMA_CONFIG if make is llama_style
                                else BYTE_LEVEL_CONFIG))  # fmt: skip
    ids = tok.encode(MULTIBYTE)
    # the premise: some tokens hold part of a character (alone they decode to U+FFFD)
    assert any("\ufffd" in tok.backend.decode([i]) for i in ids), ids
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert b"" in pieces[1:]  # a partial character waits for the token that completes it
    for p in pieces:
        p.decode("utf-8")  # every piece is whole UTF-8 on its own
    assert b"".join(pieces).decode() == MULTIBYTE == tok.decode_all(ids)
    assert tok.stream().push(tok.vocab_size + 3) == b""  # a padded id of the model: nothing


def test_streaming_any_byte_level_sequence_gives_its_decode(tmp_path, bl_dir):
    tok = HfTokenizer.load(bl_dir)
    rng = np.random.default_rng(0)
    for _ in range(50):  # random ids: orphan continuation bytes and cut characters everywhere
        ids = rng.integers(2, tok.vocab_size, 60).tolist()
        stream = tok.stream()
        streamed = b"".join(stream.push(i) for i in ids).decode("utf-8")
        assert streamed == tok.decode_all(ids).rstrip("\ufffd")  # (a cut tail never prints)


# ----------------------------------------------------------------------------
# BOS and EOS from the model's files


def test_bos_and_eos_ids_follow_the_model(tmp_path):
    tk = byte_level()
    qwen_like = {**BYTE_LEVEL_CONFIG, "bos_token": None}
    gen = HfTokenizer.load(save(tmp_path / "g", tk, qwen_like,
                                generation={"bos_token_id": 0, "eos_token_id": [0, 1]},
                                model={"eos_token_id": 5, "vocab_size": 320}))  # fmt: skip
    assert gen.stop_ids == {0, 1} and gen.bos_id == 0 and gen.eos_id == 0
    assert gen.encode("") == [0]  # no BOS added, but an empty prompt starts from the model's BOS
    assert gen.encode("", bos=False) == [] and gen.encode("Hello")[0] != 0
    assert gen.model_vocab == 320 and gen.vocab_size == tk.get_vocab_size()
    cfg = HfTokenizer.load(save(tmp_path / "c", tk, qwen_like, model={"eos_token_id": [1]}))
    assert cfg.stop_ids == {1} and cfg.eos_id == 0  # config.json when there is no generation file
    assert json.loads(cfg.files["generation_config.json"]) == {"eos_token_id": 1}
    own = HfTokenizer.load(save(tmp_path / "t", tk, qwen_like))
    assert own.stop_ids == {0} and own.bos_id is None and own.encode("") == []
    bare = HfTokenizer.load(save(tmp_path / "n", tk))  # no config files at all
    assert bare.stop_ids == frozenset() and bare.bos_id is None and bare.eos_id is None
    assert set(bare.files) == {"tokenizer.json"}


def _forcing(script: list[int], n_prompt: int, vocab: int, calls: list):
    """A model whose greedy choice after the prompt is script[0], script[1], ..."""

    def forward(token: int, pos: int) -> np.ndarray:
        calls.append((token, pos))
        logits = np.zeros(vocab, dtype=np.float32)
        if pos >= n_prompt - 1:
            logits[script[pos - n_prompt + 1]] = 1.0
        return logits

    return forward


class _Writes(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, b) -> int:
        self.writes.append(bytes(b))
        return super().write(b)


@pytest.mark.parametrize(("k", "eos"), [(0, 0), (3, 0), (5, 1), (9, 1)])
def test_generate_stops_at_any_eos_id(tmp_path, k, eos):
    tok = HfTokenizer.load(save(tmp_path / "m", byte_level(), BYTE_LEVEL_CONFIG,
                                generation={"eos_token_id": [0, 1]}))  # fmt: skip
    prompt = tok.encode("Hello")
    words = tok.encode(" " + MULTIBYTE, bos=False)
    assert len(words) > 5
    calls: list = []
    out = _Writes()
    g = generate(_forcing([*words[:k], eos, *words], len(prompt), tok.vocab_size, calls),
                 tok, "Hello", 64, 50, Sampler(0.0), out=out)  # fmt: skip
    assert g.tokens == [*prompt, *words[:k]]  # EOS ends it and is not kept
    assert len(calls) == len(prompt) + k
    # whole characters only: one cut by the EOS is never printed
    assert g.text == ("Hello" + tok.decode_all(words[:k]).rstrip("\ufffd")).encode()
    assert out.getvalue() == g.text and all(w for w in out.writes)
    for w in out.writes:
        w.decode("utf-8")  # a character split across tokens is written whole


def test_generate_needs_a_start_token(tmp_path):
    tok = HfTokenizer.load(save(tmp_path / "m", byte_level(), {"eos_token": "<|endoftext|>"}))
    with pytest.raises(UserError) as e:
        generate(_forcing([0], 1, tok.vocab_size, []), tok, "", 64, 5, Sampler(0.0))
    assert str(e.value) == "the prompt is empty and the tokenizer has no BOS to start from; " \
                           "pass --prompt"  # fmt: skip


def test_llama2c_tokenizers_keep_run_c_rules():
    tok: TextTokenizer = Tokenizer.load(REPO / "data" / "stories" / "tokenizer.bin")
    assert tok.stop_ids == {1}  # BOS, as run.c; EOS (2) does not stop (test_sample)
    assert (tok.bos_id, tok.eos_id) == (1, 2) and tok.encode("a", eos=True)[-1] == 2
    ids = tok.encode("Hello there")
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    assert ids[0] == 1 and pieces[0] == b""  # BOS prints nothing; then decode(prev, tok)
    assert pieces[1:] == [tok.decode(a, b) for a, b in zip(ids, ids[1:])]
    assert b"".join(pieces) == b"Hello there"  # the dummy-prefix space is dropped after BOS


# ----------------------------------------------------------------------------
# sample: picking the tokenizer


def test_pick_tokenizer_reads_model_directories_and_tokenizer_json(tmp_path, bl_dir):
    vocab = HfTokenizer.load(bl_dir).vocab_size
    for explicit, model_path in [(None, bl_dir), (str(bl_dir), tmp_path),
                                 (str(bl_dir / "tokenizer.json"), tmp_path)]:  # fmt: skip
        tok = pick_tokenizer(explicit, model_path, "hf", None, vocab + 4)  # a padded embedding
        assert isinstance(tok, HfTokenizer) and tok.eos_id == 0
    assert isinstance(read_tokenizer(bl_dir / "tokenizer.json"), HfTokenizer)
    with pytest.raises(UserError) as e:
        pick_tokenizer(None, bl_dir, "hf", None, 100)
    assert str(e.value) == (
        f"{bl_dir / 'tokenizer.json'}: tokenizer has {vocab} token ids but the model's vocab is "
        "100; pass --tokenizer with the model's tokenizer (tokenizer.bin, .model, tokenizer.json "
        "or its directory)"
    )


def test_sample_cli_with_a_checkpoint_that_recorded_a_tokenizer_json(tmp_path, bl_dir, capfd):
    tok = HfTokenizer.load(bl_dir)
    cfg = preset("tiny", vocab_size=tok.vocab_size + 4, seq_len=32)
    params = init_params(cfg, np.random.default_rng(3))
    state = checkpoint.RunState(cfg, tokenizer=str(bl_dir / "tokenizer.json"))
    checkpoint.save(tmp_path / "ck.bin", checkpoint.Checkpoint(state, params))
    argv = ["--ckpt", str(tmp_path / "ck.bin"), "--prompt", MULTIBYTE, "--temperature", "0"]
    assert sample_main([*argv, "--max-new-tokens", "12"]) == 0
    out = capfd.readouterr().out
    g = generate(Decoder(cfg, params).forward, tok, MULTIBYTE, 32, 12, Sampler(0.0))
    assert out.encode() == g.text + b"\n" and out.startswith(MULTIBYTE)


def _llama2c_model(tmp_path: Path) -> Path:
    cfg = preset("tiny", vocab_size=320, seq_len=16)
    write_llama2c(tmp_path / "m.bin", cfg, init_params(cfg, np.random.default_rng(0)))
    return tmp_path / "m.bin"


def test_without_tokenizers_one_line_names_the_hf_extra(tmp_path, bl_dir, monkeypatch, capfd):
    model = _llama2c_model(tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers fails
    file = bl_dir / "tokenizer.json"
    want = f"{file}: a Hugging Face tokenizer needs the tokenizers package: {HF_HINT}"
    with pytest.raises(TokenizerError) as e:
        HfTokenizer.load(bl_dir)
    assert str(e.value) == want
    assert sample_main(["--ckpt", str(model), "--tokenizer", str(file)]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err == f"anetrain.sample: error: {want}\n"
    pd = _prepare_data()
    (tmp_path / "x.txt").write_text("hello")
    assert pd.main([str(tmp_path / "x.txt"), "-o", str(tmp_path / "ds"), "--tokenizer",
                    str(bl_dir)]) == 2  # fmt: skip
    assert capfd.readouterr().err.splitlines()[-1] == f"prepare_data: error: {want}"


def test_unusable_tokenizer_files_are_refused_in_one_line(tmp_path):
    def refused(d: Path) -> str:
        with pytest.raises(TokenizerError) as e:
            HfTokenizer.load(d)
        assert "\n" not in str(e.value)
        return str(e.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert refused(empty) == f"{empty}: no tokenizer.json in this directory"
    assert refused(empty / "t.json") == f"{empty / 't.json'}: no such tokenizer file"
    (empty / "t.json").write_text('{"model": 3}')
    assert refused(empty / "t.json").startswith(f"{empty / 't.json'}: not a Hugging Face "
                                                "tokenizer.json (")  # fmt: skip
    tk = byte_level()
    cases = [
        ({"bos_token": "<nope>"}, None, None,
         "tokenizer_config.json: bos_token '<nope>' is not in the tokenizer's vocabulary"),
        ({"eos_token": {"content": 7}}, None, None,
         "tokenizer_config.json: eos_token must be a string, got {'content': 7}"),
        ({"add_bos_token": "yes"}, None, None,
         "tokenizer_config.json: add_bos_token must be true or false, got 'yes'"),
        (None, {"eos_token_id": "x"}, None,
         "generation_config.json: eos_token_id must be a token id or a list of them, got 'x'"),
        (None, {"eos_token_id": [0, 400]}, {"vocab_size": 320},
         "generation_config.json: eos_token_id [0, 400] is outside the vocabulary of 320"),
        (None, None, {"bos_token_id": True},
         "config.json: bos_token_id must be a token id or a list of them, got True"),
        (None, None, {"vocab_size": 0}, "config.json: vocab_size must be a positive integer, "
         "got 0"),
    ]  # fmt: skip
    for i, (config, generation, model, message) in enumerate(cases):
        d = save(tmp_path / str(i), tk, config, generation, model)
        assert refused(d) == f"{d}/{message}"
    (d / "tokenizer_config.json").write_text("{")
    assert refused(d).startswith(f"{d / 'tokenizer_config.json'}: not valid JSON (")
    (d / "tokenizer_config.json").write_text("[]")
    assert refused(d) == f"{d / 'tokenizer_config.json'}: expected a JSON object, got list"


# ----------------------------------------------------------------------------
# prepare_data with a Hugging Face tokenizer, then train and sample on the dataset


def _prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "scripts/prepare_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DOCS = [f"{s} Story {i}: the frog {'hopped' if i % 2 else 'sat'}." for i, s in
        enumerate(SENTENCES * 6)]  # fmt: skip


def _docs(tmp_path: Path) -> Path:
    src = tmp_path / "docs.txt"
    src.write_text("\n\n".join(DOCS) + "\n")
    return src


def test_prepare_data_frames_documents_as_the_tokenizer_says(tmp_path, bl_dir):
    pd = _prepare_data()
    src = _docs(tmp_path)
    llama = save(tmp_path / "llama", llama_style(), LLAMA_CONFIG)
    for name, tok_path, add_bos in [("ds-bl", bl_dir / "tokenizer.json", False),
                                    ("ds-ll", llama, True)]:  # fmt: skip
        out = tmp_path / name
        assert pd.main([str(src), "-o", str(out), "--tokenizer", str(tok_path),
                        "--val-fraction", "0"]) == 0  # fmt: skip
        meta = json.loads((out / "meta.json").read_text())
        tok = HfTokenizer.load(out / "tokenizer.json")  # the dataset's copy, with its config
        assert meta["tokenizer"] == "tokenizer.json" and meta["dtype"] == "uint16"
        assert (meta["vocab_size"], meta["bos_id"], meta["eos_id"]) == (tok.vocab_size, 1,
                                                                         tok.eos_id)  # fmt: skip
        assert meta["add_bos"] is add_bos and meta["add_eos"] is True
        train = np.fromfile(out / "train.bin", dtype="<u2").tolist()
        docs = []
        while train:  # [BOS] tokens EOS, document after document
            end = train.index(tok.eos_id)
            docs.append(train[: end + 1])
            train = train[end + 1 :]
        assert [tok.encode(d, eos=True) for d in DOCS] == docs
        assert all((d[0] == 1) is add_bos for d in docs)
        assert (out / "tokenizer_config.json").read_bytes() == \
            (tok_path if tok_path.is_dir() else tok_path.parent).joinpath(
                "tokenizer_config.json").read_bytes()  # fmt: skip
    assert not (tmp_path / "ds-bl" / "tokenizer.bin").exists()


def test_prepare_data_refuses_a_tokenizer_without_bos_or_eos(tmp_path, capsys):
    pd = _prepare_data()
    d = save(tmp_path / "m", byte_level())
    assert pd.main([str(_docs(tmp_path)), "-o", str(tmp_path / "ds"), "--tokenizer", str(d)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"prepare_data: error: {d / 'tokenizer.json'}: the tokenizer adds no BOS and has no EOS "
        "token: nothing would separate the documents"
    )


def test_a_big_model_vocab_makes_a_uint32_dataset_that_train_and_sample_find(
    tmp_path, bl_dir, capfd
):
    pd = _prepare_data()
    src = _docs(tmp_path)
    model = save(tmp_path / "model", byte_level(), {**BYTE_LEVEL_CONFIG, "bos_token": None},
                 generation={"bos_token_id": 0, "eos_token_id": [0, 1]},
                 model={"vocab_size": 70000})  # a padded embedding above uint16  # fmt: skip
    args = ["--val-fraction", "0.1", "--seed", "3"]
    assert pd.main([str(src), "-o", str(tmp_path / "small"), "--tokenizer", str(bl_dir),
                    *args]) == 0  # fmt: skip
    assert pd.main([str(src), "-o", str(tmp_path / "big"), "--tokenizer", str(model), *args]) == 0
    meta = json.loads((tmp_path / "big" / "meta.json").read_text())
    assert (meta["vocab_size"], meta["dtype"]) == (70000, "uint32")
    for split in ("train", "val"):  # the same ids, four bytes each
        small = np.fromfile(tmp_path / "small" / f"{split}.bin", dtype="<u2")
        big = np.fromfile(tmp_path / "big" / f"{split}.bin", dtype="<u4")
        assert big.size == small.size == meta[f"{split}_tokens"] > 0
        np.testing.assert_array_equal(big, small)
    assert (tmp_path / "big" / "generation_config.json").is_file()
    assert not (tmp_path / "big" / "config.json").exists()  # a dataset is not a model directory
    ds = open_dataset(tmp_path / "big")
    assert ds.dtype == "uint32" and ds.tokenizer == tmp_path / "big" / "tokenizer.json"
    run = tmp_path / "run"
    assert train_main(["--model", "tiny", "--seq", "16", "--steps", "2", "--quiet", "--threads",
                       "2", "--data", str(tmp_path / "big"), "--out", str(run)]) == 0  # fmt: skip
    state = checkpoint.load(run / "checkpoint.bin").state
    assert state.tokenizer == str((tmp_path / "big" / "tokenizer.json").resolve())
    assert state.model.vocab_size == 70000 and state.data_dtype is None  # meta.json says it
    capfd.readouterr()
    assert sample_main(["--ckpt", str(run), "--prompt", "The cat", "--temperature", "0",
                        "--max-new-tokens", "4"]) == 0  # fmt: skip
    out, err = capfd.readouterr()
    assert out.startswith("The cat") and "warning" not in err
