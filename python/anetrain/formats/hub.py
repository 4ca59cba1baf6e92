"""Hugging Face Hub ids (ORG/NAME): fetched with huggingface_hub into its cache, or found there."""

from __future__ import annotations

import re
from pathlib import Path

from anetrain.formats.hf import CONFIG, INDEX, SINGLE, TOKENIZER_FILES, HfError, read_config

# What a model needs from its repository: nothing else is downloaded (no pickles, no code).
HUB_FILES = [CONFIG, SINGLE, INDEX, "model-*-of-*.safetensors", *TOKENIZER_FILES]
INSTALL = "pip install 'anetrain[hf]' (from a source checkout: pip install '.[hf]')"
# The Hub's repository id rules: ORG/NAME of letters, digits, '-', '_', '.', at most 96 each,
# not starting with '-' or '.', no '--' or '..'.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_FILE_SUFFIXES = (".bin", ".json", ".safetensors", ".model", ".")  # a missing local file instead


def is_hub_id(text: str) -> bool:
    """True for ORG/NAME that is no local path: neither it nor ORG exists here, and it does not
    end like a model file (a typo in `out/model.bin` stays a missing file)."""
    if not _REPO_ID.fullmatch(text) or "--" in text or ".." in text or \
            text.endswith(_FILE_SUFFIXES):  # fmt: skip
        return False
    return not Path(text).exists() and not Path(text.split("/")[0]).exists()


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def resolve_hub(repo_id: str) -> Path:
    """The local snapshot directory of a Hub model, downloading what it lacks unless
    HF_HUB_OFFLINE=1 (then only the cache, $HF_HUB_CACHE, is read). config.json comes first and
    is checked, so an unsupported model is refused before its weights are fetched."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise HfError(f"{repo_id}: no such file or directory; to load it as a Hugging Face Hub "
                      f"model, {INSTALL}") from None  # fmt: skip
    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=[CONFIG]))
        read_config(snapshot)
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (OSError, ValueError, EntryNotFoundError) as e:
        raise HfError(f"{repo_id}: not a local path, and not available from the Hugging Face "
                      f"Hub ({_first_line(e)})") from None  # fmt: skip
