"""Tests: run.c-exact tokenizer, tokenizer.bin round trip, the embedded dataset, data scripts."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anetrain.formats.tokenizer import BOS_ID, EOS_ID, Tokenizer, TokenizerError

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO / "data" / "stories"
LLAMA2C = Path(
    os.environ.get("ANETRAIN_LLAMA2C_DIR", Path(__file__).resolve().parents[2] / "shared/llama2c")
)
DATA_BUDGET = 5_000_000  # bytes committed under data/
IGNORED_DATA_DIRS = ("tinystories", "models", "downloads")  # git-ignored download targets

SAMPLE_STORY = (
    'Once upon a time, there was a little girl named Lily. She said, "Can I play too?"\n'
    "Her friend Tom smiled. They played all day at the park!"
)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def llama2c_file(name: str) -> Path:
    path = LLAMA2C / name
    if not path.is_file():
        pytest.skip(f"{path} not found (set ANETRAIN_LLAMA2C_DIR to llama2.c's data files)")
    return path


def sentencepiece_or_skip():
    return pytest.importorskip("sentencepiece", reason="sentencepiece not installed")


@pytest.fixture(scope="module")
def stories_tok() -> Tokenizer:
    return Tokenizer.load(STORIES / "tokenizer.bin")


def reference_encode(tok: Tokenizer, text: str, bos: bool = True, eos: bool = False) -> list[int]:
    """run.c's encode loop written literally: rescan all pairs after every merge (O(n^2))."""
    data = text.encode("utf-8")
    tokens = [BOS_ID] if bos else []
    if data:
        tokens.append(tok.piece_id(b" "))
    i = 0
    while i < len(data):
        j = i + 1
        while j < len(data) and j - i < 4 and (data[j] & 0xC0) == 0x80:
            j += 1
        tid = tok.piece_id(data[i:j])
        tokens.extend([tid] if tid is not None else [b + 3 for b in data[i:j]])
        i = j
    while True:
        best, best_id, best_idx = -1e10, -1, -1
        for k in range(len(tokens) - 1):
            mid = tok.piece_id(tok.pieces[tokens[k]] + tok.pieces[tokens[k + 1]])
            if mid is not None and tok.scores[mid] > best:
                best, best_id, best_idx = tok.scores[mid], mid, k
        if best_idx == -1:
            break
        tokens[best_idx : best_idx + 2] = [best_id]
    return tokens + ([EOS_ID] if eos else [])


