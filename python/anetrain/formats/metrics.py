"""metrics.jsonl: one JSON line per optimizer step, written whole, in step with the checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

from anetrain.formats.files import WriteError, atomic_write

FILE_NAME = "metrics.jsonl"  # a run directory's metrics


def has_records(path: Path) -> bool:
    """Whether PATH holds anything (a fresh run must not cut another run's metrics)."""
    try:
        return path.stat().st_size > 0
    except (FileNotFoundError, NotADirectoryError):
        return False


def trim(path: Path, step: int) -> int:
    """Keep the records up to `step` (the checkpoint's), dropping later ones and lines that do
    not parse (a run killed while writing one); rewritten atomically, so a crash or a full disk
    here loses nothing. Returns the number of unreadable lines dropped."""
    try:
        text = path.read_text(errors="replace") if path.exists() else ""
    except OSError as e:
        raise WriteError(f"{path}: cannot read the metrics ({e.strerror or e})") from None
    keep, bad = [], 0
    for ln in text.splitlines():
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            bad += 1
        elif rec["step"] <= step:
            keep.append(ln + "\n")
    data = "".join(keep).encode()
    if data != text.encode():
        atomic_write(path, lambda f: f.write(data), "metrics")
    return bad


class MetricsLog:
    """Appends records to a metrics file. Each line goes out in one write(2); a failed or short
    write (a full disk) is cut back off, so the file never ends in half a line."""

    def __init__(self, path: Path, fresh: bool) -> None:
        """fresh: start the file empty (a new run); else append (a resumed run, trimmed first)."""
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
        try:
            self.fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise WriteError(f"{path}: cannot open the metrics ({e.strerror or e})") from None

    def append(self, rec: dict) -> None:
        data = (json.dumps(rec) + "\n").encode()
        end = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            n = os.write(self.fd, data)
            if n != len(data):
                raise OSError(28, os.strerror(28))  # a short write: the disk is full
        except OSError as e:
            try:
                os.ftruncate(self.fd, end)
            except OSError:
                pass
            raise WriteError(f"{self.path}: cannot write the metrics ({e.strerror or e})") \
                from None  # fmt: skip

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MetricsReader:
    """Reads a metrics file as it grows (another process may be writing it): every poll()
    returns the whole lines added since the last one; a line still being written waits for the
    next poll, and one that does not parse is skipped. A file cut shorter (a resumed run trims
    it) is read again from the start."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def poll(self) -> tuple[list[dict], bool]:
        """(new records, whether the file was restarted: the caller drops what it had)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                restarted = size < self.offset
                if restarted:
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return [], False
        except OSError as e:
            raise WriteError(f"{self.path}: cannot read the metrics ({e.strerror or e})") from None
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        recs = []
        for ln in lines:
            try:
                rec = json.loads(ln)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                recs.append(rec)
        return recs, restarted


def read_records(path: Path) -> list[dict]:
    """Every whole, readable record of a metrics file ([] when there is none)."""
    return MetricsReader(path).poll()[0]
