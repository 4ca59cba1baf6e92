"""Atomic file and directory writes: a crash, a full disk or Ctrl-C never leaves half of one."""

from __future__ import annotations

import os
import secrets
import shutil
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
    _sync_dir(path.parent)
    return result


def _sync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_dir(path: Path, fill: Callable[[Path], T], what: str) -> T:
    """Run fill(tmp) on a new empty directory beside PATH (fill writes its files with
    atomic_write), then rename it to PATH; returns fill's result. An existing PATH (the caller
    decided that it may go) is first moved aside and removed after the rename, so PATH is at every
    moment the old directory, absent, or the whole new one. The temporary names are fresh hidden
    ones (.NAME.tmp-XXXXXXXX, .NAME.old-XXXXXXXX), never a directory of the user's. On any error
    the new directory is removed and PATH is left as it was."""
    token = secrets.token_hex(4)
    tmp = path.with_name(f".{path.name}.tmp-{token}")
    old = path.with_name(f".{path.name}.old-{token}")
    moved = False
    try:
        tmp.mkdir()  # the mode follows the umask, as for any directory the user makes
        result = fill(tmp)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not path.exists():  # the old directory goes back where it was
            os.replace(old, path)
        if isinstance(e, WriteError):  # name the file where it was going, not the temporary
            raise WriteError(str(e).replace(str(tmp), str(path), 1)) from None
        if isinstance(e, OSError):
            raise WriteError(f"{path}: cannot write {what} ({e.strerror or e})") from None
        raise
    _sync_dir(path.parent)
    if moved:
        shutil.rmtree(old, ignore_errors=True)
    return result
