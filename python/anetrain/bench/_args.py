"""argparse types for the bench CLIs: a bad number is one `error:` line and exit 2, not a traceback.

numpy-free (bench overlap parses its flags before it pins the BLAS threads and imports numpy).
"""

from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, repetitions, sizes)."""
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def nonneg_int(text: str) -> int:
    """An integer >= 0 (thread/worker counts where 0 means one per core)."""
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = one per core), got {n}")
    return n


def kernel_scale(text: str) -> float | str:
    """A positive finite float, or the word 'host'."""
    if text == "host":
        return text
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number or 'host', got {text!r}")
    return x
