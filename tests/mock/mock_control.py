"""Test-only control of the mock AppleNeuralEngine.framework (tests/mock/ane_mock.m).

The mock's C control functions are reached with cffi ABI mode, ffi.dlopen(path) of the very file
that backends.ane.AneDevice(path) dlopen()s, so both see one instance of the mock (one set of
counters, one eval callback): glibc returns the already-loaded object for the same file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import cffi
import numpy as np

# imported before any dlopen of the mock: it promotes the IOSurface stub to RTLD_GLOBAL
import anetrain.backends.ane as ane
from anetrain.backends.runtime import MOCK_EVAL_CDEF, mock_eval_callback

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "build" / "mock" / "libane_mock.so"

CDEF = MOCK_EVAL_CDEF + """
int ane_mock_fail(int stage, int count, long code, const char *desc);
int ane_mock_raise(int stage, int count);
void ane_mock_set_compile_limit(int n);
void ane_mock_reset(int reset_compiles);
int ane_mock_live_objects(void);
int ane_mock_loaded_models(void);
int ane_mock_compiles(void);
int ane_mock_calls(int stage);
"""

# The stage numbers of ane_mock.m's enum.
STAGES = {"descriptor": 0, "compile": 1, "load": 2, "eval": 3, "unload": 4}

# eval callback: (mil text, {weight key: file bytes}, input uint8 view, output uint8 view) -> None;
# an exception fails the evaluation with its message in the NSError.
EvalFn = Callable[[str, Mapping[str, bytes], np.ndarray, np.ndarray], None]


class MockFramework:
    """Eval callback, fault injection and counters of the mock loaded from `path`."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = str(path or DEFAULT_PATH)
        self.ffi = cffi.FFI()
        self.ffi.cdef(CDEF)
        self.lib = self.ffi.dlopen(self.path)
        self._callback = None  # keeps the cffi closure alive while registered

    # ---- evaluation ----------------------------------------------------------------------------
    def set_eval_callback(self, fn: EvalFn | None) -> None:
        if fn is None:
            self.lib.ane_mock_set_eval(self.ffi.NULL, self.ffi.NULL)
            self._callback = None
            return
        cb = mock_eval_callback(self.ffi, fn)
        self.lib.ane_mock_set_eval(cb, self.ffi.NULL)
        self._callback = cb

    # ---- fault injection ------------------------------------------------------------------------
    def fail(self, stage: str, count: int = 1, code: int = 11,
             description: str = "mock failure") -> None:
        """The next `count` calls of `stage` return NO with NSError(com.apple.appleneuralengine,
        code, description); stage "descriptor" makes the factory return nil instead."""
        self.lib.ane_mock_fail(STAGES[stage], count, code, description.encode())

    def raise_exception(self, stage: str, count: int = 1) -> None:
        """The next `count` calls of `stage` raise NSInternalInconsistencyException."""
        self.lib.ane_mock_raise(STAGES[stage], count)

    def set_compile_limit(self, n: int) -> None:
        """Compiles beyond the n-th successful one in this process fail (0 = no limit)."""
        self.lib.ane_mock_set_compile_limit(n)

    def reset(self, reset_compiles: bool = True) -> None:
        """Clear the callback, faults, limit and call counts (live counters are kept)."""
        self.lib.ane_mock_reset(int(reset_compiles))
        self._callback = None

    # ---- counters -------------------------------------------------------------------------------
    def live_objects(self) -> int:
        return self.lib.ane_mock_live_objects()

    def loaded_models(self) -> int:
        return self.lib.ane_mock_loaded_models()

    def compiles(self) -> int:
        return self.lib.ane_mock_compiles()

    def calls(self, stage: str) -> int:
        return self.lib.ane_mock_calls(STAGES[stage])

    @staticmethod
    def live_surfaces() -> int:
        return ane.lib.iosurface_stub_live()

    @staticmethod
    def locked_surfaces() -> int:
        return ane.lib.iosurface_stub_locked()
