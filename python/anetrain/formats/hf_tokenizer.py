"""Hugging Face tokenizers: tokenizer.json with its config and the model's BOS/EOS ids."""

from __future__ import annotations

import json
import os
import types
from collections.abc import Iterable
from pathlib import Path

from anetrain.errors import TokenizerError

# A model directory (or a dataset made from one) holds these beside tokenizer.json: the special
# tokens and whether BOS is added (tokenizer_config.json), and the model's own BOS/EOS ids
# (generation_config.json, else config.json; transformers' generate stops at those EOS ids).
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
GENERATION_FILE = "generation_config.json"
MODEL_CONFIG_FILE = "config.json"
HF_EXTRA = "pip install 'anetrain[hf]' (from a source checkout: pip install '.[hf]')"
_PROBE = "a"  # a text every tokenizer encodes: what the post-processor adds around it is found


def import_tokenizers(what: str) -> types.ModuleType:
    """The `tokenizers` module, or a TokenizerError saying that WHAT needs the `hf` extra."""
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError(f"{what} needs the tokenizers package: {HF_EXTRA}") from None
    return tokenizers


def is_hf_tokenizer(path: Path) -> bool:
    """A path read as a Hugging Face tokenizer: a .json file or a (model) directory."""
    return path.suffix == ".json" or path.is_dir()


