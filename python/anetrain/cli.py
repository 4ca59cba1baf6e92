"""What every command shares: one-line errors, signals as one exception, output that may vanish."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from anetrain.errors import UserError

# The signals that end a run the way Ctrl-C does: a scheduler, `timeout`, launchd or systemd send
# SIGTERM; a closed terminal or ssh session sends SIGHUP.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt: no `except Exception`
    swallows it). The command exits with 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


class _Recorder:
    """A stop-signal handler that records the signal instead of raising (signals_deferred)."""

    def __init__(self) -> None:
        self.caught: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        self.caught.append(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the stop signals into Stopped raised in the main thread, for the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_held(reraise: bool = True) -> Iterator[None]:
    """Hold the stop signals until the block ends, then raise Stopped for the first one caught
    (if reraise). Around what a stop must not cut in half: the optimizer update with its step
    counters, a metrics line, the last checkpoint. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in STOP_SIGNALS}  # fmt: skip
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught and reraise:
        outer = previous[caught[0]]
        if isinstance(outer, _Recorder):  # inside signals_deferred: pass it on
            outer(caught[0], None)
        else:
            raise Stopped(caught[0])


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Record the stop signals for the block instead of raising Stopped, in the yielded list
    (signals_held inside passes its signals on to it): for processes that must stop together,
    which look at the list where they meet. Outside the main thread it records nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    recorder = _Recorder()
    previous = {s: signal.signal(s, recorder) for s in STOP_SIGNALS}
    try:
        yield recorder.caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def silence(stream) -> None:
    """Point a stream whose reader is gone at /dev/null, so that later writes and the
    interpreter's final flush do not fail on it (the recipe in Python's signal module docs)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


class Vanishing:
    """A text stream that survives its reader going away (a pipe into `head`, a closed terminal):
    the first failed write turns it off for good, and its file descriptor is pointed at
    /dev/null so that the interpreter's final flush does not fail either."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = False

    def _failed(self, e: OSError) -> None:
        if e.errno not in (errno.EPIPE, errno.EIO, errno.ENXIO, errno.EBADF):
            raise e
        self.gone = True
        silence(self.stream)

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
                self.stream.flush()  # find out now, not at exit
            except OSError as e:
                self._failed(e)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError as e:
                self._failed(e)

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> object:  # encoding, errors, ... of the real stream
        return getattr(self.stream, name)


@contextmanager
def vanishing_output() -> Iterator[None]:
    """sys.stdout and sys.stderr as Vanishing streams for the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Vanishing(sys.stdout), Vanishing(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def run_cli(prog: str, fn: Callable[[list[str] | None], int | None], argv: list[str] | None,
            stop_message: str = "nothing saved") -> int:  # fmt: skip
    """Run a command's body: a UserError is one line on stderr and exit code 2 (no traceback); a
    stop signal that the body does not handle itself is one line and exit code 128 + signal."""
    with vanishing_output(), stop_on_signals():
        try:
            return int(fn(argv) or 0)
        except UserError as e:
            with signals_held(reraise=False):
                print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except (Stopped, KeyboardInterrupt) as e:
            stop = e if isinstance(e, Stopped) else Stopped(signal.SIGINT)
            with signals_held(reraise=False):
                print(f"{prog}: interrupted ({stop.name}); {stop_message}", file=sys.stderr)
            return stop.exit_code
