"""Test-only control of the mock AppleNeuralEngine.framework (tests/mock/ane_mock.m), and its
evaluation through the ANE simulator.

The mock's C control functions are reached with cffi ABI mode, ffi.dlopen(path) of the very file
that backends.ane.AneDevice(path) dlopen()s, so both see one instance of the mock (one set of
counters, one eval callback): glibc returns the already-loaded object for the same file.

The mock compiles nothing and, left alone, evaluates a program by copying its input surface into
its output. use_simulator() (in-process tests) or install_simulator() (sitecustomize.py, for
child processes) registers an eval callback that runs the program's MIL text in mil/sim.py
instead, so AneRuntime over the mock computes what the simulator (and the ANE) computes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import cffi
import numpy as np

# imported before any dlopen of the mock: it promotes the IOSurface stub to RTLD_GLOBAL
import anetrain.backends.ane as ane
from anetrain.mil.sim import Simulation

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "build" / "mock" / "libane_mock.so"

CDEF = """
typedef int (*ane_mock_eval_fn)(void *user, const char *mil, size_t mil_len, int n_weights,
                                const char *const *names, const uint8_t *const *data,
                                const size_t *sizes, const void *in, size_t in_bytes, void *out,
                                size_t out_bytes, char *err, size_t err_len);
void ane_mock_set_eval(ane_mock_eval_fn fn, void *user);
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


def mock_eval_callback(ffi: cffi.FFI, fn: EvalFn):
    """A cffi `ane_mock_eval_fn` calling fn(mil text, {weight key: bytes}, input uint8 view,
    output uint8 view); any exception fails the evaluation with its text in the NSError."""

    def trampoline(user, mil, mil_len, n, names, data, sizes, inp, in_bytes, out, out_bytes,
                   err, err_len):  # fmt: skip
        try:
            weights = {ffi.string(names[i]).decode(): ffi.buffer(data[i], sizes[i])[:]
                       for i in range(n)}  # fmt: skip
            x = np.frombuffer(ffi.buffer(inp, in_bytes), dtype=np.uint8)  # input surface bytes
            x.flags.writeable = False
            y = np.frombuffer(ffi.buffer(out, out_bytes), dtype=np.uint8)  # output surface bytes
            fn(ffi.buffer(mil, mil_len)[:].decode("utf-8"), weights, x, y)
            return 0
        except Exception as e:  # noqa: BLE001 - every error must reach the NSError
            msg = f"{type(e).__name__}: {e}".encode()[: err_len - 1]
            ffi.memmove(err, msg + b"\0", len(msg) + 1)
            return 1

    return ffi.callback("ane_mock_eval_fn", trampoline, error=1)


# ---- evaluation through the simulator --------------------------------------------------------

SIMS: dict[tuple, Callable[[np.ndarray], np.ndarray]] = {}  # sim_key -> parsed program


def sim_key(mil: str, weights: Mapping[str, bytes]) -> tuple:
    """One program: its MIL text and a digest of its weight files."""
    return mil, tuple(sorted((k, len(v), hash(v)) for k, v in weights.items()))


def simulate(mil: str, weights: Mapping[str, bytes], x: np.ndarray, y: np.ndarray) -> None:
    """An EvalFn: the program on the input surface's fp16 bits, result bits into the output
    surface. Each program is parsed once, at its first evaluation (no checker: AneRuntime
    checks what a strict runtime needs before compiling)."""
    key = sim_key(mil, weights)
    sim = SIMS.get(key)
    if sim is None:
        sim = SIMS[key] = Simulation(mil, dict(weights), check=False)
    y.view(np.uint16)[:] = sim(x.view(np.float16)).view(np.uint16).reshape(-1)  # [C_out·S]


# ---- the mock --------------------------------------------------------------------------------


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

    def use_simulator(self) -> None:
        """Evaluate every program in the simulator (until reset() or another callback)."""
        self.set_eval_callback(simulate)

    # ---- fault injection ------------------------------------------------------------------------
    def fail(self, stage: str, count: int = 1, code: int = 11,
             description: str = "mock failure") -> None:  # fmt: skip
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


_SHARED: dict[str, MockFramework] = {}  # path -> the one control object (its callback stays alive)


def shared(path: str | os.PathLike | None = None) -> MockFramework:
    """The process's one MockFramework for `path` (default: the built mock)."""
    key = str(path or DEFAULT_PATH)
    if key not in _SHARED:
        _SHARED[key] = MockFramework(key)
    return _SHARED[key]


def install_simulator(path: str | os.PathLike | None = None) -> MockFramework | None:
    """Make the framework at `path` (default: $ANETRAIN_ANE_FRAMEWORK, else the built mock)
    evaluate through the simulator for the rest of this process; None when that file is not
    the mock (it has no control functions) or does not load."""
    try:
        mock = shared(path or os.environ.get(ane.FRAMEWORK_ENV))
        mock.use_simulator()
    except (OSError, AttributeError):  # dlopen failed, or no ane_mock_set_eval: not the mock
        return None
    return mock
