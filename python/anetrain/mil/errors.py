"""Errors and warnings of the MIL builder, parser, constraint checker, blob reader and simulator."""

from __future__ import annotations

from anetrain.errors import UserError


class MilError(UserError, ValueError):
    """A malformed program, a blob that does not match, or a construct the ANE rejects.

    Messages start with the location when one is known: `line 12: matmul 'sc': ...`.
    """


class MilWarning(UserWarning):
    """A construct that compiles but is slow, padded or reported unreliable on some chips."""


class MilOverflowWarning(RuntimeWarning):
    """A simulated evaluation produced inf/NaN in its output (fp16 overflow somewhere upstream)."""
