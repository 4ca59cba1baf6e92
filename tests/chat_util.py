"""A tiny Hugging Face tokenizer with ChatML special tokens and a chat template (built, not
downloaded) for the instruction-data tests."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["hi", "hello", "there", "how", "are", "you", "fine", "thanks", "be", "brief", "what",
         "is", "two", "plus", "four", "a", "story", "once", "upon", "time", "the", "end", ".",
         "?", ",", "!", "system", "user", "assistant", "tool", "\n", " "]  # fmt: skip
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# ChatML with BOS in front; the assistant turn (content, <|im_end|> and its newline) is the
# `generation` span that transformers' return_assistant_tokens_mask marks
CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_tokenizer(directory: Path, template: str | list | None = CHATML) -> Path:
    """A WordLevel tokenizer over WORDS (each space and newline a token of its own) in
    DIRECTORY, with tokenizer_config.json holding the template; returns the directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\s"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "tokenizer_class": "PreTrainedTokenizerFast"}  # fmt: skip
    if template is not None:
        cfg["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))
    return directory


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON value a line (a str is written as the line itself)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path