def tiny_vocab(extra: list[tuple[bytes, float]]) -> Tokenizer:
    """<unk>, BOS, EOS, 256 byte pieces (ids 3..258), then `extra` from id 259."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % b for b in range(256)]
    scores = [0.0] * len(pieces)
    for piece, score in extra:
        pieces.append(piece)
        scores.append(score)
    return Tokenizer(pieces, scores)


# ----------------------------------------------------------------------------
# tokenizer.bin reader/writer


def test_roundtrip_embedded(tmp_path: Path) -> None:
    raw = (STORIES / "tokenizer.bin").read_bytes()
    tok = Tokenizer.load(STORIES / "tokenizer.bin")
    assert tok.vocab_size == json.loads((STORIES / "meta.json").read_text())["vocab_size"]
    assert tok.to_bytes() == raw
    tok.save(tmp_path / "t.bin")
    assert (tmp_path / "t.bin").read_bytes() == raw
    assert Tokenizer.load(tmp_path / "t.bin", vocab_size=300).vocab_size == 300


def test_save_is_atomic_and_a_failure_is_one_line(tmp_path: Path) -> None:
    from anetrain.formats.files import WriteError

    tok = Tokenizer.load(STORIES / "tokenizer.bin")
    with pytest.raises(WriteError, match=r"/no/t\.bin: cannot write tokenizer"):
        tok.save(tmp_path / "no" / "t.bin")  # a missing directory
    (tmp_path / "t.bin").write_bytes(b"old")
    tok.save(tmp_path / "t.bin")
    assert (tmp_path / "t.bin").read_bytes() == tok.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]  # no temp file left


def test_roundtrip_llama2c() -> None:
    path = llama2c_file("tokenizer.bin")
    tok = Tokenizer.load(path)
    assert tok.vocab_size == 32000 and tok.max_token_length == 27
    assert tok.to_bytes() == path.read_bytes()


def test_roundtrip_odd_scores(tmp_path: Path) -> None:
    nan_payload = struct.unpack("<f", b"\x01\x00\xc0\x7f")[0]
    tok = tiny_vocab([(b" ", -1e9), (b"\xe2\x96\x81x", float("inf")), (b"y", nan_payload)])
    again = Tokenizer.from_bytes(tok.to_bytes())
    assert again.to_bytes() == tok.to_bytes()
    assert again.pieces == tok.pieces


@pytest.mark.parametrize(
    "cut, what",
    [(0, "truncated"), (3, "truncated"), (6, "truncated"), (12, "runs past the end")],
)
def test_truncated_file(tmp_path: Path, cut: int, what: str) -> None:
    raw = tiny_vocab([(b"hello", 1.0)]).to_bytes()
    path = tmp_path / "broken.bin"
    path.write_bytes(raw[:cut] if cut < 12 else raw[:-2])
    with pytest.raises(TokenizerError, match=what) as e:
        Tokenizer.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(struct.pack("<Ifi", 4, 0.0, -5) + b"abc")  # negative length
    with pytest.raises(TokenizerError, match="bad.bin.*length -5"):
        Tokenizer.load(path)
    path.write_bytes(struct.pack("<Ifi", 2, 0.0, 5) + b"hello")  # max_token_length too small
    with pytest.raises(TokenizerError, match="bad.bin.*max_token_length"):
        Tokenizer.load(path)
    path.write_bytes(struct.pack("<I", 4))  # header only
    with pytest.raises(TokenizerError, match="no tokens"):
        Tokenizer.load(path)
    path.write_bytes(tiny_vocab([]).to_bytes())
    with pytest.raises(TokenizerError, match="bad.bin.*token 259"):
        Tokenizer.load(path, vocab_size=260)  # fewer pieces than asked for
    with pytest.raises(TokenizerError, match="missing.bin"):
        Tokenizer.load(tmp_path / "missing.bin")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_parser_fuzz_random_bytes_raise_only_tokenizer_error(blob: bytes) -> None:
    try:
        tok = Tokenizer.from_bytes(blob)
    except TokenizerError:
        return
    assert tok.to_bytes() == blob


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.binary(max_size=12)), min_size=1,
             max_size=8),  # (raw float32 score bits, NaN payloads included; piece)
    st.integers(0, 3),
    st.data(),
)  # fmt: skip
def test_parser_fuzz_valid_files_round_trip_and_prefixes_fail_cleanly(records, slack, data):
    longest = max(len(p) for _, p in records)
    blob = struct.pack("<I", longest + slack) + b"".join(
        score + struct.pack("<i", len(p)) + p for score, p in records
    )
    tok = Tokenizer.from_bytes(blob)
    assert tok.pieces == [p for _, p in records] and tok.max_token_length == longest + slack
    assert tok.to_bytes() == blob
    cut = data.draw(st.integers(0, len(blob) - 1))
    try:  # a prefix parses only when it ends on a record boundary, to the records before it
        short = Tokenizer.from_bytes(blob[:cut])
    except TokenizerError:
        return
    assert short.pieces == tok.pieces[: len(short.pieces)] and short.to_bytes() == blob[:cut]


# ----------------------------------------------------------------------------
# encoder: run.c test vectors and rules


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", [1]),
        ("I believe the meaning of life is", [1, 306, 4658, 278, 6593, 310, 2834, 338]),
        (
            "Simply put, the theory of relativity states that ",
            [1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871],
        ),
        ("Once upon a time", [1, 9038, 2501, 263, 931]),
    ],
)
def test_runc_vectors(text: str, expected: list[int]) -> None:
    tok = Tokenizer.load(llama2c_file("tokenizer.bin"))
    assert tok.encode(text) == expected
    assert tok.encode(text, bos=False, eos=True) == expected[1:] + [EOS_ID]


def test_ties_first_pair_wins() -> None:
    # ids: 259 " ", 260 "a", 261 "b", 262 "ab", 263 "ba", 264 "bb"
    tok = tiny_vocab([(b" ", -1e9), (b"a", 0.0), (b"b", 0.0), (b"ab", 1.0), (b"ba", 1.0)])
    # a b a: pairs "ab"(1.0) and "ba"(1.0) tie, the first one merges -> [ab, a]
    assert tok.encode("aba") == [1, 259, 262, 260]
    assert tok.encode("bab") == [1, 259, 263, 261]
    tok = tiny_vocab([(b" ", -1e9), (b"a", 0.0), (b"b", 0.0), (b"ab", 1.0), (b"ba", 2.0)])
    # a b a b: "ba" scores higher than both "ab" pairs -> [a, ba, b]
    assert tok.encode("abab") == [1, 259, 260, 263, 261]
    assert tok.encode("abab", bos=False) == [259, 260, 263, 261]


def test_merge_floor_and_whitespace() -> None:
    # run.c starts from best = -1e10 with a strict '>': a -1e10 piece never merges, -1e9 does.
    tok = tiny_vocab([(b" ", -1e9), (b"a", 0.0), (b"  ", -1e9), (b"aa", -1e10)])
    assert tok.encode("aa") == [1, 259, 260, 260]
    assert tok.encode(" a") == [1, 261, 260]


def test_byte_fallback_and_codepoints() -> None:
    tok = tiny_vocab([(b" ", -1e9), ("é".encode(), 0.0)])
    # "é" is a piece; "ü" (2 bytes) and the 4-byte emoji fall back to byte + 3
    assert tok.encode("é\u00fc\U0001f600") == [1, 259, 260, 0xC3 + 3, 0xBC + 3] + [
        b + 3 for b in "\U0001f600".encode()
    ]
    no_space = tiny_vocab([(b"x", 0.0)])
    assert no_space.encode("x") == [1, 0x20 + 3, 259]  # dummy prefix falls back to byte 0x20


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab \u00e9\U0001f600", max_size=24))
def test_heap_matches_runc_loop_tiny(text: str) -> None:
    tok = tiny_vocab(
        [(b" ", -1e9), (b"a", 0.0), (b"b", 0.0), (b"ab", 1.0), (b"ba", 1.0), (b"aba", 0.5),
         (b" a", 3.0), (b"bb", 1.0), (b"  ", -1e9), (b"abab", 1.0), ("é".encode(), 0.0)]
    )  # fmt: skip
    assert tok.encode(text) == reference_encode(tok, text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_heap_matches_runc_loop_stories(stories_tok: Tokenizer, text: str) -> None:
    assert stories_tok.encode(text, eos=True) == reference_encode(stories_tok, text, eos=True)


def test_heap_matches_runc_loop_story_text(stories_tok: Tokenizer) -> None:
    assert stories_tok.encode(SAMPLE_STORY) == reference_encode(stories_tok, SAMPLE_STORY)


# ----------------------------------------------------------------------------
# decoder


def test_decode_rules(stories_tok: Tokenizer) -> None:
    tok = stories_tok
    space_the = tok.piece_id(" the")
    assert space_the is not None
    assert tok.decode(BOS_ID, space_the) == b"the"  # leading space dropped after BOS
    assert tok.decode(space_the, space_the) == b" the"
    assert tok.decode(5, 0x0A + 3) == b"\n"  # <0x0A> -> raw byte
    assert tok.decode(5, 0xE2 + 3) == b"\xe2"
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode(5, tok.vocab_size)


@pytest.mark.parametrize(
    "text",
    [SAMPLE_STORY, "Caf\u00e9 na\u00efve \u2014 \u65e5\u672c \U0001f600!", "tabs\tand\nlines 42"],
)
def test_encode_decode_roundtrip(stories_tok: Tokenizer, text: str) -> None:
    ids = stories_tok.encode(text, bos=True, eos=True)
    assert all(0 <= i < stories_tok.vocab_size for i in ids)
    assert stories_tok.decode_all(ids) == text


def test_decode_embedded_train_prefix(stories_tok: Tokenizer) -> None:
    ids = np.fromfile(STORIES / "train.bin", dtype="<u2", count=400).tolist()
    text = stories_tok.decode_all(ids)
    assert ids[0] == BOS_ID and text.isascii() and len(text) > 400


# ----------------------------------------------------------------------------
# sentencepiece agreement and export


def test_agrees_with_sentencepiece_embedded(stories_tok: Tokenizer) -> None:
    spm = sentencepiece_or_skip()
    sp = spm.SentencePieceProcessor(model_file=str(STORIES / "tokenizer.model"))
    # the model keeps sentencepiece's remove_extra_whitespaces (as llama2.c's train_vocab does),
    # so the samples avoid runs of spaces, which run.c's encoder keeps
    samples = SAMPLE_STORY.split("\n") + [
        SAMPLE_STORY,
        "The little dog ran to the big red ball and barked: woof, woof!",
        "Mia was 7 years old; she had 2 cats.",
        "\u00bfQu\u00e9 pas\u00f3? na\u00efve caf\u00e9 \U0001f600",
    ]
    for text in samples:
        assert stories_tok.encode(text) == [BOS_ID] + sp.encode(text), text


def test_from_sentencepiece_embedded() -> None:
    sentencepiece_or_skip()
    tok = Tokenizer.from_sentencepiece(STORIES / "tokenizer.model")
    assert tok.to_bytes() == (STORIES / "tokenizer.bin").read_bytes()


def test_from_sentencepiece_llama2c() -> None:
    sentencepiece_or_skip()
    model, binary = llama2c_file("tokenizer.model"), llama2c_file("tokenizer.bin")
    assert Tokenizer.from_sentencepiece(model).to_bytes() == binary.read_bytes()


def test_from_sentencepiece_missing(tmp_path: Path) -> None:
    sentencepiece_or_skip()
    with pytest.raises(TokenizerError, match="nope.model"):
        Tokenizer.from_sentencepiece(tmp_path / "nope.model")


# ----------------------------------------------------------------------------
# the embedded dataset and the data scripts


def test_embedded_dataset_consistent() -> None:
    meta = json.loads((STORIES / "meta.json").read_text())
    assert meta["format"] == "anetrain-dataset" and meta["version"] == 1
    assert meta["dtype"] == "uint16" and meta["bos_id"] == 1 and meta["eos_id"] == 2
    assert 512 <= meta["vocab_size"] <= 4096
    assert Tokenizer.load(STORIES / meta["tokenizer"]).vocab_size == meta["vocab_size"]
    for split in ("train", "val"):
        path = STORIES / meta[split]
        assert path.stat().st_size == 2 * meta[f"{split}_tokens"]
        ids = np.fromfile(path, dtype="<u2")
        assert ids[0] == BOS_ID and int(ids.max()) < meta["vocab_size"]
    assert meta["train_tokens"] >= 1_000_000 and meta["val_tokens"] > 0
    total = 0
    for path in (REPO / "data").rglob("*"):
        rel = path.relative_to(REPO / "data").parts
        if path.is_file() and rel[0] not in IGNORED_DATA_DIRS and "raw" not in rel:
            total += path.stat().st_size
    assert total <= DATA_BUDGET


def test_make_stories_deterministic() -> None:
    ms = load_script("make_stories")
    a, b = ms.make_stories(300, seed=7), ms.make_stories(300, seed=7)
    assert a == b and ms.make_stories(300, seed=8) != a
    text = "\n\n".join(a)
    assert text.isascii() and '"' in text and "?" in text and "!" in text
    assert len(set(a)) == len(a)  # no two identical stories
    assert all(s.strip() == s and "\n\n" not in s for s in a)


def test_make_stories_cli(tmp_path: Path) -> None:
    out = tmp_path / "s.txt"
    cmd = [
        sys.executable,
        str(REPO / "scripts/make_stories.py"),
        "--n-stories",
        "50",
        "--seed",
        "3",
    ]
    subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True)
    again = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert out.read_text() == again and again.count("\n\n") == 49


def test_prepare_data_with_existing_tokenizer(tmp_path: Path) -> None:
    pd = load_script("prepare_data")
    src = tmp_path / "in.txt"
    src.write_text("\n\n".join([SAMPLE_STORY, "One day, Tom saw a frog.", "The end."] * 20) + "\n")
    out = tmp_path / "ds"
    assert pd.main([str(src), "-o", str(out), "--tokenizer", str(STORIES / "tokenizer.bin")]) == 0
    meta = json.loads((out / "meta.json").read_text())
    tok = Tokenizer.load(out / "tokenizer.bin")
    train = np.fromfile(out / "train.bin", dtype="<u2")
    val = np.fromfile(out / "val.bin", dtype="<u2")
    assert meta["train_tokens"] == train.size and meta["val_tokens"] == val.size
    assert int((train == BOS_ID).sum() + (val == BOS_ID).sum()) == 60
    assert (val == BOS_ID).sum() == 1  # round(0.02 * 60)
    assert SAMPLE_STORY in tok.decode_all(train.tolist()) or SAMPLE_STORY in tok.decode_all(val)


def test_prepare_data_trains_vocab(tmp_path: Path) -> None:
    sentencepiece_or_skip()
    pd = load_script("prepare_data")
    src = tmp_path / "in.txt"
    src.write_text("\n\n".join(load_script("make_stories").make_stories(200, seed=1)))
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert pd.main([str(src), "-o", str(out), "--vocab-size", "400", "--seed", "1"]) == 0
        outs.append(out)
    for f in ("train.bin", "val.bin", "tokenizer.bin", "tokenizer.model", "meta.json"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
    assert json.loads((outs[0] / "meta.json").read_text())["vocab_size"] == 400


def test_prepare_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pd = load_script("prepare_data")
    out = str(tmp_path / "ds")
    assert pd.main([str(tmp_path / "missing.txt"), "-o", out, "--vocab-size", "512"]) == 2
    assert "missing.txt: input file not found" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    assert pd.main([str(tmp_path / "empty.txt"), "-o", out, "--vocab-size", "512"]) == 2
    assert "empty.txt: input file is empty" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hello\n")
    assert pd.main([str(tmp_path / "x.txt"), "-o", out, "--vocab-size", "70000"]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size" in err and err.count("\n") == 1


def _dataset_bytes(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line at the end of stderr (after any progress lines)."""
    err = capsys.readouterr().err
    assert err.count("error") == 1 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("prepare_data: error: "), err
    return last


