"""Open any model file anetrain reads: an anetrain checkpoint or a llama2.c model.bin."""

from __future__ import annotations

import re
from pathlib import Path

from anetrain.errors import CheckpointError
from anetrain.formats import checkpoint
from anetrain.formats.checkpoint import Checkpoint, RunState
from anetrain.formats.llama2c import read_llama2c

ANETRAIN = "anetrain checkpoint"
LLAMA2C = "llama2.c model"
KINDS = "an anetrain checkpoint or run directory, or a llama2.c model.bin"  # for messages
_RELEASED = re.compile(r"stories(\d+M)\.bin")  # scripts/download_stories.sh's file names


def model_kind(path: str | Path) -> str:
    """ANETRAIN or LLAMA2C, by the file's magic (a run directory means its checkpoint.bin)."""
    return ANETRAIN if checkpoint.is_checkpoint(checkpoint.resolve(path)) else LLAMA2C


def model_file(path: str | Path) -> Path:
    """The file a model path names (a run directory: its checkpoint.bin), which must exist."""
    path = Path(path)
    if path.is_dir():
        if not (path / checkpoint.FILE_NAME).is_file():
            raise CheckpointError(f"{path}: a directory without {checkpoint.FILE_NAME}; a model "
                                  f"is {KINDS}")  # fmt: skip
        return path / checkpoint.FILE_NAME
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file{_download_hint(path)}")
    return path


def _download_hint(path: Path) -> str:
    """Where llama2.c's released models come from, for a missing file under data/models/."""
    if path.absolute().parent.parts[-2:] != ("data", "models"):
        return ""
    released = _RELEASED.fullmatch(path.name)
    size = f" {released.group(1)}" if released else ""
    return f"; download llama2.c's released models with bash scripts/download_stories.sh{size}"


def load_model(path: str | Path) -> tuple[str, Checkpoint]:
    """(kind, weights) of a model file; a llama2.c file's state holds only its model config, an
    anetrain checkpoint's the whole run state (its AdamW moments are not read)."""
    path = model_file(path)
    if model_kind(path) == LLAMA2C:
        cfg, params = read_llama2c(path)
        return LLAMA2C, Checkpoint(RunState(cfg), params)
    return ANETRAIN, checkpoint.load(path, with_optimizer=False)
