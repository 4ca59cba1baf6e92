"""Open any model anetrain reads: an anetrain checkpoint, a llama2.c model.bin, a Hugging Face
model directory or Hub id, a PEFT adapter directory over one of these."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from anetrain.errors import CheckpointError
from anetrain.formats import checkpoint
from anetrain.formats.checkpoint import Checkpoint, RunState
from anetrain.formats.hf import is_hf_dir, read_hf
from anetrain.formats.hub import is_hub_id, resolve_hub
from anetrain.formats.llama2c import read_llama2c
from anetrain.formats.peft import CONFIG as ADAPTER_CONFIG
from anetrain.formats.peft import Adapter, PeftError, adapter_base, is_adapter_dir, read_adapter
from anetrain.lora import stage

ANETRAIN = "anetrain checkpoint"
LLAMA2C = "llama2.c model"
HF = "Hugging Face model"
PEFT = "PEFT adapter"
KINDS = ("an anetrain checkpoint or run directory, a llama2.c model.bin, a Hugging Face model "
         "directory or Hub id, or a PEFT adapter directory")  # for messages  # fmt: skip
_RELEASED = re.compile(r"stories(\d+M)\.bin")  # scripts/download_stories.sh's file names


def model_kind(path: str | Path) -> str:
    """ANETRAIN, LLAMA2C, HF or PEFT: a directory without checkpoint.bin is a PEFT adapter when
    it has adapter_config.json (as transformers decides), else a Hugging Face model; a file (a
    run directory: its checkpoint.bin) is told by its magic."""
    path = Path(path)
    if path.is_dir() and not (path / checkpoint.FILE_NAME).is_file():
        return PEFT if is_adapter_dir(path) else HF
    return ANETRAIN if checkpoint.is_checkpoint(checkpoint.resolve(path)) else LLAMA2C


def model_file(path: str | Path) -> Path:
    """The file or directory a model path names, which must exist: a run directory's
    checkpoint.bin, a Hugging Face model directory, or the local snapshot of a Hub id (fetched
    through huggingface_hub, or found in its cache)."""
    path = Path(path)
    if path.is_dir():
        if (path / checkpoint.FILE_NAME).is_file():
            return path / checkpoint.FILE_NAME
        if is_hf_dir(path) or is_adapter_dir(path):
            return path
        raise CheckpointError(f"{path}: a directory without {checkpoint.FILE_NAME}, config.json "
                              f"or {ADAPTER_CONFIG}; a model is {KINDS}")  # fmt: skip
    if not path.exists():
        if is_hub_id(str(path)):
            return resolve_hub(str(path))
        raise CheckpointError(f"{path}: no such model file{_download_hint(path)}")
    return path


def _download_hint(path: Path) -> str:
    """Where llama2.c's released models come from, for a missing file under data/models/."""
    if path.absolute().parent.parts[-2:] != ("data", "models"):
        return ""
    released = _RELEASED.fullmatch(path.name)
    size = f" {released.group(1)}" if released else ""
    return f"; download llama2.c's released models with bash scripts/download_stories.sh{size}"


def has_adapters(path: str | Path) -> bool:
    """Whether a model (model_file's result) is a LoRA run or a PEFT adapter directory."""
    kind = model_kind(path)
    return kind == PEFT or (kind == ANETRAIN and checkpoint.read_header(path)[0].get("lora")
                            is not None)  # fmt: skip


def load_adapter(path: str | Path, base: str | None = None) -> tuple[Checkpoint, Adapter]:
    """(the base model, the adapter) of a PEFT adapter directory: the base is `base` if given,
    else the one adapter_config.json names (a local model of any kind, or a Hub id). The base's
    tokenizer is recorded unless the adapter directory has its own tokenizer.json."""
    path = Path(path)
    name = base if base is not None else adapter_base(path)
    if name is None:
        raise PeftError(f"{path / ADAPTER_CONFIG}: names no base_model_name_or_path; pass the "
                        "base model with --base MODEL")  # fmt: skip
    try:
        base_file = model_file(name)
    except CheckpointError as e:
        if base is not None:
            raise
        raise PeftError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path: {e}; pass the "
                        "base model with --base MODEL") from None  # fmt: skip
    if model_kind(base_file) == PEFT:
        raise PeftError(f"{path}: its base {name} is itself a PEFT adapter; pass --base MODEL")
    _, ck = load_model(base_file)
    adapter = read_adapter(path, ck.model)
    tok = path.absolute() / "tokenizer.json"
    if tok.is_file():
        ck.state.tokenizer = str(tok)
    return ck, adapter


def load_model(path: str | Path, base: str | None = None) -> tuple[str, Checkpoint]:
    """(kind, weights) of a model; a llama2.c file's state holds only its model config, a Hugging
    Face model's its config and its tokenizer.json (if it has one), an anetrain checkpoint's the
    whole run state (its AdamW moments are not read). A LoRA run and a PEFT adapter directory
    (over `base`, else the base it names) give the merged model W + scale * B A."""
    path = model_file(path)
    kind = model_kind(path)
    if base is not None and kind != PEFT:
        raise CheckpointError(f"--base {base}: only a PEFT adapter directory takes a base "
                              f"model, and {path} is not one")  # fmt: skip
    if kind == PEFT:
        ck, adapter = load_adapter(path, base)
        merged = ck.params.copy()
        stage(ck.params.tensors, adapter.lora, merged)
        return PEFT, Checkpoint(dataclasses.replace(ck.state, lora=None), merged)
    if kind == HF:
        cfg, params = read_hf(path)
        tok = path.absolute() / "tokenizer.json"  # not resolved: a Hub snapshot links to blobs
        return HF, Checkpoint(RunState(cfg, tokenizer=str(tok) if tok.is_file() else None), params)
    if kind == LLAMA2C:
        cfg, params = read_llama2c(path)
        return LLAMA2C, Checkpoint(RunState(cfg), params)
    ck = checkpoint.load(path, with_optimizer=False)
    if ck.lora is None:
        return ANETRAIN, ck
    # a LoRA run: its model is the frozen weights with the adapters merged, W + scale * B A
    merged = ck.params.copy()
    stage(ck.params.tensors, ck.lora, merged)
    return ANETRAIN, Checkpoint(dataclasses.replace(ck.state, lora=None), merged)
