"""Runtimes that compile MIL programs once and evaluate them on fp16 surfaces (sim or ANE)."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from anetrain import native
from anetrain.mil.check import check_program, enforce
from anetrain.mil.errors import MilError, MilWarning
from anetrain.mil.kernels import KernelSpec
from anetrain.mil.parse import parse
from anetrain.mil.sim import Simulation

# A program has one output surface [C_out, S] (shared by every evaluation, upstream.md §1.4) and
# any number of input surfaces [C_in, W], each bound to the output by its own request: one input
# surface per layer for the weight-bearing kernels (upstream.md §5.3). A surface is locked to get
# a uint16 numpy view of its fp16 bits, shaped [C, W] as the layout says; the C packer in
# native.py writes and reads segments of that view. Evaluating overwrites the output surface, so
# its contents must be read before the same program runs again.


class Surface(Protocol):
    """One fp16 tensor [1, C, 1, W] in a flat buffer (upstream.md §2)."""

    C: int
    W: int

    def lock(self, read_only: bool = False) -> contextlib.AbstractContextManager[np.ndarray]:
        """Context manager yielding a uint16 [C, W] view, valid inside the block only."""
        ...


class Program(Protocol):
    """A compiled MIL program: its spec, the shared output surface, and per-input requests."""

    spec: KernelSpec
    out: Surface

    def new_input(self) -> Surface:
        """A new zeroed input surface with its own request (kept until free())."""
        ...

    def eval(self, inp: Surface) -> None:
        """Evaluate synchronously from `inp` (one of new_input()'s) into `out`."""
        ...

    def free(self) -> None: ...


class Runtime(Protocol):
    """Compiles programs (each compile is counted) and times their evaluations."""

    name: str
    strict: bool  # True: programs must satisfy the ANE alignment rules (build_kernels strict=)
    compiles: int
    compile_seconds: float
    evals: int
    eval_seconds: float

    def compile(self, spec: KernelSpec) -> Program: ...

    def copy(self, dst: Surface, dst_c0: int, dst_s0: int, src: Surface, src_c0: int,
             src_s0: int, nch: int, width: int) -> None:
        """fp16 surface-to-surface copy of a [nch, width] segment (no fp32 round trip)."""
        ...

    def close(self) -> None: ...


class _Timed:
    """Counters every runtime keeps (compile count/time, evaluation count/time)."""

    def __init__(self) -> None:
        self.compiles = 0
        self.compile_seconds = 0.0
        self.evals = 0
        self.eval_seconds = 0.0

    def copy(self, dst: Surface, dst_c0: int, dst_s0: int, src: Surface, src_c0: int,
             src_s0: int, nch: int, width: int) -> None:
        # upstream.md §2.2: lock dst read/write, then src read-only; unlock src, then dst
        with dst.lock() as d, src.lock(read_only=True) as s:
            native.copy(d, dst_c0, dst_s0, s, src_c0, src_s0, nch, width)


def _simulation(spec: KernelSpec) -> Simulation:
    """Parse and check the program once. Misaligned test sizes only warn in the simulator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MilWarning)
        return Simulation(spec.mil, spec.weights)


def check_for_device(spec: KernelSpec) -> None:
    """Run the constraint checker on the exact text the real compiler gets: an error raises
    MilError naming the kernel and rule (the framework's own compile errors are terse), a
    warning (e.g. a construct reported unreliable on some chips) is issued as a MilWarning."""
    issues, _ = check_program(parse(spec.mil), spec.weights)
    try:
        enforce(issues)
    except MilError as e:
        raise MilError(f"{spec.name}: {e}") from None


# ----------------------------------------------------------------------------
# SimRuntime: pure Python, surfaces are numpy buffers


class ArraySurface:
    """A surface held in a numpy uint16 [C, W] buffer (fp16 bits)."""

    def __init__(self, C: int, W: int) -> None:
        self.C, self.W = C, W
        self.buf = np.zeros((C, W), dtype=np.uint16)  # [C, W] fp16 bits

    @contextlib.contextmanager
    def lock(self, read_only: bool = False) -> Iterator[np.ndarray]:
        yield self.buf


class SimProgram:
    def __init__(self, runtime: SimRuntime, spec: KernelSpec) -> None:
        self.rt, self.spec = runtime, spec
        self.sim = _simulation(spec)
        self.out = ArraySurface(spec.out.C, spec.out.W)  # [C_out, S]
        self.inputs: list[ArraySurface] = []

    def new_input(self) -> ArraySurface:
        s = ArraySurface(self.spec.inp.C, self.spec.inp.W)  # [C_in, W]
        self.inputs.append(s)
        return s

    def run(self, inp: ArraySurface) -> None:
        """The program on the input bits, result bits into the output surface."""
        y = self.sim(inp.buf.view(np.float16))  # [1, C_out, 1, S] fp16
        self.out.buf[...] = y.view(np.uint16).reshape(self.out.buf.shape)

    def eval(self, inp: ArraySurface) -> None:
        t = time.perf_counter()
        self.run(inp)
        self.rt.evals += 1
        self.rt.eval_seconds += time.perf_counter() - t

    def free(self) -> None:
        self.inputs.clear()


class SimRuntime(_Timed):
    """Runs the exact MIL text in the numpy ANE simulator (mil/sim.py); anywhere, slow."""

    name = "sim"
    strict = False

    def compile(self, spec: KernelSpec) -> SimProgram:
        t = time.perf_counter()
        k = SimProgram(self, spec)
        self.compile_seconds += time.perf_counter() - t
        self.compiles += 1
        return k

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------
# AneRuntime: anetrain._ane over the real framework, or the mock on Linux


class AneSurface:
    """An IOSurface seen as fp16 [C, W] (anetrain.backends.ane.Surface of C·W·2 bytes)."""

    def __init__(self, C: int, W: int) -> None:
        from anetrain.backends import ane

        self.C, self.W = C, W
        self.surface = ane.Surface(C * W * 2)  # [1, C, 1, W] fp16

    @contextlib.contextmanager
    def lock(self, read_only: bool = False) -> Iterator[np.ndarray]:
        with self.surface.locked(read_only) as v:  # flat uint16 [C·W]
            yield v.reshape(self.C, self.W)

    def free(self) -> None:
        self.surface.free()


class AneProgram:
    def __init__(self, runtime: AneRuntime, spec: KernelSpec) -> None:
        self.rt, self.spec = runtime, spec
        try:
            self.program = runtime.device.compile(spec.mil, spec.weights, spec.inp.nbytes,
                                            spec.out.nbytes)  # fmt: skip
        except runtime.AneError as e:  # say which kernel
            raise runtime.AneError(f"kernel {spec.name}: {e}") from e
        try:
            self.out = AneSurface(spec.out.C, spec.out.W)  # [C_out, S]
        except BaseException:
            self.program.free()
            raise
        self.requests: dict[int, object] = {}  # id(input surface) -> ane.Request
        self.inputs: list[AneSurface] = []

    def new_input(self) -> AneSurface:
        s = AneSurface(self.spec.inp.C, self.spec.inp.W)  # [C_in, W]
        with s.lock() as v:  # IOSurfaces start undefined; the layouts leave no gaps, but be sure
            v[...] = 0
        self.inputs.append(s)
        self.requests[id(s)] = self.program.request(s.surface, self.out.surface)
        return s

    def eval(self, inp: AneSurface) -> None:
        t = time.perf_counter()
        try:
            self.program.eval(self.requests[id(inp)])
        except self.rt.AneError as e:  # say which kernel
            raise self.rt.AneError(f"kernel {self.spec.name}: {e}") from e
        self.rt.evals += 1
        self.rt.eval_seconds += time.perf_counter() - t

    def free(self) -> None:
        for r in self.requests.values():
            r.free()  # type: ignore[attr-defined]
        self.requests.clear()
        for s in self.inputs:
            s.free()
        self.inputs.clear()
        self.out.free()
        self.program.free()
        if self in self.rt.programs:
            self.rt.programs.remove(self)


class AneRuntime(_Timed):
    """Programs compiled by anetrain._ane: the real AppleNeuralEngine.framework on macOS, or
    (tests, Linux) the mock named by ANETRAIN_ANE_FRAMEWORK, whose evaluations this runtime
    routes into the simulator. With the real framework kernels must be ANE-aligned (strict),
    and every program passes our constraint checker before the framework compiles it."""

    name = "ane"

    def __init__(self, framework_path: str | None = None) -> None:
        super().__init__()
        from anetrain.backends import ane

        self.AneError = ane.AneError  # (backends.ane is imported only when this runtime is used)
        self.framework_path = ane.resolve_framework_path(framework_path)
        self.device = ane.AneDevice(self.framework_path)
        self.mock = self.framework_path != ane.SYSTEM_FRAMEWORK and _install_mock_sim(
            self.framework_path
        )
        self.strict = not self.mock
        self.programs: list[AneProgram] = []

    @property
    def device_compiles(self) -> int:
        """Successful compiles the runtime's C context has counted (the ~119 budget)."""
        return self.device.compile_count

    def compile(self, spec: KernelSpec) -> AneProgram:
        t = time.perf_counter()
        if self.mock:  # the mock's evaluate runs this program's simulation (parsed once)
            key = _sim_key(spec.mil, spec.weights)
            if key not in _MOCK_SIMS:
                _MOCK_SIMS[key] = _simulation(spec)
        else:
            check_for_device(spec)
        k = AneProgram(self, spec)
        self.compile_seconds += time.perf_counter() - t
        self.compiles += 1
        self.programs.append(k)
        return k

    def close(self) -> None:
        for k in list(self.programs):
            k.free()
        self.device.close()


# The mock framework (tests/mock/ane_mock.m) calls one C function per evaluation with the MIL
# text, the weight files and the two surfaces; this runs the simulator there. It is reached
# through cffi ABI mode on the same file the runtime dlopen()ed (one instance of the mock).
MOCK_EVAL_CDEF = """
typedef int (*ane_mock_eval_fn)(void *user, const char *mil, size_t mil_len, int n_weights,
                                const char *const *names, const uint8_t *const *data,
                                const size_t *sizes, const void *in, size_t in_bytes, void *out,
                                size_t out_bytes, char *err, size_t err_len);
void ane_mock_set_eval(ane_mock_eval_fn fn, void *user);
"""
_MOCK_SIMS: dict[tuple, Simulation] = {}  # (MIL text, weights digest) -> parsed program
_MOCK_KEEP: dict[str, tuple] = {}  # path -> (ffi, lib, callback): alive while installed


def mock_eval_callback(ffi, fn):
    """A cffi `ane_mock_eval_fn` calling fn(mil text, {weight key: bytes}, input uint8 view,
    output uint8 view); any exception fails the evaluation with its text in the NSError."""

    def trampoline(user, mil, mil_len, n, names, data, sizes, inp, in_bytes, out, out_bytes,
                   err, err_len):
        try:
            weights = {ffi.string(names[i]).decode(): ffi.buffer(data[i], sizes[i])[:]
                       for i in range(n)}
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


def _sim_key(mil: str, weights: dict[str, bytes]) -> tuple:
    return mil, tuple(sorted((k, len(v), hash(v)) for k, v in weights.items()))


def _install_mock_sim(path: str) -> bool:
    """Make the mock at `path` evaluate through the simulator; False if it is not the mock."""
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(MOCK_EVAL_CDEF)
    try:
        lib = ffi.dlopen(path)
        set_eval = lib.ane_mock_set_eval
    except (OSError, AttributeError):
        return False

    def evaluate(mil: str, weights: dict[str, bytes], x: np.ndarray, y: np.ndarray) -> None:
        key = _sim_key(mil, weights)
        sim = _MOCK_SIMS.get(key)
        if sim is None:  # compiled elsewhere: parse now, once
            sim = _MOCK_SIMS[key] = Simulation(mil, weights, check=False)
        y.view(np.uint16)[:] = sim(x.view(np.float16)).view(np.uint16).reshape(-1)  # [C_out·S]

    cb = mock_eval_callback(ffi, evaluate)
    set_eval(cb, ffi.NULL)
    _MOCK_KEEP[path] = (ffi, lib, cb)
    return True
