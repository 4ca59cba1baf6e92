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


class Executable(Protocol):
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
    strict: bool  # True: programs must satisfy the ANE's size rules (platform.ane_misfit)
    compiles: int
    compile_seconds: float
    evals: int
    eval_seconds: float

    def compile(self, spec: KernelSpec) -> Executable: ...

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


class SimExecutable:
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

    def compile(self, spec: KernelSpec) -> SimExecutable:
        t = time.perf_counter()
        k = SimExecutable(self, spec)
        self.compile_seconds += time.perf_counter() - t
        self.compiles += 1
        return k

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------
# AneRuntime: anetrain._ane over the system framework, or a replacement (the mock on Linux)


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


class AneExecutable:
    """One program compiled and loaded by the framework (`compiled`: the ane.Executable), with its
    output surface and one ane.Request per input surface."""

    def __init__(self, runtime: AneRuntime, spec: KernelSpec) -> None:
        self.rt, self.spec = runtime, spec
        try:
            self.compiled = runtime.device.compile(spec.mil, spec.weights, spec.inp.nbytes,
                                                   spec.out.nbytes)  # fmt: skip
        except runtime.AneError as e:  # say which kernel
            raise runtime.AneError(f"kernel {spec.name}: {e}") from e
        try:
            self.out = AneSurface(spec.out.C, spec.out.W)  # [C_out, S]
        except BaseException:
            self.compiled.free()
            raise
        self.requests: dict[int, object] = {}  # id(input surface) -> ane.Request
        self.inputs: list[AneSurface] = []

    def new_input(self) -> AneSurface:
        s = AneSurface(self.spec.inp.C, self.spec.inp.W)  # [C_in, W]
        with s.lock() as v:  # IOSurfaces start undefined; the layouts leave no gaps, but be sure
            v[...] = 0
        self.inputs.append(s)
        self.requests[id(s)] = self.compiled.request(s.surface, self.out.surface)
        return s

    def eval(self, inp: AneSurface) -> None:
        t = time.perf_counter()
        try:
            self.compiled.eval(self.requests[id(inp)])
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
        self.compiled.free()
        if self in self.rt.executables:
            self.rt.executables.remove(self)


class AneRuntime(_Timed):
    """Programs compiled by anetrain._ane over an ANE framework: the system
    AppleNeuralEngine.framework, or a replacement named by `framework_path` or
    $ANETRAIN_ANE_FRAMEWORK (e.g. the Linux test mock, tests/mock).

    strict (default: the framework is the system one) holds programs to the real ANE's rules:
    MilKernels refuses sizes that are not aligned, and every program passes our constraint
    checker (check_for_device) before the framework compiles it. A replacement framework is not
    held to them unless strict=True."""

    name = "ane"

    def __init__(self, framework_path: str | None = None, strict: bool | None = None) -> None:
        super().__init__()
        from anetrain.backends import ane

        self.AneError = ane.AneError  # (backends.ane is imported only when this runtime is used)
        self.framework_path = ane.resolve_framework_path(framework_path)
        self.device = ane.AneDevice(self.framework_path)
        self.strict = self.framework_path == ane.SYSTEM_FRAMEWORK if strict is None else strict
        self.executables: list[AneExecutable] = []

    @property
    def device_compiles(self) -> int:
        """Successful compiles the runtime's C context has counted (the ~119 budget)."""
        return self.device.compile_count

    def compile(self, spec: KernelSpec) -> AneExecutable:
        t = time.perf_counter()
        if self.strict:
            check_for_device(spec)
        p = AneExecutable(self, spec)
        self.compile_seconds += time.perf_counter() - t
        self.compiles += 1
        self.executables.append(p)
        return p

    def close(self) -> None:
        for p in list(self.executables):
            p.free()
        self.device.close()
