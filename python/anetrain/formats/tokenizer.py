"""Tokenizers: the TextTokenizer protocol, reading any tokenizer file; llama2.c's run.c-exact."""

from __future__ import annotations

import array
import heapq
import os
import re
import struct
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from anetrain.errors import TokenizerError
from anetrain.formats.files import atomic_write
from anetrain.formats.hf_tokenizer import HfTokenizer, is_hf_tokenizer

BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3  # byte fallback: id = byte + 3 (ids 3..258 are <0x00>..<0xFF> in sentencepiece)

# run.c starts its best-pair search at -1e10 with a strict `>`, so a pair whose piece scores
# -1e10 or lower (or NaN) never merges. Whitespace-only Llama 2 pieces score -1e9 and do merge.
_MERGE_FLOOR = -1e10
_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{1,2})")  # run.c: sscanf(piece, "<0x%02hhX>", ...) == 1


# ----------------------------------------------------------------------------
# what sampling uses of a tokenizer (llama2.c's Tokenizer and HfTokenizer)


class TokenStream(Protocol):
    """The text of a token sequence, fed one token at a time (what `sample` prints)."""

    def push(self, token: int) -> bytes:
        """The bytes to print once ``token`` follows the tokens pushed before (maybe none yet)."""
        ...


class TextTokenizer(Protocol):
    """A tokenizer as `sample` uses it: encode a prompt, stream the generated text, stop."""

    @property
    def vocab_size(self) -> int:
        """One more than the largest token id it knows."""
        ...

    @property
    def bos_id(self) -> int | None:
        """The BOS token, or None when the tokenizer has none."""
        ...

    @property
    def eos_id(self) -> int | None:
        """The EOS token (what encode(eos=True) appends), or None when the tokenizer has none."""
        ...

    @property
    def stop_ids(self) -> frozenset[int]:
        """Generation ends before any of these tokens (run.c: BOS; Hugging Face: the EOS ids)."""
        ...

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``bos``: what the tokenizer puts first; ``eos``: EOS last."""
        ...

    def stream(self) -> TokenStream:
        """A fresh decoder for one generated sequence (its first push is the first prompt token)."""
        ...


# ----------------------------------------------------------------------------
# the llama2.c tokenizer


class Tokenizer:
    """A llama2.c vocabulary: pieces (raw bytes), float32 scores and the header's max_token_length.

    Special ids follow sentencepiece/Llama 2: 0 = <unk>, 1 = BOS, 2 = EOS, 3..258 = <0xHH> bytes.
    """

    def __init__(
        self,
        pieces: Sequence[bytes],
        scores: Sequence[float],
        max_token_length: int | None = None,
    ) -> None:
        if len(pieces) != len(scores):
            raise TokenizerError(f"tokenizer: {len(pieces)} pieces but {len(scores)} scores")
        if not pieces:
            raise TokenizerError("tokenizer: empty vocabulary")
        self.pieces: list[bytes] = [bytes(p) for p in pieces]
        # array('f') keeps the exact float32 bits (NaN payloads included) for a byte-identical save.
        self.scores: array.array = array.array("f", scores)
        longest = max(len(p) for p in self.pieces)
        self.max_token_length: int = longest if max_token_length is None else int(max_token_length)
        if self.max_token_length < longest:
            raise TokenizerError(
                f"tokenizer: max_token_length {self.max_token_length} < longest piece "
                f"({longest} bytes)"
            )
        # run.c looks pieces up by exact byte string; with duplicate pieces we take the lowest id.
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            self._lookup.setdefault(p, i)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def stop_ids(self) -> frozenset[int]:
        """run.c ends generation when the model starts a new story (BOS); EOS does not stop it."""
        return frozenset({BOS_ID})

    def stream(self) -> Llama2cStream:
        return Llama2cStream(self)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, max_token_length={self.max_token_length})"

    def piece_id(self, piece: bytes | str) -> int | None:
        """The id of an exact piece (str is UTF-8 encoded), or None."""
        key = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
        return self._lookup.get(key)

    # ------------------------------------------------------------------------
    # tokenizer.bin reader and writer (llama2.c tokenizer.py `export` / run.c `build_tokenizer`)

    @classmethod
    def load(cls, path: str | os.PathLike[str], vocab_size: int | None = None) -> Tokenizer:
        """Read a llama2.c tokenizer.bin.

        The file does not store the vocab size (run.c takes it from the model header): with
        ``vocab_size=None`` pieces are read until EOF, otherwise exactly the first ``vocab_size``.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read tokenizer: {e.strerror or e}") from None
        return cls.from_bytes(data, vocab_size=vocab_size, name=str(path))

    @classmethod
    def from_bytes(
        cls, data: bytes, vocab_size: int | None = None, name: str = "<bytes>"
    ) -> Tokenizer:
        """Parse tokenizer.bin contents; every size is checked against the buffer length."""
        if vocab_size is not None and vocab_size <= 0:
            raise TokenizerError(f"{name}: vocab_size must be positive, got {vocab_size}")
        n = len(data)
        if n < 4:
            raise TokenizerError(f"{name}: truncated tokenizer.bin ({n} bytes, no header)")
        (max_len,) = struct.unpack_from("<I", data, 0)
        pieces: list[bytes] = []
        raw_scores = bytearray()
        off = 4
        while off < n if vocab_size is None else len(pieces) < vocab_size:
            i = len(pieces)
            if off + 8 > n:
                raise TokenizerError(f"{name}: truncated tokenizer.bin at token {i} (offset {off})")
            length = struct.unpack_from("<i", data, off + 4)[0]
            if length < 0 or off + 8 + length > n:
                raise TokenizerError(
                    f"{name}: malformed tokenizer.bin: token {i} length {length} at offset {off} "
                    f"runs past the end ({n} bytes)"
                )
            raw_scores += data[off : off + 4]
            pieces.append(data[off + 8 : off + 8 + length])
            off += 8 + length
        if not pieces:
            raise TokenizerError(f"{name}: tokenizer.bin has no tokens")
        scores = array.array("f")
        scores.frombytes(bytes(raw_scores))
        if sys.byteorder == "big":
            scores.byteswap()
        longest = max(len(p) for p in pieces)
        if max_len < longest:
            raise TokenizerError(
                f"{name}: malformed tokenizer.bin: max_token_length {max_len} < longest piece "
                f"({longest} bytes)"
            )
        return cls(pieces, scores, max_token_length=max_len)

    def to_bytes(self) -> bytes:
        """Serialize in llama2.c format: uint32 max_token_length, then (float32, int32, bytes)."""
        scores = array.array("f", self.scores)
        if sys.byteorder == "big":
            scores.byteswap()
        raw = scores.tobytes()
        out = [struct.pack("<I", self.max_token_length)]
        for i, p in enumerate(self.pieces):
            out.append(raw[4 * i : 4 * i + 4])
            out.append(struct.pack("<i", len(p)))
            out.append(p)
        return b"".join(out)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.bin (byte-identical to the file it was loaded from), atomically."""
        data = self.to_bytes()
        atomic_write(Path(path), lambda f: f.write(data), "tokenizer")

    # ------------------------------------------------------------------------
    # encoder (run.c `encode`, with a heap instead of its O(n^2) rescans)

    def encode(self, text: str | bytes, bos: bool = True, eos: bool = False) -> list[int]:
        """Encode exactly like llama2.c run.c.

        BOS, then (for non-empty text) the dummy prefix piece " ", then one token per UTF-8
        codepoint (a lead byte plus at most 3 continuation bytes) or byte fallback (byte + 3), then
        repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece (the
        leftmost such pair on ties), then EOS. Unlike run.c's C string, a NUL byte does not end the
        text; and if the vocab has no " " piece the dummy prefix falls back to byte 0x20.
        """
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        tokens: list[int] = []
        if bos:
            tokens.append(BOS_ID)
        if data:
            space = self._lookup.get(b" ")
            tokens.append(space if space is not None else 0x20 + BYTE_OFFSET)
        lookup = self._lookup
        n, i = len(data), 0
        while i < n:
            j = i + 1
            while j < n and j - i < 4 and (data[j] & 0xC0) == 0x80:
                j += 1
            tid = lookup.get(data[i:j])
            if tid is not None:
                tokens.append(tid)
            else:
                tokens.extend(b + BYTE_OFFSET for b in data[i:j])
            i = j
        tokens = self._merge(tokens)
        if eos:
            tokens.append(EOS_ID)
        return tokens

    def _merge(self, tokens: list[int]) -> list[int]:
        """run.c's merge loop: O(n log n) with a doubly linked list and a lazy heap.

        Heap keys are (-score, left node index). Merging keeps the relative order of surviving
        nodes, so the smallest node index among equal scores is run.c's first (leftmost) pair.
        """
        n = len(tokens)
        if n < 2:
            return tokens
        toks = list(tokens)
        nxt = list(range(1, n + 1))  # n = end of list
        prv = list(range(-1, n - 1))  # -1 = start of list
        alive = [True] * n
        pieces, scores, lookup = self.pieces, self.scores, self._lookup
        cache: dict[tuple[int, int], int] = {}

        def pair(a: int, b: int) -> tuple[float, int, int, int, int, int] | None:
            ta, tb = toks[a], toks[b]
            mid = cache.get((ta, tb))
            if mid is None:
                mid = lookup.get(pieces[ta] + pieces[tb], -1)
                cache[(ta, tb)] = mid
            if mid < 0:
                return None
            s = scores[mid]
            if not s > _MERGE_FLOOR:  # also drops NaN, which never compares greater in run.c
                return None
            return (-s, a, b, ta, tb, mid)

        heap = [e for e in (pair(a, a + 1) for a in range(n - 1)) if e is not None]
        heapq.heapify(heap)
        while heap:
            _, a, b, ta, tb, mid = heapq.heappop(heap)
            if not (alive[a] and alive[b] and nxt[a] == b and toks[a] == ta and toks[b] == tb):
                continue  # stale: one side was merged away or changed since this entry was pushed
            toks[a] = mid
            alive[b] = False
            c = nxt[b]
            nxt[a] = c
            if c < n:
                prv[c] = a
            p = prv[a]
            for e in (pair(p, a) if p >= 0 else None, pair(a, c) if c < n else None):
                if e is not None:
                    heapq.heappush(heap, e)
        return [t for t, ok in zip(toks, alive, strict=True) if ok]

    # ------------------------------------------------------------------------
    # decoder (run.c `decode`)

    def decode(self, prev: int, tok: int) -> bytes:
        """The bytes run.c prints for ``tok`` after ``prev``.

        After BOS a leading space is dropped (the dummy prefix); a piece that parses as ``<0xHH>``
        becomes that single raw byte. run.c's safe_printf additionally hides unprintable single
        bytes when printing; this returns them.
        """
        if not 0 <= tok < len(self.pieces):
            raise TokenizerError(f"tokenizer: token id {tok} out of range [0, {len(self.pieces)})")
        piece = self.pieces[tok]
        if prev == BOS_ID and piece[:1] == b" ":
            piece = piece[1:]
        m = _BYTE_PIECE.match(piece)
        if m is not None:
            return bytes([int(m.group(1), 16)])
        return piece

    def decode_all(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Decode a token sequence to text (UTF-8, errors='replace').

        The sequence is treated as if it followed a BOS, so a leading dummy-prefix space is
        dropped (as sentencepiece's decode does). With ``skip_special`` BOS and EOS print nothing.
        """
        out = bytearray()
        prev = BOS_ID
        for tok in ids:
            tok = int(tok)
            if not (skip_special and tok in (BOS_ID, EOS_ID)):
                out += self.decode(prev, tok)
            prev = tok
        return out.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------
    # sentencepiece .model -> tokenizer.bin (llama2.c tokenizer.py `export`)

    @classmethod
    def from_sentencepiece(cls, model_path: str | os.PathLike[str]) -> Tokenizer:
        """Convert a sentencepiece model the way llama2.c's tokenizer.py export does.

        BOS becomes "\\n<s>\\n", EOS "\\n</s>\\n", U+2581 becomes a space, scores come from
        sentencepiece, and max_token_length is the longest piece in bytes.
        """
        model_path = Path(model_path)
        spm = import_sentencepiece(f"{model_path}: reading a sentencepiece model")
        if not model_path.is_file():
            raise TokenizerError(f"{model_path}: sentencepiece model not found")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(model_path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{model_path}: cannot load sentencepiece model: {e}") from None
        pieces: list[bytes] = []
        scores: list[float] = []
        for i in range(sp.GetPieceSize()):
            text = sp.IdToPiece(i)
            if i == sp.bos_id():
                text = "\n<s>\n"
            elif i == sp.eos_id():
                text = "\n</s>\n"
            pieces.append(text.replace("\u2581", " ").encode("utf-8"))
            scores.append(sp.GetScore(i))
        return cls(pieces, scores)


# ----------------------------------------------------------------------------
# printing generated text (run.c `safe_printf`)


def safe_piece(piece: bytes) -> bytes:
    """What run.c's safe_printf prints: printf("%s") stops at a NUL; empty pieces and single
    bytes that are neither isprint nor isspace (C locale) print nothing."""
    piece = piece.split(b"\0", 1)[0]
    if len(piece) == 1 and not (0x20 <= piece[0] <= 0x7E or piece[0] in b"\t\n\v\f\r"):
        return b""
    return piece


class Llama2cStream:
    """run.c's printing: every token after the first as decode(previous, token) through
    safe_printf's filter; the first token (BOS in run.c) prints nothing."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.prev: int | None = None

    def push(self, token: int) -> bytes:
        prev, self.prev = self.prev, token
        return b"" if prev is None else safe_piece(self.tokenizer.decode(prev, token))


# ----------------------------------------------------------------------------
# any tokenizer file


def import_sentencepiece(what: str) -> types.ModuleType:
    """The sentencepiece module, or a TokenizerError saying that WHAT needs the `data` extra.

    The hint names the package, not `anetrain[data]`: anetrain is installed from a checkout, so
    pip cannot resolve the extra by the project's name.
    """
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError(
            f"{what} needs sentencepiece (the 'data' extra): pip install sentencepiece, "
            "or pip install '.[data]' in the anetrain checkout"
        ) from None
    return sentencepiece


def read_tokenizer(path: str | os.PathLike[str]) -> TextTokenizer:
    """A Hugging Face tokenizer.json or model directory (needs the `hf` extra), a sentencepiece
    .model converted to a llama2.c tokenizer in memory, or a llama2.c tokenizer.bin."""
    path = Path(path)
    if is_hf_tokenizer(path):
        return HfTokenizer.load(path)
    if path.suffix == ".model":
        return Tokenizer.from_sentencepiece(path)
    return Tokenizer.load(path)