def test_prepare_data_refuses_an_existing_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pd = load_script("prepare_data")
    tok = ["--tokenizer", str(STORIES / "tokenizer.bin")]
    (tmp_path / "a.txt").write_text("\n\n".join([SAMPLE_STORY] * 10))
    (tmp_path / "b.txt").write_text("\n\n".join(["One day, Tom saw a frog."] * 10))
    out = tmp_path / "ds"
    assert pd.main([str(tmp_path / "a.txt"), "-o", str(out), *tok]) == 0
    (out / "notes.txt").write_text("mine")  # not part of the dataset: kept in every case
    old = _dataset_bytes(out)
    capsys.readouterr()
    assert pd.main([str(tmp_path / "b.txt"), "-o", str(out), *tok]) == 2
    err = _one_error_line(capsys)
    assert f"{out}: already holds a dataset" in err and "--overwrite" in err
    assert _dataset_bytes(out) == old
    assert pd.main([str(tmp_path / "b.txt"), "-o", str(out), *tok, "--overwrite"]) == 0
    new = _dataset_bytes(out)
    assert new["train.bin"] != old["train.bin"] and new["notes.txt"] == b"mine"
    assert json.loads(new["meta.json"])["source"] == "b.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "ds"]  # no temp dir


def test_prepare_data_overwrite_keeps_the_old_dataset_until_the_new_one_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pd = load_script("prepare_data")
    src = tmp_path / "in.txt"
    src.write_text("\n\n".join([SAMPLE_STORY] * 10))
    out = tmp_path / "ds"
    args = [str(src), "-o", str(out), "--tokenizer", str(STORIES / "tokenizer.bin")]
    assert pd.main(args) == 0
    old = _dataset_bytes(out)
    real_write = pd.write_dataset

    def disk_full(out_dir: Path, *rest: object) -> dict:
        (out_dir / "train.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd, "write_dataset", disk_full)
    capsys.readouterr()
    assert pd.main([*args, "--overwrite", "--seed", "5"]) == 2
    assert "No space left on device" in _one_error_line(capsys)
    assert _dataset_bytes(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in.txt"]  # no temp dir left
    monkeypatch.setattr(pd, "write_dataset", real_write)
    assert pd.main([*args, "--overwrite", "--seed", "5"]) == 0


def test_prepare_data_overwrite_drops_a_stale_tokenizer_model(tmp_path: Path) -> None:
    sentencepiece_or_skip()
    pd = load_script("prepare_data")
    src = tmp_path / "in.txt"
    src.write_text("\n\n".join([SAMPLE_STORY] * 10))
    out = tmp_path / "ds"
    args = [str(src), "-o", str(out), "--tokenizer", str(STORIES / "tokenizer.model")]
    assert pd.main(args) == 0 and (out / "tokenizer.model").is_file()
    assert pd.main([*args, "--overwrite", "--no-model"]) == 0
    assert not (out / "tokenizer.model").exists()
    assert json.loads((out / "meta.json").read_text())["tokenizer_model"] is None


def test_prepare_data_refuses_a_file_as_out_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pd = load_script("prepare_data")
    src = tmp_path / "in.txt"
    src.write_text(SAMPLE_STORY)
    tok = ["--tokenizer", str(STORIES / "tokenizer.bin"), "--val-fraction", "0"]
    for flags in ([], ["--overwrite"]):
        assert pd.main([str(src), "-o", str(src), *tok, *flags]) == 2
        assert f"{src}: exists and is not a directory" in _one_error_line(capsys)
        assert src.read_text() == SAMPLE_STORY
    assert pd.main([str(src), "-o", str(src / "ds"), *tok]) == 2  # a file in the path
    assert str(src / "ds") in _one_error_line(capsys)


def test_prepare_data_vocab_that_does_not_fit_the_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sentencepiece_or_skip()
    pd = load_script("prepare_data")
    src = tmp_path / "cjk.txt"  # 150 distinct characters: they and 259 special pieces need 409+
    src.write_text(
        "\n\n".join("".join(chr(0x4E00 + 50 * j + i) for i in range(50)) for j in range(3))
    )
    out = tmp_path / "ds"
    assert pd.main([str(src), "-o", str(out), "--vocab-size", "300"]) == 2
    err = _one_error_line(capsys)
    assert f"{src}: --vocab-size 300 is too small for the text's 150 distinct characters" in err
    (tmp_path / "tiny.txt").write_text("hello world")
    assert pd.main([str(tmp_path / "tiny.txt"), "-o", str(out), "--vocab-size", "5000"]) == 2
    err = _one_error_line(capsys)
    assert "tiny.txt: cannot train a 5000-piece vocab: Vocabulary size too high" in err
    assert "INTERNAL" not in err and not out.exists()


def test_prepare_data_says_how_to_install_sentencepiece(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pd = load_script("prepare_data")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece fails
    (tmp_path / "x.txt").write_text(SAMPLE_STORY)
    assert (
        pd.main([str(tmp_path / "x.txt"), "-o", str(tmp_path / "ds"), "--vocab-size", "512"]) == 2
    )
    err = _one_error_line(capsys)
    assert "pip install sentencepiece" in err and "anetrain[data]" not in err
