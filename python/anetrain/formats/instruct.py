"""Instruction data: JSONL text, prompt/completion and chat records -> examples with a loss mask."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anetrain.errors import DataError
from anetrain.formats.chat_template import ChatTemplate, TemplateRefused, chat_template
from anetrain.formats.data import Dataset
from anetrain.formats.packing import Example, PackedSplit
from anetrain.formats.tokenizer import TextTokenizer, read_tokenizer

SPLITS = {"train": "train.jsonl", "valid": "valid.jsonl", "test": "test.jsonl"}
ROLES = ("system", "user", "assistant", "tool")  # as Hugging Face chat templates know them
KINDS = ({"text"}, {"prompt", "completion"}, {"messages"})
_KINDS_TEXT = '{"text"}, {"prompt", "completion"} or {"messages"}'


class BadRecord(Exception):
    """One record that cannot be used; the message lacks the file:line that the reader adds."""


def is_jsonl(path: str | Path | None) -> bool:
    """A .jsonl file, or a directory with train.jsonl (and no meta.json: not a token dataset)."""
    if path is None:
        return False
    path = Path(path)
    if path.is_dir():
        return (path / SPLITS["train"]).is_file() and not (path / "meta.json").exists()
    return path.suffix == ".jsonl"


@dataclass
class Encoder:
    """Turns records into examples with the run's tokenizer (and its chat template, if any)."""

    tokenizer: TextTokenizer
    template: ChatTemplate | None
    mask_prompt: bool  # loss on completion / assistant tokens only

    def example(self, record: dict) -> Example:
        if "text" in record:
            ids = self.tokenizer.encode(record["text"], bos=True, eos=True)
            return _example(ids, 1)
        if "prompt" in record and self.template is None:
            return self._completion(record["prompt"], record["completion"])
        messages = record["messages"] if "messages" in record else [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]}]  # fmt: skip
        return self._chat(messages)

    def _completion(self, prompt: str, completion: str) -> Example:
        """BOS + prompt + completion + EOS, tokenized whole; the completion starts at the first
        token where the prompt's own tokens differ (a token merging both is the completion's)."""
        ids = self.tokenizer.encode(prompt + completion, bos=True, eos=True)
        if not self.mask_prompt:
            return _example(ids, 1)
        head = self.tokenizer.encode(prompt, bos=True)
        k = next((i for i, (a, b) in enumerate(zip(head, ids)) if a != b), min(len(head), len(ids)))
        return _example(ids, max(k, 1))

    def _chat(self, messages: list[dict]) -> Example:
        """The conversation rendered by the chat template (its BOS, if any, in the text); with
        mask_prompt the loss is on each assistant turn: the tokens between the conversation up
        to it with the generation prompt and the conversation up to its end."""
        assert self.template is not None
        render, encode = self.template.render, self._encode
        ids = encode(render(messages, False))
        if not self.mask_prompt:
            return _example(ids, 1)
        loss = np.zeros(len(ids), dtype=bool)  # [n]
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(self._prefix(ids, encode(render(messages[:i], True))))
            end = len(self._prefix(ids, encode(render(messages[: i + 1], False))))
            loss[start:end] = True
        loss[0] = False
        return Example(np.asarray(ids, dtype=np.int32), loss)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=False)  # the template wrote BOS if it wants one

    def _prefix(self, whole: list[int], part: list[int]) -> list[int]:
        if whole[: len(part)] != part:
            raise BadRecord(f"the chat template of {self.template.where} renders a "
                            "conversation's beginning into tokens that are not a prefix of the "
                            "whole conversation's; --mask-prompt cannot find the assistant "
                            "tokens")  # fmt: skip
        return part


def _example(ids: list[int], first: int) -> Example:
    """ids with loss from token `first` on."""
    loss = np.zeros(len(ids), dtype=bool)  # [n]
    loss[first:] = True
    return Example(np.asarray(ids, dtype=np.int32), loss)