class HfTokenizer:
    """A Hugging Face tokenizer (a `tokenizers.Tokenizer`) with the BOS/EOS rules of its model.

    encode(text, bos=True) puts first what the tokenizer puts before a text: the tokens its
    tokenizer.json post-processor adds (Llama: BOS; Qwen, SmolLM: none), unless
    tokenizer_config.json sets add_bos_token. Generation stops at the model's EOS ids.
    """

    def __init__(self, backend, name: str, prefix: tuple[int, ...], bos_id: int | None,
                 eos_id: int | None, stop_ids: frozenset[int], model_vocab: int | None,
                 files: dict[str, bytes]) -> None:  # fmt: skip
        self.backend = backend  # tokenizers.Tokenizer
        self.name = name  # the tokenizer.json path, for messages
        self.prefix = prefix  # what bos=True puts before a text: (BOS,) or ()
        self.bos_id = bos_id  # the tokenizer's BOS, else the model's bos_token_id
        self.eos_id = eos_id  # the tokenizer's EOS, else the model's first eos_token_id
        self._stop_ids = stop_ids
        self.model_vocab = model_vocab  # config.json's vocab_size (may exceed the tokenizer's)
        self.files = files  # what a dataset keeps of it, by file name (tokenizer.json first)
        self._vocab_size = _vocab(backend)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    def __repr__(self) -> str:
        return f"HfTokenizer({self.name}, vocab_size={self.vocab_size})"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HfTokenizer:
        """Read tokenizer.json (PATH, or PATH/tokenizer.json for a directory) and the config files
        beside it. Only JSON is read: no code from the directory runs."""
        path = Path(path)
        directory, file = (path, path / TOKENIZER_FILE) if path.is_dir() else (path.parent, path)
        if not file.is_file():
            where = f"{path}: no {TOKENIZER_FILE} in this directory" if path.is_dir() else \
                f"{path}: no such tokenizer file"  # fmt: skip
            raise TokenizerError(where)
        tokenizers = import_tokenizers(f"{file}: a Hugging Face tokenizer")
        raw = _read(file)
        try:
            backend = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust library raises plain Exceptions
            reason = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise TokenizerError(f"{file}: not a Hugging Face tokenizer.json ({reason})") from None
        files = {TOKENIZER_FILE: raw}
        tok_cfg = _config(directory / CONFIG_FILE, files)
        gen_cfg = _config(directory / GENERATION_FILE, files)
        model_cfg = _config(directory / MODEL_CONFIG_FILE, {})
        model_vocab = _vocab_size(model_cfg, directory / MODEL_CONFIG_FILE)
        # the model's ids: generation_config.json, else config.json (as transformers reads them)
        ids_file = directory / (GENERATION_FILE if gen_cfg is not None else MODEL_CONFIG_FILE)
        ids_from = gen_cfg if gen_cfg is not None else model_cfg
        limit = max(_vocab(backend), model_vocab or 0)
        model_bos = _ids(ids_from, "bos_token_id", ids_file, limit)
        model_eos = _ids(ids_from, "eos_token_id", ids_file, limit)
        if gen_cfg is None and (model_bos or model_eos):  # a dataset keeps them in this form
            files[GENERATION_FILE] = _generation_json(model_bos, model_eos)
        cfg_file = directory / CONFIG_FILE
        tok_bos = _special(backend, tok_cfg, "bos_token", cfg_file)
        tok_eos = _special(backend, tok_cfg, "eos_token", cfg_file)
        prefix = _prefix(backend)
        bos_id = tok_bos if tok_bos is not None else (prefix[:1] or model_bos[:1] or [None])[0]
        eos_id = tok_eos if tok_eos is not None else (model_eos[:1] or [None])[0]
        add_bos = (tok_cfg or {}).get("add_bos_token")
        if add_bos is not None:  # transformers 4's Llama tokenizers honour it over the template
            if not isinstance(add_bos, bool):
                raise TokenizerError(f"{cfg_file}: add_bos_token must be true or false, got "
                                     f"{add_bos!r}")  # fmt: skip
            prefix = (bos_id,) if add_bos and bos_id is not None else ()
        stop = frozenset(model_eos) if model_eos else frozenset(() if eos_id is None else {eos_id})
        return cls(backend, str(file), prefix, bos_id, eos_id, stop, model_vocab, files)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """``bos``: the tokenizer's prefix first (an empty text then starts from the model's BOS
        id even without one, as transformers' generate does without input); ``eos``: EOS last."""
        ids = list(self.backend.encode(text, add_special_tokens=False).ids)
        if bos:
            ids = [*self.prefix, *ids]
            if not ids and self.bos_id is not None:
                ids = [self.bos_id]
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode_all(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The text of a token sequence (special tokens left out with ``skip_special``)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def stream(self) -> HfStream:
        return HfStream(self)


class HfStream:
    """Streaming decode that prints whole characters as soon as they are complete.

    A byte-level token may hold the end of one character and the start of the next, and a
    byte-fallback token (<0xE6>) one byte that decodes only with its neighbours, so each push
    decodes a window: a context token, then the tokens since. Text up to a trailing partial
    character (U+FFFD) is printed; the rest waits for the tokens that complete it. The window
    restarts from a token that ends a character and decodes whole on its own (the context keeps
    decoders that strip the text's first space right). Special tokens print nothing, nor do ids
    past the tokenizer's vocabulary (a model's padding rows).
    """

    def __init__(self, tokenizer: HfTokenizer) -> None:
        self.tokenizer = tokenizer
        self.window: list[int] = []  # the context token, then the tokens since
        self.printed = 0  # characters of decode(window) already printed (or the context's own)

    def push(self, token: int) -> bytes:
        if not 0 <= token < self.tokenizer.vocab_size:
            return b""
        decode = self.tokenizer.decode_all
        self.window.append(token)
        text = decode(self.window)
        whole = text.rstrip("\ufffd")
        out = whole[self.printed :]
        self.printed = max(self.printed, len(whole))
        if len(whole) == len(text):  # a character boundary
            alone = decode([token])
            if "\ufffd" not in alone:  # a clean context: restart the window from it
                self.window, self.printed = [token], len(alone)
        return out.encode("utf-8")


# ----------------------------------------------------------------------------
# the JSON files beside tokenizer.json


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None


def _config(path: Path, keep: dict[str, bytes]) -> dict | None:
    """A JSON object file, or None when there is none; its bytes are kept under its name."""
    if not path.is_file():
        return None
    raw = _read(path)
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    keep[path.name] = raw
    return obj


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ids(cfg: dict | None, key: str, path: Path, limit: int) -> list[int]:
    """bos_token_id / eos_token_id: an id below LIMIT, a list of them, or null (none)."""
    value = None if cfg is None else cfg.get(key)
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(_is_id(i) for i in ids):
        raise TokenizerError(f"{path}: {key} must be a token id or a list of them, got {value!r}")
    if any(i >= limit for i in ids):
        raise TokenizerError(f"{path}: {key} {value!r} is outside the vocabulary of {limit}")
    return ids


def _vocab_size(cfg: dict | None, path: Path) -> int | None:
    value = None if cfg is None else cfg.get("vocab_size")
    if value is not None and not (_is_id(value) and value > 0):
        raise TokenizerError(f"{path}: vocab_size must be a positive integer, got {value!r}")
    return value


def _special(backend, cfg: dict | None, key: str, path: Path) -> int | None:
    """The id of tokenizer_config.json's bos_token / eos_token (a string or an AddedToken)."""
    value = None if cfg is None else cfg.get(key)
    if value is None:
        return None
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, str):
        raise TokenizerError(f"{path}: {key} must be a string, got {value!r}")
    tid = backend.token_to_id(content)
    if tid is None:
        raise TokenizerError(f"{path}: {key} {content!r} is not in the tokenizer's vocabulary")
    return tid


def _vocab(backend) -> int:
    """One more than the largest id, added tokens included (ids need not be contiguous)."""
    return max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1


def _prefix(backend) -> tuple[int, ...]:
    """The ids tokenizer.json's post-processor puts before a text (with special tokens on)."""
    plain = backend.encode(_PROBE, add_special_tokens=False).ids
    full = backend.encode(_PROBE, add_special_tokens=True).ids
    n = len(plain)
    at = next((i for i in range(len(full) - n + 1) if full[i : i + n] == plain), 0)
    return tuple(full[:at])


def _generation_json(bos: list[int], eos: list[int]) -> bytes:
    """config.json's BOS/EOS ids as a generation_config.json (GenerationConfig's defaults)."""
    cfg = {"bos_token_id": bos[0] if len(bos) == 1 else bos or None,
           "eos_token_id": eos[0] if len(eos) == 1 else eos or None}  # fmt: skip
    return (json.dumps({k: v for k, v in cfg.items() if v is not None}, indent=2) + "\n").encode()
