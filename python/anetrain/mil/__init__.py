"""MIL for the ANE: program builder, weight blobs, the ten training kernels, a numpy simulator."""

from anetrain.mil.errors import MilError, MilOverflowWarning, MilWarning

__all__ = ["MilError", "MilWarning", "MilOverflowWarning"]
