"""Atomic file replacement: a crash, a full disk or Ctrl-C never leaves a half-written file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from anetrain.errors import UserError

T = TypeVar("T")


class WriteError(UserError):
    """A file that could not be written (full disk, no permission, ...); the old one is intact."""


def atomic_write(path: Path, write: Callable[[BinaryIO], T], what: str) -> T:
    """Run write(f) on PATH.tmp, fsync, rename over PATH, fsync the directory; returns write's
    result. On any OS error the temp file is removed and PATH is left exactly as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"{path}: cannot write {what} ({e.strerror or e})") from None
    except BaseException:  # e.g. KeyboardInterrupt: no half-written temp file is left behind
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return result