def check_record(text: str) -> dict:
    """One line's record, its shape checked (the keys of one kind, strings, known roles)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord(f"not JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise BadRecord("not JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {_type(record)}")
    keys = set(record)
    if keys not in KINDS:
        known = next((k for k in KINDS if keys & k), None)
        if known is None or keys - set().union(*KINDS):
            raise BadRecord(f"keys {sorted(keys)}: a record is {_KINDS_TEXT}")
        if keys > known or any(keys & k for k in KINDS if k != known):
            raise BadRecord(f"keys {sorted(keys)} mix record kinds: a record is {_KINDS_TEXT}")
        raise BadRecord(f"missing \"{sorted(known - keys)[0]}\" (a record is {_KINDS_TEXT})")
    for key in keys - {"messages"}:
        _string(record[key], f'"{key}"')
    if "messages" in record:
        _messages(record["messages"])
    return record


def _messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRecord(f'"messages" must be a non-empty list, got {_type(messages)}')
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise BadRecord(f"message {i}: expected an object, got {_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise BadRecord(f'message {i}: missing "{key}"')
            _string(m[key], f'message {i}: "{key}"')
        if m["role"] not in ROLES:
            raise BadRecord(f"message {i}: unknown role {m['role']!r} (one of "
                            f"{', '.join(ROLES)})")  # fmt: skip


def _string(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise BadRecord(f"{what} must be a string, got {_type(value)}")
    if not value.strip():
        raise BadRecord(f"{what} is empty")


def _type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                       type(value).__name__)


def read_split(path: Path, encoder: Encoder, skip_bad: bool) -> PackedSplit:
    """A .jsonl file's examples (blank lines ignored). A bad record stops the run with
    `file:line: problem` (the first, and how many there are) unless skip_bad counts it."""
    examples: list[Example] = []
    bad: list[str] = []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            text = _utf8(raw)
            record = check_record(text)
            if encoder.template is None and "messages" in record:
                raise DataError(f"{path}:{number}: a chat (\"messages\") record, but the "
                                "tokenizer has no chat template; pass a --tokenizer that has "
                                "one")  # fmt: skip
            examples.append(encoder.example(record))
        except (BadRecord, TemplateRefused) as e:
            bad.append(f"{path}:{number}: {e}")
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more bad records)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}; fix them, or pass --skip-bad-records to leave them "
                        "out")  # fmt: skip
    if not examples:
        raise DataError(f"{path}: no records" + (f" ({len(bad)} bad ones skipped)" if bad else ""))
    return PackedSplit(str(path), examples, len(examples), len(bad))


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"not UTF-8 (byte {e.start + 1})") from None


def open_jsonl(path: str | Path, tokenizer: str | Path | None, mask_prompt: bool,
               skip_bad: bool) -> Dataset:  # fmt: skip
    """--data DIR (train.jsonl, optional valid.jsonl and test.jsonl) or --data FILE.jsonl (train
    only), tokenized with the run's tokenizer (a tokenizer.json or model directory, or a
    llama2.c tokenizer.bin)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if tokenizer is None:
        raise DataError(f"{path}: JSONL data needs a tokenizer: pass --tokenizer PATH (a "
                        "tokenizer.json, a model directory or a tokenizer.bin), or --init a "
                        "model that has one")  # fmt: skip
    tok = read_tokenizer(tokenizer)
    encoder = Encoder(tok, chat_template(tok), mask_prompt)
    files = {k: path / f for k, f in SPLITS.items()} if path.is_dir() else {"train": path}
    splits = {k: read_split(f, encoder, skip_bad) for k, f in files.items() if f.is_file()}
    max_id = max(int(ex.ids.max(initial=0)) for s in splits.values() for ex in s.examples)
    return Dataset(splits["train"], splits.get("valid"), tok.vocab_size, str(path),
                   Path(tokenizer), max_id, raw=False, test=splits.get("test"))  # fmt: skip
