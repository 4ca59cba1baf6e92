"""Open any model file anetrain reads: an anetrain checkpoint or a llama2.c model.bin."""

from __future__ import annotations

from pathlib import Path

from anetrain.formats import checkpoint
from anetrain.formats.checkpoint import Checkpoint, RunState
from anetrain.formats.llama2c import read_llama2c

ANETRAIN = "anetrain checkpoint"
LLAMA2C = "llama2.c model"


def model_kind(path: str | Path) -> str:
    """ANETRAIN or LLAMA2C, by the file's magic (a run directory means its checkpoint.bin)."""
    return ANETRAIN if checkpoint.is_checkpoint(checkpoint.resolve(path)) else LLAMA2C


def load_model(path: str | Path) -> tuple[str, Checkpoint]:
    """(kind, weights) of a model file; a llama2.c file's state holds only its model config, an
    anetrain checkpoint's the whole run state (its AdamW moments are not read)."""
    path = checkpoint.resolve(path)
    if model_kind(path) == LLAMA2C:
        cfg, params = read_llama2c(path)
        return LLAMA2C, Checkpoint(RunState(cfg), params)
    return ANETRAIN, checkpoint.load(path, with_optimizer=False)
